//! One upload's staging file: appended to by streamed request bodies, hashed as it is
//! received, verified, fsynced and renamed into place by [`StagedUpload::finish`].
//!
//! Bytes are hashed on the receiving task as each body frame arrives and gathered into 1 MiB
//! blocks; full blocks go to a writer thread (started on the first full block) while the next
//! block fills, so hashing, receiving and disk writes overlap. The last partial block stays in
//! memory until the next chunk or the finish. A small blob therefore never starts a thread:
//! it is written, fsynced and renamed in one trip to the blocking pool at the finish. The
//! staging file itself is only created when the first bytes are written.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};

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
    file: Option<Arc<File>>,
    hasher: DigestHasher,
    /// Received bytes not yet written (less than a block).
    pending: Vec<u8>,
    /// Bytes written to the file.
    written: u64,
    /// File offset up to which write-back has been started.
    writeback_done: u64,
    /// Set once a write failed: the file no longer matches the hash state.
    broken: bool,
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

fn create(path: &Path) -> Result<File, BlobStoreError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(BlobStoreError::io("create", path))
}

/// What the writer thread hands back: the file, bytes written, write-back position.
type WriterOutcome = Result<(Arc<File>, u64, u64), BlobStoreError>;

/// The writer thread of one `append`: writes full blocks at increasing offsets.
struct BlockWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Emptied blocks come back here for reuse.
    free: tokio::sync::mpsc::Receiver<Vec<u8>>,
    allocated: usize,
    thread: tokio::task::JoinHandle<WriterOutcome>,
}

impl BlockWriter {
    fn start(
        path: PathBuf,
        file: Option<Arc<File>>,
        mut offset: u64,
        mut writeback_done: u64,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> BlockWriter {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(BLOCKS_IN_FLIGHT);
        let (free_tx, free) = tokio::sync::mpsc::channel::<Vec<u8>>(BLOCKS_IN_FLIGHT + 1);
        let thread = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let file = match file {
                Some(f) => f,
                None => Arc::new(create(&path)?),
            };
            while let Some(mut block) = rx.blocking_recv() {
                file.write_all_at(&block, offset)
                    .map_err(BlobStoreError::io("write", &path))?;
                offset += block.len() as u64;
                if offset - writeback_done >= WRITEBACK_EVERY {
                    start_writeback(&file, writeback_done, offset - writeback_done);
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
    async fn empty_block(&mut self) -> Option<Vec<u8>> {
        if let Ok(b) = self.free.try_recv() {
            return Some(b);
        }
        if self.allocated < BLOCKS_IN_FLIGHT + 1 {
            self.allocated += 1;
            return Some(Vec::with_capacity(BLOCK));
        }
        self.free.recv().await
    }
}

impl StagedUpload {
    pub(super) fn new(path: PathBuf, transfers: Arc<tokio::sync::Semaphore>) -> StagedUpload {
        StagedUpload {
            path,
            file: None,
            hasher: DigestHasher::new(),
            pending: Vec::new(),
            written: 0,
            writeback_done: 0,
            broken: false,
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
        let mut writer: Option<BlockWriter> = None;
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
                    self.pending.reserve(
                        (self.pending.len() + n).next_power_of_two().min(BLOCK)
                            - self.pending.len(),
                    );
                }
                self.pending.extend_from_slice(&chunk[..n]);
                chunk.advance(n);
                if self.pending.len() == BLOCK {
                    if writer.is_none() {
                        let permit = self
                            .transfers
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("never closed");
                        writer = Some(BlockWriter::start(
                            self.path.clone(),
                            self.file.clone(),
                            self.written,
                            self.writeback_done,
                            permit,
                        ));
                    }
                    let w = writer.as_mut().expect("just started");
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
        if let Some(w) = writer {
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
                let file = match file {
                    Some(f) => f,
                    None => Arc::new(create(&path)?),
                };
                if !pending.is_empty() {
                    file.write_all_at(&pending, written)
                        .map_err(BlobStoreError::io("write", &path))?;
                }
                file.sync_data()
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
