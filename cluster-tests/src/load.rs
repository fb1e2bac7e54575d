//! Continuous push load: N client threads pushing small images with distinct tags through a
//! changeable set of nodes, recording every acknowledged push.
//!
//! A push is acknowledged only when its manifest PUT answered 201. A step answered 503 or
//! failed in transport (connection refused or reset, timeout) is counted, and the push starts
//! again after a short pause at the next target node; any other status is recorded as
//! unexpected and the push is abandoned. Each client gives up a push after
//! [`MAX_ATTEMPTS_PER_PUSH`] failed steps, and stops when the load is stopped: every loop is
//! bounded. Blobs go up with `POST ?digest=` at the same node as the manifest PUT that uses
//! them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::oci::{Client, Image, ImageRef, PushError, UploadStyle, random_layer};

/// Failed steps after which a client abandons one push (and starts the next).
pub const MAX_ATTEMPTS_PER_PUSH: u32 = 400;
/// Pause after a failed step.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Shape of the load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Client threads.
    pub clients: usize,
    /// Repository every client pushes to (tags are `c<client>-<n>`).
    pub repo: String,
    /// Layers per image.
    pub layers: usize,
    /// Layer size range in bytes (uniform).
    pub layer_size: std::ops::RangeInclusive<usize>,
}

impl Default for LoadSpec {
    fn default() -> LoadSpec {
        LoadSpec {
            clients: 8,
            repo: "load/app".to_string(),
            layers: 1,
            layer_size: 256..=4096,
        }
    }
}

/// One acknowledged push.
#[derive(Debug, Clone)]
pub struct AckedPush {
    /// What must be pullable.
    pub image: ImageRef,
    /// The node whose manifest PUT answered 201.
    pub node_url: String,
    /// When that (last, successful) manifest PUT was sent.
    pub put_sent: Instant,
}

/// Counters and outcomes of a load run.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Acknowledged pushes, in acknowledgement order.
    pub acked: Vec<AckedPush>,
    /// Steps answered 503 (then retried).
    pub unavailable: u64,
    /// Steps that got no HTTP answer (then retried at the next node).
    pub transport_errors: u64,
    /// Steps answered with a status the protocol does not allow; the push was abandoned.
    pub unexpected: Vec<String>,
    /// Pushes given up after [`MAX_ATTEMPTS_PER_PUSH`] failed steps or at stop.
    pub abandoned: u64,
    /// A sample of the 503 / transport messages, for failure messages.
    pub sample_errors: Vec<String>,
}

impl LoadReport {
    /// Acknowledged pushes whose manifest PUT was sent after `t`.
    pub fn acked_sent_after(&self, t: Instant) -> usize {
        self.acked.iter().filter(|a| a.put_sent > t).count()
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "acked {}, 503s {}, transport errors {}, unexpected {}, abandoned {}",
            self.acked.len(),
            self.unavailable,
            self.transport_errors,
            self.unexpected.len(),
            self.abandoned
        )
    }
}

struct Shared {
    stop: AtomicBool,
    targets: RwLock<Vec<String>>,
    report: Mutex<LoadReport>,
    acked: AtomicU64,
}

/// A running load; [`Load::stop`] ends it and returns the [`LoadReport`].
pub struct Load {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `spec.clients` threads pushing through `targets` (HTTP base URLs).
    pub fn start(spec: LoadSpec, targets: Vec<String>) -> Load {
        assert!(!targets.is_empty(), "a load needs at least one target node");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            targets: RwLock::new(targets),
            report: Mutex::new(LoadReport::default()),
            acked: AtomicU64::new(0),
        });
        let threads = (0..spec.clients)
            .map(|i| {
                let shared = shared.clone();
                let spec = spec.clone();
                std::thread::Builder::new()
                    .name(format!("load-client-{i}"))
                    .spawn(move || client_loop(i, &spec, &shared))
                    .expect("failed to spawn a load client")
            })
            .collect();
        Load { shared, threads }
    }

    /// Replaces the nodes the clients push through (from the next step on).
    pub fn set_targets(&self, targets: Vec<String>) {
        assert!(!targets.is_empty(), "a load needs at least one target node");
        *self.shared.targets.write().expect("targets lock") = targets;
    }

    /// Acknowledged pushes so far.
    pub fn acked(&self) -> u64 {
        self.shared.acked.load(Ordering::SeqCst)
    }

    /// Acknowledged pushes so far whose manifest PUT was sent after `t`.
    pub fn acked_sent_after(&self, t: Instant) -> usize {
        self.shared
            .report
            .lock()
            .expect("report lock")
            .acked_sent_after(t)
    }

    /// Waits until at least `n` pushes whose manifest PUT was sent after `t` are
    /// acknowledged, or `timeout` passes; returns how many there were.
    pub fn wait_for_acks_sent_after(&self, t: Instant, n: usize, timeout: Duration) -> usize {
        let _ = crate::wait::try_wait_until(timeout, || {
            let got = self.acked_sent_after(t);
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} of {n}"))
            }
        });
        self.acked_sent_after(t)
    }

    /// Steps answered with an unexpected status so far.
    pub fn unexpected(&self) -> usize {
        self.shared
            .report
            .lock()
            .expect("report lock")
            .unexpected
            .len()
    }

    /// Stops the clients (each finishes or abandons its current push), prints the report
    /// (it helps reading a failed run) and returns it.
    pub fn stop(mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("a load client panicked");
        }
        let report = std::mem::take(&mut *self.shared.report.lock().expect("report lock"));
        eprintln!(
            "load: {}; sample errors: {:?}",
            report.summary(),
            report.sample_errors
        );
        report
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn client_loop(i: usize, spec: &LoadSpec, shared: &Shared) {
    let mut rng = rand::rng();
    let mut next_target = i;
    for n in 0u64.. {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let layers: Vec<Vec<u8>> = (0..spec.layers)
            .map(|_| random_layer(rng.random_range(spec.layer_size.clone())))
            .collect();
        let image = Image::new(&spec.repo, &format!("c{i}-{n}"), &layers);
        push_one(&image, shared, &mut next_target);
    }
}

fn target(shared: &Shared, k: usize) -> String {
    let t = shared.targets.read().expect("targets lock");
    t[k % t.len()].clone()
}

/// Pushes one image, retrying failed steps; records the outcome.
fn push_one(image: &Image, shared: &Shared, next_target: &mut usize) {
    let mut failures = 0u32;
    let mut url = target(shared, *next_target);
    let mut client = Client::new(&url, &url);
    let mut blobs_done = 0usize;
    let blobs: Vec<&[u8]> = std::iter::once(image.config.as_slice())
        .chain(image.layers.iter().map(Vec::as_slice))
        .collect();
    loop {
        if shared.stop.load(Ordering::SeqCst) || failures >= MAX_ATTEMPTS_PER_PUSH {
            shared.report.lock().expect("report lock").abandoned += 1;
            return;
        }
        let step = if blobs_done < blobs.len() {
            client
                .push_blob(&image.repo, blobs[blobs_done], UploadStyle::Monolithic)
                .map(|()| None)
        } else {
            let sent = Instant::now();
            client.push_manifest(image).map(|_| Some(sent))
        };
        match step {
            Ok(None) => blobs_done += 1,
            Ok(Some(put_sent)) => {
                let mut r = shared.report.lock().expect("report lock");
                r.acked.push(AckedPush {
                    image: image.image_ref(),
                    node_url: url,
                    put_sent,
                });
                shared.acked.fetch_add(1, Ordering::SeqCst);
                // The next push starts at the next node: spread the load.
                *next_target += 1;
                return;
            }
            Err(e) => {
                failures += 1;
                let mut r = shared.report.lock().expect("report lock");
                if r.sample_errors.len() < 20 {
                    r.sample_errors.push(e.to_string());
                }
                match e {
                    PushError::Unavailable { .. } => r.unavailable += 1,
                    PushError::Transport { .. } => r.transport_errors += 1,
                    PushError::Unexpected { .. } => {
                        r.unexpected.push(e.to_string());
                        return;
                    }
                }
                drop(r);
                // Retry at the next node (the target set may have changed meanwhile); the
                // blobs go up again there (uploads are idempotent).
                *next_target += 1;
                url = target(shared, *next_target);
                client = Client::new(&url, &url);
                blobs_done = 0;
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}
