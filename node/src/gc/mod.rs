//! Garbage collection of blobs, online, on every node (docs/lifecycle.md, ADR 020).
//!
//! Owns: the [`Collector`], which decides what to collect, runs on a schedule on the Raft
//! leader and on demand on any node (`clusterctl gc run`), and keeps the report of the last
//! pass; and the [`reaper`], which removes this node's copies of the blobs the cluster
//! collected. A pass, in order: builds the reference counts if the cluster has none; applies
//! the retention policies of untagged manifests and ends the recycle windows that ended
//! (`lifecycle::retention`); then walks the unreferenced blobs whose grace has ended,
//! proposing [`CommandV1::CollectBlobs`] a batch at a time, paced. The blob candidates are
//! read after the deletes and purges, so the blobs those freed are collected in the same pass
//! once their grace (from the moment their last reference went) has passed. The reference
//! counts and the decision itself are state-machine work (`meta::gc`): applying
//! `CollectBlobs` re-checks every condition, so a pass may read a lagging state, run on two
//! nodes at once, or be cut short, and still never collects a blob that a manifest, an upload
//! or a client's HEAD saved in the meantime; likewise the state machine re-checks the locks
//! of retention's deletes and the end of each recycle window.
//!
//! Invariants:
//! - Only blobs with no reference and untouched for longer than the grace period (plus
//!   [`touch_slack`]) are proposed; the state machine collects only those still so.
//! - A node removes a blob file only while it holds the digest's lock and its state has no
//!   record of the blob (see `BlobStore::lock_digest`).

pub mod reaper;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::lifecycle::{Lifecycle, LifecycleError};
use crate::meta::{Command, CommandV1, NodeId, WriteResult};
use crate::registry::{Registry, RegistryError};
use crate::types::time::now_ms;

/// Seconds a starting leader tries to build missing reference counts (once a second).
const COUNT_ATTEMPTS: u32 = 30;

/// Candidates proposed in one `CollectBlobs` command at most.
const BATCH: usize = 256;

/// The longest a blob's repeated touches are skipped for (see [`touch_slack`]).
const MAX_TOUCH_SLACK: Duration = Duration::from_secs(60);

/// How long after a touch a HEAD does not touch the blob again: a tenth of the grace period,
/// at most a minute. The collector's cutoff leaves this much more than the grace, so a client
/// told "exists" has at least the whole grace period.
pub fn touch_slack(grace: Duration) -> Duration {
    (grace / 10).min(MAX_TOUCH_SLACK)
}

/// The garbage-collection settings (`[gc]` of the configuration).
#[derive(Debug, Clone, Copy)]
pub struct GcSettings {
    /// How long a blob stays after it was last referenced or touched.
    pub grace: Duration,
    /// Time between scheduled passes (on the leader); `None`: on demand only.
    pub interval: Option<Duration>,
    /// Blobs collected (and files removed by each reaper) per second at most.
    pub max_blobs_per_sec: u64,
}

/// What a pass did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// The pass's number on this node (from 1).
    pub id: u64,
    /// Whether it only looked.
    pub dry_run: bool,
    /// When it started and ended (ms since the epoch); `finished_ms` is `None` while it runs.
    pub started_ms: u64,
    /// When it ended.
    pub finished_ms: Option<u64>,
    /// Unreferenced blobs past their grace that it looked at.
    pub candidates: u64,
    /// Blobs collected (dry: that would be).
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Per node: blobs and bytes of the copies it holds of them (each node's reaper removes
    /// them).
    pub per_node: BTreeMap<NodeId, (u64, u64)>,
    /// Whether this pass built the reference counts first (a database from before GC).
    pub counted: bool,
    /// Untagged manifests deleted by retention policies (dry: that would be).
    pub retention_deleted: u64,
    /// Untagged manifests past their retention left because of a lock.
    pub retention_skipped: u64,
    /// Soft-deleted manifests whose recycle window ended, purged (dry: that would be).
    pub recycled_purged: u64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// Why a pass could not start.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// A pass is already running on this node.
    #[error("a garbage collection pass (#{0}) is already running on this node")]
    Running(u64),
}

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

impl From<crate::meta::MetaError> for PassError {
    fn from(e: crate::meta::MetaError) -> Self {
        PassError::Registry(e.into())
    }
}

impl From<crate::cluster::ClusterError> for PassError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        PassError::Registry(e.into())
    }
}

/// The clock of a pass: the wall clock, shifted forward by `ahead_ms` (0 outside tests).
#[derive(Debug, Clone, Copy)]
struct PassClock {
    ahead_ms: u64,
}

impl PassClock {
    /// The wall clock.
    const WALL: PassClock = PassClock { ahead_ms: 0 };

    /// The pass's "now", in ms since the epoch.
    fn now(&self) -> u64 {
        now_ms().saturating_add(self.ahead_ms)
    }
}

#[derive(Default)]
struct State {
    /// The pass running now or the last one.
    last: Option<GcReport>,
    running: bool,
    next_id: u64,
}

/// Decides what the cluster collects: see the module documentation.
pub struct Collector {
    registry: Arc<Registry>,
    settings: GcSettings,
    state: Mutex<State>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// A collector over this node's registry.
    pub fn new(registry: Arc<Registry>, settings: GcSettings) -> Arc<Collector> {
        Arc::new(Collector {
            registry,
            settings,
            state: Mutex::new(State::default()),
        })
    }

    /// Its settings.
    pub fn settings(&self) -> &GcSettings {
        &self.settings
    }

    /// The pass running now, or the last one (`None`: none since start).
    pub fn status(&self) -> Option<GcReport> {
        self.state.lock().expect("gc state").last.clone()
    }

    /// Starts a pass in the background and returns its number.
    ///
    /// Errors: [`GcError::Running`] while one runs.
    pub fn start(self: &Arc<Self>, dry_run: bool) -> Result<u64, GcError> {
        let id = self.begin(dry_run)?;
        let this = self.clone();
        tokio::spawn(async move { this.pass(dry_run, PassClock::WALL).await });
        Ok(id)
    }

    /// Runs a pass to its end and returns its report.
    ///
    /// Errors: [`GcError::Running`] while another one runs.
    pub async fn run(&self, dry_run: bool) -> Result<GcReport, GcError> {
        self.begin(dry_run)?;
        Ok(self.pass(dry_run, PassClock::WALL).await)
    }

    /// For tests: runs a pass to its end as [`Collector::run`] does, deciding as if the clock
    /// read `now_ms` when it started (and ran on from there), so that retention and recycle
    /// windows, which last days, can be tested. The time stamped on the deletes retention
    /// makes, and the pass's `started_ms` and `finished_ms`, stay on the wall clock. A time
    /// before now is now. Berth itself only calls [`Collector::run`] and
    /// [`Collector::start`].
    ///
    /// Errors: [`GcError::Running`] while another one runs.
    pub async fn run_at(&self, now_ms: u64, dry_run: bool) -> Result<GcReport, GcError> {
        let ahead_ms = now_ms.saturating_sub(crate::types::time::now_ms());
        self.begin(dry_run)?;
        Ok(self.pass(dry_run, PassClock { ahead_ms }).await)
    }

    /// Builds the reference counts once a leader is known, if this node leads and the
    /// cluster has none (so that namespace usage and quotas hold from the start); then runs
    /// passes every `interval` while this node leads, until `stop`.
    pub async fn run_scheduled(self: Arc<Self>, stop: CancellationToken) {
        for _ in 0..COUNT_ATTEMPTS {
            if self.registry.cluster().is_leader() {
                match ensure_counted(&self.registry).await {
                    Ok(()) => break,
                    Err(e) => tracing::debug!(error = %e, "failed to build the reference counts"),
                }
            } else if self.registry.cluster().has_leader() {
                // Another node leads: it builds them.
                break;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let Some(every) = self.settings.interval else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once: skip it (a restarted node does not collect first).
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.registry.cluster().is_leader() {
                continue;
            }
            match self.run(false).await {
                Ok(r) => tracing::info!(
                    blobs = r.blobs,
                    bytes = r.bytes,
                    retention_deleted = r.retention_deleted,
                    retention_skipped = r.retention_skipped,
                    recycled_purged = r.recycled_purged,
                    error = r.error.as_deref(),
                    "scheduled garbage collection pass ended"
                ),
                Err(e) => tracing::info!(reason = %e, "skipped a scheduled garbage collection"),
            }
        }
    }

    fn begin(&self, dry_run: bool) -> Result<u64, GcError> {
        let mut st = self.state.lock().expect("gc state");
        if st.running {
            return Err(GcError::Running(st.last.as_ref().map_or(0, |r| r.id)));
        }
        st.next_id += 1;
        st.running = true;
        st.last = Some(GcReport {
            id: st.next_id,
            dry_run,
            started_ms: now_ms(),
            ..GcReport::default()
        });
        Ok(st.next_id)
    }

    fn update(&self, f: impl FnOnce(&mut GcReport)) {
        let mut st = self.state.lock().expect("gc state");
        if let Some(r) = st.last.as_mut() {
            f(r);
        }
    }

    /// One pass, begun by [`Collector::begin`]: records its progress and its end.
    async fn pass(&self, dry_run: bool, clock: PassClock) -> GcReport {
        let res = self.collect(dry_run, clock).await;
        let mut st = self.state.lock().expect("gc state");
        st.running = false;
        let report = st.last.as_mut().expect("a pass was begun");
        report.finished_ms = Some(now_ms());
        if let Err(e) = res {
            report.error = Some(e.to_string());
        }
        report.clone()
    }

    async fn collect(&self, dry_run: bool, clock: PassClock) -> Result<(), PassError> {
        let meta = self.registry.meta();
        if !meta.refs_counted()? {
            if dry_run {
                return Err(RegistryError::Unavailable(
                    "the reference counts are not built yet: a pass that is not dry builds \
                     them first"
                        .into(),
                )
                .into());
            }
            ensure_counted(&self.registry).await?;
            self.update(|r| r.counted = true);
        }
        let lifecycle = Lifecycle::new(self.registry.clone());
        let retention = lifecycle.apply_retention(clock.now(), dry_run).await?;
        self.update(|r| {
            r.retention_deleted = retention.deleted;
            r.retention_skipped = retention.skipped;
        });
        let purged = lifecycle.end_recycle_windows(clock.now(), dry_run).await?;
        self.update(|r| r.recycled_purged = purged);
        // Read now, after the deletes and purges: the blobs whose last reference they dropped
        // (at their time) are candidates once the grace from then has passed.
        let grace = self.settings.grace + touch_slack(self.settings.grace);
        let cutoff_ms = clock.now().saturating_sub(grace.as_millis() as u64);
        let pace = Pace::new(self.settings.max_blobs_per_sec);
        let mut after = None;
        loop {
            let (page, next) = meta.gc_candidates(cutoff_ms, after, BATCH).await?;
            if page.is_empty() {
                return Ok(());
            }
            self.update(|r| r.candidates += page.len() as u64);
            if dry_run {
                self.update(|r| {
                    r.blobs += page.len() as u64;
                    r.bytes += page.iter().map(|c| c.size).sum::<u64>();
                });
            } else {
                let cmd = CommandV1::CollectBlobs {
                    digests: page.iter().map(|c| c.digest.clone()).collect(),
                    cutoff_ms,
                };
                let res = self.registry.cluster().write(Command::V1(cmd)).await?;
                if let WriteResult::Collected(blobs) = res {
                    self.update(|r| {
                        for b in &blobs {
                            r.blobs += 1;
                            r.bytes += b.size;
                            for h in &b.holders {
                                let e = r.per_node.entry(*h).or_default();
                                e.0 += 1;
                                e.1 += b.size;
                            }
                        }
                    });
                }
            }
            pace.after(page.len()).await;
            match next {
                Some(n) => after = Some(n),
                None => return Ok(()),
            }
        }
    }
}

/// Builds the reference counts (and namespace usage) if the cluster has none yet: a database
/// written before garbage collection existed, or a fresh one (`CountReferences`, once).
pub async fn ensure_counted(registry: &Registry) -> Result<(), crate::cluster::ClusterError> {
    let counted = registry.meta().refs_counted().unwrap_or(false);
    if !counted {
        let cmd = CommandV1::CountReferences { at_ms: now_ms() };
        registry.cluster().write(Command::V1(cmd)).await?;
    }
    Ok(())
}

/// Spaces batches so that at most `per_sec` items go per second on average.
pub(crate) struct Pace {
    per_sec: u64,
}

impl Pace {
    pub(crate) fn new(per_sec: u64) -> Pace {
        Pace {
            per_sec: per_sec.max(1),
        }
    }

    /// Waits as long as `n` items take at the pace.
    pub(crate) async fn after(&self, n: usize) {
        let wait = Duration::from_secs_f64(n as f64 / self.per_sec as f64);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
