//! Deadline pollers: the only way the harness and the scenarios wait for something.
//!
//! Every wait is a loop bounded in time (the caller's timeout) and in count (one try per
//! [`POLL_INTERVAL`], so at most `timeout / POLL_INTERVAL + 1` tries). There are no fixed
//! sleeps "to let things settle": a test waits for the condition it needs, and a timeout
//! panics with what was awaited and the last thing observed.

use std::time::{Duration, Instant};

/// Pause between two tries of a poller.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `f` until it returns `Ok`, and returns that value. Panics after `timeout` with
/// `what` and the last `Err` (what the condition saw on its last try).
pub fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    match try_wait_until(timeout, f) {
        Ok(v) => v,
        Err(last) => panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}"),
    }
}

/// As [`wait_until`], but returns the last `Err` instead of panicking on timeout.
pub fn try_wait_until<T>(
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let max_tries = timeout.as_millis() / POLL_INTERVAL.as_millis() + 2;
    let mut last = String::from("(never tried)");
    for _ in 0..max_tries {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
    Err(last)
}

/// Polls a boolean condition until it holds; panics after `timeout` naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_until(what, timeout, || {
        if cond() {
            Ok(())
        } else {
            Err("condition false".to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_ok() {
        let mut n = 0;
        let v = wait_until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            if n >= 3 {
                Ok(n)
            } else {
                Err(format!("n = {n}"))
            }
        });
        assert_eq!(v, 3);
    }

    #[test]
    fn times_out_with_the_last_error() {
        let started = Instant::now();
        let err = try_wait_until::<()>(Duration::from_millis(120), || Err("nope".into()));
        assert_eq!(err, Err("nope".to_string()));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible")]
    fn wait_for_panics_with_context() {
        wait_for("the impossible", Duration::from_millis(60), || false);
    }
}
