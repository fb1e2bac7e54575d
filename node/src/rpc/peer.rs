//! `berth.peer.v1.Peer`: the leader's half of write forwarding (run in a span naming the
//! client request the follower forwarded it for), blob streaming to peers
//! that lack a blob, the probe peers measure their round trips with, and copies made on
//! request (`Replicate`, for the durability policy).

use std::sync::Arc;

use berth_proto::peer::peer_server::Peer;
use berth_proto::peer::{
    BlobChunk, FetchBlobRequest, ForwardWriteRequest, ForwardWriteResponse, PingRequest,
    PingResponse, ReadIndexRequest, ReadIndexResponse, ReplicateRequest, ReplicateResponse,
};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::status::status;
use crate::blobstore::BlobStoreError;
use crate::cluster::{LeaderWriteError, request_id_of};
use crate::meta::Command;
use crate::registry::{CopyFor, Registry};
use crate::types::{Digest, ErrorKind};

/// Bytes of blob per stream message (well under gRPC's default 4 MiB message limit).
const CHUNK: usize = 1024 * 1024;

/// The Peer service of this node.
pub(super) struct PeerService {
    registry: Arc<Registry>,
}

impl PeerService {
    pub(super) fn new(registry: Arc<Registry>) -> PeerService {
        PeerService { registry }
    }
}

/// Splits a blob body's pieces into messages of at most [`CHUNK`] bytes.
fn split(b: Bytes) -> impl Iterator<Item = Bytes> {
    let n = b.len().div_ceil(CHUNK);
    (0..n).map(move |i| b.slice(i * CHUNK..((i + 1) * CHUNK).min(b.len())))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn forward_write(
        &self,
        req: Request<ForwardWriteRequest>,
    ) -> Result<Response<ForwardWriteResponse>, Status> {
        let cluster = self.registry.cluster();
        // The client request the follower forwards for: its id is on every line logged here.
        let span = tracing::info_span!(
            "forwarded_write",
            request_id = tracing::field::Empty,
            node = cluster.node_id(),
        );
        if let Some(id) = request_id_of(&req) {
            span.record("request_id", id.as_str());
        }
        async move {
            let command: Command =
                postcard::from_bytes(&req.into_inner().command).map_err(|e| {
                    status(ErrorKind::Invalid, format!("failed to decode command: {e}"))
                })?;
            tracing::debug!("proposing a write forwarded by a follower");
            let (result, log_index) = cluster.leader_write(command).await?;
            tracing::debug!(log_index, "forwarded write committed");
            Ok(Response::new(ForwardWriteResponse {
                result: postcard::to_allocvec(&result).expect("results serialise"),
                log_index,
            }))
        }
        .instrument(span)
        .await
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let cluster = self.registry.cluster();
        if !cluster.is_leader() {
            return Err(LeaderWriteError::NotLeader(cluster.current_leader()).into());
        }
        let log_index = cluster.read_index().await?;
        Ok(Response::new(ReadIndexResponse { log_index }))
    }

    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            node_id: self.registry.cluster().node_id(),
        }))
    }

    type FetchBlobStream = BoxStream<'static, Result<BlobChunk, Status>>;

    async fn fetch_blob(
        &self,
        req: Request<FetchBlobRequest>,
    ) -> Result<Response<Self::FetchBlobStream>, Status> {
        let digest = Digest::parse(&req.get_ref().digest)
            .map_err(|e| status(ErrorKind::Invalid, format!("bad digest: {e}")))?;
        let body = match self.registry.blob_store().read(&digest, None).await {
            Ok(b) => b,
            Err(BlobStoreError::NotFound(d)) => {
                return Err(status(
                    ErrorKind::NotFound,
                    format!("this node does not hold {d}"),
                ));
            }
            Err(e) => return Err(status(ErrorKind::Internal, e.to_string())),
        };
        let size = body.len();
        let mut first = true;
        let chunks = body
            .map(|piece| match piece {
                Ok(b) => futures::stream::iter(split(b).map(Ok).collect::<Vec<_>>()),
                Err(e) => futures::stream::iter(vec![Err(status(
                    ErrorKind::Internal,
                    format!("failed to read blob: {e}"),
                ))]),
            })
            .flatten()
            .map(move |r| {
                r.map(|data| {
                    let chunk = BlobChunk {
                        size: if first { size } else { 0 },
                        data,
                    };
                    first = false;
                    chunk
                })
            });
        // An empty blob still sends one message: the receiver learns the size from it.
        let stream = if size == 0 {
            futures::stream::iter(vec![Ok(BlobChunk {
                size: 0,
                data: Bytes::new(),
            })])
            .boxed()
        } else {
            chunks.boxed()
        };
        Ok(Response::new(stream))
    }

    async fn replicate(
        &self,
        req: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicateResponse>, Status> {
        let digest = Digest::parse(&req.get_ref().digest)
            .map_err(|e| status(ErrorKind::Invalid, format!("bad digest: {e}")))?;
        self.registry
            .ensure_local_copy(&digest, CopyFor::Durability)
            .await
            .map_err(|e| status(e.kind(), e.to_string()))?;
        Ok(Response::new(ReplicateResponse {}))
    }
}
