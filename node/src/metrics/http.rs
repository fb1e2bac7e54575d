//! The HTTP request metrics, kept in shards so that requests served at once on different
//! cores do not pass cache lines back and forth.
//!
//! Every request touches five series (in flight, its count, its latency, its bytes). Kept in
//! one place, each is a cache line that every core writes: measured on the 2-core benchmark
//! machine, that transfer cost more than the arithmetic (about 0.4 µs per request under load
//! against 35 ns alone, some 3 % of a manifest GET). So each thread adds to a shard of its own
//! (threads are spread over [`SHARDS`] shards), and a scrape sums the shards
//! ([`HttpCollector`]). Series are dense arrays indexed by the label words, so recording a
//! request is relaxed atomic additions and nothing else: no lock, no map, no allocation.
//!
//! A status code outside [`STATUSES`] (rare: the registry answers with few codes) is counted
//! in a map under a lock instead.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::{HttpLabels, HttpMethod, HttpRoute, HttpRouteLabels, HttpRouteMethodLabels};

/// Shards of the counts; threads beyond as many share them.
pub const SHARDS: usize = 8;
/// Status codes counted without a lock.
pub const STATUSES: [u16; 19] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 400, 401, 403, 404, 405, 413, 416, 429, 500, 503,
];
/// Upper bounds of the latency buckets in nanoseconds: 0.25 ms doubling to about 16 s; the
/// last bucket (+Inf) follows them.
const BUCKET_BASE_NS: u64 = 250_000;
const BUCKETS: usize = 17;

const ROUTES: usize = HttpRoute::ALL.len();
const METHODS: usize = HttpMethod::ALL.len();

/// The counts one shard holds (aligned so that two shards never share a cache line).
#[repr(align(128))]
struct Shard {
    in_flight: AtomicI64,
    requests: [[[AtomicU64; STATUSES.len()]; METHODS]; ROUTES],
    /// Per bucket (not cumulative), the last one +Inf.
    durations: [[[AtomicU64; BUCKETS + 1]; METHODS]; ROUTES],
    duration_sum_ns: [[AtomicU64; METHODS]; ROUTES],
    received: [AtomicU64; ROUTES],
    sent: [AtomicU64; ROUTES],
}

/// `N` zeros.
fn zeros<T: Default, const N: usize>() -> [T; N] {
    std::array::from_fn(|_| T::default())
}

impl Shard {
    fn new() -> Shard {
        Shard {
            in_flight: AtomicI64::new(0),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| zeros())),
            durations: std::array::from_fn(|_| std::array::from_fn(|_| zeros())),
            duration_sum_ns: std::array::from_fn(|_| zeros()),
            received: zeros(),
            sent: zeros(),
        }
    }
}

/// The shard of the calling thread: each thread takes the next one the first time it asks.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<Option<usize>> = const { Cell::new(None) };
    }
    MINE.with(|mine| match mine.get() {
        Some(i) => i,
        None => {
            let i = NEXT.fetch_add(1, Relaxed) % SHARDS;
            mine.set(Some(i));
            i
        }
    })
}

/// The bucket of a latency: the first whose upper bound it does not exceed.
fn bucket(took: Duration) -> usize {
    let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
    // The smallest i with ns <= BASE * 2^i.
    let q = ns.div_ceil(BUCKET_BASE_NS);
    let i = if q <= 1 {
        0
    } else {
        (64 - (q - 1).leading_zeros()) as usize
    };
    i.min(BUCKETS)
}

/// The HTTP request metrics of a node (see the module documentation).
pub struct HttpMetrics {
    shards: Box<[Shard]>,
    /// Requests answered with a status outside [`STATUSES`].
    other_statuses: Mutex<HashMap<HttpLabels, u64>>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            shards: (0..SHARDS).map(|_| Shard::new()).collect(),
            other_statuses: Mutex::default(),
        }
    }
}

/// A request in flight: counted in `berth_http_requests_in_flight` until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a HttpMetrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Perhaps on another thread than it started: a shard's figure may go below zero, the
        // sum does not.
        self.0.shard().in_flight.fetch_sub(1, Relaxed);
    }
}

impl HttpMetrics {
    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.shard().in_flight.fetch_add(1, Relaxed);
        InFlight(self)
    }

    /// Records one answered request: its count by status and its latency.
    pub fn done(&self, route: HttpRoute, method: HttpMethod, status: u16, took: Duration) {
        let s = self.shard();
        let (r, m) = (route as usize, method as usize);
        match STATUSES.iter().position(|x| *x == status) {
            Some(i) => {
                s.requests[r][m][i].fetch_add(1, Relaxed);
            }
            None => {
                let labels = HttpLabels {
                    route,
                    method,
                    status,
                };
                *self
                    .other_statuses
                    .lock()
                    .expect("status counts poisoned")
                    .entry(labels)
                    .or_default() += 1;
            }
        }
        s.durations[r][m][bucket(took)].fetch_add(1, Relaxed);
        s.duration_sum_ns[r][m]
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Adds request body bytes of `route`.
    pub fn received(&self, route: HttpRoute, bytes: u64) {
        self.shard().received[route as usize].fetch_add(bytes, Relaxed);
    }

    /// Adds response body bytes of `route`.
    pub fn sent(&self, route: HttpRoute, bytes: u64) {
        self.shard().sent[route as usize].fetch_add(bytes, Relaxed);
    }

    /// The sum over the shards of one series.
    fn sum(&self, series: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| series(s).load(Relaxed)).sum()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> i64 {
        self.shards.iter().map(|s| s.in_flight.load(Relaxed)).sum()
    }
}

/// Renders [`HttpMetrics`] at a scrape: the sums of the shards, as the families
/// `berth_http_requests_total`, `berth_http_request_duration_seconds`,
/// `berth_http_received_bytes_total`, `berth_http_sent_bytes_total` and
/// `berth_http_requests_in_flight`. A series appears once it counted something.
#[derive(Debug)]
pub struct HttpCollector(pub std::sync::Arc<HttpMetrics>);

impl Collector for HttpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = &*self.0;
        let pairs = || {
            HttpRoute::ALL.into_iter().flat_map(|route| {
                HttpMethod::ALL
                    .into_iter()
                    .map(move |method| (route, method))
            })
        };

        let mut family = encoder.encode_descriptor(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            None,
            MetricType::Counter,
        )?;
        for (route, method) in pairs() {
            for (i, status) in STATUSES.into_iter().enumerate() {
                let n = h.sum(|s| &s.requests[route as usize][method as usize][i]);
                if n > 0 {
                    let labels = HttpLabels {
                        route,
                        method,
                        status,
                    };
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        let others: Vec<(HttpLabels, u64)> = h
            .other_statuses
            .lock()
            .expect("status counts poisoned")
            .iter()
            .map(|(l, n)| (*l, *n))
            .collect();
        for (labels, n) in others {
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }

        let mut family = encoder.encode_descriptor(
            "http_request_duration",
            "Time from an HTTP request's arrival to its response headers",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (route, method) in pairs() {
            let (r, m) = (route as usize, method as usize);
            let buckets: Vec<(f64, u64)> = (0..=BUCKETS)
                .map(|b| {
                    let bound = if b == BUCKETS {
                        f64::INFINITY
                    } else {
                        (BUCKET_BASE_NS << b) as f64 / 1e9
                    };
                    (bound, h.sum(|s| &s.durations[r][m][b]))
                })
                .collect();
            let count: u64 = buckets.iter().map(|(_, n)| n).sum();
            if count > 0 {
                let sum = h.sum(|s| &s.duration_sum_ns[r][m]) as f64 / 1e9;
                family
                    .encode_family(&HttpRouteMethodLabels { route, method })?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }

        for (name, help, bytes) in [
            (
                "http_received_bytes",
                "HTTP request body bytes read, by route",
                (|s: &Shard, r: usize| &s.received[r]) as fn(&Shard, usize) -> &AtomicU64,
            ),
            (
                "http_sent_bytes",
                "HTTP response body bytes sent, by route",
                |s: &Shard, r: usize| &s.sent[r],
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for route in HttpRoute::ALL {
                let n = h.sum(|s| bytes(s, route as usize));
                if n > 0 {
                    family
                        .encode_family(&HttpRouteLabels { route })?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }

        encoder
            .encode_descriptor(
                "http_requests_in_flight",
                "HTTP requests being handled",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&h.in_flight())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_the_first_bucket_that_holds_them() {
        let ms = |x: f64| Duration::from_secs_f64(x / 1000.0);
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(ms(0.25)), 0);
        assert_eq!(bucket(ms(0.250_001)), 1);
        assert_eq!(bucket(ms(0.5)), 1);
        assert_eq!(bucket(ms(0.75)), 2);
        assert_eq!(bucket(ms(1.0)), 2);
        assert_eq!(bucket(ms(16_384.0)), 16);
        assert_eq!(bucket(ms(16_384.1)), BUCKETS);
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS);
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let h = std::sync::Arc::new(HttpMetrics::default());
        std::thread::scope(|s| {
            for _ in 0..(SHARDS + 3) {
                let h = &h;
                s.spawn(move || {
                    for _ in 0..1000 {
                        let guard = h.start();
                        h.done(HttpRoute::Blob, HttpMethod::Get, 200, Duration::ZERO);
                        h.sent(HttpRoute::Blob, 2);
                        drop(guard);
                    }
                });
            }
        });
        let n = (SHARDS as u64 + 3) * 1000;
        let (r, m) = (HttpRoute::Blob as usize, HttpMethod::Get as usize);
        assert_eq!(h.sum(|s| &s.requests[r][m][0]), n);
        assert_eq!(h.sum(|s| &s.durations[r][m][0]), n);
        assert_eq!(h.sum(|s| &s.sent[r]), 2 * n);
        assert_eq!(h.in_flight(), 0);
    }
}
