//! The replicator of this node: makes this node hold every blob the placement gives it.
//!
//! Its work is derived from the state machine, never kept in a queue of its own:
//! - a full pass walks every manifest (a page at a time, on the blocking pool) and collects
//!   each referenced blob some placement node does not hold yet. It runs at start, when the
//!   state machine says everything may have changed (membership or policy change, installed
//!   snapshot, lost notices), and every `full_pass_every`;
//! - between passes, the state machine's notices (a manifest stored or deleted, a blob record
//!   changed) update that view incrementally.
//!
//! So a restart, a partition or a week offline loses nothing: the work is recomputed from the
//! state, which Raft brings up to date. Blobs whose placement includes this node are copied
//! through `Registry::ensure_local_copy` (nearest holder, verified, crash-safe, recorded as
//! `BlobCopied`), at most `max_parallel` at once, with exponential backoff per failing blob.
//! Before a copy starts, the worker catches up with the leader (bounded) and checks that a
//! manifest still wants the blob, so an image deleted meanwhile — also one whose delete this
//! node learns only now, after a partition — is not copied.
//!
//! The pending view (every region's missing blobs, not only this node's) is kept in a
//! [`Backlog`], indexed so that each event — a copy ending, a notice, a round — costs
//! O(log P) for P pending blobs (only a full pass is O(P)), and published to
//! [`Replication::view`] for the metrics after every change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::meta::{MetaError, NodeId, Notice};
use crate::metrics::{Metrics, RegionLabels};
use crate::registry::{CopyFor, Registry};
use crate::types::Digest;
use crate::types::time::now_ms;

use super::pending::{BACKOFF_MIN, Backlog};
use super::{Pending, Replication};

/// Longest the worker waits at start for the first round trip to every peer (a probe answers
/// within a round trip, or fails within its 2 s timeout).
const FIRST_PROBES_WAIT: Duration = Duration::from_secs(3);
/// How long a copy waits to catch up with the leader before it re-checks that the blob is
/// still wanted (on failure it goes on with the local state).
const CATCH_UP: Duration = Duration::from_secs(3);
/// A catch-up this recent serves the copies that start after it (one ReadIndex round trip for
/// a burst of copies, not one per blob).
const CATCH_UP_FRESH: Duration = Duration::from_secs(1);

/// The last time this node caught up with the leader for its copies; copies that start
/// together share one catch-up.
#[derive(Debug, Default)]
struct CatchUp {
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl CatchUp {
    /// Catches up with the leader unless that was tried less than [`CATCH_UP_FRESH`] ago;
    /// bounded by [`CATCH_UP`]. A failure is not an error: the copy then goes on from local
    /// state (a node cut off from the leader may still reach a holder), and so do the copies
    /// that start within [`CATCH_UP_FRESH`] of it — they do not each wait out the bound in turn.
    async fn ensure(&self, replication: &Replication) {
        let mut last = self.last.lock().await;
        if last.is_some_and(|t| t.elapsed() < CATCH_UP_FRESH) {
            return;
        }
        let caught_up =
            tokio::time::timeout(CATCH_UP, replication.cluster().catch_up_with_leader()).await;
        if !matches!(caught_up, Ok(Ok(()))) {
            tracing::debug!(
                "failed to catch up with the leader before a copy; going on from local state"
            );
        }
        *last = Some(Instant::now());
    }
}

/// The replicator of this node.
pub struct ReplicationWorker {
    replication: Arc<Replication>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    me: NodeId,
    /// The pending blobs, this node's copies in flight and its backoffs.
    backlog: Backlog,
    /// The blob each copy task works on (to clear it if the task panicked).
    tasks: HashMap<tokio::task::Id, Digest>,
    last_full: Option<Instant>,
    resync: bool,
    catch_up: Arc<CatchUp>,
}

/// How one copy ended.
#[derive(Debug)]
enum Outcome {
    /// This node holds it now (it fetched a copy, or found one).
    Held,
    /// No manifest wants it any more: nothing was copied.
    NotWanted,
    /// The copy failed; tried again after a backoff.
    Failed(String),
}

impl ReplicationWorker {
    /// The replicator of the node `registry` serves.
    pub fn new(replication: Arc<Replication>, registry: Arc<Registry>) -> ReplicationWorker {
        let metrics = registry.metrics().clone();
        let me = registry.cluster().node_id();
        ReplicationWorker {
            replication,
            registry,
            metrics,
            me,
            backlog: Backlog::new(me),
            tasks: HashMap::new(),
            last_full: None,
            resync: true,
            catch_up: Arc::default(),
        }
    }

    /// Runs until `stop` is cancelled; copies in flight are then abandoned (a staging file
    /// left behind is removed at the next start).
    pub async fn run(mut self, stop: CancellationToken) {
        let mut copies: JoinSet<(Digest, Outcome)> = JoinSet::new();
        let notices = self.replication.meta().notices().clone();
        let every = self.replication.settings().full_pass_every;
        // The first copies go to the nearest holder only if the peers were measured first.
        tokio::select! {
            () = stop.cancelled() => return,
            () = self.replication.cluster().wait_for_first_probes(FIRST_PROBES_WAIT) => {}
        }
        loop {
            let taken = notices.take();
            self.resync |= taken.resync;
            let due = self.last_full.is_none_or(|t| t.elapsed() >= every);
            let work = if self.resync || due {
                self.resync = false;
                tokio::select! {
                    () = stop.cancelled() => break,
                    r = self.full_pass() => r,
                }
            } else {
                self.apply_notices(taken.notices).await
            };
            if let Err(e) = work {
                tracing::warn!(error = %e, "failed to compute replication work");
                // Try again from scratch on the next round.
                self.resync = true;
            }
            self.publish();
            self.dispatch(&mut copies);
            let next_full = self.last_full.map_or(Instant::now(), |t| t + every);
            let wake = self
                .next_retry()
                .map_or(next_full, |r| r.min(next_full))
                .max(Instant::now() + Duration::from_millis(10));
            let retry_soon = if self.resync {
                Instant::now() + BACKOFF_MIN
            } else {
                wake
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = notices.changed() => {}
                Some(done) = copies.join_next_with_id(), if !copies.is_empty() => {
                    match done {
                        Ok((id, (digest, outcome))) => {
                            self.tasks.remove(&id);
                            self.finished(digest, outcome);
                        }
                        Err(e) => {
                            if let Some(digest) = self.tasks.remove(&e.id()) {
                                self.finished(digest, Outcome::Failed(e.to_string()));
                            }
                        }
                    }
                }
                () = tokio::time::sleep_until(retry_soon.into()) => {}
            }
        }
        copies.abort_all();
    }

    /// Rebuilds the pending view from every manifest.
    async fn full_pass(&mut self) -> Result<(), MetaError> {
        let started = Instant::now();
        let plan = self.replication.plan().await?;
        let tally = self.replication.walk(&plan, None, false).await?;
        let mine = tally
            .pending
            .values()
            .filter(|p| p.missing.contains(&self.me))
            .count();
        tracing::info!(
            manifests = tally.manifests,
            pending = tally.pending.len(),
            mine,
            took_ms = started.elapsed().as_millis() as u64,
            "computed replication work"
        );
        // Backoffs of blobs no longer pending (held meanwhile, or no longer wanted) go.
        self.backlog.replace(plan, tally.pending);
        self.last_full = Some(Instant::now());
        Ok(())
    }

    /// Updates the pending view with what the state machine applied since the last round.
    async fn apply_notices(&mut self, notices: Vec<Notice>) -> Result<(), MetaError> {
        if self.backlog.plan().is_none() {
            self.resync = true;
            return Ok(());
        }
        let meta = self.replication.meta().clone();
        for n in notices {
            match n {
                Notice::Manifest { repo, digest } => {
                    match meta.manifest_entry(&repo, &digest).await? {
                        Some(entry) => self.backlog.add_manifest(&entry),
                        None => self.backlog.forget_manifest(&repo, &digest),
                    }
                }
                Notice::Blob(digest) => {
                    if !self.backlog.contains(&digest) {
                        continue;
                    }
                    // A new holder: its copy may now be near; retry at once.
                    self.backlog.clear_backoff(&digest);
                    if let Some(record) = meta.blob(&digest).await? {
                        let done = self.backlog.held_by(&digest, record.holders);
                        self.observe_lag(done);
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts copies of this node's pending blobs that are due, up to `max_parallel`.
    fn dispatch(&mut self, copies: &mut JoinSet<(Digest, Outcome)>) {
        let max = self.replication.settings().max_parallel;
        let due = self.backlog.start(max, Instant::now());
        for (digest, pending) in due {
            let (replication, registry) = (self.replication.clone(), self.registry.clone());
            let catch_up = self.catch_up.clone();
            let task = digest.clone();
            let handle = copies.spawn(async move {
                catch_up.ensure(&replication).await;
                let outcome = copy(&replication, &registry, &task, &pending).await;
                (task, outcome)
            });
            self.tasks.insert(handle.id(), digest);
        }
    }

    /// When the next of this node's blobs in backoff may be tried.
    fn next_retry(&self) -> Option<Instant> {
        self.backlog.next_retry()
    }

    fn finished(&mut self, digest: Digest, outcome: Outcome) {
        match outcome {
            Outcome::Held => {
                let done = self.backlog.held(&digest);
                self.observe_lag(done);
            }
            Outcome::NotWanted => self.backlog.not_wanted(&digest),
            Outcome::Failed(why) => {
                let (attempts, wait) = self.backlog.failed(&digest, Instant::now());
                tracing::warn!(%digest, attempts, retry_in_ms = wait.as_millis() as u64, error = %why, "failed to replicate blob");
            }
        }
        self.publish();
    }

    /// `done`: this node now holds a blob it was placed on and no other node of its region
    /// misses it, with the earliest push time of the manifests that want it; the time since
    /// is the region's lag for it.
    fn observe_lag(&self, done: Option<u64>) {
        let Some(oldest_ms) = done else {
            return;
        };
        let Some(region) = self
            .backlog
            .plan()
            .and_then(|plan| plan.placement.region_of(self.me))
        else {
            return;
        };
        let lag = now_ms().saturating_sub(oldest_ms) as f64 / 1000.0;
        self.metrics
            .replication_lag
            .get_or_create(&RegionLabels {
                region: region.to_string(),
            })
            .observe(lag);
    }

    fn publish(&self) {
        if let Some(view) = self.backlog.view() {
            self.replication.publish_view(view);
        }
    }
}

/// Copies one blob to this node, after checking that a manifest still wants it.
async fn copy(
    replication: &Replication,
    registry: &Registry,
    digest: &Digest,
    pending: &Pending,
) -> Outcome {
    // The caller caught up with the leader first: a delete the cluster committed while this
    // node was away is applied before the check below.
    let meta = replication.meta();
    if !pending.more {
        let mut wanted = false;
        for (repo, manifest) in &pending.wanted_by {
            match meta.manifest(repo, manifest).await {
                Ok(Some(_)) => {
                    wanted = true;
                    break;
                }
                Ok(None) => {}
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        }
        if !wanted {
            tracing::info!(%digest, "skipped a blob copy: no manifest wants it any more");
            return Outcome::NotWanted;
        }
    }
    // The fetch counts the bytes per pair of nodes (`registry/fetch.rs`), for every copy.
    match registry.ensure_local_copy(digest, CopyFor::Placement).await {
        Ok(()) => Outcome::Held,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The metrics hook: copies the replicator's last view into the pending gauges.
pub fn register_metrics(replication: Arc<Replication>, metrics: &Metrics) {
    let seen = std::sync::Mutex::new(BTreeMap::<String, ()>::new());
    metrics.on_scrape(move |m| {
        let view = replication.view();
        let mut seen = seen.lock().expect("metrics regions lock");
        // A region no longer in the view reads 0, not its last value.
        for region in seen.keys() {
            if !view.contains_key(region) {
                let l = RegionLabels {
                    region: region.clone(),
                };
                m.replication_pending_blobs.get_or_create(&l).set(0);
                m.replication_pending_bytes.get_or_create(&l).set(0);
            }
        }
        for (region, s) in &view {
            let l = RegionLabels {
                region: region.clone(),
            };
            m.replication_pending_blobs
                .get_or_create(&l)
                .set(s.pending_blobs as i64);
            m.replication_pending_bytes
                .get_or_create(&l)
                .set(s.pending_bytes as i64);
            seen.insert(region.clone(), ());
        }
    });
}
