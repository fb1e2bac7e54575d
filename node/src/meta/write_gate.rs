//! The write gate: metadata writes wait while the disk under RocksDB is nearly full (ADR 010).
//!
//! RocksDB must never meet `ENOSPC`. Measured with the RocksDB this build links (Debian's
//! 7.8.3, built with assertions): the first failed append to its info log or its WAL aborts
//! the process (`WritableFileWriter::AssertFalseAndGetStatusForPrevError`); a build without
//! assertions instead answers "writer has previous error" to every later write, and the C API
//! has no `DB::Resume`. Either way, a Raft log that met a full disk would need a restart. So
//! every write of the log store and the state machine first passes this gate: below the
//! floor ([`floor_of`]) it waits, re-measuring with a backoff, until space returns (no error
//! reaches openraft, which would stop Raft for good) or the node shuts down
//! ([`WriteGate::stop`]; the write then fails and Raft stops, as it is stopping anyway).
//!
//! While a write waits, [`WriteGate::full`] says why, for the write path (503 at once instead
//! of a write timeout) and `/readyz`.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::MetaError;
use crate::space::{DiskSpace, Usage};

/// Free space below which metadata writes wait, on a large file system: room for memtable
/// flushes (3 column families of 4 MiB), a compaction and a snapshot of a modest registry.
const FLOOR_BYTES: u64 = 64 * 1024 * 1024;

/// The floor on a file system of `total` bytes: [`FLOOR_BYTES`], at most an eighth of it.
pub fn floor_of(total: u64) -> u64 {
    FLOOR_BYTES.min(total / 8)
}

/// First and longest pause between two measurements while a write waits.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const LONGEST_PAUSE: Duration = Duration::from_millis(500);

/// Why metadata writes wait: the disk holding the metadata is (nearly) full.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the disk holding {path} is full: {available} bytes free, metadata writes need {floor}")]
pub struct DiskFull {
    /// The metadata directory.
    pub path: String,
    /// Bytes free.
    pub available: u64,
    /// The floor, in bytes.
    pub floor: u64,
}

/// Shared by the log store, the state machine and the cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WriteGate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    space: DiskSpace,
    /// Set by [`WriteGate::stop`]: waits end with an error.
    stopped: AtomicBool,
    /// Whether a write is waiting now (for the log lines at the start and the end).
    waiting: AtomicBool,
    wake: tokio::sync::Notify,
}

impl WriteGate {
    /// A gate for the metadata under `dir`.
    pub(super) fn new(dir: &Path) -> WriteGate {
        WriteGate {
            inner: Arc::new(Inner {
                space: DiskSpace::new(dir),
                stopped: AtomicBool::new(false),
                waiting: AtomicBool::new(false),
                wake: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Why a metadata write would wait now, from a measurement at most
    /// [`crate::space::MAX_AGE`] old; `None` when there is room (or it cannot be measured).
    pub fn full(&self) -> Option<DiskFull> {
        let usage = match self.inner.space.usage() {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "failed to measure free space for metadata");
                return None;
            }
        };
        self.full_at(usage)
    }

    fn full_at(&self, usage: Usage) -> Option<DiskFull> {
        let floor = floor_of(usage.total);
        (usage.available < floor).then(|| DiskFull {
            path: self.inner.space.path().display().to_string(),
            available: usage.available,
            floor,
        })
    }

    /// Returns once a metadata write may go ahead: at once when there is room, else when space
    /// returns. Cancel-safe (it only waits).
    ///
    /// Errors: [`MetaError::DiskFull`] (as `io::Error`, what openraft's storage traits return)
    /// when [`WriteGate::stop`] ended the wait.
    pub(super) async fn wait_for_room(&self) -> io::Result<()> {
        let mut pause = FIRST_PAUSE;
        loop {
            let Some(full) = self.full() else {
                if self.inner.waiting.swap(false, Ordering::Relaxed) {
                    tracing::info!("disk space returned; metadata writes resume");
                }
                return Ok(());
            };
            if self.inner.stopped.load(Ordering::Relaxed) {
                return Err(MetaError::DiskFull(full).into());
            }
            if !self.inner.waiting.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    dir = %full.path, available = full.available, floor = full.floor,
                    "failed to write metadata: the disk is full; writes wait until space returns"
                );
            }
            let woken = self.inner.wake.notified();
            tokio::pin!(woken);
            // Registered before the check, so a `stop` between the two is not missed.
            woken.as_mut().enable();
            if self.inner.stopped.load(Ordering::Relaxed) {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = woken => {}
            }
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    /// Ends every wait, now and later, with an error (at shutdown: Raft must be able to stop).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        self.inner.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_small_on_small_disks() {
        assert_eq!(floor_of(1 << 40), FLOOR_BYTES);
        assert_eq!(floor_of(64 << 20), 8 << 20);
        assert_eq!(floor_of(0), 0);
    }

    #[tokio::test]
    async fn a_gate_with_room_opens_at_once_and_a_stopped_gate_too() {
        let dir = tempfile::tempdir().unwrap();
        let gate = WriteGate::new(dir.path());
        assert_eq!(gate.full(), None);
        gate.wait_for_room().await.unwrap();
        gate.stop();
        // Stopping only ends waits for space; where there is room, writes still go ahead.
        gate.wait_for_room().await.unwrap();
    }

    /// On a real full file system (a small tmpfs; skipped where mounting is refused): a write
    /// waits while the disk is full, goes ahead when space returns, and a stop ends a wait.
    #[tokio::test]
    async fn a_write_waits_for_space_and_a_stop_ends_the_wait() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            mounted || !root,
            "running as root, but mount -t tmpfs was refused"
        );
        if !mounted {
            eprintln!("SKIPPED (not root): mount -t tmpfs was refused");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(dir.path());
        let fill = || {
            let mut f = std::fs::File::create(dir.path().join("ballast")).unwrap();
            while f.write(&[0u8; 4096]).is_ok_and(|n| n > 0) {}
        };
        let gate = WriteGate::new(dir.path());
        fill();
        // The cache may hold the answer from before the fill for up to MAX_AGE.
        tokio::time::sleep(crate::space::MAX_AGE).await;
        assert!(gate.full().is_some());
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait_for_room().await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a write went ahead on a full disk");
        std::fs::remove_file(dir.path().join("ballast")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the write did not resume when space returned")
            .unwrap()
            .unwrap();
        assert_eq!(gate.full(), None);

        fill();
        tokio::time::sleep(crate::space::MAX_AGE).await;
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait_for_room().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.stop();
        let err = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("stop did not end the wait")
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("failed to write metadata"),
            "{err}"
        );
    }

    #[test]
    fn full_says_why() {
        let gate = WriteGate::new(Path::new("/data/meta"));
        let full = gate
            .full_at(Usage {
                available: 1000,
                total: 1 << 30,
            })
            .unwrap();
        assert_eq!(full.floor, FLOOR_BYTES);
        assert_eq!(
            full.to_string(),
            format!(
                "the disk holding /data/meta is full: 1000 bytes free, metadata writes need {FLOOR_BYTES}"
            )
        );
        assert_eq!(
            gate.full_at(Usage {
                available: FLOOR_BYTES,
                total: 1 << 30
            }),
            None
        );
    }
}
