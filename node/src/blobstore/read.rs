//! Streaming a stored blob (or a range of it) to a client from a blocking reader thread.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::Stream;

use super::BlobStoreError;
use crate::types::Digest;

/// Size of one chunk handed to the HTTP layer.
const READ_CHUNK: usize = 512 * 1024;
/// Chunks read ahead of the client.
const CHUNKS_AHEAD: usize = 4;

/// A stream of a blob's bytes; its length is known up front.
#[derive(Debug)]
pub struct BlobBody {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    len: u64,
}

impl BlobBody {
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
        self.rx.poll_recv(cx)
    }
}

/// Opens the blob file and starts a reader thread for `range` (inclusive bounds).
pub(super) fn open(
    path: &Path,
    digest: Digest,
    range: Option<(u64, u64)>,
) -> Result<BlobBody, BlobStoreError> {
    let mut file = match File::open(path) {
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
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .map_err(BlobStoreError::io("seek", path))?;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    if len > 0 {
        tokio::task::spawn_blocking(move || pump(file, len, tx));
    }
    Ok(BlobBody { rx, len })
}

fn pump(mut file: File, mut left: u64, tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>) {
    while left > 0 {
        let want = left.min(READ_CHUNK as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        let res = file.read_exact(&mut buf).map(|()| buf.freeze());
        let failed = res.is_err();
        if tx.blocking_send(res).is_err() || failed {
            return; // client went away, or the read failed and was reported
        }
        left -= want as u64;
    }
}
