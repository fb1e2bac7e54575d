//! Re-hashing a stored blob, for the scrubber: is the file still there, and do its bytes
//! still hash to its name?
//!
//! Reads 1 MiB at a time on the blocking pool (each read holds a disk permit, like any blob
//! disk operation) and paces itself to a byte rate between reads, so a scrub never crowds out
//! client transfers.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use super::{BlobStore, BlobStoreError};
use crate::types::{Digest, DigestHasher};

/// Bytes read per blocking task.
const CHUNK: usize = 1024 * 1024;

/// What re-hashing a blob found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The file is there and hashes to its name.
    Intact,
    /// The file is there but hashes to this other digest.
    Corrupt(Digest),
    /// No file.
    Missing,
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl BlobStore {
    /// Re-hashes the stored blob `digest`, reading at most `bytes_per_sec` bytes a second
    /// (0: as fast as the disk goes).
    ///
    /// Errors: [`BlobStoreError::Io`] when the file cannot be opened or read.
    pub async fn verify(
        &self,
        digest: &Digest,
        bytes_per_sec: u64,
    ) -> Result<Verified, BlobStoreError> {
        let path = self.blob_path(digest);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verified::Missing),
            Err(e) => return Err(BlobStoreError::io("open", &path)(e)),
        };
        let mut state = Some((file, DigestHasher::new(), vec![0u8; CHUNK]));
        let started = Instant::now();
        let mut done = 0u64;
        loop {
            let permit = self.shared.disk_permit().await;
            let (mut file, mut hasher, mut buf) = state.take().expect("state between reads");
            let (read, back) = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let n = read_full(&mut file, &mut buf);
                if let Ok(n) = n {
                    hasher.update(&buf[..n]);
                }
                (n, (file, hasher, buf))
            })
            .await
            .map_err(|e| BlobStoreError::io("read", &path)(io::Error::other(e)))?;
            let n = read.map_err(BlobStoreError::io("read", &path))?;
            state = Some(back);
            if n == 0 {
                break;
            }
            done += n as u64;
            if bytes_per_sec > 0 {
                let due = Duration::from_secs_f64(done as f64 / bytes_per_sec as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        let (_, hasher, _) = state.expect("state after the last read");
        let actual = hasher.finish();
        Ok(if &actual == digest {
            Verified::Intact
        } else {
            Verified::Corrupt(actual)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stored(store: &BlobStore, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let mut staged = store.begin_upload("verify-test");
        staged
            .append(futures::stream::iter([Ok::<_, io::Error>(
                bytes::Bytes::copy_from_slice(bytes),
            )]))
            .await
            .unwrap();
        staged.finish(store, &digest).await.unwrap();
        digest
    }

    #[tokio::test]
    async fn intact_corrupt_and_missing_copies_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let digest = stored(&store, &bytes).await;
        assert_eq!(store.verify(&digest, 0).await.unwrap(), Verified::Intact);

        let mut flipped = bytes.clone();
        flipped[CHUNK + 5] ^= 1;
        std::fs::write(store.blob_path(&digest), &flipped).unwrap();
        assert_eq!(
            store.verify(&digest, 0).await.unwrap(),
            Verified::Corrupt(Digest::sha256_of(&flipped))
        );

        store.delete(&digest).await.unwrap();
        assert_eq!(store.verify(&digest, 0).await.unwrap(), Verified::Missing);
    }

    #[tokio::test]
    async fn the_byte_rate_paces_the_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = stored(&store, &vec![7u8; 2 * CHUNK]).await;
        let started = Instant::now();
        // 2 MiB at 8 MiB/s: at least 250 ms.
        let v = store.verify(&digest, 8 * CHUNK as u64).await.unwrap();
        assert_eq!(v, Verified::Intact);
        assert!(started.elapsed() >= Duration::from_millis(240));
    }
}
