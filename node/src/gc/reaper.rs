//! The reaper: removes this node's copies of the blobs the cluster collected.
//!
//! It learns of them from the state machine (`MetaReader::collected`), right after each
//! `CollectBlobs` is applied here — also when this node applies it late, after being down or
//! cut off. Where that list may be incomplete (a snapshot replaced the state, the queue
//! overflowed) and once at start-up, it sweeps: it walks the blob directory and removes every
//! file the state has no record of, unless the file is younger than [`SWEEP_MIN_AGE`] (the
//! record of a blob stored just before a crash may still be on its way through Raft).
//!
//! Every removal holds the digest's lock and re-reads the record under it (see
//! `BlobStore::lock_digest`): a blob stored or copied again after its collection keeps its
//! file. It also holds `MetaReader::whole_state` across the check and the unlink, so that no
//! snapshot install (which empties the state before writing it back) runs meanwhile; and a
//! sweep runs only on a node whose state has reference counts and has caught up with the
//! leader (a wiped, new or restarted store may not yet hold records of its own files).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Pace;
use crate::meta::Notice;
use crate::registry::Registry;
use crate::types::Digest;

/// A file in the blob directory with no record is removed by a sweep only when it is at
/// least this old: a crash between placing a blob and recording it, and a record write whose
/// outcome was unknown, settle long before.
pub const SWEEP_MIN_AGE: Duration = Duration::from_secs(600);

/// Removes this node's copies of collected blobs: see the module documentation.
pub struct Reaper {
    registry: Arc<Registry>,
    pace: Pace,
    /// Blob files removed and their bytes, since start.
    removed: AtomicU64,
    removed_bytes: AtomicU64,
    /// How often a sweep runs besides the triggered ones.
    sweep_every: Duration,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper")
            .field("removed", &self.removed)
            .finish_non_exhaustive()
    }
}

impl Reaper {
    /// A reaper of this node's blob store, removing at most `per_sec` files a second; it also
    /// sweeps every `sweep_every`.
    pub fn new(registry: Arc<Registry>, per_sec: u64, sweep_every: Duration) -> Arc<Reaper> {
        Arc::new(Reaper {
            registry,
            pace: Pace::new(per_sec),
            removed: AtomicU64::new(0),
            removed_bytes: AtomicU64::new(0),
            sweep_every,
        })
    }

    /// Blob files this reaper removed since start, and their bytes.
    pub fn removed(&self) -> (u64, u64) {
        (
            self.removed.load(Ordering::Relaxed),
            self.removed_bytes.load(Ordering::Relaxed),
        )
    }

    /// Works until `stop`: a sweep at start, then the collected blobs as they are applied,
    /// and a sweep when asked and every `sweep_every`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let collected = self.registry.meta().collected().clone();
        let mut tick = tokio::time::interval(self.sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let taken = collected.take();
            let sweep = taken.resync;
            let mut n = 0;
            for notice in taken.notices {
                if let Notice::Blob(digest) = notice {
                    self.reap(&digest, None).await;
                    n += 1;
                    if n % 64 == 0 {
                        self.pace.after(64).await;
                    }
                }
                if stop.is_cancelled() {
                    return;
                }
            }
            if sweep {
                self.sweep(&stop).await;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = collected.changed() => {}
                _ = tick.tick() => {
                    self.sweep(&stop).await;
                }
            }
        }
    }

    /// Removes this node's file of `digest` if the cluster has no record of the blob (and,
    /// for a sweep, the file is older than [`SWEEP_MIN_AGE`]). Returns whether it did.
    async fn reap(&self, digest: &Digest, min_age: Option<Duration>) -> bool {
        let blobs = self.registry.blob_store();
        let _placing = blobs.lock_digest(digest).await;
        // After the digest's lock (never the other way round): a snapshot install waits for
        // this, and nothing holding this waits for Raft.
        let _whole = self.registry.meta().whole_state().await;
        match self.registry.meta().blob(digest).await {
            Ok(None) => {}
            Ok(Some(_)) => return false,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "failed to read a blob record; its file stays");
                return false;
            }
        }
        let Ok(Some(file)) = blobs.describe(digest).await else {
            return false;
        };
        if let Some(age) = min_age
            && !old_enough(file.modified, age)
        {
            return false;
        }
        let info = file;
        match blobs.delete(digest).await {
            Ok(()) => {
                self.removed.fetch_add(1, Ordering::Relaxed);
                self.removed_bytes.fetch_add(info.size, Ordering::Relaxed);
                tracing::debug!(%digest, size = info.size, "removed a collected blob's file");
                true
            }
            Err(e) => {
                tracing::warn!(%digest, error = %e, "failed to remove a collected blob's file");
                false
            }
        }
    }

    /// Walks the blob directory and removes the files of blobs the cluster has no record of
    /// (older than [`SWEEP_MIN_AGE`]). Returns how many it removed.
    pub async fn sweep(&self, stop: &CancellationToken) -> u64 {
        let blobs = self.registry.blob_store();
        let meta = self.registry.meta();
        // Only over a state that is current: a node that has no counts yet (an empty or new
        // store, or one from before GC) or cannot catch up with the leader (it may lag, or be
        // restarting) removes nothing by absence.
        if !meta.refs_counted().unwrap_or(false) {
            tracing::debug!("no sweep: the reference counts are not built here yet");
            return 0;
        }
        let cluster = self.registry.cluster();
        if !cluster.is_leader() {
            let caught_up =
                tokio::time::timeout(Duration::from_secs(10), cluster.catch_up_with_leader()).await;
            if !matches!(caught_up, Ok(Ok(()))) {
                tracing::debug!("no sweep: this node could not catch up with the leader");
                return 0;
            }
        }
        let mut removed = 0;
        for prefix in 0..=255u8 {
            if stop.is_cancelled() {
                break;
            }
            let files = match blobs.list_prefix(prefix).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(prefix, error = %e, "failed to list blob files");
                    continue;
                }
            };
            for f in files {
                if !old_enough(f.modified, SWEEP_MIN_AGE)
                    || !matches!(meta.blob(&f.digest).await, Ok(None))
                {
                    continue;
                }
                if self.reap(&f.digest, Some(SWEEP_MIN_AGE)).await {
                    removed += 1;
                    self.pace.after(1).await;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed blob files the cluster has no record of");
        }
        removed
    }
}

/// Whether a file modified at `modified` is at least `age` old (a time in the future is not).
fn old_enough(modified: SystemTime, age: Duration) -> bool {
    SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|d| d >= age)
}
