//! This node's Prometheus metrics, served as text at `GET /metrics` on the registry port.
//!
//! One [`Metrics`] per node, made by the composition root and shared (`Arc`). It holds the
//! metric families (every name `berth_…`); a component either updates its families as things
//! happen (counters, histograms), or — for a view it keeps anyway, such as peer round-trip
//! times or the replication backlog — registers a refresh hook ([`Metrics::on_scrape`]) that
//! copies that view into gauges when a scrape arrives, so nothing is computed between scrapes.
//!
//! Labels are bounded: node ids, regions and a few fixed words; never repository names,
//! digests or client addresses.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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

/// Labels naming a webhook.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The webhook's name.
    pub webhook: String,
}

/// How a delivery ended.
#[derive(
    Debug, Clone, Copy, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue,
)]
pub enum Outcome {
    /// A 2xx answer.
    Success,
    /// Anything else.
    Failure,
}

/// Labels naming a webhook and a delivery's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookOutcomeLabels {
    /// The webhook's name.
    pub webhook: String,
    /// How it ended.
    pub outcome: Outcome,
}

type Hook = Box<dyn Fn(&Metrics) + Send + Sync>;

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
    pub peer_rtt: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `berth_peer_up{peer,region}`: 1 when the last probe of the peer answered.
    pub peer_up: Family<PeerLabels, Gauge>,
    /// `berth_webhook_deliveries_total{webhook,outcome}`: delivery attempts.
    pub webhook_deliveries: Family<WebhookOutcomeLabels, Counter>,
    /// `berth_webhook_delivery_duration_seconds{webhook}`: time to an answer.
    pub webhook_delivery_duration: Family<WebhookLabels, Histogram>,
    /// `berth_webhook_backlog_events{webhook}`: events past the cursor (delivering node only).
    pub webhook_backlog: Family<WebhookLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Buckets of the replication lag histogram, in seconds: 10 ms to about 20 min.
fn lag_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 18)
}

impl Metrics {
    /// The families of node `node` in `region`/`zone`, registered and empty.
    pub fn new(node: u64, region: &str, zone: &str) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("berth");
        let node_info = Family::<NodeLabels, Gauge>::default();
        let replication_pending_blobs = Family::<RegionLabels, Gauge>::default();
        let replication_pending_bytes = Family::<RegionLabels, Gauge>::default();
        let replication_bytes = Family::<PairLabels, Counter>::default();
        let replication_lag = Family::<RegionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(lag_buckets())
        });
        let read_through_fetches = Family::<SourceLabels, Counter>::default();
        let scrub_checked = Counter::default();
        let scrub_repairs = Counter::default();
        let peer_rtt = Family::<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let peer_up = Family::<PeerLabels, Gauge>::default();
        let webhook_deliveries = Family::<WebhookOutcomeLabels, Counter>::default();
        let webhook_delivery_duration =
            Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.005, 2.0, 14,
                ))
            });
        let webhook_backlog = Family::<WebhookLabels, Gauge>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome",
            webhook_deliveries.clone(),
        );
        registry.register_with_unit(
            "webhook_delivery_duration",
            "Time from sending a webhook delivery to its answer",
            prometheus_client::registry::Unit::Seconds,
            webhook_delivery_duration.clone(),
        );
        registry.register(
            "webhook_backlog_events",
            "Events recorded past a webhook's cursor (on its delivering node)",
            webhook_backlog.clone(),
        );

        registry.register(
            "node_info",
            "This node's id, region and zone",
            node_info.clone(),
        );
        registry.register(
            "replication_pending_blobs",
            "Blobs the placement wants in a region that no node there holds yet",
            replication_pending_blobs.clone(),
        );
        registry.register(
            "replication_pending_bytes",
            "Bytes of the blobs pending in a region",
            replication_pending_bytes.clone(),
        );
        registry.register(
            "replication_bytes",
            "Blob bytes copied from one node to another, counted by the receiver",
            replication_bytes.clone(),
        );
        registry.register_with_unit(
            "replication_lag",
            "Time from a manifest's acknowledgement to its blobs being held in a region",
            prometheus_client::registry::Unit::Seconds,
            replication_lag.clone(),
        );
        registry.register(
            "read_through_fetches",
            "Blobs fetched from a peer to serve a client request, by the peer's region",
            read_through_fetches.clone(),
        );
        registry.register(
            "scrub_checked",
            "Local blob copies re-hashed by the scrubber",
            scrub_checked.clone(),
        );
        registry.register(
            "scrub_repairs",
            "Corrupt or missing local blob copies repaired from a peer",
            scrub_repairs.clone(),
        );
        registry.register_with_unit(
            "peer_rtt",
            "Smoothed round-trip time to a peer",
            prometheus_client::registry::Unit::Seconds,
            peer_rtt.clone(),
        );
        registry.register(
            "peer_up",
            "Whether the last probe of a peer answered",
            peer_up.clone(),
        );
        node_info
            .get_or_create(&NodeLabels {
                node,
                region: region.to_string(),
                zone: zone.to_string(),
            })
            .set(1);
        Arc::new(Metrics {
            registry,
            hooks: Mutex::default(),
            node_info,
            replication_pending_blobs,
            replication_pending_bytes,
            replication_bytes,
            replication_lag,
            read_through_fetches,
            scrub_checked,
            scrub_repairs,
            peer_rtt,
            peer_up,
            webhook_deliveries,
            webhook_delivery_duration,
            webhook_backlog,
        })
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

#[cfg(test)]
mod tests {
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
}
