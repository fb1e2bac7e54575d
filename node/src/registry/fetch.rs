//! Copies of blobs this node lacks: fetched from a node that holds one, verified, kept, and
//! recorded (`BlobCopied`) so the cluster knows this node holds it too.
//!
//! One fetch per blob at a time: concurrent misses (clients reading through, replication and
//! durability copies) share it. The fetch writes the bytes to a staging file as they arrive
//! and publishes how far that file is written ([`CopyProgress`]); every client whole-blob read
//! of it — the one that started it and any that join later, also a read that joins a
//! replication copy — follows the staging file from its start ([`BlobStore::follow`]), so a
//! joiner gets at once what is already fetched, and a slow client never slows the fetch (the
//! disk is the buffer, not memory). A read's last byte comes only once the digest is verified;
//! a failed fetch ends every read with an error; a read that got bytes of an attempt that
//! failed ends with an error rather than go on with the next holder's bytes (one that got none
//! follows the next attempt). The file is written a 1 MiB block at a time, so readers move in
//! such steps. A client's response starts (200) once a holder is sending; when none can, the
//! client gets the error instead (a client that joins between two attempts may get its 200
//! from the attempt that just failed, and then a broken body if no later holder can send).
//! A range read and the copies (`ensure`) wait for the whole
//! copy; a HEAD starts the fetch without waiting (`warm`). A client hanging up never cancels
//! the fetch (it runs on its own task). The caller names the holders to try, nearest first;
//! each call to a peer has a deadline (see `cluster::fetch`), so a dead holder costs the time
//! of one failed call, not a hung request. A holder announcing a size other than the recorded
//! one is skipped.
//!
//! The most urgent of a fetch's wanters sets its pace (`cluster::PeerBandwidth`): a fetch
//! made only for replication is paced by the per-peer cap and, while this node serves
//! clients, by the busy cap; a durability copy (a manifest PUT waits for it) only by the
//! per-peer cap, ahead of replication's copies from the same peer; once a client's read
//! starts or joins a fetch, nothing paces it (a pull never waits behind replication). After each successful fetch the metrics count the bytes
//! per pair of nodes, and a fetch a client waited for counts as a read-through from the
//! holder's region; the nearness view (`Cluster::record_transfer`, `record_failure`) learns
//! the holder's throughput, or puts a failing holder in backoff (a failure of this node's own
//! disk is not the holder's).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::blobstore::{Begun, BlobBody, BlobStore, BlobStoreError, CopyProgress, CopyWatch};
use crate::cluster::{Cluster, Lane, PeerBandwidth};
use crate::meta::{Command, CommandV1, NodeId, Rejection, WriteResult};
use crate::metrics::{Metrics, PairLabels, SourceLabels};
use crate::types::Digest;

type Fetch = Shared<BoxFuture<'static, Result<(), Arc<String>>>>;

/// Who wants a copy, least urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Purpose {
    /// Replication or a scrub's repair: paced by the per-peer cap and the busy cap.
    Copy = 0,
    /// A manifest PUT waits for it: paced by the per-peer cap only, ahead of copies.
    Durability = 1,
    /// A client asked for it (a GET waits for the bytes, a HEAD's GET will): no pacing.
    Client = 2,
}

/// The most urgent purpose of a fetch's wanters so far (wanters join while it runs).
#[derive(Debug, Clone)]
struct Wanters(Arc<watch::Sender<Purpose>>);

impl Wanters {
    fn new(first: Purpose) -> Wanters {
        Wanters(Arc::new(watch::channel(first).0))
    }

    fn join(&self, purpose: Purpose) {
        self.0.send_if_modified(|most| {
            let more = purpose > *most;
            if more {
                *most = purpose;
            }
            more
        });
    }

    fn most(&self) -> Purpose {
        *self.0.borrow()
    }

    /// Resolves once a wanter more urgent than `than` has joined: a copy pausing for its pace
    /// stops pausing when a client or a durability copy joins it.
    async fn more_urgent(&self, than: Purpose) {
        let _ = self.0.subscribe().wait_for(|most| *most > than).await;
    }
}

/// A fetch in flight, who wants it, and how far it has written.
#[derive(Clone)]
struct InFlight {
    fetch: Fetch,
    wanters: Wanters,
    progress: CopyProgress,
}

/// The fetches in flight on this node. Clones share them.
#[derive(Clone)]
pub(super) struct BlobFetcher {
    in_flight: Arc<Mutex<HashMap<Digest, InFlight>>>,
    bandwidth: Arc<PeerBandwidth>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for BlobFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobFetcher")
            .field("bandwidth", &self.bandwidth)
            .finish_non_exhaustive()
    }
}

/// What one fetch needs to know.
#[derive(Debug, Clone)]
pub(super) struct Wanted {
    /// The blob.
    pub digest: Digest,
    /// Its recorded size.
    pub size: u64,
    /// Nodes to try, nearest first (never this node).
    pub holders: Vec<NodeId>,
}

impl BlobFetcher {
    /// A fetcher pacing copies with `bandwidth` and counting into `metrics`.
    pub(super) fn new(bandwidth: Arc<PeerBandwidth>, metrics: Arc<Metrics>) -> BlobFetcher {
        BlobFetcher {
            in_flight: Arc::default(),
            bandwidth,
            metrics,
        }
    }

    /// Makes sure this node holds the blob, fetching it if needed (joining a fetch of it
    /// already running). Errors: why no holder could provide it.
    pub(super) async fn ensure(
        &self,
        cluster: &Cluster,
        blobs: &Arc<BlobStore>,
        wanted: Wanted,
        purpose: Purpose,
    ) -> Result<(), Arc<String>> {
        let (fetch, _) = self.start(cluster, blobs, wanted, purpose);
        fetch.await
    }

    /// Starts fetching the blob for a client that will ask for it soon (a HEAD), and returns
    /// at once. The fetch runs on its own task.
    pub(super) fn warm(&self, cluster: &Cluster, blobs: &Arc<BlobStore>, wanted: Wanted) {
        drop(self.start(cluster, blobs, wanted, Purpose::Client));
    }

    /// For a client's whole-blob read: starts the fetch or joins the one in flight, and once
    /// a holder is sending, returns a body that follows the copy as it is written
    /// (`Some(body)`, exactly the recorded size, from its first byte): its last piece only
    /// once the digest is verified, an error if the fetch fails, so a client never gets a
    /// complete response of wrong bytes. `None`: the blob is local now (found there, or the
    /// fetch this call joined finished).
    pub(super) async fn stream(
        &self,
        cluster: &Cluster,
        blobs: &Arc<BlobStore>,
        wanted: Wanted,
    ) -> Result<Option<BlobBody>, Arc<String>> {
        let (digest, size) = (wanted.digest.clone(), wanted.size);
        let (_, mut watch) = self.start(cluster, blobs, wanted, Purpose::Client);
        match watch.begun().await {
            Begun::Writing => Ok(Some(blobs.follow(&digest, size, watch))),
            Begun::Stored => Ok(None),
            Begun::Failed(why) => Err(why),
        }
    }

    /// Starts a fetch of the blob, or joins the one in flight: its outcome, and a view of its
    /// progress for a reader.
    fn start(
        &self,
        cluster: &Cluster,
        blobs: &Arc<BlobStore>,
        wanted: Wanted,
        purpose: Purpose,
    ) -> (Fetch, CopyWatch) {
        let mut map = self.in_flight.lock().expect("fetch map poisoned");
        if let Some(f) = map.get(&wanted.digest) {
            f.wanters.join(purpose);
            return (f.fetch.clone(), f.progress.watch());
        }
        let wanters = Wanters::new(purpose);
        let progress = CopyProgress::new();
        let job = Job {
            cluster: cluster.clone(),
            blobs: blobs.clone(),
            bandwidth: self.bandwidth.clone(),
            metrics: self.metrics.clone(),
            wanters: wanters.clone(),
            progress: progress.clone(),
        };
        let in_flight = self.in_flight.clone();
        let digest = wanted.digest.clone();
        let watch = progress.watch();
        let f = async move {
            let d = wanted.digest.clone();
            // A panic in the fetch must still end its readers and free the digest for the next
            // fetch (else every later GET of it would join a fetch that never ends).
            let res = match std::panic::AssertUnwindSafe(job.run(wanted))
                .catch_unwind()
                .await
            {
                Ok(r) => r.map_err(Arc::new),
                Err(_) => Err(Arc::new(
                    "the fetch failed (a bug: it panicked)".to_string(),
                )),
            };
            // Readers finish from the stored blob, or end with the error.
            job.progress.end(res.clone());
            in_flight.lock().expect("fetch map poisoned").remove(&d);
            res
        }
        .boxed()
        .shared();
        map.insert(
            digest,
            InFlight {
                fetch: f.clone(),
                wanters,
                progress,
            },
        );
        // Run it on its own task: a client that hangs up must not cancel a fetch that others
        // share.
        tokio::spawn(f.clone());
        (f, watch)
    }
}

/// One fetch's handles.
struct Job {
    cluster: Cluster,
    blobs: Arc<BlobStore>,
    bandwidth: Arc<PeerBandwidth>,
    metrics: Arc<Metrics>,
    wanters: Wanters,
    /// How far the attempt in progress has written, for the readers following it.
    progress: CopyProgress,
}

impl Job {
    async fn run(&self, wanted: Wanted) -> Result<(), String> {
        let me = self.cluster.node_id();
        let digest = &wanted.digest;
        // A fetch that finished between the caller's look and this one's start left a copy.
        if self.blobs.holds(digest) {
            return Ok(());
        }
        let mut why = "no other node holds it".to_string();
        for holder in wanted.holders.iter().copied().filter(|h| *h != me) {
            let started = std::time::Instant::now();
            match self.copy_from(&wanted, holder).await {
                Ok(_placing) => {
                    // Readers get their last bytes now, not after the holder record's Raft
                    // write below (a round trip to the leader, or the write timeout).
                    self.progress.end(Ok(()));
                    tracing::info!(%digest, holder, size = wanted.size, "fetched a copy of a blob from a peer");
                    self.count(holder, wanted.size);
                    // The nearness view learns the holder's throughput (a paced copy's rate is
                    // the cap's, not the link's: only unpaced copies are reported).
                    let paced = self.bandwidth.is_capped()
                        || self
                            .bandwidth
                            .yielded_since(tokio::time::Instant::from_std(started));
                    if self.wanters.most() == Purpose::Client || !paced {
                        self.cluster
                            .record_transfer(holder, wanted.size, started.elapsed());
                    }
                    let cmd = CommandV1::BlobCopied {
                        digest: digest.clone(),
                        node: me,
                    };
                    match self.cluster.write(Command::V1(cmd)).await {
                        Ok(WriteResult::Rejected(Rejection::BlobUnknown(_))) => {
                            // Garbage-collected while it was copied: the copy goes too (the
                            // digest is still locked, so no new record can name it meanwhile).
                            tracing::info!(%digest, "a fetched blob was collected meanwhile; removing the copy");
                            if let Err(e) = self.blobs.delete(digest).await {
                                tracing::warn!(%digest, error = %e, "failed to remove a collected blob's copy");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            // The copy is verified and kept; only the holder record is missing
                            // (`Registry::ensure_local_copy` records it when asked again).
                            tracing::warn!(%digest, error = %e, "failed to record a fetched blob copy");
                        }
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(%digest, holder, error = %e, "failed to fetch blob from a peer");
                    why = format!("node {holder}: {e}");
                    match e {
                        // Tried last until its backoff ends.
                        Failure::Holder(_) => self.cluster.record_failure(holder),
                        // This node's own disk failed (no room, an I/O error): another holder
                        // would send the whole blob again only to fail the same way.
                        Failure::Local(_) => break,
                    }
                }
            }
        }
        Err(why)
    }

    /// Counts a successful fetch of `size` bytes from `holder`.
    fn count(&self, holder: NodeId, size: u64) {
        let me = self.cluster.node_id();
        self.metrics
            .replication_bytes
            .get_or_create(&PairLabels {
                from: holder,
                to: me,
            })
            .inc_by(size);
        if self.wanters.most() == Purpose::Client {
            let source_region = self
                .cluster
                .member(holder)
                .map(|i| i.region)
                .unwrap_or_default();
            self.metrics
                .read_through_fetches
                .get_or_create(&SourceLabels { source_region })
                .inc();
        }
    }

    /// Streams the blob from `holder` into a staging file that readers follow, verifies it and
    /// moves it into place.
    /// Copies the blob from `holder` into place; returns holding the digest's lock (see
    /// [`BlobStore::lock_digest`]), to be kept until the copy is recorded.
    async fn copy_from(
        &self,
        wanted: &Wanted,
        holder: NodeId,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, Failure> {
        let (digest, size) = (&wanted.digest, wanted.size);
        // A copy that may pause for its pace streams on a connection of its own, so that the
        // bytes it leaves unread hold back no other stream from that peer.
        let lane = match self.wanters.most() {
            Purpose::Copy => Lane::Copies,
            Purpose::Durability | Purpose::Client => Lane::Reads,
        };
        let stream = self
            .cluster
            .fetch_blob(holder, digest, lane)
            .await
            .map_err(|e| Failure::Holder(e.to_string()))?;
        if stream.size != size {
            return Err(Failure::Holder(format!(
                "it announced {} bytes for a blob recorded as {size}",
                stream.size
            )));
        }
        // From here on readers follow this attempt's staging file: a reader that gets bytes of
        // it ends with an error if it fails.
        let mut staged = self
            .blobs
            .begin_upload(&super::uploads::new_id(self.cluster.node_id()));
        staged.publish_to(&self.progress);
        let (to_file, from_pump) = mpsc::channel::<io::Result<Bytes>>(2);
        let pump = async {
            let mut body = stream.body;
            while let Some(item) = body.next().await {
                match item {
                    Ok(piece) => {
                        let n = piece.len() as u64;
                        let most = self.wanters.most();
                        let pace = async {
                            match most {
                                Purpose::Copy => self.bandwidth.take(holder, n).await,
                                Purpose::Durability => {
                                    self.bandwidth.take_urgent(holder, n).await;
                                }
                                Purpose::Client => {}
                            }
                        };
                        tokio::select! {
                            () = pace => {}
                            () = self.wanters.more_urgent(most) => {}
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
        };
        let (appended, ()) = tokio::join!(staged.append(ReceiverStream::new(from_pump)), pump);
        match appended {
            Ok(n) if n == size => {}
            Ok(n) => {
                staged.abort().await;
                return Err(Failure::Holder(format!(
                    "received {n} bytes of a {size}-byte blob"
                )));
            }
            Err(e) => {
                staged.abort().await;
                return Err(Failure::of(e));
            }
        }
        // Verifies the digest, makes the copy durable and moves it into place (a mismatch
        // removes the staging file).
        let placing = self.blobs.lock_digest(digest).await;
        staged
            .finish(&self.blobs, digest)
            .await
            .map(|_| placing)
            .map_err(Failure::of)
    }
}

/// Why a copy from one holder failed: the holder's doing (unreachable, a broken stream, other
/// bytes than the digest names), or this node's (its disk).
#[derive(Debug)]
enum Failure {
    Holder(String),
    Local(String),
}

impl Failure {
    fn of(e: BlobStoreError) -> Failure {
        match e {
            e @ (BlobStoreError::Body(_) | BlobStoreError::DigestMismatch { .. }) => {
                Failure::Holder(e.to_string())
            }
            e => Failure::Local(e.to_string()),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Holder(why) => f.write_str(why),
            Failure::Local(why) => write!(f, "this node could not store it: {why}"),
        }
    }
}
