//! Copies of blobs this node lacks: fetched from a node that holds one, verified, kept, and
//! recorded (`BlobCopied`) so the cluster knows this node holds it too.
//!
//! The request that starts a fetch is served while the bytes arrive (the last piece only once
//! the digest is verified); concurrent misses for the same blob share the one fetch and are
//! served from the local copy once it is in place. A fetch tries the holders in turn;
//! every call to a peer has a deadline (see `cluster::fetch`), so a dead holder costs the time
//! of one failed call, not a hung request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::io;

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::blobstore::{BlobBody, BlobStore};
use crate::cluster::Cluster;
use crate::meta::{Command, CommandV1, NodeId};
use crate::types::Digest;

type Fetch = Shared<BoxFuture<'static, Result<(), Arc<String>>>>;

/// The fetches in flight on this node. Clones share them.
#[derive(Debug, Default, Clone)]
pub(super) struct BlobFetcher {
    in_flight: Arc<Mutex<HashMap<Digest, Fetch>>>,
}

/// The caller that started a fetch, served while the bytes arrive.
struct Tap {
    /// Told the blob's size once a holder starts sending, or why none could.
    started: Option<oneshot::Sender<Result<u64, String>>>,
    /// The bytes, in order; the last piece only once the digest is verified, or an error.
    bytes: Option<mpsc::Sender<io::Result<Bytes>>>,
}

/// Pieces of a streaming fetch buffered for the client that started it.
const TAP_PIECES: usize = 4;
/// Longest the fetch waits for the client that started it to take a piece; a client slower
/// than that is cut off rather than slowing the copy down for everyone.
const TAP_STALL: std::time::Duration = std::time::Duration::from_secs(5);

impl BlobFetcher {
    /// Makes sure this node holds `digest`, fetching it from one of `holders` if needed. Joins
    /// a fetch of the same blob already running. Errors: why no holder could provide it.
    pub(super) async fn ensure(
        &self,
        cluster: &Cluster,
        blobs: &Arc<BlobStore>,
        digest: &Digest,
        holders: Vec<NodeId>,
    ) -> Result<(), Arc<String>> {
        let (fetch, _) = self.start(cluster, blobs, digest, holders, false);
        fetch.await
    }

    /// Like [`BlobFetcher::ensure`], but when this call starts the fetch, it gets the bytes
    /// as they arrive from the holder (`Some(body)`), while the copy is written and verified.
    /// The body's last piece is held back until the digest is verified; a failed fetch ends
    /// the body with an error, so a client never gets a complete response of wrong bytes.
    /// `None`: the blob is local now (another fetch finished it).
    pub(super) async fn ensure_streaming(
        &self,
        cluster: &Cluster,
        blobs: &Arc<BlobStore>,
        digest: &Digest,
        holders: Vec<NodeId>,
    ) -> Result<Option<BlobBody>, Arc<String>> {
        let (fetch, tap) = self.start(cluster, blobs, digest, holders, true);
        if let Some((started, rx)) = tap {
            match started.await {
                Ok(Ok(size)) => return Ok(Some(BlobBody::from_channel(rx, size))),
                Ok(Err(why)) => return Err(Arc::new(why)),
                // The fetch found the blob already local.
                Err(_) => {}
            }
        }
        fetch.await.map(|()| None)
    }

    #[allow(clippy::type_complexity)]
    fn start(
        &self,
        cluster: &Cluster,
        blobs: &Arc<BlobStore>,
        digest: &Digest,
        holders: Vec<NodeId>,
        tap: bool,
    ) -> (
        Fetch,
        Option<(
            oneshot::Receiver<Result<u64, String>>,
            mpsc::Receiver<io::Result<Bytes>>,
        )>,
    ) {
        let mut map = self.in_flight.lock().expect("fetch map poisoned");
        if let Some(f) = map.get(digest) {
            return (f.clone(), None);
        }
        let (tap, receivers) = if tap {
            let (started_tx, started_rx) = oneshot::channel();
            let (tx, rx) = mpsc::channel(TAP_PIECES);
            let tap = Tap {
                started: Some(started_tx),
                bytes: Some(tx),
            };
            (Some(tap), Some((started_rx, rx)))
        } else {
            (None, None)
        };
        let in_flight = self.in_flight.clone();
        let (cluster, blobs, d) = (cluster.clone(), blobs.clone(), digest.clone());
        let f = async move {
            let res = fetch(&cluster, &blobs, &d, holders, tap).await;
            in_flight.lock().expect("fetch map poisoned").remove(&d);
            res.map_err(Arc::new)
        }
        .boxed()
        .shared();
        map.insert(digest.clone(), f.clone());
        // Run it on its own task: a client that hangs up must not cancel a fetch that others
        // share.
        tokio::spawn(f.clone());
        (f, receivers)
    }
}

async fn fetch(
    cluster: &Cluster,
    blobs: &Arc<BlobStore>,
    digest: &Digest,
    holders: Vec<NodeId>,
    mut tap: Option<Tap>,
) -> Result<(), String> {
    let me = cluster.node_id();
    if blobs
        .stat(digest)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let mut why = "no other node holds it".to_string();
    for holder in cluster
        .order_by_nearness(holders)
        .into_iter()
        .filter(|h| *h != me)
    {
        match copy_from(cluster, blobs, digest, holder, &mut tap).await {
            Ok(size) => {
                tracing::info!(%digest, holder, size, "fetched a copy of a blob from a peer");
                let cmd = CommandV1::BlobCopied {
                    digest: digest.clone(),
                    node: me,
                };
                if let Err(e) = cluster.write(Command::V1(cmd)).await {
                    // The copy is verified and kept; only the holder record is missing.
                    tracing::warn!(%digest, error = %e, "failed to record a fetched blob copy");
                }
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(%digest, holder, error = %e, "failed to fetch blob from a peer");
                why = format!("node {holder}: {e}");
            }
        }
    }
    if let Some(started) = tap.and_then(|mut t| t.started.take()) {
        let _ = started.send(Err(why.clone()));
    }
    Err(why)
}

/// Streams the blob from `holder` into a staging file (and to the tap, if any), verifies it
/// and moves it into place. Returns its size.
async fn copy_from(
    cluster: &Cluster,
    blobs: &Arc<BlobStore>,
    digest: &Digest,
    holder: NodeId,
    tap: &mut Option<Tap>,
) -> Result<u64, String> {
    let stream = cluster
        .fetch_blob(holder, digest)
        .await
        .map_err(|e| e.to_string())?;
    let size = stream.size;
    // From here on the tap's client sees this attempt's bytes: a failure ends its response.
    let mut client = None;
    if let Some(t) = tap.as_mut()
        && let Some(started) = t.started.take()
        && started.send(Ok(size)).is_ok()
    {
        client = t.bytes.take();
    }
    let mut staged = blobs.begin_upload(&super::uploads::new_id(cluster.node_id()));
    let (to_file, from_pump) = mpsc::channel::<io::Result<Bytes>>(2);
    let pump = async {
        let mut body = stream.body;
        let mut seen = 0u64;
        let mut held = None;
        while let Some(item) = body.next().await {
            match item {
                Ok(piece) => {
                    seen += piece.len() as u64;
                    if let Some(tx) = &client {
                        if seen >= size {
                            held = Some(piece.clone());
                        } else {
                            match tokio::time::timeout(TAP_STALL, tx.send(Ok(piece.clone()))).await
                            {
                                Ok(Ok(())) => {}
                                // The client hung up; the copy goes on.
                                Ok(Err(_)) => client = None,
                                Err(_) => {
                                    // The client stopped reading: it must not hold the copy
                                    // (and the clients waiting for it) back. Its response
                                    // ends short, which it sees as a broken transfer.
                                    tracing::info!(%digest, "a client reading a blob as it is fetched stalled; the fetch goes on without it");
                                    client = None;
                                }
                            }
                        }
                    }
                    if to_file.send(Ok(piece)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = to_file.send(Err(io::Error::other(e))).await;
                    break;
                }
            }
        }
        drop(to_file);
        held
    };
    let (appended, held) = tokio::join!(staged.append(ReceiverStream::new(from_pump)), pump);
    let received = match appended {
        Ok(n) if n == size => n,
        Ok(n) => {
            staged.abort().await;
            return fail(client, format!("received {n} bytes of a {size}-byte blob")).await;
        }
        Err(e) => {
            staged.abort().await;
            return fail(client, e.to_string()).await;
        }
    };
    // Verifies the digest, makes the copy durable and moves it into place (a mismatch removes
    // the staging file).
    if let Err(e) = staged.finish(blobs, digest).await {
        return fail(client, e.to_string()).await;
    }
    if let (Some(tx), Some(last)) = (client, held) {
        let _ = tx.send(Ok(last)).await;
    }
    Ok(received)
}

/// Ends the tap's response with an error (so the client sees a broken transfer, not a short
/// or wrong blob) and returns the error.
async fn fail(client: Option<mpsc::Sender<io::Result<Bytes>>>, why: String) -> Result<u64, String> {
    if let Some(tx) = client {
        let _ = tx.send(Err(io::Error::other(why.clone()))).await;
    }
    Err(why)
}
