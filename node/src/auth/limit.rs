//! Failed-login limiting, per login name and per client address, on this node: after `max`
//! failures within `window`, further attempts are refused (429 with `Retry-After`) until the
//! oldest failure leaves the window. Memory is bounded: at most [`MAX_KEYS`] names and
//! addresses are tracked; when full, entries whose failures all left the window are dropped,
//! and if none did, the table starts over (an attacker who floods it gains a fresh window,
//! not a bypass of the argon2 cost, which is bounded separately).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Names and addresses tracked at most.
pub const MAX_KEYS: usize = 50_000;

/// The limiter.
#[derive(Debug)]
pub struct LoginLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// `max` failures per `window` (0: no limit).
    pub fn new(max: u32, window: Duration) -> LoginLimiter {
        LoginLimiter {
            max,
            window,
            failures: Mutex::default(),
        }
    }

    /// How long until `keys` may try again; `None` when they may now.
    pub fn blocked(&self, keys: &[&str], now: Instant) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let failures = self.failures.lock().expect("limiter lock");
        keys.iter()
            .filter_map(|k| {
                let q = failures.get(*k)?;
                let live: Vec<&Instant> = q
                    .iter()
                    .filter(|t| now.duration_since(**t) < self.window)
                    .collect();
                (live.len() >= self.max as usize)
                    .then(|| self.window - now.duration_since(*live[0]))
            })
            .max()
    }

    /// Records a failed attempt for each of `keys`.
    pub fn failed(&self, keys: &[&str], now: Instant) {
        if self.max == 0 {
            return;
        }
        let mut failures = self.failures.lock().expect("limiter lock");
        if failures.len() + keys.len() > MAX_KEYS {
            let window = self.window;
            failures.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
            // Still full of live entries: drop the least recently failed tenth, never all
            // (clearing would hand a flooder a fresh window for the name it is guessing).
            if failures.len() + keys.len() > MAX_KEYS {
                let mut last: Vec<(Instant, String)> = failures
                    .iter()
                    .filter_map(|(k, q)| q.back().map(|t| (*t, k.clone())))
                    .collect();
                last.sort();
                for (_, k) in last.into_iter().take(MAX_KEYS / 10 + keys.len()) {
                    failures.remove(&k);
                }
            }
        }
        for k in keys {
            let q = failures.entry((*k).to_string()).or_default();
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window)
            {
                q.pop_front();
            }
            q.push_back(now);
            while q.len() > self.max as usize {
                q.pop_front();
            }
        }
    }

    /// Takes back the newest failure of each of `keys` (counted before a check that then
    /// succeeded).
    pub fn forgive(&self, keys: &[&str]) {
        let mut failures = self.failures.lock().expect("limiter lock");
        for k in keys {
            if let Some(q) = failures.get_mut(*k) {
                q.pop_back();
                if q.is_empty() {
                    failures.remove(*k);
                }
            }
        }
    }

    /// Forgets the failures of `key` (after a successful login by that name).
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().expect("limiter lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_blocks_until_the_oldest_failure_leaves_the_window() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(l.blocked(&["u:a", "ip:1"], t0), None, "attempt {i}");
            l.failed(&["u:a", "ip:1"], t0 + Duration::from_secs(i));
        }
        let wait = l.blocked(&["u:a"], t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(l.blocked(&["ip:1"], t0 + Duration::from_secs(10)).is_some());
        assert!(l.blocked(&["u:b", "ip:2"], t0).is_none());
        assert_eq!(l.blocked(&["u:a"], t0 + Duration::from_secs(61)), None);
        l.succeeded("u:a");
        assert_eq!(l.blocked(&["u:a"], t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn a_forgiven_attempt_does_not_count() {
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        let t = Instant::now();
        l.failed(&["u:a", "ip:1"], t);
        l.failed(&["u:a", "ip:1"], t);
        assert!(l.blocked(&["ip:1"], t).is_some());
        l.forgive(&["u:a", "ip:1"]);
        assert_eq!(l.blocked(&["u:a", "ip:1"], t), None);
    }

    #[test]
    fn a_full_table_keeps_the_most_recent_failures() {
        let l = LoginLimiter::new(1, Duration::from_secs(60));
        let t = Instant::now();
        l.failed(&["u:victim"], t + Duration::from_secs(1));
        for i in 0..(MAX_KEYS + 10) {
            l.failed(&[&format!("ip:{i}")], t);
        }
        assert!(
            l.blocked(&["u:victim"], t + Duration::from_secs(2))
                .is_some()
        );
    }

    #[test]
    fn memory_stays_bounded() {
        let l = LoginLimiter::new(1, Duration::from_secs(60));
        let t = Instant::now();
        for i in 0..(MAX_KEYS + 10) {
            l.failed(&[&format!("ip:{i}")], t);
        }
        assert!(l.failures.lock().unwrap().len() <= MAX_KEYS);
    }
}
