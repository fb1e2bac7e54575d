//! Streaming a stored blob (or a range of it) to a client.
//!
//! The blob file is mapped into memory a window at a time and each window is handed to the
//! HTTP layer as `Bytes` without copying: the socket send is the only copy of the data. A
//! window is unmapped when the HTTP layer drops it, so what is mapped at once is bounded by
//! the windows in flight, never by the blob's size.
//!
//! Threads: a window is prepared by one short task on the blocking pool (mapping with
//! `MAP_POPULATE` faults the pages in up front, reading from disk if needed), started when
//! the window before it is handed to the client. No thread waits for the client: a reader that
//! stops reading holds one prepared window in memory and nothing else, so any number of slow
//! clients cannot take threads from other reads, from uploads or from Raft (it holds up to two
//! windows in memory: one in the connection, one prepared). Every window takes a permit of the
//! store's disk-operation limit while it is prepared, except the first window of a read of at
//! most [`SMALL_READ`] bytes, so a small read never queues behind large ones.
//!
//! Safety of the mapping: blob files are immutable once renamed into place (content-addressed;
//! nothing ever writes to or truncates them), and removing a file does not invalidate a mapping.
//!
//! Disk errors: touching a mapped page that cannot be read raises SIGBUS, which would stop the
//! process. So a window is served from its mapping only when every page of it is in memory after
//! `MAP_POPULATE` (checked with `mincore`); otherwise — a read error left a page out, or memory
//! pressure evicted it already — the window is read with `pread` (one more copy), whose error
//! fails that one response. What remains is a page evicted between the check and the send and
//! failing its re-read then.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use tokio::task::JoinHandle;

use super::{BlobStoreError, Shared};
use crate::types::Digest;

/// Size of one mapped window handed to the HTTP layer. Mapped pages count towards the
/// process's RSS while a window is alive: 1 MiB keeps four parallel pulls around 8 MiB of
/// mappings (2 MiB windows measured ~16 MiB more peak RSS, and no faster pulls).
pub(super) const WINDOW: u64 = 1024 * 1024;

/// Reads up to this size are prepared without a disk permit (see the module docs).
const SMALL_READ: u64 = 64 * 1024;

/// A stream of a blob's bytes; its length is known up front.
pub struct BlobBody {
    source: Source,
    len: u64,
}

/// Windows of a stored blob, or of a copy being written (`follow.rs`); an `Err` item aborts
/// the response.
type Source = BoxStream<'static, io::Result<Bytes>>;

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl BlobBody {
    /// A body of `len` bytes yielded by `source`.
    pub(super) fn from_stream(source: Source, len: u64) -> BlobBody {
        BlobBody { source, len }
    }

    /// How many bytes the stream yields.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the stream yields no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Stream for BlobBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.source.as_mut().poll_next(cx)
    }
}

/// Opens the blob file at `path` for reading `range` (`None`: all of it), `len` bytes in all.
/// A small first window is read without a permit, so small reads never queue behind large
/// ones; a large one is disk work like any later window.
pub(super) async fn read_file(
    path: PathBuf,
    digest: Digest,
    range: Option<(u64, u64)>,
    len: u64,
    shared: Arc<Shared>,
) -> Result<BlobBody, BlobStoreError> {
    let permit = if len > SMALL_READ {
        Some(shared.disk_permit().await)
    } else {
        None
    };
    let opened = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        open(&path, digest, range)
    })
    .await
    .map_err(|e| BlobStoreError::io("read", Path::new("blob"))(io::Error::other(e)))??;
    Ok(body(opened, shared))
}

/// An opened blob file and its first window, prepared on a blocking thread.
struct Opened {
    file: Arc<File>,
    first: Option<Bytes>,
    /// Where the window after the first starts, and how many bytes follow it.
    next: u64,
    left: u64,
    len: u64,
}

/// Opens the blob file and prepares the first window of `range` (inclusive bounds). Runs on a
/// blocking thread.
fn open(path: &Path, digest: Digest, range: Option<(u64, u64)>) -> Result<Opened, BlobStoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BlobStoreError::NotFound(digest));
        }
        Err(e) => return Err(BlobStoreError::io("open", path)(e)),
    };
    let size = file
        .metadata()
        .map_err(BlobStoreError::io("stat", path))?
        .len();
    let (start, len) = match range {
        Some((start, end)) => (start, end + 1 - start),
        None => (0, size),
    };
    let want = len.min(WINDOW);
    let first = if want > 0 {
        Some(map_window(&file, start, want).map_err(BlobStoreError::io("read", path))?)
    } else {
        None
    };
    Ok(Opened {
        file: Arc::new(file),
        first,
        next: start + want,
        left: len - want,
        len,
    })
}

/// The body of an opened blob: the first window, then each next window prepared by a short
/// blocking task started when the one before it is handed out.
fn body(opened: Opened, shared: Arc<Shared>) -> BlobBody {
    struct Windows {
        file: Arc<File>,
        first: Option<Bytes>,
        ahead: Option<JoinHandle<io::Result<Bytes>>>,
        next: u64,
        left: u64,
        shared: Arc<Shared>,
    }
    impl Windows {
        /// Starts preparing the next window, if any.
        async fn read_ahead(&mut self) {
            if self.left == 0 {
                return;
            }
            let want = self.left.min(WINDOW);
            let offset = self.next;
            self.next += want;
            self.left -= want;
            let permit = self.shared.disk_permit().await;
            let file = self.file.clone();
            self.ahead = Some(tokio::task::spawn_blocking(move || {
                let _permit = permit;
                map_window(&file, offset, want)
            }));
        }
    }
    let len = opened.len;
    let windows = Windows {
        file: opened.file,
        first: opened.first,
        ahead: None,
        next: opened.next,
        left: opened.left,
        shared,
    };
    let stream = futures::stream::unfold(windows, |mut w| async move {
        let window = match (w.first.take(), w.ahead.take()) {
            (Some(first), _) => Ok(first),
            (None, Some(ahead)) => ahead.await.unwrap_or_else(|e| Err(io::Error::other(e))),
            (None, None) => return None,
        };
        if window.is_err() {
            // Reported once; the response ends there.
            w.left = 0;
        } else {
            w.read_ahead().await;
        }
        Some((window, w))
    });
    BlobBody::from_stream(Box::pin(stream), len)
}

/// Maps `len` bytes of `file` from `offset` (any offset: the map starts at the page below).
fn map_window(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let page = page_size();
    let aligned = offset - offset % page;
    let skip = (offset - aligned) as usize;
    // SAFETY: blob files are never modified or truncated once in place (module docs).
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(aligned)
            .len(skip + len as usize)
            .populate()
            .map(file)?
    };
    let _ = map.advise(memmap2::Advice::Sequential);
    if !resident(&map) {
        return read_window(file, offset, len);
    }
    Ok(Bytes::from_owner(map).slice(skip..))
}

/// Whether every page of a mapping is in memory.
fn resident(map: &memmap2::Mmap) -> bool {
    let page = page_size() as usize;
    let lead = map.as_ptr() as usize % page;
    let len = lead + map.len();
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: the range starts at the page boundary below the mapping's start and covers the
    // mapping, which is alive; `vec` has one byte per page of the range, as mincore requires.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr().sub(lead) as *mut libc::c_void,
            len,
            vec.as_mut_ptr(),
        )
    };
    rc == 0 && vec.iter().all(|b| b & 1 == 1)
}

/// Reads `len` bytes of `file` at `offset` into memory: the path for a window whose pages could
/// not all be mapped in.
pub(super) fn read_window(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_and_read_windows_agree_and_populated_windows_are_resident() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        for (offset, len) in [
            (0u64, data.len() as u64),
            (5, 4096),
            (4095, 2),
            (8192, 4196),
        ] {
            let want = &data[offset as usize..(offset + len) as usize];
            let mapped = map_window(&file, offset, len).unwrap();
            assert_eq!(&mapped[..], want, "mapped {offset}+{len}");
            assert_eq!(
                &read_window(&file, offset, len).unwrap()[..],
                want,
                "read {offset}+{len}"
            );
        }
        // SAFETY: the test's file is not modified while mapped.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file).unwrap() };
        assert!(
            resident(&map),
            "a populated mapping of a cached file is resident"
        );
        let err = read_window(&file, data.len() as u64 - 10, 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn pages_out_of_memory_are_not_resident() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: advice on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        if super::super::on_tmpfs(dir.path()) {
            // tmpfs keeps its pages whatever the advice: nothing to observe there.
            eprintln!("skipped: {} is tmpfs", dir.path().display());
            return;
        }
        // SAFETY: the test's file is not modified while mapped; no populate, so nothing is read.
        let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
        assert!(!resident(&map), "dropped pages reported as resident");
        let mapped = map_window(&file, 0, 64 * 1024).unwrap();
        assert!(mapped.iter().all(|&b| b == 7));
    }
}
