//! Membership changes and this node's view of the cluster.
//!
//! The operations run on the leader only (the admin adapter relays calls that reach a
//! follower). Each reports its progress on a channel while it runs and ends with the outcome;
//! every wait is bounded. Refusals — removing the last voter, promoting a node that is not a
//! learner or that does not answer the leader's heartbeats — change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::Instant as _;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::mpsc;

use super::Cluster;
use crate::meta::{NodeId, NodeInfo};
use crate::types::ErrorKind;

/// A member's role in the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The voter that currently leads.
    Leader,
    /// A voter.
    Voter,
    /// A learner (replicates, does not vote).
    Learner,
}

impl Role {
    /// Its name on the wire and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Voter => "voter",
            Role::Learner => "learner",
        }
    }
}

/// A member as the membership this node knows records it.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// Node id.
    pub id: NodeId,
    /// Addresses and placement.
    pub info: NodeInfo,
    /// Role.
    pub role: Role,
}

/// This node's own Raft view.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// This node.
    pub node_id: NodeId,
    /// Current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader_id: Option<NodeId>,
    /// Index of its last log entry.
    pub last_log_index: u64,
    /// Index of the last entry it applied.
    pub applied_index: u64,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub state: &'static str,
}

/// One progress report of a running operation.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// What is happening, or the outcome.
    pub message: String,
    /// Set on the last report of a successful operation.
    pub done: bool,
    /// Replicated index of the node concerned (0: not applicable).
    pub matched: u64,
    /// Index it must reach (0: not applicable).
    pub target: u64,
}

impl Progress {
    fn line(message: impl Into<String>) -> Progress {
        Progress {
            message: message.into(),
            ..Progress::default()
        }
    }

    fn done(message: impl Into<String>) -> Progress {
        Progress {
            message: message.into(),
            done: true,
            ..Progress::default()
        }
    }
}

/// Why a membership operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The operation is not allowed in the current membership.
    #[error("{0}")]
    Refused(String),
    /// No leader, or this node is not it.
    #[error("{0}")]
    Unavailable(String),
    /// It did not finish in time (it may still complete).
    #[error("{0}")]
    Timeout(String),
}

impl MembershipError {
    /// The broad class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MembershipError::Invalid(_) => ErrorKind::Invalid,
            MembershipError::Refused(_) => ErrorKind::Conflict,
            MembershipError::Unavailable(_) => ErrorKind::Unavailable,
            MembershipError::Timeout(_) => ErrorKind::Timeout,
        }
    }
}

/// How long a membership operation may take on the leader.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a running operation reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

type Reports = mpsc::Sender<Progress>;

async fn report(tx: &Reports, p: Progress) {
    // The caller may have gone away; the operation still finishes.
    let _ = tx.send(p).await;
}

fn write_error(
    e: RaftError<crate::meta::TypeConfig, ClientWriteError<crate::meta::TypeConfig>>,
) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => MembershipError::Unavailable(
            format!("this node is not the leader (leader: {:?})", f.leader_id),
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            MembershipError::Refused(e.to_string())
        }
        RaftError::APIError(e) => MembershipError::Refused(e.to_string()),
        RaftError::Fatal(e) => MembershipError::Unavailable(format!("raft stopped: {e}")),
    }
}

impl Cluster {
    /// Whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        self.current_leader() == Some(self.node_id)
    }

    /// The members of the membership this node knows, by id.
    pub fn members(&self) -> Vec<MemberView> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, info)| MemberView {
                id: *id,
                info: info.clone(),
                role: if m.current_leader == Some(*id) && voters.contains(id) {
                    Role::Leader
                } else if voters.contains(id) {
                    Role::Voter
                } else {
                    Role::Learner
                },
            })
            .collect()
    }

    /// This node's own Raft view.
    pub fn node_status(&self) -> NodeStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        NodeStatus {
            node_id: self.node_id,
            term: m.current_term,
            leader_id: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
        }
    }

    fn require_leader(&self) -> Result<(), MembershipError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(MembershipError::Unavailable(format!(
                "node {} is not the leader",
                self.node_id
            )))
        }
    }

    fn voters(&self) -> BTreeSet<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().voter_ids().collect()
    }

    /// Replicated index of `id` as the leader sees it, and the leader's last index.
    fn replication_of(&self, id: NodeId) -> (Option<u64>, u64) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned())
            .flatten()
            .map(|l| l.index);
        (matched, m.last_log_index.unwrap_or(0))
    }

    /// Whether `id` acknowledges the leader's heartbeats now: an acknowledgement received after
    /// this call started, waiting up to an election-timeout span for one. (An acknowledgement
    /// from just before is not enough: a node that died a moment ago would pass, and promoting
    /// it would leave a membership change that cannot commit.)
    async fn answers_heartbeats(&self, id: NodeId) -> bool {
        if id == self.node_id {
            return true;
        }
        let asked = std::time::Instant::now();
        self.raft
            .wait(Some(self.leader_wait))
            .metrics(
                |m| {
                    m.heartbeat
                        .as_ref()
                        .and_then(|h: &BTreeMap<NodeId, Option<_>>| h.get(&id).cloned())
                        .flatten()
                        .is_some_and(|at| at.elapsed() < asked.elapsed())
                },
                "the node acknowledges a heartbeat",
            )
            .await
            .is_ok()
    }

    /// Adds a node as a learner and waits until it has caught up with the log.
    pub async fn add_node(
        &self,
        id: NodeId,
        info: NodeInfo,
        tx: Reports,
    ) -> Result<(), MembershipError> {
        if id == 0 {
            return Err(MembershipError::Invalid(
                "node id must be at least 1".into(),
            ));
        }
        if info.cluster_addr.is_empty() || info.url.is_empty() {
            return Err(MembershipError::Invalid(
                "a node needs a cluster address and a URL".into(),
            ));
        }
        self.require_leader()?;
        if let Some(existing) = self.members().into_iter().find(|m| m.id == id) {
            if existing.info == info {
                report(
                    &tx,
                    Progress::line(format!("node {id} is already a member")),
                )
                .await;
            } else {
                return Err(MembershipError::Refused(format!(
                    "node id {id} is already a member with other addresses or placement \
                     (cluster {}, url {}, region {}, zone {}); remove it first",
                    existing.info.cluster_addr,
                    existing.info.url,
                    existing.info.region,
                    existing.info.zone
                )));
            }
        } else {
            report(
                &tx,
                Progress::line(format!("adding node {id} as a learner")),
            )
            .await;
            self.raft
                .add_learner(id, info, false)
                .await
                .map_err(write_error)?;
        }
        self.wait_caught_up(id, &tx).await?;
        report(
            &tx,
            Progress::done(format!("node {id} added as a learner and caught up")),
        )
        .await;
        Ok(())
    }

    /// Reports `id`'s replication until it reaches the leader's last index at the start.
    async fn wait_caught_up(&self, id: NodeId, tx: &Reports) -> Result<(), MembershipError> {
        let (_, target) = self.replication_of(id);
        let deadline = tokio::time::Instant::now() + OPERATION_TIMEOUT;
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tick.tick().await;
            self.require_leader()?;
            let (matched, _) = self.replication_of(id);
            let matched_index = matched.unwrap_or(0);
            report(
                tx,
                Progress {
                    message: format!("node {id} catching up"),
                    done: false,
                    matched: matched_index,
                    target,
                },
            )
            .await;
            if matched.is_some() && matched_index >= target {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MembershipError::Timeout(format!(
                    "node {id} did not catch up within {} s (at {matched_index} of {target})",
                    OPERATION_TIMEOUT.as_secs()
                )));
            }
        }
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: NodeId, tx: Reports) -> Result<(), MembershipError> {
        self.require_leader()?;
        let member = self.members().into_iter().find(|m| m.id == id);
        match member.map(|m| m.role) {
            None => {
                return Err(MembershipError::Refused(format!(
                    "node {id} is not a member"
                )));
            }
            Some(Role::Leader | Role::Voter) => {
                return Err(MembershipError::Refused(format!(
                    "node {id} is already a voter"
                )));
            }
            Some(Role::Learner) => {}
        }
        if !self.answers_heartbeats(id).await {
            return Err(MembershipError::Refused(format!(
                "node {id} does not answer the leader; a voter that cannot be reached would \
                 weaken the quorum"
            )));
        }
        self.wait_caught_up(id, &tx).await?;
        report(&tx, Progress::line(format!("promoting node {id} to voter"))).await;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        report(&tx, Progress::done(format!("node {id} is a voter"))).await;
        Ok(())
    }

    /// Makes a voter a learner.
    pub async fn demote(&self, id: NodeId, tx: Reports) -> Result<(), MembershipError> {
        self.require_leader()?;
        let voters = self.voters();
        if !voters.contains(&id) {
            return Err(MembershipError::Refused(format!(
                "node {id} is not a voter"
            )));
        }
        if voters.len() == 1 {
            return Err(MembershipError::Refused(format!(
                "node {id} is the last voter; the cluster needs at least one"
            )));
        }
        report(
            &tx,
            Progress::line(format!("demoting node {id} to learner")),
        )
        .await;
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
            .await
            .map_err(write_error)?;
        report(&tx, Progress::done(format!("node {id} is a learner"))).await;
        Ok(())
    }

    /// Removes a node from the cluster.
    pub async fn remove(&self, id: NodeId, tx: Reports) -> Result<(), MembershipError> {
        self.require_leader()?;
        let voters = self.voters();
        let is_member = self.members().iter().any(|m| m.id == id);
        if !is_member {
            return Err(MembershipError::Refused(format!(
                "node {id} is not a member"
            )));
        }
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(MembershipError::Refused(format!(
                    "node {id} is the last voter; the cluster needs at least one"
                )));
            }
            report(&tx, Progress::line(format!("removing voter {id}"))).await;
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
        } else {
            report(&tx, Progress::line(format!("removing learner {id}"))).await;
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
        }
        report(&tx, Progress::done(format!("node {id} removed"))).await;
        Ok(())
    }

    /// Hands leadership to another voter and waits until it leads.
    pub async fn transfer_leader(&self, to: NodeId, tx: Reports) -> Result<(), MembershipError> {
        self.require_leader()?;
        if to == self.node_id {
            report(&tx, Progress::done(format!("node {to} already leads"))).await;
            return Ok(());
        }
        if !self.voters().contains(&to) {
            return Err(MembershipError::Refused(format!(
                "node {to} is not a voter"
            )));
        }
        if !self.answers_heartbeats(to).await {
            return Err(MembershipError::Refused(format!(
                "node {to} does not answer the leader"
            )));
        }
        let (matched, target) = self.replication_of(to);
        report(
            &tx,
            Progress {
                message: format!("handing leadership to node {to}"),
                done: false,
                matched: matched.unwrap_or(0),
                target,
            },
        )
        .await;
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| MembershipError::Unavailable(format!("raft stopped: {e}")))?;
        let wait = self.leader_wait * 4;
        self.raft
            .wait(Some(wait))
            .metrics(|m| m.current_leader == Some(to), "the new leader is known")
            .await
            .map_err(|_| {
                MembershipError::Timeout(format!(
                    "node {to} did not take over within {} ms",
                    wait.as_millis()
                ))
            })?;
        report(&tx, Progress::done(format!("node {to} leads"))).await;
        Ok(())
    }
}
