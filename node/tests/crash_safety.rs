//! Tier 4: crash safety and graceful shutdown of a real `berth serve` process.
//!
//! - `kill -9` while 16 clients push: after a restart on the same data directory, every push
//!   the server acknowledged (201 for the manifest) is served byte for byte, listings show
//!   nothing half-written, staging files are gone and new pushes work. Run twice: with blobs
//!   written through the page cache (the default) and with direct writes.
//! - SIGTERM while a slow upload is in flight: the upload completes (or gets a clean error
//!   response) and the process exits 0 within the grace period.

mod support;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};
use support::{BerthProcess, Client, OCI_MANIFEST, UploadStyle, sha256_digest};

/// Concurrent pushers.
const PUSHERS: usize = 16;
/// Crash rounds: push, kill -9, restart, verify — each round also re-verifies earlier ones.
/// `BERTH_TEST_CRASH_ROUNDS` (1 to 50) overrides it for a longer soak.
const ROUNDS: usize = 2;

fn rounds() -> usize {
    std::env::var("BERTH_TEST_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(ROUNDS, |n| n.clamp(1, 50))
}
/// Kill once this many pushes were acknowledged in a round…
const KILL_AFTER_ACKS: usize = 48;
/// …or once this much time passed (and at least one push was acknowledged)…
const KILL_AFTER: Duration = Duration::from_millis(1500);
/// …but give up waiting for a first acknowledgement after this long.
const FIRST_ACK_DEADLINE: Duration = Duration::from_secs(60);
/// Bound of one pusher's loop.
const MAX_PUSHES_PER_PUSHER: usize = 500;
/// Bound of any one HTTP call of a pusher.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One acknowledged push: what the server must serve after any crash.
#[derive(Debug, Clone)]
struct Push {
    repo: String,
    tag: String,
    digest: String,
    manifest: Vec<u8>,
    /// Config first, then layers.
    blobs: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    acked: Mutex<Vec<Push>>,
    /// Failures seen before the stop flag was raised (none are expected).
    errors: Mutex<Vec<String>>,
}

/// Random-looking bytes, made cheaply (the test binary is unoptimised, where `rand` fills about
/// 6 MiB/s): a fresh random 32-byte head, so that every blob is distinct, followed by a slice
/// of a shared pool at a random offset. The pool comes from xorshift64*, seeded by `rand`.
struct Noise {
    pool: Vec<u8>,
}

impl Noise {
    const POOL: usize = 3 << 20;

    fn new(rng: &mut impl RngCore) -> Noise {
        let mut x = rng.next_u64() | 1;
        let mut pool = Vec::with_capacity(Noise::POOL);
        while pool.len() < Noise::POOL {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            pool.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        Noise { pool }
    }

    fn bytes(&self, rng: &mut impl Rng, len: usize) -> Vec<u8> {
        assert!(len <= Noise::POOL);
        let mut b = vec![0u8; len];
        let head = len.min(32);
        rng.fill_bytes(&mut b[..head]);
        let start = rng.random_range(0..=Noise::POOL - len);
        b[head..].copy_from_slice(&self.pool[start + head..start + len]);
        b
    }
}

/// How the server under test writes blobs, and how large the test's blobs get.
#[derive(Clone, Copy)]
struct Mode {
    env: &'static [(&'static str, &'static str)],
    /// Blobs are up to `2 << (max_shift - 1)` bytes.
    max_shift: u32,
}

/// The default server: blobs written through the page cache; blobs of 4 KiB to 1 MiB.
const BUFFERED: Mode = Mode {
    env: &[],
    max_shift: 20,
};

/// Direct writes (`storage.direct_writes`); blobs of 4 KiB to 2 MiB, so that many span more
/// than one 1 MiB block and end in a padded tail.
const DIRECT: Mode = Mode {
    env: &[("BERTH_STORAGE__DIRECT_WRITES", "true")],
    max_shift: 21,
};

/// A blob size from 4 KiB up to `2 << (max_shift - 1)`, log-uniform (most blobs are small,
/// some are large).
fn blob_size(rng: &mut impl Rng, max_shift: u32) -> usize {
    let shift = rng.random_range(12..max_shift);
    rng.random_range(1 << shift..=2 << shift)
}

/// One image push: blobs (a mix of upload styles), then the manifest under a unique tag.
fn push_one(
    client: &Client,
    rng: &mut impl Rng,
    noise: &Noise,
    repo: &str,
    tag: &str,
    seq: usize,
    max_shift: u32,
) -> Result<Push, String> {
    // Leave a half-done upload behind on each pusher's second push and sometimes later: a
    // staging file the restart must clean. Over 1 MiB, so that it reaches the disk (the server
    // keeps a partial block in memory).
    if seq == 1 || rng.random_ratio(1, 8) {
        let len = rng.random_range((1 << 20) + 1..=2 << 20);
        let partial = noise.bytes(rng, len);
        client.abandon_upload(repo, &partial)?;
    }
    let n_layers = rng.random_range(1..=3);
    let layers: Vec<Vec<u8>> = (0..n_layers)
        .map(|_| {
            let len = blob_size(rng, max_shift);
            noise.bytes(rng, len)
        })
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [] },
        "config": { "Labels": { "berth.test.push": format!("{repo}:{tag}") } },
    }))
    .unwrap();
    let styles = [
        UploadStyle::Monolithic,
        UploadStyle::PostPut,
        UploadStyle::Chunked,
    ];
    for (j, layer) in layers.iter().enumerate() {
        client.push_blob(repo, layer, styles[(seq + j) % styles.len()])?;
    }
    client.push_blob(repo, &config, UploadStyle::Monolithic)?;
    let layer_refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let manifest = support::image_manifest(&config, &layer_refs);
    let digest = sha256_digest(&manifest);
    let r = client.put_manifest(repo, tag, OCI_MANIFEST, &manifest)?;
    if r.status != 201 {
        return Err(format!("manifest PUT: status {}: {}", r.status, r.text()));
    }
    if r.header("docker-content-digest") != Some(digest.as_str()) {
        return Err(format!(
            "manifest PUT: Docker-Content-Digest {:?}, expected {digest}",
            r.header("docker-content-digest")
        ));
    }
    let mut blobs = vec![config];
    blobs.extend(layers);
    Ok(Push {
        repo: repo.to_string(),
        tag: tag.to_string(),
        digest,
        manifest,
        blobs,
    })
}

fn pusher(
    worker: usize,
    round: usize,
    base: String,
    noise: Arc<Noise>,
    shared: Arc<Shared>,
    acks: mpsc::Sender<()>,
    max_shift: u32,
) {
    let client = Client::with_agent(support::agent_with_timeout(CALL_TIMEOUT), &base);
    let mut rng = rand::rng();
    let repo = format!("crash/w{worker:02}");
    for seq in 0..MAX_PUSHES_PER_PUSHER {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let tag = format!("r{round}-{seq}");
        match push_one(&client, &mut rng, &noise, &repo, &tag, seq, max_shift) {
            Ok(p) => {
                shared.acked.lock().unwrap().push(p);
                let _ = acks.send(());
            }
            Err(e) => {
                // The stop flag is raised before the kill, so a failure the kill caused always
                // sees it; anything earlier is a real failure.
                if !shared.stop.load(Ordering::SeqCst) {
                    shared
                        .errors
                        .lock()
                        .unwrap()
                        .push(format!("{repo}:{tag}: {e}"));
                }
                return;
            }
        }
    }
}

/// Fetches a blob and checks it is exactly `want` (status, bytes and digest).
fn check_blob(client: &Client, repo: &str, want: &[u8], what: &str) {
    let digest = sha256_digest(want);
    let r = client
        .get_blob(repo, &digest)
        .unwrap_or_else(|e| panic!("{what}: GET blob {digest}: {e}"));
    assert_eq!(r.status, 200, "{what}: GET blob {digest}: {}", r.text());
    assert_eq!(
        sha256_digest(&r.body),
        digest,
        "{what}: blob {digest} content"
    );
    assert!(r.body == want, "{what}: blob {digest} bytes differ");
    let h = client.head(&format!("/v2/{repo}/blobs/{digest}")).unwrap();
    assert_eq!(h.status, 200, "{what}: HEAD blob {digest}");
    assert_eq!(
        h.header("content-length"),
        Some(want.len().to_string().as_str()),
        "{what}: HEAD blob {digest} length"
    );
}

/// An acknowledged push is served byte for byte by tag and by digest, with all its blobs.
fn verify_acked(client: &Client, p: &Push) {
    let what = format!("acknowledged push {}:{}", p.repo, p.tag);
    for reference in [&p.tag, &p.digest] {
        let r = client
            .get_manifest(&p.repo, reference)
            .unwrap_or_else(|e| panic!("{what}: GET manifest {reference}: {e}"));
        assert_eq!(
            r.status,
            200,
            "{what}: GET manifest {reference}: {}",
            r.text()
        );
        assert!(
            r.body == p.manifest,
            "{what}: manifest {reference} bytes differ"
        );
        assert_eq!(
            r.header("docker-content-digest"),
            Some(p.digest.as_str()),
            "{what}: manifest {reference} digest header"
        );
    }
    for b in &p.blobs {
        check_blob(client, &p.repo, b, &what);
    }
}

/// Every listed repository and tag is whole: the manifest verifies against its digest and every
/// blob it references is served and verifies. Returns how many tags were checked.
fn verify_listings(client: &Client) -> usize {
    let mut checked = 0;
    for repo in client.must_catalog() {
        for tag in client.must_tags(&repo) {
            let what = format!("listed tag {repo}:{tag}");
            let r = client.get_manifest(&repo, &tag).unwrap();
            assert_eq!(r.status, 200, "{what}: manifest: {}", r.text());
            let digest = sha256_digest(&r.body);
            assert_eq!(
                r.header("docker-content-digest"),
                Some(digest.as_str()),
                "{what}: manifest digest header"
            );
            let m: serde_json::Value = r.json();
            // An index's children are manifests, served by digest.
            for child in m["manifests"].as_array().into_iter().flatten() {
                let cd = child["digest"].as_str().unwrap();
                let c = client.get_manifest(&repo, cd).unwrap();
                assert_eq!(c.status, 200, "{what}: child manifest {cd}: {}", c.text());
                assert_eq!(sha256_digest(&c.body), cd, "{what}: child manifest {cd}");
            }
            let config = m.get("config").into_iter();
            let layers = m["layers"].as_array().into_iter().flatten();
            for d in config.chain(layers) {
                let bd = d["digest"].as_str().unwrap();
                let b = client.get_blob(&repo, bd).unwrap();
                assert_eq!(b.status, 200, "{what}: blob {bd}: {}", b.text());
                assert_eq!(sha256_digest(&b.body), bd, "{what}: blob {bd} content");
                assert_eq!(
                    d["size"].as_u64(),
                    Some(b.body.len() as u64),
                    "{what}: blob {bd} size"
                );
            }
            checked += 1;
        }
    }
    checked
}

/// Asserts that `data/uploads` holds nothing.
fn assert_no_staging(data: &std::path::Path) {
    let left = support::dir_entries(&data.join("uploads"));
    assert!(
        left.is_empty(),
        "staging files survived a restart in {}: {left:?}",
        data.join("uploads").display()
    );
}

#[test]
fn kill9_during_concurrent_pushes_keeps_every_acknowledged_push() {
    kill9_during_concurrent_pushes(
        "kill9_during_concurrent_pushes_keeps_every_acknowledged_push",
        BUFFERED,
    );
}

#[test]
fn kill9_during_concurrent_direct_write_pushes_keeps_every_acknowledged_push() {
    kill9_during_concurrent_pushes(
        "kill9_during_concurrent_direct_write_pushes_keeps_every_acknowledged_push",
        DIRECT,
    );
}

fn kill9_during_concurrent_pushes(test: &str, mode: Mode) {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut berth = BerthProcess::start_with_env(&data, mode.env);
    if !mode.env.is_empty() {
        let log = berth.stderr();
        assert!(
            log.contains("uploads are written with direct I/O")
                || log.contains("refuses direct I/O"),
            "the server did not report whether direct writes are in effect:\n{}",
            berth.stderr_tail(20)
        );
    }
    let mut all_acked: Vec<Push> = Vec::new();
    let noise = Arc::new(Noise::new(&mut rand::rng()));

    for round in 0..rounds() {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let workers: Vec<_> = (0..PUSHERS)
            .map(|w| {
                let shared = shared.clone();
                let tx = tx.clone();
                let base = berth.base_url();
                let noise = noise.clone();
                std::thread::spawn(move || {
                    pusher(w, round, base, noise, shared, tx, mode.max_shift)
                })
            })
            .collect();
        drop(tx);

        // Wait for KILL_AFTER_ACKS acknowledgements or KILL_AFTER, whichever first, but for
        // at least one acknowledgement (bounded by FIRST_ACK_DEADLINE).
        let round_start = Instant::now();
        let mut acks = 0usize;
        loop {
            if acks >= KILL_AFTER_ACKS {
                break;
            }
            let elapsed = round_start.elapsed();
            let wait = if acks == 0 {
                FIRST_ACK_DEADLINE.saturating_sub(elapsed)
            } else {
                KILL_AFTER.saturating_sub(elapsed)
            };
            if wait.is_zero() {
                break;
            }
            match rx.recv_timeout(wait) {
                Ok(()) => acks += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                // Every pusher stopped: nothing is in flight any more.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let staging_before = support::dir_entries(&data.join("uploads")).len();
        shared.stop.store(true, Ordering::SeqCst);
        berth.kill9();
        let killed_after = round_start.elapsed();
        for w in workers {
            w.join().expect("pusher thread panicked");
        }
        let errors = shared.errors.lock().unwrap().clone();
        assert!(
            errors.is_empty(),
            "round {round}: pushes failed before the kill:\n{}",
            errors.join("\n")
        );
        let acked = std::mem::take(&mut *shared.acked.lock().unwrap());
        assert!(
            !acked.is_empty(),
            "round {round}: no push was acknowledged within {FIRST_ACK_DEADLINE:?}"
        );
        eprintln!(
            "{test}: round {round}: kill -9 after {killed_after:?}, {} pushes acknowledged, \
             {staging_before} staging files before the kill",
            acked.len()
        );
        all_acked.extend(acked);

        let restarting = Instant::now();
        berth.restart();
        let restart_took = restarting.elapsed();
        assert_no_staging(&data);
        let client = Client::new(&berth.base_url());
        let verifying = Instant::now();
        for p in &all_acked {
            verify_acked(&client, p);
        }
        let listed = verify_listings(&client);
        assert!(
            listed >= all_acked.len(),
            "round {round}: listings show {listed} tags, fewer than the {} acknowledged",
            all_acked.len()
        );
        for p in &all_acked {
            assert!(
                client.must_tags(&p.repo).contains(&p.tag),
                "acknowledged tag {}:{} is not listed",
                p.repo,
                p.tag
            );
        }
        eprintln!(
            "{test}: round {round}: ready {restart_took:?} after the restart; {} pushes and \
             {listed} listed tags verified in {:?}",
            all_acked.len(),
            verifying.elapsed()
        );
    }

    // New pushes work after the restarts.
    let client = Client::new(&berth.base_url());
    let mut rng = rand::rng();
    for (i, style) in [
        UploadStyle::Monolithic,
        UploadStyle::PostPut,
        UploadStyle::Chunked,
    ]
    .into_iter()
    .enumerate()
    {
        let p = push_one(
            &client,
            &mut rng,
            &noise,
            "crash/after",
            &format!("new-{i}"),
            i,
            mode.max_shift,
        )
        .unwrap_or_else(|e| panic!("push after restart ({style:?}): {e}"));
        verify_acked(&client, &p);
    }
    let status = berth.terminate();
    assert!(status.success(), "berth exited with {status} on SIGTERM");
    eprintln!(
        "{test}: ok, {} acknowledged pushes verified, in {:?}",
        all_acked.len(),
        started.elapsed()
    );
}

/// A request body that trickles out in chunks with a pause before each chunk after the first.
/// It reports its first read: the request is sent with `Expect: 100-continue`, so the client
/// only reads the body once the server answered `100 Continue`, that is once the server's
/// handler has started to read the body — the upload is then in flight on the server.
struct SlowBody {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
    pause: Duration,
    started: Option<mpsc::Sender<()>>,
}

impl Read for SlowBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(tx) = self.started.take() {
            let _ = tx.send(());
        }
        if self.pos >= self.data.len() {
            return Ok(0);
        }
        if self.pos > 0 && self.pos.is_multiple_of(self.chunk) {
            std::thread::sleep(self.pause);
        }
        let chunk_end = ((self.pos / self.chunk) + 1) * self.chunk;
        let end = chunk_end.min(self.data.len()).min(self.pos + buf.len());
        let n = end - self.pos;
        buf[..n].copy_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(n)
    }
}

/// What an upload thread saw: the response (or the transport error) and how long it took.
type UploadOutcome = (Result<support::Resp, String>, Duration);

/// How long a client waits for `100 Continue` before it would send the body anyway.
const AWAIT_100: Duration = Duration::from_secs(20);

/// Starts a monolithic upload of `digest` with `Expect: 100-continue` on its own thread, and
/// returns once the server asked for the body (the body's first read reports on `started`).
fn upload_in_flight(
    base: &str,
    repo: &str,
    digest: &str,
    body: impl Read + Send + 'static,
    started: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<UploadOutcome> {
    let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}");
    let upload = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(90)))
            // Wait for the server's 100 Continue rather than sending the body unasked.
            .timeout_await_100(Some(AWAIT_100))
            .build()
            .into();
        let t = Instant::now();
        let r = support::read_resp(
            agent
                .post(url)
                .header("Content-Type", "application/octet-stream")
                .header("Expect", "100-continue")
                .send(ureq::SendBody::from_owned_reader(body)),
        );
        (r, t.elapsed())
    });
    let asked = Instant::now();
    started
        .recv_timeout(AWAIT_100 + Duration::from_secs(10))
        .expect("the upload did not start");
    assert!(
        asked.elapsed() < AWAIT_100,
        "berth did not answer `Expect: 100-continue` within {AWAIT_100:?}"
    );
    upload
}

/// Polls (bounded) until connecting to `port` is refused: true when it was within 5 s.
fn refuses_connections(port: u16) -> bool {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(500),
        ) {
            Err(_) => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

#[test]
fn sigterm_lets_a_slow_upload_finish_and_exits_zero() {
    let test = "sigterm_lets_a_slow_upload_finish_and_exits_zero";
    const GRACE: Duration = Duration::from_secs(10);
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut berth = BerthProcess::start_with_env(
        &data,
        &[("BERTH_SHUTDOWN_GRACE_SECS", &GRACE.as_secs().to_string())],
    );

    // 2 MiB in 16 chunks, 150 ms apart: about 2.3 s on the wire, well within the grace.
    let mut blob = vec![0u8; 2 << 20];
    rand::rng().fill_bytes(&mut blob);
    let digest = sha256_digest(&blob);
    let (started_tx, started_rx) = mpsc::channel();
    let body = SlowBody {
        data: blob.clone(),
        pos: 0,
        chunk: 128 * 1024,
        pause: Duration::from_millis(150),
        started: Some(started_tx),
    };
    let upload = upload_in_flight(&berth.base_url(), "term/slow", &digest, body, started_rx);
    let signalled = Instant::now();
    berth.send_sigterm();
    // No new connections once shutting down.
    let refused = refuses_connections(berth.port());

    let (result, took) = upload.join().expect("upload thread panicked");
    let exit = berth.wait_exit(GRACE + Duration::from_secs(5));
    let exited_after = signalled.elapsed();
    let resp = result.unwrap_or_else(|e| {
        panic!("the in-flight upload was cut off instead of finishing or being refused: {e}")
    });
    let status = exit.unwrap_or_else(|| {
        panic!("berth did not exit within the grace period ({GRACE:?}) + 5 s of SIGTERM")
    });
    assert!(status.success(), "berth exited with {status} on SIGTERM");
    assert!(
        refused,
        "berth still accepted new connections 5 s after SIGTERM"
    );
    let completed = match resp.status {
        201 => true,
        s if s >= 500 => false,
        s => panic!(
            "the in-flight upload got neither 201 nor a clean 5xx refusal: {s} {}",
            resp.text()
        ),
    };
    eprintln!(
        "{test}: upload answered {} after {took:?}; exited {status} {exited_after:?} after SIGTERM",
        resp.status
    );

    // After a restart the blob is there exactly when the upload was acknowledged.
    berth.restart();
    assert_no_staging(&data);
    let client = Client::new(&berth.base_url());
    if completed {
        check_blob(
            &client,
            "term/slow",
            &blob,
            "slow upload finished during shutdown",
        );
    } else {
        let r = client.get_blob("term/slow", &digest).unwrap();
        assert_eq!(r.status, 404, "a refused upload left a blob behind");
    }
    let status = berth.terminate();
    assert!(status.success(), "berth exited with {status} on SIGTERM");
    eprintln!("{test}: ok in {:?}", started.elapsed());
}

/// A request body that sends `stall_at` bytes, then stops sending until released (bounded),
/// then fails: an upload that would outlast any grace period.
struct StalledBody {
    data: Vec<u8>,
    pos: usize,
    stall_at: usize,
    started: Option<mpsc::Sender<()>>,
    release: mpsc::Receiver<()>,
}

impl Read for StalledBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(tx) = self.started.take() {
            let _ = tx.send(());
        }
        if self.pos >= self.stall_at {
            let _ = self.release.recv_timeout(Duration::from_secs(60));
            return Err(std::io::Error::other("the stalled upload gives up"));
        }
        let end = self.stall_at.min(self.pos + buf.len());
        let n = end - self.pos;
        buf[..n].copy_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(n)
    }
}

#[test]
fn sigterm_with_a_stalled_upload_exits_zero_at_the_end_of_the_grace_period() {
    let test = "sigterm_with_a_stalled_upload_exits_zero_at_the_end_of_the_grace_period";
    const GRACE: Duration = Duration::from_secs(2);
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut berth = BerthProcess::start_with_env(
        &data,
        &[("BERTH_SHUTDOWN_GRACE_SECS", &GRACE.as_secs().to_string())],
    );

    // 1.5 MiB of 2 MiB arrive (enough to reach a staging file), then nothing.
    let mut blob = vec![0u8; 2 << 20];
    rand::rng().fill_bytes(&mut blob);
    let digest = sha256_digest(&blob);
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let body = StalledBody {
        data: blob,
        pos: 0,
        stall_at: 3 << 19,
        started: Some(started_tx),
        release: release_rx,
    };
    let upload = upload_in_flight(&berth.base_url(), "term/stall", &digest, body, started_rx);
    let signalled = Instant::now();
    berth.send_sigterm();
    let exit = berth.wait_exit(GRACE + Duration::from_secs(5));
    let exited_after = signalled.elapsed();
    let _ = release_tx.send(());
    let (result, took) = upload.join().expect("upload thread panicked");

    let status = exit.unwrap_or_else(|| {
        panic!("berth did not exit within the grace period ({GRACE:?}) + 5 s of SIGTERM")
    });
    assert!(status.success(), "berth exited with {status} on SIGTERM");
    assert!(
        exited_after + Duration::from_millis(200) >= GRACE,
        "berth exited {exited_after:?} after SIGTERM, before the {GRACE:?} grace period ended, \
         with a request in flight"
    );
    if let Ok(r) = &result {
        assert!(
            !(200..300).contains(&r.status),
            "an upload that never finished sending was acknowledged: {} {}",
            r.status,
            r.text()
        );
    }
    eprintln!(
        "{test}: exited {status} {exited_after:?} after SIGTERM; the upload ended after {took:?} \
         with {:?}",
        result.map(|r| r.status)
    );

    // Nothing of the cut upload survives a restart.
    berth.restart();
    assert_no_staging(&data);
    let client = Client::new(&berth.base_url());
    let r = client.get_blob("term/stall", &digest).unwrap();
    assert_eq!(r.status, 404, "a cut upload left a blob behind");
    let status = berth.terminate();
    assert!(status.success(), "berth exited with {status} on SIGTERM");
    eprintln!("{test}: ok in {:?}", started.elapsed());
}
