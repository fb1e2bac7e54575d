//! berth's gRPC contracts, generated from `proto/*.proto`.
//!
//! This crate depends on nothing in the workspace: `node` serves these services and calls the
//! node-to-node ones; `clusterctl` calls the admin service.

/// The admin service (`berth.admin.v1`) that `clusterctl` talks to, and the test-only
/// fault-injection service.
pub mod admin {
    tonic::include_proto!("berth.admin.v1");
}

/// Raft's node-to-node RPCs (`berth.raft.v1`).
pub mod raft {
    tonic::include_proto!("berth.raft.v1");
}

/// Write forwarding and blob streaming between nodes (`berth.peer.v1`).
pub mod peer {
    tonic::include_proto!("berth.peer.v1");
}

/// Metadata key naming the node that sent a node-to-node call.
pub const FROM_NODE_HEADER: &str = "berth-from-node";
/// Metadata key on a `FAILED_PRECONDITION` answer of `ForwardWrite`: the leader's node id.
pub const LEADER_ID_HEADER: &str = "berth-leader-id";
