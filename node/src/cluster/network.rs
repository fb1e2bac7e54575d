//! Raft's view of the network: openraft's `RaftNetworkV2` over the `berth.raft.v1` gRPC
//! service (proto/proto/raft.proto). Messages are openraft's own, postcard-encoded
//! (docs/adr/007); a snapshot is streamed in chunks of its file.
//!
//! Every call has a deadline (openraft's per-RPC TTL, or [`SNAPSHOT_TIMEOUT`] for a whole
//! snapshot), so a slow or dead peer delays only its own replication stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::raft::raft_client::RaftClient;
use berth_proto::raft::{RaftPayload, SnapshotChunk, snapshot_chunk};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::peers::{PeerError, Peers};
use crate::meta::{NodeId, NodeInfo, TypeConfig};

/// Deadline for streaming and installing a whole snapshot.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes of snapshot file per stream message.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// Creates a [`PeerClient`] per peer.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    peers: Arc<Peers>,
}

impl PeerNetwork {
    /// A network over this node's peer connections.
    pub fn new(peers: Arc<Peers>) -> PeerNetwork {
        PeerNetwork { peers }
    }
}

/// A client for one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            target,
            addr: node.cluster_addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// Encodes an openraft message.
pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("openraft messages serialise")
}

/// Decodes an openraft message.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// A failed call as openraft's error types (`RPCError`, `StreamingError`) say it: unreachable
/// peers are backed off, other failures retried.
fn peer_error<E>(e: PeerError) -> E
where
    E: From<Unreachable<TypeConfig>> + From<NetworkError<TypeConfig>>,
{
    if e.is_unreachable() {
        Unreachable::new(&e).into()
    } else {
        NetworkError::new(&e).into()
    }
}

fn rpc_error(e: PeerError) -> RPCError<TypeConfig> {
    peer_error(e)
}

impl PeerClient {
    fn client(&self) -> Result<RaftClient<tonic::transport::Channel>, PeerError> {
        Ok(
            RaftClient::new(self.peers.channel(self.target, &self.addr)?)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        )
    }

    fn fail(&self, status: tonic::Status) -> PeerError {
        Peers::call_error(self.target, &self.addr, status)
    }

    /// One unary call: encode, send with a deadline, decode.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        timeout: Duration,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<tonic::transport::Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let client = self.client().map_err(rpc_error)?;
        let payload = RaftPayload {
            postcard: encode(req),
        };
        let resp = call(client, self.peers.request(payload, timeout))
            .await
            .map_err(|s| rpc_error(self.fail(s)))?;
        decode(&resp.into_inner().postcard).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = std::fs::File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, option.hard_ttl(), |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let mut client = self.client().map_err(rpc_error)?;
            let (target, peers) = (self.target, self.peers.clone());
            // Stop feeding the stream as soon as a test partition cuts the peer off.
            let requests = input
                .take_while(move |_| std::future::ready(!peers.cut_off(target)))
                .map(|r| RaftPayload {
                    postcard: encode(&r),
                });
            let req = self.peers.stream_request(requests);
            let resp = tokio::time::timeout(option.soft_ttl(), client.stream_append(req))
                .await
                .map_err(|_| {
                    rpc_error(self.fail(tonic::Status::deadline_exceeded(
                        "replication stream setup timed out",
                    )))
                })?
                .map_err(|s| rpc_error(self.fail(s)))?
                .into_inner();
            let (target, addr, peers) = (self.target, self.addr.clone(), self.peers.clone());
            let results = resp.map(move |item| {
                if peers.cut_off(target) {
                    return Err(rpc_error(PeerError::Partitioned(target)));
                }
                let payload = item.map_err(|s| rpc_error(Peers::call_error(target, &addr, s)))?;
                decode::<StreamAppendResult<TypeConfig>>(&payload.postcard)
                    .map_err(|e| RPCError::Network(NetworkError::new(&e)))
            });
            Ok(results.boxed())
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, option.hard_ttl(), |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, option.hard_ttl(), |mut c, r| async move {
            c.pre_vote(r).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&req, option.hard_ttl(), |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, std::fs::File>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self
            .client()
            .map_err(peer_error::<StreamingError<TypeConfig>>)?;
        let header = encode(&(vote, snapshot.meta.clone()));
        let mut file = tokio::fs::File::from_std(snapshot.snapshot);
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        // A reader task feeds the request stream; it stops when the call ends (send fails).
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(2);
        let reader = tokio::spawn(async move {
            let header = SnapshotChunk {
                part: Some(snapshot_chunk::Part::Header(header)),
            };
            if tx.send(header).await.is_err() {
                return;
            }
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    match file.read(&mut buf[filled..]).await {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => {
                            // Ending early makes the receiver reject a short snapshot.
                            tracing::warn!(error = %e, "failed to read snapshot for a peer");
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                buf.truncate(filled);
                let chunk = SnapshotChunk {
                    part: Some(snapshot_chunk::Part::Data(buf)),
                };
                if tx.send(chunk).await.is_err() || filled < SNAPSHOT_CHUNK {
                    return;
                }
            }
        });
        let req = self.peers.request(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            SNAPSHOT_TIMEOUT,
        );
        let send = client.install_snapshot(req);
        let res = tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            resp = send => {
                let resp = resp.map_err(|s| peer_error::<StreamingError<TypeConfig>>(self.fail(s)))?;
                decode(&resp.into_inner().postcard)
                    .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
            }
        };
        reader.abort();
        res
    }
}
