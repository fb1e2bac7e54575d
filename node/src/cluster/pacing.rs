//! Pacing of the blob copies this node makes for replication and durability
//! ([`PeerBandwidth`]): a cap per peer, and a slower pace while this node serves clients.
//!
//! A client's read-through is never paced (`registry::fetch` decides which fetches are). A
//! durability copy (a manifest PUT waits for it, [`PeerBandwidth::take_urgent`]) keeps to the
//! per-peer cap but goes ahead of replication's copies from the same peer: it has a bucket of
//! its own, and what it takes is charged to the replication bucket too, so replication slows
//! down by as much and the two together keep to the cap (past the first second, when both
//! buckets may spend their burst).
//!
//! Why the second pace: a copy costs the receiving node CPU for every byte (hashing, the page
//! cache, the HTTP/2 stream), about as much as a push of the same bytes. On a node whose cores
//! are busy with clients, a copy at full speed takes most of them (manifest GETs fell to 0.17×
//! their idle rate while a node replicated 4 GiB on two cores, docs/benchmarks.md), and
//! `max_parallel` bounds how many copies run, not what each takes. So while client requests
//! arrive (one in the last [`BUSY_WINDOW`]), copies share one node-wide bucket of
//! `replication.busy_bytes_per_sec`; on an idle node they run at the per-peer cap, or at full
//! speed. ADR 016 has the measurements and the alternatives (a low-priority runtime).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::meta::NodeId;

/// A client request within this long ago makes the node busy.
const BUSY_WINDOW: Duration = Duration::from_millis(250);
/// The busy bucket holds this much time's worth of bytes: a copy gets at most that burst when
/// clients arrive.
const BUSY_BURST: Duration = Duration::from_millis(100);

/// The pacing of this node's copies: a cap of bytes per second fetched from each peer (one
/// token bucket per peer, shared by every copy from that peer), and a node-wide cap that
/// applies while clients are served. Each bucket holds at most one second's worth (the busy
/// one [`BUSY_BURST`]'s), so a peer idle for a while gets a burst of that, no more.
#[derive(Debug)]
pub struct PeerBandwidth {
    /// Bytes per second per peer; 0: no cap.
    rate: u64,
    buckets: Mutex<HashMap<NodeId, PeerBuckets>>,
    /// Bytes per second of all copies together while clients are served; 0: no such cap.
    busy_rate: u64,
    busy_bucket: Mutex<Bucket>,
    /// Origin of the millisecond stamps below.
    epoch: Instant,
    /// When the last client request arrived (ms since `epoch`, +1 so that 0 means never).
    last_client: AtomicU64,
    /// When a copy last waited for the busy cap (same encoding).
    last_yield: AtomicU64,
}

/// One peer's buckets: replication's, and durability's (whose takes are charged to both).
#[derive(Debug, Clone, Copy)]
struct PeerBuckets {
    copies: Bucket,
    urgent: Bucket,
}

/// One bucket: tokens (bytes) available at `at`; negative when copies reserved more than
/// there was (they wait until it is paid back).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u64, burst: Duration, at: Instant) -> Bucket {
        Bucket {
            tokens: rate as f64 * burst.as_secs_f64(),
            at,
        }
    }

    /// Refills the bucket up to `now` (at most `burst`'s worth), takes `n` bytes from it, and
    /// returns how long the taker must wait for the bucket to have paid them back.
    fn reserve(&mut self, now: Instant, n: u64, rate: u64, burst: Duration) -> Duration {
        let rate = rate as f64;
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(rate * burst.as_secs_f64()) - n as f64;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

impl PeerBandwidth {
    /// A cap of `bytes_per_sec` per peer, and of `busy_bytes_per_sec` for all copies while
    /// clients are served (0: no such cap).
    pub fn new(bytes_per_sec: u64, busy_bytes_per_sec: u64) -> PeerBandwidth {
        let now = Instant::now();
        PeerBandwidth {
            rate: bytes_per_sec,
            buckets: Mutex::default(),
            busy_rate: busy_bytes_per_sec,
            busy_bucket: Mutex::new(Bucket::full(busy_bytes_per_sec, BUSY_BURST, now)),
            epoch: now,
            last_client: AtomicU64::new(0),
            last_yield: AtomicU64::new(0),
        }
    }

    /// Whether a cap per peer is set.
    pub fn is_capped(&self) -> bool {
        self.rate > 0
    }

    /// Notes that a client request arrived: copies slow to the busy cap for [`BUSY_WINDOW`].
    pub fn client_request(&self) {
        self.last_client
            .store(self.stamp(Instant::now()), Ordering::Relaxed);
    }

    /// Whether a copy waited for the busy cap at or after `since` (its throughput then says
    /// nothing of the link's).
    pub fn yielded_since(&self, since: Instant) -> bool {
        self.last_yield.load(Ordering::Relaxed) >= self.stamp(since)
    }

    /// Takes `n` bytes of a replication copy from `peer`: from its bucket, then, while clients
    /// are served, from the busy bucket; waits until the buckets have paid them back when they
    /// run short. Returns at once when no cap applies.
    pub async fn take(&self, peer: NodeId, n: u64) {
        if n == 0 {
            return;
        }
        self.take_per_peer(peer, n, false).await;
        if self.busy_rate > 0 {
            let now = Instant::now();
            if !self.busy(now) {
                return;
            }
            let wait = self
                .busy_bucket
                .lock()
                .expect("busy bucket poisoned")
                .reserve(now, n, self.busy_rate, BUSY_BURST);
            if !wait.is_zero() {
                self.last_yield.store(self.stamp(now), Ordering::Relaxed);
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// Takes `n` bytes of a durability copy from `peer`: from its own bucket (at the per-peer
    /// cap; charged to replication's bucket too), never from the busy bucket.
    pub async fn take_urgent(&self, peer: NodeId, n: u64) {
        if n > 0 {
            self.take_per_peer(peer, n, true).await;
        }
    }

    async fn take_per_peer(&self, peer: NodeId, n: u64, urgent: bool) {
        if self.rate == 0 {
            return;
        }
        let second = Duration::from_secs(1);
        let wait = {
            let mut buckets = self.buckets.lock().expect("bandwidth buckets poisoned");
            let now = Instant::now();
            let full = Bucket::full(self.rate, second, now);
            let b = buckets.entry(peer).or_insert(PeerBuckets {
                copies: full,
                urgent: full,
            });
            let copies = b.copies.reserve(now, n, self.rate, second);
            if urgent {
                b.urgent.reserve(now, n, self.rate, second)
            } else {
                copies
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Whether a client request arrived within [`BUSY_WINDOW`] of `now`.
    fn busy(&self, now: Instant) -> bool {
        match self.last_client.load(Ordering::Relaxed) {
            0 => false,
            last => self.stamp(now).saturating_sub(last) <= BUSY_WINDOW.as_millis() as u64,
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full bucket gives its burst at once; past it each byte waits its share; an idle
    /// while refills it, never beyond the burst.
    #[test]
    fn a_bucket_paces_at_its_rate() {
        let t0 = Instant::now();
        let (ms, sec) = (Duration::from_millis, Duration::from_secs(1));
        let mut b = Bucket::full(1000, sec, t0);
        assert_eq!(b.reserve(t0, 1000, 1000, sec), Duration::ZERO);
        assert_eq!(b.reserve(t0, 500, 1000, sec), ms(500));
        // Three seconds later: paid back, then refilled to one second's worth only.
        assert_eq!(b.reserve(t0 + ms(3000), 1000, 1000, sec), Duration::ZERO);
        assert_eq!(b.reserve(t0 + ms(3000), 2000, 1000, sec), ms(2000));
        // Half a second later, half a second of that debt is paid.
        assert_eq!(b.reserve(t0 + ms(3500), 0, 1000, sec), ms(1500));
        // A burst of 100 ms: an idle minute refills 100 bytes' worth at 1000 bytes/s.
        let mut busy = Bucket::full(1000, ms(100), t0);
        assert_eq!(busy.reserve(t0 + ms(60_000), 300, 1000, ms(100)), ms(200));
    }

    /// No cap: no wait, whatever the size; peers have buckets of their own.
    #[tokio::test]
    async fn no_cap_never_waits_and_peers_are_apart() {
        let free = PeerBandwidth::new(0, 0);
        assert!(!free.is_capped());
        free.client_request();
        tokio::time::timeout(Duration::from_secs(5), free.take(7, u64::MAX / 2))
            .await
            .expect("no wait without a cap");
        let capped = PeerBandwidth::new(1_000_000, 0);
        assert!(capped.is_capped());
        capped.take(7, 1_000_000).await;
        // Peer 8's bucket is full: its first second's worth goes at once.
        tokio::time::timeout(Duration::from_secs(5), capped.take(8, 1_000_000))
            .await
            .expect("a peer of its own");
        let buckets = capped.buckets.lock().unwrap();
        assert_eq!(buckets.len(), 2);
    }

    /// A durability copy does not wait behind replication's debt to the same peer, nor for the
    /// busy cap; what it takes slows replication down.
    #[tokio::test]
    async fn durability_copies_go_ahead_of_replication() {
        let pacing = std::sync::Arc::new(PeerBandwidth::new(1_000_000, 1_000));
        pacing.client_request();
        // Replication takes its first second's worth and runs nine seconds into debt.
        let behind = tokio::spawn({
            let pacing = pacing.clone();
            async move { pacing.take(7, 10_000_000).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::time::timeout(Duration::from_secs(5), pacing.take_urgent(7, 1_000_000))
            .await
            .expect("a durability copy waited behind replication or the busy cap");
        let debt = -pacing.buckets.lock().unwrap()[&7].copies.tokens;
        assert!(debt >= 9_900_000.0, "replication was not charged: {debt}");
        behind.abort();
    }

    /// The busy cap holds copies back only while client requests arrive, and says so.
    #[tokio::test]
    async fn the_busy_cap_applies_only_while_clients_are_served() {
        let pacing = PeerBandwidth::new(0, 1_000_000);
        let started = Instant::now();
        // No client yet: ten seconds' worth at the busy cap goes at once.
        tokio::time::timeout(Duration::from_secs(5), pacing.take(7, 10_000_000))
            .await
            .expect("no wait on an idle node");
        assert!(!pacing.yielded_since(started));
        // A client request: the same takes ten seconds.
        pacing.client_request();
        let held = tokio::time::timeout(Duration::from_millis(200), pacing.take(7, 10_000_000));
        assert!(
            held.await.is_err(),
            "a copy went at full speed while clients were served"
        );
        assert!(pacing.yielded_since(started));
    }
}
