//! The real clients of the tier-4 tests and what a test does when one is unavailable: skip
//! with a printed reason, or — when `BERTH_REQUIRE_CLIENT_TOOLS` names it — fail.
//!
//! `BERTH_REQUIRE_CLIENT_TOOLS` is `1` (or `all`) for every client, or a list of the names in
//! [`CLIENTS`] separated by commas or spaces; unset, empty or `0` requires none. A name it
//! does not know fails every real-client test, so that a typo cannot turn a requirement into a
//! skip. `scripts/test` sets it to every client installed on the machine (and, for docker and
//! containerd, every daemon that is installed), so CI fails where a client stops working
//! instead of passing with a SKIPPED line.
//!
//! A test probes each client it needs (installed? daemon answers?) and hands the results to
//! [`ready`] before it starts anything.

use std::process::Command;

/// The environment variable naming the clients that must be available.
pub const REQUIRE_VAR: &str = "BERTH_REQUIRE_CLIENT_TOOLS";

/// Every client name [`REQUIRE_VAR`] may list.
pub const CLIENTS: &[&str] = berth_testkit::CLIENT_TOOLS;

/// Whether a test runs, after its probes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Every client is available.
    Run,
    /// A client is unavailable and not required: the reason, to print.
    Skip(String),
}

/// The clients `value` (of [`REQUIRE_VAR`]) requires; `Err` for a name not in [`CLIENTS`].
pub fn required_clients(value: Option<&str>) -> Result<Vec<&'static str>, String> {
    let value = value.unwrap_or("").trim();
    if value.is_empty() || value == "0" {
        return Ok(Vec::new());
    }
    if value == "1" || value == "all" {
        return Ok(CLIENTS.to_vec());
    }
    value
        .split([',', ' '])
        .filter(|n| !n.is_empty())
        .map(|n| {
            CLIENTS.iter().find(|c| **c == n).copied().ok_or_else(|| {
                format!("{REQUIRE_VAR} names an unknown client {n:?} (known: {CLIENTS:?})")
            })
        })
        .collect()
}

/// Decides over the probes of a test's clients (`(name, Ok | Err(why unavailable))`) under
/// `value` of [`REQUIRE_VAR`]: `Err` (the test fails) when a required client is unavailable or
/// `value` is malformed; otherwise [`Decision::Skip`] when any client is unavailable.
pub fn decide(
    value: Option<&str>,
    probes: &[(&str, Result<(), String>)],
) -> Result<Decision, String> {
    let required = required_clients(value)?;
    let unavailable: Vec<(&str, &String)> = probes
        .iter()
        .filter_map(|(name, probe)| probe.as_ref().err().map(|why| (*name, why)))
        .collect();
    let failed: Vec<String> = unavailable
        .iter()
        .filter(|(name, _)| required.contains(name))
        .map(|(name, why)| format!("{name}: {why}"))
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "required by {REQUIRE_VAR}={} but unavailable: {}",
            value.unwrap_or(""),
            failed.join("; ")
        ));
    }
    if unavailable.is_empty() {
        return Ok(Decision::Run);
    }
    let reasons: Vec<String> = unavailable
        .iter()
        .map(|(name, why)| format!("{name}: {why}"))
        .collect();
    Ok(Decision::Skip(format!(
        "{} (set {REQUIRE_VAR}=1, or a list naming them, to fail instead)",
        reasons.join("; ")
    )))
}

/// Whether `test` runs: `true` when every probed client is available; `false` after printing
/// `SKIPPED <test>: <why>` when one is not and none of those is required; panics when a
/// required one is not.
pub fn ready(test: &str, probes: &[(&str, Result<(), String>)]) -> bool {
    let value = std::env::var(REQUIRE_VAR).ok();
    match decide(value.as_deref(), probes) {
        Ok(Decision::Run) => true,
        Ok(Decision::Skip(why)) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
        Err(why) => panic!("{test}: {why}"),
    }
}

/// Probe of an installed program: `program --version` runs and exits 0.
pub fn installed(program: &str) -> Result<(), String> {
    succeeds(Command::new(program).arg("--version"))
}

pub use berth_testkit::process::succeeds;
