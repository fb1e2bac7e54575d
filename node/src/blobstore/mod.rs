//! The blob store: content-addressed blob files on this node's local disk.
//!
//! It is the only module that touches the data directory's blob and upload folders. It knows
//! digests, never repositories: which repository may see which blob is metadata (`meta`).
//!
//! Layout under the data directory (see `docs/on-disk-layout.md`):
//!
//! ```text
//! <data-dir>/
//!   blobs/sha256/<hh>/<64 hex>     one file per blob, named by its digest; <hh> = first two hex
//!   uploads/<upload id>            staging file of an upload in progress
//! ```
//!
//! Invariants:
//! - A file under `blobs/` is complete and its content hashes to its name. It only ever appears
//!   by `rename` of a staging file whose digest was verified and which was fsynced; the
//!   directory is fsynced after the rename. A crash at any instant leaves no partial blob.
//! - An upload streams into its staging file while it is hashed: nothing is buffered whole.
//! - A staging file is read while it is written only by followers of a copy (`follow.rs`), and
//!   only up to what its writes have put in it; a follower's last byte comes from the stored,
//!   verified blob.
//! - Everything in `uploads/` is removed at start-up: uploads do not survive a restart.
//! - The store's totals ([`BlobStore::totals`]: files and bytes under `blobs/`) are counted
//!   once at open, on the blocking pool, then kept by every placement and removal; they are
//!   never recounted (a scrape reads two atomics).

mod aligned;
mod follow;
mod read;
mod upload;
mod verify;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub use follow::{Begun, CopyProgress, CopyWatch};
pub use read::BlobBody;
pub use upload::StagedUpload;
pub use verify::Verified;

use crate::space::{DiskSpace, Reserve};
use crate::types::Digest;

/// Bytes written between two requests to start write-back of a staging file, so that the fsync
/// at the end of a large upload waits only for the tail.
const WRITEBACK_EVERY: u64 = 32 * 1024 * 1024;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    /// The blob is not stored on this node.
    #[error("blob {0} is not stored on this node")]
    NotFound(Digest),
    /// The uploaded content does not hash to the digest the client named.
    #[error("uploaded content has digest {actual}, not {expected}")]
    DigestMismatch {
        /// The digest the client claimed.
        expected: Digest,
        /// The digest of what was received.
        actual: Digest,
    },
    /// The request body failed while it was being received.
    #[error("failed to receive upload body")]
    Body(#[source] io::Error),
    /// Free space on the data directory's file system is below the upload reserve (ADR 010).
    #[error(
        "the disk holding {} is nearly full: {available} bytes free, storing the blob needs \
         {needed} (a reserve of {reserve} bytes is kept for metadata)",
        path.display()
    )]
    NoSpace {
        /// The data directory.
        path: PathBuf,
        /// Bytes free now.
        available: u64,
        /// Bytes the upload needs free: the reserve and what the client declared it sends.
        needed: u64,
        /// The reserve, in bytes.
        reserve: u64,
    },
    /// A file system operation failed.
    #[error("failed to {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl BlobStoreError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BlobStoreError + 'a {
        move |source| BlobStoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What the store knows of one stored blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    /// Size in bytes.
    pub size: u64,
}

/// A blob file found by [`BlobStore::list_prefix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// Its digest (its name).
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last modified (put in place).
    pub modified: std::time::SystemTime,
}

/// Content-addressed blob files under one data directory.
#[derive(Debug)]
pub struct BlobStore {
    blobs: PathBuf,
    uploads: PathBuf,
    /// Held open for the store's lifetime: an exclusive lock on the data directory.
    _lock: std::fs::File,
    /// What uploads and reads of this store share.
    shared: Arc<Shared>,
    /// Whether large uploads are written with direct I/O (see `upload.rs`, ADR 008).
    direct_writes: bool,
}

/// Limits and counters shared by every upload and read of one store.
#[derive(Debug)]
struct Shared {
    /// Permits for blob disk operations on the blocking pool (writing one block, preparing one
    /// read window). A permit is held only while the disk works, never while a client is
    /// waited for; bounded below the blocking pool's size, so that blob transfers can never
    /// take every blocking thread from Raft and metadata work.
    disk: Arc<tokio::sync::Semaphore>,
    /// Bytes of partial blocks that uploads keep in memory between two requests (see
    /// `upload.rs`); bounded by [`HELD_TAILS_BUDGET`].
    held_tails: std::sync::atomic::AtomicUsize,
    /// Blocks written with direct I/O since the store was opened (tests assert with it).
    direct_blocks: std::sync::atomic::AtomicU64,
    /// Free space of the data directory's file system, and what uploads leave of it: checked
    /// when an upload request starts and again before every block is written.
    space: DiskSpace,
    reserve: std::sync::Mutex<Reserve>,
    /// Per-digest locks (striped): see [`BlobStore::lock_digest`].
    placing: Box<[Arc<tokio::sync::Mutex<()>>]>,
    /// Files and bytes under `blobs/`.
    totals: Totals,
}

/// The files and bytes under `blobs/`, and how far their first count has got.
///
/// The count walks the 256 prefix directories in order and adds each one's totals once it
/// has listed it. A placement or removal under a prefix already counted updates the totals;
/// one under a prefix still to be counted is left to the count, which will see its outcome.
/// (One placed or removed in the instant its own directory is being listed may be missed.)
#[derive(Debug, Default)]
struct Totals {
    files: AtomicU64,
    bytes: AtomicU64,
    /// Prefix directories counted so far (256: all; the count is done).
    counted: AtomicUsize,
}

impl Totals {
    /// Whether changes under the digest's prefix directory are the totals' to follow.
    fn follows(&self, digest: &Digest) -> bool {
        let prefix = usize::from_str_radix(&digest.hex()[..2], 16).unwrap_or(0);
        prefix < self.counted.load(Ordering::SeqCst)
    }

    /// A blob of `size` bytes was put in place.
    fn placed(&self, digest: &Digest, size: u64) {
        if self.follows(digest) {
            self.files.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(size, Ordering::Relaxed);
        }
    }

    /// A blob of `size` bytes was removed.
    fn removed(&self, digest: &Digest, size: u64) {
        if self.follows(digest) {
            let sub = |n: u64| move |v: u64| Some(v.saturating_sub(n));
            let _ = self
                .files
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, sub(1));
            let _ = self
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, sub(size));
        }
    }

    /// Counts the blob files under `blobs`, prefix by prefix (a directory that cannot be
    /// listed counts as empty, with a warning).
    fn count(&self, blobs: &Path) {
        for prefix in 0..=255u8 {
            let dir = blobs.join(format!("{prefix:02x}"));
            let (mut files, mut bytes) = (0u64, 0u64);
            match std::fs::read_dir(&dir) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let name = entry.file_name();
                        let is_blob = name.len() == 64
                            && name.as_encoded_bytes().iter().all(u8::is_ascii_hexdigit);
                        if let (true, Ok(meta)) = (is_blob, entry.metadata()) {
                            files += 1;
                            bytes += meta.len();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "failed to count blob files")
                }
            }
            self.files.fetch_add(files, Ordering::Relaxed);
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.counted
                .store(usize::from(prefix) + 1, Ordering::SeqCst);
        }
    }
}

/// The blob files this node holds ([`BlobStore::totals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobTotals {
    /// Blob files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Whether the count made at open has finished (before, the figures are partial).
    pub complete: bool,
}

/// Stripes of the per-digest locks: two digests share one with probability 1/4096, which only
/// makes one wait for the other's record to be written.
const DIGEST_LOCK_STRIPES: usize = 4096;

impl Shared {
    fn new(data_dir: &Path) -> Arc<Shared> {
        Arc::new(Shared {
            space: DiskSpace::new(data_dir),
            reserve: std::sync::Mutex::new(Reserve::NONE),
            disk: Arc::new(tokio::sync::Semaphore::new(MAX_TRANSFER_THREADS)),
            held_tails: Default::default(),
            direct_blocks: Default::default(),
            placing: (0..DIGEST_LOCK_STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            totals: Totals::default(),
        })
    }
}

/// Whether `dir` is on tmpfs, which keeps every page in memory and refuses direct I/O: the one
/// file system on which the tests of direct I/O and of page residency have nothing to observe.
#[cfg(test)]
fn on_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a zeroed statfs for the kernel to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    st.f_type == libc::TMPFS_MAGIC
}

/// Whether `uploads/` under the data directory `dir` is empty (no staging file left behind).
#[cfg(test)]
fn no_staging_files(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("uploads"))
        .unwrap()
        .next()
        .is_none()
}

/// Blob disk operations (one block written, one read window prepared) that may run on the
/// blocking pool at once (the pool is larger: see `main.rs`); further ones wait for a permit.
/// Transfers hold a thread only while the disk works, so slow clients hold none.
pub const MAX_TRANSFER_THREADS: usize = 64;

/// Total bytes of upload tails (partial blocks under [`upload::MAX_HELD_TAIL`]) kept in memory
/// between requests; past it, tails are written to their staging files.
const HELD_TAILS_BUDGET: usize = 32 * 1024 * 1024;

impl BlobStore {
    /// Opens (creating if needed) the store under `data_dir`, removing every staging leftover.
    ///
    /// Takes an exclusive lock on `data_dir/LOCK` first, so that a second process cannot open
    /// (and clean) the same data directory; that fails with [`BlobStoreError::Io`].
    pub fn open(data_dir: &Path) -> Result<BlobStore, BlobStoreError> {
        std::fs::create_dir_all(data_dir).map_err(BlobStoreError::io("create", data_dir))?;
        let lock = lock_dir(data_dir)?;
        let blobs = data_dir.join("blobs").join("sha256");
        let uploads = data_dir.join("uploads");
        for dir in [&blobs, &uploads] {
            std::fs::create_dir_all(dir).map_err(BlobStoreError::io("create", dir))?;
        }
        // Every prefix directory exists from the start, so that storing a blob never has to
        // create (and fsync) a parent directory on the hot path.
        for prefix in 0..=255u8 {
            let dir = blobs.join(format!("{prefix:02x}"));
            if !dir.is_dir() {
                std::fs::create_dir(&dir).map_err(BlobStoreError::io("create", &dir))?;
            }
        }
        sync_dir(&blobs)?;
        let removed = clean_dir(&uploads)?;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed staging files of uploads interrupted by a restart"
            );
        }
        let shared = Shared::new(data_dir);
        // The first count of the totals: on the blocking pool when there is a runtime (a
        // large store takes a while to list), else here.
        let counting = (shared.clone(), blobs.clone());
        let count = move || counting.0.totals.count(&counting.1);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(count)),
            Err(_) => count(),
        }
        Ok(BlobStore {
            blobs,
            uploads,
            _lock: lock,
            shared,
            direct_writes: false,
        })
    }

    /// The blob files this node holds and their bytes: counted once at open, then kept as
    /// blobs are placed and removed (two atomic loads).
    pub fn totals(&self) -> BlobTotals {
        let t = &self.shared.totals;
        BlobTotals {
            files: t.files.load(Ordering::Relaxed),
            bytes: t.bytes.load(Ordering::Relaxed),
            complete: t.counted.load(Ordering::SeqCst) == 256,
        }
    }

    /// Sets whether uploads of one block (1 MiB) or more are written with direct I/O or (the
    /// default) through the page cache. Direct I/O is probed once here: where the file system
    /// refuses it, a warning says so and uploads go through the page cache.
    pub fn with_direct_writes(mut self, direct: bool) -> BlobStore {
        self.direct_writes = direct
            && match upload::probe_direct(&self.uploads) {
                Ok(()) => {
                    tracing::info!(dir = %self.uploads.display(), "uploads are written with direct I/O");
                    true
                }
                Err(e) => {
                    tracing::warn!(
                        dir = %self.uploads.display(), error = %e,
                        "storage.direct_writes is set, but this file system refuses direct I/O; \
                         uploads go through the page cache"
                    );
                    false
                }
            };
        self
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.blobs, digest)
    }

    /// Size of a stored blob, or `None` when this node does not hold it.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<BlobInfo>, BlobStoreError> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(BlobInfo { size: m.len() })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobStoreError::io("stat", &path)(e)),
        }
    }

    /// A stored blob's file: its size and when it was put in place; `None` when this node
    /// does not hold it.
    pub async fn describe(&self, digest: &Digest) -> Result<Option<StoredBlob>, BlobStoreError> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(StoredBlob {
                digest: digest.clone(),
                size: m.len(),
                modified: m.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobStoreError::io("stat", &path)(e)),
        }
    }

    /// Whether this node holds the blob: one `stat` of its path, run inline (the directory
    /// entries of recently used blobs are cached by the kernel; a trip to the blocking pool
    /// would cost more than the call, as for metadata point reads, ADR 006).
    pub fn holds(&self, digest: &Digest) -> bool {
        std::fs::symlink_metadata(self.blob_path(digest)).is_ok()
    }

    /// Opens a blob for reading `range` (`None`: the whole blob). The range must lie within the
    /// blob; callers resolve it against [`BlobStore::stat`] first.
    pub async fn read(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<BlobBody, BlobStoreError> {
        let path = self.blob_path(digest);
        // One inline `stat`, as in `holds`.
        let len = match range {
            Some((start, end)) => end + 1 - start,
            None => std::fs::metadata(&path).map_or(0, |m| m.len()),
        };
        read::read_file(path, digest.clone(), range, len, self.shared.clone()).await
    }

    /// Whether uploads are written with direct I/O (set, and the file system allows it).
    pub fn writes_direct(&self) -> bool {
        self.direct_writes
    }

    /// Blocks written with direct I/O since the store was opened.
    pub fn direct_blocks_written(&self) -> u64 {
        self.shared
            .direct_blocks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of upload tails held in memory between requests now.
    pub fn held_tail_bytes(&self) -> usize {
        self.shared
            .held_tails
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Removes a blob file. Removing a blob that is not there is not an error.
    pub async fn delete(&self, digest: &Digest) -> Result<(), BlobStoreError> {
        let path = self.blob_path(digest);
        let (shared, digest) = (self.shared.clone(), digest.clone());
        tokio::task::spawn_blocking(move || {
            let size = std::fs::symlink_metadata(&path).map(|m| m.len());
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    shared.totals.removed(&digest, size.unwrap_or(0));
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(BlobStoreError::io("remove", &path)(e)),
            }
        })
        .await
        .map_err(|e| BlobStoreError::io("remove", Path::new("blob"))(io::Error::other(e)))?
    }

    /// Locks `digest` on this node. Whoever puts a blob file in place and then records it
    /// (an upload's `BlobStored`, a fetched copy's `BlobCopied`) holds the lock from before
    /// the file is placed until the record is written; garbage collection's reaper holds it
    /// while it checks that the cluster has no record of the blob and removes the file. So a
    /// collected blob's file is never removed under a record written after the collection.
    pub async fn lock_digest(&self, digest: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        let hex = digest.hex();
        // The hex digits of a digest are uniformly spread: three of them pick the stripe.
        let stripe = usize::from_str_radix(&hex[..3], 16).unwrap_or(0) % DIGEST_LOCK_STRIPES;
        self.shared.placing[stripe].clone().lock_owned().await
    }

    /// The blob files under one prefix directory (`blobs/sha256/<prefix as two hex digits>`)
    /// with their size and last modification; entries whose name is not a digest are skipped.
    /// A walk over the whole store calls it for each of the 256 prefixes (on a blocking
    /// thread: it lists a directory).
    pub async fn list_prefix(&self, prefix: u8) -> Result<Vec<StoredBlob>, BlobStoreError> {
        let dir = self.blobs.join(format!("{prefix:02x}"));
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(BlobStoreError::io("list", &dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(BlobStoreError::io("list", &dir))?;
                let Some(digest) = entry
                    .file_name()
                    .to_str()
                    .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
                else {
                    continue;
                };
                // Removed meanwhile: not listed.
                let Ok(meta) = entry.metadata() else { continue };
                out.push(StoredBlob {
                    digest,
                    size: meta.len(),
                    modified: meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                });
            }
            Ok(out)
        })
        .await
        .map_err(|e| BlobStoreError::io("list", Path::new("blobs"))(io::Error::other(e)))?
    }

    /// Starts an upload. `id` names its staging file (created when the first bytes are
    /// written) and must be a safe file name: upload ids are generated by this node (hex digits
    /// and dashes).
    pub fn begin_upload(&self, id: &str) -> StagedUpload {
        debug_assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        StagedUpload::new(
            self.uploads.join(id),
            self.direct_writes,
            self.shared.clone(),
        )
    }
}

/// The final path of a blob under `blobs`. Safe: a parsed digest's hex holds only `[0-9a-f]`.
fn blob_path(blobs: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    blobs.join(&hex[..2]).join(hex)
}

/// Moves a verified, fsynced staging file into place as `digest`, then fsyncs the directory.
/// Returns whether it was put in place (false: an identical blob already was).
fn commit_staged(blobs: &Path, staged: &Path, digest: &Digest) -> Result<bool, BlobStoreError> {
    let target = blob_path(blobs, digest);
    if target.exists() {
        // Content-addressed: an identical blob is already in place; drop our copy and make
        // sure the rename that put it there is durable.
        std::fs::remove_file(staged).map_err(BlobStoreError::io("remove", staged))?;
        sync_dir(target.parent().expect("blob path has a parent"))?;
        return Ok(false);
    }
    std::fs::rename(staged, &target).map_err(BlobStoreError::io("rename", staged))?;
    sync_dir(target.parent().expect("blob path has a parent"))?;
    Ok(true)
}

impl BlobStore {
    /// Writes and removes a probe file: is the data directory writable? The probe runs to its
    /// end on a blocking thread even if the caller gives up, and its file is removed whether
    /// or not the write succeeded (a full disk creates the file and then refuses the bytes).
    pub async fn check_writable(&self) -> Result<(), BlobStoreError> {
        // A name per probe: concurrent probes must not remove each other's file.
        let path = self
            .uploads
            .join(format!(".readyz-probe-{}", uuid::Uuid::new_v4().simple()));
        tokio::task::spawn_blocking(move || {
            let written = std::fs::write(&path, b"ok");
            let removed = match std::fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && written.is_err() => Ok(()),
                other => other,
            };
            written.map_err(BlobStoreError::io("write", &path))?;
            removed.map_err(BlobStoreError::io("remove", &path))
        })
        .await
        .map_err(|e| BlobStoreError::io("probe", Path::new("uploads"))(io::Error::other(e)))?
    }

    /// Refuses a blob write of `incoming` bytes (0 when unknown) that would leave less than
    /// the reserve free ([`BlobStore::with_reserve`]). Uses a measurement at most
    /// [`crate::space::MAX_AGE`] old, so it may be called on every request.
    ///
    /// Errors: [`BlobStoreError::NoSpace`]. A failed `statvfs` is logged and lets the write
    /// go ahead.
    pub fn check_space(&self, incoming: u64) -> Result<(), BlobStoreError> {
        self.shared.check_space(incoming)
    }

    /// Sets the free space kept back from uploads (default: none).
    pub fn with_reserve(self, reserve: Reserve) -> BlobStore {
        *self.shared.reserve.lock().expect("reserve lock") = reserve;
        self
    }
}

impl Shared {
    /// A permit for one blob disk operation (see [`Shared::disk`]).
    async fn disk_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.disk
            .clone()
            .acquire_owned()
            .await
            .expect("the disk semaphore is never closed")
    }

    /// See [`BlobStore::check_space`].
    fn check_space(&self, incoming: u64) -> Result<(), BlobStoreError> {
        let reserve = *self.reserve.lock().expect("reserve lock");
        if reserve == Reserve::NONE {
            return Ok(());
        }
        let usage = match self.space.usage() {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(dir = %self.space.path().display(), error = %e, "failed to measure free space");
                return Ok(());
            }
        };
        let reserve = reserve.of(usage.total);
        let needed = reserve.saturating_add(incoming);
        if usage.available < needed {
            return Err(BlobStoreError::NoSpace {
                path: self.space.path().to_path_buf(),
                available: usage.available,
                needed,
                reserve,
            });
        }
        Ok(())
    }
}

/// Locks `dir/LOCK` exclusively (released when the file is closed, also on a crash).
fn lock_dir(dir: &Path) -> Result<std::fs::File, BlobStoreError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(BlobStoreError::io("open", &path))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(BlobStoreError::io(
            "lock (is another berth using it?)",
            &path,
        )(e));
    }
    Ok(file)
}

/// fsyncs a directory so that a rename or create inside it is durable.
fn sync_dir(dir: &Path) -> Result<(), BlobStoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BlobStoreError::io("fsync", dir))
}

/// Removes every entry in `dir`; returns how many were removed.
fn clean_dir(dir: &Path) -> Result<usize, BlobStoreError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(BlobStoreError::io("list", dir))? {
        let path = entry.map_err(BlobStoreError::io("list", dir))?.path();
        let res = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        res.map_err(BlobStoreError::io("remove", &path))?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;

    fn body(chunks: &[&'static [u8]]) -> impl futures::Stream<Item = io::Result<Bytes>> + Unpin {
        futures::stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        )
    }

    /// A store in the write mode asked for; direct I/O is asserted to be in use except on
    /// tmpfs, the one file system measured to refuse it.
    fn store_with(dir: &Path, direct: bool) -> BlobStore {
        let store = BlobStore::open(dir).unwrap().with_direct_writes(direct);
        if direct && on_tmpfs(dir) {
            eprintln!(
                "note: {} is tmpfs; direct writes fall back to the page cache",
                dir.display()
            );
        } else {
            assert_eq!(store.writes_direct(), direct, "write mode of the store");
        }
        store
    }

    /// Asserts that blocks were written with direct I/O when the store does so.
    fn assert_direct_used(store: &BlobStore) {
        if store.writes_direct() {
            assert!(
                store.direct_blocks_written() > 0,
                "no block was written with direct I/O"
            );
        } else {
            assert_eq!(store.direct_blocks_written(), 0);
        }
    }

    async fn read_all(store: &BlobStore, d: &Digest, range: Option<(u64, u64)>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = store.read(d, range).await.unwrap();
        while let Some(chunk) = b.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn upload_in_chunks_then_read_whole_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut up = store.begin_upload("u1");
        up.append(body(&[b"hello ", b"wor"])).await.unwrap();
        up.append(body(&[b"ld"])).await.unwrap();
        assert_eq!(up.offset(), 11);
        let d = Digest::sha256_of(b"hello world");
        let info = up.finish(&store, &d).await.unwrap();
        assert_eq!(info.size, 11);
        assert_eq!(store.stat(&d).await.unwrap(), Some(BlobInfo { size: 11 }));
        assert_eq!(read_all(&store, &d, None).await, b"hello world");
        assert_eq!(read_all(&store, &d, Some((6, 10))).await, b"world");
        assert!(no_staging_files(dir.path()));
    }

    #[tokio::test]
    async fn large_upload_in_uneven_chunks() {
        large_upload_in_uneven_chunks_with(false).await;
    }

    #[tokio::test]
    async fn large_upload_in_uneven_chunks_direct() {
        large_upload_in_uneven_chunks_with(true).await;
    }

    #[tokio::test]
    async fn direct_uploads_of_whole_blocks_and_of_tails() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), true);
        for len in [
            1024 * 1024,
            2 * 1024 * 1024,
            1024 * 1024 + 1,
            1024 * 1024 + 4096,
            1024 * 1024 - 1,
            3,
        ] {
            let data: &'static [u8] = Box::leak(
                (0..len)
                    .map(|i| (i % 253) as u8)
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            );
            let mut up = store.begin_upload(&format!("whole-{len}"));
            up.append(body(&[data])).await.unwrap();
            let d = Digest::sha256_of(data);
            assert_eq!(up.finish(&store, &d).await.unwrap().size, len as u64);
            assert_eq!(
                store.stat(&d).await.unwrap(),
                Some(BlobInfo { size: len as u64 }),
                "{len}: the stored blob has the wrong size"
            );
            assert_eq!(read_all(&store, &d, None).await, data, "{len}");
        }
        assert_direct_used(&store);
    }

    async fn large_upload_in_uneven_chunks_with(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), direct);
        let data: Vec<u8> = (0..5 * 1024 * 1024 + 123)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let data: &'static [u8] = Box::leak(data.into_boxed_slice());
        let mut up = store.begin_upload("big");
        // Three requests, frames of odd sizes that straddle block boundaries.
        let (a, rest) = data.split_at(1024 * 1024 + 7);
        let (b, c) = rest.split_at(2 * 1024 * 1024 - 3);
        up.append(body(&[&a[..100], &a[100..]])).await.unwrap();
        up.append(body(&[&b[..999_999], &b[999_999..]]))
            .await
            .unwrap();
        up.append(body(&[c])).await.unwrap();
        assert_eq!(up.offset(), data.len() as u64);
        let d = Digest::sha256_of(data);
        up.finish(&store, &d).await.unwrap();
        assert_eq!(read_all(&store, &d, None).await, data);
        assert_direct_used(&store);
    }

    #[tokio::test]
    async fn an_append_dropped_half_way_breaks_the_upload() {
        an_append_dropped_half_way_breaks_the_upload_with(false).await;
    }

    #[tokio::test]
    async fn an_append_dropped_half_way_breaks_the_upload_direct() {
        an_append_dropped_half_way_breaks_the_upload_with(true).await;
    }

    async fn an_append_dropped_half_way_breaks_the_upload_with(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), direct);
        let mut up = store.begin_upload("cut");
        let sent: &'static [u8] = Box::leak(vec![3u8; 3 * 1024 * 1024].into_boxed_slice());
        // The body delivers 3 MiB, then never ends: the client went silent.
        let body = futures::stream::iter(vec![Ok::<_, io::Error>(Bytes::from_static(sent))])
            .chain(futures::stream::pending());
        let cut =
            tokio::time::timeout(std::time::Duration::from_millis(300), up.append(body)).await;
        assert!(
            cut.is_err(),
            "the append must still be waiting for the body"
        );
        // Whatever was or was not written, the upload cannot be completed any more.
        let err = up
            .finish(&store, &Digest::sha256_of(sent))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobStoreError::Io { .. }), "{err}");
        assert_eq!(store.stat(&Digest::sha256_of(sent)).await.unwrap(), None);
        // The failed finish removed the staging file, after the cut-off writer was done.
        assert!(
            no_staging_files(dir.path()),
            "a staging file outlived the upload"
        );
        assert_direct_used(&store);
    }

    #[tokio::test]
    async fn wrong_digest_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut up = store.begin_upload("u2");
        up.append(body(&[b"abc"])).await.unwrap();
        let claimed = Digest::sha256_of(b"abd");
        let err = up.finish(&store, &claimed).await.unwrap_err();
        assert!(
            matches!(err, BlobStoreError::DigestMismatch { .. }),
            "{err}"
        );
        assert_eq!(store.stat(&claimed).await.unwrap(), None);
        assert_eq!(store.stat(&Digest::sha256_of(b"abc")).await.unwrap(), None);
        assert!(no_staging_files(dir.path()));
    }

    #[tokio::test]
    async fn same_blob_uploaded_twice_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(BlobStore::open(dir.path()).unwrap());
        let d = Digest::sha256_of(b"same");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                let mut up = store.begin_upload(&format!("c{i}"));
                up.append(body(&[b"sa", b"me"])).await.unwrap();
                up.finish(&store, &d).await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().size, 4);
        }
        assert_eq!(read_all(&store, &d, None).await, b"same");
    }

    #[tokio::test]
    async fn staging_leftovers_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut up = store.begin_upload("left");
        let big: &'static [u8] = Box::leak(vec![7u8; 3 * 1024 * 1024 + 5].into_boxed_slice());
        up.append(body(&[big])).await.unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("uploads"))
                .unwrap()
                .count(),
            1,
            "blocks were written"
        );
        drop(up);
        drop(store);
        let _store = BlobStore::open(dir.path()).unwrap();
        assert!(no_staging_files(dir.path()));
    }

    /// The store's totals once its first count has finished (bounded wait).
    async fn settled_totals(store: &BlobStore) -> BlobTotals {
        for _ in 0..500 {
            let t = store.totals();
            if t.complete {
                return t;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the first count of the blob store did not finish in 5 s");
    }

    #[tokio::test]
    async fn totals_are_counted_at_open_and_kept_by_stores_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let put = |name: &'static str, data: &'static [u8]| {
            let store = &store;
            async move {
                let mut up = store.begin_upload(name);
                up.append(body(&[data])).await.unwrap();
                up.finish(store, &Digest::sha256_of(data)).await.unwrap();
            }
        };
        let empty = settled_totals(&store).await;
        assert_eq!((empty.files, empty.bytes), (0, 0));
        put("a", b"abc").await;
        put("b", b"hello").await;
        // The same content again: one file.
        put("c", b"hello").await;
        let t = store.totals();
        assert_eq!((t.files, t.bytes), (2, 8));
        store.delete(&Digest::sha256_of(b"abc")).await.unwrap();
        store.delete(&Digest::sha256_of(b"abc")).await.unwrap();
        let t = store.totals();
        assert_eq!((t.files, t.bytes), (1, 5));
        drop(store);
        // Reopened, the count finds what is on disk.
        let store = BlobStore::open(dir.path()).unwrap();
        let t = settled_totals(&store).await;
        assert_eq!((t.files, t.bytes), (1, 5));
    }

    #[tokio::test]
    async fn delete_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"x");
        let mut up = store.begin_upload("d");
        up.append(body(&[b"x"])).await.unwrap();
        up.finish(&store, &d).await.unwrap();
        store.delete(&d).await.unwrap();
        store.delete(&d).await.unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), None);
    }
}
