//! Request rates per namespace on this node: `pulls_per_sec` and `pushes_per_sec` of a
//! namespace's limits (`meta::lifecycle::NamespaceLimits`), enforced with one token bucket per
//! (namespace, kind).
//!
//! Owns: the buckets and a cache of each namespace's rates, in memory only (a restart starts
//! every bucket full). Must not: read anything itself; the registry hands it the namespace's
//! rates when the cache has none fresh, and asks only for namespaces that have limits (a
//! namespace without any is admitted before it gets here, from an in-memory set: it costs
//! neither a read nor this limiter's lock).
//!
//! Invariants:
//! - A bucket holds at most one second's worth of requests (at least one) and refills at the
//!   namespace's rate; a request takes one token or is refused with the time until one is
//!   there (whole seconds, at least 1).
//! - A namespace's rates are read at most once per [`RATES_TTL`] per namespace (a change of the
//!   limits takes effect within it); a namespace without rates (or without a rate for a kind
//!   of request) has no bucket for it, and is never refused.
//! - Memory is bounded: at most [`MAX_ENTRIES`] namespaces are kept. When a new one finds the
//!   map full, the entries unused for [`RATES_TTL`] go first (they carry nothing worth
//!   keeping: their rates are stale, their buckets have refilled), then the least recently
//!   used ones, until [`EVICT_BATCH`] places are free: one pass over the map per that many new
//!   namespaces, not one per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a namespace's rates are used before they are read again.
pub const RATES_TTL: Duration = Duration::from_secs(1);

/// Most namespaces whose rates and buckets are kept.
pub const MAX_ENTRIES: usize = 10_000;

/// Places a full map frees at once (see [`make_room`]).
pub const EVICT_BATCH: usize = MAX_ENTRIES / 16;

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
        let slot = match kind {
            RequestKind::Pull => &mut entry.pull,
            RequestKind::Push => &mut entry.push,
        };
        let Some(per_sec) = entry.rates.of(kind) else {
            // No rate (or no longer one): no bucket.
            *slot = None;
            return Ok(());
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

/// Makes room for one more entry. Nothing to do until the map is full; then it drops the idle
/// entries, and the least recently used ones until at least [`EVICT_BATCH`] places are free.
/// Each call that finds the map full costs a pass over it (and a vector of its use times), and
/// is followed by at least [`EVICT_BATCH`] calls that cost nothing.
fn make_room(entries: &mut HashMap<String, Entry>, now: Instant) {
    if entries.len() < MAX_ENTRIES {
        return;
    }
    entries.retain(|_, e| now.saturating_duration_since(e.used_at) < RATES_TTL);
    let keep = MAX_ENTRIES - EVICT_BATCH;
    if entries.len() <= keep {
        return;
    }
    let excess = entries.len() - keep;
    let mut used: Vec<Instant> = entries.values().map(|e| e.used_at).collect();
    let (_, cut, _) = used.select_nth_unstable(excess - 1);
    let cut = *cut;
    // The `excess` least recently used: every entry used before `cut`, and as many of those
    // used at `cut` as it takes.
    let mut at_cut = excess - used.iter().filter(|u| **u < cut).count();
    entries.retain(|_, e| {
        if e.used_at < cut {
            false
        } else if e.used_at == cut && at_cut > 0 {
            at_cut -= 1;
            false
        } else {
            true
        }
    });
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
    fn no_rates_no_refusal_and_idle_entries_go_first() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES {
            let ns = format!("n{i}");
            for _ in 0..3 {
                assert_eq!(
                    l.admit(&ns, RequestKind::Pull, Some(Rates::default()), t0),
                    Ok(())
                );
            }
        }
        assert_eq!(l.len(), MAX_ENTRIES);
        // Once the map is full, the idle entries go first.
        let later = t0 + RATES_TTL;
        assert_eq!(
            l.admit("new", RequestKind::Pull, Some(pulls(1)), later),
            Ok(())
        );
        assert_eq!(l.len(), 1);
        assert_eq!(l.cached("new", later), Some(pulls(1)));
        assert_eq!(l.cached("new", later + RATES_TTL), None);
    }

    #[test]
    fn a_full_map_frees_a_batch_of_the_least_recently_used() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        let at = |i: usize| t0 + Duration::from_micros(i as u64);
        for i in 0..MAX_ENTRIES {
            assert_eq!(
                l.admit(&format!("n{i}"), RequestKind::Pull, Some(pulls(5)), at(i)),
                Ok(())
            );
        }
        // The first namespace is used again: it is the most recently used now.
        let now = at(MAX_ENTRIES);
        assert_eq!(l.admit("n0", RequestKind::Pull, None, now), Ok(()));
        assert_eq!(
            l.admit("new", RequestKind::Pull, Some(pulls(5)), now),
            Ok(())
        );
        assert_eq!(l.len(), MAX_ENTRIES - EVICT_BATCH + 1);
        for gone in 1..=EVICT_BATCH {
            assert_eq!(l.cached(&format!("n{gone}"), now), None, "n{gone}");
        }
        for kept in [0, EVICT_BATCH + 1, MAX_ENTRIES - 1] {
            assert_eq!(
                l.cached(&format!("n{kept}"), now),
                Some(pulls(5)),
                "n{kept}"
            );
        }
        assert_eq!(l.cached("new", now), Some(pulls(5)));
        // The next new namespaces find room without evicting anything.
        for i in 0..EVICT_BATCH - 1 {
            assert_eq!(
                l.admit(&format!("m{i}"), RequestKind::Pull, Some(pulls(5)), now),
                Ok(())
            );
        }
        assert_eq!(l.len(), MAX_ENTRIES);
    }

    #[test]
    fn a_rate_removed_drops_its_bucket() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.admit("ns", RequestKind::Pull, Some(pulls(1)), t0), Ok(()));
        assert!(l.admit("ns", RequestKind::Pull, None, t0).is_err());
        // The limits changed: no pull rate any more, so nothing is refused nor kept.
        let t1 = t0 + RATES_TTL;
        for _ in 0..3 {
            assert_eq!(
                l.admit("ns", RequestKind::Pull, Some(Rates::default()), t1),
                Ok(())
            );
        }
        let entries = l.entries.lock().unwrap();
        assert!(entries["ns"].pull.is_none());
    }
}
