//! The cluster: this node's Raft instance and the proposal of metadata writes through it.
//!
//! It owns the `openraft::Raft` handle; the registry proposes [`Command`]s through
//! [`Cluster::write`] and gets back what applying them answered, after the entry is committed
//! and applied on this node (so the node that answered a write reads its own write).
//!
//! A node started on an empty data directory initialises a cluster of one voter (itself); on
//! restart it reopens its log and state. One node is a cluster of one, never a separate mode.

mod network;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::Raft;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};

use crate::meta::{Command, LogStore, NodeId, NodeInfo, StateMachine, TypeConfig, WriteResult};

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
    /// Raft stopped (storage failure or shutdown).
    #[error("raft stopped")]
    Stopped(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Starting Raft failed.
    #[error("failed to start raft: {0}")]
    Start(String),
}

/// This node's membership in the cluster and its Raft instance.
#[derive(Clone)]
pub struct Cluster {
    raft: Raft<TypeConfig, StateMachine>,
    node_id: NodeId,
    write_timeout: Duration,
    /// Set by [`Cluster::shutdown`]; openraft's metrics keep their last value after it.
    stopped: Arc<AtomicBool>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts Raft over the given storage; on a never-initialised store, initialises a cluster
    /// whose only voter is this node. Returns once the stored state is recovered.
    pub async fn start(
        node_id: NodeId,
        me: NodeInfo,
        log_store: LogStore,
        state_machine: StateMachine,
        settings: &RaftSettings,
    ) -> Result<Cluster, ClusterError> {
        let config = openraft::Config {
            cluster_name: "berth".to_string(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_timeout_min.as_millis() as u64,
            election_timeout_max: settings.election_timeout_max.as_millis() as u64,
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
        let raft = Raft::new(
            node_id,
            config,
            network::PeerNetwork,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| ClusterError::Start(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        if initialized {
            // Re-apply what was committed before the restart before serving reads.
            raft.wait_for_recovery(Some(Duration::from_secs(60)))
                .await
                .map_err(|e| ClusterError::Start(e.to_string()))?;
        } else {
            tracing::info!(
                node_id,
                "initialising a new cluster with this node as its only voter"
            );
            raft.initialize(BTreeMap::from([(node_id, me)]))
                .await
                .map_err(|e| ClusterError::Start(e.to_string()))?;
        }
        Ok(Cluster {
            raft,
            node_id,
            write_timeout: settings.write_timeout,
            stopped: Arc::new(AtomicBool::new(false)),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
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
        if self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.running_state.is_ok() && m.current_leader.is_some()
    }

    /// Proposes a command and waits until it is committed and applied on this node.
    ///
    /// Errors: [`ClusterError::NoQuorum`] when there is no leader or the write cannot commit
    /// within the write timeout; [`ClusterError::Stopped`] when Raft has stopped.
    pub async fn write(&self, command: Command) -> Result<WriteResult, ClusterError> {
        let res = tokio::time::timeout(self.write_timeout, self.raft.client_write(command)).await;
        match res {
            Err(_) => Err(ClusterError::NoQuorum {
                reason: format!(
                    "the write was not committed within {} ms",
                    self.write_timeout.as_millis()
                ),
            }),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ClusterError::NoQuorum {
                    reason: match f.leader_id {
                        Some(id) => format!("node {id} leads; forwarding writes is not available"),
                        None => "no leader is elected".to_string(),
                    },
                })
            }
            Ok(Err(RaftError::APIError(e))) => Err(ClusterError::NoQuorum {
                reason: e.to_string(),
            }),
            Ok(Err(RaftError::Fatal(e))) => Err(ClusterError::Stopped(Box::new(e))),
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

    /// Stops Raft.
    pub async fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "failed to shut raft down cleanly");
        }
    }
}
