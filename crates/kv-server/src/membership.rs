//! Membership: the replicated address book and the admin requests that
//! change the configuration (SPEC section 7).
//!
//! Raft's configuration says who votes and who learns; the address book
//! says where each member is. A node's initial members and their peer
//! addresses come from its `members` file; every member added later, and
//! every removal, is a [`MemberRecord`] in the replicated state (`m m <id>`),
//! so the book travels with snapshots and survives restarts. The transport
//! dials members from the book; the handshake admits only members of the
//! current configuration.
//!
//! Every change is one raft configuration change, proposed by the leader:
//! - add: the record first (so every node can dial the new member before it
//!   is in the configuration), then the learner; unless added as a learner
//!   the leader promotes it once it has caught up ([`promote_caught_up`]);
//! - promote: refused while the learner lags;
//! - remove: refused when the voters left would not hold a quorum of
//!   caught-up nodes; removing the leader hands leadership to the most
//!   caught-up voter first and answers NOT_LEADER naming it, so the client
//!   repeats the removal there.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_engine::Db;
use kv_net::proto::{
    self, AdminResult, ErrorCode, Member, MemberListResult, Response, request, response,
};
use kv_net::server::error_response;
use kv_raft::{Role, Status};

use crate::command::{Command, Op, Outcome};
use crate::keys;
use crate::service::KvService;

/// A learner whose log is within this many entries of the leader's counts
/// as caught up.
pub const CAUGHT_UP_LAG: u64 = 100;

/// A member's entry in the address book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// Where peers reach it.
    pub peer_addr: String,
    /// Where clients are told to reach it.
    pub advertise: String,
    /// Added as a voter: promote it once it has caught up.
    pub promote: bool,
}

/// The stored form: `0` for a removed member, else
/// `1 \n peer_addr \n advertise \n promote(0|1)`.
#[must_use]
pub fn encode_record(record: Option<&MemberRecord>) -> Vec<u8> {
    match record {
        None => b"0".to_vec(),
        Some(r) => format!(
            "1\n{}\n{}\n{}",
            r.peer_addr,
            r.advertise,
            u8::from(r.promote)
        )
        .into_bytes(),
    }
}

/// Parses [`encode_record`]'s output.
///
/// # Errors
///
/// What is wrong with it.
pub fn decode_record(b: &[u8]) -> Result<Option<MemberRecord>, String> {
    let text = std::str::from_utf8(b).map_err(|_| "member record is not UTF-8".to_owned())?;
    let parts: Vec<&str> = text.split('\n').collect();
    match parts.as_slice() {
        ["0"] => Ok(None),
        ["1", peer, advertise, promote @ ("0" | "1")]
            if !peer.is_empty() && !advertise.is_empty() =>
        {
            Ok(Some(MemberRecord {
                peer_addr: (*peer).to_owned(),
                advertise: (*advertise).to_owned(),
                promote: *promote == "1",
            }))
        }
        _ => Err("malformed member record".to_owned()),
    }
}

/// The address book: `initial` (the `members` file: id to peer address)
/// overlaid with the replicated records (a removal takes a member out).
///
/// # Errors
///
/// Engine errors; a malformed record.
pub fn address_book(
    db: &Db,
    initial: &BTreeMap<u64, String>,
) -> crate::Result<BTreeMap<u64, MemberRecord>> {
    let mut book: BTreeMap<u64, MemberRecord> = initial
        .iter()
        .map(|(&id, addr)| {
            (
                id,
                MemberRecord {
                    peer_addr: addr.clone(),
                    advertise: addr.clone(),
                    promote: false,
                },
            )
        })
        .collect();
    for item in db.prefix(keys::MEMBER_PREFIX)? {
        let (key, value) = item?;
        let Some(id) = key.get(2..).and_then(keys::be_u64) else {
            continue;
        };
        match decode_record(&value).map_err(|e| crate::Error::corruption(db.path(), e))? {
            Some(r) => {
                book.insert(id, r);
            }
            None => {
                book.remove(&id);
            }
        }
    }
    Ok(book)
}

/// The peer address of member `id`, if the book has it.
#[must_use]
pub fn peer_addr(db: &Db, initial: &BTreeMap<u64, String>, id: u64) -> Option<String> {
    match db.get(keys::member_key(id)) {
        Ok(Some(v)) => decode_record(&v).ok().flatten().map(|r| r.peer_addr),
        Ok(None) => initial.get(&id).cloned(),
        Err(_) => None,
    }
}

/// Whether `id` is alive (heard from within an election timeout) and its
/// log close enough to the leader's.
fn caught_up(status: &Status, id: u64) -> bool {
    id == status.id
        || status.progress.get(&id).is_some_and(|p| {
            // A node that never answered has matched 0, however short the log.
            p.recent_active
                && !p.snapshot_pending
                && p.matched > 0
                && p.matched + CAUGHT_UP_LAG >= status.last_index
        })
}

fn unavailable(message: impl Into<String>) -> Response {
    error_response(0, ErrorCode::UNAVAILABLE, message)
}

fn ok() -> Response {
    let mut r = Response::new();
    r.result = Some(response::Result::Admin(AdminResult::new()));
    r
}

/// Whether `voters` hold a quorum of caught-up nodes.
fn quorum_caught_up(status: &Status, voters: &[u64]) -> Result<(), String> {
    let up = voters.iter().filter(|&&v| caught_up(status, v)).count();
    let need = voters.len() / 2 + 1;
    if voters.is_empty() || up < need {
        return Err(format!(
            "{up} of the {} remaining voters are caught up; a quorum needs {need}",
            voters.len()
        ));
    }
    Ok(())
}

impl KvService {
    /// Answers a membership request (the caller sets the response id).
    pub(crate) async fn admin(&self, cmd: request::Cmd) -> Response {
        let status = match self.handle().status().await {
            Ok(s) => s,
            Err(e) => return unavailable(format!("not applied: {e}")),
        };
        if status.role != Role::Leader {
            return self.not_leader(status.leader_id);
        }
        let result = match cmd {
            request::Cmd::MemberList(_) => Ok(self.member_list(&status)),
            request::Cmd::MemberAdd(a) => self.member_add(&status, a).await,
            request::Cmd::MemberPromote(p) => self.member_promote(&status, p.id).await,
            request::Cmd::MemberRemove(r) => self.member_remove(&status, r.id).await,
            request::Cmd::LeaderTransfer(t) => self.leader_transfer(&status, t.id).await,
            _ => Err(error_response(
                0,
                ErrorCode::INTERNAL,
                "not a membership request",
            )),
        };
        result.unwrap_or_else(|e| e)
    }

    fn book(&self) -> BTreeMap<u64, MemberRecord> {
        address_book(self.store().current().db(), self.peers()).unwrap_or_default()
    }

    fn member_list(&self, status: &Status) -> Response {
        let book = self.book();
        let mut list = MemberListResult::new();
        for (&id, voter) in status
            .voters
            .iter()
            .map(|v| (v, true))
            .chain(status.learners.iter().map(|l| (l, false)))
        {
            let mut m = Member::new();
            m.id = id;
            m.voter = voter;
            m.leader = id == status.id;
            if let Some(r) = book.get(&id) {
                m.peer_addr.clone_from(&r.peer_addr);
                m.promote_when_caught_up = !voter && r.promote;
            }
            m.advertise = self.advertise_of(id);
            m.matched = status.progress.get(&id).map_or(0, |p| p.matched);
            list.members.push(m);
        }
        list.members.sort_by_key(|m| m.id);
        list.cluster_id = self.cluster_id();
        list.leader_id = status.id;
        list.commit_index = status.commit;
        let mut r = Response::new();
        r.result = Some(response::Result::MemberList(list));
        r
    }

    async fn propose_record(
        &self,
        node_id: u64,
        record: Option<MemberRecord>,
    ) -> Result<(), Response> {
        let cmd = Command {
            client_id: 0,
            seq: 0,
            time_ms: 0,
            op: Op::SetMember { node_id, record },
        };
        let out = self
            .handle()
            .propose(cmd.encode())
            .await
            .map_err(|e| self.raft_failure(&e))?;
        match Outcome::decode(&out) {
            Ok(Outcome::Ok) => Ok(()),
            other => Err(error_response(
                0,
                ErrorCode::INTERNAL,
                format!("member record not applied: {other:?}"),
            )),
        }
    }

    async fn member_add(&self, status: &Status, a: proto::MemberAdd) -> Result<Response, Response> {
        let invalid = |m: String| error_response(0, ErrorCode::INVALID_ARGUMENT, m);
        if a.id == 0 || a.peer_addr.trim().is_empty() {
            return Err(invalid(
                "member add needs a non-zero id and a peer address".into(),
            ));
        }
        let advertise = if a.advertise.is_empty() {
            a.peer_addr.clone()
        } else {
            a.advertise.clone()
        };
        let record = MemberRecord {
            peer_addr: a.peer_addr.clone(),
            advertise,
            promote: !a.learner,
        };
        if status.voters.contains(&a.id) || status.learners.contains(&a.id) {
            // A repeat of an add that went through is fine; anything else
            // is a mistake.
            return match self.book().get(&a.id) {
                Some(r) if r.peer_addr == a.peer_addr => Ok(ok()),
                _ => Err(invalid(format!("node {} is already a member", a.id))),
            };
        }
        self.propose_record(a.id, Some(record)).await?;
        self.handle()
            .add_learner(a.id)
            .await
            .map_err(|e| self.raft_failure(&e))?;
        tracing::info!(id = a.id, peer = %a.peer_addr, learner = a.learner, "member added as a learner");
        Ok(ok())
    }

    async fn member_promote(&self, status: &Status, id: u64) -> Result<Response, Response> {
        if status.voters.contains(&id) {
            return Ok(ok());
        }
        if !status.learners.contains(&id) {
            return Err(error_response(
                0,
                ErrorCode::INVALID_ARGUMENT,
                format!("node {id} is not a learner of the cluster"),
            ));
        }
        if !caught_up(status, id) {
            let matched = status.progress.get(&id).map_or(0, |p| p.matched);
            return Err(unavailable(format!(
                "learner {id} lags: it holds the log up to {matched} of {}; not promoted",
                status.last_index
            )));
        }
        self.handle()
            .add_voter(id)
            .await
            .map_err(|e| self.raft_failure(&e))?;
        tracing::info!(id, "learner promoted to voter");
        Ok(ok())
    }

    async fn member_remove(&self, status: &Status, id: u64) -> Result<Response, Response> {
        let is_voter = status.voters.contains(&id);
        if !is_voter && !status.learners.contains(&id) {
            return Ok(ok());
        }
        if is_voter {
            let rest: Vec<u64> = status.voters.iter().copied().filter(|&v| v != id).collect();
            quorum_caught_up(status, &rest)
                .map_err(|e| unavailable(format!("removing node {id} refused: {e}")))?;
        }
        if id == status.id {
            // Hand over first; the new leader carries out the removal.
            let target = status
                .voters
                .iter()
                .copied()
                .filter(|&v| v != id && caught_up(status, v))
                .max_by_key(|v| status.progress.get(v).map_or(0, |p| p.matched))
                .ok_or_else(|| unavailable("no caught-up voter to hand leadership to"))?;
            self.handle()
                .transfer_leadership(target)
                .await
                .map_err(|e| self.raft_failure(&e))?;
            tracing::info!(
                to = target,
                "leadership handed over before removing this node"
            );
            return Err(self.not_leader(Some(target)));
        }
        self.handle()
            .remove_node(id)
            .await
            .map_err(|e| self.raft_failure(&e))?;
        tracing::info!(id, "member removed");
        // The configuration no longer has it; drop it from the book too.
        self.propose_record(id, None).await?;
        Ok(ok())
    }

    async fn leader_transfer(&self, status: &Status, id: u64) -> Result<Response, Response> {
        if id == status.id {
            return Ok(ok());
        }
        if !status.voters.contains(&id) {
            return Err(error_response(
                0,
                ErrorCode::INVALID_ARGUMENT,
                format!("node {id} is not a voter"),
            ));
        }
        self.handle()
            .transfer_leadership(id)
            .await
            .map_err(|e| self.raft_failure(&e))?;
        Ok(ok())
    }
}

/// Waits `every`, then gives the service and its raft status (`None` if
/// the node did not answer); `None` once the service is gone.
async fn tick(
    service: &std::sync::Weak<KvService>,
    every: Duration,
) -> Option<(std::sync::Arc<KvService>, Option<Status>)> {
    tokio::time::sleep(every).await;
    let service = service.upgrade()?;
    let status = service.handle().status().await.ok();
    Some((service, status))
}

/// On the leader: promotes every learner added as a voter once it has
/// caught up. Runs until the task is aborted.
pub async fn promote_caught_up(service: std::sync::Weak<KvService>, every: Duration) {
    while let Some((service, status)) = tick(&service, every).await {
        let Some(status) = status else {
            continue;
        };
        if status.role != Role::Leader || status.learners.is_empty() {
            continue;
        }
        let book = service.book();
        for &id in &status.learners {
            if book.get(&id).is_some_and(|r| r.promote) && caught_up(&status, id) {
                match service.handle().add_voter(id).await {
                    Ok(_) => tracing::info!(id, "caught-up learner promoted to voter"),
                    Err(e) => tracing::debug!(id, error = %e, "promotion not done yet"),
                }
                // One configuration change at a time.
                break;
            }
        }
    }
}

/// Completes once this node has applied a configuration that no longer
/// holds it (it was removed); logs so.
pub async fn removed(service: std::sync::Weak<KvService>, every: Duration) {
    while let Some((_service, status)) = tick(&service, every).await {
        let Some(status) = status else {
            continue;
        };
        let known = !(status.voters.is_empty() && status.learners.is_empty());
        if known && !status.voters.contains(&status.id) && !status.learners.contains(&status.id) {
            tracing::error!(
                id = status.id,
                "this node was removed from the cluster; it stops serving"
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_garbage_is_refused() {
        let r = MemberRecord {
            peer_addr: "127.0.0.1:8004".into(),
            advertise: "10.0.0.4:7004".into(),
            promote: true,
        };
        assert_eq!(decode_record(&encode_record(Some(&r))).unwrap(), Some(r));
        assert_eq!(decode_record(&encode_record(None)).unwrap(), None);
        for bad in [
            &b""[..],
            b"2",
            b"1\na\nb",
            b"1\n\nb\n0",
            b"1\na\nb\n2",
            b"\xff",
        ] {
            assert!(decode_record(bad).is_err(), "{bad:?}");
        }
    }
}
