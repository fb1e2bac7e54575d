//! The audit log: who logged in (or failed to), which tokens were issued, what was pushed and
//! deleted, which admin changes were made, and which addresses the network rules refused —
//! each with the time, the identity, the source address, and this node and region.
//!
//! Owns: the [`Audit`] handle every adapter records through, its writer task, retention
//! pruning, the JSON-lines export ([`json_line`]), and the `[audit]` settings
//! ([`AuditSettings`]). The records are stored by `meta::audit` (this node's `audit` column
//! family; never replicated, never in a snapshot). Knows nothing of HTTP or gRPC.
//!
//! Invariants:
//! - [`Audit::record`] never blocks and never fails a request: it puts the record in a
//!   bounded queue; when the queue is full the record is dropped and counted, and the writer
//!   stores a `dropped` record with the count before its next batch.
//! - The writer stores records in batches (one RocksDB write each), then appends the same
//!   batch to the export, one JSON object per line, and flushes once per batch.
//! - It ends when the last handle is gone, after storing what was queued.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::meta::MetaError;
pub use crate::meta::{AuditEvent, AuditQuery, AuditRecord, AuditStore, DeleteKind};
use crate::types::time::now_ms;
use crate::types::time::rfc3339_ms;

/// Records queued for the writer at most; more are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Records stored in one write at most.
const BATCH: usize = 256;
/// How often records older than the retention are deleted (also once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The most records one query returns.
pub const MAX_QUERY: usize = 10_000;

/// Where records are exported as JSON lines, besides the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// The node's standard output.
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

/// The audit settings (`[audit]` of the configuration) and who is recording.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Records older than this are deleted.
    pub retention: Duration,
    /// The export, if any.
    pub export: Option<Export>,
    /// Records queued at most before they are dropped.
    pub queue: usize,
    /// This node.
    pub node: u64,
    /// This node's region.
    pub region: String,
}

/// Records audit events; cheap to clone. See the module doc.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: records go nowhere ([`Audit::discard`]).
    tx: Option<mpsc::Sender<AuditRecord>>,
    store: Option<AuditStore>,
    counts: Arc<Counts>,
    node: u64,
    region: String,
}

/// Dropped records: since the writer last reported them, and in all.
#[derive(Default)]
struct Counts {
    unreported: AtomicU64,
    total: AtomicU64,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("node", &self.inner.node)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// Why the audit log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// This handle has no store ([`Audit::discard`]).
    #[error("this node keeps no audit log")]
    NoStore,
    /// The store failed.
    #[error("failed to read the audit log")]
    Store(#[from] MetaError),
}

impl AuditError {
    /// The broad class of the error: both are this node's own failure.
    pub fn kind(&self) -> crate::types::ErrorKind {
        crate::types::ErrorKind::Internal
    }
}

impl Audit {
    /// Starts the writer over `store` (on the current tokio runtime) and returns its handle.
    /// An export file that cannot be opened is logged and left out; the store still records.
    pub fn start(store: AuditStore, settings: AuditSettings) -> Audit {
        let (audit, writer) = Audit::with_writer(store, settings);
        tokio::spawn(writer.run());
        audit
    }

    /// A handle that records nothing and reads nothing: for callers with no store (tests of
    /// other modules).
    pub fn discard() -> Audit {
        Audit {
            inner: Arc::new(Inner {
                tx: None,
                store: None,
                counts: Arc::default(),
                node: 0,
                region: String::new(),
            }),
        }
    }

    /// The handle and its writer, not yet running.
    fn with_writer(store: AuditStore, settings: AuditSettings) -> (Audit, AuditWriter) {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let counts = Arc::new(Counts::default());
        let audit = Audit {
            inner: Arc::new(Inner {
                tx: Some(tx),
                store: Some(store.clone()),
                counts: counts.clone(),
                node: settings.node,
                region: settings.region.clone(),
            }),
        };
        let writer = AuditWriter {
            store,
            rx,
            counts,
            settings,
        };
        (audit, writer)
    }

    /// Records `event` by `identity` (`None`: anonymous) from `address`, stamped now with this
    /// node and region. Never blocks: a full queue drops the record (counted, logged once per
    /// run of drops).
    pub fn record(&self, identity: Option<&str>, address: Option<IpAddr>, event: AuditEvent) {
        let Some(tx) = &self.inner.tx else { return };
        let record = AuditRecord {
            time_ms: now_ms(),
            node: self.inner.node,
            region: self.inner.region.clone(),
            identity: identity.map(str::to_string),
            address,
            event,
        };
        if tx.try_send(record).is_err() {
            self.inner.counts.total.fetch_add(1, Ordering::Relaxed);
            if self.inner.counts.unreported.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    "failed to queue an audit record: the audit writer is behind; dropping records"
                );
            }
        }
    }

    /// Records an admin change (`what`: the call, e.g. `CreateUser`; `target`: what it
    /// changed; `outcome`: `ok` or why it failed).
    pub fn admin_change(
        &self,
        identity: &str,
        address: Option<IpAddr>,
        what: &str,
        target: &str,
        outcome: &str,
    ) {
        self.record(
            Some(identity),
            address,
            AuditEvent::AdminChange {
                what: what.to_string(),
                target: target.to_string(),
                outcome: outcome.to_string(),
            },
        );
    }

    /// Records dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.inner.counts.total.load(Ordering::Relaxed)
    }

    /// This node's records matching `q` (its limit capped at [`MAX_QUERY`]), oldest first.
    pub async fn query(&self, mut q: AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        let store = self.inner.store.as_ref().ok_or(AuditError::NoStore)?;
        q.limit = q.limit.min(MAX_QUERY);
        Ok(store.query(q).await?)
    }
}

/// A record as one JSON object (the export line and `clusterctl audit --json`): `time`
/// (RFC 3339, ms), `time_ms`, `node`, `region`, `identity` (null: anonymous), `address`
/// (null: unknown), `event`, then the event's own fields.
pub fn json_line(r: &AuditRecord) -> Value {
    let mut v = json!({
        "time": rfc3339_ms(r.time_ms),
        "time_ms": r.time_ms,
        "node": r.node,
        "region": r.region,
        "identity": r.identity,
        "address": r.address.map(|a| a.to_string()),
        "event": r.event.name(),
    });
    for (k, value) in r.event.fields() {
        v[k] = value.into();
    }
    v
}

/// The task that stores, exports and prunes.
struct AuditWriter {
    store: AuditStore,
    rx: mpsc::Receiver<AuditRecord>,
    counts: Arc<Counts>,
    settings: AuditSettings,
}

/// An open export.
type Sink = Box<dyn Write + Send>;

fn open_export(export: &Export) -> std::io::Result<Sink> {
    Ok(match export {
        Export::Stdout => Box::new(std::io::stdout()),
        Export::File(path) => Box::new(crate::meta::audit::open_export_file(path)?),
    })
}

impl AuditWriter {
    async fn run(mut self) {
        let mut sink = self
            .settings
            .export
            .as_ref()
            .and_then(|e| match open_export(e) {
                Ok(s) => Some(s),
                Err(error) => {
                    tracing::error!(?e, %error, "failed to open the audit export; records are only stored");
                    None
                }
            });
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                got = self.rx.recv() => {
                    let Some(first) = got else { break };
                    let batch = self.batch(first);
                    if let Err(e) = self.store.append(batch.clone()).await {
                        tracing::error!(error = %crate::error_chain(&e), records = batch.len(), "failed to store audit records");
                    }
                    sink = export(sink, batch).await;
                }
                _ = prune.tick() => {
                    let cutoff = now_ms().saturating_sub(self.settings.retention.as_millis() as u64);
                    if let Err(e) = self.store.prune(cutoff).await {
                        tracing::warn!(error = %crate::error_chain(&e), "failed to prune the audit log");
                    }
                }
            }
        }
    }

    /// `first` and what else is queued (up to [`BATCH`]), after a `dropped` record when
    /// records were dropped since the last batch.
    fn batch(&mut self, first: AuditRecord) -> Vec<AuditRecord> {
        let mut batch = Vec::with_capacity(16);
        let dropped = self.counts.unreported.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "audit records were dropped: the audit writer was behind"
            );
            batch.push(AuditRecord {
                time_ms: first.time_ms,
                node: self.settings.node,
                region: self.settings.region.clone(),
                identity: None,
                address: None,
                event: AuditEvent::Dropped { count: dropped },
            });
        }
        batch.push(first);
        while batch.len() < BATCH {
            match self.rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        batch
    }
}

/// Appends `batch` to the export as JSON lines and flushes (on the blocking pool); returns
/// the sink for the next batch. A failed write is logged; the sink is kept.
async fn export(sink: Option<Sink>, batch: Vec<AuditRecord>) -> Option<Sink> {
    let mut sink = sink?;
    let task = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::with_capacity(batch.len() * 256);
        for r in &batch {
            serde_json::to_writer(&mut lines, &json_line(r)).expect("json encodes");
            lines.push(b'\n');
        }
        let written = sink.write_all(&lines).and_then(|()| sink.flush());
        (sink, written)
    });
    match task.await {
        Ok((sink, written)) => {
            if let Err(e) = written {
                tracing::warn!(error = %e, "failed to export audit records");
            }
            Some(sink)
        }
        Err(e) => {
            tracing::error!(error = %e, "audit export task failed; export stopped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(export: Option<Export>, queue: usize) -> AuditSettings {
        AuditSettings {
            retention: Duration::from_secs(90 * 86_400),
            export,
            queue,
            node: 3,
            region: "eu".into(),
        }
    }

    fn push(tag: &str) -> AuditEvent {
        AuditEvent::Push {
            repository: "team/app".into(),
            digest: "sha256:abc".into(),
            tag: Some(tag.into()),
        }
    }

    fn all() -> AuditQuery {
        AuditQuery {
            since_ms: 0,
            identity: None,
            limit: 100,
        }
    }

    /// A full queue drops and counts; the writer then stores a `dropped` record before the
    /// queued ones, and exports every stored record as a JSON line.
    #[tokio::test]
    async fn a_full_queue_drops_counts_and_says_so_and_the_export_is_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, _, store, _) = crate::meta::open_closable(dir.path()).unwrap();
        let file = dir.path().join("audit.jsonl");
        let (audit, writer) =
            Audit::with_writer(store.clone(), settings(Some(Export::File(file.clone())), 2));
        let addr: IpAddr = "10.1.2.3".parse().unwrap();
        for i in 0..5 {
            audit.record(Some("ann"), Some(addr), push(&format!("v{i}")));
        }
        assert_eq!(audit.dropped(), 3);
        let running = tokio::spawn(writer.run());
        // The writer stores what was queued, then ends once the last handle is gone.
        drop(audit);
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the writer ends when the last handle is gone")
            .unwrap();
        let stored = store.query(all()).await.unwrap();
        let names: Vec<&str> = stored.iter().map(|r| r.event.name()).collect();
        assert_eq!(names, ["dropped", "push", "push"]);
        assert_eq!(stored[0].event, AuditEvent::Dropped { count: 3 });
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each export line is one JSON object"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["event"], "dropped");
        assert_eq!(lines[0]["count"], "3");
        assert_eq!(lines[1]["event"], "push");
        assert_eq!(lines[1]["tag"], "v0");
        assert_eq!(lines[2]["tag"], "v1");
        assert_eq!(lines[1]["identity"], "ann");
        assert_eq!(lines[1]["address"], "10.1.2.3");
        assert_eq!(lines[1]["node"], 3);
        assert_eq!(lines[1]["region"], "eu");
        assert!(lines[1]["time"].as_str().unwrap().ends_with('Z'));
    }

    /// Records reach the store through the writer; the query filters by identity.
    #[tokio::test]
    async fn recorded_events_are_stored_and_queried() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, _, store, _) = crate::meta::open_closable(dir.path()).unwrap();
        let audit = Audit::start(store, settings(None, QUEUE));
        audit.record(None, None, AuditEvent::LoginSucceeded);
        audit.admin_change("cluster", None, "PromoteNode", "node 4", "ok");
        let mut got = Vec::new();
        for _ in 0..200 {
            got = audit.query(all()).await.unwrap();
            if got.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].identity, None);
        assert_eq!(
            json_line(&got[1])["what"],
            "PromoteNode",
            "{}",
            json_line(&got[1])
        );
        let cluster = audit
            .query(AuditQuery {
                identity: Some("cluster".into()),
                ..all()
            })
            .await
            .unwrap();
        assert_eq!(cluster.len(), 1);
        assert!(Audit::discard().query(all()).await.is_err());
    }
}
