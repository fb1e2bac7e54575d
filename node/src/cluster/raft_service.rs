//! The server side of Raft's transport: the `berth.raft.v1.Raft` gRPC service handing peers'
//! messages to this node's openraft instance.
//!
//! An incoming snapshot is spooled by `meta` ([`IncomingSnapshot`]) and handed to openraft,
//! which installs it; this module touches no file itself. Failures are [`RaftServiceError`]s;
//! their gRPC codes come from the one table in `rpc/status.rs` (the `From` conversion to
//! `tonic::Status` lives there).

use std::path::PathBuf;
use std::sync::Arc;

use berth_proto::raft::raft_server::Raft as RaftRpc;
use berth_proto::raft::{RaftPayload, SnapshotChunk, snapshot_chunk};
use futures::StreamExt;
use futures::stream::BoxStream;
use openraft::Raft;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::raft::AppendEntriesRequest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status, Streaming};

use super::LeaderContact;
use super::network::{SNAPSHOT_STALL_TIMEOUT, decode, encode};
use crate::meta::{IncomingSnapshot, MetaError, StateMachine, TypeConfig};
use crate::types::ErrorKind;

/// Why the Raft service refused or failed a call.
#[derive(Debug, thiserror::Error)]
pub enum RaftServiceError {
    /// A message did not decode.
    #[error("failed to decode {what}: {source}")]
    Decode {
        /// Which message.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: postcard::Error,
    },
    /// A snapshot stream did not have the expected shape.
    #[error("{0}")]
    SnapshotStream(&'static str),
    /// openraft answered with an error (it stopped, or refused the message).
    #[error("raft: {0}")]
    Raft(String),
    /// The sender of a snapshot sent nothing for this long.
    #[error("the snapshot stream stalled: nothing arrived for {} s", .0.as_secs())]
    SnapshotStalled(std::time::Duration),
    /// Spooling an incoming snapshot failed.
    #[error("failed to receive snapshot")]
    Snapshot(#[source] MetaError),
}

impl RaftServiceError {
    /// The broad class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RaftServiceError::Decode { .. } | RaftServiceError::SnapshotStream(_) => {
                ErrorKind::Invalid
            }
            RaftServiceError::Raft(_) => ErrorKind::Unavailable,
            RaftServiceError::SnapshotStalled(_) => ErrorKind::Timeout,
            RaftServiceError::Snapshot(_) => ErrorKind::Internal,
        }
    }
}

/// The Raft gRPC service of this node.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft<TypeConfig, StateMachine>,
    leader_contact: Arc<LeaderContact>,
    snapshot_dir: Arc<PathBuf>,
}

impl RaftService {
    pub(super) fn new(
        raft: Raft<TypeConfig, StateMachine>,
        leader_contact: Arc<LeaderContact>,
        snapshot_dir: PathBuf,
    ) -> RaftService {
        RaftService {
            raft,
            leader_contact,
            snapshot_dir: Arc::new(snapshot_dir),
        }
    }
}

fn decoded<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, RaftServiceError> {
    decode(bytes).map_err(|source| RaftServiceError::Decode { what, source })
}

#[allow(clippy::result_large_err)]
fn payload<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    Ok(decoded("raft message", &req.into_inner().postcard)?)
}

fn answer<T: Serialize, E: std::fmt::Display>(
    res: Result<T, E>,
) -> Result<Response<RaftPayload>, Status> {
    match res {
        Ok(v) => Ok(Response::new(RaftPayload {
            postcard: encode(&v),
        })),
        Err(e) => Err(RaftServiceError::Raft(e.to_string()).into()),
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.leader_contact.touch();
        answer(self.raft.append_entries(payload(req)?).await)
    }

    type StreamAppendStream = BoxStream<'static, Result<RaftPayload, Status>>;

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let contact = self.leader_contact.clone();
        // Requests until the first one that fails to arrive or decode. (A stream from a peer
        // a test partition cuts off is ended by the fault layer, `faults.rs`.)
        let requests = req.into_inner().scan((), move |(), item| {
            contact.touch();
            let next = match item {
                Ok(p) => decode::<AppendEntriesRequest<TypeConfig>>(&p.postcard).ok(),
                Err(_) => None,
            };
            std::future::ready(next)
        });
        let results = self.raft.stream_append(requests).map(move |r| match r {
            Ok(result) => Ok(RaftPayload {
                postcard: encode(&result),
            }),
            Err(fatal) => Err(RaftServiceError::Raft(fatal.to_string()).into()),
        });
        Ok(Response::new(results.boxed()))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        answer(self.raft.vote(payload(req)?).await)
    }

    async fn pre_vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        answer(self.raft.pre_vote(payload(req)?).await)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        answer(self.raft.handle_transfer_leader(payload(req)?).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let mut stream = req.into_inner();
        // No deadline on the whole transfer (it may take minutes behind a slow link), but a
        // bound on the wait for each message.
        let mut next = async || {
            tokio::time::timeout(SNAPSHOT_STALL_TIMEOUT, stream.next())
                .await
                .map_err(|_| RaftServiceError::SnapshotStalled(SNAPSHOT_STALL_TIMEOUT))
        };
        let Some(first) = next().await?.transpose()? else {
            return Err(RaftServiceError::SnapshotStream("empty snapshot stream").into());
        };
        let Some(snapshot_chunk::Part::Header(header)) = first.part else {
            return Err(RaftServiceError::SnapshotStream(
                "a snapshot stream must start with its header",
            )
            .into());
        };
        let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) =
            decoded("snapshot header", &header)?;
        let mut incoming = IncomingSnapshot::create(&self.snapshot_dir)
            .await
            .map_err(RaftServiceError::Snapshot)?;
        while let Some(chunk) = next().await?.transpose()? {
            match chunk.part {
                Some(snapshot_chunk::Part::Data(data)) => incoming
                    .write(&data)
                    .await
                    .map_err(RaftServiceError::Snapshot)?,
                _ => {
                    return Err(
                        RaftServiceError::SnapshotStream("unexpected snapshot chunk").into(),
                    );
                }
            }
        }
        let file = incoming
            .finish()
            .await
            .map_err(RaftServiceError::Snapshot)?;
        let snapshot = SnapshotOf::<TypeConfig, std::fs::File> {
            meta,
            snapshot: file,
        };
        answer(self.raft.install_full_snapshot(vote, snapshot).await)
    }
}
