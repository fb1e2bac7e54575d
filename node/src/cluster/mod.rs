//! The cluster: this node's Raft instance, its connections to peers, and the proposal of
//! metadata writes through Raft.
//!
//! It owns the `openraft::Raft` handle; the registry proposes [`Command`]s through
//! [`Cluster::write`] and gets back what applying them answered, after the entry is committed
//! and applied on this node (so the node that answered a write reads its own write). A write
//! proposed at a follower is forwarded to the leader over `berth.peer.v1.Peer/ForwardWrite`;
//! the follower answers once it has applied the entry itself. A forwarded write names the
//! client request it was made for in the `x-request-id` gRPC metadata
//! ([`REQUEST_ID_METADATA`]), so the leader's log lines carry the same request id.
//!
//! A node started on an empty data directory either initialises a cluster of one voter
//! (itself), or — with `--join` — waits to be added by a member. On restart it reopens its log
//! and state. One node is a cluster of one, never a separate mode.
//!
//! Submodules: `network` (Raft's client side over gRPC), `raft_service` (its server side),
//! `peers` (channels, deadlines), `faults` (the fault layer: partitions and per-peer links,
//! enforced in `peers`, in the `link` delay proxy and in a layer over the cluster endpoint),
//! `membership` (add, promote, demote, remove, transfer leadership, status), `leader_region`
//! (handing leadership to the preferred region), `fetch` (streaming a blob from a holder),
//! `call` (calls to a member or the leader, written once), `peer_view` (measured round trips,
//! throughput and failures of every peer), `nearest` (the order holders are tried in).

mod call;
mod faults;
mod fetch;
mod leader_region;
#[cfg(feature = "fault-injection")]
mod link;
mod membership;
mod nearest;
mod network;
mod pacing;
mod peer_view;
mod peers;
mod raft_service;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use berth_proto::LEADER_ID_HEADER;
use berth_proto::peer::peer_client::PeerClient;
use berth_proto::peer::{ForwardWriteRequest, ReadIndexRequest};
use openraft::Raft;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[cfg(feature = "fault-injection")]
pub use faults::FaultLayer;
pub use faults::{Faults, Link};
pub use fetch::BlobStream;
pub use leader_region::RegionPreference;
pub use membership::{MemberView, MembershipError, NodeStatus, Progress, Role};
pub use pacing::PeerBandwidth;
pub use peer_view::{PROBE_EVERY, PeerView};
pub use peers::{CONNECT_TIMEOUT, CONNECTION_WINDOW, Lane, PeerError, Peers, STREAM_WINDOW};
pub use raft_service::{RaftService, RaftServiceError};

use crate::meta::{
    Command, DiskFull, LogStore, NodeId, NodeInfo, StateMachine, TypeConfig, WriteGate, WriteResult,
};
use crate::metrics::{ProposalLabels, ProposalOutcome};
use crate::types::ErrorKind;
use crate::types::request::RequestMeta;

/// The gRPC metadata key naming the client request a forwarded write was made for.
pub const REQUEST_ID_METADATA: &str = "x-request-id";

/// Names the client request `id` (when there is one) in a peer call's metadata.
fn set_request_id<M>(req: &mut tonic::Request<M>, id: Option<&str>) {
    if let Some(v) = id.and_then(|id| tonic::metadata::MetadataValue::try_from(id).ok()) {
        req.metadata_mut().insert(REQUEST_ID_METADATA, v);
    }
}

/// The client request a peer call was made for, as its caller named it (checked as an
/// `X-Request-Id` header is: a malformed one is replaced by a new id); `None` when unnamed.
pub fn request_id_of<M>(req: &tonic::Request<M>) -> Option<String> {
    req.metadata()
        .get(REQUEST_ID_METADATA)
        .map(|v| RequestMeta::id_from(v.to_str().ok()))
}

/// This node's Raft figures, as its metrics report them ([`Cluster::raft_figures`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftFigures {
    /// The current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Whether this node leads.
    pub is_leader: bool,
    /// Index of its last log entry (0: none).
    pub last_log_index: u64,
    /// The last index it knows to be committed (0: none).
    pub committed_index: u64,
    /// The last index it applied (0: none).
    pub applied_index: u64,
    /// Voters in the membership it knows.
    pub voters: u64,
}

/// Raft timing and snapshot settings.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max: Duration,
    /// Build a snapshot (and compact the log) after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot (for peers that lag a little).
    pub keep_log_entries: u64,
    /// How long a write may wait for commit before it answers "unavailable".
    pub write_timeout: Duration,
    /// The region whose voters should lead (`raft.preferred_leader_region`); `None`: any.
    pub preferred_leader_region: Option<String>,
}

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The write could not be committed: no leader, no quorum, or it took too long.
    #[error("cluster cannot commit writes now: {reason}")]
    NoQuorum {
        /// Why, for the client and the log.
        reason: String,
    },
    /// This node's disk is too full to write metadata: writes wait for space (ADR 010).
    #[error("cluster cannot commit writes on this node now: {0}")]
    DiskFull(#[source] DiskFull),
    /// Raft stopped (storage failure or shutdown).
    #[error("raft stopped")]
    Stopped(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Starting Raft failed.
    #[error("failed to start raft: {0}")]
    Start(String),
}

impl ClusterError {
    /// The broad class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClusterError::NoQuorum { .. } => ErrorKind::Unavailable,
            // Not `Unavailable`: a follower forwarding to a leader whose disk is full must
            // read a refusal (and answer it at once), not an unreachable leader.
            ClusterError::DiskFull(_) => ErrorKind::Exhausted,
            ClusterError::Stopped(_) | ClusterError::Start(_) => ErrorKind::Internal,
        }
    }
}

/// How a node with a never-initialised store enters a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// Initialise a new cluster whose only voter is this node.
    Initialize,
    /// Wait for a member to add this node (`--join`).
    Join,
}

/// Errors of the leader-side half of a forwarded write.
#[derive(Debug, thiserror::Error)]
pub enum LeaderWriteError {
    /// This node does not lead; the id is the leader it knows of.
    #[error("this node is not the leader")]
    NotLeader(Option<NodeId>),
    /// As for a local write.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl LeaderWriteError {
    /// The broad class of the error: [`ErrorKind::Conflict`] when this node does not lead.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LeaderWriteError::NotLeader(_) => ErrorKind::Conflict,
            LeaderWriteError::Cluster(e) => e.kind(),
        }
    }
}

/// This node's membership in the cluster and its Raft instance.
#[derive(Clone)]
pub struct Cluster {
    raft: Raft<TypeConfig, StateMachine>,
    node_id: NodeId,
    write_timeout: Duration,
    /// How long a write waits for a leader to be elected before it answers "no quorum".
    leader_wait: Duration,
    peers: Arc<Peers>,
    /// Started on an empty store with [`Bootstrap::Join`]: waits to be added by a member.
    awaiting_join: bool,
    /// When a leader last replicated to this node (see [`Cluster::hears_from_leader`]).
    leader_contact: Arc<LeaderContact>,
    /// Set by [`Cluster::shutdown`]; openraft's metrics keep their last value after it.
    stopped: Arc<AtomicBool>,
    /// Where metadata writes wait while the disk is full.
    gate: WriteGate,
    /// What this node measured of its peers.
    views: Arc<peer_view::PeerViews>,
    /// Stops the background workers (probes, the leader-region check) at shutdown.
    workers: tokio_util::sync::CancellationToken,
    /// Where [`Cluster::write`] counts its outcomes, once set ([`Cluster::count_proposals_in`]).
    /// The family only, not the whole `Metrics`: its scrape hooks hold clusters.
    proposals: Arc<OnceLock<Family<ProposalLabels, Counter>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn no_quorum(reason: impl Into<String>) -> ClusterError {
    ClusterError::NoQuorum {
        reason: reason.into(),
    }
}

impl Cluster {
    /// Starts Raft over the given storage. A never-initialised store is initialised as a
    /// cluster whose only voter is this node, or left to be added by a member
    /// ([`Bootstrap::Join`]). Returns once the stored state is recovered.
    pub async fn start(
        node_id: NodeId,
        me: NodeInfo,
        log_store: LogStore,
        state_machine: StateMachine,
        settings: &RaftSettings,
        peers: Arc<Peers>,
        bootstrap: Bootstrap,
    ) -> Result<Cluster, ClusterError> {
        let config = openraft::Config {
            cluster_name: "berth".to_string(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_timeout_min.as_millis() as u64,
            election_timeout_max: settings.election_timeout_max.as_millis() as u64,
            // A node cut off by a partition must not disturb the majority when it returns.
            enable_pre_vote: Some(true),
            // Replicate entries while the leader's own log write is still being flushed.
            broadcast_submitted_on_append: Some(true),
            // Handed to the transport in `RPCOption`; ours bounds a snapshot by its progress.
            install_snapshot_timeout: network::SNAPSHOT_STALL_TIMEOUT.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                settings.snapshot_every_entries,
            ),
            max_in_snapshot_log_to_keep: settings.keep_log_entries,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| ClusterError::Start(e.to_string()))?,
        );
        let gate = log_store.write_gate();
        let raft = Raft::new(
            node_id,
            config,
            // A stream may take a connection (a handshake) and a round trip to open.
            network::PeerNetwork::new(
                peers.clone(),
                CONNECT_TIMEOUT + settings.election_timeout_max,
            ),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| ClusterError::Start(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        let awaiting_join = !initialized && bootstrap == Bootstrap::Join;
        if initialized {
            // Re-apply what this node knows was committed before the restart, before serving
            // reads. (Not openraft's `wait_for_recovery`: that waits for the cluster to commit
            // the whole local log, which needs peers — and they may be restarting too.)
            raft.wait(Some(Duration::from_secs(60)))
                .metrics(
                    |m| m.last_applied >= m.local_committed,
                    "locally committed entries are applied",
                )
                .await
                .map_err(|e| ClusterError::Start(e.to_string()))?;
        } else if bootstrap == Bootstrap::Initialize {
            tracing::info!(
                node_id,
                "initialising a new cluster with this node as its only voter"
            );
            raft.initialize(BTreeMap::from([(node_id, me)]))
                .await
                .map_err(|e| ClusterError::Start(e.to_string()))?;
        } else {
            tracing::info!(node_id, "empty store: waiting to be added to a cluster");
        }
        let cluster = Cluster {
            raft,
            node_id,
            write_timeout: settings.write_timeout,
            leader_wait: settings.election_timeout_max * 3,
            peers,
            awaiting_join,
            leader_contact: Arc::new(LeaderContact::new()),
            stopped: Arc::new(AtomicBool::new(false)),
            gate,
            views: Arc::default(),
            workers: tokio_util::sync::CancellationToken::new(),
            proposals: Arc::default(),
        };
        tokio::spawn(peer_view::run_prober(
            cluster.clone(),
            cluster.workers.clone(),
        ));
        if let Some(region) = &settings.preferred_leader_region {
            let pref = RegionPreference::new(region.clone(), settings.election_timeout_max);
            tokio::spawn(leader_region::run_region_preference(
                cluster.clone(),
                pref,
                cluster.workers.clone(),
            ));
        }
        Ok(cluster)
    }

    /// Why this node cannot write metadata now, if its disk is full (then its Raft log waits
    /// for space, and writes through this node answer at once with
    /// [`ClusterError::DiskFull`]). Measured at most 100 ms ago.
    pub fn disk_full(&self) -> Option<DiskFull> {
        self.gate.full()
    }

    /// Refuses a write at once while this node's disk is full: it could neither append it to
    /// its log nor apply it.
    fn check_disk(&self) -> Result<(), ClusterError> {
        match self.gate.full() {
            Some(full) => Err(ClusterError::DiskFull(full)),
            None => Ok(()),
        }
    }

    /// Whether this node started on an empty store to join an existing cluster (it has no
    /// leader until a member adds it).
    pub fn awaiting_join(&self) -> bool {
        self.awaiting_join
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// This node's connections to its peers.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// The gRPC service that hands peers' Raft messages to this node.
    pub fn raft_service(&self, snapshot_dir: std::path::PathBuf) -> RaftService {
        RaftService::new(self.raft.clone(), self.leader_contact.clone(), snapshot_dir)
    }

    /// Whether this node leads, or a leader replicated to it within the last three election
    /// timeouts. False on a node cut off from the leader, or removed from the cluster while
    /// still running (the leader no longer replicates to it).
    pub fn hears_from_leader(&self) -> bool {
        self.is_leader() || self.leader_contact.within(self.leader_wait)
    }

    /// Waits until a leader is known, up to `timeout`. Returns whether one is.
    pub async fn wait_for_leader(&self, timeout: Duration) -> bool {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .is_ok()
    }

    /// Whether Raft is running and this node knows a leader now.
    pub fn has_leader(&self) -> bool {
        self.current_leader().is_some()
    }

    /// The leader this node knows of, if Raft is running.
    pub fn current_leader(&self) -> Option<NodeId> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.running_state.is_err() {
            return None;
        }
        m.current_leader
    }

    /// Whether this node is in the membership it knows (false once it was removed, or before
    /// it was added).
    pub fn is_member(&self) -> bool {
        self.member(self.node_id).is_some()
    }

    /// What the cluster records of a member (from the membership this node knows).
    pub fn member(&self, id: NodeId) -> Option<NodeInfo> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// Proposes a command and waits until it is committed and applied on this node. At a
    /// follower the command is forwarded to the leader.
    ///
    /// Errors: [`ClusterError::NoQuorum`] when there is no leader (after a short wait for an
    /// election), the leader cannot be reached, or the write cannot commit within the write
    /// timeout; [`ClusterError::DiskFull`] when this node's disk is too full for metadata;
    /// [`ClusterError::Stopped`] when Raft has stopped.
    ///
    /// Each call is counted in `berth_raft_proposals_total` (once
    /// [`Cluster::count_proposals_in`] named the metrics): `ok`, `rejected` (applied, but
    /// [`WriteResult::Rejected`]) or `error`.
    pub async fn write(&self, command: Command) -> Result<WriteResult, ClusterError> {
        let res = self.write_uncounted(command).await;
        if let Some(proposals) = self.proposals.get() {
            let outcome = match &res {
                Ok(WriteResult::Rejected(_)) => ProposalOutcome::Rejected,
                Ok(_) => ProposalOutcome::Ok,
                Err(_) => ProposalOutcome::Error,
            };
            proposals.get_or_create(&ProposalLabels { outcome }).inc();
        }
        res
    }

    /// Counts the outcomes of [`Cluster::write`] (on every clone of this handle) in
    /// `proposals` (`berth_raft_proposals_total`). The first call wins.
    pub fn count_proposals_in(&self, proposals: Family<ProposalLabels, Counter>) {
        let _ = self.proposals.set(proposals);
    }

    /// This node's Raft figures now (one read of openraft's metrics).
    pub fn raft_figures(&self) -> RaftFigures {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        RaftFigures {
            term: m.current_term,
            leader: m.current_leader,
            is_leader: m.current_leader == Some(self.node_id),
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            voters: m.membership_config.membership().voter_ids().count() as u64,
        }
    }

    /// [`Cluster::write`] without counting it.
    async fn write_uncounted(&self, command: Command) -> Result<WriteResult, ClusterError> {
        self.check_disk()?;
        if !self.is_member() {
            // A removed node no longer receives the log: it could not apply its own write.
            return Err(no_quorum(format!(
                "node {} is not a member of the cluster",
                self.node_id
            )));
        }
        let deadline = Instant::now() + self.write_timeout;
        let mut last_reason = String::from("no leader is elected");
        // Each round either answers, or learns of a (new) leader; bounded by the deadline and
        // a few rounds, so a flapping leadership cannot keep a client waiting.
        for _ in 0..4 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let leader = match self.propose(command.clone(), left).await {
                Ok((result, _)) => return Ok(result),
                Err(LeaderWriteError::NotLeader(leader)) => leader,
                Err(LeaderWriteError::Cluster(e)) => return Err(e),
            };
            let leader = leader.filter(|l| *l != self.node_id && self.member(*l).is_some());
            match leader {
                Some(leader) => match self.forward_write(leader, &command, deadline).await {
                    Ok(r) => return Ok(r),
                    Err(ForwardOutcome::Failed(e)) => return Err(e),
                    Err(ForwardOutcome::Retry(reason)) => last_reason = reason,
                },
                None => {
                    let wait = self.leader_wait.min(left);
                    if !self.wait_for_leader(wait).await {
                        return Err(no_quorum("no leader is elected"));
                    }
                }
            }
        }
        Err(no_quorum(last_reason))
    }

    /// Sends a command to the leader and waits until this node has applied it.
    async fn forward_write(
        &self,
        leader: NodeId,
        command: &Command,
        deadline: Instant,
    ) -> Result<WriteResult, ForwardOutcome> {
        let left = deadline.saturating_duration_since(Instant::now());
        let req = ForwardWriteRequest {
            command: postcard::to_allocvec(command).expect("commands serialise"),
        };
        let request_id = RequestMeta::current().map(|m| m.id);
        let resp = self
            .call_member(leader, left, req, |channel, mut req| async move {
                set_request_id(&mut req, request_id.as_deref());
                PeerClient::new(channel).forward_write(req).await
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e)
                if e.status()
                    .is_some_and(|s| s.code() == tonic::Code::FailedPrecondition) =>
            {
                let status = e.status().expect("checked");
                // Leadership moved; wait for this node to learn the new leader and retry.
                let hint = status
                    .metadata()
                    .get(LEADER_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<NodeId>().ok());
                let _ = self
                    .raft
                    .wait(Some(self.leader_wait.min(left)))
                    .metrics(
                        |m| m.current_leader.is_some() && m.current_leader != Some(leader),
                        "a new leader is known",
                    )
                    .await;
                return Err(ForwardOutcome::Retry(format!(
                    "node {leader} no longer leads (it names {hint:?})"
                )));
            }
            Err(e) => {
                if !e.is_unreachable() {
                    return Err(ForwardOutcome::Failed(no_quorum(format!(
                        "the leader cannot commit the write: {e}"
                    ))));
                }
                // The leader is gone or cut off: give the others the time of an election to
                // choose another before answering "no quorum".
                let elected = self
                    .raft
                    .wait(Some(self.leader_wait.min(left)))
                    .metrics(
                        |m| m.current_leader.is_some() && m.current_leader != Some(leader),
                        "another leader is known",
                    )
                    .await
                    .is_ok();
                if elected {
                    return Err(ForwardOutcome::Retry(format!(
                        "leader {leader} is unreachable"
                    )));
                }
                return Err(ForwardOutcome::Failed(no_quorum(format!(
                    "leader {leader} cannot be reached and no other was elected: {e}"
                ))));
            }
        };
        let result: WriteResult = postcard::from_bytes(&resp.result)
            .map_err(|e| ForwardOutcome::Failed(ClusterError::Stopped(Box::new(e))))?;
        // Read-your-write: answer once this node has applied the entry too.
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(resp.log_index), "the forwarded write is applied")
            .await
            .map_err(|_| {
                ForwardOutcome::Failed(no_quorum(format!(
                    "the write committed (log index {}) but this node did not apply it in time",
                    resp.log_index
                )))
            })?;
        Ok(result)
    }

    /// Waits until this node has applied every write the cluster committed before the call
    /// (Raft's ReadIndex: the leader confirms its leadership and names the index). Used when
    /// local state may lag, e.g. a manifest PUT whose blobs were just pushed at another node.
    ///
    /// Errors: [`ClusterError::NoQuorum`] when no leader can confirm within the write timeout.
    pub async fn catch_up_with_leader(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + self.write_timeout;
        let index = match self.current_leader() {
            Some(l) if l == self.node_id => self.read_index().await?,
            Some(l) => {
                let left = deadline.saturating_duration_since(Instant::now());
                self.call_member(l, left, ReadIndexRequest {}, |channel, req| async move {
                    PeerClient::new(channel).read_index(req).await
                })
                .await
                .map_err(|e| no_quorum(e.to_string()))?
                .log_index
            }
            None => return Err(no_quorum("no leader is elected")),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "caught up with the leader")
            .await
            .map(|_| ())
            .map_err(|_| no_quorum("this node did not catch up with the leader in time"))
    }

    /// The leader's half of [`Cluster::catch_up_with_leader`]: confirms leadership and returns
    /// the index a linearizable read must have applied.
    ///
    /// Errors: [`ClusterError::NoQuorum`] when this node is not the leader or cannot confirm it.
    pub async fn read_index(&self) -> Result<u64, ClusterError> {
        let res = tokio::time::timeout(
            self.write_timeout,
            self.raft.get_read_log_id(openraft::ReadPolicy::ReadIndex),
        )
        .await
        .map_err(|_| no_quorum("leadership was not confirmed in time"))?;
        match res {
            Ok((read, _)) => Ok(read.index()),
            Err(e) => Err(no_quorum(e.to_string())),
        }
    }

    /// The leader's half of a forwarded write: proposes the command here and returns what
    /// applying it answered and its log index.
    pub async fn leader_write(
        &self,
        command: Command,
    ) -> Result<(WriteResult, u64), LeaderWriteError> {
        self.check_disk()?;
        self.propose(command, self.write_timeout).await
    }

    /// Proposes a command to this node's Raft; it answers once the entry is committed and
    /// applied here, or that this node does not lead.
    async fn propose(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<(WriteResult, u64), LeaderWriteError> {
        let res = tokio::time::timeout(timeout, self.raft.client_write(command)).await;
        match res {
            // The disk filled up while the write waited: say so rather than "too slow".
            Err(_) => Err(match self.gate.full() {
                Some(full) => ClusterError::DiskFull(full),
                None => no_quorum(format!(
                    "the write was not committed within {} ms",
                    self.write_timeout.as_millis()
                )),
            }
            .into()),
            Ok(Ok(resp)) => Ok((resp.data, resp.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(LeaderWriteError::NotLeader(f.leader_id))
            }
            Ok(Err(RaftError::APIError(e))) => Err(no_quorum(e.to_string()).into()),
            Ok(Err(RaftError::Fatal(e))) => Err(ClusterError::Stopped(Box::new(e)).into()),
        }
    }

    /// Builds a snapshot now (and lets Raft compact its log up to it).
    pub async fn trigger_snapshot(&self) -> Result<(), ClusterError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ClusterError::Stopped(Box::new(e)))
    }

    /// Stops Raft, waiting at most `bound` for its core task to end. Returns false when it
    /// had not ended by then (it then ends by itself, and drops its storage handles later).
    pub async fn shutdown(&self, bound: Duration) -> bool {
        self.stopped.store(true, Ordering::Relaxed);
        self.workers.cancel();
        // A log write waiting for disk space holds Raft's core: end the wait so it can stop.
        self.gate.stop();
        match tokio::time::timeout(bound, self.raft.shutdown()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "failed to shut raft down cleanly");
                true
            }
            Err(_) => {
                tracing::warn!(
                    waited_ms = bound.as_millis() as u64,
                    "raft did not stop in time; going on without it"
                );
                false
            }
        }
    }
}

/// When a leader last replicated to this node (milliseconds since the node started).
#[derive(Debug)]
pub struct LeaderContact {
    start: Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl LeaderContact {
    fn new() -> LeaderContact {
        LeaderContact {
            start: Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records a message from the leader now.
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn within(&self, span: Duration) -> bool {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last) <= span
    }
}

/// How a forwarded write ended when it did not answer.
enum ForwardOutcome {
    /// Give up with this error.
    Failed(ClusterError),
    /// Leadership moved; try again.
    Retry(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_write_names_its_request() {
        let mut req = tonic::Request::new(());
        set_request_id(&mut req, Some("client-id-1"));
        assert_eq!(
            req.metadata()
                .get(REQUEST_ID_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("client-id-1")
        );
        assert_eq!(request_id_of(&req).as_deref(), Some("client-id-1"));
        // No request: no metadata, and the leader names none.
        let mut bare = tonic::Request::new(());
        set_request_id(&mut bare, None);
        assert!(bare.metadata().get(REQUEST_ID_METADATA).is_none());
        assert_eq!(request_id_of(&bare), None);
        // A malformed id from a peer is replaced, as a client's would be.
        let mut odd = tonic::Request::new(());
        odd.metadata_mut()
            .insert(REQUEST_ID_METADATA, "a b".parse().unwrap());
        let id = request_id_of(&odd).unwrap();
        assert_ne!(id, "a b");
        assert_eq!(id.len(), 36);
    }
}
