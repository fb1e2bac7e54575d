//! Real clients (docker, skopeo, containerd's `ctr`) against a cluster, and what a test does
//! when one is unavailable: skip with a printed reason, or — when `BERTH_REQUIRE_CLIENT_TOOLS`
//! names it — fail. The rule is the one of `node/tests/support/tools.rs` (the node crate's
//! real-client tests): `1` or `all` requires every client, else a list of names separated by
//! commas or spaces; unset, empty or `0` requires none; an unknown name fails.
//!
//! Every command is bounded in time ([`berth_testkit::process::run_cmd`]).

use std::process::Command;
use std::time::Duration;

use berth_testkit::process::{CmdOutput, ctr_image_digest, run_cmd, succeeds};

/// The environment variable naming the clients that must be available.
pub const REQUIRE_VAR: &str = "BERTH_REQUIRE_CLIENT_TOOLS";
/// Every client name [`REQUIRE_VAR`] may list (as in the node crate's tests).
pub const CLIENTS: &[&str] = berth_testkit::CLIENT_TOOLS;
/// Bound of one client command (a pull).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
/// containerd sockets tried when `BERTH_TEST_CONTAINERD_SOCK` is not set.
const CONTAINERD_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/docker/containerd/containerd.sock",
];

/// Whether `client` is required by `value` of [`REQUIRE_VAR`]; `Err` for a malformed value.
pub fn required(value: Option<&str>, client: &str) -> Result<bool, String> {
    let value = value.unwrap_or("").trim();
    if value.is_empty() || value == "0" {
        return Ok(false);
    }
    if value == "1" || value == "all" {
        return Ok(true);
    }
    let mut found = false;
    for name in value.split([',', ' ']).filter(|n| !n.is_empty()) {
        if !CLIENTS.contains(&name) {
            return Err(format!(
                "{REQUIRE_VAR} names an unknown client {name:?} (known: {CLIENTS:?})"
            ));
        }
        found |= name == client;
    }
    Ok(found)
}

/// Whether a part of `test` that needs `client` runs: `true` when `probe` is `Ok`; `false`
/// after printing `SKIPPED <test> (<client>): <why>` when it is not and the client is not
/// required; panics when it is required (or the variable is malformed).
pub fn ready(test: &str, client: &str, probe: Result<(), String>) -> bool {
    let value = std::env::var(REQUIRE_VAR).ok();
    let must = required(value.as_deref(), client).unwrap_or_else(|e| panic!("{test}: {e}"));
    match probe {
        Ok(()) => true,
        Err(why) if must => panic!("{test}: {client} is required by {REQUIRE_VAR} but: {why}"),
        Err(why) => {
            eprintln!(
                "SKIPPED {test} ({client}): {why} (set {REQUIRE_VAR}=1, or a list naming it, to \
                 fail instead)"
            );
            false
        }
    }
}

/// Runs a command within [`CLIENT_TIMEOUT`]; panics when it cannot start, overruns or exits
/// non-zero, with what it printed.
pub fn must(cmd: &mut Command) -> CmdOutput {
    let shown = format!("{cmd:?}");
    let out = run_cmd(cmd, CLIENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{shown} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        out.stdout_text(),
        out.stderr_text()
    );
    out
}

/// Probe of the Docker engine.
pub fn docker_available() -> Result<(), String> {
    succeeds(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]))
        .map_err(|e| format!("the Docker engine does not answer: {e}"))
}

/// Probe of skopeo.
pub fn skopeo_available() -> Result<(), String> {
    succeeds(Command::new("skopeo").arg("--version"))
}

/// The socket of a containerd daemon that answers `ctr version`, or why there is none.
pub fn containerd_socket() -> Result<String, String> {
    succeeds(Command::new("ctr").arg("--version"))?;
    let candidates: Vec<String> = match std::env::var("BERTH_TEST_CONTAINERD_SOCK") {
        Ok(s) => vec![s],
        Err(_) => CONTAINERD_SOCKETS.iter().map(|s| s.to_string()).collect(),
    };
    let mut why = Vec::new();
    for socket in candidates {
        if !std::path::Path::new(&socket).exists() {
            why.push(format!("{socket}: no such socket"));
            continue;
        }
        match succeeds(Command::new("ctr").args([
            "--address",
            &socket,
            "--timeout",
            "5s",
            "version",
        ])) {
            Ok(()) => return Ok(socket),
            Err(e) => why.push(format!("{socket}: {e}")),
        }
    }
    Err(format!("no containerd daemon answers: {}", why.join("; ")))
}

/// The Docker engine's image id of a reference, `None` when it has none.
pub fn docker_image_id(reference: &str) -> Option<String> {
    let out = run_cmd(
        Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", reference]),
        CLIENT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    out.status
        .success()
        .then(|| out.stdout_text().trim().to_string())
}

/// Removes images from the Docker engine when dropped (also when the test fails).
pub struct DockerImages(pub Vec<String>);

impl Drop for DockerImages {
    fn drop(&mut self) {
        for r in &self.0 {
            let _ = run_cmd(
                Command::new("docker").args(["rmi", "--force", r]),
                Duration::from_secs(60),
            );
        }
    }
}

/// `ctr` bound to one daemon and a namespace of its own, removed (with its images) on drop.
pub struct Ctr {
    socket: String,
    namespace: String,
}

impl Ctr {
    /// `ctr` over `socket` in namespace `namespace` (made unique by the caller).
    pub fn new(socket: String, namespace: String) -> Ctr {
        Ctr { socket, namespace }
    }

    /// A `ctr` command with the socket and namespace set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.args(["--address", &self.socket, "--namespace", &self.namespace])
            .args(args);
        cmd
    }

    /// The digest containerd recorded for an image reference.
    pub fn image_digest(&self, reference: &str) -> String {
        let listing = must(&mut self.command(&["images", "ls"])).stdout_text();
        ctr_image_digest(&listing, reference)
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        if let Ok(out) = run_cmd(
            &mut self.command(&["images", "ls", "--quiet"]),
            CLIENT_TIMEOUT,
        ) {
            for r in out.stdout_text().lines().filter(|l| !l.is_empty()) {
                let _ = run_cmd(&mut self.command(&["images", "rm", r]), CLIENT_TIMEOUT);
            }
        }
        // containerd's garbage collector empties the namespace shortly; bounded attempts.
        for _ in 0..50 {
            let gone = run_cmd(
                Command::new("ctr").args([
                    "--address",
                    &self.socket,
                    "namespaces",
                    "rm",
                    &self.namespace,
                ]),
                Duration::from_secs(30),
            )
            .is_ok_and(|o| o.status.success());
            if gone {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "containerd namespace {} could not be removed",
            self.namespace
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requirement_names_clients() {
        assert!(!required(None, "docker").unwrap());
        assert!(!required(Some("0"), "docker").unwrap());
        assert!(required(Some("1"), "skopeo").unwrap());
        assert!(required(Some("docker, containerd"), "containerd").unwrap());
        assert!(!required(Some("docker"), "skopeo").unwrap());
        assert!(required(Some("dokcer"), "docker").is_err());
    }
}
