//! The data routes of SPEC section 9. Input is parsed by hand from the body
//! and query string (unknown fields are refused), so that every malformed
//! request gets a 400 with a message in the gateway's JSON shape.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::Gateway;
use crate::reply::{ApiError, put_bytes, take_bytes};

type Answer = Result<Response, ApiError>;

/// The caller's `Authorization: Bearer T`, if any.
///
/// # Errors
///
/// 400 for an `Authorization` header of another scheme or not UTF-8.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::invalid("the Authorization header is not text"))?;
    match v.strip_prefix("Bearer ") {
        Some(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_owned())),
        _ => Err(ApiError::invalid(
            "the Authorization header must be \"Bearer TOKEN\"",
        )),
    }
}

/// A request body as the handlers take it: its rejections (too large,
/// not readable in time) become answers in the gateway's JSON shape.
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn body<T: DeserializeOwned>(raw: Body) -> Result<T, ApiError> {
    let bytes = raw.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("request body: {e}")))
}

fn query<T: DeserializeOwned>(q: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(q.unwrap_or(""))
        .map_err(|e| ApiError::invalid(format!("query: {e}")))
}

fn ok(extra: Value) -> Response {
    let mut obj = Map::new();
    obj.insert("ok".to_owned(), Value::Bool(true));
    if let Value::Object(m) = extra {
        obj.extend(m);
    }
    Json(Value::Object(obj)).into_response()
}

fn key_of(key: Option<String>, b64: Option<String>) -> Result<Vec<u8>, ApiError> {
    let k = take_bytes(key, b64, "key")?;
    if k.is_empty() {
        return Err(ApiError::invalid("the key must not be empty"));
    }
    Ok(k)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    key: Option<String>,
    key_base64: Option<String>,
    value: Option<String>,
    value_base64: Option<String>,
    ttl_ms: Option<u64>,
}

/// `POST /put {"key":"k","value":"v"}` → `{"ok":true}`.
pub async fn put(State(gw): State<Gateway>, headers: HeaderMap, raw: Body) -> Answer {
    let token = bearer(&headers)?;
    let b: PutBody = body(raw)?;
    if b.ttl_ms.is_some() {
        return Err(ApiError::invalid(
            "ttl_ms is not supported yet: keys do not expire (no leases)",
        ));
    }
    let key = key_of(b.key, b.key_base64)?;
    let value = take_bytes(b.value, b.value_base64, "value")?;
    gw.client(token.as_deref(), false)
        .put(key, value)
        .await
        .map_err(|e| ApiError::from_client(&e, token.is_some()))?;
    Ok(ok(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    items: Vec<PutBody>,
}

/// `POST /batchput {"items":[...]}` → `{"ok":true,"count":N}`, atomic.
pub async fn batch_put(State(gw): State<Gateway>, headers: HeaderMap, raw: Body) -> Answer {
    let token = bearer(&headers)?;
    let b: BatchBody = body(raw)?;
    if b.items.is_empty() {
        return Err(ApiError::invalid("items must not be empty"));
    }
    let mut ops = Vec::with_capacity(b.items.len());
    for (i, item) in b.items.into_iter().enumerate() {
        let at = |e: ApiError| ApiError::invalid(format!("items[{i}]: {}", e.message()));
        if item.ttl_ms.is_some() {
            return Err(ApiError::invalid(format!(
                "items[{i}]: ttl_ms is not supported yet"
            )));
        }
        let key = key_of(item.key, item.key_base64).map_err(at)?;
        let value = take_bytes(item.value, item.value_base64, "value").map_err(at)?;
        ops.push(kv_client::BatchOp::Put(key.into(), value.into()));
    }
    let count = ops.len();
    gw.client(token.as_deref(), false)
        .batch(ops)
        .await
        .map_err(|e| ApiError::from_client(&e, token.is_some()))?;
    Ok(ok(json!({ "count": count })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyQuery {
    key: Option<String>,
    key_base64: Option<String>,
    #[serde(default)]
    serializable: bool,
}

/// `GET /get?key=K[&serializable=true]` → the value, or 404 with
/// `{"ok":true,"found":false}`.
pub async fn get(State(gw): State<Gateway>, headers: HeaderMap, RawQuery(q): RawQuery) -> Answer {
    let token = bearer(&headers)?;
    let q: KeyQuery = query(q.as_deref())?;
    let key = key_of(q.key, q.key_base64)?;
    let found = gw
        .client(token.as_deref(), q.serializable)
        .get(key)
        .await
        .map_err(|e| ApiError::from_client(&e, token.is_some()))?;
    Ok(match found {
        Some(v) => {
            let mut m = Map::new();
            m.insert("found".to_owned(), Value::Bool(true));
            put_bytes(&mut m, "value", &v);
            ok(Value::Object(m))
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"ok": true, "found": false})),
        )
            .into_response(),
    })
}

/// `DELETE /delete?key=K` → `{"ok":true}`.
pub async fn delete(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Answer {
    let token = bearer(&headers)?;
    let q: KeyQuery = query(q.as_deref())?;
    if q.serializable {
        return Err(ApiError::invalid("a delete cannot be serializable"));
    }
    let key = key_of(q.key, q.key_base64)?;
    gw.client(token.as_deref(), false)
        .delete(key)
        .await
        .map_err(|e| ApiError::from_client(&e, token.is_some()))?;
    Ok(ok(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    #[serde(default)]
    start: String,
    #[serde(default)]
    end: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    keys_only: bool,
    #[serde(default)]
    reverse: bool,
    #[serde(default)]
    serializable: bool,
}

/// `GET /range?start=S&end=E&limit=N[&prefix=P&keys_only=true&reverse=true]`
/// → `{"ok":true,"pairs":[...],"more":bool}`.
pub async fn range(State(gw): State<Gateway>, headers: HeaderMap, RawQuery(q): RawQuery) -> Answer {
    let token = bearer(&headers)?;
    let q: RangeQuery = query(q.as_deref())?;
    let (cap, budget) = (gw.options().max_range, gw.options().max_range_bytes);
    let want = if q.limit == 0 { cap } else { q.limit.min(cap) };
    // Pages of at most PAGE pairs until `want` (one more tells whether
    // more follow) or the byte budget is reached. A reverse range is read
    // whole (up to the caps) and turned around here.
    const PAGE: usize = 1000;
    let fetch = if q.reverse { cap + 1 } else { want + 1 };
    let client = gw.client(token.as_deref(), q.serializable);
    let mut pairs: Vec<(Bytes, Bytes)> = Vec::new();
    let (mut start, mut bytes, mut over_budget) = (Bytes::from(q.start), 0usize, false);
    loop {
        let page = kv_client::RangeQuery {
            start: start.clone(),
            end: Bytes::from(q.end.clone()),
            prefix: Bytes::from(q.prefix.clone()),
            limit: (fetch - pairs.len()).min(PAGE),
            keys_only: q.keys_only,
        };
        let got = client
            .range(&page)
            .await
            .map_err(|e| ApiError::from_client(&e, token.is_some()))?;
        let full = got.len() == page.limit;
        for (k, v) in got {
            bytes += k.len() + v.len();
            pairs.push((k, v));
        }
        if bytes > budget {
            over_budget = true;
            break;
        }
        let Some((last, _)) = pairs.last().filter(|_| full && pairs.len() < fetch) else {
            break;
        };
        let mut next = last.to_vec();
        next.push(0);
        start = next.into();
    }
    if q.reverse {
        if pairs.len() > cap || over_budget {
            return Err(ApiError::invalid(format!(
                "a reverse range over more than {cap} keys or {budget} bytes is not supported; \
                 narrow it"
            )));
        }
        pairs.reverse();
    }
    let more = pairs.len() > want || over_budget;
    pairs.truncate(want);
    let list: Vec<Value> = pairs
        .iter()
        .map(|(k, v)| {
            let mut m = Map::new();
            put_bytes(&mut m, "key", k);
            if !q.keys_only {
                put_bytes(&mut m, "value", v);
            }
            Value::Object(m)
        })
        .collect();
    Ok(ok(json!({ "pairs": list, "more": more })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasBody {
    key: Option<String>,
    key_base64: Option<String>,
    /// `null` (or absent): swap only if the key is absent.
    expected: Option<String>,
    expected_base64: Option<String>,
    value: Option<String>,
    value_base64: Option<String>,
}

/// `POST /cas {"key":..,"expected":..|null,"value":..}` → `{"ok":true}`,
/// or 409 with the current value.
pub async fn cas(State(gw): State<Gateway>, headers: HeaderMap, raw: Body) -> Answer {
    let token = bearer(&headers)?;
    let b: CasBody = body(raw)?;
    let key = key_of(b.key, b.key_base64)?;
    let expected = match (b.expected, b.expected_base64) {
        (None, None) => None,
        (t, b64) => Some(take_bytes(t, b64, "expected")?),
    };
    let value = take_bytes(b.value, b.value_base64, "value")?;
    let outcome = gw
        .client(token.as_deref(), false)
        .cas(key, expected.as_deref(), value)
        .await
        .map_err(|e| ApiError::from_client(&e, token.is_some()))?;
    Ok(match outcome {
        kv_client::CasOutcome::Swapped => ok(json!({})),
        kv_client::CasOutcome::Failed { current } => {
            let mut m = Map::new();
            m.insert("ok".to_owned(), Value::Bool(false));
            m.insert(
                "error".to_owned(),
                Value::String("compare failed".to_owned()),
            );
            m.insert("definite".to_owned(), Value::Bool(true));
            match current {
                Some(c) => put_bytes(&mut m, "current", &c),
                None => {
                    m.insert("current".to_owned(), Value::Null);
                }
            }
            (StatusCode::CONFLICT, Json(Value::Object(m))).into_response()
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    q: Option<String>,
    /// `/search`: most keys (0 or absent: the server's default, 100).
    limit: Option<usize>,
    /// `/similar`: how many nearest values (0 or absent: 10).
    k: Option<usize>,
    prefix: Option<String>,
    prefix_base64: Option<String>,
    #[serde(default)]
    serializable: bool,
}

/// The search kinds of SPEC section 11.
#[derive(Clone, Copy)]
enum SearchKind {
    Words,
    Similar,
}

/// `GET /search?q=WORDS[&limit=N&prefix=P&serializable=true]` →
/// `{"ok":true,"hits":[{"key":..,"score":..}]}`, best first (BM25).
pub async fn search(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Answer {
    search_like(gw, headers, q, SearchKind::Words).await
}

/// `GET /similar?q=TEXT[&k=K&prefix=P&serializable=true]` →
/// `{"ok":true,"hits":[{"key":..,"score":..}]}`, best first (cosine
/// similarity in [-1, 1]).
pub async fn similar(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Answer {
    search_like(gw, headers, q, SearchKind::Similar).await
}

async fn search_like(
    gw: Gateway,
    headers: HeaderMap,
    q: Option<String>,
    kind: SearchKind,
) -> Answer {
    let token = bearer(&headers)?;
    let q: SearchQuery = query(q.as_deref())?;
    let (count, other) = match kind {
        SearchKind::Words => (q.limit, q.k.map(|_| "k")),
        SearchKind::Similar => (q.k, q.limit.map(|_| "limit")),
    };
    if let Some(name) = other {
        return Err(ApiError::invalid(format!(
            "{name} is not a parameter of this route (/search takes limit, /similar takes k)"
        )));
    }
    let text = q
        .q
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ApiError::invalid("q (the query text) is required and must not be empty"))?;
    let prefix = match (q.prefix, q.prefix_base64) {
        (None, None) => Vec::new(),
        (p, b64) => take_bytes(p, b64, "prefix")?,
    };
    let opts = kv_client::SearchOptions {
        prefix: prefix.into(),
        limit: count.unwrap_or(0),
        serializable: Some(q.serializable),
    };
    let client = gw.client(token.as_deref(), q.serializable);
    let hits = match kind {
        SearchKind::Words => client.search_with(&text, &opts).await,
        SearchKind::Similar => client.similar_with(&text, &opts).await,
    }
    .map_err(|e| ApiError::from_client(&e, token.is_some()))?;
    let list: Vec<Value> = hits
        .iter()
        .map(|(k, score)| {
            let mut m = Map::new();
            put_bytes(&mut m, "key", k);
            m.insert("score".to_owned(), json!(score));
            Value::Object(m)
        })
        .collect();
    Ok(ok(json!({ "hits": list })))
}
