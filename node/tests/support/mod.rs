//! Shared harness of the tier-4 tests: a real `berth serve` process on a real socket, and the
//! policy for real clients that may be missing ([`tools`]). The OCI client, the HTTP agent and
//! bounded external commands are the workspace's one test kit (`berth-testkit`), re-exported
//! here under the names the tests use.
//!
//! Every wait here is a deadline poller (bounded in time and count), never a fixed sleep, and
//! every process started here is killed when its handle drops.

#![allow(dead_code)]

pub mod images;
pub mod tools;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use berth_testkit::http::{Resp, agent_with_timeout, read_resp};
#[allow(unused_imports)]
pub use berth_testkit::oci::{
    Client, MANIFEST_ACCEPT, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, UploadStyle,
    string_list,
};
#[allow(unused_imports)]
pub use berth_testkit::process::{CmdOutput, must_run, must_succeed, run_cmd};
pub use berth_testkit::{free_port, sha256_digest};
#[allow(unused_imports)]
pub use tools::ready;

/// How long a node may take from spawn to a 200 from `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `terminate` waits for the process to exit after SIGTERM by default.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) `berth serve` process over one data directory.
pub struct BerthProcess {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    /// Holds the stderr capture files; removed with the handle unless a test failed.
    log_dir: Option<tempfile::TempDir>,
    /// The stderr file of the current (last) start.
    stderr_path: PathBuf,
    starts: u32,
}

impl BerthProcess {
    /// Starts berth on a free port over `data_dir` and waits until `/readyz` answers 200.
    pub fn start(data_dir: &Path) -> BerthProcess {
        BerthProcess::start_with_env(data_dir, &[])
    }

    /// As [`BerthProcess::start`], with extra `BERTH_…` (or other) environment variables.
    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> BerthProcess {
        let mut p = BerthProcess {
            child: None,
            port: 0,
            data_dir: data_dir.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log_dir: Some(
                tempfile::Builder::new()
                    .prefix("berth-logs-")
                    .tempdir()
                    .expect("create log dir"),
            ),
            stderr_path: PathBuf::new(),
            starts: 0,
        };
        p.spawn_until_ready();
        p
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, as container tools want it in image references.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the current (last) process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last `n` lines of stderr, for failure messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let all = self.stderr();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Spawns berth; retries with another port when the chosen one was taken meanwhile.
    fn spawn_until_ready(&mut self) {
        assert!(self.child.is_none(), "berth is already running");
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            self.starts += 1;
            self.port = free_port();
            self.stderr_path = self
                .log_dir
                .as_ref()
                .expect("log dir")
                .path()
                .join(format!("berth-stderr-{}.log", self.starts));
            let stderr = std::fs::File::create(&self.stderr_path).expect("create stderr file");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
            cmd.arg("serve")
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("--data-dir")
                .arg(&self.data_dir)
                // A single node: its cluster endpoint on any free port.
                .arg("--cluster-listen")
                .arg("127.0.0.1:0")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(stderr));
            // Only this test's settings: no BERTH_* from the environment of the test runner.
            for (k, _) in std::env::vars() {
                if k.starts_with("BERTH_") {
                    cmd.env_remove(k);
                }
            }
            cmd.env("NO_COLOR", "1");
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info,openraft=warn");
            }
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
            self.child = Some(cmd.spawn().expect("spawn berth"));
            match self.wait_ready(READY_TIMEOUT) {
                Ok(()) => return,
                Err(exited) => {
                    let log = self.stderr();
                    if exited && log.contains("failed to bind") && attempt < ATTEMPTS {
                        // The port was taken between our probe and berth's bind: try another.
                        self.child = None;
                        continue;
                    }
                    self.kill_quietly();
                    panic!(
                        "berth (start {}, port {}) did not become ready within {:?}; \
                         stderr ({}):\n{}",
                        self.starts,
                        self.port,
                        READY_TIMEOUT,
                        self.stderr_path.display(),
                        log
                    );
                }
            }
        }
        unreachable!("the loop returns or panics");
    }

    /// Polls `/readyz` until 200. `Err(true)`: the process exited; `Err(false)`: timed out.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), bool> {
        let agent = agent_with_timeout(Duration::from_secs(2));
        let url = format!("{}/readyz", self.base_url());
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return Err(true);
            }
            if let Ok(resp) = agent.get(&url).call()
                && resp.status().as_u16() == 200
            {
                return Ok(());
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(200));
        }
        Err(false)
    }

    /// SIGKILLs the process and reaps it. Panics when it is not running.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("berth is not running");
        child.kill().expect("SIGKILL berth");
        child.wait().expect("reap berth");
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        let pid = self.pid().expect("berth is not running");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        assert_eq!(
            rc,
            0,
            "kill(SIGTERM) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the process to exit (after a signal), up to `timeout`. `None`: still running
    /// (it is then SIGKILLed, so that the handle is stopped either way).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take().expect("berth is not running");
        berth_testkit::process::wait_exit(&mut child, timeout)
    }

    /// SIGTERM, then wait for the exit. Panics when it does not exit within [`EXIT_TIMEOUT`].
    pub fn terminate(&mut self) -> ExitStatus {
        self.send_sigterm();
        match self.wait_exit(EXIT_TIMEOUT) {
            Some(s) => s,
            None => panic!(
                "berth did not exit within {EXIT_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.stderr_tail(60)
            ),
        }
    }

    /// Starts the process again over the same data directory (stopping it with SIGTERM first
    /// if it still runs) and waits until ready. The port may change: use [`Self::base_url`].
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.terminate();
            assert!(status.success(), "berth exited with {status} on SIGTERM");
        }
        self.spawn_until_ready();
    }

    fn kill_quietly(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for BerthProcess {
    fn drop(&mut self) {
        self.kill_quietly();
        if std::thread::panicking() {
            // Keep every start's stderr for a look after the failure.
            if let Some(dir) = self.log_dir.take() {
                let _ = dir.keep();
            }
            eprintln!(
                "---- berth stderr (last start, kept at {}) ----\n{}\n---- end of berth stderr ----",
                self.stderr_path.display(),
                self.stderr_tail(200)
            );
        }
    }
}

/// An OCI image manifest over a config and layers (descriptors of the given blobs).
pub fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let desc = |media_type: &str, data: &[u8]| {
        serde_json::json!({
            "mediaType": media_type,
            "digest": sha256_digest(data),
            "size": data.len(),
        })
    };
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, config),
        "layers": layers.iter().map(|l| desc(OCI_LAYER, l)).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&m).expect("json encodes")
}

// ---------------------------------------------------------------------------------------------
// External commands

/// The entries directly in a directory, as paths; empty when it does not exist.
pub fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}

/// Removes the images a test created from the Docker engine, also when the test fails.
pub struct ImageCleanup(pub Vec<String>);

impl Drop for ImageCleanup {
    fn drop(&mut self) {
        for r in &self.0 {
            let _ = run_cmd(
                std::process::Command::new("docker").args(["rmi", "--force", r]),
                std::time::Duration::from_secs(60),
            );
        }
    }
}

/// The bootstrap admin password of [`start_with_auth`].
pub const ADMIN_PASSWORD: &str = "admin-pass-1";

/// `Authorization: Basic` of the admin of [`start_with_auth`].
pub fn admin_basic() -> String {
    format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("admin:{ADMIN_PASSWORD}")
        )
    )
}

/// Starts berth with `auth.enabled = true` and a bootstrap admin, and returns once the admin
/// can log in (the bootstrap is a Raft write after start-up).
pub fn start_with_auth(data: &Path) -> BerthProcess {
    let berth = BerthProcess::start_with_env(
        data,
        &[
            ("BERTH_AUTH__ENABLED", "true"),
            ("BERTH_AUTH__BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    );
    let agent = berth_testkit::http::agent_with_timeout(Duration::from_secs(5));
    let url = format!("{}/auth/token?service=berth", berth.base_url());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = berth_testkit::http::read_resp(
            agent
                .get(&url)
                .header("authorization", &admin_basic())
                .call(),
        );
        if r.is_ok_and(|r| r.status == 200) {
            return berth;
        }
        assert!(
            Instant::now() < deadline,
            "the admin could not log in within 30 s:\n{}",
            berth.stderr_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A [`start_with_auth`] node in `dir/data` holding `repo:v1`, a one-layer image built with
/// umoci and copied in by skopeo with the admin's credentials.
pub fn auth_registry_with_image(dir: &Path, repo: &str) -> BerthProcess {
    let layout = images::Layout::at(dir.join("layout"));
    images::build_image(dir, &layout, "v1", &[64 * 1024]);
    let berth = start_with_auth(&dir.join("data"));
    images::skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("admin:{ADMIN_PASSWORD}"),
        &layout.oci("v1"),
        &format!("docker://{}/{repo}:v1", berth.host_port()),
    ]);
    berth
}

/// The repositories a [`start_with_auth`] node holds, read as its admin.
pub fn admin_catalog(berth: &BerthProcess) -> Vec<String> {
    let client = Client::new(&berth.base_url()).with_authorization(&admin_basic());
    let r = client.get("/v2/_catalog").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    berth_testkit::oci::string_list(&r.json()["repositories"])
}
