//! One upload's staging file: appended to by streamed request bodies, hashed as it is
//! received, verified, fsynced and renamed into place by [`StagedUpload::finish`].
//!
//! Bytes are hashed on the receiving task as each body frame arrives and gathered into 1 MiB
//! blocks; full blocks go to a writer thread (started on the first full block) while the next
//! block fills, so hashing, receiving and disk writes overlap. The last partial block stays in
//! memory until the next chunk or the finish. A small blob therefore never starts a thread:
//! it is written, fsynced and renamed in one trip to the blocking pool at the finish. The
//! staging file itself is only created when the first bytes are written.
//!
//! Blocks go to the staging file with direct I/O (`O_DIRECT`, ADR 008) when the store is set to
//! and the file system allows it: a pushed blob then does not pass through the page cache,
//! which saves a copy per byte, keeps pushes from evicting what pulls are reading, and leaves
//! the final fsync little to wait for. Blocks are 1 MiB from 4 KiB-aligned buffers at 1 MiB
//! offsets, so every direct write is aligned; the tail (under 1 MiB) is written through the
//! page cache. Where the file system refuses direct I/O, the whole file goes through the page
//! cache.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};

use super::aligned::{ALIGN, AlignedBuf};
use super::{
    BlobInfo, BlobStore, BlobStoreError, WRITEBACK_EVERY, blob_path, commit_staged, sync_dir,
};
use crate::types::{Digest, DigestHasher};

/// Size of one block handed to the writer thread.
const BLOCK: usize = 1024 * 1024;
/// Full blocks that may wait for the writer thread (bounds memory per upload).
const BLOCKS_IN_FLIGHT: usize = 2;

/// The staging file of one upload in progress. Owned by exactly one session; not `Clone`.
#[derive(Debug)]
pub struct StagedUpload {
    path: PathBuf,
    /// Created on the first write.
    file: Option<StagingFile>,
    /// Whether the staging file is to be written with direct I/O where possible.
    direct_requested: bool,
    hasher: DigestHasher,
    /// Received bytes not yet written (less than a block).
    pending: AlignedBuf,
    /// Bytes written to the file.
    written: u64,
    /// File offset up to which write-back has been started.
    writeback_done: u64,
    /// Set once a write failed: the file no longer matches the hash state.
    broken: bool,
    /// The writer thread of the `append` in progress, or of one that was dropped half-way
    /// (then `abort` waits for it, so that it cannot create the file after the removal).
    writer: Option<BlockWriter>,
    /// Where the writer thread gets its permit (see `BlobStore::transfers`).
    transfers: Arc<tokio::sync::Semaphore>,
}

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

/// An open staging file and whether it is written with direct I/O.
#[derive(Debug)]
struct StagingFile {
    file: File,
    direct: bool,
}

/// Creates a new file for writing; fails if `path` exists.
fn create_new(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

impl StagingFile {
    /// Creates the staging file, with direct I/O if `direct` and the file system allows it.
    fn create(path: &Path, direct: bool) -> Result<StagingFile, BlobStoreError> {
        let file = create_new(path).map_err(BlobStoreError::io("create", path))?;
        let mut staging = StagingFile {
            file,
            direct: false,
        };
        if direct {
            match set_direct(&staging.file, true) {
                Ok(()) => staging.direct = true,
                Err(e) => tracing::debug!(
                    path = %path.display(), error = %e,
                    "no direct I/O here; writing through the page cache"
                ),
            }
        }
        Ok(staging)
    }

    /// Switches the rest of this upload to the page cache.
    fn stop_direct(&mut self, path: &Path) -> Result<(), BlobStoreError> {
        if self.direct {
            set_direct(&self.file, false).map_err(BlobStoreError::io("reconfigure", path))?;
            self.direct = false;
        }
        Ok(())
    }

    /// Writes a full block at `offset`. With direct I/O, address, offset and length must be
    /// aligned (they are: 1 MiB blocks from aligned buffers at 1 MiB offsets); a refused direct
    /// write is retried through the page cache, which the rest of the upload then uses too.
    fn write_block(
        &mut self,
        path: &Path,
        block: &[u8],
        offset: u64,
    ) -> Result<(), BlobStoreError> {
        if self.direct {
            debug_assert!(
                (block.as_ptr() as usize).is_multiple_of(ALIGN)
                    && block.len().is_multiple_of(ALIGN)
                    && offset.is_multiple_of(ALIGN as u64),
                "unaligned direct write: {} bytes at {offset}",
                block.len()
            );
            match self.file.write_all_at(block, offset) {
                Ok(()) => return Ok(()),
                Err(e) if refuses_direct(&e) => {
                    tracing::debug!(path = %path.display(), "direct write refused; writing through the page cache");
                    self.stop_direct(path)?;
                }
                Err(e) => return Err(BlobStoreError::io("write", path)(e)),
            }
        }
        self.file
            .write_all_at(block, offset)
            .map_err(BlobStoreError::io("write", path))
    }

    /// Writes the last partial block at `offset`, through the page cache: its length is not
    /// aligned, and at most 1 MiB of the blob enters the cache this way.
    fn write_tail(&mut self, path: &Path, tail: &[u8], offset: u64) -> Result<(), BlobStoreError> {
        if tail.is_empty() {
            return Ok(());
        }
        self.stop_direct(path)?;
        self.file
            .write_all_at(tail, offset)
            .map_err(BlobStoreError::io("write", path))
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

/// What the writer thread hands back: the file, bytes written, write-back position.
type WriterOutcome = Result<(StagingFile, u64, u64), BlobStoreError>;

/// The writer thread of one `append`: writes full blocks at increasing offsets.
#[derive(Debug)]
struct BlockWriter {
    tx: tokio::sync::mpsc::Sender<AlignedBuf>,
    /// Emptied blocks come back here for reuse.
    free: tokio::sync::mpsc::Receiver<AlignedBuf>,
    allocated: usize,
    thread: tokio::task::JoinHandle<WriterOutcome>,
}

impl BlockWriter {
    /// Starts the thread. `file` is the staging file if an earlier request created it; else
    /// the thread creates it, with direct I/O if `direct_requested`. `offset` is where the
    /// first block goes: always a multiple of the block size.
    fn start(
        path: PathBuf,
        file: Option<StagingFile>,
        direct_requested: bool,
        mut offset: u64,
        mut writeback_done: u64,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> BlockWriter {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<AlignedBuf>(BLOCKS_IN_FLIGHT);
        let (free_tx, free) = tokio::sync::mpsc::channel::<AlignedBuf>(BLOCKS_IN_FLIGHT + 1);
        debug_assert!(
            offset.is_multiple_of(BLOCK as u64),
            "block at offset {offset}"
        );
        let thread = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut file = match file {
                Some(f) => f,
                None => StagingFile::create(&path, direct_requested)?,
            };
            while let Some(mut block) = rx.blocking_recv() {
                file.write_block(&path, block.as_slice(), offset)?;
                offset += block.len() as u64;
                // Direct writes leave no dirty pages behind; buffered ones are pushed to the
                // disk along the way so that the fsync at the finish waits only for the tail.
                // (The fsync at the finish is needed either way: it makes the size and the
                // device's cache durable.)
                if !file.direct && offset - writeback_done >= WRITEBACK_EVERY {
                    start_writeback(&file.file, writeback_done, offset - writeback_done);
                    writeback_done = offset;
                }
                block.clear();
                let _ = free_tx.try_send(block);
            }
            Ok((file, offset, writeback_done))
        });
        BlockWriter {
            tx,
            free,
            allocated: 0,
            thread,
        }
    }

    /// An empty block: a returned one, a new one while few exist, else wait for one.
    async fn empty_block(&mut self) -> Option<AlignedBuf> {
        if let Ok(b) = self.free.try_recv() {
            return Some(b);
        }
        if self.allocated < BLOCKS_IN_FLIGHT + 1 {
            self.allocated += 1;
            return Some(AlignedBuf::with_capacity(BLOCK));
        }
        self.free.recv().await
    }
}

impl StagedUpload {
    pub(super) fn new(
        path: PathBuf,
        direct_requested: bool,
        transfers: Arc<tokio::sync::Semaphore>,
    ) -> StagedUpload {
        StagedUpload {
            path,
            file: None,
            direct_requested,
            hasher: DigestHasher::new(),
            pending: AlignedBuf::default(),
            written: 0,
            writeback_done: 0,
            broken: false,
            writer: None,
            transfers,
        }
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Appends a streamed body. Returns the new offset. On a body error the bytes received
    /// before it stay appended (the offset says how many); on a write error the upload is
    /// broken and every later call fails.
    pub async fn append<S, E>(&mut self, mut body: S) -> Result<u64, BlobStoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if self.broken {
            return Err(self.broken_error());
        }
        // Cancellation safety: if this future is dropped half-way (the client hung up, the
        // shutdown deadline passed), the hash, the in-flight blocks and the file no longer
        // agree. The upload stays marked broken unless this call returns normally.
        self.broken = true;
        let mut body_err = None;
        let mut writer_gone = false;
        'frames: while let Some(frame) = body.next().await {
            let mut chunk = match frame {
                Ok(c) => c,
                Err(e) => {
                    body_err = Some(io::Error::other(e));
                    break;
                }
            };
            self.hasher.update(&chunk);
            while chunk.has_remaining() {
                let room = BLOCK - self.pending.len();
                let n = room.min(chunk.len());
                if self.pending.capacity() < self.pending.len() + n {
                    self.pending
                        .reserve_total((self.pending.len() + n).next_power_of_two().min(BLOCK));
                }
                self.pending.extend_from_slice(&chunk[..n]);
                chunk.advance(n);
                if self.pending.len() == BLOCK {
                    if self.writer.is_none() {
                        let permit = self
                            .transfers
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("never closed");
                        self.writer = Some(BlockWriter::start(
                            self.path.clone(),
                            self.file.take(),
                            self.direct_requested,
                            self.written,
                            self.writeback_done,
                            permit,
                        ));
                    }
                    let w = self.writer.as_mut().expect("just started");
                    let Some(next) = w.empty_block().await else {
                        writer_gone = true;
                        break 'frames;
                    };
                    let full = std::mem::replace(&mut self.pending, next);
                    if w.tx.send(full).await.is_err() {
                        writer_gone = true;
                        break 'frames;
                    }
                }
            }
        }
        if let Some(w) = self.writer.take() {
            drop(w.tx);
            let joined = w
                .thread
                .await
                .map_err(|e| BlobStoreError::io("write", &self.path)(io::Error::other(e)));
            match joined.and_then(|r| r) {
                Ok((file, written, writeback_done)) => {
                    self.file = Some(file);
                    self.written = written;
                    self.writeback_done = writeback_done;
                }
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
        if writer_gone {
            return Err(self.broken_error());
        }
        self.broken = false;
        match body_err {
            Some(e) => Err(BlobStoreError::Body(e)),
            None => Ok(self.offset()),
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
        tokio::task::spawn_blocking(move || {
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
                // A blob smaller than one block never started a writer: it is written here
                // in one go, through the page cache.
                let mut file = match file {
                    Some(f) => f,
                    None => StagingFile::create(&path, false)?,
                };
                file.write_tail(&path, pending.as_slice(), written)?;
                file.file
                    .sync_data()
                    .map_err(BlobStoreError::io("fsync", &path))?;
                drop(file);
                commit_staged(&blobs, &path, &digest)
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
        drop(self.file.take());
        // A writer left by an append that was dropped half-way: let it finish (at most the
        // blocks in flight) so that the file is not created or written after the removal.
        if let Some(w) = self.writer.take() {
            drop(w.tx);
            let _ = w.thread.await;
        }
        // Whether or not this handle knows of a file: a failed or interrupted writer may
        // have created it.
        remove_quietly(&path).await;
    }

    fn broken_error(&self) -> BlobStoreError {
        BlobStoreError::Io {
            op: "continue",
            path: self.path.clone(),
            source: io::Error::other("an earlier write to this upload failed"),
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
        if let Err(e) = probe_direct(dir.path()) {
            eprintln!("skipped: {} has no direct I/O ({e})", dir.path().display());
            return;
        }
        let block: &'static [u8] = Box::leak(vec![9u8; BLOCK + 10].into_boxed_slice());
        for direct in [true, false] {
            let transfers = Arc::new(tokio::sync::Semaphore::new(4));
            let path = dir.path().join(format!("staging-{direct}"));
            let mut up = StagedUpload::new(path, direct, transfers);
            up.append(futures::stream::iter([Ok::<_, io::Error>(
                Bytes::from_static(block),
            )]))
            .await
            .unwrap();
            let file = up.file.as_ref().expect("a full block was written");
            assert_eq!(file.direct, direct);
            assert_eq!(open_flags(&file.file) & libc::O_DIRECT != 0, direct);
            assert_eq!(up.pending.len(), 10);
            up.abort().await;
        }
    }
}
