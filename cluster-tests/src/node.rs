//! One `berth serve` process: its flags, ports, data directory, stderr files and lifecycle
//! (start, SIGKILL, SIGTERM, restart over the same data directory and ports).
//!
//! A node keeps its ports for life: peers know it by the addresses it registered with, so a
//! restart must bind the same ones. Ports are reserved by binding `127.0.0.1:0` and dropping
//! the listener; when another process takes a port in between, the first start notices
//! berth's "failed to bind" exit and retries on fresh ports (a restart cannot, and panics).
//!
//! Every start writes stderr to its own file `node-<id>/stderr-<n>.log` in the cluster's
//! temporary directory. Dropping a handle SIGKILLs its process.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_testkit::free_port;

use crate::oci::Client;
use crate::wait::POLL_INTERVAL;

/// How long a fresh node may take to bind its listeners (or exit trying).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERMed node may take to exit before it is SIGKILLed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at starting a fresh node on newly reserved ports.
const BIND_ATTEMPTS: u32 = 5;

/// The `berth` binary to run: env `BERTH_BIN` (a build with `--features fault-injection`).
/// Panics with instructions when it is unset or missing.
pub fn berth_bin() -> PathBuf {
    let hint = "set BERTH_BIN to a berth built with the fault-injection feature, e.g.\n  \
        cargo build -p berth-node --features fault-injection --bin berth && \
        mkdir -p /tmp/berth-fi && cp target/debug/berth /tmp/berth-fi/ && \
        export BERTH_BIN=/tmp/berth-fi/berth\n(scripts/test does this)";
    let Some(p) = std::env::var_os("BERTH_BIN") else {
        panic!("BERTH_BIN is not set; {hint}");
    };
    let p = PathBuf::from(p);
    assert!(
        p.is_file(),
        "BERTH_BIN={} is not a file; {hint}",
        p.display()
    );
    p
}

/// What a node is started with; the same on every (re)start.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Raft node id (≥ 1).
    pub id: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Directory for the stderr files.
    pub log_dir: PathBuf,
    /// `--join` member cluster address, for nodes that join an existing cluster.
    pub join: Option<String>,
    /// `--region`.
    pub region: String,
    /// `--zone`.
    pub zone: String,
    /// Environment (`BERTH_…` settings, `RUST_LOG`) on top of the harness's clean one.
    pub env: Vec<(String, String)>,
}

/// A `berth serve` process (running or not) and everything needed to restart it.
pub struct NodeHandle {
    spec: NodeSpec,
    http_port: u16,
    cluster_port: u16,
    child: Mutex<Option<Child>>,
    starts: u32,
    stderr_path: PathBuf,
}

impl NodeHandle {
    /// Starts a fresh node on newly reserved ports, retrying on a port collision, and waits
    /// until its listeners are bound (not until it is ready: see
    /// [`crate::Cluster::wait_for_ready`]).
    pub fn start(spec: NodeSpec) -> NodeHandle {
        std::fs::create_dir_all(&spec.log_dir).expect("failed to create the log directory");
        let mut node = NodeHandle {
            spec,
            http_port: 0,
            cluster_port: 0,
            child: Mutex::new(None),
            starts: 0,
            stderr_path: PathBuf::new(),
        };
        for attempt in 1..=BIND_ATTEMPTS {
            node.http_port = free_port();
            node.cluster_port = free_port();
            if node.http_port == node.cluster_port {
                continue;
            }
            node.spawn();
            match node.wait_listening(START_TIMEOUT) {
                Ok(()) => return node,
                Err(e) if attempt < BIND_ATTEMPTS && node.stderr().contains("failed to bind") => {
                    eprintln!("node {}: {e}; retrying on other ports", node.id());
                }
                Err(e) => panic!(
                    "node {} failed to start: {e}; stderr ({}):\n{}",
                    node.id(),
                    node.stderr_path.display(),
                    node.stderr_tail(80)
                ),
            }
        }
        panic!(
            "node {} found no free ports in {BIND_ATTEMPTS} attempts",
            node.id()
        );
    }

    fn spawn(&mut self) {
        assert!(!self.is_running(), "node {} is already running", self.id());
        self.starts += 1;
        self.stderr_path = self
            .spec
            .log_dir
            .join(format!("stderr-{}.log", self.starts));
        let stderr =
            std::fs::File::create(&self.stderr_path).expect("failed to create a stderr file");
        let mut cmd = Command::new(berth_bin());
        cmd.arg("serve")
            .arg("--node-id")
            .arg(self.spec.id.to_string())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--cluster-listen")
            .arg(self.cluster_addr())
            .arg("--data-dir")
            .arg(&self.spec.data_dir)
            .arg("--region")
            .arg(&self.spec.region)
            .arg("--zone")
            .arg(&self.spec.zone);
        if let Some(join) = &self.spec.join {
            cmd.arg("--join").arg(join);
        }
        // Only this cluster's settings: nothing BERTH_* inherited from the test runner.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("BERTH_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        // A free-space reserve of 1 GiB only, not 5 % of the file system: on a large, busy
        // machine 5 % can exceed what is free (a test's own env may set it back).
        cmd.env("BERTH_STORAGE__RESERVE_PERCENT", "0");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,openraft=warn");
        }
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {}: {e}", berth_bin().display()));
        *self.child.get_mut().expect("child lock") = Some(child);
    }

    /// Waits until the cluster endpoint accepts connections (berth binds both listeners
    /// before serving either, and serves the cluster endpoint first). `Err` when the process
    /// exited or the time ran out.
    fn wait_listening(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.cluster_port));
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(format!("the process exited with {status}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the cluster endpoint {addr} did not open within {timeout:?}"
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Reaps the process if it exited; returns its status then.
    fn try_exit_status(&self) -> Option<ExitStatus> {
        let mut guard = self.child.lock().expect("child lock");
        let status = guard.as_mut()?.try_wait().ok().flatten()?;
        *guard = None;
        Some(status)
    }

    fn take_child(&mut self) -> Child {
        self.child
            .get_mut()
            .expect("child lock")
            .take()
            .unwrap_or_else(|| panic!("node {} is not running", self.spec.id))
    }

    /// Raft node id.
    pub fn id(&self) -> u64 {
        self.spec.id
    }

    /// Base URL of the registry HTTP front, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The cluster gRPC address, `127.0.0.1:PORT` (what peers and clusterctl dial).
    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.spec.data_dir
    }

    /// The spec it was started with.
    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// An OCI client for this node's HTTP front.
    pub fn client(&self) -> Client {
        Client::new(&self.url(), &format!("node {}", self.id()))
    }

    /// Whether the process is running (it has not exited and was not killed or stopped).
    pub fn is_running(&self) -> bool {
        self.try_exit_status();
        self.child.lock().expect("child lock").is_some()
    }

    /// SIGKILLs the process and reaps it (`kill -9`). Panics when it is not running.
    pub fn kill(&mut self) {
        let mut child = self.take_child();
        child.kill().expect("failed to SIGKILL berth");
        child.wait().expect("failed to reap berth");
    }

    /// SIGTERMs the process and waits for it to exit; SIGKILLs it after [`STOP_TIMEOUT`].
    /// Returns its exit status (`None`: it had to be SIGKILLed). Panics when not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.take_child();
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
        berth_testkit::process::wait_exit(&mut child, STOP_TIMEOUT)
    }

    /// Starts the process again with the same flags, ports and data directory, and waits
    /// until its listeners are bound (not until it is ready). Panics when it still runs or
    /// cannot bind its ports.
    pub fn restart(&mut self) {
        assert!(
            !self.is_running(),
            "node {} still runs; kill or stop it first",
            self.id()
        );
        self.spawn();
        if let Err(e) = self.wait_listening(START_TIMEOUT) {
            panic!(
                "node {} failed to restart on its ports: {e}; stderr ({}):\n{}",
                self.id(),
                self.stderr_path.display(),
                self.stderr_tail(80)
            );
        }
    }

    /// Everything the current (last) start wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything every start wrote to stderr, oldest first.
    pub fn all_stderr(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.spec.log_dir.join(format!("stderr-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("")
    }

    /// The last `n` lines of the current start's stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        let all = self.stderr();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Path of the current start's stderr file.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.get_mut().ok().and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
