//! This node's live view of every peer, measured: the round-trip time (a `Peer.Ping` probe
//! every [`PROBE_EVERY`] on the peer's channel, smoothed), the throughput of recent blob
//! transfers from it, and its consecutive failures with an exponential backoff.
//!
//! The probe runs in a background worker ([`run_prober`]); the blob fetch paths report what
//! they saw through [`Cluster::record_transfer`] and [`Cluster::record_failure`]. The view is
//! read by the holder choice (`nearest.rs`), the admin `Status` (each member's `rtt_ms`), and
//! the `berth_peer_rtt_seconds` / `berth_peer_up` gauges. It keeps nothing on disk: a node
//! starts knowing nothing and measures within one probe round.
//!
//! Invariant: a peer in backoff is neither probed nor preferred until its backoff ends; any
//! success (a probe answered, a transfer completed) ends the backoff and clears its failures.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_proto::peer::PingRequest;
use berth_proto::peer::peer_client::PeerClient;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::meta::NodeId;

/// How often every peer is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Deadline of one probe (connecting included).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Weight of a new sample in the smoothed round-trip time and throughput.
const SMOOTHING: f64 = 0.3;
/// Transfers smaller than this say more about latency than throughput: they count as a
/// success but not as a throughput sample.
const THROUGHPUT_MIN_BYTES: u64 = 256 * 1024;
/// Backoff after the first failure; it doubles with each further one.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What this node knows of one peer now.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    /// The peer.
    pub node: NodeId,
    /// Smoothed round-trip time of its probes; `None` until one answered.
    pub rtt: Option<Duration>,
    /// Smoothed throughput of recent transfers from it, bytes per second; `None` until one
    /// large enough completed.
    pub throughput: Option<f64>,
    /// Failures since its last success.
    pub failures: u32,
    /// Time left of its backoff, when it is in one (it is then tried last, and not probed).
    pub backoff: Option<Duration>,
    /// Whether its last probe or transfer succeeded.
    pub up: bool,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    rtt: Option<Duration>,
    throughput: Option<f64>,
    failures: u32,
    backoff_until: Option<Instant>,
    up: bool,
}

impl Entry {
    fn succeeded(&mut self) {
        self.failures = 0;
        self.backoff_until = None;
        self.up = true;
    }
}

fn smooth(old: Option<f64>, sample: f64) -> f64 {
    match old {
        Some(old) => old + SMOOTHING * (sample - old),
        None => sample,
    }
}

/// The backoff after `failures` consecutive failures (at least one).
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_FIRST * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

/// The views of every peer (see the module docs).
#[derive(Debug, Default)]
pub struct PeerViews {
    peers: Mutex<HashMap<NodeId, Entry>>,
}

impl PeerViews {
    fn with<T>(&self, node: NodeId, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut peers = self.peers.lock().expect("peer views poisoned");
        f(peers.entry(node).or_default())
    }

    /// Records a probe of `node` that answered after `rtt`.
    pub fn record_rtt(&self, node: NodeId, rtt: Duration) {
        self.with(node, |e| {
            let secs = smooth(e.rtt.map(|d| d.as_secs_f64()), rtt.as_secs_f64());
            e.rtt = Some(Duration::from_secs_f64(secs));
            e.succeeded();
        });
    }

    /// Records a transfer of `bytes` from `node` that took `elapsed`.
    pub fn record_transfer(&self, node: NodeId, bytes: u64, elapsed: Duration) {
        self.with(node, |e| {
            if bytes >= THROUGHPUT_MIN_BYTES && !elapsed.is_zero() {
                let rate = bytes as f64 / elapsed.as_secs_f64();
                e.throughput = Some(smooth(e.throughput, rate));
            }
            e.succeeded();
        });
    }

    /// Records a failed probe or transfer of `node`: its backoff starts or doubles.
    pub fn record_failure(&self, node: NodeId, now: Instant) {
        self.with(node, |e| {
            e.failures = e.failures.saturating_add(1);
            e.backoff_until = Some(now + backoff(e.failures));
            e.up = false;
        });
    }

    /// Whether `node` is in its backoff at `now`.
    pub fn in_backoff(&self, node: NodeId, now: Instant) -> bool {
        let peers = self.peers.lock().expect("peer views poisoned");
        peers
            .get(&node)
            .and_then(|e| e.backoff_until)
            .is_some_and(|until| until > now)
    }

    /// The view of `node`, if anything was recorded of it.
    pub fn view(&self, node: NodeId, now: Instant) -> Option<PeerView> {
        let peers = self.peers.lock().expect("peer views poisoned");
        peers.get(&node).map(|e| view_of(node, e, now))
    }

    /// The view of every peer recorded, by id.
    pub fn all(&self, now: Instant) -> Vec<PeerView> {
        let peers = self.peers.lock().expect("peer views poisoned");
        let mut out: Vec<PeerView> = peers.iter().map(|(n, e)| view_of(*n, e, now)).collect();
        out.sort_by_key(|v| v.node);
        out
    }

    /// Forgets every peer but `keep` (members removed from the cluster).
    pub fn retain(&self, keep: &[NodeId]) {
        let mut peers = self.peers.lock().expect("peer views poisoned");
        peers.retain(|n, _| keep.contains(n));
    }
}

fn view_of(node: NodeId, e: &Entry, now: Instant) -> PeerView {
    PeerView {
        node,
        rtt: e.rtt,
        throughput: e.throughput,
        failures: e.failures,
        backoff: e
            .backoff_until
            .filter(|until| *until > now)
            .map(|until| until - now),
        up: e.up,
    }
}

impl Cluster {
    /// What this node measured of every peer, by id (peers it never probed nor fetched from
    /// are absent).
    pub fn peer_views(&self) -> Vec<PeerView> {
        self.views.all(Instant::now())
    }

    /// What this node measured of `node`, if anything.
    pub fn peer_view(&self, node: NodeId) -> Option<PeerView> {
        self.views.view(node, Instant::now())
    }

    /// Reports a blob transfer from `node` that completed: `bytes` in `elapsed`. A success:
    /// the node's failures and backoff are cleared.
    pub fn record_transfer(&self, node: NodeId, bytes: u64, elapsed: Duration) {
        self.views.record_transfer(node, bytes, elapsed);
    }

    /// Reports a transfer from (or a call to) `node` that failed: it goes into backoff and is
    /// tried last until the backoff ends.
    pub fn record_failure(&self, node: NodeId) {
        self.views.record_failure(node, Instant::now());
    }

    /// Waits until every other member has been probed once (answered or failed), at most
    /// `bound`: a node that just started knows no round trip yet, and would otherwise take the
    /// first holder by id for its first copies, however far away it is.
    pub async fn wait_for_first_probes(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        loop {
            let now = Instant::now();
            let members = self.members();
            // Right after a restart Raft may not have loaded the membership yet: no member
            // known is not "every member probed".
            let unprobed = members.is_empty()
                || members.iter().filter(|m| m.id != self.node_id).any(|m| {
                    self.views
                        .view(m.id, now)
                        .is_none_or(|v| v.rtt.is_none() && v.failures == 0)
                });
            if !unprobed || now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Probes `node` once and records the outcome.
    async fn probe(&self, node: NodeId) {
        let sent = Instant::now();
        let answer = self
            .call_member(
                node,
                PROBE_TIMEOUT,
                PingRequest {},
                |channel, req| async move { PeerClient::new(channel).ping(req).await },
            )
            .await;
        match answer {
            Ok(_) => self.views.record_rtt(node, sent.elapsed()),
            Err(e) => {
                tracing::debug!(peer = node, error = %e, "failed to probe peer");
                self.views.record_failure(node, Instant::now());
            }
        }
    }
}

/// Probes every member but this node every [`PROBE_EVERY`] (those in backoff excepted), all
/// at once, until `stop`.
pub async fn run_prober(cluster: Cluster, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let members: Vec<NodeId> = cluster.members().iter().map(|m| m.id).collect();
        cluster.views.retain(&members);
        let now = Instant::now();
        let due: Vec<NodeId> = members
            .into_iter()
            .filter(|n| *n != cluster.node_id() && !cluster.views.in_backoff(*n, now))
            .collect();
        let probes = futures::future::join_all(due.iter().map(|n| cluster.probe(*n)));
        tokio::select! {
            () = stop.cancelled() => return,
            _ = probes => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn round_trip_time_is_smoothed() {
        let v = PeerViews::default();
        let now = Instant::now();
        v.record_rtt(2, 100 * MS);
        assert_eq!(v.view(2, now).unwrap().rtt, Some(100 * MS));
        v.record_rtt(2, 200 * MS);
        let rtt = v.view(2, now).unwrap().rtt.unwrap();
        assert!((129 * MS..=131 * MS).contains(&rtt), "{rtt:?}");
        assert!(v.view(2, now).unwrap().up);
        assert_eq!(v.view(3, now), None);
    }

    #[test]
    fn failures_back_off_exponentially_and_a_success_clears_them() {
        let v = PeerViews::default();
        let t0 = Instant::now();
        v.record_failure(2, t0);
        assert_eq!(v.view(2, t0).unwrap().backoff, Some(Duration::from_secs(1)));
        v.record_failure(2, t0);
        v.record_failure(2, t0);
        let seen = v.view(2, t0).unwrap();
        assert_eq!(seen.failures, 3);
        assert_eq!(seen.backoff, Some(Duration::from_secs(4)));
        assert!(!seen.up);
        assert!(v.in_backoff(2, t0 + Duration::from_secs(3)));
        assert!(!v.in_backoff(2, t0 + Duration::from_secs(4)));
        for _ in 0..20 {
            v.record_failure(2, t0);
        }
        assert_eq!(v.view(2, t0).unwrap().backoff, Some(BACKOFF_MAX));
        v.record_transfer(2, 10, MS);
        let seen = v.view(2, t0).unwrap();
        assert_eq!((seen.failures, seen.backoff, seen.up), (0, None, true));
        assert_eq!(
            seen.throughput, None,
            "a tiny transfer is no throughput sample"
        );
    }

    #[test]
    fn throughput_comes_from_large_transfers() {
        let v = PeerViews::default();
        v.record_transfer(4, 4 * 1024 * 1024, Duration::from_secs(2));
        let t = v.view(4, Instant::now()).unwrap().throughput.unwrap();
        assert!((t - 2.0 * 1024.0 * 1024.0).abs() < 1.0, "{t}");
    }

    #[test]
    fn removed_members_are_forgotten() {
        let v = PeerViews::default();
        v.record_rtt(2, MS);
        v.record_rtt(3, MS);
        v.retain(&[1, 3]);
        let nodes: Vec<NodeId> = v.all(Instant::now()).iter().map(|p| p.node).collect();
        assert_eq!(nodes, vec![3]);
    }
}
