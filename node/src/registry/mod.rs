//! The registry's use cases: push (uploads, mounts, manifest PUT), pull (blob and manifest
//! reads, lists), delete. HTTP-free: the `api` module adapts these to the OCI wire protocol.
//!
//! It composes the blob store (bytes on this node), the metadata reader (applied state) and
//! the cluster (writes through Raft). It must not touch the file system or RocksDB itself.
//!
//! Invariants:
//! - A blob becomes visible in a repository only after its bytes are durable on this node and
//!   the `BlobStored` command is applied.
//! - A manifest is accepted only if every blob and child manifest it references is in the
//!   repository (checked again when the command is applied, so a concurrent delete cannot
//!   slip in between) and each blob is held by at least `min_copies` nodes in at least
//!   `min_regions` regions (the copies are made first when they are not: `durability`).
//! - A read answers "unknown" (404) only after confirming with the leader's commit index that
//!   nothing committed says otherwise, when the leader can be heard (`confirm_absence`).
//! - Any error leaves the metadata unchanged.

mod durability;
mod error;
mod fetch;
mod locks;
mod rates;
mod replica;
pub mod routing;
mod uploads;

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;

pub use error::{ErrorKind, RegistryError};
pub use locks::PushCheck;
pub use rates::RequestKind;
pub use replica::CopyFor;
pub use uploads::{UploadLimits, UploadStatus, owner_of};

use crate::blobstore::{BlobBody, BlobStore, StagedUpload};
use crate::cluster::{Cluster, PeerBandwidth};
use crate::meta::NodeId;
use crate::meta::{
    Command, CommandV1, ManifestRecord, MetaReader, Page, ReferrerRecord, Rejection, WriteResult,
};
use crate::metrics::Metrics;
use crate::types::manifest::{Descriptor, OCI_INDEX, ParsedManifest};
use crate::types::time::now_ms;
use crate::types::{ByteRangeSpec, Digest, Reference, RepositoryName};

/// Limits and policies of the registry.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: usize,
    /// Nodes that must hold every blob a manifest references before the manifest is accepted.
    pub min_copies: usize,
    /// Regions those nodes must span.
    pub min_regions: usize,
    /// How long a write may take (the durability copies of a manifest PUT included).
    pub write_timeout: std::time::Duration,
    /// Bytes per second fetched from one peer for replication and durability copies (0: no
    /// cap).
    pub copy_bytes_per_sec_per_peer: u64,
    /// Bytes per second of all copies together while clients are served (0: no cap).
    pub copy_bytes_per_sec_while_busy: u64,
    /// Where blob GETs are redirected.
    pub routing: routing::Routing,
    /// An upload with no activity for this long is cancelled.
    pub upload_idle_timeout: std::time::Duration,
    /// How long an unreferenced blob is kept after it was last touched (`gc.grace_period_secs`):
    /// a HEAD of an unreferenced blob touches it (see [`Registry::locate_blob`]).
    pub gc_grace: std::time::Duration,
    /// Bounds on upload sessions.
    pub upload_limits: UploadLimits,
}

/// Where a chunk of an upload says it belongs (from `Content-Range`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of its first byte in the blob.
    pub start: Option<u64>,
    /// Its length: the body must carry exactly this many bytes (a declared length of 1 also
    /// admits an empty body, for clients that send `0-0` with nothing).
    pub len: Option<u64>,
}

/// Runs a use case in a task of its own and waits for it: dropping the caller (a client that
/// hung up) does not cut the work off half-way. The task keeps the caller's request (its id
/// in log lines and in the commands it proposes) and tracing span.
async fn run_detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, RegistryError>> + Send + 'static,
) -> Result<T, RegistryError> {
    use tracing::Instrument;
    let work = work.instrument(tracing::Span::current());
    let task = match crate::types::RequestMeta::current() {
        Some(request) => tokio::spawn(request.scope(work)),
        None => tokio::spawn(work),
    };
    task.await
        .map_err(|e| RegistryError::Storage(Box::new(e)))?
}

/// A blob to stream to a client.
#[derive(Debug)]
pub struct BlobRead {
    /// Total size of the blob.
    pub size: u64,
    /// The range served, inclusive, when a range was asked for.
    pub range: Option<(u64, u64)>,
    /// The bytes.
    pub body: BlobBody,
}

/// Longest a read waits for the leader to confirm a "not found" (ReadIndex) before it answers
/// from what this node has (at most the write timeout). A ReadIndex costs a round trip to the
/// leader, the leader's heartbeat round to a quorum, and the wait until this node applied the
/// index: well under a second across regions 150 ms apart.
pub const CONFIRM_ABSENCE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Where this node serves a blob from ([`Registry::locate_blob`]).
#[derive(Debug, Clone)]
pub struct BlobLocation {
    /// The blob.
    pub digest: Digest,
    /// Its recorded size.
    pub size: u64,
    /// Whether this node holds a copy.
    pub local: bool,
    /// Whether this node may keep a copy: false when the repository's replication policy keeps
    /// copies out of this node's region (data residency). Such a node never stores the blob:
    /// a GET is redirected to a holder, a HEAD fetches nothing.
    pub resident: bool,
    /// The other nodes recorded as holders, nearest first.
    pub holders: Vec<NodeId>,
}

impl BlobLocation {
    fn wanted(&self) -> fetch::Wanted {
        fetch::Wanted {
            digest: self.digest.clone(),
            size: self.size,
            holders: self.holders.clone(),
        }
    }
}

/// A manifest as stored.
#[derive(Debug, Clone)]
pub struct ManifestRead {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its exact bytes.
    pub bytes: Bytes,
}

/// What a manifest PUT answered.
#[derive(Debug, Clone)]
pub struct ManifestPut {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its `subject`, if it has one.
    pub subject: Option<Digest>,
}

/// The referrers of a subject, as an OCI image index is built from them.
#[derive(Debug, Clone)]
pub struct Referrers {
    /// One descriptor per referrer, ordered by digest.
    pub descriptors: Vec<Descriptor>,
    /// Whether an `artifactType` filter was applied.
    pub filtered: bool,
}

/// The registry: use cases over the blob store, metadata and cluster of this node.
#[derive(Debug)]
pub struct Registry {
    blobs: Arc<BlobStore>,
    meta: MetaReader,
    cluster: Cluster,
    settings: RegistrySettings,
    uploads: uploads::Uploads,
    fetcher: fetch::BlobFetcher,
    /// Paces copies (shared with `fetcher`); told of client requests.
    pacing: Arc<PeerBandwidth>,
    metrics: Arc<Metrics>,
    /// Request rates per namespace on this node.
    rates: rates::RateLimiter,
    /// Coalesces the touches of concurrent HEADs and GETs of one unreferenced blob (striped by
    /// digest): see [`Registry::touch_if_unreferenced`].
    touching: Box<[tokio::sync::Mutex<()>]>,
}

/// Stripes of [`Registry`]'s touch lock.
const TOUCH_STRIPES: usize = 64;

/// A descriptor whose size is not the size of the content its digest names.
fn size_mismatch(d: &Descriptor, stored: u64) -> RegistryError {
    RegistryError::DescriptorSizeInvalid {
        digest: d.digest.clone(),
        declared: d.size_u64(),
        stored,
    }
}

/// Parses a repository name from the wire.
pub fn parse_name(name: &str) -> Result<RepositoryName, RegistryError> {
    RepositoryName::parse(name).map_err(|_| RegistryError::NameInvalid(name.to_string()))
}

/// Parses a digest from the wire.
pub fn parse_digest(digest: &str) -> Result<Digest, RegistryError> {
    Digest::parse(digest).map_err(|e| RegistryError::DigestInvalid(e.to_string()))
}

/// Parses a manifest reference (tag or digest) from the wire.
pub fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    Reference::parse(reference).map_err(|e| {
        if reference.contains(':') {
            RegistryError::DigestInvalid(e.to_string())
        } else {
            RegistryError::TagInvalid(e.to_string())
        }
    })
}

impl Registry {
    /// Builds the registry over this node's parts.
    pub fn new(
        blobs: Arc<BlobStore>,
        meta: MetaReader,
        cluster: Cluster,
        settings: RegistrySettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Registry> {
        let uploads = uploads::Uploads::new(cluster.node_id(), settings.upload_limits);
        let pacing = Arc::new(PeerBandwidth::new(
            settings.copy_bytes_per_sec_per_peer,
            settings.copy_bytes_per_sec_while_busy,
        ));
        let fetcher = fetch::BlobFetcher::new(pacing.clone(), metrics.clone());
        Arc::new(Registry {
            blobs,
            meta,
            cluster,
            settings,
            uploads,
            fetcher,
            pacing,
            metrics,
            rates: rates::RateLimiter::default(),
            touching: (0..TOUCH_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        })
    }

    /// Notes that a client request arrived: replication copies slow down while clients are
    /// served (`cluster::PeerBandwidth`).
    pub fn client_request(&self) {
        self.pacing.client_request();
    }

    /// Upload sessions open on this node now.
    pub fn uploads_in_progress(&self) -> usize {
        self.uploads.open_sessions()
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The cluster this registry writes through.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Largest manifest accepted, in bytes.
    pub fn max_manifest_bytes(&self) -> usize {
        self.settings.max_manifest_bytes
    }

    /// The blob store (readiness checks, garbage collection).
    pub fn blob_store(&self) -> &BlobStore {
        &self.blobs
    }

    /// The applied metadata this registry reads.
    pub fn meta(&self) -> &MetaReader {
        &self.meta
    }

    /// Its settings.
    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    /// Commits a command. One that causes events (a manifest put or delete, a tag delete),
    /// inside a client request's scope, is traced: its events name the request (webhook
    /// payloads) and carry its time.
    async fn write(&self, cmd: CommandV1) -> Result<WriteResult, RegistryError> {
        let evented = matches!(
            cmd,
            CommandV1::PutManifest(_)
                | CommandV1::DeleteManifest { .. }
                | CommandV1::RemoveManifest { .. }
                | CommandV1::DeleteTag { .. }
        );
        let request = evented.then(crate::types::RequestMeta::current).flatten();
        let cmd = match request {
            Some(request) => CommandV1::Traced(Box::new(crate::meta::Traced {
                request,
                at_ms: now_ms(),
                command: cmd,
            })),
            None => cmd,
        };
        Ok(self.cluster.write(Command::V1(cmd)).await?)
    }

    // ---- blobs -------------------------------------------------------------------------

    /// Where this node serves a blob of the repository from: answered once per request, from
    /// the blob record and one look at the local disk. The caller then serves it
    /// ([`Registry::read_blob`], [`Registry::stat_blob`]) or redirects the client
    /// ([`Registry::redirect_blob_get`]).
    ///
    /// Errors: [`RegistryError::BlobUnknown`] when it is not in the repository (after
    /// confirming with the leader, see [`Registry::confirm_absence`]);
    /// [`RegistryError::Denied`] when the repository is locked for reads.
    pub async fn locate_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<BlobLocation, RegistryError> {
        self.check_repository_readable(repo)?;
        let mut record = self.meta.linked_blob(repo, digest).await?;
        if record.is_none() && self.confirm_absence().await {
            record = self.meta.linked_blob(repo, digest).await?;
        }
        let record = record.ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))?;
        self.touch_if_unreferenced(digest).await;
        let local = self.blobs.holds(digest);
        Ok(BlobLocation {
            digest: digest.clone(),
            size: record.size,
            local,
            // Only a miss asks: the policies are read (a short scan) when a copy would be made.
            resident: local || self.may_hold(repo).await?,
            holders: self.other_holders_nearest(record.holders),
        })
    }

    /// A client is about to be told that a blob exists (a HEAD or GET): when no manifest
    /// references it, its garbage-collection grace starts again, through Raft, before the
    /// answer goes out. A client that then skips uploading it and pushes a manifest naming
    /// it has the whole grace period to do so (docs/lifecycle.md). A blob touched within the
    /// last [`crate::gc::touch_slack`] is not touched again (the collector's cutoff leaves
    /// that much more).
    ///
    /// Concurrent requests for one blob write one touch: each holds the digest's stripe of
    /// `touching` from reading the record to the end of its write, so the next one reads the
    /// fresh touch and skips. When the touch cannot be committed (no leader heard, or not
    /// committed within [`CONFIRM_ABSENCE_WITHIN`]) the answer goes out without it; the blob
    /// may then be collected after its grace, and a manifest naming it is refused
    /// (`MANIFEST_BLOB_UNKNOWN`) until it is pushed again (docs/lifecycle.md, "The rule").
    async fn touch_if_unreferenced(&self, digest: &Digest) {
        let slack = crate::gc::touch_slack(self.settings.gc_grace).as_millis() as u64;
        // Whether the blob needs a touch now: no manifest references it and it was not touched
        // within the slack.
        let due = || match self.meta.blob_refs(digest) {
            Ok(Some(r)) => r.refs == 0 && r.touched_ms.saturating_add(slack) <= now_ms(),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "failed to read a blob's references");
                false
            }
        };
        // Checked unlocked first: a referenced or freshly touched blob (nearly every read)
        // takes no lock.
        if !due() || !self.cluster.hears_from_leader() {
            return;
        }
        // The hex digits of a digest are uniformly spread: two of them pick the stripe.
        let stripe = usize::from_str_radix(&digest.hex()[..2], 16).unwrap_or(0) % TOUCH_STRIPES;
        let touch = async {
            let _touching = self.touching[stripe].lock().await;
            // A request that held the lock meanwhile may have touched it.
            if !due() {
                return Ok(());
            }
            let cmd = CommandV1::TouchBlobs {
                digests: vec![digest.clone()],
                at_ms: now_ms(),
            };
            self.write(cmd).await.map(|_| ())
        };
        // The wait for the lock counts: requests queued behind a touch that cannot commit
        // answer within the bound too.
        let bound = CONFIRM_ABSENCE_WITHIN.min(self.settings.write_timeout);
        match tokio::time::timeout(bound, touch).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(%digest, error = %e, "failed to touch an unreferenced blob")
            }
            Err(_) => tracing::debug!(%digest, "failed to touch an unreferenced blob in time"),
        }
    }

    /// Whether the replication policy of `repo` lets this node's region hold copies of its
    /// blobs (`meta::policy::allows`; no policy: every region may).
    async fn may_hold(&self, repo: &RepositoryName) -> Result<bool, RegistryError> {
        let policies = self.meta.replication_policies().await?;
        let Some((_, policy)) = crate::meta::policy::effective(repo.as_str(), &policies) else {
            return Ok(true);
        };
        let region = self
            .cluster
            .member(self.cluster.node_id())
            .map(|m| m.region);
        Ok(region.is_some_and(|r| crate::meta::policy::allows(Some(policy), &r)))
    }

    /// The holders of a blob other than this node, nearest first: where a copy is fetched from.
    fn other_holders_nearest(&self, holders: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
        let me = self.cluster.node_id();
        self.cluster
            .order_by_nearness(holders)
            .into_iter()
            .filter(|h| *h != me)
            .collect()
    }

    /// Size of a located blob (a HEAD). When this node has no copy yet, one is fetched from
    /// the nearest holder in the background, if the disk has room for it.
    pub fn stat_blob(&self, location: &BlobLocation) -> u64 {
        // No copy is warmed where a GET would be redirected to a holder anyway.
        if !location.local
            && location.resident
            && !self.settings.routing.redirect_missing
            && self.blobs.check_space(location.size).is_ok()
        {
            self.fetcher
                .warm(&self.cluster, &self.blobs, location.wanted());
        }
        location.size
    }

    /// Opens a located blob (or the range the `Range` header names) for streaming. A blob
    /// this node does not hold is streamed from the nearest holder while the copy is made
    /// (a range waits for the copy); concurrent misses share one fetch.
    ///
    /// Errors: [`RegistryError::RangeNotSatisfiable`] for a range outside the blob;
    /// [`RegistryError::InsufficientStorage`] when the copy would go below the reserve;
    /// [`RegistryError::Unavailable`] when no node holding it can provide it. A malformed or
    /// multi-range header is ignored (whole blob).
    pub async fn read_blob(
        &self,
        location: &BlobLocation,
        range: Option<&str>,
    ) -> Result<BlobRead, RegistryError> {
        let (digest, size) = (&location.digest, location.size);
        let range = match range.map(ByteRangeSpec::parse) {
            Some(Ok(spec)) => match spec.resolve(size) {
                Some(r) => Some((r.start, r.end_inclusive)),
                None => return Err(RegistryError::RangeNotSatisfiable { size }),
            },
            // RFC 9110: a server may ignore a Range header it does not understand.
            Some(Err(_)) | None => None,
        };
        if !location.local && !location.resident {
            // Not redirected (`redirect_blob_get`): no holder was reachable.
            return Err(RegistryError::Unavailable(format!(
                "blob {digest} is kept out of this node's region by the repository's \
                 replication policy, and no node holding it is reachable to redirect to"
            )));
        }
        if !location.local {
            // The copy this read makes must leave the reserve too (best effort: a fetch
            // already running for another request is joined all the same).
            self.blobs.check_space(size)?;
            let unavailable = |why: Arc<String>| {
                RegistryError::Unavailable(format!(
                    "no node holding blob {digest} could provide it ({why})"
                ))
            };
            // A whole-blob GET is served while the copy streams in; a range waits for it.
            if range.is_none() {
                let streamed = self
                    .fetcher
                    .stream(&self.cluster, &self.blobs, location.wanted())
                    .await
                    .map_err(unavailable)?;
                if let Some(body) = streamed {
                    return Ok(BlobRead { size, range, body });
                }
            } else {
                self.fetcher
                    .ensure(
                        &self.cluster,
                        &self.blobs,
                        location.wanted(),
                        fetch::Purpose::Client,
                    )
                    .await
                    .map_err(unavailable)?;
            }
        }
        // The whole blob is read as the range the record gives: its size is known, so the
        // store need not look it up again (an empty blob has no range).
        let span = range.or_else(|| size.checked_sub(1).map(|last| (0, last)));
        let body = self.blobs.read(digest, span).await?;
        Ok(BlobRead { size, range, body })
    }

    /// Where a blob GET from `client` should go instead of being served here: the base URL of
    /// the nearest reachable holder when the repository's replication policy keeps copies out
    /// of this node's region and it has none; else per the `[routing]` settings (see
    /// [`routing::Routing`]).
    pub fn redirect_blob_get(
        &self,
        client: Option<std::net::IpAddr>,
        location: &BlobLocation,
    ) -> Option<String> {
        if !location.local && !location.resident {
            // Data residency: the bytes may pass through no disk of this region.
            return location
                .holders
                .iter()
                .find_map(|h| self.cluster.reachable_member(*h).ok().map(|i| i.url));
        }
        self.settings
            .routing
            .redirect(&self.cluster, client, location)
    }

    /// Before answering "unknown": when this node may lag the cluster, waits (bounded) until it
    /// has applied everything the leader had committed, and returns true (look again). Returns
    /// false at once on the leader (its applied state holds every acknowledged write) and on a
    /// node that does not hear from a leader (it answers from what it has); false too when
    /// the leader could not confirm within [`CONFIRM_ABSENCE_WITHIN`] (the answer is then
    /// from what this node has).
    async fn confirm_absence(&self) -> bool {
        if self.cluster.is_leader() || !self.cluster.hears_from_leader() {
            return false;
        }
        let bound = CONFIRM_ABSENCE_WITHIN.min(self.settings.write_timeout);
        match tokio::time::timeout(bound, self.cluster.catch_up_with_leader()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "failed to confirm a not-found with the leader");
                false
            }
            Err(_) => {
                tracing::debug!(
                    waited_ms = bound.as_millis() as u64,
                    "failed to confirm a not-found with the leader in time"
                );
                false
            }
        }
    }

    /// Removes a blob from the repository (its bytes stay until garbage collection).
    ///
    /// Errors: [`RegistryError::BlobUnknown`]; [`RegistryError::Denied`] when the repository
    /// is locked for deletes.
    pub async fn delete_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        match self
            .write(CommandV1::UnlinkBlob {
                repo: repo.clone(),
                digest: digest.clone(),
            })
            .await?
        {
            WriteResult::Done => Ok(()),
            WriteResult::Rejected(r) if let Some(e) = RegistryError::refused(&r) => Err(e),
            _ => Err(RegistryError::BlobUnknown(digest.clone())),
        }
    }

    /// Links a blob of `from` into `to`. Returns whether it was mounted (false: `from` does
    /// not have it, and the client should upload it).
    ///
    /// Errors: [`RegistryError::Denied`] when `to` is locked for writes, or is new and its
    /// namespace is at its repository limit.
    pub async fn mount_blob(
        &self,
        to: &RepositoryName,
        from: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        if self.meta.linked_blob(from, digest).await?.is_none() {
            // As for a manifest PUT: the source may have the blob through a write this node
            // has not applied yet.
            self.cluster.catch_up_with_leader().await?;
            if self.meta.linked_blob(from, digest).await?.is_none() {
                return Ok(false);
            }
        }
        let cmd = CommandV1::MountBlob {
            from: from.clone(),
            to: to.clone(),
            digest: digest.clone(),
            at_ms: now_ms(),
        };
        match self.write(cmd).await? {
            WriteResult::Mounted(mounted) => Ok(mounted),
            WriteResult::Rejected(r) if let Some(e) = RegistryError::refused(&r) => Err(e),
            other => Err(RegistryError::Storage(
                format!("unexpected answer {other:?}").into(),
            )),
        }
    }

    /// Records a blob durable on this node as present in `repo`.
    ///
    /// Errors: [`RegistryError::Denied`] when the repository is locked for writes, or is new
    /// and its namespace is at its repository limit. The file stays: another repository may
    /// link the blob, and an unrecorded one goes with the reaper's next sweep.
    async fn register_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        let cmd = CommandV1::BlobStored {
            repo: repo.clone(),
            digest: digest.clone(),
            size,
            node: self.cluster.node_id(),
            at_ms: now_ms(),
        };
        match self.write(cmd).await? {
            WriteResult::Rejected(r) => Err(RegistryError::refused(&r).unwrap_or_else(|| {
                RegistryError::Storage(format!("unexpected answer {r:?}").into())
            })),
            _ => Ok(()),
        }
    }

    // ---- uploads -----------------------------------------------------------------------

    /// Refuses to store `incoming` more bytes of blobs (0: unknown, or a new session) when that
    /// would leave less than the reserve free on this node's disk (ADR 010). Upload handlers
    /// call it before they read a body. (An upload the disk refuses half-way breaks, and its
    /// session ends with its staging file removed: see `uploads::Lease::release`.)
    ///
    /// Errors: [`RegistryError::InsufficientStorage`].
    pub fn check_upload_space(&self, incoming: u64) -> Result<(), RegistryError> {
        Ok(self.blobs.check_space(incoming)?)
    }

    /// Opens an upload session in the repository for `client` (its address, when known).
    ///
    /// Errors: [`RegistryError::TooManyUploads`] past the node's or the client's bound.
    pub async fn start_upload(
        &self,
        repo: &RepositoryName,
        client: Option<std::net::IpAddr>,
    ) -> Result<UploadStatus, RegistryError> {
        self.uploads.start(&self.blobs, repo, client)
    }

    /// The state of an upload session; answers at once, also while a request writes to it.
    ///
    /// Errors: [`RegistryError::BlobUploadUnknown`].
    pub async fn upload_status(
        &self,
        repo: &RepositoryName,
        id: &str,
    ) -> Result<UploadStatus, RegistryError> {
        self.uploads.status(repo, id)
    }

    /// Appends a chunk to an upload. The work runs in a task of its own, so a client that
    /// hangs up cannot leave the session half-written.
    ///
    /// Errors: [`RegistryError::BlobUploadUnknown`] (also when the session is cancelled
    /// meanwhile); [`RegistryError::UploadBusy`] while another request writes to it;
    /// [`RegistryError::ChunkOutOfOrder`] when the chunk does not start at the current offset
    /// (nothing is appended); [`RegistryError::SizeInvalid`] when the body is longer or shorter
    /// than the chunk declared (what arrived up to the declared end stays appended);
    /// [`RegistryError::BlobUploadInvalid`] when the body failed (what arrived stays appended).
    pub async fn append_upload<S, E>(
        self: &Arc<Self>,
        repo: &RepositoryName,
        id: &str,
        chunk: Chunk,
        body: S,
    ) -> Result<UploadStatus, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let mut lease = self.uploads.lease(repo, id)?;
        lease.check_start(chunk.start)?;
        let body = uploads::declared(body, chunk.len);
        let id = id.to_string();
        run_detached(async move {
            let cancelled = lease.cancelled();
            let appended = tokio::select! {
                r = lease.staged().append(body) => r,
                () = cancelled => return Err(RegistryError::BlobUploadUnknown(id)),
            };
            let parked = lease.staged().park().await;
            let status = lease.release().await;
            appended?;
            parked?;
            status
        })
        .await
    }

    /// Completes an upload: appends the final chunk (declared as for
    /// [`Registry::append_upload`]), verifies the digest, stores the blob and records it. On a
    /// digest mismatch the upload is discarded and nothing is stored. Runs in a task of its
    /// own: once the body has arrived, the blob is stored and recorded whether or not the
    /// client waits for the answer.
    pub async fn finish_upload<S, E>(
        self: &Arc<Self>,
        repo: &RepositoryName,
        id: &str,
        digest: &Digest,
        chunk: Chunk,
        final_chunk: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let mut lease = self.uploads.lease(repo, id)?;
        lease.check_start(chunk.start)?;
        let body = uploads::declared(final_chunk, chunk.len);
        let (this, repo, digest, id) = (self.clone(), repo.clone(), digest.clone(), id.to_string());
        run_detached(async move {
            let cancelled = lease.cancelled();
            let appended = tokio::select! {
                r = lease.staged().append(body) => r,
                () = cancelled => return Err(RegistryError::BlobUploadUnknown(id)),
            };
            if let Err(e) = appended {
                // The session stays (unless the upload broke): the client may retry the PUT.
                // Its partial block goes where an idle session's goes.
                let _ = lease.staged().park().await;
                let _ = lease.release().await;
                return Err(e.into());
            }
            let staged = lease.take()?;
            this.commit_blob(&repo, &digest, staged).await
        })
        .await
    }

    /// Uploads a whole blob in one request (in a task of its own, as a finish).
    pub async fn upload_blob<S, E>(
        self: &Arc<Self>,
        repo: &RepositoryName,
        digest: &Digest,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let (this, repo, digest) = (self.clone(), repo.clone(), digest.clone());
        run_detached(async move {
            let mut staged = this
                .blobs
                .begin_upload(&uploads::new_id(this.cluster.node_id()));
            if let Err(e) = staged.append(body).await {
                staged.abort().await;
                return Err(e.into());
            }
            this.commit_blob(&repo, &digest, staged).await
        })
        .await
    }

    /// Verifies and stores a received blob, then records it. If the record cannot be
    /// committed (no quorum), the file stays: the outcome of a timed-out write is unknown, and
    /// removing a file that the record may still name would lose the blob; a retried push
    /// records it.
    async fn commit_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        staged: StagedUpload,
    ) -> Result<(), RegistryError> {
        // Held until the record is written: garbage collection's reaper cannot remove the
        // file in between (see `BlobStore::lock_digest`).
        let _placing = self.blobs.lock_digest(digest).await;
        let info = staged.finish(&self.blobs, digest).await?;
        self.register_blob(repo, digest, info.size).await
    }

    /// Cancels an upload at once (a request writing to it is stopped).
    ///
    /// Errors: [`RegistryError::BlobUploadUnknown`].
    pub async fn cancel_upload(
        &self,
        repo: &RepositoryName,
        id: &str,
    ) -> Result<(), RegistryError> {
        self.uploads.cancel(repo, id).await
    }

    /// Cancels uploads idle for longer than the configured timeout. Returns how many.
    pub async fn expire_idle_uploads(&self) -> usize {
        self.uploads.expire(self.settings.upload_idle_timeout).await
    }

    // ---- manifests ---------------------------------------------------------------------

    /// Validates and stores a manifest, pointing `reference` at it when it is a tag.
    ///
    /// Errors: [`RegistryError::ManifestTooLarge`], [`RegistryError::ManifestInvalid`],
    /// [`RegistryError::DigestInvalid`] (reference digest does not match the bytes),
    /// [`RegistryError::ManifestBlobUnknown`] (a referenced blob or child manifest is not in
    /// the repository), [`RegistryError::DescriptorSizeInvalid`] (a descriptor's size is not
    /// the stored blob's size or the child manifest's length), [`RegistryError::Unavailable`]
    /// (no quorum, or too few copies), [`RegistryError::Denied`] (the repository is locked for
    /// writes, the tag is locked and would move, the namespace would go past its storage
    /// quota or its repository limit).
    pub async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<ManifestPut, RegistryError> {
        if bytes.len() > self.settings.max_manifest_bytes {
            return Err(RegistryError::ManifestTooLarge {
                limit: self.settings.max_manifest_bytes,
            });
        }
        let digest = Digest::sha256_of(&bytes);
        let tag = match reference {
            Reference::Digest(d) if d != &digest => {
                return Err(RegistryError::DigestInvalid(format!(
                    "manifest has digest {digest}, not {d}"
                )));
            }
            Reference::Digest(_) => None,
            Reference::Tag(t) => Some(t.clone()),
        };
        let parsed = ParsedManifest::parse(&bytes, content_type)
            .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        // Every referenced blob and child manifest must be in the repository with the size the
        // descriptor gives. Checked here only: the state machine checks presence again when it
        // applies the command (a delete may race), but content is addressed by its digest, so
        // nothing that races can change the size of what a digest names.
        let mut caught_up = false;
        let mut short = Vec::new();
        for d in parsed.referenced_blobs() {
            let record = self
                .look_up(&mut caught_up, || self.meta.linked_blob(repo, &d.digest))
                .await?;
            match record {
                None => return Err(RegistryError::ManifestBlobUnknown(d.digest.clone())),
                Some(r) if r.size != d.size_u64() => {
                    return Err(size_mismatch(d, r.size));
                }
                Some(r) if !self.durable(&r) && !short.contains(&d.digest) => {
                    short.push(d.digest.clone());
                }
                Some(_) => {}
            }
        }
        for d in parsed.child_manifests() {
            let child = self
                .look_up(&mut caught_up, || self.meta.manifest(repo, &d.digest))
                .await?;
            match child {
                None => return Err(RegistryError::ManifestBlobUnknown(d.digest.clone())),
                Some(m) if m.bytes.len() as u64 != d.size_u64() => {
                    return Err(size_mismatch(d, m.bytes.len() as u64));
                }
                Some(_) => {}
            }
        }
        // Blobs held by too few nodes or regions are copied now, while the client waits.
        if !short.is_empty() {
            self.make_durable(repo, &short).await?;
        }
        let blobs: Vec<Digest> = parsed
            .referenced_blobs()
            .map(|d| d.digest.clone())
            .collect();
        let children: Vec<Digest> = parsed
            .child_manifests()
            .iter()
            .map(|d| d.digest.clone())
            .collect();
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        let media_type = parsed.kind.media_type().to_string();
        let referrer = subject.as_ref().map(|_| ReferrerRecord {
            media_type: media_type.clone(),
            size: bytes.len() as u64,
            artifact_type: parsed.effective_artifact_type().map(str::to_string),
            annotations: parsed.annotations.clone().unwrap_or_default(),
        });
        let record = ManifestRecord {
            media_type,
            bytes: bytes.to_vec(),
            blobs,
            children,
            subject: subject.clone(),
            created_ms: now_ms(),
        };
        let cmd = CommandV1::PutManifest(Box::new(crate::meta::PutManifest {
            repo: repo.clone(),
            digest: digest.clone(),
            tag,
            record,
            referrer,
        }));
        match self.write(cmd).await? {
            WriteResult::Done => Ok(ManifestPut { digest, subject }),
            WriteResult::Rejected(Rejection::BlobUnknown(d) | Rejection::ManifestUnknown(d)) => {
                Err(RegistryError::ManifestBlobUnknown(d))
            }
            WriteResult::Rejected(r) if let Some(e) = RegistryError::refused(&r) => Err(e),
            other => Err(RegistryError::Storage(
                format!("unexpected answer {other:?}").into(),
            )),
        }
    }

    /// Looks something up in the applied state; when it is absent, catches up once per request
    /// with what the cluster committed (it may have been pushed at another node a moment ago)
    /// and looks again.
    async fn look_up<T, F, Fut>(
        &self,
        caught_up: &mut bool,
        read: F,
    ) -> Result<Option<T>, RegistryError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, crate::meta::MetaError>>,
    {
        let found = read().await?;
        if found.is_some() || *caught_up {
            return Ok(found);
        }
        self.cluster.catch_up_with_leader().await?;
        *caught_up = true;
        Ok(read().await?)
    }

    /// A manifest by tag or digest.
    ///
    /// Errors: [`RegistryError::ManifestUnknown`] (also when the repository is unknown), after
    /// confirming with the leader ([`Registry::confirm_absence`]); [`RegistryError::Denied`]
    /// when the repository, the tag or the manifest is locked for reads.
    pub async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<ManifestRead, RegistryError> {
        self.check_repository_readable(repo)?;
        let read = || async {
            Ok::<_, RegistryError>(match reference {
                Reference::Digest(d) => self.meta.manifest(repo, d).await?.map(|m| (d.clone(), m)),
                Reference::Tag(t) => self.meta.manifest_by_tag(repo, t).await?,
            })
        };
        let mut found = read().await?;
        if found.is_none() && self.confirm_absence().await {
            found = read().await?;
        }
        if let Some((digest, _)) = &found {
            let tag = match reference {
                Reference::Tag(t) => Some(t),
                Reference::Digest(_) => None,
            };
            self.check_manifest_readable(repo, tag, digest)?;
        }
        match found {
            Some((digest, m)) => Ok(ManifestRead {
                digest,
                media_type: m.media_type,
                bytes: Bytes::from(m.bytes),
            }),
            None => Err(RegistryError::ManifestUnknown(reference.to_string())),
        }
    }

    /// A manifest by tag or digest, negotiated against the client's `Accept` media types.
    ///
    /// Clients that accept no index type (old Docker clients) asking for an index by tag get
    /// the `linux/amd64` image manifest of it, as CNCF Distribution does; in every other case
    /// the manifest is returned as stored, whatever `Accept` says.
    pub async fn get_manifest_for(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<ManifestRead, RegistryError> {
        let m = self.get_manifest(repo, reference).await?;
        let accepted = |t: &str| accept.iter().any(|a| *a == t || *a == "*/*");
        if accept.is_empty() || accepted(&m.media_type) || !matches!(reference, Reference::Tag(_)) {
            return Ok(m);
        }
        let Ok(parsed) = ParsedManifest::parse(&m.bytes, Some(&m.media_type)) else {
            return Ok(m);
        };
        if !parsed.kind.is_index() {
            return Ok(m);
        }
        let platform_is = |d: &Descriptor, os: &str, arch: &str| {
            d.platform
                .as_ref()
                .is_some_and(|p| p["os"] == os && p["architecture"] == arch)
        };
        let child = parsed
            .child_manifests()
            .iter()
            .find(|d| platform_is(d, "linux", "amd64") && accepted(&d.media_type));
        match child {
            Some(d) => {
                self.get_manifest(repo, &Reference::Digest(d.digest.clone()))
                    .await
            }
            None => Ok(m),
        }
    }

    /// Deletes a tag (reference is a tag) or a manifest with its tags (reference is a digest).
    ///
    /// Errors: [`RegistryError::ManifestUnknown`]; [`RegistryError::Denied`] when the
    /// repository is locked for deletes, or the tag, the manifest or one of its tags is locked.
    pub async fn delete_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<(), RegistryError> {
        let cmd = match reference {
            Reference::Tag(tag) => CommandV1::DeleteTag {
                repo: repo.clone(),
                tag: tag.clone(),
            },
            Reference::Digest(digest) => CommandV1::RemoveManifest {
                repo: repo.clone(),
                digest: digest.clone(),
                at_ms: now_ms(),
            },
        };
        match self.write(cmd).await? {
            WriteResult::Done => Ok(()),
            WriteResult::Rejected(r) if let Some(e) = RegistryError::refused(&r) => Err(e),
            _ => Err(RegistryError::ManifestUnknown(reference.to_string())),
        }
    }

    // ---- lists -------------------------------------------------------------------------

    /// Tags of a repository in lexical order; the flag says whether more follow. Tags locked
    /// for listing, and tags of manifests locked for listing, are left out (before paging).
    ///
    /// Errors: [`RegistryError::NameUnknown`], after confirming with the leader.
    pub async fn tags(
        &self,
        repo: &RepositoryName,
        page: Page,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        match self.listable_tags(repo).await? {
            None => self.tag_page(repo, page).await,
            Some(filter) => {
                let filter = &filter;
                locks::filtered_page(
                    page,
                    |step| self.tag_page(repo, step),
                    |tags| self.filter_tags(repo, tags, filter),
                )
                .await
            }
        }
    }

    /// A page of the repository's tags as stored.
    ///
    /// Errors: [`RegistryError::NameUnknown`], after confirming with the leader.
    async fn tag_page(
        &self,
        repo: &RepositoryName,
        page: Page,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        let mut found = self.meta.tags(repo, page.clone()).await?;
        if found.is_none() && self.confirm_absence().await {
            found = self.meta.tags(repo, page).await?;
        }
        found.ok_or_else(|| RegistryError::NameUnknown(repo.to_string()))
    }

    /// Repository names in lexical order, without those locked for listing; the flag says
    /// whether more follow.
    pub async fn catalog(&self, page: Page) -> Result<(Vec<String>, bool), RegistryError> {
        self.listable_repositories(page).await
    }

    /// The manifests whose `subject` is `subject`, optionally only those of one artifact type.
    ///
    /// Errors: [`RegistryError::Denied`] when the repository is locked for reads.
    pub async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, RegistryError> {
        self.check_repository_readable(repo)?;
        let descriptors = self
            .meta
            .referrers(repo, subject)
            .await?
            .into_iter()
            .filter(|(_, r)| artifact_type.is_none_or(|t| r.artifact_type.as_deref() == Some(t)))
            .map(|(digest, r)| Descriptor {
                media_type: r.media_type,
                digest,
                size: r.size as i64,
                urls: None,
                annotations: (!r.annotations.is_empty()).then_some(r.annotations),
                artifact_type: r.artifact_type,
                platform: None,
                data: None,
            })
            .collect();
        Ok(Referrers {
            descriptors,
            filtered: artifact_type.is_some(),
        })
    }
}

/// The OCI image index a referrers response carries.
pub fn referrers_index(referrers: &Referrers) -> serde_json::Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": referrers.descriptors,
    })
}
