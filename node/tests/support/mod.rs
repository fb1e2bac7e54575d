//! Shared harness of the tier-4 tests: a real `berth serve` process on a real socket, a small
//! blocking HTTP client, OCI push helpers and bounded external commands.
//!
//! Every wait here is a deadline poller (bounded in time and count), never a fixed sleep, and
//! every process started here is killed when its handle drops.

#![allow(dead_code)]

pub mod images;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// How long a node may take from spawn to a 200 from `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `terminate` waits for the process to exit after SIGTERM by default.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// OCI media types used by the tests.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The `Accept` header of a manifest GET that takes any manifest kind the tests push.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Picks a free loopback port: bind port 0, read the port, drop the listener.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

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
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait berth") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

// ---------------------------------------------------------------------------------------------
// HTTP

/// A blocking HTTP client that returns every status as a response (no error on 4xx/5xx), uses
/// no proxy, and gives up on any call after `timeout`.
pub fn agent_with_timeout(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// [`agent_with_timeout`] of 60 s.
pub fn agent() -> ureq::Agent {
    agent_with_timeout(Duration::from_secs(60))
}

/// A whole HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
}

/// Largest response body read.
const BODY_LIMIT: u64 = 256 * 1024 * 1024;

/// Reads a ureq result into a [`Resp`].
pub fn read_resp(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Resp, String> {
    let mut resp = r.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Resolves a `Location` header (absolute or absolute-path) against `base`.
pub fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        format!("{base}{location}")
    }
}

/// Appends a query parameter to a URL that may already have a query.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// How a blob is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStyle {
    /// `POST …/uploads/?digest=` with the whole body.
    Monolithic,
    /// `POST` a session, then `PUT ?digest=` with the whole body.
    PostPut,
    /// `POST` a session, `PATCH` in chunks, then an empty `PUT ?digest=`.
    Chunked,
}

/// A small OCI client over one agent and one registry base URL.
pub struct Client {
    pub agent: ureq::Agent,
    pub base: String,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            agent: agent(),
            base: base.to_string(),
        }
    }

    pub fn get(&self, path: &str) -> Result<Resp, String> {
        read_resp(self.agent.get(format!("{}{path}", self.base)).call())
    }

    pub fn head(&self, path: &str) -> Result<Resp, String> {
        read_resp(self.agent.head(format!("{}{path}", self.base)).call())
    }

    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<Resp, String> {
        read_resp(
            self.agent
                .get(format!("{}/v2/{repo}/manifests/{reference}", self.base))
                .header("Accept", MANIFEST_ACCEPT)
                .call(),
        )
    }

    pub fn get_blob(&self, repo: &str, digest: &str) -> Result<Resp, String> {
        self.get(&format!("/v2/{repo}/blobs/{digest}"))
    }

    /// Uploads a blob; `Ok(())` on 201, `Err` with what happened otherwise.
    pub fn push_blob(&self, repo: &str, data: &[u8], style: UploadStyle) -> Result<(), String> {
        let digest = sha256_digest(data);
        let uploads = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let expect = |r: Resp, want: u16, what: &str| -> Result<Resp, String> {
            if r.status == want {
                Ok(r)
            } else {
                Err(format!(
                    "{what}: status {} (want {want}): {}",
                    r.status,
                    r.text()
                ))
            }
        };
        match style {
            UploadStyle::Monolithic => {
                let r = read_resp(
                    self.agent
                        .post(with_query(&uploads, "digest", &digest))
                        .header("Content-Type", "application/octet-stream")
                        .send(data),
                )?;
                expect(r, 201, "monolithic POST")?;
            }
            UploadStyle::PostPut | UploadStyle::Chunked => {
                let r = expect(
                    read_resp(self.agent.post(&uploads).send_empty())?,
                    202,
                    "POST session",
                )?;
                let mut location = resolve(
                    &self.base,
                    r.header("location").ok_or("POST session: no Location")?,
                );
                let final_body: &[u8] = if style == UploadStyle::Chunked {
                    let mid = data.len() / 2;
                    let mut offset = 0usize;
                    for chunk in [&data[..mid], &data[mid..]] {
                        if chunk.is_empty() {
                            continue;
                        }
                        let end = offset + chunk.len() - 1;
                        let r = expect(
                            read_resp(
                                self.agent
                                    .patch(&location)
                                    .header("Content-Type", "application/octet-stream")
                                    .header("Content-Range", format!("{offset}-{end}"))
                                    .send(chunk),
                            )?,
                            202,
                            "PATCH chunk",
                        )?;
                        location = resolve(
                            &self.base,
                            r.header("location").ok_or("PATCH: no Location")?,
                        );
                        offset += chunk.len();
                    }
                    &[]
                } else {
                    data
                };
                let r = read_resp(
                    self.agent
                        .put(with_query(&location, "digest", &digest))
                        .header("Content-Type", "application/octet-stream")
                        .send(final_body),
                )?;
                expect(r, 201, "PUT ?digest=")?;
            }
        }
        Ok(())
    }

    /// Opens an upload session and sends part of a blob, never finishing it (leaves a staging
    /// file on the server). Returns the session URL.
    pub fn abandon_upload(&self, repo: &str, partial: &[u8]) -> Result<String, String> {
        let uploads = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let r = read_resp(self.agent.post(&uploads).send_empty())?;
        if r.status != 202 {
            return Err(format!("POST session: {}", r.status));
        }
        let location = resolve(&self.base, r.header("location").ok_or("no Location")?);
        let r = read_resp(
            self.agent
                .patch(&location)
                .header("Content-Type", "application/octet-stream")
                .send(partial),
        )?;
        if r.status != 202 {
            return Err(format!("PATCH: {}", r.status));
        }
        Ok(location)
    }

    /// PUTs a manifest; returns the response (201 expected by callers).
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Resp, String> {
        read_resp(
            self.agent
                .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
                .header("Content-Type", media_type)
                .send(bytes),
        )
    }

    /// Every tag of a repository (one unpaginated request).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let r = self
            .get(&format!("/v2/{repo}/tags/list"))
            .expect("tags list");
        assert_eq!(r.status, 200, "tags list of {repo}: {}", r.text());
        string_list(&r.json()["tags"])
    }

    /// Every repository of the catalog (one unpaginated request).
    pub fn catalog(&self) -> Vec<String> {
        let r = self.get("/v2/_catalog").expect("catalog");
        assert_eq!(r.status, 200, "catalog: {}", r.text());
        string_list(&r.json()["repositories"])
    }
}

/// A JSON array of strings (`null`: empty).
pub fn string_list(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().expect("string item").to_string())
            .collect(),
        other => panic!("expected an array of strings, got {other}"),
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

/// What a finished external command did.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CmdOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs a command with a time bound; `Err` when it could not start or overran (it is then
/// killed). A non-zero exit is an `Ok` with that status.
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> Result<CmdOutput, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("failed to start {shown}: {e}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    match status {
        Some(status) => Ok(CmdOutput {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "{shown} did not finish within {timeout:?} (killed); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

/// Runs `program args…` with a time bound and panics unless it exits 0.
pub fn must_run(program: &str, args: &[&str], timeout: Duration) -> CmdOutput {
    let out = run_cmd(Command::new(program).args(args), timeout).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed with {}:\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        out.stdout_text(),
        out.stderr_text()
    );
    out
}

/// Whether `program --version` runs (the tool is installed).
pub fn tool_available(program: &str) -> bool {
    run_cmd(
        Command::new(program).arg("--version"),
        Duration::from_secs(30),
    )
    .is_ok_and(|o| o.status.success())
}

/// The entries directly in a directory, as paths; empty when it does not exist.
pub fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}
