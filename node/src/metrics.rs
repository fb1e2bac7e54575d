//! This node's Prometheus metrics, served as text at `GET /metrics` on the registry port.
//!
//! One [`Metrics`] per node, made by the composition root and shared (`Arc`). It holds the
//! metric families (every name `berth_…`; the reference is `docs/observability.md`); a
//! component either updates its families as things happen (counters, histograms), or — for a
//! view it keeps anyway, such as peer round-trip times, Raft's state or the blob store's
//! totals — registers a refresh hook ([`Metrics::on_scrape`]) that copies that view into
//! gauges when a scrape arrives, so nothing is computed between scrapes.
//!
//! Invariants:
//! - Labels are bounded: node ids, regions, webhook names and fixed words ([`HttpRoute`],
//!   [`HttpMethod`], status codes, outcomes); never repository names, digests or client
//!   addresses.
//! - The per-request path ([`HttpMetrics`], `http.rs`) allocates nothing and takes no lock:
//!   its labels are `Copy` enums and a `u16` indexing dense arrays of counters, kept per
//!   thread in shards that a scrape sums, so a request costs a few relaxed atomic additions
//!   on cache lines no other core writes.
//! - A refresh hook is cheap: it reads memory, a few RocksDB properties or a `/proc` file;
//!   it never walks the blob store.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

mod http;

pub use http::{HttpMetrics, InFlight};

/// Labels naming a region.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    /// Region name.
    pub region: String,
}

/// Labels naming a peer node (by id) and its region.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's node id.
    pub peer: u64,
    /// The peer's region.
    pub region: String,
}

/// Labels naming the two ends of a transfer between nodes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PairLabels {
    /// Node id the bytes came from.
    pub from: u64,
    /// Node id they went to.
    pub to: u64,
}

/// Labels naming where a read-through copy came from.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Region of the node the bytes came from.
    pub source_region: String,
}

/// Labels of the node-identity series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// This node's id.
    pub node: u64,
    /// Its region.
    pub region: String,
    /// Its zone.
    pub zone: String,
}

/// Writes a fixed word as a label value.
fn word(encoder: &mut LabelValueEncoder, w: &str) -> Result<(), std::fmt::Error> {
    std::fmt::Write::write_str(encoder, w)
}

/// The endpoint class of an HTTP request: a fixed word, so that the label stays bounded
/// whatever the path names.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum HttpRoute {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags,
    /// `/v2/<name>/manifests/<reference>`
    Manifest,
    /// `/v2/<name>/blobs/<digest>`
    Blob,
    /// `/v2/<name>/blobs/uploads/[<id>]`
    Upload,
    /// `/v2/<name>/referrers/<digest>`
    Referrers,
    /// `/auth/token`
    Token,
    /// `/metrics`
    Metrics,
    /// `/healthz`, `/readyz`
    Health,
    /// Anything else (answered 404).
    Other,
}

impl HttpRoute {
    /// Every route, in index order.
    pub const ALL: [HttpRoute; 11] = [
        HttpRoute::Base,
        HttpRoute::Catalog,
        HttpRoute::Tags,
        HttpRoute::Manifest,
        HttpRoute::Blob,
        HttpRoute::Upload,
        HttpRoute::Referrers,
        HttpRoute::Token,
        HttpRoute::Metrics,
        HttpRoute::Health,
        HttpRoute::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpRoute::Base => "base",
            HttpRoute::Catalog => "catalog",
            HttpRoute::Tags => "tags",
            HttpRoute::Manifest => "manifest",
            HttpRoute::Blob => "blob",
            HttpRoute::Upload => "upload",
            HttpRoute::Referrers => "referrers",
            HttpRoute::Token => "token",
            HttpRoute::Metrics => "metrics",
            HttpRoute::Health => "health",
            HttpRoute::Other => "other",
        }
    }
}

impl EncodeLabelValue for HttpRoute {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        word(encoder, self.as_str())
    }
}

/// The method of an HTTP request, as a fixed word.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum HttpMethod {
    /// GET
    Get,
    /// HEAD
    Head,
    /// PUT
    Put,
    /// POST
    Post,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// Any other method.
    Other,
}

impl HttpMethod {
    /// Every method, in index order.
    pub const ALL: [HttpMethod; 7] = [
        HttpMethod::Get,
        HttpMethod::Head,
        HttpMethod::Put,
        HttpMethod::Post,
        HttpMethod::Patch,
        HttpMethod::Delete,
        HttpMethod::Other,
    ];

    /// The class of an HTTP method.
    pub fn of(method: &::http::Method) -> HttpMethod {
        match *method {
            ::http::Method::GET => HttpMethod::Get,
            ::http::Method::HEAD => HttpMethod::Head,
            ::http::Method::PUT => HttpMethod::Put,
            ::http::Method::POST => HttpMethod::Post,
            ::http::Method::PATCH => HttpMethod::Patch,
            ::http::Method::DELETE => HttpMethod::Delete,
            _ => HttpMethod::Other,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Put => "PUT",
            HttpMethod::Post => "POST",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Other => "OTHER",
        }
    }
}

impl EncodeLabelValue for HttpMethod {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        word(encoder, self.as_str())
    }
}

/// Labels of `berth_http_requests_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The endpoint class.
    pub route: HttpRoute,
    /// The method.
    pub method: HttpMethod,
    /// The response status code.
    pub status: u16,
}

/// Labels of `berth_http_request_duration_seconds`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRouteMethodLabels {
    /// The endpoint class.
    pub route: HttpRoute,
    /// The method.
    pub method: HttpMethod,
}

/// Labels of the HTTP byte counters.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRouteLabels {
    /// The endpoint class.
    pub route: HttpRoute,
}

/// How a metadata write proposed through [`crate::cluster::Cluster::write`] ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ProposalOutcome {
    /// Committed and applied.
    Ok,
    /// Committed, and applying it changed nothing (`WriteResult::Rejected`).
    Rejected,
    /// Not committed (no quorum, disk full, Raft stopped).
    Error,
}

impl EncodeLabelValue for ProposalOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        word(
            encoder,
            match self {
                ProposalOutcome::Ok => "ok",
                ProposalOutcome::Rejected => "rejected",
                ProposalOutcome::Error => "error",
            },
        )
    }
}

/// Labels of `berth_raft_proposals_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProposalLabels {
    /// How the proposal ended.
    pub outcome: ProposalOutcome,
}

/// How a webhook delivery ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Success,
    /// It did not (an error status, no answer, a timeout).
    Failure,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        word(
            encoder,
            match self {
                Outcome::Success => "success",
                Outcome::Failure => "failure",
            },
        )
    }
}

/// Labels naming a webhook.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The webhook's name.
    pub webhook: String,
}

/// Labels naming a webhook and how a delivery ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookOutcomeLabels {
    /// The webhook's name.
    pub webhook: String,
    /// How the delivery ended.
    pub outcome: Outcome,
}

type Hook = Box<dyn Fn(&Metrics) + Send + Sync>;

/// A gauge of fractional values.
pub type FloatGauge = Gauge<f64, AtomicU64>;
/// A counter of fractional values.
pub type FloatCounter = Counter<f64, AtomicU64>;

/// The metric families of one node.
pub struct Metrics {
    registry: Registry,
    hooks: Mutex<Vec<Hook>>,
    /// `berth_node_info{node,region,zone}`: 1, naming this node.
    pub node_info: Family<NodeLabels, Gauge>,
    /// `berth_replication_pending_blobs{region}`: blobs the placement wants in the region
    /// that no node there holds yet, as this node sees them.
    pub replication_pending_blobs: Family<RegionLabels, Gauge>,
    /// `berth_replication_pending_bytes{region}`: their bytes.
    pub replication_pending_bytes: Family<RegionLabels, Gauge>,
    /// `berth_replication_bytes_total{from,to}`: blob bytes copied between nodes (counted by
    /// the receiving node, for replication, read-through and durability copies alike).
    pub replication_bytes: Family<PairLabels, Counter>,
    /// `berth_replication_lag_seconds{region}`: from a manifest's acknowledgement to every
    /// blob it references being held in the region (observed by the node that completes it).
    pub replication_lag: Family<RegionLabels, Histogram>,
    /// `berth_read_through_fetches_total{source_region}`: blobs fetched from a peer to serve
    /// a client request.
    pub read_through_fetches: Family<SourceLabels, Counter>,
    /// `berth_scrub_checked_total`: local blob copies re-hashed by the scrubber.
    pub scrub_checked: Counter,
    /// `berth_scrub_repairs_total`: corrupt or missing local copies repaired from a peer.
    pub scrub_repairs: Counter,
    /// `berth_peer_rtt_seconds{peer,region}`: smoothed round-trip time to each peer.
    pub peer_rtt: Family<PeerLabels, FloatGauge>,
    /// `berth_peer_up{peer,region}`: 1 when the last probe of the peer answered.
    pub peer_up: Family<PeerLabels, Gauge>,

    /// The HTTP request families (`berth_http_requests_total{route,method,status}`,
    /// `berth_http_request_duration_seconds{route,method}`: from a request's arrival to its
    /// response headers, `berth_http_received_bytes_total{route}`,
    /// `berth_http_sent_bytes_total{route}`, `berth_http_requests_in_flight`): see [`http`].
    pub http: Arc<HttpMetrics>,
    /// `berth_uploads_in_progress`: open upload sessions on this node.
    pub uploads_in_progress: Gauge,

    /// `berth_blobstore_bytes`: bytes of the blob files on this node.
    pub blobstore_bytes: Gauge,
    /// `berth_blobstore_files`: blob files on this node.
    pub blobstore_files: Gauge,
    /// `berth_disk_free_bytes`: bytes an unprivileged writer may still write on the data
    /// directory's file system.
    pub disk_free_bytes: Gauge,
    /// `berth_disk_total_bytes`: size of that file system.
    pub disk_total_bytes: Gauge,
    /// `berth_rocksdb_size_bytes`: SST files and memtables of the metadata database.
    pub rocksdb_size_bytes: Gauge,
    /// `berth_rocksdb_compaction_pending_bytes`: RocksDB's estimate of the bytes compaction
    /// has to rewrite.
    pub rocksdb_compaction_pending_bytes: Gauge,
    /// `berth_rocksdb_compaction_pending`: 1 while a compaction is pending.
    pub rocksdb_compaction_pending: Gauge,

    /// `berth_raft_term`: the current term.
    pub raft_term: Gauge,
    /// `berth_raft_leader_id`: the leader this node knows of (0: none).
    pub raft_leader_id: Gauge,
    /// `berth_raft_is_leader`: 1 on the leader.
    pub raft_is_leader: Gauge,
    /// `berth_raft_last_log_index`: index of this node's last log entry.
    pub raft_last_log_index: Gauge,
    /// `berth_raft_committed_index`: the last index this node knows to be committed.
    pub raft_committed_index: Gauge,
    /// `berth_raft_applied_index`: the last index applied to this node's state.
    pub raft_applied_index: Gauge,
    /// `berth_raft_apply_lag`: last log index − applied index, in entries.
    pub raft_apply_lag: Gauge,
    /// `berth_raft_voters`: voters in the membership this node knows.
    pub raft_voters: Gauge,
    /// `berth_raft_proposals_total{outcome}`: metadata writes entered at this node.
    pub raft_proposals: Family<ProposalLabels, Counter>,
    /// `berth_raft_snapshot_bytes`: size of the last snapshot this node built or installed.
    pub raft_snapshot_bytes: Gauge,

    /// `berth_webhook_deliveries_total{webhook,outcome}`: delivery attempts.
    pub webhook_deliveries: Family<WebhookOutcomeLabels, Counter>,
    /// `berth_webhook_delivery_duration_seconds{webhook}`: time of a delivery attempt.
    pub webhook_delivery_duration: Family<WebhookLabels, Histogram>,
    /// `berth_webhook_backlog_events{webhook}`: events past each enabled webhook's committed
    /// cursor (set by the Raft leader only).
    pub webhook_backlog: Family<WebhookLabels, Gauge>,

    /// `berth_process_resident_memory_bytes`
    pub process_resident_memory: Gauge,
    /// `berth_process_open_fds`
    pub process_open_fds: Gauge,
    /// `berth_process_max_fds`: the soft limit on open files.
    pub process_max_fds: Gauge,
    /// `berth_process_cpu_seconds_total`: user and system CPU time.
    pub process_cpu_seconds: FloatCounter,
    /// `berth_process_start_time_seconds`: since the Unix epoch.
    pub process_start_time: FloatGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Buckets of the replication lag histogram, in seconds: 10 ms to about 20 min.
fn lag_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 2.0, 18)
}

/// Buckets of the webhook delivery histogram, in seconds: 5 ms to about 40 s.
fn webhook_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 2.0, 14)
}

/// Registers a metric with a help text (and a unit, when given) under its name.
macro_rules! register {
    ($registry:ident, $name:literal, $help:literal, $metric:expr) => {
        $registry.register($name, $help, $metric.clone())
    };
    ($registry:ident, $name:literal, $help:literal, $unit:expr, $metric:expr) => {
        $registry.register_with_unit($name, $help, $unit, $metric.clone())
    };
}

impl Metrics {
    /// The families of node `node` in `region`/`zone`, registered and empty.
    pub fn new(node: u64, region: &str, zone: &str) -> Arc<Metrics> {
        let mut r = Registry::with_prefix("berth");
        let m = Metrics {
            registry: Registry::default(),
            hooks: Mutex::default(),
            node_info: Family::default(),
            replication_pending_blobs: Family::default(),
            replication_pending_bytes: Family::default(),
            replication_bytes: Family::default(),
            replication_lag: Family::new_with_constructor(|| Histogram::new(lag_buckets())),
            read_through_fetches: Family::default(),
            scrub_checked: Counter::default(),
            scrub_repairs: Counter::default(),
            peer_rtt: Family::default(),
            peer_up: Family::default(),
            http: Arc::default(),
            uploads_in_progress: Gauge::default(),
            blobstore_bytes: Gauge::default(),
            blobstore_files: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            disk_total_bytes: Gauge::default(),
            rocksdb_size_bytes: Gauge::default(),
            rocksdb_compaction_pending_bytes: Gauge::default(),
            rocksdb_compaction_pending: Gauge::default(),
            raft_term: Gauge::default(),
            raft_leader_id: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_committed_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_apply_lag: Gauge::default(),
            raft_voters: Gauge::default(),
            raft_proposals: Family::default(),
            raft_snapshot_bytes: Gauge::default(),
            webhook_deliveries: Family::default(),
            webhook_delivery_duration: Family::new_with_constructor(|| {
                Histogram::new(webhook_buckets())
            }),
            webhook_backlog: Family::default(),
            process_resident_memory: Gauge::default(),
            process_open_fds: Gauge::default(),
            process_max_fds: Gauge::default(),
            process_cpu_seconds: FloatCounter::default(),
            process_start_time: FloatGauge::default(),
        };
        register!(
            r,
            "node_info",
            "This node's id, region and zone",
            m.node_info
        );
        register!(
            r,
            "replication_pending_blobs",
            "Blobs the placement wants in a region that no node there holds yet",
            m.replication_pending_blobs
        );
        register!(
            r,
            "replication_pending_bytes",
            "Bytes of the blobs pending in a region",
            m.replication_pending_bytes
        );
        register!(
            r,
            "replication_bytes",
            "Blob bytes copied from one node to another, counted by the receiver",
            m.replication_bytes
        );
        register!(
            r,
            "replication_lag",
            "Time from a manifest's acknowledgement to its blobs being held in a region",
            Unit::Seconds,
            m.replication_lag
        );
        register!(
            r,
            "read_through_fetches",
            "Blobs fetched from a peer to serve a client request, by the peer's region",
            m.read_through_fetches
        );
        register!(
            r,
            "scrub_checked",
            "Local blob copies re-hashed by the scrubber",
            m.scrub_checked
        );
        register!(
            r,
            "scrub_repairs",
            "Corrupt or missing local blob copies repaired from a peer",
            m.scrub_repairs
        );
        register!(
            r,
            "peer_rtt",
            "Smoothed round-trip time to a peer",
            Unit::Seconds,
            m.peer_rtt
        );
        register!(
            r,
            "peer_up",
            "Whether the last probe of a peer answered",
            m.peer_up
        );
        r.register_collector(Box::new(http::HttpCollector(m.http.clone())));
        register!(
            r,
            "uploads_in_progress",
            "Open upload sessions on this node",
            m.uploads_in_progress
        );
        register!(
            r,
            "blobstore",
            "Bytes of the blob files on this node",
            Unit::Bytes,
            m.blobstore_bytes
        );
        register!(
            r,
            "blobstore_files",
            "Blob files on this node",
            m.blobstore_files
        );
        register!(
            r,
            "disk_free",
            "Bytes still writable on the data directory's file system",
            Unit::Bytes,
            m.disk_free_bytes
        );
        register!(
            r,
            "disk_total",
            "Size of the data directory's file system",
            Unit::Bytes,
            m.disk_total_bytes
        );
        register!(
            r,
            "rocksdb_size",
            "SST files and memtables of the metadata database",
            Unit::Bytes,
            m.rocksdb_size_bytes
        );
        register!(
            r,
            "rocksdb_compaction_pending",
            "Bytes the metadata database's compactions have to rewrite (estimate)",
            Unit::Bytes,
            m.rocksdb_compaction_pending_bytes
        );
        register!(
            r,
            "rocksdb_compaction_pending",
            "Whether a compaction of the metadata database is pending",
            m.rocksdb_compaction_pending
        );
        register!(r, "raft_term", "The current Raft term", m.raft_term);
        register!(
            r,
            "raft_leader_id",
            "The Raft leader this node knows of (0: none)",
            m.raft_leader_id
        );
        register!(
            r,
            "raft_is_leader",
            "Whether this node leads",
            m.raft_is_leader
        );
        register!(
            r,
            "raft_last_log_index",
            "Index of this node's last Raft log entry",
            m.raft_last_log_index
        );
        register!(
            r,
            "raft_committed_index",
            "The last Raft log index this node knows to be committed",
            m.raft_committed_index
        );
        register!(
            r,
            "raft_applied_index",
            "The last Raft log index applied to this node's state",
            m.raft_applied_index
        );
        register!(
            r,
            "raft_apply_lag",
            "Raft log entries this node holds but has not applied",
            m.raft_apply_lag
        );
        register!(
            r,
            "raft_voters",
            "Voters in the membership this node knows",
            m.raft_voters
        );
        register!(
            r,
            "raft_proposals",
            "Metadata writes entered at this node, by outcome",
            m.raft_proposals
        );
        register!(
            r,
            "raft_snapshot",
            "Size of the last Raft snapshot this node built or installed",
            Unit::Bytes,
            m.raft_snapshot_bytes
        );
        register!(
            r,
            "webhook_deliveries",
            "Webhook delivery attempts, by outcome",
            m.webhook_deliveries
        );
        register!(
            r,
            "webhook_delivery_duration",
            "Time of a webhook delivery attempt",
            Unit::Seconds,
            m.webhook_delivery_duration
        );
        register!(
            r,
            "webhook_backlog_events",
            "Events recorded past an enabled webhook's committed cursor (on the Raft leader)",
            m.webhook_backlog
        );
        register!(
            r,
            "process_resident_memory",
            "Resident memory of the process",
            Unit::Bytes,
            m.process_resident_memory
        );
        register!(
            r,
            "process_open_fds",
            "Open file descriptors",
            m.process_open_fds
        );
        register!(
            r,
            "process_max_fds",
            "The limit on open file descriptors",
            m.process_max_fds
        );
        register!(
            r,
            "process_cpu",
            "User and system CPU time of the process",
            Unit::Seconds,
            m.process_cpu_seconds
        );
        register!(
            r,
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            m.process_start_time
        );
        m.node_info
            .get_or_create(&NodeLabels {
                node,
                region: region.to_string(),
                zone: zone.to_string(),
            })
            .set(1);
        let m = Metrics { registry: r, ..m };
        if let Some(start) = process::start_time() {
            m.process_start_time.set(start);
        }
        m.on_scrape(process::refresh);
        Arc::new(m)
    }

    /// Registers `hook` to run at every scrape, before the text is rendered: it copies a view
    /// its component keeps into gauges.
    pub fn on_scrape(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.hooks
            .lock()
            .expect("metrics hooks poisoned")
            .push(Box::new(hook));
    }

    /// Runs the refresh hooks, then renders every family in the Prometheus text format.
    pub fn render(&self) -> String {
        for hook in self.hooks.lock().expect("metrics hooks poisoned").iter() {
            hook(self);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Sets a gauge from an unsigned count (saturating at `i64::MAX`).
pub fn set_u64(gauge: &Gauge, v: u64) {
    gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
}

/// The process's own statistics, read from `/proc/self` at each scrape (Linux; elsewhere the
/// gauges stay 0).
mod process {
    use super::{Metrics, set_u64};

    /// Clock ticks per second and page size.
    fn ticks_per_sec() -> f64 {
        // SAFETY: sysconf reads a constant of the system; no memory is passed.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 { t as f64 } else { 100.0 }
    }

    /// The fields after the command name of `/proc/self/stat` (the name may hold spaces and
    /// parentheses: it ends at the last `)`), so field `n` of proc(5) is `[n - 3]`.
    fn stat_fields(text: &str) -> Option<Vec<&str>> {
        let (_, rest) = text.rsplit_once(')')?;
        Some(rest.split_whitespace().collect())
    }

    /// User + system CPU seconds from `/proc/self/stat` text.
    pub(super) fn cpu_seconds(stat: &str) -> Option<f64> {
        let f = stat_fields(stat)?;
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / ticks_per_sec())
    }

    /// `VmRSS` in bytes from `/proc/self/status` text.
    pub(super) fn rss_bytes(status: &str) -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// The soft limit of "Max open files" from `/proc/self/limits` text.
    pub(super) fn max_fds(limits: &str) -> Option<u64> {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// When the process started, in seconds since the Unix epoch: the boot time
    /// (`/proc/stat` `btime`) plus the start in ticks after boot (`/proc/self/stat` field 22).
    pub(super) fn start_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let ticks: u64 = stat_fields(&stat)?.get(19)?.parse().ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: u64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(btime as f64 + ticks as f64 / ticks_per_sec())
    }

    /// Copies the process's statistics into its gauges.
    pub(super) fn refresh(m: &Metrics) {
        if let Some(cpu) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| cpu_seconds(&s))
        {
            // A counter set from the kernel's total: add what it grew by since the last
            // scrape (hooks run one at a time).
            let seen = m.process_cpu_seconds.get();
            if cpu > seen {
                m.process_cpu_seconds.inc_by(cpu - seen);
            }
        }
        if let Some(rss) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| rss_bytes(&s))
        {
            set_u64(&m.process_resident_memory, rss);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Less the descriptor of the listing itself.
            set_u64(&m.process_open_fds, (dir.count() as u64).saturating_sub(1));
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| max_fds(&s))
        {
            set_u64(&m.process_max_fds, max);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn renders_prefixed_families_and_runs_hooks() {
        let m = Metrics::new(3, "eu", "a");
        m.on_scrape(|m| {
            m.replication_pending_blobs
                .get_or_create(&RegionLabels {
                    region: "us".to_string(),
                })
                .set(7);
        });
        m.replication_bytes
            .get_or_create(&PairLabels { from: 1, to: 3 })
            .inc_by(42);
        m.replication_lag
            .get_or_create(&RegionLabels {
                region: "us".to_string(),
            })
            .observe(0.3);
        let text = m.render();
        assert!(
            text.contains("berth_node_info{node=\"3\",region=\"eu\",zone=\"a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_replication_pending_blobs{region=\"us\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("berth_replication_bytes_total{from=\"1\",to=\"3\"} 42"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE berth_replication_lag_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("berth_replication_lag_seconds_count{region=\"us\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn http_requests_are_counted_by_route_method_and_status() {
        let m = Metrics::new(1, "eu", "a");
        for _ in 0..3 {
            m.http.done(
                HttpRoute::Manifest,
                HttpMethod::Get,
                200,
                Duration::from_millis(2),
            );
        }
        m.http
            .done(HttpRoute::Other, HttpMethod::Get, 404, Duration::ZERO);
        // A status outside the common ones is counted too.
        m.http
            .done(HttpRoute::Other, HttpMethod::Other, 418, Duration::ZERO);
        m.http
            .done(HttpRoute::Other, HttpMethod::Other, 418, Duration::ZERO);
        m.http.received(HttpRoute::Upload, 10);
        m.http.received(HttpRoute::Upload, 5);
        m.http.sent(HttpRoute::Manifest, 7);
        let _in_flight = m.http.start();
        let text = m.render();
        for line in [
            "berth_http_requests_total{route=\"manifest\",method=\"GET\",status=\"200\"} 3",
            "berth_http_requests_total{route=\"other\",method=\"GET\",status=\"404\"} 1",
            "berth_http_requests_total{route=\"other\",method=\"OTHER\",status=\"418\"} 2",
            "berth_http_request_duration_seconds_count{route=\"manifest\",method=\"GET\"} 3",
            "berth_http_request_duration_seconds_sum{route=\"manifest\",method=\"GET\"} 0.006",
            "berth_http_request_duration_seconds_bucket{le=\"0.001\",route=\"manifest\",method=\"GET\"} 0",
            "berth_http_request_duration_seconds_bucket{le=\"0.002\",route=\"manifest\",method=\"GET\"} 3",
            "berth_http_received_bytes_total{route=\"upload\"} 15",
            "berth_http_sent_bytes_total{route=\"manifest\"} 7",
            "berth_http_requests_in_flight 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        // Only series that were used appear.
        assert!(!text.contains("route=\"catalog\""), "{text}");
    }

    #[test]
    fn every_contracted_name_is_registered_with_its_type() {
        let m = Metrics::new(1, "eu", "a");
        let proposal = |outcome| {
            m.raft_proposals
                .get_or_create(&ProposalLabels { outcome })
                .inc();
        };
        proposal(ProposalOutcome::Ok);
        proposal(ProposalOutcome::Rejected);
        proposal(ProposalOutcome::Rejected);
        let hook = WebhookLabels {
            webhook: "ci".to_string(),
        };
        m.webhook_deliveries
            .get_or_create(&WebhookOutcomeLabels {
                webhook: "ci".to_string(),
                outcome: Outcome::Failure,
            })
            .inc();
        m.webhook_delivery_duration
            .get_or_create(&hook)
            .observe(0.1);
        m.webhook_backlog.get_or_create(&hook).set(4);
        let text = m.render();
        for (name, kind) in [
            ("berth_http_requests", "counter"),
            ("berth_http_request_duration_seconds", "histogram"),
            ("berth_http_received_bytes", "counter"),
            ("berth_http_sent_bytes", "counter"),
            ("berth_http_requests_in_flight", "gauge"),
            ("berth_uploads_in_progress", "gauge"),
            ("berth_blobstore_bytes", "gauge"),
            ("berth_blobstore_files", "gauge"),
            ("berth_disk_free_bytes", "gauge"),
            ("berth_disk_total_bytes", "gauge"),
            ("berth_rocksdb_size_bytes", "gauge"),
            ("berth_rocksdb_compaction_pending_bytes", "gauge"),
            ("berth_rocksdb_compaction_pending", "gauge"),
            ("berth_raft_term", "gauge"),
            ("berth_raft_leader_id", "gauge"),
            ("berth_raft_is_leader", "gauge"),
            ("berth_raft_last_log_index", "gauge"),
            ("berth_raft_committed_index", "gauge"),
            ("berth_raft_applied_index", "gauge"),
            ("berth_raft_apply_lag", "gauge"),
            ("berth_raft_voters", "gauge"),
            ("berth_raft_proposals", "counter"),
            ("berth_raft_snapshot_bytes", "gauge"),
            ("berth_webhook_deliveries", "counter"),
            ("berth_webhook_delivery_duration_seconds", "histogram"),
            ("berth_webhook_backlog_events", "gauge"),
            ("berth_process_resident_memory_bytes", "gauge"),
            ("berth_process_open_fds", "gauge"),
            ("berth_process_max_fds", "gauge"),
            ("berth_process_cpu_seconds", "counter"),
            ("berth_process_start_time_seconds", "gauge"),
        ] {
            let line = format!("# TYPE {name} {kind}\n");
            assert!(text.contains(&line), "{line:?} missing in\n{text}");
        }
        for line in [
            "berth_raft_proposals_total{outcome=\"ok\"} 1",
            "berth_raft_proposals_total{outcome=\"rejected\"} 2",
            "berth_webhook_deliveries_total{webhook=\"ci\",outcome=\"failure\"} 1",
            "berth_webhook_delivery_duration_seconds_count{webhook=\"ci\"} 1",
            "berth_webhook_backlog_events{webhook=\"ci\"} 4",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn process_statistics_are_read_from_proc() {
        let stat = "4242 (a (b) c) S 1 2 3 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 9 0 \
                    12345 1000 200 18446744073709551615";
        let cpu = process::cpu_seconds(stat).unwrap();
        assert!((cpu - 400.0 / process_ticks()).abs() < 1e-9, "{cpu}");
        let status = "Name:\tberth\nVmPeak:\t 100 kB\nVmRSS:\t    2048 kB\nThreads:\t4\n";
        assert_eq!(process::rss_bytes(status), Some(2048 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             1000                 1000                 processes\n\
                      Max open files            65536                1048576              files\n";
        assert_eq!(process::max_fds(limits), Some(65536));
        assert_eq!(process::rss_bytes("Name:\tx\n"), None);

        // And this process's own figures, as a scrape reports them.
        let m = Metrics::new(1, "eu", "a");
        m.render();
        assert!(m.process_resident_memory.get() > 0);
        assert!(m.process_open_fds.get() > 0);
        assert!(m.process_max_fds.get() >= m.process_open_fds.get());
        assert!(m.process_start_time.get() > 1.0e9);
    }

    /// Clock ticks per second, as the parser assumes them.
    fn process_ticks() -> f64 {
        // SAFETY: as in `process`.
        (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
    }
}
