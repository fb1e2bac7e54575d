//! The server side of Raft's transport: the `berth.raft.v1.Raft` gRPC service handing peers'
//! messages to this node's openraft instance.
//!
//! An incoming snapshot is written to a temporary file in the snapshot directory (cleaned at
//! start-up if a crash interrupts it) and handed to openraft, which installs it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_proto::raft::raft_server::Raft as RaftRpc;
use berth_proto::raft::{RaftPayload, SnapshotChunk, snapshot_chunk};
use futures::StreamExt;
use futures::stream::BoxStream;
use openraft::Raft;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::raft::AppendEntriesRequest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::LeaderContact;
use super::network::{decode, encode};
use super::peers::Peers;
use crate::meta::{StateMachine, TypeConfig};

/// The Raft gRPC service of this node.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft<TypeConfig, StateMachine>,
    peers: Arc<Peers>,
    leader_contact: Arc<LeaderContact>,
    snapshot_dir: Arc<PathBuf>,
    seq: Arc<AtomicU64>,
}

impl RaftService {
    pub(super) fn new(
        raft: Raft<TypeConfig, StateMachine>,
        peers: Arc<Peers>,
        leader_contact: Arc<LeaderContact>,
        snapshot_dir: PathBuf,
    ) -> RaftService {
        RaftService {
            raft,
            peers,
            leader_contact,
            snapshot_dir: Arc::new(snapshot_dir),
            seq: Arc::default(),
        }
    }
}

#[allow(clippy::result_large_err)]
fn payload<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    decode(&req.into_inner().postcard)
        .map_err(|e| Status::invalid_argument(format!("failed to decode raft message: {e}")))
}

fn answer<T: Serialize, E: std::fmt::Display>(
    res: Result<T, E>,
) -> Result<Response<RaftPayload>, Status> {
    match res {
        Ok(v) => Ok(Response::new(RaftPayload {
            postcard: encode(&v),
        })),
        Err(e) => Err(Status::unavailable(format!("raft: {e}"))),
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.peers.admit(&req)?;
        self.leader_contact.touch();
        answer(self.raft.append_entries(payload(req)?).await)
    }

    type StreamAppendStream = BoxStream<'static, Result<RaftPayload, Status>>;

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        self.peers.admit(&req)?;
        let from = Peers::sender(&req);
        let peers = self.peers.clone();
        let contact = self.leader_contact.clone();
        // Requests until the first one that fails to arrive or decode, or a test partition.
        let requests = req.into_inner().scan((), move |(), item| {
            contact.touch();
            let cut = from.is_some_and(|n| peers.cut_off(n));
            let next = match item {
                Ok(p) if !cut => decode::<AppendEntriesRequest<TypeConfig>>(&p.postcard).ok(),
                _ => None,
            };
            std::future::ready(next)
        });
        let peers = self.peers.clone();
        let results = self.raft.stream_append(requests).map(move |r| {
            if from.is_some_and(|n| peers.cut_off(n)) {
                return Err(Status::unavailable(
                    "the sender is cut off by a test partition",
                ));
            }
            match r {
                Ok(result) => Ok(RaftPayload {
                    postcard: encode(&result),
                }),
                Err(fatal) => Err(Status::unavailable(format!("raft: {fatal}"))),
            }
        });
        Ok(Response::new(results.boxed()))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.peers.admit(&req)?;
        answer(self.raft.vote(payload(req)?).await)
    }

    async fn pre_vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.peers.admit(&req)?;
        answer(self.raft.pre_vote(payload(req)?).await)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.peers.admit(&req)?;
        answer(self.raft.handle_transfer_leader(payload(req)?).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.peers.admit(&req)?;
        let mut stream = req.into_inner();
        let Some(first) = stream.next().await.transpose()? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        let Some(snapshot_chunk::Part::Header(header)) = first.part else {
            return Err(Status::invalid_argument(
                "a snapshot stream must start with its header",
            ));
        };
        let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) = decode(&header)
            .map_err(|e| {
                Status::invalid_argument(format!("failed to decode snapshot header: {e}"))
            })?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .snapshot_dir
            .join(format!("incoming-{}-{n}.tmp", std::process::id()));
        let res = self.receive(&mut stream, &path, vote, meta).await;
        let _ = tokio::fs::remove_file(&path).await;
        res
    }
}

impl RaftService {
    async fn receive(
        &self,
        stream: &mut Streaming<SnapshotChunk>,
        path: &std::path::Path,
        vote: VoteOf<TypeConfig>,
        meta: SnapshotMetaOf<TypeConfig>,
    ) -> Result<Response<RaftPayload>, Status> {
        let io = |e: std::io::Error| Status::internal(format!("failed to store snapshot: {e}"));
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        while let Some(chunk) = stream.next().await.transpose()? {
            match chunk.part {
                Some(snapshot_chunk::Part::Data(data)) => {
                    file.write_all(&data).await.map_err(io)?;
                }
                _ => return Err(Status::invalid_argument("unexpected snapshot chunk")),
            }
        }
        file.flush().await.map_err(io)?;
        drop(file);
        let file = std::fs::File::open(path).map_err(io)?;
        let snapshot = SnapshotOf::<TypeConfig, std::fs::File> {
            meta,
            snapshot: file,
        };
        answer(self.raft.install_full_snapshot(vote, snapshot).await)
    }
}
