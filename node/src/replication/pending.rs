//! The replicator's backlog: every blob some placement node does not hold yet, in any region
//! (the pending view the metrics publish), with what this node does about its own share —
//! copies in flight, backoffs — and the indexes that keep each event of the worker at
//! O(log P) for P pending blobs, not a pass over all of them.
//!
//! Only a full pass ([`Backlog::replace`]) costs O(P): it rebuilds everything. Every other
//! change — a manifest stored ([`Backlog::add_manifest`]) or deleted
//! ([`Backlog::forget_manifest`]), new holders ([`Backlog::held_by`]), a copy started
//! ([`Backlog::start`]), held, not wanted or failed — updates the indexes of the blobs it
//! touches.
//!
//! Invariants (checked after every step of a property test, against the pre-index algorithms
//! run side by side):
//! - `regions` holds, for each region of the placement, the count, the bytes and the multiset
//!   of `oldest_ms` of the pending blobs some node of that region misses: [`Backlog::view`]
//!   equals [`per_region`](super::per_region) over the pending blobs;
//! - `by_manifest[m]` is exactly the set of pending blobs whose `wanted_by` lists `m`;
//! - `ready` and `waiting` partition the blobs this node may copy (pending, missing here, not
//!   in flight): `waiting` holds, by due time, those with a backoff not yet seen due by
//!   [`Backlog::start`]; `ready` the others, in digest order. So `start` takes the same blobs,
//!   in the same order, as a filter over every pending blob would.
//!
//! Must not: do IO, spawn, or read the clock (the caller passes `now`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::meta::{ManifestEntry, NodeId};
use crate::types::{Digest, RepositoryName};

use super::{Pending, Placement, Plan, RegionStatus};

/// Base of the backoff of a failing blob: after its n-th failure in a row it waits
/// `BACKOFF_MIN × 2ⁿ` (2 s after the first), at most [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a blob.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A manifest, as `Pending::wanted_by` names it.
type ManifestKey = (RepositoryName, Digest);

/// Failed copies of a blob, and when it may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    attempts: u32,
    until: Instant,
}

/// One region's share of the pending blobs.
#[derive(Debug, Default, Clone)]
struct RegionTally {
    blobs: u64,
    bytes: u64,
    /// `oldest_ms` of each blob counted, with multiplicity.
    oldest: BTreeMap<u64, u64>,
}

/// The pending blobs of every region and this node's copies of its own, indexed (see the
/// module docs for the invariants).
#[derive(Debug)]
pub struct Backlog {
    me: NodeId,
    plan: Option<Plan>,
    blobs: BTreeMap<Digest, Pending>,
    regions: BTreeMap<String, RegionTally>,
    by_manifest: HashMap<ManifestKey, BTreeSet<Digest>>,
    in_flight: HashSet<Digest>,
    backoff: HashMap<Digest, Backoff>,
    ready: BTreeSet<Digest>,
    waiting: BTreeSet<(Instant, Digest)>,
}

impl Backlog {
    /// An empty backlog of node `me`, without a plan until the first [`Backlog::replace`].
    pub fn new(me: NodeId) -> Backlog {
        Backlog {
            me,
            plan: None,
            blobs: BTreeMap::new(),
            regions: BTreeMap::new(),
            by_manifest: HashMap::new(),
            in_flight: HashSet::new(),
            backoff: HashMap::new(),
            ready: BTreeSet::new(),
            waiting: BTreeSet::new(),
        }
    }

    /// The plan of the last full pass.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// Whether `digest` is pending.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blobs.contains_key(digest)
    }

    /// Replaces the pending blobs with a full pass's, under its plan: O(P log P). Copies in
    /// flight stay; backoffs of blobs no longer pending go.
    pub fn replace(&mut self, plan: Plan, pending: BTreeMap<Digest, Pending>) {
        self.regions = plan
            .placement
            .regions()
            .map(|r| (r.to_string(), RegionTally::default()))
            .collect();
        self.plan = Some(plan);
        self.blobs = pending;
        self.backoff.retain(|d, _| self.blobs.contains_key(d));
        self.by_manifest.clear();
        self.ready.clear();
        self.waiting.clear();
        let placement = &self.plan.as_ref().expect("just set").placement;
        for (d, p) in &self.blobs {
            for by in &p.wanted_by {
                self.by_manifest
                    .entry(by.clone())
                    .or_default()
                    .insert(d.clone());
            }
            count(&mut self.regions, placement, p, true);
            if copyable(self.me, &self.in_flight, d, p) {
                match self.backoff.get(d) {
                    None => self.ready.insert(d.clone()),
                    Some(b) => self.waiting.insert((b.until, d.clone())),
                };
            }
        }
    }

    /// Adds a stored manifest's blobs that some placement node misses. Without a plan, does
    /// nothing (the first full pass counts it).
    pub fn add_manifest(&mut self, entry: &ManifestEntry) {
        let Some(plan) = &self.plan else {
            return;
        };
        let missing: Vec<_> = plan.missing(entry).collect();
        let by = (entry.repo.clone(), entry.digest.clone());
        for (digest, size, missing) in missing {
            if !self.blobs.contains_key(digest) {
                let fresh = Pending::new(size, entry.created_ms);
                self.blobs.insert(digest.clone(), fresh);
            }
            let listed = self.update(digest, |p| p.want(missing, entry.created_ms, &by));
            if listed == Some(true) {
                self.by_manifest
                    .entry(by.clone())
                    .or_default()
                    .insert(digest.clone());
            }
        }
    }

    /// A manifest was deleted: blobs only it wanted are no longer pending.
    pub fn forget_manifest(&mut self, repo: &RepositoryName, digest: &Digest) {
        let by = (repo.clone(), digest.clone());
        let Some(blobs) = self.by_manifest.remove(&by) else {
            return;
        };
        for d in blobs {
            self.update(&d, |p| {
                p.wanted_by.retain(|w| w != &by);
                // A blob no manifest is known to want is dropped like a held one.
                if p.wanted_by.is_empty() && !p.more {
                    p.missing.clear();
                }
            });
        }
    }

    /// Removes `holders` from a pending blob's missing nodes (and the blob once none miss it).
    /// Returns the earliest push time of the manifests that want it when that removed this
    /// node and no other node of its region still misses it: its region holds the blob now.
    pub fn held_by(
        &mut self,
        digest: &Digest,
        holders: impl IntoIterator<Item = NodeId>,
    ) -> Option<u64> {
        let me = self.me;
        let (mine_done, oldest_ms) = self.update(digest, |p| {
            let mut mine_done = false;
            for h in holders {
                if p.missing.remove(&h) && h == me {
                    mine_done = true;
                }
            }
            (mine_done, p.oldest_ms)
        })?;
        if !mine_done {
            return None;
        }
        let placement = &self.plan.as_ref()?.placement;
        let region = placement.region_of(me)?;
        // Still pending: some node (of another region, or of this one) misses it.
        let others_missing = self.blobs.get(digest).is_some_and(|p| {
            p.missing
                .iter()
                .any(|n| *n != me && placement.region_of(*n) == Some(region))
        });
        (!others_missing).then_some(oldest_ms)
    }

    /// Drops a pending blob (no manifest wants it any more).
    pub fn remove(&mut self, digest: &Digest) {
        self.update(digest, |p| p.missing.clear());
    }

    /// Marks due the blobs whose backoff ended by `now`, then starts copies of this node's
    /// due blobs, in digest order, until `max` are in flight: returns them.
    pub fn start(&mut self, max: usize, now: Instant) -> Vec<(Digest, Pending)> {
        while let Some((until, _)) = self.waiting.first() {
            if *until > now {
                break;
            }
            let (_, d) = self.waiting.pop_first().expect("a first entry");
            self.ready.insert(d);
        }
        let mut started = Vec::new();
        while self.in_flight.len() < max {
            let Some(d) = self.ready.pop_first() else {
                break;
            };
            self.in_flight.insert(d.clone());
            let p = self.blobs[&d].clone();
            started.push((d, p));
        }
        started
    }

    /// When the next of this node's blobs in backoff may be tried (`None`: none waits).
    pub fn next_retry(&self) -> Option<Instant> {
        self.waiting.first().map(|(until, _)| *until)
    }

    /// A copy ended with this node holding the blob: see [`Backlog::held_by`].
    pub fn held(&mut self, digest: &Digest) -> Option<u64> {
        self.finish(digest);
        self.clear_backoff(digest);
        self.held_by(digest, [self.me])
    }

    /// A copy found no manifest wanting the blob any more: it is dropped.
    pub fn not_wanted(&mut self, digest: &Digest) {
        self.finish(digest);
        self.clear_backoff(digest);
        self.remove(digest);
    }

    /// A copy failed at `now`: the blob waits [`BACKOFF_MIN`] `× 2ⁿ` after its n-th failure in
    /// a row, at most [`BACKOFF_MAX`]. Returns the failures so far and the wait.
    pub fn failed(&mut self, digest: &Digest, now: Instant) -> (u32, Duration) {
        self.finish(digest);
        let attempts = self.backoff.get(digest).map_or(0, |b| b.attempts) + 1;
        let wait = BACKOFF_MIN
            .saturating_mul(1 << attempts.min(10))
            .min(BACKOFF_MAX);
        self.set_backoff(
            digest,
            Some(Backoff {
                attempts,
                until: now + wait,
            }),
        );
        (attempts, wait)
    }

    /// Forgets a blob's failures: it may be tried at once.
    pub fn clear_backoff(&mut self, digest: &Digest) {
        self.set_backoff(digest, None);
    }

    /// Pending blobs and bytes per region, and the oldest pending manifest's time, as
    /// [`per_region`](super::per_region) computes them from scratch; `None` before the first
    /// full pass.
    pub fn view(&self) -> Option<BTreeMap<String, RegionStatus>> {
        self.plan.as_ref()?;
        Some(
            self.regions
                .iter()
                .map(|(r, t)| {
                    let status = RegionStatus {
                        region: r.clone(),
                        complete: t.blobs == 0,
                        pending_blobs: t.blobs,
                        pending_bytes: t.bytes,
                        oldest_pending_ms: t.oldest.keys().next().copied(),
                    };
                    (r.clone(), status)
                })
                .collect(),
        )
    }

    fn finish(&mut self, digest: &Digest) {
        self.in_flight.remove(digest);
        self.enqueue(digest);
    }

    fn set_backoff(&mut self, digest: &Digest, backoff: Option<Backoff>) {
        self.dequeue(digest);
        match backoff {
            Some(b) => self.backoff.insert(digest.clone(), b),
            None => self.backoff.remove(digest),
        };
        self.enqueue(digest);
    }

    /// Changes a pending blob through `change` with its region counts and queue place kept
    /// true; drops it (and its index entries) when no node misses it after. `None` when it is
    /// not pending.
    fn update<R>(&mut self, digest: &Digest, change: impl FnOnce(&mut Pending) -> R) -> Option<R> {
        if !self.blobs.contains_key(digest) {
            return None;
        }
        self.count(digest, false);
        let p = self.blobs.get_mut(digest).expect("pending");
        let out = change(p);
        if p.missing.is_empty() {
            let p = self.blobs.remove(digest).expect("pending");
            for by in &p.wanted_by {
                if let Some(set) = self.by_manifest.get_mut(by) {
                    set.remove(digest);
                    if set.is_empty() {
                        self.by_manifest.remove(by);
                    }
                }
            }
            self.dequeue(digest);
        } else {
            self.count(digest, true);
            self.enqueue(digest);
        }
        Some(out)
    }

    /// Adds (or, `add` false, takes away) a pending blob's share of each region it misses in.
    fn count(&mut self, digest: &Digest, add: bool) {
        if let (Some(plan), Some(p)) = (&self.plan, self.blobs.get(digest)) {
            count(&mut self.regions, &plan.placement, p, add);
        }
    }

    /// Whether this node may copy `digest` now or after its backoff.
    fn copyable(&self, digest: &Digest) -> bool {
        self.blobs
            .get(digest)
            .is_some_and(|p| copyable(self.me, &self.in_flight, digest, p))
    }

    /// Puts `digest` in `ready` or `waiting` if it is copyable and in neither yet (a blob seen
    /// due stays in `ready`), or takes it out of both if it is not copyable.
    fn enqueue(&mut self, digest: &Digest) {
        let until = self.backoff.get(digest).map(|b| b.until);
        let queued = self.ready.contains(digest)
            || until.is_some_and(|u| self.waiting.contains(&(u, digest.clone())));
        match (self.copyable(digest), queued) {
            (true, false) => match until {
                None => {
                    self.ready.insert(digest.clone());
                }
                Some(u) => {
                    self.waiting.insert((u, digest.clone()));
                }
            },
            (false, true) => self.dequeue(digest),
            _ => {}
        }
    }

    fn dequeue(&mut self, digest: &Digest) {
        self.ready.remove(digest);
        if let Some(b) = self.backoff.get(digest) {
            self.waiting.remove(&(b.until, digest.clone()));
        }
    }
}

/// Whether node `me` may copy the pending blob `digest` now or after its backoff: it misses it
/// and is not copying it.
fn copyable(me: NodeId, in_flight: &HashSet<Digest>, digest: &Digest, p: &Pending) -> bool {
    p.missing.contains(&me) && !in_flight.contains(digest)
}

/// Adds `p`'s share (or, `add` false, takes it away) to each region with a node that misses
/// it (nodes of no known region are left out).
fn count(
    regions: &mut BTreeMap<String, RegionTally>,
    placement: &Placement,
    p: &Pending,
    add: bool,
) {
    let missing_in: BTreeSet<&str> = p
        .missing
        .iter()
        .filter_map(|n| placement.region_of(*n))
        .collect();
    for region in missing_in {
        let t = regions.get_mut(region).expect("a region of the placement");
        if add {
            t.blobs += 1;
            t.bytes += p.size;
            *t.oldest.entry(p.oldest_ms).or_default() += 1;
        } else {
            t.blobs -= 1;
            t.bytes -= p.size;
            let n = t.oldest.get_mut(&p.oldest_ms).expect("counted");
            *n -= 1;
            if *n == 0 {
                t.oldest.remove(&p.oldest_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::meta::{BlobRecord, ReplicationPolicy};
    use crate::replication::{Tally, per_region};

    const ME: NodeId = 2;

    fn plan(copies_per_region: usize) -> Plan {
        let eu = ReplicationPolicy {
            regions: vec!["r1".into(), "r2".into()],
            on_demand: vec![],
        };
        Plan {
            placement: Placement::new(
                [(1, "r1"), (2, "r2"), (3, "r2"), (4, "r3"), (5, "r3")],
                copies_per_region,
            ),
            policies: vec![("eu/**".into(), eu)],
        }
    }

    fn blob(i: u8) -> Digest {
        Digest::sha256_of(&[i, 0])
    }

    fn repo(i: u8) -> RepositoryName {
        RepositoryName::parse(["eu/app", "us/app"][usize::from(i % 2)]).unwrap()
    }

    fn manifest(i: u8) -> Digest {
        Digest::sha256_of(&[i, 1])
    }

    fn nodes(bits: u8) -> BTreeSet<NodeId> {
        (1..=5).filter(|n| bits & (1 << n) != 0).collect()
    }

    /// The replicator's bookkeeping as it was before the indexes: a map of pending blobs and
    /// a filter over all of them for every decision.
    struct Reference {
        plan: Plan,
        pending: BTreeMap<Digest, Pending>,
        in_flight: HashSet<Digest>,
        backoff: HashMap<Digest, (u32, Instant)>,
    }

    impl Reference {
        fn add(&mut self, entry: &ManifestEntry) {
            let mut tally = Tally {
                pending: std::mem::take(&mut self.pending),
                ..Tally::default()
            };
            self.plan.add(&mut tally, entry);
            self.pending = tally.pending;
        }

        fn forget(&mut self, by: &(RepositoryName, Digest)) {
            self.pending.retain(|_, p| {
                p.wanted_by.retain(|w| w != by);
                !p.wanted_by.is_empty() || p.more
            });
        }

        fn held_by(&mut self, digest: &Digest, holders: &BTreeSet<NodeId>) -> Option<u64> {
            let mut mine_done = false;
            let mut lag = None;
            if let Some(p) = self.pending.get_mut(digest) {
                for h in holders {
                    if p.missing.remove(h) && *h == ME {
                        mine_done = true;
                    }
                }
            }
            if mine_done {
                let p = &self.pending[digest];
                let region = self.plan.placement.region_of(ME);
                let others = p
                    .missing
                    .iter()
                    .any(|n| *n != ME && self.plan.placement.region_of(*n) == region);
                if region.is_some() && !others {
                    lag = Some(p.oldest_ms);
                }
            }
            if self
                .pending
                .get(digest)
                .is_some_and(|p| p.missing.is_empty())
            {
                self.pending.remove(digest);
            }
            lag
        }

        fn start(&mut self, max: usize, now: Instant) -> Vec<(Digest, Pending)> {
            let due: Vec<(Digest, Pending)> = self
                .pending
                .iter()
                .filter(|(d, p)| {
                    p.missing.contains(&ME)
                        && !self.in_flight.contains(*d)
                        && self.backoff.get(*d).is_none_or(|(_, at)| *at <= now)
                })
                .take(max.saturating_sub(self.in_flight.len()))
                .map(|(d, p)| (d.clone(), p.clone()))
                .collect();
            self.in_flight.extend(due.iter().map(|(d, _)| d.clone()));
            due
        }

        /// The earliest end of a backoff that holds back a copy of this node's.
        fn next_retry(&self, now: Instant) -> Option<Instant> {
            self.backoff
                .iter()
                .filter(|(d, (_, at))| {
                    *at > now
                        && !self.in_flight.contains(*d)
                        && self
                            .pending
                            .get(*d)
                            .is_some_and(|p| p.missing.contains(&ME))
                })
                .map(|(_, (_, at))| *at)
                .min()
        }

        fn failed(&mut self, digest: &Digest, now: Instant) -> (u32, Duration) {
            self.in_flight.remove(digest);
            let attempts = self.backoff.get(digest).map_or(0, |(a, _)| *a) + 1;
            let wait = BACKOFF_MIN
                .saturating_mul(1 << attempts.min(10))
                .min(BACKOFF_MAX);
            self.backoff.insert(digest.clone(), (attempts, now + wait));
            (attempts, wait)
        }
    }

    /// What the state machine holds: manifests and each blob's holders.
    #[derive(Default)]
    struct State {
        manifests: BTreeMap<(u8, u8), ManifestEntry>,
        holders: BTreeMap<Digest, BTreeSet<NodeId>>,
    }

    impl State {
        fn entry(&mut self, key: (u8, u8), blobs: &[(u8, u8)], created_ms: u64) -> ManifestEntry {
            let blobs = blobs
                .iter()
                .map(|(b, bits)| {
                    let d = blob(*b);
                    let holders = self
                        .holders
                        .entry(d.clone())
                        .or_insert_with(|| nodes(*bits));
                    let record = BlobRecord {
                        size: 100 + u64::from(*b),
                        holders: holders.clone(),
                        first_seen_ms: 0,
                    };
                    (d, Some(record))
                })
                .collect();
            let entry = ManifestEntry {
                repo: repo(key.0),
                digest: manifest(key.1),
                created_ms,
                blobs,
                children: vec![],
            };
            self.manifests.insert(key, entry.clone());
            entry
        }

        fn walk(&self, plan: &Plan) -> BTreeMap<Digest, Pending> {
            let mut tally = Tally::default();
            for e in self.manifests.values() {
                plan.add(&mut tally, e);
            }
            tally.pending
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            key: (u8, u8),
            blobs: Vec<(u8, u8)>,
            created_ms: u64,
        },
        Delete {
            key: (u8, u8),
        },
        Copied {
            blob: u8,
            bits: u8,
        },
        Start {
            max: usize,
        },
        Held {
            pick: usize,
        },
        NotWanted {
            pick: usize,
        },
        Failed {
            pick: usize,
        },
        Tick {
            ms: u64,
        },
        FullPass {
            copies_per_region: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = (0u8..2, 0u8..6);
        prop_oneof![
            3 => (key.clone(), proptest::collection::vec((0u8..12, any::<u8>()), 1..4), 0u64..1000)
                .prop_map(|(key, blobs, created_ms)| Op::Push { key, blobs, created_ms }),
            1 => key.prop_map(|key| Op::Delete { key }),
            2 => (0u8..12, any::<u8>()).prop_map(|(blob, bits)| Op::Copied { blob, bits }),
            3 => (0usize..5).prop_map(|max| Op::Start { max }),
            2 => any::<usize>().prop_map(|pick| Op::Held { pick }),
            1 => any::<usize>().prop_map(|pick| Op::NotWanted { pick }),
            2 => any::<usize>().prop_map(|pick| Op::Failed { pick }),
            2 => (0u64..12_000).prop_map(|ms| Op::Tick { ms }),
            1 => (1usize..3).prop_map(|copies_per_region| Op::FullPass { copies_per_region }),
        ]
    }

    /// Checks every invariant of the module docs, and that the backlog holds what the
    /// reference holds.
    fn check(b: &Backlog, r: &Reference, now: Instant) {
        assert_eq!(b.blobs, r.pending);
        assert_eq!(b.in_flight, r.in_flight);
        let backoff: HashMap<Digest, (u32, Instant)> = b
            .backoff
            .iter()
            .map(|(d, x)| (d.clone(), (x.attempts, x.until)))
            .collect();
        assert_eq!(backoff, r.backoff);
        if b.plan.is_some() {
            assert_eq!(b.view(), Some(per_region(&r.plan, &r.pending)));
        }
        let mut by_manifest: HashMap<ManifestKey, BTreeSet<Digest>> = HashMap::new();
        for (d, p) in &r.pending {
            for by in &p.wanted_by {
                by_manifest.entry(by.clone()).or_default().insert(d.clone());
            }
        }
        assert_eq!(b.by_manifest, by_manifest);
        let copyable: BTreeSet<Digest> = r
            .pending
            .iter()
            .filter(|(d, p)| p.missing.contains(&ME) && !r.in_flight.contains(*d))
            .map(|(d, _)| d.clone())
            .collect();
        let waiting: BTreeSet<Digest> = b.waiting.iter().map(|(_, d)| d.clone()).collect();
        assert!(b.ready.is_disjoint(&waiting));
        assert_eq!(
            b.ready.union(&waiting).cloned().collect::<BTreeSet<_>>(),
            copyable
        );
        for (until, d) in &b.waiting {
            assert_eq!(b.backoff[d].until, *until);
        }
        for d in &b.ready {
            assert!(b.backoff.get(d).is_none_or(|x| x.until <= now));
        }
    }

    fn run(ops: Vec<Op>) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut state = State::default();
        let mut b = Backlog::new(ME);
        let mut r = Reference {
            plan: plan(1),
            pending: BTreeMap::new(),
            in_flight: HashSet::new(),
            backoff: HashMap::new(),
        };
        b.replace(plan(1), BTreeMap::new());
        check(&b, &r, now);
        for op in ops {
            // A copy in flight, as the worker would see one end.
            let pick = |pick: usize, r: &Reference| {
                let mut flying: Vec<&Digest> = r.in_flight.iter().collect();
                flying.sort();
                (!flying.is_empty()).then(|| flying[pick % flying.len()].clone())
            };
            match op {
                Op::Push {
                    key,
                    blobs,
                    created_ms,
                } => {
                    let entry = state.entry(key, &blobs, created_ms);
                    b.add_manifest(&entry);
                    r.add(&entry);
                }
                Op::Delete { key } => {
                    state.manifests.remove(&key);
                    b.forget_manifest(&repo(key.0), &manifest(key.1));
                    r.forget(&(repo(key.0), manifest(key.1)));
                }
                Op::Copied { blob: i, bits } => {
                    let d = blob(i);
                    let Some(holders) = state.holders.get_mut(&d) else {
                        continue;
                    };
                    holders.extend(nodes(bits));
                    let holders = holders.clone();
                    // As the worker applies a blob notice.
                    assert_eq!(b.contains(&d), r.pending.contains_key(&d));
                    if b.contains(&d) {
                        b.clear_backoff(&d);
                        r.backoff.remove(&d);
                        assert_eq!(
                            b.held_by(&d, holders.iter().copied()),
                            r.held_by(&d, &holders)
                        );
                    }
                }
                Op::Start { max } => {
                    assert_eq!(b.start(max, now), r.start(max, now));
                    assert_eq!(b.next_retry(), r.next_retry(now));
                }
                Op::Held { pick: i } => {
                    let Some(d) = pick(i, &r) else { continue };
                    state.holders.entry(d.clone()).or_default().insert(ME);
                    r.in_flight.remove(&d);
                    r.backoff.remove(&d);
                    assert_eq!(b.held(&d), r.held_by(&d, &BTreeSet::from([ME])));
                }
                Op::NotWanted { pick: i } => {
                    let Some(d) = pick(i, &r) else { continue };
                    b.not_wanted(&d);
                    r.in_flight.remove(&d);
                    r.backoff.remove(&d);
                    r.pending.remove(&d);
                }
                Op::Failed { pick: i } => {
                    let Some(d) = pick(i, &r) else { continue };
                    assert_eq!(b.failed(&d, now), r.failed(&d, now));
                }
                Op::Tick { ms } => now += Duration::from_millis(ms),
                Op::FullPass { copies_per_region } => {
                    let plan = plan(copies_per_region);
                    let pending = state.walk(&plan);
                    b.replace(plan.clone(), pending.clone());
                    r.backoff.retain(|d, _| pending.contains_key(d));
                    r.pending = pending;
                    r.plan = plan;
                }
            }
            check(&b, &r, now);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// After any sequence of pushes, deletes, new holders, copies started, held, not
        /// wanted or failed, clock ticks and full passes, the indexes equal a from-scratch
        /// computation, and every decision equals the filter over all pending blobs.
        #[test]
        fn the_indexes_agree_with_a_scan_of_every_pending_blob(
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            run(ops);
        }
    }

    #[test]
    fn a_failing_blob_waits_2_4_8_then_10_seconds_and_is_not_started_meanwhile() {
        let mut state = State::default();
        let mut b = Backlog::new(ME);
        b.replace(plan(1), BTreeMap::new());
        // Held in r1 only: missing at this node (the only placement node of r2 is 2 or 3).
        let (i, _) = (0u8..)
            .map(|i| (i, plan(1).placement.in_region(&blob(i), "r2")))
            .find(|(_, n)| n == &[ME])
            .unwrap();
        b.add_manifest(&state.entry((1, 0), &[(i, 0b10)], 5));
        let t0 = Instant::now();
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            let started = b.start(4, now);
            assert_eq!(started.len(), 1);
            assert_eq!(b.start(4, now).len(), 0, "in flight already");
            let (_, wait) = b.failed(&blob(i), now);
            waits.push(wait.as_secs());
            assert_eq!(b.start(4, now + wait - Duration::from_millis(1)).len(), 0);
            assert_eq!(b.next_retry(), Some(now + wait));
            now += wait;
        }
        assert_eq!(waits, [2, 4, 8, 10, 10]);
        // A new holder elsewhere clears the backoff: tried at once.
        b.start(4, now);
        b.failed(&blob(i), now);
        b.clear_backoff(&blob(i));
        assert_eq!(b.next_retry(), None);
        assert_eq!(b.start(4, now).len(), 1);
        // Held here: r2 is complete (its lag is observed), r3 still misses the blob.
        assert_eq!(b.held(&blob(i)), Some(5));
        let view = b.view().unwrap();
        assert!(view["r2"].complete);
        assert_eq!(view["r3"].pending_blobs, 1);
        assert!(b.contains(&blob(i)));
    }

    /// Times the drain of `BENCH_PENDING` (default 100 000) pending blobs of one manifest
    /// each, half of them this node's, with 4 copies at once: per copy, what the worker does
    /// when one ends (held, view published twice, next copy started, next retry). Then the
    /// same with the bookkeeping as it was before the indexes ([`Reference`]: a scan of every
    /// pending blob per decision), for its first `BENCH_OLD_COPIES` (default 500) copies. A
    /// benchmark, not a test:
    /// `cargo test --release -p berth-node --lib drain_bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark"]
    fn drain_bench() {
        let var = |name: &str, default: usize| {
            std::env::var(name).map_or(default, |v| v.parse().expect("a number"))
        };
        let (p, old_copies) = (var("BENCH_PENDING", 100_000), var("BENCH_OLD_COPIES", 500));
        // Held in r1 and r2; missing on one of the two nodes of r3, this node or node 4.
        let plan = Plan {
            placement: Placement::new([(1, "r1"), (3, "r2"), (ME, "r3"), (4, "r3")], 1),
            policies: vec![],
        };
        let repo = RepositoryName::parse("bench/app").unwrap();
        // Built by inserts, as a walk builds it (a clone would be laid out better in memory).
        let walk = || {
            let mut tally = Tally::default();
            for i in 0..p as u32 {
                let entry = ManifestEntry {
                    repo: repo.clone(),
                    digest: Digest::sha256_of(&[&i.to_be_bytes()[..], b"m"].concat()),
                    created_ms: u64::from(i),
                    blobs: vec![(
                        Digest::sha256_of(&i.to_be_bytes()),
                        Some(BlobRecord {
                            size: 1000,
                            holders: BTreeSet::from([1, 3]),
                            first_seen_ms: 0,
                        }),
                    )],
                    children: vec![],
                };
                plan.add(&mut tally, &entry);
            }
            tally.pending
        };
        let view = std::sync::Mutex::new(BTreeMap::new());
        // Copies end in the order they started; returns the copies and the time taken.
        let drain = |first: Vec<(Digest, Pending)>,
                     limit: usize,
                     step: &mut dyn FnMut(&Digest) -> Vec<(Digest, Pending)>| {
            let mut queue: std::collections::VecDeque<Digest> =
                first.into_iter().map(|(d, _)| d).collect();
            let started = Instant::now();
            let mut copies = 0;
            while copies < limit {
                let Some(d) = queue.pop_front() else { break };
                queue.extend(step(&d).into_iter().map(|(d, _)| d));
                copies += 1;
            }
            (copies, started.elapsed())
        };
        let report = |what: &str, copies: usize, took: Duration| {
            println!(
                "{what}: pending {p}, {copies} copies in {:.3} s, {:.2} us/copy",
                took.as_secs_f64(),
                took.as_secs_f64() * 1e6 / copies as f64
            );
        };

        let mut r = Reference {
            plan: plan.clone(),
            pending: walk(),
            in_flight: HashSet::new(),
            backoff: HashMap::new(),
        };
        let mut b = Backlog::new(ME);
        let started = Instant::now();
        b.replace(plan.clone(), walk());
        println!(
            "backlog: rebuilt in {:.3} s",
            started.elapsed().as_secs_f64()
        );
        let mine = b.ready.len();
        let first = b.start(4, Instant::now());
        let (copies, took) = drain(first, usize::MAX, &mut |d| {
            std::hint::black_box(b.held(d));
            for _ in 0..2 {
                *view.lock().unwrap() = b.view().unwrap();
            }
            let started = b.start(4, Instant::now());
            std::hint::black_box(b.next_retry());
            started
        });
        assert_eq!(copies, mine);
        report("backlog", copies, took);

        let first = r.start(4, Instant::now());
        let (copies, took) = drain(first, old_copies, &mut |d| {
            r.in_flight.remove(d);
            r.backoff.remove(d);
            std::hint::black_box(r.held_by(d, &BTreeSet::from([ME])));
            for _ in 0..2 {
                *view.lock().unwrap() = per_region(&r.plan, &r.pending);
            }
            let now = Instant::now();
            let started = r.start(4, now);
            std::hint::black_box(r.next_retry(now));
            started
        });
        report("scan (before)", copies, took);
    }
}
