//! Cluster administration (SPEC section 7): membership and leadership.
//!
//! Every call is served by the leader (the client follows not-leader hints
//! there). Changes are not de-duplicated: a change whose answer was lost is
//! reported with an unknown outcome, never retried blindly.

use kv_net::proto::{self, response};

use crate::{Client, Error, Kind, Result, unexpected, write_request};

/// One member of the cluster, from [`Client::member_list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Raft id.
    pub id: u64,
    /// Where peers reach it.
    pub peer_addr: String,
    /// Where clients reach it.
    pub advertise: String,
    /// A voter (else a learner).
    pub voter: bool,
    /// The leader.
    pub leader: bool,
    /// Highest log index the leader knows it holds.
    pub matched: u64,
    /// A learner that becomes a voter once caught up.
    pub promote_when_caught_up: bool,
}

/// The membership as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Members by id.
    pub members: Vec<MemberInfo>,
    /// The cluster id of the peer handshake.
    pub cluster_id: u64,
    /// The leader's commit index.
    pub commit_index: u64,
}

impl Client {
    async fn admin(&self, cmd: proto::request::Cmd, kind: Kind) -> Result<response::Result> {
        let resp = self.execute(write_request(cmd), kind).await?;
        resp.result.ok_or_else(unexpected)
    }

    async fn change(&self, cmd: proto::request::Cmd) -> Result<()> {
        match self.admin(cmd, Kind::Write).await? {
            response::Result::Admin(_) => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// The members, from the leader.
    ///
    /// # Errors
    ///
    /// [`Error`] (definite: listing changes nothing).
    pub async fn member_list(&self) -> Result<Membership> {
        let cmd = proto::request::Cmd::MemberList(proto::MemberList::new());
        match self.admin(cmd, Kind::Read).await? {
            response::Result::MemberList(l) => Ok(Membership {
                members: l
                    .members
                    .into_iter()
                    .map(|m| MemberInfo {
                        id: m.id,
                        peer_addr: m.peer_addr,
                        advertise: m.advertise,
                        voter: m.voter,
                        leader: m.leader,
                        matched: m.matched,
                        promote_when_caught_up: m.promote_when_caught_up,
                    })
                    .collect(),
                cluster_id: l.cluster_id,
                commit_index: l.commit_index,
            }),
            _ => Err(unexpected()),
        }
    }

    /// Adds node `id`, reached by peers at `peer_addr` and by clients at
    /// `advertise` (`None`: `peer_addr`), as a learner; unless `learner`,
    /// the leader promotes it to voter once it has caught up.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad id or address, or an id already
    /// in use at another address; [`Error`] otherwise.
    pub async fn member_add(
        &self,
        id: u64,
        peer_addr: &str,
        advertise: Option<&str>,
        learner: bool,
    ) -> Result<()> {
        if id == 0 || peer_addr.is_empty() {
            return Err(Error::InvalidArgument(
                "member add needs a non-zero id and a peer address".into(),
            ));
        }
        let mut a = proto::MemberAdd::new();
        a.id = id;
        a.peer_addr = peer_addr.to_owned();
        a.advertise = advertise.unwrap_or_default().to_owned();
        a.learner = learner;
        self.change(proto::request::Cmd::MemberAdd(a)).await
    }

    /// Promotes learner `id` to voter.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] (definite) while it lags; [`Error`].
    pub async fn member_promote(&self, id: u64) -> Result<()> {
        let mut p = proto::MemberPromote::new();
        p.id = id;
        self.change(proto::request::Cmd::MemberPromote(p)).await
    }

    /// Removes node `id` (removing a non-member is fine). Removing the
    /// leader hands leadership over first.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] (definite) when the voters left would not hold
    /// a quorum of caught-up nodes; [`Error`].
    pub async fn member_remove(&self, id: u64) -> Result<()> {
        let mut r = proto::MemberRemove::new();
        r.id = id;
        self.change(proto::request::Cmd::MemberRemove(r)).await
    }

    /// Hands leadership to voter `id`.
    ///
    /// # Errors
    ///
    /// [`Error`].
    pub async fn leader_transfer(&self, id: u64) -> Result<()> {
        let mut t = proto::LeaderTransfer::new();
        t.id = id;
        self.change(proto::request::Cmd::LeaderTransfer(t)).await
    }
}

/// A backup the leader has made and keeps for this client to read
/// ([`Client::snapshot_begin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupHandle {
    /// The backup's name on the node.
    pub backup: String,
    /// Applied index of the state.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// User keys in it.
    pub keys: u64,
    /// Its files and their lengths, in stream order.
    pub files: Vec<(String, u64)>,
    /// The node that holds it.
    pub node_addr: String,
}

impl Client {
    /// Asks the leader for a backup holding every write acknowledged before
    /// this call; read it with [`Client::snapshot_read`], then
    /// [`Client::snapshot_release`] it.
    ///
    /// # Errors
    ///
    /// [`Error`] (definite: nothing changes).
    pub async fn snapshot_begin(&self) -> Result<BackupHandle> {
        let cmd = proto::request::Cmd::SnapshotSave(proto::SnapshotSave::new());
        match self.admin(cmd, Kind::Read).await? {
            response::Result::SnapshotSave(r) => Ok(BackupHandle {
                backup: r.backup,
                index: r.index,
                term: r.term,
                keys: r.keys,
                files: r.files.into_iter().map(|f| (f.name, f.size)).collect(),
                node_addr: r.node_addr,
            }),
            _ => Err(unexpected()),
        }
    }

    async fn backup_call(&self, addr: &str, cmd: proto::request::Cmd) -> Result<response::Result> {
        let attempt = async {
            let conn = self.conn(addr).await?;
            conn.call(self.stamped(write_request(cmd)))
                .await
                .map_err(|e| {
                    self.forget_conn(addr);
                    Error::Unavailable {
                        message: e.to_string(),
                        definite: true,
                    }
                })
        };
        let resp = tokio::time::timeout(self.inner.opts.timeout, attempt)
            .await
            .map_err(|_| Error::Timeout { definite: true })??;
        match resp.result {
            Some(response::Result::Error(e)) => Err(crate::refusal(e)),
            Some(r) => Ok(r),
            None => Err(unexpected()),
        }
    }

    /// Up to `len` bytes of the backup's stream at `offset`.
    ///
    /// # Errors
    ///
    /// [`Error`]; an expired or unknown backup.
    pub async fn snapshot_read(
        &self,
        handle: &BackupHandle,
        offset: u64,
        len: u32,
    ) -> Result<bytes::Bytes> {
        let mut r = proto::SnapshotRead::new();
        r.backup.clone_from(&handle.backup);
        r.offset = offset;
        r.length = len;
        match self
            .backup_call(&handle.node_addr, proto::request::Cmd::SnapshotRead(r))
            .await?
        {
            response::Result::SnapshotData(d) => Ok(d.data),
            _ => Err(unexpected()),
        }
    }

    /// Lets the node drop the backup.
    ///
    /// # Errors
    ///
    /// [`Error`].
    pub async fn snapshot_release(&self, handle: &BackupHandle) -> Result<()> {
        let mut r = proto::SnapshotRelease::new();
        r.backup.clone_from(&handle.backup);
        self.backup_call(&handle.node_addr, proto::request::Cmd::SnapshotRelease(r))
            .await
            .map(drop)
    }
}
