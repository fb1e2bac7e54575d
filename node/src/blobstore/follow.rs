//! Reading a blob while a copy of it is being written: readers that follow a staging file as
//! it grows.
//!
//! The writer of a copy (a fetch from a peer, `registry::fetch`) keeps a [`CopyProgress`]: the
//! attempt being written (each attempt has its own staging file,
//! [`StagedUpload::publish_to`](super::StagedUpload::publish_to)),
//! how many bytes of that file are on it — a block counts once its write returned, so bytes
//! an upload still holds in memory (the partial block after the last whole one, which a
//! direct-I/O upload writes only at the finish) never count — and, at the end, the outcome.
//! A [`BlobStore::follow`] body reads the staging file up to that mark, one window at a time,
//! and waits for the mark to move. The disk is the buffer: a reader never slows the writer, and
//! one that starts late gets at once what is already written.
//!
//! Guarantees of a following body:
//! - It yields exactly the recorded size. Its last byte comes only once the copy is verified
//!   and stored: until then the body stops one byte short of the mark, and after it reads the
//!   rest from the stored blob (the staging file has been renamed into place, or removed when
//!   an identical blob was already there; an open descriptor stays valid either way).
//! - A failed copy (every holder failed, the digest did not match) ends it with an error, so
//!   a client sees a broken transfer, never a complete response of wrong bytes.
//! - It never mixes two attempts: a body that yielded bytes of one attempt ends with an error
//!   when another starts; one that yielded none follows the new attempt from its start.
//! - Memory: one window (at most [`read::WINDOW`]) prepared when the body is polled, none read
//!   ahead. Threads: waiting for the mark is a watch, never a thread; each window is read by
//!   one short task on the blocking pool holding a permit of the store's disk-operation limit.
//! - Dropping a body changes nothing for the writer.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::{BlobBody, BlobStore, Shared, read};
use crate::types::Digest;

/// What the writer of a copy has published so far.
#[derive(Debug, Clone, Default)]
struct CopyState {
    /// The attempt being written, counted from 1; 0 before the first.
    attempt: u64,
    /// The staging file of that attempt.
    staging: Option<Arc<PathBuf>>,
    /// Bytes of that staging file written to it, from its start.
    readable: u64,
    /// The outcome: set once, at the end of the copy.
    end: Option<Result<(), Arc<String>>>,
}

/// The writer's side of one copy that readers may follow. Clones publish to the same readers.
#[derive(Debug, Clone, Default)]
pub struct CopyProgress {
    tx: Arc<watch::Sender<CopyState>>,
}

/// A reader's view of one copy's progress ([`CopyProgress::watch`]).
#[derive(Debug)]
pub struct CopyWatch {
    rx: watch::Receiver<CopyState>,
}

/// Where a copy stands for a reader that wants to start following it ([`CopyWatch::begun`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// An attempt is being written: a [`BlobStore::follow`] body can start.
    Writing,
    /// The copy is verified and stored: read the blob as usual.
    Stored,
    /// The copy failed, and why.
    Failed(Arc<String>),
}

impl CopyProgress {
    /// A copy with nothing written yet.
    pub fn new() -> CopyProgress {
        CopyProgress::default()
    }

    /// A view for one more reader.
    pub fn watch(&self) -> CopyWatch {
        CopyWatch {
            rx: self.tx.subscribe(),
        }
    }

    /// Ends the copy: `Ok` once the blob is verified and stored, else why it failed. Readers
    /// then finish from the stored blob, or end with the error. Later calls change nothing.
    pub fn end(&self, outcome: Result<(), Arc<String>>) {
        self.tx.send_if_modified(|s| {
            if s.end.is_some() {
                return false;
            }
            s.end = Some(outcome);
            true
        });
    }

    /// Starts the next attempt, written to the staging file at `path`; returns its number.
    pub(super) fn begin(&self, path: PathBuf) -> u64 {
        let mut attempt = 0;
        self.tx.send_modify(|s| {
            s.attempt += 1;
            s.staging = Some(Arc::new(path));
            s.readable = 0;
            attempt = s.attempt;
        });
        attempt
    }

    /// The staging file of `attempt` holds its first `upto` bytes (ignored once another
    /// attempt started or the copy ended).
    pub(super) fn written(&self, attempt: u64, upto: u64) {
        self.tx.send_if_modified(|s| {
            if s.attempt != attempt || s.end.is_some() || upto <= s.readable {
                return false;
            }
            s.readable = upto;
            true
        });
    }
}

impl CopyWatch {
    /// Waits until an attempt has begun or the copy ended. A copy whose writer went away
    /// without an outcome counts as failed.
    pub async fn begun(&mut self) -> Begun {
        let state = self.rx.wait_for(|s| s.attempt > 0 || s.end.is_some()).await;
        match state.as_deref().map(|s| &s.end) {
            Ok(None) => Begun::Writing,
            Ok(Some(Ok(()))) => Begun::Stored,
            Ok(Some(Err(why))) => Begun::Failed(why.clone()),
            Err(_) => Begun::Failed(Arc::new(ABANDONED.to_string())),
        }
    }
}

/// Why a reader ends when the writer went away without an outcome (its task was cancelled).
const ABANDONED: &str = "the copy was abandoned";

impl BlobStore {
    /// A body of the blob `digest` of `size` bytes that follows its copy as it is written
    /// (see the module docs): exactly `size` bytes, the last only once the copy is verified and
    /// stored; an error item if the copy fails, or if another attempt starts after this body
    /// yielded bytes of an earlier one.
    pub fn follow(&self, digest: &Digest, size: u64, watch: CopyWatch) -> BlobBody {
        let follower = Follower {
            watch: watch.rx,
            digest: digest.clone(),
            size,
            stored_path: self.blob_path(digest),
            shared: self.shared.clone(),
            pos: 0,
            attempt: 0,
            file: None,
            stored: None,
            ended: false,
        };
        let stream = futures::stream::unfold(follower, |mut f| async move {
            f.next().await.map(|item| (item, f))
        });
        BlobBody::from_stream(stream.boxed(), size)
    }
}

/// The state of one following body.
struct Follower {
    watch: watch::Receiver<CopyState>,
    digest: Digest,
    size: u64,
    /// Where the blob is once stored.
    stored_path: PathBuf,
    shared: Arc<Shared>,
    /// Bytes yielded so far.
    pos: u64,
    /// The attempt whose bytes this body yields (0: none yet).
    attempt: u64,
    /// That attempt's staging file, once opened.
    file: Option<File>,
    /// The rest of the blob from the stored file, once the copy ended well.
    stored: Option<BlobBody>,
    /// Set after the last item.
    ended: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.ended {
            return None;
        }
        if let Some(stored) = self.stored.as_mut() {
            return stored.next().await;
        }
        match self.step().await {
            Ok(Some(bytes)) => Some(Ok(bytes)),
            Ok(None) => {
                self.ended = true;
                None
            }
            Err(e) => {
                // Reported once; the response ends there.
                self.ended = true;
                Some(Err(e))
            }
        }
    }

    /// The next window: from the staging file once the mark passes it, or from the stored
    /// blob once the copy ended well; `None` at the end.
    async fn step(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            let state = self.watch.borrow_and_update().clone();
            if state.attempt != self.attempt {
                if self.pos > 0 {
                    return Err(io::Error::other(
                        "the copy being read failed part-way; it is fetched again from another \
                         holder",
                    ));
                }
                self.attempt = state.attempt;
                self.file = None;
            }
            match state.end {
                Some(Err(why)) => {
                    return Err(io::Error::other(format!("failed to copy the blob: {why}")));
                }
                Some(Ok(())) => return self.start_stored().await,
                None => {}
            }
            // The last byte waits for the digest to be verified.
            let limit = state.readable.min(self.size.saturating_sub(1));
            if let Some(staging) = state.staging.filter(|_| limit > self.pos) {
                match self.read_staging(staging, limit).await {
                    Ok(window) => {
                        self.pos += window.len() as u64;
                        return Ok(Some(window));
                    }
                    // Not opened yet and gone: the attempt ended (renamed into place, or
                    // removed); its outcome or the next attempt is about to be published.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && self.file.is_none() => {}
                    Err(e) => return Err(e),
                }
            }
            if self.watch.changed().await.is_err() {
                return Err(io::Error::other(ABANDONED));
            }
        }
    }

    /// Reads the next window below `limit` from the attempt's staging file at `path`.
    async fn read_staging(&mut self, path: Arc<PathBuf>, limit: u64) -> io::Result<Bytes> {
        let offset = self.pos;
        let len = (limit - offset).min(read::WINDOW);
        let file = self.file.take();
        let permit = self.shared.disk_permit().await;
        let (file, window) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let file = match file {
                Some(f) => f,
                None => File::open(path.as_path())?,
            };
            let window = read::read_window(&file, offset, len)?;
            Ok::<_, io::Error>((file, window))
        })
        .await
        .map_err(io::Error::other)??;
        self.file = Some(file);
        Ok(window)
    }

    /// Switches to the stored blob for the rest and returns its first window.
    async fn start_stored(&mut self) -> io::Result<Option<Bytes>> {
        self.file = None;
        if self.pos >= self.size {
            return Ok(None);
        }
        let range = (self.pos, self.size - 1);
        let mut rest = read::read_file(
            self.stored_path.clone(),
            self.digest.clone(),
            Some(range),
            range.1 + 1 - range.0,
            self.shared.clone(),
        )
        .await
        .map_err(io::Error::other)?;
        let first = rest.next().await.transpose();
        self.stored = Some(rest);
        first
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use futures::Stream;

    use super::*;

    const MIB: usize = 1024 * 1024;

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    fn body(data: &[u8]) -> impl Stream<Item = io::Result<Bytes>> + Unpin {
        futures::stream::iter([Ok(Bytes::copy_from_slice(data))])
    }

    /// Collects what `b` yields within `wait` of its last item; `done` says whether it ended.
    async fn drain(b: &mut BlobBody, wait: Duration) -> (Vec<u8>, Option<io::Error>, bool) {
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(wait, b.next()).await {
                Err(_) => return (got, None, false),
                Ok(None) => return (got, None, true),
                Ok(Some(Ok(w))) => got.extend_from_slice(&w),
                Ok(Some(Err(e))) => return (got, Some(e), b.next().await.is_none()),
            }
        }
    }

    /// A store that writes directly where it can (the mark must then not cover the tail the
    /// upload holds in memory).
    fn store(dir: &Path) -> BlobStore {
        let direct = !super::super::on_tmpfs(dir);
        BlobStore::open(dir).unwrap().with_direct_writes(direct)
    }

    #[tokio::test]
    async fn a_follower_reads_up_to_the_mark_and_the_last_byte_after_verification() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        // Whole blocks only: every byte is in the file before the verification.
        let data = blob(3 * MIB);
        let d = Digest::sha256_of(&data);
        let progress = CopyProgress::new();
        let mut watch = progress.watch();
        let mut up = store.begin_upload("follow-1");
        up.publish_to(&progress);
        assert_eq!(watch.begun().await, Begun::Writing);
        let mut reader = store.follow(&d, data.len() as u64, watch);
        let short = Duration::from_millis(300);
        let (got, err, done) = drain(&mut reader, short).await;
        assert!(
            got.is_empty() && err.is_none() && !done,
            "read before a write"
        );

        up.append(body(&data[..2 * MIB + 10])).await.unwrap();
        let (got, err, done) = drain(&mut reader, short).await;
        assert!(err.is_none() && !done);
        // The 10 bytes past the last whole block are still in memory, not in the file.
        assert_eq!(got, data[..2 * MIB], "not exactly what the file holds");

        // A reader that starts now gets what is written at once.
        let mut late = store.follow(&d, data.len() as u64, progress.watch());
        let (early, err, done) = drain(&mut late, short).await;
        assert!(err.is_none() && !done);
        assert_eq!(
            early.len(),
            2 * MIB,
            "a late reader waited for bytes already written"
        );
        up.append(body(&data[2 * MIB + 10..])).await.unwrap();
        let (rest, err, done) = drain(&mut reader, short).await;
        assert!(err.is_none() && !done);
        assert_eq!(
            rest,
            data[2 * MIB..data.len() - 1],
            "the last byte came unverified"
        );

        up.finish(&store, &d).await.unwrap();
        progress.end(Ok(()));
        let (last, err, done) = drain(&mut reader, short).await;
        assert!(err.is_none() && done, "{err:?}");
        assert_eq!(last, data[data.len() - 1..]);
        // The late reader gets the rest from the stored blob.
        let (rest, err, done) = drain(&mut late, short).await;
        assert!(err.is_none() && done, "{err:?}");
        assert!(
            [early, rest].concat() == data,
            "the late reader's bytes differ"
        );
        assert!(super::super::no_staging_files(dir.path()));
    }

    #[tokio::test]
    async fn a_failed_or_mismatched_copy_ends_every_follower_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let data = blob(2 * MIB + 5);
        let wrong = Digest::sha256_of(b"other bytes");
        let progress = CopyProgress::new();
        let mut up = store.begin_upload("follow-2");
        up.publish_to(&progress);
        let mut early = store.follow(&wrong, data.len() as u64, progress.watch());
        up.append(body(&data)).await.unwrap();
        let (got, err, done) = drain(&mut early, Duration::from_millis(300)).await;
        assert!(err.is_none() && !done);
        assert_eq!(got.len(), 2 * MIB);
        let mut idle = store.follow(&wrong, data.len() as u64, progress.watch());
        let e = up.finish(&store, &wrong).await.unwrap_err();
        progress.end(Err(Arc::new(e.to_string())));
        for reader in [&mut early, &mut idle] {
            let (_, err, done) = drain(reader, Duration::from_secs(5)).await;
            assert!(err.is_some(), "a failed copy ended a body without an error");
            assert!(done, "a body went on after its error");
        }
        assert!(super::super::no_staging_files(dir.path()));
    }

    #[tokio::test]
    async fn a_follower_never_mixes_two_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let data = blob(2 * MIB + 77);
        let d = Digest::sha256_of(&data);
        let progress = CopyProgress::new();
        let mut first = store.begin_upload("attempt-1");
        first.publish_to(&progress);
        let mut reading = store.follow(&d, data.len() as u64, progress.watch());
        let mut waiting = store.follow(&d, data.len() as u64, progress.watch());
        // The first holder sends a block of other bytes, then fails.
        first.append(body(&[9u8; MIB])).await.unwrap();
        let (got, err, _) = drain(&mut reading, Duration::from_millis(300)).await;
        assert!(err.is_none());
        assert_eq!(got.len(), MIB);
        first.abort().await;
        let mut second = store.begin_upload("attempt-2");
        second.publish_to(&progress);
        let staging = progress.tx.borrow().staging.clone();
        assert_eq!(
            staging.as_deref(),
            Some(&dir.path().join("uploads").join("attempt-2")),
            "readers follow the new attempt's file"
        );
        second.append(body(&data)).await.unwrap();
        second.finish(&store, &d).await.unwrap();
        progress.end(Ok(()));
        let (_, err, done) = drain(&mut reading, Duration::from_secs(5)).await;
        assert!(
            err.is_some() && done,
            "a body that had bytes of a failed attempt went on with the next"
        );
        let (all, err, done) = drain(&mut waiting, Duration::from_secs(5)).await;
        assert!(err.is_none() && done, "{err:?}");
        assert!(all == data, "a body that waited did not get the blob");
    }

    /// Reads the rest of `b` once its copy ended well: it must end, without an error, and
    /// `head` followed by the rest must be `want`, byte for byte.
    async fn must_end_with(who: &str, b: &mut BlobBody, head: Vec<u8>, want: &[u8]) {
        let (rest, err, done) = drain(b, Duration::from_secs(5)).await;
        assert!(err.is_none(), "{who}: {err:?}");
        assert!(done, "{who}: the body did not end once the copy was stored");
        let got = [head, rest].concat();
        assert_eq!(got.len(), want.len(), "{who}: length");
        let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "{who}: the bytes differ from there on");
    }

    /// Asserts that `b` yields nothing and does not end (within 300 ms): it waits for the copy.
    async fn must_wait(who: &str, b: &mut BlobBody) {
        let (got, err, done) = drain(b, Duration::from_millis(300)).await;
        assert!(
            got.is_empty() && err.is_none() && !done,
            "{who}: {} bytes, {err:?}, ended: {done}",
            got.len()
        );
    }

    /// Starts a copy whose readers follow the staging file of upload `id`.
    fn begin_copy(store: &BlobStore, id: &str) -> (CopyProgress, super::super::StagedUpload) {
        let progress = CopyProgress::new();
        let mut up = store.begin_upload(id);
        up.publish_to(&progress);
        (progress, up)
    }

    // Guards: a zero-byte blob is the edge of every `size - 1` in the follower (the last
    // byte's hold-back, the range of the stored rest): an underflow would panic or ask the
    // store for a range past the end (an error), and a reader that waits for a byte that never
    // comes would hang. The body must end, empty and without an error, once the copy is stored
    // — not before (a copy can still fail: the holder may send bytes a 0-byte blob lacks).
    #[tokio::test]
    async fn a_follower_of_a_zero_byte_blob_ends_empty_once_it_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let d = Digest::sha256_of(b"");
        let (progress, mut up) = begin_copy(&store, "follow-empty");
        let mut reader = store.follow(&d, 0, progress.watch());
        assert_eq!(up.append(body(b"")).await.unwrap(), 0);
        must_wait("the reader, before the copy was stored", &mut reader).await;
        up.finish(&store, &d).await.unwrap();
        progress.end(Ok(()));
        must_end_with("the reader", &mut reader, Vec::new(), b"").await;
        // One that starts after the end too.
        let mut late = store.follow(&d, 0, progress.watch());
        must_end_with("a late reader", &mut late, Vec::new(), b"").await;
        assert!(super::super::no_staging_files(dir.path()));
    }

    // Guards: a blob smaller than one block (1 MiB) stays in the upload's memory until the
    // finish writes it (the staging file does not even exist before): a mark that counted
    // those bytes would have readers read a missing or short file (an error, or zeros), and a
    // reader given them before the verification could get unverified bytes. Nothing is
    // readable until the copy is stored; then every reader gets the whole blob from the store.
    #[tokio::test]
    async fn a_follower_of_a_blob_smaller_than_a_block_gets_it_whole_once_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let data = blob(MIB / 2 + 3);
        let d = Digest::sha256_of(&data);
        let size = data.len() as u64;
        let (progress, mut up) = begin_copy(&store, "follow-small");
        let mut early = store.follow(&d, size, progress.watch());
        // In two pieces, as a holder's stream would send it.
        up.append(body(&data[..1000])).await.unwrap();
        up.append(body(&data[1000..])).await.unwrap();
        let mut joiner = store.follow(&d, size, progress.watch());
        must_wait("the early reader, before the copy was stored", &mut early).await;
        must_wait("the joiner, before the copy was stored", &mut joiner).await;
        up.finish(&store, &d).await.unwrap();
        progress.end(Ok(()));
        must_end_with("the early reader", &mut early, Vec::new(), &data).await;
        must_end_with("the joiner", &mut joiner, Vec::new(), &data).await;
        assert!(super::super::no_staging_files(dir.path()));
    }

    // Guards: a blob of exactly whole blocks is all in the staging file before the
    // verification (the mark reaches its size): the follower itself must hold the last byte
    // back (stop at size - 1) and take it from the stored blob afterwards — neither yield it
    // unverified, nor lose it or yield it twice at the switch. A reader that starts after the
    // staging file was renamed into place, but before the outcome is published, finds no file
    // to open: it must wait for the outcome (not fail), then read the whole blob from the store.
    #[tokio::test]
    async fn a_follower_of_whole_blocks_gets_the_last_byte_from_the_stored_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let data = blob(2 * MIB);
        let d = Digest::sha256_of(&data);
        let size = data.len() as u64;
        let (progress, mut up) = begin_copy(&store, "follow-blocks");
        let mut early = store.follow(&d, size, progress.watch());
        up.append(body(&data)).await.unwrap();
        assert_eq!(
            progress.tx.borrow().readable,
            size,
            "the mark should cover the whole file (else this test shows nothing)"
        );
        let mut joiner = store.follow(&d, size, progress.watch());
        let mut heads = Vec::new();
        for (who, reader) in [
            ("the early reader", &mut early),
            ("the joiner", &mut joiner),
        ] {
            let (got, err, done) = drain(reader, Duration::from_millis(300)).await;
            assert!(err.is_none() && !done, "{who}: {err:?}, ended: {done}");
            assert!(
                got == data[..data.len() - 1],
                "{who}: got {} bytes before the verification, not the first {} exactly",
                got.len(),
                size - 1
            );
            heads.push(got);
        }
        up.finish(&store, &d).await.unwrap();
        // Stored, the outcome not yet published.
        let mut after_rename = store.follow(&d, size, progress.watch());
        must_wait(
            "a reader that found the staging file gone",
            &mut after_rename,
        )
        .await;
        progress.end(Ok(()));
        let joiner_head = heads.pop().unwrap();
        let early_head = heads.pop().unwrap();
        must_end_with("the early reader", &mut early, early_head, &data).await;
        must_end_with("the joiner", &mut joiner, joiner_head, &data).await;
        must_end_with(
            "the reader after the rename",
            &mut after_rename,
            Vec::new(),
            &data,
        )
        .await;
        assert!(super::super::no_staging_files(dir.path()));
    }

    #[tokio::test]
    async fn begun_tells_writing_stored_failed_and_abandoned() {
        let progress = CopyProgress::new();
        let mut before = progress.watch();
        let pending = tokio::time::timeout(Duration::from_millis(100), before.begun()).await;
        assert!(pending.is_err(), "begun before anything happened");
        progress.end(Ok(()));
        assert_eq!(progress.watch().begun().await, Begun::Stored);
        let failed = CopyProgress::new();
        failed.end(Err(Arc::new("no holder".into())));
        failed.end(Ok(()));
        assert_eq!(
            failed.watch().begun().await,
            Begun::Failed(Arc::new("no holder".into()))
        );
        let gone = CopyProgress::new();
        let mut w = gone.watch();
        drop(gone);
        assert!(matches!(w.begun().await, Begun::Failed(_)));
    }
}
