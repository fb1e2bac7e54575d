//! Whole tag lists of recently listed repositories, kept in memory between changes.
//!
//! A `tags/list` of a large repository is a scan of thousands of RocksDB keys; the list only
//! changes when a tag of that repository does. The state machine invalidates a repository's
//! entry after it applies a command that can change its tags (and clears everything when a
//! snapshot replaces the state); readers fill entries from scans.
//!
//! Race: a reader that scanned before an invalidation must not insert what it read after
//! it. Every invalidation bumps an epoch; a reader notes the epoch before scanning and
//! inserts only if it has not moved. The state machine writes to RocksDB before it
//! invalidates, so any scan that missed a write started before the matching bump.
//!
//! Bounded by the bytes of the cached tags ([`BUDGET_BYTES`]); a list larger than the budget
//! is never cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::types::RepositoryName;

/// Memory the cached lists may take (tag bytes plus a per-tag overhead).
pub(super) const BUDGET_BYTES: usize = 4 * 1024 * 1024;
/// What one cached tag costs beyond its bytes (the `String` itself).
const PER_TAG: usize = 24;

/// A repository's tags in lexical order.
pub(super) type TagList = Arc<Vec<String>>;

#[derive(Debug, Default)]
struct Inner {
    epoch: u64,
    lists: HashMap<String, (TagList, usize)>,
    bytes: usize,
}

/// The cache; shared by the state machine (invalidates) and the readers (fill, read).
#[derive(Debug, Default)]
pub(super) struct TagCache {
    inner: Mutex<Inner>,
}

fn cost(list: &[String]) -> usize {
    list.iter().map(|t| t.len() + PER_TAG).sum()
}

impl TagCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("tag cache poisoned")
    }

    /// The epoch to note before a scan that may fill the cache.
    pub(super) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The cached list of `repo`, if any.
    pub(super) fn get(&self, repo: &RepositoryName) -> Option<TagList> {
        self.lock().lists.get(repo.as_str()).map(|(l, _)| l.clone())
    }

    /// Caches `list` for `repo` unless an invalidation happened since `epoch`.
    pub(super) fn insert(&self, repo: &RepositoryName, epoch: u64, list: TagList) {
        let size = cost(&list);
        if size > BUDGET_BYTES {
            return;
        }
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        if let Some((_, old)) = inner.lists.remove(repo.as_str()) {
            inner.bytes -= old;
        }
        // Make room: drop arbitrary entries (lists are cheap to rebuild).
        while inner.bytes + size > BUDGET_BYTES {
            let Some(victim) = inner.lists.keys().next().cloned() else {
                break;
            };
            let (_, freed) = inner.lists.remove(&victim).expect("key just seen");
            inner.bytes -= freed;
        }
        inner.bytes += size;
        inner.lists.insert(repo.as_str().to_string(), (list, size));
    }

    /// Forgets `repo`'s list (its tags changed).
    pub(super) fn invalidate(&self, repo: &RepositoryName) {
        let mut inner = self.lock();
        inner.epoch += 1;
        if let Some((_, size)) = inner.lists.remove(repo.as_str()) {
            inner.bytes -= size;
        }
    }

    /// Forgets every list (the whole state was replaced).
    pub(super) fn clear(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.lists.clear();
        inner.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    fn list(n: usize) -> TagList {
        Arc::new((0..n).map(|i| format!("t{i:05}")).collect())
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let c = TagCache::default();
        let e = c.epoch();
        c.invalidate(&repo("a"));
        c.insert(&repo("a"), e, list(3));
        assert!(c.get(&repo("a")).is_none());
        let e = c.epoch();
        c.insert(&repo("a"), e, list(3));
        assert_eq!(c.get(&repo("a")).unwrap().len(), 3);
        c.invalidate(&repo("a"));
        assert!(c.get(&repo("a")).is_none());
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let c = TagCache::default();
        let per_list = cost(&list(10_000));
        let fit = BUDGET_BYTES / per_list;
        for i in 0..fit + 3 {
            let e = c.epoch();
            c.insert(&repo(&format!("r{i}")), e, list(10_000));
        }
        let inner = c.lock();
        assert!(inner.bytes <= BUDGET_BYTES);
        assert_eq!(inner.lists.len(), fit);
        assert_eq!(inner.bytes, fit * per_list);
        drop(inner);
        let e = c.epoch();
        c.insert(&repo("huge"), e, list(BUDGET_BYTES / PER_TAG));
        assert!(c.get(&repo("huge")).is_none());
        c.clear();
        assert_eq!(c.lock().bytes, 0);
    }
}
