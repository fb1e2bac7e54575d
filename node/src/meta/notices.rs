//! What the state machine tells the replicator after it applied an entry: which manifests and
//! blob records changed, or that everything may have (a membership change, a policy change,
//! an installed snapshot, or notices lost to a full queue).
//!
//! Owned by `meta` because only the state machine knows what it applied; read by
//! `replication::worker` through [`super::MetaReader::notices`]. The queue is bounded: when it
//! is full the notice is dropped and [`Notices::take`] says `resync`, so the reader rebuilds
//! its view from the state instead (nothing is lost, only recomputed). Pushing never blocks
//! and never fails: applying an entry must not wait for a reader.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::types::{Digest, RepositoryName};

/// Notices kept before the queue overflows (and the reader is told to resync).
pub const NOTICE_CAPACITY: usize = 4096;

/// One change the state machine applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A manifest was stored or deleted.
    Manifest {
        /// Its repository.
        repo: RepositoryName,
        /// Its digest.
        digest: Digest,
    },
    /// A blob record changed (stored, or a holder added).
    Blob(Digest),
}

/// What the reader takes at once: the notices in apply order, and whether it must recompute
/// everything instead (then the notices may be incomplete).
#[derive(Debug, Default)]
pub struct Taken {
    /// The notices since the last take.
    pub notices: Vec<Notice>,
    /// Whether a change that affects everything was applied, or notices were dropped.
    pub resync: bool,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Notice>,
    resync: bool,
}

/// The queue of notices between the state machine and the replicator.
#[derive(Debug)]
pub struct Notices {
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
    capacity: usize,
}

impl Default for Notices {
    fn default() -> Self {
        Notices::with_capacity(NOTICE_CAPACITY)
    }
}

impl Notices {
    /// A queue that holds at most `capacity` notices before it turns into a resync.
    pub(super) fn with_capacity(capacity: usize) -> Notices {
        Notices {
            inner: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            capacity,
        }
    }

    /// Queues a notice (dropped, with a resync, when the queue is full).
    pub(super) fn push(&self, notice: Notice) {
        let mut inner = self.inner.lock().expect("notices lock");
        if inner.queue.len() >= self.capacity {
            inner.queue.clear();
            inner.resync = true;
        } else if !inner.resync {
            inner.queue.push_back(notice);
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// Says that everything may have changed.
    pub(super) fn resync(&self) {
        let mut inner = self.inner.lock().expect("notices lock");
        inner.queue.clear();
        inner.resync = true;
        drop(inner);
        self.wake.notify_one();
    }

    /// Takes every notice queued so far.
    pub fn take(&self) -> Taken {
        let mut inner = self.inner.lock().expect("notices lock");
        Taken {
            notices: inner.queue.drain(..).collect(),
            resync: std::mem::take(&mut inner.resync),
        }
    }

    /// Waits until something was pushed since the last wait (returns at once if it was).
    pub async fn changed(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(i: u8) -> Notice {
        Notice::Blob(Digest::sha256_of(&[i]))
    }

    #[test]
    fn notices_come_out_in_order_once() {
        let n = Notices::default();
        n.push(blob(1));
        n.push(blob(2));
        let t = n.take();
        assert_eq!(t.notices, vec![blob(1), blob(2)]);
        assert!(!t.resync);
        assert!(n.take().notices.is_empty());
    }

    #[test]
    fn a_full_queue_turns_into_a_resync() {
        let n = Notices::default();
        for i in 0..=NOTICE_CAPACITY {
            n.push(blob(i as u8));
        }
        let t = n.take();
        assert!(t.resync);
        assert!(t.notices.is_empty());
        // After the take the queue works again.
        n.push(blob(1));
        let t = n.take();
        assert!(!t.resync);
        assert_eq!(t.notices.len(), 1);
    }
}
