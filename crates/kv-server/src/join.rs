//! `kvd --join`: learning a running cluster's membership and id before a
//! node with an empty data directory starts as its new member.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_net::ClientConn;
use kv_net::proto::{ErrorCode, MemberList, Request, request, response};

use crate::error::{Error, Result};

/// What a joining node needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The members and their peer addresses, this node included.
    pub members: BTreeMap<u64, String>,
    /// The cluster id of the peer handshake.
    pub cluster_id: u64,
}

/// Asks the members at `endpoints` (client addresses) for the membership,
/// following not-leader hints, for at most `within`. `token` is sent
/// along to a cluster that checks tokens (the joining node's own admin
/// token: every node has the same auth file).
///
/// # Errors
///
/// [`Error::Config`] when no endpoint answered, or when the cluster does not
/// list node `id` (it must be added with `kvctl member add` first).
pub async fn fetch_membership(
    endpoints: &[String],
    id: u64,
    net: &kv_net::Options,
    token: Option<&str>,
    within: Duration,
) -> Result<Joined> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::from("no endpoint given");
    let mut queue: Vec<String> = endpoints.to_vec();
    let mut round = 0usize;
    while tokio::time::Instant::now() < deadline {
        let Some(addr) = queue.get(round % queue.len().max(1)).cloned() else {
            break;
        };
        round += 1;
        let mut req = Request::new();
        req.cmd = Some(request::Cmd::MemberList(MemberList::new()));
        req.token = token.unwrap_or_default().to_owned();
        let answer = tokio::time::timeout_at(deadline, async {
            let conn = ClientConn::connect(&addr, net).await?;
            conn.call(req).await
        })
        .await;
        match answer {
            Err(_) => break,
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Ok(Ok(resp)) => match resp.result {
                Some(response::Result::MemberList(list)) => {
                    let members: BTreeMap<u64, String> = list
                        .members
                        .iter()
                        .filter(|m| !m.peer_addr.is_empty())
                        .map(|m| (m.id, m.peer_addr.clone()))
                        .collect();
                    if !members.contains_key(&id) {
                        return Err(Error::Config(format!(
                            "the cluster at {addr} has no member {id}: add it first with \
                             `kvctl member add {id} PEER_ADDR`"
                        )));
                    }
                    return Ok(Joined {
                        members,
                        cluster_id: list.cluster_id,
                    });
                }
                Some(response::Result::Error(e))
                    if e.code.value() == ErrorCode::NOT_LEADER as i32 =>
                {
                    last = format!("{addr}: {}", e.message);
                    if !e.leader_addr.is_empty() && !queue.contains(&e.leader_addr) {
                        queue.insert(0, e.leader_addr.clone());
                        round = 0;
                        continue;
                    }
                }
                Some(response::Result::Error(e)) => last = format!("{addr}: {}", e.message),
                _ => last = format!("{addr}: unexpected answer"),
            },
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::Config(format!(
        "cannot learn the cluster's membership from {}: {last}",
        endpoints.join(",")
    )))
}
