//! Request rates per namespace on this node: `pulls_per_sec` and `pushes_per_sec` of a
//! namespace's limits (`meta::lifecycle::NamespaceLimits`), enforced with one token bucket per
//! (namespace, kind).
//!
//! Owns: the buckets and a cache of each namespace's rates, in memory only (a restart starts
//! every bucket full). Must not: read anything itself; the registry hands it the namespace's
//! rates when the cache has none fresh.
//!
//! Invariants:
//! - A bucket holds at most one second's worth of requests (at least one) and refills at the
//!   namespace's rate; a request takes one token or is refused with the time until one is
//!   there (whole seconds, at least 1).
//! - A namespace's rates are read at most once per [`RATES_TTL`] per namespace (a change of the
//!   limits takes effect within it); a namespace without rates has no bucket, and is never
//!   refused.
//! - Memory is bounded: at most [`MAX_ENTRIES`] namespaces are kept. An entry unused for
//!   [`RATES_TTL`] carries nothing worth keeping (its rates are stale, its buckets have
//!   refilled), so it is dropped first; past that the least recently used one goes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a namespace's rates are used before they are read again.
pub const RATES_TTL: Duration = Duration::from_secs(1);

/// Most namespaces whose rates and buckets are kept.
pub const MAX_ENTRIES: usize = 10_000;

/// What a request counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A manifest or blob GET or HEAD (`pulls_per_sec`).
    Pull,
    /// An upload POST, PATCH or PUT, a manifest PUT or DELETE (`pushes_per_sec`).
    Push,
}

impl RequestKind {
    /// The word for it in messages.
    pub fn plural(self) -> &'static str {
        match self {
            RequestKind::Pull => "pulls",
            RequestKind::Push => "pushes",
        }
    }
}

/// A namespace's request rates (`None`: not limited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// Pulls per second.
    pub pulls_per_sec: Option<u32>,
    /// Pushes per second.
    pub pushes_per_sec: Option<u32>,
}

impl Rates {
    fn of(&self, kind: RequestKind) -> Option<u32> {
        match kind {
            RequestKind::Pull => self.pulls_per_sec,
            RequestKind::Push => self.pushes_per_sec,
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The namespace's limit for the kind of request.
    pub per_sec: u32,
    /// Whole seconds until a request of the kind would be admitted (at least 1).
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token at `now` from a bucket refilling at `per_sec` (holding at most that
    /// many, at least one); else the seconds until one is there. A rate of 0 admits nothing.
    fn take(&mut self, per_sec: u32, now: Instant) -> Result<(), u64> {
        if per_sec == 0 {
            return Err(1);
        }
        let rate = f64::from(per_sec);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / rate;
        Err((wait.ceil() as u64).max(1))
    }
}

#[derive(Debug)]
struct Entry {
    rates: Rates,
    read_at: Instant,
    used_at: Instant,
    pull: Option<Bucket>,
    push: Option<Bucket>,
}

/// The buckets of this node.
#[derive(Debug, Default)]
pub struct RateLimiter {
    entries: Mutex<HashMap<String, Entry>>,
}

impl RateLimiter {
    /// The rates of `ns` if read within [`RATES_TTL`] of `now`.
    pub fn cached(&self, ns: &str, now: Instant) -> Option<Rates> {
        let entries = self.entries.lock().expect("rate limiter lock");
        entries
            .get(ns)
            .filter(|e| now.saturating_duration_since(e.read_at) < RATES_TTL)
            .map(|e| e.rates)
    }

    /// Admits a request of `kind` to `ns` at `now`, or refuses it. `fresh`: rates just read
    /// (they replace the cached ones); `None` when [`RateLimiter::cached`] answered.
    pub fn admit(
        &self,
        ns: &str,
        kind: RequestKind,
        fresh: Option<Rates>,
        now: Instant,
    ) -> Result<(), Refused> {
        let mut entries = self.entries.lock().expect("rate limiter lock");
        if !entries.contains_key(ns) {
            let Some(rates) = fresh else {
                // Dropped since `cached` answered: nothing to count against.
                return Ok(());
            };
            make_room(&mut entries, now);
            entries.insert(
                ns.to_string(),
                Entry {
                    rates,
                    read_at: now,
                    used_at: now,
                    pull: None,
                    push: None,
                },
            );
        }
        let entry = entries.get_mut(ns).expect("inserted above");
        if let Some(rates) = fresh {
            entry.rates = rates;
            entry.read_at = now;
        }
        entry.used_at = now;
        let Some(per_sec) = entry.rates.of(kind) else {
            return Ok(());
        };
        let slot = match kind {
            RequestKind::Pull => &mut entry.pull,
            RequestKind::Push => &mut entry.push,
        };
        let bucket = slot.get_or_insert(Bucket {
            tokens: f64::from(per_sec.max(1)),
            at: now,
        });
        bucket
            .take(per_sec, now)
            .map_err(|retry_after_secs| Refused {
                per_sec,
                retry_after_secs,
            })
    }

    /// Namespaces kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("rate limiter lock").len()
    }
}

/// Makes room for one more entry: drops the idle ones when the map is full, then the least
/// recently used one if it still is.
fn make_room(entries: &mut HashMap<String, Entry>, now: Instant) {
    if entries.len() < MAX_ENTRIES {
        return;
    }
    entries.retain(|_, e| now.saturating_duration_since(e.used_at) < RATES_TTL);
    if entries.len() >= MAX_ENTRIES
        && let Some(oldest) = entries
            .iter()
            .min_by_key(|(_, e)| e.used_at)
            .map(|(k, _)| k.clone())
    {
        entries.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulls(n: u32) -> Rates {
        Rates {
            pulls_per_sec: Some(n),
            pushes_per_sec: None,
        }
    }

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.admit("ns", RequestKind::Pull, Some(pulls(2)), t0), Ok(()));
        assert_eq!(l.admit("ns", RequestKind::Pull, None, t0), Ok(()));
        let refused = l.admit("ns", RequestKind::Pull, None, t0).unwrap_err();
        assert_eq!(refused.per_sec, 2);
        assert_eq!(refused.retry_after_secs, 1);
        // Half a second refills one token at 2/s.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.admit("ns", RequestKind::Pull, None, t1), Ok(()));
        assert!(l.admit("ns", RequestKind::Pull, None, t1).is_err());
        // Pushes are not limited, and another namespace has its own bucket.
        assert_eq!(l.admit("ns", RequestKind::Push, None, t1), Ok(()));
        assert_eq!(l.admit("b", RequestKind::Pull, Some(pulls(1)), t1), Ok(()));
    }

    #[test]
    fn a_slow_rate_says_how_long_to_wait() {
        let mut b = Bucket {
            tokens: 0.0,
            at: Instant::now(),
        };
        // An empty bucket at 1/s needs a whole second; a rate of 0 admits nothing.
        assert_eq!(b.take(1, b.at), Err(1));
        assert_eq!(b.take(0, b.at), Err(1));
    }

    #[test]
    fn no_rates_no_refusal_and_memory_is_bounded() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES + 10 {
            let ns = format!("n{i}");
            assert_eq!(
                l.admit(&ns, RequestKind::Pull, Some(Rates::default()), t0),
                Ok(())
            );
        }
        assert!(l.len() <= MAX_ENTRIES);
        // Idle entries go first once the map is full.
        let later = t0 + RATES_TTL;
        assert_eq!(
            l.admit("new", RequestKind::Pull, Some(pulls(1)), later),
            Ok(())
        );
        assert_eq!(l.len(), 1);
        assert_eq!(l.cached("new", later), Some(pulls(1)));
        assert_eq!(l.cached("new", later + RATES_TTL), None);
    }
}
