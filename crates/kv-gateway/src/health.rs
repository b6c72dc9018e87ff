//! `/livez`, `/readyz`, `/raft/status` and `/metrics`. None of them needs a
//! token: they tell an operator's tools about the node, not the data.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Gateway;
use crate::reply::ApiError;

/// `GET /livez`: 200 `ok` while the node answers its own status request.
pub async fn livez(State(gw): State<Gateway>) -> Response {
    match gw.own_client().status(gw.local_endpoint()).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the node does not answer: {e}\n"),
        )
            .into_response(),
    }
}

/// Why the node is not ready, if it is not.
pub(crate) async fn not_ready(gw: &Gateway) -> Option<String> {
    let client = gw.own_client();
    let own = match client.status(gw.local_endpoint()).await {
        Ok(s) => s,
        Err(e) => return Some(format!("the node does not answer: {e}")),
    };
    if own.leader_id == 0 {
        return Some("no leader".to_owned());
    }
    let leader_commit = if own.leader_id == own.id || own.leader_addr.is_empty() {
        own.commit_index
    } else {
        match client.status(&own.leader_addr).await {
            Ok(l) => l.commit_index.max(own.commit_index),
            Err(e) => return Some(format!("the leader does not answer: {e}")),
        }
    };
    let lag = leader_commit.saturating_sub(own.applied_index);
    let limit = gw.options().ready_lag;
    (lag > limit).then(|| format!("{lag} entries behind the leader (more than {limit})"))
}

/// `GET /readyz`: 200 `ok`; 503 while the node has no leader or lags its
/// leader by more than [`crate::Options::ready_lag`] entries.
pub async fn readyz(State(gw): State<Gateway>) -> Response {
    match not_ready(&gw).await {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// `GET /raft/status`: this node's raft state.
pub async fn raft_status(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    let s = gw
        .own_client()
        .status(gw.local_endpoint())
        .await
        .map_err(|e| ApiError::from_client(&e, true))?;
    Ok(Json(json!({
        "node_id": s.id,
        "state": s.role,
        "term": s.term,
        "leader_id": s.leader_id,
        "commit_index": s.commit_index,
        "last_applied": s.applied_index,
    }))
    .into_response())
}

/// `GET /metrics`: the node's registry in the Prometheus text format.
pub async fn metrics(State(gw): State<Gateway>) -> Response {
    let Some(registry) = &gw.options().metrics else {
        return (
            StatusCode::NOT_FOUND,
            "this gateway has no metrics registry\n",
        )
            .into_response();
    };
    let families = registry.gather();
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
