//! Running the `clusterctl` binary against a node, bounded in time.
//!
//! The binary comes from env `CLUSTERCTL_BIN`, else `<target>/<profile>/clusterctl` next to
//! the running test executable (`<target>/<profile>/deps/<test>-<hash>`), which a
//! `cargo build -p clusterctl` in the same workspace produces.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// The clusterctl binary; panics with instructions when it cannot be found.
pub fn clusterctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CLUSTERCTL_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "CLUSTERCTL_BIN={} is not a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("failed to find the test executable");
    let candidate = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("clusterctl"));
    match candidate {
        Some(p) if p.is_file() => p,
        other => panic!(
            "clusterctl not found (CLUSTERCTL_BIN is unset and {other:?} does not exist); \
             run `cargo build -p clusterctl` or set CLUSTERCTL_BIN"
        ),
    }
}

/// What a finished clusterctl run did.
#[derive(Debug)]
pub struct CtlOutput {
    /// The command line, for messages.
    pub args: Vec<String>,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CtlOutput {
    /// Panics with the command line and both outputs unless it exited 0.
    pub fn assert_success(&self) -> &CtlOutput {
        assert!(
            self.status.success(),
            "`clusterctl {}` exited with {}\nstdout:\n{}\nstderr:\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Standard output parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`clusterctl {}` did not print JSON ({e}):\n{}",
                self.args.join(" "),
                self.stdout
            )
        })
    }

    /// Standard output parsed as JSON lines.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!(
                        "`clusterctl {}` printed a line that is not JSON ({e}): {l}",
                        self.args.join(" ")
                    )
                })
            })
            .collect()
    }
}

/// Runs `clusterctl --endpoint <endpoint> <args…>`; kills it and panics after `timeout`.
pub fn run(endpoint: &str, args: &[&str], timeout: Duration) -> CtlOutput {
    run_with(endpoint, args, &[], None, timeout)
}

/// As [`run`], with `env` set (e.g. `CLUSTERCTL_USER` and `CLUSTERCTL_PASSWORD`; no other
/// `CLUSTERCTL_…` setting comes from the test's environment) and `stdin` written to its
/// standard input (`--password-stdin`).
pub fn run_with(
    endpoint: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
    timeout: Duration,
) -> CtlOutput {
    let mut all = vec!["--endpoint".to_string(), endpoint.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let mut cmd = Command::new(clusterctl_bin());
    cmd.args(&all);
    berth_testkit::process::without_env_prefix(&mut cmd, "CLUSTERCTL_");
    cmd.envs(env.iter().copied());
    let input = stdin.map(str::as_bytes);
    let out = berth_testkit::process::run_cmd_with_input(&mut cmd, input, timeout)
        .unwrap_or_else(|e| panic!("`clusterctl {}`: {e}", all.join(" ")));
    CtlOutput {
        stdout: out.stdout_text(),
        stderr: out.stderr_text(),
        status: out.status,
        args: all,
    }
}
