//! A real Prometheus (Debian's `prometheus` package) scraping a test cluster, and `promtool`.
//!
//! [`Prometheus::start`] runs `prometheus` on a free loopback port with its storage in a
//! temporary directory and the configuration the test wrote; dropping the handle SIGKILLs the
//! process (also when the test panics, after printing its log tail) and removes the directory.
//! Queries go through its HTTP API (`/api/v1/...`) and panic with the answer on an error.
//! [`metric_names`] finds the `berth_…` names a dashboard or rule file references.
//!
//! Invariants: every wait is bounded ([`crate::wait`]); every command is bounded in time
//! ([`berth_testkit::process`]); Prometheus listens on 127.0.0.1 only.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_testkit::free_port;
use berth_testkit::http::{Resp, agent_with_timeout, read_resp};
use berth_testkit::process::{CmdOutput, must_succeed, succeeds};

use crate::wait::{try_wait_until, wait_until};

/// How long Prometheus may take to answer `/-/ready` after it starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of one `promtool` run and of one HTTP call to Prometheus.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at starting Prometheus on newly reserved ports.
const BIND_ATTEMPTS: u32 = 5;

/// Probe of the two binaries the tests need: `Ok` when `prometheus` and `promtool` both run.
pub fn available() -> Result<(), String> {
    succeeds(Command::new("prometheus").arg("--version"))
        .map_err(|e| format!("prometheus is not runnable ({e}); scripts/deps installs it"))?;
    succeeds(Command::new("promtool").arg("--version"))
        .map_err(|e| format!("promtool is not runnable ({e}); scripts/deps installs it"))
}

/// Runs `promtool ARGS…` in `dir` and panics, with its output, unless it exits 0.
pub fn must_promtool(dir: &Path, args: &[&str]) -> CmdOutput {
    must_succeed(
        Command::new("promtool").args(args).current_dir(dir),
        CALL_TIMEOUT,
    )
}

/// Every distinct `berth_[a-z0-9_]+` in `text` that starts a word (not inside a longer name),
/// with a histogram's `_bucket`, `_sum` or `_count` suffix removed: the metric families a
/// dashboard or a rule file references.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let name_byte = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("berth_").map(|i| from + i) {
        let mut end = at + "berth_".len();
        while end < bytes.len() && name_byte(bytes[end]) {
            end += 1;
        }
        let starts_word =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if starts_word && end > at + "berth_".len() {
            let name = &text[at..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_string());
        }
        from = end;
    }
    names
}

/// The family a sample name belongs to, as its `# TYPE` line names it: a counter's `_total`
/// is not part of it (OpenMetrics, which berth's `/metrics` speaks).
pub fn family_of(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// A running `prometheus` on `127.0.0.1:<port>`; SIGKILLed and its directory removed on drop.
pub struct Prometheus {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Prometheus {
    /// Writes `config` (a prometheus.yml) to a new temporary directory, checks it with
    /// `promtool check config`, starts `prometheus` with it on a free loopback port (retrying
    /// on another port when the one reserved was taken), and returns once it answers
    /// `/-/ready`.
    pub fn start(config: &str) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("berth-prometheus-")
            .tempdir()
            .expect("failed to create the prometheus directory");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("failed to write prometheus.yml");
        must_promtool(dir.path(), &["check", "config", "prometheus.yml"]);
        let mut p = Prometheus {
            child: None,
            port: 0,
            log: dir.path().join("prometheus.log"),
            dir: Some(dir),
        };
        for attempt in 1..=BIND_ATTEMPTS {
            p.port = free_port();
            p.spawn(&config_path);
            match p.wait_ready() {
                Ok(()) => return p,
                Err(e)
                    if attempt < BIND_ATTEMPTS
                        && p.log_text().contains("address already in use") =>
                {
                    eprintln!("prometheus: {e}; retrying on another port");
                    p.kill();
                }
                Err(e) => panic!("prometheus did not start: {e}; log:\n{}", p.log_tail(60)),
            }
        }
        panic!("prometheus found no free port in {BIND_ATTEMPTS} attempts");
    }

    fn spawn(&mut self, config: &Path) {
        let dir = self.dir.as_ref().expect("prometheus directory").path();
        let log = std::fs::File::create(&self.log).expect("failed to create the prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--log.level=info")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn prometheus: {e}"));
        self.child = Some(child);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        try_wait_until(READY_TIMEOUT, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // A process that exited will not become ready: stop polling at once.
                return Ok(Err(format!("prometheus exited with {status}")));
            }
            match self.get("/-/ready", &[]) {
                Ok(r) if r.status == 200 => Ok(Ok(())),
                Ok(r) => Err(format!("/-/ready answered {}: {}", r.status, r.excerpt())),
                Err(e) => Err(e),
            }
        })?
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Base URL of its HTTP API, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log (stderr) so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `GET path` with query parameters.
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Resp, String> {
        let agent = agent_with_timeout(CALL_TIMEOUT);
        let mut req = agent.get(format!("{}{path}", self.url()));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        read_resp(req.call())
    }

    /// The `data` of an API call (`/api/v1/...`) that answered `"status": "success"`; `Err`
    /// with the answer otherwise.
    pub fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        let r = self.get(path, query)?;
        let body: serde_json::Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("{path}: not JSON ({e}): {}", r.excerpt()))?;
        if r.status == 200 && body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!(
                "{path} {query:?} answered {}: {}",
                r.status,
                r.excerpt()
            ))
        }
    }

    /// The series an instant query returns (`data.result` of a vector); panics on an error.
    pub fn must_query(&self, expr: &str) -> Vec<serde_json::Value> {
        let data = self
            .api("/api/v1/query", &[("query", expr)])
            .unwrap_or_else(|e| panic!("query {expr:?} failed: {e}"));
        match &data["result"] {
            serde_json::Value::Array(a) => a.clone(),
            // A scalar or a string: one value.
            other => vec![other.clone()],
        }
    }

    /// Waits until every active target is `up` and their scrape URLs are exactly `urls`;
    /// panics after `timeout` with the targets as last seen.
    pub fn wait_for_targets_up(&self, urls: &BTreeSet<String>, timeout: Duration) {
        wait_until("every scrape target to be up", timeout, || {
            let data = self.api("/api/v1/targets", &[("state", "active")])?;
            let targets = data["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let seen: BTreeSet<String> = targets
                .iter()
                .filter_map(|t| t["scrapeUrl"].as_str().map(str::to_string))
                .collect();
            let down: Vec<String> = targets
                .iter()
                .filter(|t| t["health"] != "up")
                .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
                .collect();
            if &seen == urls && down.is_empty() {
                Ok(())
            } else {
                Err(format!("targets {seen:?}; not up: {down:?}"))
            }
        });
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "prometheus log tail ({}):\n{}",
                self.log.display(),
                self.log_tail(40)
            );
        }
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_family_has_no_total() {
        assert_eq!(
            family_of("berth_replication_bytes_total"),
            "berth_replication_bytes"
        );
        assert_eq!(family_of("berth_peer_up"), "berth_peer_up");
    }

    #[test]
    fn names_are_families_that_start_a_word() {
        let text = r#"rate(berth_http_request_duration_seconds_bucket{x="y"}[1m]) /
            xberth_not_this + berth_raft_term and berth_http_requests_total "berth_" berth_x_count"#;
        let names: Vec<String> = metric_names(text).into_iter().collect();
        assert_eq!(
            names,
            [
                "berth_http_request_duration_seconds",
                "berth_http_requests_total",
                "berth_raft_term",
                "berth_x",
            ]
        );
    }
}
