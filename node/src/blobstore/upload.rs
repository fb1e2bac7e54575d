//! One upload's staging file: appended to by streamed request bodies, hashed as it is written,
//! verified, fsynced and renamed into place by [`StagedUpload::finish`].

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::{BlobInfo, BlobStore, BlobStoreError, WRITEBACK_EVERY, commit_staged};
use crate::types::{Digest, DigestHasher};

/// Bytes gathered before one `write` to the staging file.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Body frames that may wait between the receiving task and the writing thread.
const FRAMES_IN_FLIGHT: usize = 32;

/// The staging file of one upload in progress. Owned by exactly one session; not `Clone`.
#[derive(Debug)]
pub struct StagedUpload {
    path: PathBuf,
    /// `None` once a write failed half-way: the file no longer matches the hash state.
    writer: Option<Writer>,
    offset: u64,
}

#[derive(Debug)]
struct Writer {
    file: File,
    hasher: DigestHasher,
    buf: Vec<u8>,
    /// File offset up to which write-back has been started.
    writeback_done: u64,
    written: u64,
}

impl Writer {
    fn push(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.hasher.update(chunk);
        if self.buf.len() + chunk.len() > WRITE_BUFFER {
            self.flush()?;
        }
        if chunk.len() >= WRITE_BUFFER {
            self.write_out(chunk)
        } else {
            self.buf.extend_from_slice(chunk);
            Ok(())
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let res = self.write_out(&buf);
        self.buf = buf;
        self.buf.clear();
        res
    }

    fn write_out(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.written += data.len() as u64;
        if self.written - self.writeback_done >= WRITEBACK_EVERY {
            start_writeback(
                &self.file,
                self.writeback_done,
                self.written - self.writeback_done,
            );
            self.writeback_done = self.written;
        }
        Ok(())
    }
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

impl StagedUpload {
    pub(super) fn new(path: PathBuf, file: File) -> StagedUpload {
        StagedUpload {
            path,
            writer: Some(Writer {
                file,
                hasher: DigestHasher::new(),
                buf: Vec::with_capacity(WRITE_BUFFER),
                writeback_done: 0,
                written: 0,
            }),
            offset: 0,
        }
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Appends a streamed body. Returns the new offset. On a body error the bytes received
    /// before it stay appended (the offset says how many); on a write error the upload is broken
    /// and every later call fails.
    pub async fn append<S, E>(&mut self, mut body: S) -> Result<u64, BlobStoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut writer = self.writer.take().ok_or_else(|| self.broken())?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(FRAMES_IN_FLIGHT);
        let thread = tokio::task::spawn_blocking(move || {
            let mut received = 0u64;
            let mut res = Ok(());
            while let Some(chunk) = rx.blocking_recv() {
                if let Err(e) = writer.push(&chunk) {
                    res = Err(e);
                    break;
                }
                received += chunk.len() as u64;
            }
            let res = res.and_then(|()| writer.flush());
            (writer, received, res)
        });
        let mut body_err = None;
        while let Some(frame) = body.next().await {
            match frame {
                Ok(chunk) if chunk.is_empty() => {}
                Ok(chunk) => {
                    if tx.send(chunk).await.is_err() {
                        break; // the writer stopped on an error; it reports it below
                    }
                }
                Err(e) => {
                    body_err = Some(io::Error::other(e));
                    break;
                }
            }
        }
        drop(tx);
        let (writer, received, res) = thread
            .await
            .map_err(|e| BlobStoreError::io("write", &self.path)(io::Error::other(e)))?;
        res.map_err(BlobStoreError::io("write", &self.path))?;
        self.offset += received;
        self.writer = Some(writer);
        match body_err {
            Some(e) => Err(BlobStoreError::Body(e)),
            None => Ok(self.offset),
        }
    }

    /// Verifies that what was received hashes to `expected`, makes it durable and moves it into
    /// the store. On a mismatch the staging file is removed and nothing is stored.
    pub async fn finish(
        mut self,
        store: &BlobStore,
        expected: &Digest,
    ) -> Result<BlobInfo, BlobStoreError> {
        let writer = self.writer.take().ok_or_else(|| self.broken())?;
        let path = std::mem::take(&mut self.path);
        let blobs = store.blobs.clone();
        let expected = expected.clone();
        let size = self.offset;
        tokio::task::spawn_blocking(move || {
            let actual = writer.hasher.finish();
            if actual != expected {
                drop(writer.file);
                let _ = std::fs::remove_file(&path);
                return Err(BlobStoreError::DigestMismatch { expected, actual });
            }
            writer
                .file
                .sync_data()
                .map_err(BlobStoreError::io("fsync", &path))?;
            drop(writer.file);
            commit_staged(&blobs, &path, &expected)?;
            Ok(BlobInfo { size })
        })
        .await
        .map_err(|e| BlobStoreError::io("finish", Path::new("upload"))(io::Error::other(e)))?
    }

    /// Gives the upload up and removes its staging file.
    pub async fn abort(mut self) {
        let path = std::mem::take(&mut self.path);
        drop(self.writer.take());
        if let Err(e) = tokio::fs::remove_file(&path).await {
            tracing::warn!(error = %e, path = %path.display(), "failed to remove staging file");
        }
    }

    fn broken(&self) -> BlobStoreError {
        BlobStoreError::Io {
            op: "continue",
            path: self.path.clone(),
            source: io::Error::other("an earlier write to this upload failed"),
        }
    }
}
