//! Tier 4: crash safety and graceful shutdown of a real `berth serve` process.
//!
//! - `kill -9` while 16 clients push: after a restart on the same data directory, every push
//!   the server acknowledged (201 for the manifest) is served byte for byte, listings show
//!   nothing half-written, staging files are gone and new pushes work.
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
const ROUNDS: usize = 2;
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

/// Random-looking bytes, made cheaply: a fresh random 32-byte head (so that every blob is
/// distinct) followed by a slice of a per-pusher random pool at a random offset.
struct Noise {
    pool: Vec<u8>,
}

impl Noise {
    const POOL: usize = 3 << 20;

    fn new(rng: &mut impl RngCore) -> Noise {
        let mut pool = vec![0u8; Noise::POOL];
        rng.fill_bytes(&mut pool);
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

/// A blob size from 4 KiB to 1 MiB, log-uniform (most blobs are small, some are large).
fn blob_size(rng: &mut impl Rng) -> usize {
    let shift = rng.random_range(12..20);
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
            let len = blob_size(rng);
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

fn pusher(worker: usize, round: usize, base: String, shared: Arc<Shared>, acks: mpsc::Sender<()>) {
    let client = Client {
        agent: support::agent_with_timeout(CALL_TIMEOUT),
        base,
    };
    let mut rng = rand::rng();
    let noise = Noise::new(&mut rng);
    let repo = format!("crash/w{worker:02}");
    for seq in 0..MAX_PUSHES_PER_PUSHER {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let tag = format!("r{round}-{seq}");
        match push_one(&client, &mut rng, &noise, &repo, &tag, seq) {
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
    assert_eq!(sha256_digest(&r.body), digest, "{what}: blob {digest} content");
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
    for repo in client.catalog() {
        for tag in client.tags(&repo) {
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
            let descs = std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap());
            for d in descs {
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
    let test = "kill9_during_concurrent_pushes_keeps_every_acknowledged_push";
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut berth = BerthProcess::start(&data);
    let mut all_acked: Vec<Push> = Vec::new();

    for round in 0..ROUNDS {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let workers: Vec<_> = (0..PUSHERS)
            .map(|w| {
                let shared = shared.clone();
                let tx = tx.clone();
                let base = berth.base_url();
                std::thread::spawn(move || pusher(w, round, base, shared, tx))
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

        berth.restart();
        assert_no_staging(&data);
        let client = Client::new(&berth.base_url());
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
                client.tags(&p.repo).contains(&p.tag),
                "acknowledged tag {}:{} is not listed",
                p.repo,
                p.tag
            );
        }
    }

    // New pushes work after the restarts.
    let client = Client::new(&berth.base_url());
    let mut rng = rand::rng();
    let noise = Noise::new(&mut rng);
    for (i, style) in [
        UploadStyle::Monolithic,
        UploadStyle::PostPut,
        UploadStyle::Chunked,
    ]
    .into_iter()
    .enumerate()
    {
        let p = push_one(&client, &mut rng, &noise, "crash/after", &format!("new-{i}"), i)
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

/// A request body that trickles out in chunks, with a pause before each chunk after the first,
/// and reports when the first chunk has been handed over.
struct SlowBody {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
    pause: Duration,
    started: Option<mpsc::Sender<()>>,
}

impl Read for SlowBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.data.len() {
            return Ok(0);
        }
        if self.pos > 0 && self.pos % self.chunk == 0 {
            if let Some(tx) = self.started.take() {
                let _ = tx.send(());
            }
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
    let base = berth.base_url();
    let port = berth.port();

    // 2 MiB in 16 chunks, 150 ms apart: about 2.3 s on the wire, well within the grace.
    let mut blob = vec![0u8; 2 << 20];
    rand::rng().fill_bytes(&mut blob);
    let digest = sha256_digest(&blob);
    let (started_tx, started_rx) = mpsc::channel();
    let upload = std::thread::spawn({
        let blob = blob.clone();
        let digest = digest.clone();
        move || {
            let agent = support::agent_with_timeout(Duration::from_secs(60));
            let body = SlowBody {
                data: blob,
                pos: 0,
                chunk: 128 * 1024,
                pause: Duration::from_millis(150),
                started: Some(started_tx),
            };
            let t = Instant::now();
            let r = support::read_resp(
                agent
                    .post(format!("{base}/v2/term/slow/blobs/uploads/?digest={digest}"))
                    .header("Content-Type", "application/octet-stream")
                    .send(ureq::SendBody::from_owned_reader(body)),
            );
            (r, t.elapsed())
        }
    });
    started_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the slow upload did not start");
    let signalled = Instant::now();
    berth.send_sigterm();

    // No new connections once shutting down (bounded poll: the listener closes promptly).
    let refused_by = Instant::now() + Duration::from_secs(5);
    let mut refused = false;
    while Instant::now() < refused_by {
        match std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(500),
        ) {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }

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
        check_blob(&client, "term/slow", &blob, "slow upload finished during shutdown");
    } else {
        let r = client.get_blob("term/slow", &digest).unwrap();
        assert_eq!(r.status, 404, "a refused upload left a blob behind");
    }
    let status = berth.terminate();
    assert!(status.success(), "berth exited with {status} on SIGTERM");
    eprintln!("{test}: ok in {:?}", started.elapsed());
}
