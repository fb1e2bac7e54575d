//! Raft's view of the network: openraft's `RaftNetworkV2` over the `berth.raft.v1` gRPC
//! service (proto/proto/raft.proto). Messages are openraft's own, postcard-encoded
//! (docs/adr/007); a snapshot is streamed in chunks of its file.
//!
//! Every call is bounded, so a slow or dead peer delays only its own replication stream, and
//! no bound is shorter than a round trip between regions (ADR 012): unary calls (votes) have
//! openraft's per-RPC TTL as their deadline; a replication stream is handed to openraft at
//! once and opened when first polled, within the stream setup bound (openraft's own
//! per-stream TTL is the heartbeat interval, less than a WAN round trip); a snapshot has no
//! deadline as a whole — it may take minutes behind a slow link — but fails when no chunk
//! goes out for [`SNAPSHOT_STALL_TIMEOUT`], or when the receiver does not answer within
//! [`SNAPSHOT_INSTALL_TIMEOUT`] of the last chunk.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
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

/// Longest time a snapshot transfer may make no progress (no chunk taken by the transport,
/// on the sender; none arriving, on the receiver).
pub const SNAPSHOT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the receiver may take to install a snapshot once its last chunk is sent.
pub const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a snapshot transfer's progress is checked.
const SNAPSHOT_WATCH_EVERY: Duration = Duration::from_millis(500);
/// Bytes of snapshot file per stream message.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Wait before reporting the first failure to open a replication stream; doubled for each
/// failure in a row, up to [`STREAM_RETRY_MAX`]. openraft's own backoff waits inside the
/// request stream, which is never polled when the connection fails at once (a peer that is
/// down refuses it in microseconds): without this the leader would retry at once, forever.
const STREAM_RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest wait before reporting a failure to open a replication stream.
const STREAM_RETRY_MAX: Duration = Duration::from_secs(1);

/// Creates a [`PeerClient`] per peer.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    peers: Arc<Peers>,
    stream_setup: Duration,
}

impl PeerNetwork {
    /// A network over this node's peer connections; a replication stream must open (its
    /// response headers arrive) within `stream_setup`.
    pub fn new(peers: Arc<Peers>, stream_setup: Duration) -> PeerNetwork {
        PeerNetwork {
            peers,
            stream_setup,
        }
    }
}

/// A client for one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
    stream_setup: Duration,
    /// Replication streams that failed to open in a row (see [`STREAM_RETRY_MIN`]).
    open_failures: Arc<AtomicU32>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            target,
            addr: node.cluster_addr.clone(),
            peers: self.peers.clone(),
            stream_setup: self.stream_setup,
            open_failures: Arc::default(),
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
        _option: RPCOption,
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
            let requests = input.map(|r| RaftPayload {
                postcard: encode(&r),
            });
            let req = self.peers.stream_request(requests);
            let (target, addr, setup) = (self.target, self.addr.clone(), self.stream_setup);
            let failures = self.open_failures.clone();
            // The response headers come a round trip later, and openraft's bound on this call
            // (its heartbeat interval) may be shorter than a round trip between regions: the
            // stream is returned at once and opened when openraft first polls it, bounded by
            // `setup`. (A heartbeat is still bounded by openraft, around the whole exchange.)
            let opened = async move {
                let failed = |s| rpc_error(Peers::call_error(target, &addr, s));
                let status = match tokio::time::timeout(setup, client.stream_append(req)).await {
                    Ok(Ok(resp)) => {
                        failures.store(0, Ordering::Relaxed);
                        return Ok((resp.into_inner(), addr));
                    }
                    Ok(Err(s)) => s,
                    Err(_) => tonic::Status::deadline_exceeded(format!(
                        "replication stream setup timed out after {} ms",
                        setup.as_millis()
                    )),
                };
                let n = failures.fetch_add(1, Ordering::Relaxed).min(16);
                tokio::time::sleep(
                    STREAM_RETRY_MIN
                        .saturating_mul(1 << n)
                        .min(STREAM_RETRY_MAX),
                )
                .await;
                Err(failed(status))
            };
            let results = futures::stream::once(opened).flat_map(move |opened| match opened {
                Ok((resp, addr)) => resp
                    .map(move |item| {
                        let payload =
                            item.map_err(|s| rpc_error(Peers::call_error(target, &addr, s)))?;
                        decode::<StreamAppendResult<TypeConfig>>(&payload.postcard)
                            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
                    })
                    .boxed(),
                Err(e) => futures::stream::once(std::future::ready(Err(e))).boxed(),
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
        // Each chunk the transport takes is progress.
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(2);
        let progress = Arc::new(SnapshotProgress::new());
        let reader_progress = progress.clone();
        let reader = tokio::spawn(async move {
            let progress = reader_progress;
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
                    break;
                }
                buf.truncate(filled);
                let chunk = SnapshotChunk {
                    part: Some(snapshot_chunk::Part::Data(buf)),
                };
                if tx.send(chunk).await.is_err() {
                    return;
                }
                progress.advanced();
                if filled < SNAPSHOT_CHUNK {
                    break;
                }
            }
            progress.finished();
        });
        // No deadline on the whole call: a big snapshot behind a slow link may take minutes.
        // The watchdog ends a transfer that stops making progress instead.
        let req = self
            .peers
            .stream_request(tokio_stream::wrappers::ReceiverStream::new(rx));
        let send = client.install_snapshot(req);
        let res = tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            resp = send => {
                let resp = resp.map_err(|s| peer_error::<StreamingError<TypeConfig>>(self.fail(s)))?;
                decode(&resp.into_inner().postcard)
                    .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
            }
            stalled = progress.stalled() => {
                Err(peer_error::<StreamingError<TypeConfig>>(
                    self.fail(tonic::Status::deadline_exceeded(stalled)),
                ))
            }
        };
        reader.abort();
        res
    }
}

/// How far a snapshot transfer got, and when it last moved.
#[derive(Debug)]
struct SnapshotProgress {
    start: std::time::Instant,
    /// Milliseconds since `start` of the last chunk the transport took.
    last_ms: std::sync::atomic::AtomicU64,
    /// Every chunk was taken: what is left is the receiver's install.
    sent: std::sync::atomic::AtomicBool,
}

impl SnapshotProgress {
    fn new() -> SnapshotProgress {
        SnapshotProgress {
            start: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
            sent: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn advanced(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn finished(&self) {
        self.advanced();
        self.sent.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Why the transfer is stuck, once it is: no chunk taken for [`SNAPSHOT_STALL_TIMEOUT`],
    /// or no answer [`SNAPSHOT_INSTALL_TIMEOUT`] after the last one.
    async fn stalled(&self) -> String {
        loop {
            tokio::time::sleep(SNAPSHOT_WATCH_EVERY).await;
            let last =
                Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
            let quiet = self.start.elapsed().saturating_sub(last);
            if self.sent.load(std::sync::atomic::Ordering::Relaxed) {
                if quiet > SNAPSHOT_INSTALL_TIMEOUT {
                    return format!(
                        "the peer did not install the snapshot within {} s of its last chunk",
                        SNAPSHOT_INSTALL_TIMEOUT.as_secs()
                    );
                }
            } else if quiet > SNAPSHOT_STALL_TIMEOUT {
                return format!(
                    "the snapshot transfer made no progress for {} s",
                    SNAPSHOT_STALL_TIMEOUT.as_secs()
                );
            }
        }
    }
}
