//! Scenario 16 — copies leave the node to its clients (`replication.busy_bytes_per_sec`,
//! ADR 016).
//!
//! While a node serves client requests, its replication copies share the busy cap; once the
//! clients stop, the copy goes on at full speed. A durability copy (a manifest PUT waits for
//! it) is never held to the busy cap. The cap here is 1 MiB/s so that the difference is seconds
//! against a fraction of one; the bounds are outcomes (held or not, 201 or 503), not speeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_tests::oci::OCI_MANIFEST;
use cluster_tests::replication::holds_blob;
use cluster_tests::{Cluster, ClusterBuilder, Image, UploadStyle, random_layer, wait_until};

const BUSY_CAP: usize = 1024 * 1024;
/// Longest the pinging client runs, whatever the test does.
const LOAD_AT_MOST: Duration = Duration::from_secs(60);

/// A client sending registry requests (`GET /v2/`) to one node until stopped (or [`LOAD_AT_MOST`]).
struct Pings {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Pings {
    fn start(c: &Cluster, id: u64) -> Pings {
        let client = c.client(id);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0;
            while !flag.load(Ordering::Relaxed) && started.elapsed() < LOAD_AT_MOST {
                // Any registry request counts; the answer does not matter.
                let _ = client.get("/v2/");
                sent += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            sent
        });
        Pings {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the client and returns how many requests it sent.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Pings {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn replication_slows_while_clients_are_served_and_resumes_when_they_stop() {
    // 16 MiB at the 1 MiB/s busy cap takes 16 s; unpaced, a fraction of a second.
    let c = ClusterBuilder::new()
        .nodes(2)
        .regions(&["r1", "r2"])
        .env(
            "BERTH_REPLICATION__BUSY_BYTES_PER_SEC",
            &BUSY_CAP.to_string(),
        )
        .build();
    let pings = Pings::start(&c, 2);
    let image = c.must_push_image(1, "s16/paced", "v1", &[random_layer(16 * BUSY_CAP)]);
    let layer = image.layers[0].digest.clone();
    // Every other blob (the small config) arrives; the layer is still coming three seconds on.
    wait_until(
        "node 2 to copy the config",
        Duration::from_secs(30),
        || match holds_blob(&c, 2, &image.config.digest) {
            true => Ok(()),
            false => Err("not yet".into()),
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !holds_blob(&c, 2, &layer),
        "a 16 MiB copy ended within seconds while node 2 served clients at a 1 MiB/s busy cap"
    );
    let sent = pings.stop();
    assert!(sent > 10, "the client sent {sent} requests only");
    // The rest (12 MiB or more) at the busy cap would take 12 s.
    let stopped = Instant::now();
    wait_until(
        "node 2 to hold the layer once the clients stopped",
        Duration::from_secs(8),
        || match holds_blob(&c, 2, &layer) {
            true => Ok(()),
            false => Err("not yet".into()),
        },
    );
    eprintln!(
        "the copy ended {:?} after the clients stopped",
        stopped.elapsed()
    );
}

#[test]
fn a_durability_copy_is_not_held_to_the_busy_cap() {
    // With min_copies = 2 node 2 must copy the 8 MiB layer before the 201, while it serves
    // clients: at the busy cap that would take 8 s, past the 4 s write timeout (a 503).
    let c = ClusterBuilder::new()
        .nodes(2)
        .regions(&["r1", "r2"])
        .write_timeout_ms(4000)
        .env("BERTH_DURABILITY__MIN_COPIES", "2")
        .env(
            "BERTH_REPLICATION__BUSY_BYTES_PER_SEC",
            &BUSY_CAP.to_string(),
        )
        .build();
    let pings = Pings::start(&c, 2);
    let image = Image::new("s16/durable", "v1", &[random_layer(8 * BUSY_CAP)]);
    let client = c.client(1);
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        client
            .push_blob(&image.repo, blob, UploadStyle::Monolithic)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let r = client
        .put_manifest(&image.repo, "v1", OCI_MANIFEST, &image.manifest)
        .unwrap_or_else(|e| panic!("{e}"));
    pings.stop();
    assert_eq!(r.status, 201, "{}", r.text());
    for blob in image.image_ref().blobs() {
        assert!(
            holds_blob(&c, 2, &blob.digest),
            "node 2 lacks {}",
            blob.digest
        );
    }
}
