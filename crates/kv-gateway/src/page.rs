//! `GET /`: the status page, and `GET /api/cluster`, the data it shows.
//!
//! The page is rendered on the server (members, roles, terms, indexes,
//! lag, leader, request rates and latency percentiles over the last
//! minute), so it reads without scripts; a small inline script (no CDN)
//! refreshes it every two seconds and draws the request rate of the last
//! minute as an SVG chart.

use std::fmt::Write as _;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use crate::Gateway;
use crate::rates::Summary;

/// How long the page waits for one member's status.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(1);

/// One member as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// Raft id.
    pub id: u64,
    /// Where clients reach it.
    pub address: String,
    /// A voter (else a learner).
    pub voter: bool,
    /// Its role as it answers, or `unreachable`.
    pub role: String,
    /// Its term.
    pub term: u64,
    /// Its commit index.
    pub commit_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// Entries it has not applied of what the leader committed.
    pub lag: u64,
    /// Why it did not answer.
    pub error: Option<String>,
    /// The node serving this page.
    pub this_node: bool,
}

/// `/api/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// The node serving this page.
    pub node_id: u64,
    /// The leader, 0 when unknown.
    pub leader_id: u64,
    /// The highest term any member answered with.
    pub term: u64,
    /// Members, by id.
    pub members: Vec<MemberView>,
    /// Why the member list could not be had (the page then shows this
    /// node alone).
    pub members_error: Option<String>,
    /// This node's requests over the last minute.
    pub rates: Summary,
}

async fn view(gw: &Gateway) -> ClusterView {
    let client = gw.own_client();
    let own = client.status(gw.local_endpoint()).await.ok();
    let (listed, members_error) = match client.member_list().await {
        Ok(m) => (
            m.members
                .into_iter()
                .map(|m| (m.id, m.advertise, m.voter))
                .collect::<Vec<_>>(),
            None,
        ),
        Err(e) => (
            own.iter()
                .map(|s| (s.id, gw.local_endpoint().to_owned(), true))
                .collect(),
            Some(e.to_string()),
        ),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (id, address, voter) in listed {
        let client = client.clone();
        tasks.spawn(async move {
            let answer = tokio::time::timeout(MEMBER_TIMEOUT, client.status(&address)).await;
            (id, address, voter, answer)
        });
    }
    let mut members = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let Ok((id, address, voter, answer)) = done else {
            continue;
        };
        let this_node = own.as_ref().is_some_and(|s| s.id == id);
        let mut m = MemberView {
            id,
            address,
            voter,
            role: "unreachable".to_owned(),
            term: 0,
            commit_index: 0,
            applied_index: 0,
            lag: 0,
            error: None,
            this_node,
        };
        match answer {
            Ok(Ok(s)) => {
                m.role = s.role.to_owned();
                m.term = s.term;
                m.commit_index = s.commit_index;
                m.applied_index = s.applied_index;
            }
            Ok(Err(e)) => m.error = Some(e.to_string()),
            Err(_) => m.error = Some(format!("no answer within {MEMBER_TIMEOUT:?}")),
        }
        members.push(m);
    }
    members.sort_by_key(|m| m.id);
    let leader_commit = members.iter().map(|m| m.commit_index).max().unwrap_or(0);
    for m in &mut members {
        if m.error.is_none() {
            m.lag = leader_commit.saturating_sub(m.applied_index);
        }
    }
    // A deposed leader may still say so in an older term.
    let leader_id = members
        .iter()
        .filter(|m| m.role == "leader")
        .max_by_key(|m| m.term)
        .map_or_else(|| own.as_ref().map_or(0, |s| s.leader_id), |m| m.id);
    ClusterView {
        node_id: own.as_ref().map_or(0, |s| s.id),
        leader_id,
        term: members.iter().map(|m| m.term).max().unwrap_or(0),
        members,
        members_error,
        rates: gw.rates().summary(),
    }
}

/// `GET /api/cluster`: the data of the status page.
pub async fn cluster(State(gw): State<Gateway>) -> Response {
    Json(view(&gw).await).into_response()
}

/// `GET /`: the status page.
pub async fn index(State(gw): State<Gateway>) -> Html<String> {
    Html(render(&view(&gw).await))
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.2} ms"))
}

/// The page for `v`.
#[must_use]
pub fn render(v: &ClusterView) -> String {
    let mut rows = String::new();
    for m in &v.members {
        let _ = write!(
            rows,
            "<tr class=\"{}\"><td>{}{}</td><td>{}</td><td class=\"role {}\">{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if m.this_node { "self" } else { "" },
            m.id,
            if m.this_node { " (this node)" } else { "" },
            esc(&m.address),
            esc(&m.role),
            esc(&m.role),
            m.term,
            m.commit_index,
            m.applied_index,
            m.lag,
            if m.voter { "voter" } else { "learner" },
        );
    }
    let r = &v.rates;
    let warning = v
        .members_error
        .as_ref()
        .map(|e| format!("<p class=\"warn\">member list unavailable: {}</p>", esc(e)))
        .unwrap_or_default();
    // In a script element: `<` never appears raw, so no `</script>`.
    let data = serde_json::to_string(v)
        .unwrap_or_else(|_| "null".to_owned())
        .replace('<', "\\u003c");
    let b = &r.binary;
    let h = &r.http;
    fill(
        PAGE,
        &[
            ("node_id", v.node_id.to_string()),
            ("leader_id", v.leader_id.to_string()),
            ("term", v.term.to_string()),
            ("rows", rows),
            ("warning", warning),
            ("b_ops", format!("{:.1}", b.ops_per_s)),
            ("b_p50", fmt_ms(b.p50_ms)),
            ("b_p90", fmt_ms(b.p90_ms)),
            ("b_p99", fmt_ms(b.p99_ms)),
            ("h_ops", format!("{:.1}", h.ops_per_s)),
            ("h_p50", fmt_ms(h.p50_ms)),
            ("h_p90", fmt_ms(h.p90_ms)),
            ("h_p99", fmt_ms(h.p99_ms)),
            ("data", data),
        ],
    )
}

/// `template` with each `{{name}}` replaced by its value, in one pass (a
/// value is never scanned for placeholders).
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find("}}").and_then(|end| {
            let name = &after[..end];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (v, end))
        }) {
            Some((v, end)) => {
                out.push_str(v);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

const PAGE: &str = include_str!("page.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_every_member_and_escapes_what_it_shows() {
        let v = ClusterView {
            node_id: 1,
            leader_id: 2,
            term: 7,
            members: vec![
                MemberView {
                    id: 1,
                    address: "127.0.0.1:7001".into(),
                    voter: true,
                    role: "follower".into(),
                    term: 7,
                    commit_index: 10,
                    applied_index: 9,
                    lag: 1,
                    error: None,
                    this_node: true,
                },
                MemberView {
                    id: 2,
                    address: "<script>".into(),
                    voter: true,
                    role: "leader".into(),
                    term: 7,
                    commit_index: 10,
                    applied_index: 10,
                    lag: 0,
                    error: None,
                    this_node: false,
                },
            ],
            members_error: None,
            rates: crate::rates::Rates::default().summary(),
        };
        let html = render(&v);
        assert!(html.contains("1 (this node)"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<td><script>"));
        assert!(html.contains("class=\"role leader\""));
        assert!(!html.contains("{{"), "a placeholder is left");
        // A value holding a placeholder or a closing tag is shown as text.
        let mut w = v.clone();
        w.members[1].address = "{{data}}</script><b>".into();
        let html = render(&w);
        assert!(
            html.contains("{{data}}</td>") || html.contains("{{data}}&lt;"),
            "{html}"
        );
        assert!(!html.contains("</script><b>"), "{html}");
    }
}
