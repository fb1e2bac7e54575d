//! Calls to another member or to the leader, written once: find the node in the membership
//! this node knows, then [`Peers::call`](crate::cluster::Peers::call) (test partition check, channel, deadline, a bound on
//! the wait, the mapping of a failure to [`PeerError`]).
//!
//! Every node-to-node gRPC caller uses these: forwarded writes and ReadIndex (`mod.rs`),
//! blob fetches (`fetch.rs`), admin status and relays (`rpc/admin.rs`). The HTTP relay of
//! upload sessions (`api/relay.rs`) is not gRPC, but finds its node with
//! [`Cluster::reachable_member`] and the same errors. Raft's own client (`network.rs`) is
//! handed the address by openraft and calls [`Peers`](crate::cluster::Peers) directly.

use std::future::Future;
use std::time::Duration;

use tonic::transport::Channel;

use super::Cluster;
use super::peers::{Lane, PeerError};
use crate::meta::{NodeId, NodeInfo};

impl Cluster {
    /// What the cluster records of member `node`, if a call to it may be tried now.
    ///
    /// Errors: [`PeerError::NotMember`] when it is not in the membership this node knows;
    /// [`PeerError::Partitioned`] when a test partition cuts it off.
    pub fn reachable_member(&self, node: NodeId) -> Result<NodeInfo, PeerError> {
        let info = self.member(node).ok_or(PeerError::NotMember(node))?;
        if self.peers.faults().is_blocked(node) {
            return Err(PeerError::Partitioned(node));
        }
        Ok(info)
    }

    /// Calls member `node` with `message`, bounded by `timeout` (see [`Peers::call`](crate::cluster::Peers::call)).
    ///
    /// Errors: as [`Cluster::reachable_member`] and [`Peers::call`](crate::cluster::Peers::call).
    pub async fn call_member<M, T, F, Fut>(
        &self,
        node: NodeId,
        timeout: Duration,
        message: M,
        call: F,
    ) -> Result<T, PeerError>
    where
        F: FnOnce(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let info = self.reachable_member(node)?;
        self.peers
            .call(
                Lane::Control,
                node,
                &info.cluster_addr,
                timeout,
                message,
                call,
            )
            .await
    }

    /// Calls the leader this node knows of, as [`Cluster::call_member`]. Returns the leader
    /// called with its answer. The caller handles the case where this node leads itself.
    ///
    /// Errors: [`PeerError::NoLeader`] when no leader is known; else as
    /// [`Cluster::call_member`].
    pub async fn call_leader<M, T, F, Fut>(
        &self,
        timeout: Duration,
        message: M,
        call: F,
    ) -> Result<(NodeId, T), PeerError>
    where
        F: FnOnce(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let leader = self.current_leader().ok_or(PeerError::NoLeader)?;
        let answer = self.call_member(leader, timeout, message, call).await?;
        Ok((leader, answer))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::{Bootstrap, Peers, RaftSettings};
    use crate::types::ErrorKind;

    const SHORT: Duration = Duration::from_millis(200);

    async fn one_node(dir: &std::path::Path) -> Cluster {
        let (log, sm, _) = crate::meta::open(dir).unwrap();
        let settings = RaftSettings {
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            snapshot_every_entries: 1000,
            keep_log_entries: 100,
            write_timeout: Duration::from_secs(2),
            preferred_leader_region: None,
        };
        let me = NodeInfo {
            url: "http://127.0.0.1:1".into(),
            cluster_addr: "127.0.0.1:1".into(),
            region: String::new(),
            zone: String::new(),
        };
        Cluster::start(
            1,
            me,
            log,
            sm,
            &settings,
            Arc::new(Peers::new(1)),
            Bootstrap::Initialize,
        )
        .await
        .unwrap()
    }

    /// A node outside the membership is a typed error, before any channel is opened.
    #[tokio::test]
    async fn calling_a_non_member_is_not_member() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = one_node(dir.path()).await;
        let err = cluster
            .call_member(99, SHORT, (), |_, _| async {
                Ok::<_, tonic::Status>(tonic::Response::new(()))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::NotMember(99)), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.is_unreachable());
        assert_eq!(err.to_string(), "node 99 is not a member of the cluster");
        assert!(cluster.shutdown(Duration::from_secs(5)).await);
    }

    /// What the peer answered is kept; from this node's side it is "unavailable".
    #[tokio::test]
    async fn a_failed_call_keeps_the_status_and_is_unavailable() {
        let peers = Peers::new(1);
        let err = peers
            .call(Lane::Control, 2, "127.0.0.1:1", SHORT, (), |_, _| async {
                Err::<tonic::Response<()>, _>(tonic::Status::not_found("no such blob"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(err.status().unwrap().code(), tonic::Code::NotFound);
        assert!(!err.is_unreachable());
        assert_eq!(
            err.to_string(),
            "call to node 2 at 127.0.0.1:1 failed: no such blob"
        );
    }

    /// A peer that never answers costs the timeout, then DEADLINE_EXCEEDED.
    #[tokio::test]
    async fn a_hung_call_ends_at_the_timeout() {
        let peers = Peers::new(1);
        let err = peers
            .call(Lane::Control, 2, "127.0.0.1:1", SHORT, (), |_, _| {
                std::future::pending::<Result<tonic::Response<()>, tonic::Status>>()
            })
            .await
            .unwrap_err();
        let status = err.status().unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(status.message(), "no answer within 200 ms");
    }

    /// The request the call gets carries the deadline and this node's id.
    #[tokio::test]
    async fn the_request_carries_deadline_and_sender() {
        let peers = Peers::new(1);
        let sender = peers
            .call(
                Lane::Control,
                2,
                "127.0.0.1:1",
                SHORT,
                (),
                |_, req| async move {
                    assert!(req.metadata().contains_key("grpc-timeout"));
                    Ok::<_, tonic::Status>(tonic::Response::new(Peers::sender(&req)))
                },
            )
            .await
            .unwrap();
        assert_eq!(sender, Some(1));
    }
}
