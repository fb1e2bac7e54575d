//! One upload's staging file: appended to by streamed request bodies, hashed as it is
//! received, verified, fsynced and renamed into place by [`StagedUpload::finish`].
//!
//! Bytes are hashed on the receiving task as each body frame arrives and gathered into blocks
//! that end on 1 MiB boundaries of the blob. A full block is written by one short task on the
//! blocking pool while the next block fills, so hashing, receiving and disk writes overlap; at
//! most one write per upload is in flight, and it holds a permit of the store's disk-operation
//! limit only while the disk works. No thread ever waits for the client: an upload whose client
//! stalls holds its buffers and nothing else.
//!
//! Between requests an upload holds at most a small partial block in memory ([`MAX_HELD_TAIL`],
//! within the store's budget for all uploads); [`StagedUpload::park`] writes a larger or
//! unbudgeted one to the staging file, so an idle session costs no more than its bookkeeping.
//! A small blob pushed in one request never starts a write before the finish: it is written,
//! fsynced and renamed in one trip to the blocking pool. The staging file itself is only
//! created when the first bytes are written.
//!
//! Blocks go to the staging file with direct I/O (`O_DIRECT`, ADR 008) when the store is set to
//! and the file system allows it: a pushed blob then does not pass through the page cache,
//! which saves a copy per byte, keeps pushes from evicting what pulls are reading, and leaves
//! the final fsync little to wait for. Only whole 1 MiB blocks from 4 KiB-aligned buffers at
//! 1 MiB offsets are written directly; a short block (after a tail was parked at an unaligned
//! offset) and the final tail go through the page cache. Where the file system refuses direct
//! I/O, the whole file goes through the page cache.
//!
//! A copy fetched from a peer may be read while it is written (`follow.rs`): an upload given a
//! [`CopyProgress`] ([`StagedUpload::publish_to`]) publishes, after each write returns, how far
//! its staging file is written; what it holds in memory is never published.
//!
//! Cancellation: if an `append` is dropped half-way (its task was cancelled), the hash, the
//! blocks in flight and the file no longer agree: the upload is marked broken and can only be
//! aborted. Dropping a `StagedUpload` that was neither finished nor aborted removes its staging
//! file (after any write still in flight), so no staging file outlives its upload.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use tokio::task::JoinHandle;

use super::aligned::{ALIGN, AlignedBuf};
use super::{
    BlobInfo, BlobStore, BlobStoreError, CopyProgress, HELD_TAILS_BUDGET, Shared, WRITEBACK_EVERY,
    blob_path, commit_staged, sync_dir,
};
use crate::types::{Digest, DigestHasher};

/// Size of one block handed to a write.
const BLOCK: usize = 1024 * 1024;
/// Largest partial block an upload may keep in memory between two requests.
pub const MAX_HELD_TAIL: usize = 64 * 1024;

/// The staging file of one upload in progress. Owned by exactly one session; not `Clone`.
#[derive(Debug)]
pub struct StagedUpload {
    /// Empty once finished or aborted.
    path: PathBuf,
    /// The staging file, when it exists and no write holds it.
    file: Option<StagingFile>,
    /// Whether the staging file is to be written with direct I/O where possible.
    direct_requested: bool,
    hasher: DigestHasher,
    /// Received bytes not yet written; they end at or before the next block boundary.
    pending: AlignedBuf,
    /// A block buffer returned by the last write, for the next block of the same request.
    spare: Option<AlignedBuf>,
    /// Bytes handed to the file (written, or in the write in flight).
    written: u64,
    /// Set once a write failed or an append was cut off: the file no longer matches the hash.
    broken: bool,
    /// The write in flight: it owns the file and a block until it returns them.
    in_flight: Option<JoinHandle<WriteOutcome>>,
    /// Bytes of the store's held-tail budget this upload holds for `pending`.
    held: usize,
    /// Where each write that returned is published for readers following this upload, and
    /// under which attempt ([`StagedUpload::publish_to`]).
    progress: Option<(CopyProgress, u64)>,
    shared: Arc<Shared>,
}

/// What a write hands back: the file and the emptied block.
type WriteOutcome = Result<(StagingFile, AlignedBuf), BlobStoreError>;

/// Asks the kernel to start writing a range of the file to disk without waiting for it.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call; the call reads no memory.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "failed to start write-back");
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _from: u64, _len: u64) {}

/// An open staging file and how it is being written.
#[derive(Debug)]
struct StagingFile {
    file: File,
    /// Whether `O_DIRECT` is set on the descriptor now.
    direct: bool,
    /// Set once the file system refused direct I/O: the rest goes through the page cache.
    direct_refused: bool,
    /// File offset up to which write-back has been started (buffered writes only).
    writeback_done: u64,
}

/// Creates a new file for writing; fails if `path` exists.
fn create_new(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

impl StagingFile {
    /// Creates the staging file.
    fn create(path: &Path) -> Result<StagingFile, BlobStoreError> {
        let file = create_new(path).map_err(BlobStoreError::io("create", path))?;
        Ok(StagingFile {
            file,
            direct: false,
            direct_refused: false,
            writeback_done: 0,
        })
    }

    /// Sets `O_DIRECT` as wanted; a refusal to turn it on leaves the page cache for good.
    fn set_mode(&mut self, path: &Path, direct: bool) -> Result<(), BlobStoreError> {
        if direct == self.direct {
            return Ok(());
        }
        match set_direct(&self.file, direct) {
            Ok(()) => self.direct = direct,
            Err(e) if direct => {
                tracing::debug!(
                    path = %path.display(), error = %e,
                    "no direct I/O here; writing through the page cache"
                );
                self.direct_refused = true;
            }
            Err(e) => return Err(BlobStoreError::io("reconfigure", path)(e)),
        }
        Ok(())
    }

    /// Writes `data` at `offset`. A whole block from an aligned buffer at a block offset is
    /// written with direct I/O when `direct_requested` (a refused direct write is retried
    /// through the page cache, which the rest of the upload then uses too); anything else goes
    /// through the page cache. Returns whether the write was direct.
    fn write_at(
        &mut self,
        path: &Path,
        data: &[u8],
        offset: u64,
        direct_requested: bool,
    ) -> Result<bool, BlobStoreError> {
        let eligible = direct_requested
            && !self.direct_refused
            && data.len() == BLOCK
            && offset.is_multiple_of(BLOCK as u64)
            && (data.as_ptr() as usize).is_multiple_of(ALIGN);
        self.set_mode(path, eligible)?;
        if self.direct {
            match self.file.write_all_at(data, offset) {
                Ok(()) => return Ok(true),
                Err(e) if refuses_direct(&e) => {
                    tracing::debug!(path = %path.display(), "direct write refused; writing through the page cache");
                    self.direct_refused = true;
                    self.set_mode(path, false)?;
                }
                Err(e) => return Err(BlobStoreError::io("write", path)(e)),
            }
        }
        self.file
            .write_all_at(data, offset)
            .map_err(BlobStoreError::io("write", path))?;
        // Buffered writes are pushed to the disk along the way so that the fsync at the finish
        // waits only for the tail. (The fsync at the finish is needed either way: it makes the
        // size and the device's cache durable.)
        let end = offset + data.len() as u64;
        if end.saturating_sub(self.writeback_done) >= WRITEBACK_EVERY {
            start_writeback(&self.file, self.writeback_done, end - self.writeback_done);
            self.writeback_done = end;
        }
        Ok(false)
    }
}

/// Whether files in `dir` can be written with direct I/O: creates a probe file, switches it to
/// direct I/O, writes one aligned block and removes it.
pub(super) fn probe_direct(dir: &Path) -> io::Result<()> {
    let path = dir.join(format!(".direct-probe-{}", uuid::Uuid::new_v4().simple()));
    let res = (|| {
        let file = create_new(&path)?;
        set_direct(&file, true)?;
        let mut block = AlignedBuf::with_capacity(ALIGN);
        block.extend_from_slice(&[0u8; ALIGN]);
        file.write_all_at(block.as_slice(), 0)
    })();
    let _ = std::fs::remove_file(&path);
    res
}

/// `EINVAL` is how Linux refuses direct I/O (switching it on where the file system has none, a
/// write whose alignment the device does not accept).
fn refuses_direct(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Turns `O_DIRECT` on or off for an open file (Linux allows changing it with `F_SETFL`).
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL pass no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, on: bool) -> io::Result<()> {
    if on {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    } else {
        Ok(())
    }
}

impl StagedUpload {
    pub(super) fn new(path: PathBuf, direct_requested: bool, shared: Arc<Shared>) -> StagedUpload {
        StagedUpload {
            path,
            file: None,
            direct_requested,
            hasher: DigestHasher::new(),
            pending: AlignedBuf::default(),
            spare: None,
            written: 0,
            broken: false,
            in_flight: None,
            held: 0,
            progress: None,
            shared,
        }
    }

    /// Makes this upload the next attempt of the copy `progress` stands for: readers following
    /// it read this staging file from now on, up to the bytes whose write returned (never the
    /// partial block held in memory). Call it before the first append.
    pub fn publish_to(&mut self, progress: &CopyProgress) {
        debug_assert_eq!(self.offset(), 0, "published after bytes were appended");
        let attempt = progress.begin(self.path.clone());
        self.progress = Some((progress.clone(), attempt));
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Whether a write failed or an append was cut off: the upload can only be aborted.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Appends a streamed body. Returns the new offset. On a body error the bytes received
    /// before it stay appended (the offset says how many); on a write error the upload is
    /// broken and every later call fails. The last partial block stays in memory: call
    /// [`StagedUpload::park`] when the upload waits for its next request.
    pub async fn append<S, E>(&mut self, mut body: S) -> Result<u64, BlobStoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if self.broken {
            return Err(self.broken_error());
        }
        // Cancellation safety: if this future is dropped half-way (the client hung up, the
        // shutdown deadline passed), the hash, the block in flight and the file no longer
        // agree. The upload stays marked broken unless this call returns normally.
        self.broken = true;
        self.release_held();
        let mut body_err = None;
        while let Some(frame) = body.next().await {
            let mut chunk = match frame {
                Ok(c) => c,
                Err(e) => {
                    body_err = Some(io::Error::other(e));
                    break;
                }
            };
            self.hasher.update(&chunk);
            while chunk.has_remaining() {
                let room = BLOCK - (self.offset() % BLOCK as u64) as usize;
                let n = room.min(chunk.len());
                if self.pending.capacity() < self.pending.len() + n {
                    self.pending
                        .reserve_total((self.pending.len() + n).next_power_of_two().min(BLOCK));
                }
                self.pending.extend_from_slice(&chunk[..n]);
                chunk.advance(n);
                if self.offset().is_multiple_of(BLOCK as u64) {
                    self.write_pending().await?;
                }
            }
        }
        self.settle().await?;
        // Block buffers are not kept between requests.
        self.spare = None;
        self.broken = false;
        match body_err {
            Some(e) => Err(BlobStoreError::Body(e)),
            None => Ok(self.offset()),
        }
    }

    /// Prepares the upload to wait for its next request: a partial block is kept in memory
    /// only if it is small and the store's budget for held tails has room; otherwise it is
    /// written to the staging file.
    pub async fn park(&mut self) -> Result<(), BlobStoreError> {
        if self.broken {
            return Err(self.broken_error());
        }
        self.release_held();
        let len = self.pending.len();
        if len == 0 {
            self.pending = AlignedBuf::default();
            return Ok(());
        }
        if len <= MAX_HELD_TAIL {
            // Hold an exact-size copy: the buffer may be a whole block's.
            let mut small = AlignedBuf::with_capacity(len);
            small.extend_from_slice(self.pending.as_slice());
            let cost = small.capacity();
            let budget = &self.shared.held_tails;
            if budget
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    (held + cost <= HELD_TAILS_BUDGET).then_some(held + cost)
                })
                .is_ok()
            {
                self.pending = small;
                self.held = cost;
                return Ok(());
            }
        }
        self.broken = true;
        self.write_pending().await?;
        self.settle().await?;
        self.spare = None;
        self.broken = false;
        Ok(())
    }

    /// Hands `pending` to a write (after the write in flight, if any, returned).
    async fn write_pending(&mut self) -> Result<(), BlobStoreError> {
        self.settle().await?;
        // The reserve holds for every block, not only when a request starts: a body of unknown
        // length must not write past it (ADR 010).
        self.shared.check_space(self.pending.len() as u64)?;
        let next = self.spare.take().unwrap_or_default();
        let block = std::mem::replace(&mut self.pending, next);
        let offset = self.written;
        self.written += block.len() as u64;
        let permit = self.shared.disk_permit().await;
        let (file, path) = (self.file.take(), self.path.clone());
        let (direct, shared) = (self.direct_requested, self.shared.clone());
        let progress = self.progress.clone();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut file = match file {
                Some(f) => f,
                None => StagingFile::create(&path)?,
            };
            if file.write_at(&path, block.as_slice(), offset, direct)? {
                shared.direct_blocks.fetch_add(1, Ordering::Relaxed);
            }
            if let Some((progress, attempt)) = progress {
                progress.written(attempt, offset + block.len() as u64);
            }
            let mut block = block;
            block.clear();
            Ok((file, block))
        }));
        Ok(())
    }

    /// Waits for the write in flight and takes its file and block back.
    async fn settle(&mut self) -> Result<(), BlobStoreError> {
        let Some(write) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let res = write.await;
        // Only now: if this future is dropped while waiting, `abort` still finds the write.
        self.in_flight = None;
        match res {
            Ok(Ok((file, block))) => {
                self.file = Some(file);
                self.spare = Some(block);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(BlobStoreError::io("write", &self.path)(io::Error::other(e))),
        }
    }

    /// Gives back this upload's share of the held-tail budget.
    fn release_held(&mut self) {
        if self.held > 0 {
            self.shared
                .held_tails
                .fetch_sub(self.held, Ordering::AcqRel);
            self.held = 0;
        }
    }

    /// Verifies that what was received hashes to `expected`, makes it durable and moves it into
    /// the store. On a mismatch the staging file is removed and nothing is stored.
    pub async fn finish(
        mut self,
        store: &BlobStore,
        expected: &Digest,
    ) -> Result<BlobInfo, BlobStoreError> {
        if self.broken {
            let e = self.broken_error();
            self.abort().await;
            return Err(e);
        }
        if let Err(e) = self.settle().await {
            self.abort().await;
            return Err(e);
        }
        self.release_held();
        let size = self.offset();
        let actual = std::mem::take(&mut self.hasher).finish();
        let path = std::mem::take(&mut self.path);
        let file = self.file.take();
        let pending = std::mem::take(&mut self.pending);
        let written = self.written;
        let blobs = store.blobs.clone();
        if &actual != expected {
            drop(file);
            remove_quietly(&path).await;
            return Err(BlobStoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let digest = actual;
        if let Err(e) = self.shared.check_space(pending.len() as u64) {
            drop(file);
            remove_quietly(&path).await;
            return Err(e);
        }
        // The tail write, fsync and rename are disk work like a block's.
        let permit = self.shared.disk_permit().await;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let target = blob_path(&blobs, &digest);
            if target.exists() {
                // Content-addressed: an identical blob is already in place; drop our copy, and
                // make sure the rename that put it there is durable before acknowledging.
                drop(file);
                let _ = std::fs::remove_file(&path);
                sync_dir(target.parent().expect("blob path has a parent"))?;
                return Ok(BlobInfo { size });
            }
            let res = (|| {
                // A blob smaller than one block, sent in one request, was never written
                // before: it is written here in one go, through the page cache.
                let mut file = match file {
                    Some(f) => f,
                    None => StagingFile::create(&path)?,
                };
                if !pending.as_slice().is_empty() {
                    file.write_at(&path, pending.as_slice(), written, false)?;
                }
                file.file
                    .sync_data()
                    .map_err(BlobStoreError::io("fsync", &path))?;
                drop(file);
                let placed = commit_staged(&blobs, &path, &digest)?;
                if placed {
                    shared.totals.placed(&digest, size);
                }
                Ok(())
            })();
            if res.is_err() {
                let _ = std::fs::remove_file(&path);
            }
            res.map(|()| BlobInfo { size })
        })
        .await
        .map_err(|e| BlobStoreError::io("finish", Path::new("upload"))(io::Error::other(e)))?
    }

    /// Gives the upload up and removes its staging file.
    pub async fn abort(mut self) {
        let path = std::mem::take(&mut self.path);
        self.release_held();
        drop(self.file.take());
        // A write left by an append that was dropped half-way: let it finish (one block at
        // most) so that the file is not created or written after the removal.
        if let Some(w) = self.in_flight.take() {
            let _ = w.await;
        }
        // Whether or not this handle knows of a file: a failed or interrupted write may
        // have created it.
        remove_quietly(&path).await;
    }

    fn broken_error(&self) -> BlobStoreError {
        BlobStoreError::Io {
            op: "continue",
            path: self.path.clone(),
            source: io::Error::other("an earlier write to this upload failed or was cut off"),
        }
    }
}

impl Drop for StagedUpload {
    /// An upload dropped without `finish` or `abort` (its session's task was cancelled) removes
    /// its staging file, after the write in flight if there is one.
    fn drop(&mut self) {
        self.release_held();
        if self.path.as_os_str().is_empty() {
            return;
        }
        let path = std::mem::take(&mut self.path);
        drop(self.file.take());
        let write = self.in_flight.take();
        match (write, tokio::runtime::Handle::try_current()) {
            (Some(write), Ok(rt)) => {
                rt.spawn(async move {
                    let _ = write.await;
                    remove_quietly(&path).await;
                });
            }
            _ => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "failed to remove staging file")
                }
            },
        }
    }
}

async fn remove_quietly(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "failed to remove staging file")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The open flags of a descriptor, from `/proc/self/fdinfo`.
    fn open_flags(file: &File) -> i32 {
        use std::os::fd::AsRawFd;
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd()))
            .expect("fdinfo");
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .expect("flags line");
        i32::from_str_radix(flags.trim(), 8).expect("octal flags")
    }

    #[tokio::test]
    async fn large_uploads_bypass_the_page_cache_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        if super::super::on_tmpfs(dir.path()) {
            eprintln!(
                "skipped: {} is tmpfs, which has no direct I/O",
                dir.path().display()
            );
            return;
        }
        probe_direct(dir.path()).expect("this file system must take direct writes");
        let block: &'static [u8] = Box::leak(vec![9u8; BLOCK + 10].into_boxed_slice());
        for direct in [true, false] {
            let shared = Shared::new(dir.path());
            let path = dir.path().join(format!("staging-{direct}"));
            let mut up = StagedUpload::new(path, direct, shared.clone());
            up.append(futures::stream::iter([Ok::<_, io::Error>(
                Bytes::from_static(block),
            )]))
            .await
            .unwrap();
            let file = up.file.as_ref().expect("a full block was written");
            assert_eq!(file.direct, direct);
            assert_eq!(open_flags(&file.file) & libc::O_DIRECT != 0, direct);
            assert_eq!(shared.direct_blocks.load(Ordering::Relaxed), direct as u64);
            assert_eq!(up.pending.len(), 10);
            up.abort().await;
        }
    }

    /// A chunked upload whose chunks end off block boundaries: parked tails go to the file
    /// through the page cache, the next block ends on a boundary again, and whole blocks are
    /// still written directly.
    #[tokio::test]
    async fn parked_tails_realign_to_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let direct = !super::super::on_tmpfs(dir.path());
        let store = BlobStore::open(dir.path())
            .unwrap()
            .with_direct_writes(direct);
        assert_eq!(store.writes_direct(), direct);
        let data: Vec<u8> = (0..4 * BLOCK + 777).map(|i| (i % 241) as u8).collect();
        let mut up = store.begin_upload("realign");
        // 1.5 MiB chunks: half-block tails are parked on disk at unaligned offsets; the next
        // request fills up to the boundary and writes whole blocks again.
        for chunk in data.chunks(BLOCK + BLOCK / 2) {
            up.append(futures::stream::iter([Ok::<_, io::Error>(
                Bytes::copy_from_slice(chunk),
            )]))
            .await
            .unwrap();
            up.park().await.unwrap();
            assert!(
                up.pending.len() <= MAX_HELD_TAIL,
                "a tail over the held limit was kept"
            );
        }
        let d = Digest::sha256_of(&data);
        up.finish(&store, &d).await.unwrap();
        if direct {
            assert_eq!(
                store.direct_blocks_written(),
                3,
                "whole blocks were not written directly"
            );
        }
        let path = blob_path(&store.blobs, &d);
        assert_eq!(std::fs::read(path).unwrap(), data);
    }

    /// Small tails are held in memory within the budget; parking frees the block buffers.
    #[tokio::test]
    async fn small_tails_are_held_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut ups = Vec::new();
        let per = MAX_HELD_TAIL;
        let fits = HELD_TAILS_BUDGET / per;
        for i in 0..fits + 3 {
            let mut up = store.begin_upload(&format!("held-{i}"));
            up.append(futures::stream::iter([Ok::<_, io::Error>(Bytes::from(
                vec![1u8; per],
            ))]))
            .await
            .unwrap();
            up.park().await.unwrap();
            assert!(
                up.pending.capacity() <= per,
                "a parked upload keeps a whole block"
            );
            ups.push(up);
        }
        assert!(store.held_tail_bytes() <= HELD_TAILS_BUDGET);
        let on_disk = ups.iter().filter(|u| u.pending.len() == 0).count();
        assert_eq!(on_disk, 3, "uploads past the budget write their tails");
        for up in ups {
            up.abort().await;
        }
        assert_eq!(
            store.held_tail_bytes(),
            0,
            "aborted uploads gave their budget back"
        );
        assert!(super::super::no_staging_files(dir.path()));
    }

    /// Dropping an upload that was neither finished nor aborted removes its staging file.
    #[tokio::test]
    async fn a_dropped_upload_leaves_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut up = store.begin_upload("dropped");
        up.append(futures::stream::iter([Ok::<_, io::Error>(Bytes::from(
            vec![2u8; 2 * BLOCK + 5],
        ))]))
        .await
        .unwrap();
        up.park().await.unwrap();
        drop(up);
        for _ in 0..100 {
            if super::super::no_staging_files(dir.path()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the staging file of a dropped upload was left behind");
    }
}
