//! Raft's view of the network to peers.
//!
//! Node-to-node RPC (the `proto/` Raft service over tonic) is not part of this node yet: a
//! cluster has exactly one voter, itself, and Raft never sends it an RPC. Every peer is
//! therefore reported unreachable, which is what Raft would see of a peer that cannot be
//! contacted; nothing here pretends to deliver a message.

use std::future::Future;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};

use crate::meta::{NodeId, NodeInfo, TypeConfig};

#[derive(Debug, thiserror::Error)]
#[error("node {0} cannot be reached: this build has no node-to-node transport")]
struct NoTransport(NodeId);

/// Creates a [`PeerClient`] per peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerNetwork;

/// A client for one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
}

impl PeerClient {
    fn unreachable(&self) -> Unreachable<TypeConfig> {
        Unreachable::new(&NoTransport(self.target))
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &NodeInfo) -> PeerClient {
        PeerClient { target }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = std::fs::File;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<TypeConfig>,
        _snapshot: SnapshotOf<TypeConfig, std::fs::File>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}
