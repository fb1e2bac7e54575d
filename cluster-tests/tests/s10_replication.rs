//! Scenario 10: geo-replication. Three regions (`r1`, `r2`, `r3`, one node each: node N is in
//! region rN). A push at one region reaches every region's disk without any pull, as
//! `clusterctl replication status --wait` reports; it survives the loss of the pushing node;
//! a node down for the whole push, a region cut off for a minute (serving what it held and
//! refusing writes meanwhile), and a restart of every node at once all converge with no manual
//! step (the replicator derives its work from the state); a residency policy keeps a region
//! free of copies and widening it adds them; an image deleted while a region was cut off is
//! never copied there; the scrubber replaces a corrupt or missing copy.

use std::time::{Duration, Instant};

use berth_testkit::oci::with_query;
use cluster_tests::oci::{Client, OCI_MANIFEST, Resp, sha256_digest};
use cluster_tests::replication::{
    blob_path, holds_blob, metric_sum, missing_blobs, must_wait_complete, status,
    wait_for_blob_files, wait_for_region_complete,
};
use cluster_tests::wait_until;
use cluster_tests::{
    CONVERGE_TIMEOUT, Cluster, ClusterBuilder, ImageRef, LEADER_TIMEOUT, READY_TIMEOUT,
    random_layer,
};

/// How long replication may take in these scenarios.
const REPLICATED: Duration = Duration::from_secs(60);
/// The metric of pending blobs per region.
const PENDING_BLOBS: &str = "berth_replication_pending_blobs";
/// The counter of bytes copied between nodes.
const COPIED_BYTES: &str = "berth_replication_bytes_total";
/// The number of lag observations per region.
const LAG_COUNT: &str = "berth_replication_lag_seconds_count";
/// Blob copies the scrubber re-hashed.
const SCRUB_CHECKED: &str = "berth_scrub_checked_total";
/// Copies the scrubber repaired.
const SCRUB_REPAIRS: &str = "berth_scrub_repairs_total";
/// How long r3 stays cut off while r1 takes pushes (wall time).
const CUT_FOR: Duration = Duration::from_secs(60);
/// A push at r1 (and a round of reads and refused writes at r3) this often during the cut.
const PUSH_EVERY: Duration = Duration::from_secs(4);
/// Bound on the pushes during the cut.
const MAX_CUT_PUSHES: usize = 20;
/// Write timeout of the cut-off scenario: how long a write at r3 may wait before its 503.
const CUT_WRITE_TIMEOUT_MS: u64 = 2000;

fn three_regions() -> Cluster {
    ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .build()
}

fn layers() -> Vec<Vec<u8>> {
    vec![random_layer(300 * 1024), random_layer(40 * 1024)]
}

fn reference(image: &ImageRef) -> String {
    format!("{}:{}", image.repo, image.tag)
}

#[track_caller]
fn assert_holds_every_blob(cluster: &Cluster, id: u64, image: &ImageRef) {
    let missing = missing_blobs(cluster, id, image);
    assert!(
        missing.is_empty(),
        "node {id} lacks blob files {missing:?} of {}",
        reference(image)
    );
}

#[track_caller]
fn assert_holds_no_blob(cluster: &Cluster, id: u64, image: &ImageRef) {
    let held: Vec<&str> = image
        .blobs()
        .filter(|b| holds_blob(cluster, id, &b.digest))
        .map(|b| b.digest.as_str())
        .collect();
    assert!(
        held.is_empty(),
        "node {id} holds blob files {held:?} of {}",
        reference(image)
    );
}

/// Pushed at r1 and never pulled: `status --wait` completes, every node's disk holds every
/// blob, and with the pushing node killed the image pulls byte for byte in r2 and r3.
#[test]
fn a_push_reaches_every_region_without_a_pull_and_outlives_its_origin() {
    let mut cluster = three_regions();
    let image = cluster.must_push_image(1, "app/web", "v1", &layers());
    must_wait_complete(&cluster, 2, &reference(&image), REPLICATED);
    for id in [1, 2, 3] {
        assert_holds_every_blob(&cluster, id, &image);
    }
    let (summary, complete) = status(&cluster, 3, "");
    assert!(complete, "{summary}");
    assert_eq!(summary["regions"]["r3"]["pending_blobs"], 0, "{summary}");
    assert_eq!(summary["stale"], false, "{summary}");
    // Verbose: every blob is held, and placed, on every node.
    let verbose = cluster_tests::replication::ctl(
        &cluster,
        2,
        &["status", &reference(&image), "--verbose", "--json"],
        Duration::from_secs(10),
    );
    verbose.assert_success();
    let blobs = verbose.json()["blobs"].as_array().unwrap().clone();
    assert_eq!(blobs.len(), image.blobs().count(), "{blobs:?}");
    for b in &blobs {
        assert_eq!(b["holders"], serde_json::json!([1, 2, 3]), "{b}");
        assert_eq!(b["wanted"], serde_json::json!([1, 2, 3]), "{b}");
    }

    cluster.kill(1);
    for id in [2, 3] {
        cluster.must_pull_image(id, "app/web", "v1", &image);
    }
}

/// A node down for the whole push comes back and copies what its region lacks by itself.
#[test]
fn a_node_down_for_the_whole_push_catches_up_by_itself() {
    let mut cluster = three_regions();
    cluster.kill(3);
    let images: Vec<ImageRef> = (0..3)
        .map(|i| cluster.must_push_image(1, "team/svc", &format!("v{i}"), &layers()))
        .collect();
    let seen = wait_for_region_complete(&cluster, 1, "team/svc", "r2", REPLICATED);
    assert_eq!(seen["complete"], false, "{seen}");
    assert_eq!(seen["regions"]["r3"]["complete"], false, "{seen}");
    cluster.restart(3);
    cluster.wait_for_ready(3, READY_TIMEOUT);
    for image in &images {
        wait_for_blob_files(&cluster, 3, image, REPLICATED);
    }
    must_wait_complete(&cluster, 3, "team/svc", REPLICATED);
}

/// r3 cut off for a minute of wall time while r1 takes a push every few seconds. Throughout,
/// r3 serves the image it held before the cut byte for byte, and refuses every write that
/// needs Raft with 503 `UNAVAILABLE`, a `Retry-After` and the reason: a manifest PUT (a new
/// tag for the manifest it holds) and the completion of a blob upload (monolithic, and a
/// session whose POST and PATCH are accepted — they only touch r3's own staging file — and
/// whose final PUT is refused); nothing of it appears anywhere, then or after healing. r2
/// replicates meanwhile, r3 is reported pending; after healing r3 converges with no manual step.
#[test]
fn a_region_cut_off_during_pushes_converges_after_healing() {
    let cluster = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .write_timeout_ms(CUT_WRITE_TIMEOUT_MS)
        .build();
    let held = cluster.must_push_image(1, "cut/app", "held", &layers());
    must_wait_complete(&cluster, 3, "cut/app:held", REPLICATED);
    assert_holds_every_blob(&cluster, 3, &held);

    cluster.partition(&[3], &[1, 2]);
    let cut = Instant::now();
    cluster.wait_for_leader_among(&[1, 2], LEADER_TIMEOUT);
    let mut images: Vec<ImageRef> = Vec::new();
    let mut refused_tags = Vec::new();
    let mut refused_blobs = Vec::new();
    while cut.elapsed() < CUT_FOR && images.len() < MAX_CUT_PUSHES {
        let round = Instant::now();
        let n = images.len();
        images.push(cluster.must_push_image(1, "cut/app", &format!("v{n}"), &layers()));
        // r3 serves what it had, from its own disk, and shows nothing new.
        cluster.must_pull_image(3, "cut/app", "held", &held);
        assert_eq!(cluster.must_tags(3, "cut/app"), vec!["held".to_string()]);
        let tag = format!("at-r3-{n}");
        assert_refused(
            &format!("manifest PUT of {tag} at r3"),
            cluster
                .client(3)
                .put_manifest("cut/app", &tag, OCI_MANIFEST, &held.manifest),
        );
        refused_tags.push(tag);
        let blob = random_layer(16 * 1024);
        let digest = sha256_digest(&blob);
        let refusal = if n.is_multiple_of(2) {
            cluster.client(3).request(
                "POST",
                &format!("/v2/cut/app/blobs/uploads/?digest={digest}"),
                &[("Content-Type", "application/octet-stream")],
                Some(&blob),
            )
        } else {
            finish_chunked_upload(&cluster.client(3), "cut/app", &blob)
        };
        assert_refused(&format!("upload of blob {digest} at r3"), refusal);
        refused_blobs.push(digest);
        std::thread::sleep(PUSH_EVERY.saturating_sub(round.elapsed()));
    }
    eprintln!(
        "r3 was cut off for {:?}: {} pushes at r1, {} manifest PUTs and {} blob uploads refused at r3",
        cut.elapsed(),
        images.len(),
        refused_tags.len(),
        refused_blobs.len()
    );
    assert!(
        cut.elapsed() >= CUT_FOR,
        "the cut ended early: {:?}",
        cut.elapsed()
    );

    let seen = wait_for_region_complete(&cluster, 1, "cut/app", "r2", REPLICATED);
    for image in &images {
        assert_holds_every_blob(&cluster, 2, image);
    }
    assert_eq!(seen["complete"], false, "{seen}");
    assert_eq!(seen["regions"]["r3"]["complete"], false, "{seen}");
    // The cut-off node answers from its own state and says so.
    let (own, _) = status(&cluster, 3, "");
    assert_eq!(own["stale"], true, "{own}");
    // Each image has two random layers and a config of its own.
    let pending = 3 * images.len() as u64;
    assert!(
        seen["regions"]["r3"]["pending_blobs"].as_u64().unwrap() >= pending,
        "{seen}"
    );
    for image in &images {
        assert_holds_no_blob(&cluster, 3, image);
    }
    // The backlog shows in the metrics of the majority's nodes.
    wait_until("node 1 to report r3's backlog", REPLICATED, || {
        let n = metric_sum(&cluster, 1, PENDING_BLOBS, &[("region", "r3")]);
        if n >= pending as f64 {
            Ok(())
        } else {
            Err(format!("{PENDING_BLOBS}{{region=\"r3\"}} = {n}"))
        }
    });
    assert_eq!(
        metric_sum(&cluster, 1, PENDING_BLOBS, &[("region", "r2")]),
        0.0
    );

    cluster.heal();
    for image in &images {
        wait_for_blob_files(&cluster, 3, image, REPLICATED);
    }
    must_wait_complete(&cluster, 3, "cut/app", REPLICATED);
    for image in &images {
        assert_holds_every_blob(&cluster, 3, image);
    }
    cluster.must_pull_everywhere(&[3], &images);
    // What r3 refused was never written: no node lists the tags or links the blobs.
    let tags = cluster.wait_for_same_tags(&cluster.ids(), "cut/app", CONVERGE_TIMEOUT);
    assert_eq!(tags.len(), images.len() + 1, "{tags:?}");
    for id in cluster.ids() {
        let client = cluster.client(id);
        for tag in &refused_tags {
            let r = client.get_manifest("cut/app", tag).unwrap();
            assert_eq!(r.status, 404, "node {id}: manifest {tag}: {}", r.text());
        }
        for digest in &refused_blobs {
            let r = client.head(&format!("/v2/cut/app/blobs/{digest}")).unwrap();
            assert_eq!(r.status, 404, "node {id}: blob {digest} refused at r3");
        }
    }
    // r3 counted what it received and how late it was; the backlog drains everywhere.
    let layer_bytes: u64 = images
        .iter()
        .flat_map(|i| i.layers.iter())
        .map(|b| b.size)
        .sum();
    assert!(
        metric_sum(&cluster, 3, COPIED_BYTES, &[("to", "3")]) >= layer_bytes as f64,
        "node 3 counted fewer replicated bytes than the layers it received"
    );
    assert!(metric_sum(&cluster, 3, LAG_COUNT, &[("region", "r3")]) >= 1.0);
    wait_until(
        "node 1's r3 backlog to drain",
        REPLICATED,
        || match metric_sum(&cluster, 1, PENDING_BLOBS, &[("region", "r3")]) {
            0.0 => Ok(()),
            n => Err(format!("{n} pending")),
        },
    );
}

/// A write refused for want of a quorum: 503 `UNAVAILABLE` with a `Retry-After` in seconds
/// and the reason.
#[track_caller]
fn assert_refused(what: &str, answer: Result<Resp, String>) {
    let r = answer.unwrap_or_else(|e| panic!("{what} got no answer: {e}"));
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    assert_eq!(
        r.error_codes(),
        vec!["UNAVAILABLE".to_string()],
        "{what}: {}",
        r.text()
    );
    let retry_after = r.header("retry-after").unwrap_or_default();
    assert!(
        retry_after.trim().parse::<u64>().is_ok(),
        "{what}: Retry-After {retry_after:?}"
    );
    assert!(
        r.text().contains("no quorum"),
        "{what} gave no reason: {}",
        r.text()
    );
}

/// Opens an upload session and sends `blob` in a PATCH (both only touch this node's staging
/// file, so they must succeed), then answers the final `PUT ?digest=`.
fn finish_chunked_upload(client: &Client, repo: &str, blob: &[u8]) -> Result<Resp, String> {
    let location = client.open_upload(repo).map_err(|e| e.to_string())?;
    let location = client
        .patch_upload(&location, 0, blob)
        .map_err(|e| e.to_string())?;
    client.request(
        "PUT",
        &with_query(&location, "digest", &sha256_digest(blob)),
        &[("Content-Type", "application/octet-stream")],
        Some(&[]),
    )
}

/// A repository limited to r1 and r2 leaves r3 without copies (while another repository
/// reaches r3); widening the policy makes r3 copy it.
#[test]
fn a_residency_policy_keeps_a_region_free_and_widening_it_adds_copies() {
    let cluster = three_regions();
    let set = cluster_tests::replication::ctl(
        &cluster,
        2,
        &["policy", "set", "eu/**", "--regions", "r1,r2"],
        Duration::from_secs(10),
    );
    set.assert_success();
    let resident = cluster.must_push_image(1, "eu/payroll", "v1", &layers());
    let open = cluster.must_push_image(1, "pub/site", "v1", &layers());
    must_wait_complete(&cluster, 3, &reference(&open), REPLICATED);
    must_wait_complete(&cluster, 3, &reference(&resident), REPLICATED);
    assert_holds_every_blob(&cluster, 2, &resident);
    assert_holds_every_blob(&cluster, 3, &open);
    assert_holds_no_blob(&cluster, 3, &resident);
    let (seen, _) = status(&cluster, 3, &reference(&resident));
    assert_eq!(seen["regions"]["r3"]["pending_blobs"], 0, "{seen}");

    // A pull at r3 stores nothing there either: a HEAD answers from the record and fetches
    // nothing, a GET is redirected to a holder in r1 or r2, which serves the bytes.
    let holders = [cluster.node(1).url(), cluster.node(2).url()];
    for blob in resident.blobs() {
        let head = cluster
            .client(3)
            .head(&format!("/v2/eu/payroll/blobs/{}", blob.digest))
            .expect("HEAD at r3");
        assert_eq!(head.status, 200, "HEAD {} at r3", blob.digest);
        let r = cluster
            .client(3)
            .get_blob("eu/payroll", &blob.digest)
            .expect("GET at r3");
        assert_eq!(r.status, 307, "GET {} at r3: {}", blob.digest, r.text());
        let location = r.header("location").expect("a Location").to_string();
        let holder = holders
            .iter()
            .position(|u| location.starts_with(u.as_str()))
            .unwrap_or_else(|| panic!("{location} is not a holder's URL ({holders:?})"));
        let got = cluster
            .client(holder as u64 + 1)
            .get_blob("eu/payroll", &blob.digest)
            .expect("GET at the holder");
        assert_eq!(got.status, 200);
        assert_eq!(sha256_digest(&got.body), blob.digest);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_holds_no_blob(&cluster, 3, &resident);

    // Widen: every region.
    cluster_tests::replication::ctl(
        &cluster,
        3,
        &["policy", "set", "eu/**"],
        Duration::from_secs(10),
    )
    .assert_success();
    wait_for_blob_files(&cluster, 3, &resident, REPLICATED);
    must_wait_complete(&cluster, 1, &reference(&resident), REPLICATED);

    // Every node reads the policy from Raft; clearing it twice is refused the second time.
    let ctl = |at: u64, args: &[&str]| {
        cluster_tests::replication::ctl(&cluster, at, args, Duration::from_secs(10))
    };
    let got = ctl(1, &["policy", "get", "--json"]);
    got.assert_success();
    assert_eq!(
        got.json()["policies"],
        serde_json::json!([{"pattern": "eu/**", "regions": [], "on_demand": []}])
    );
    ctl(2, &["policy", "clear", "eu/**"]).assert_success();
    let again = ctl(3, &["policy", "clear", "eu/**"]);
    assert!(!again.status.success(), "{}", again.stdout);
    assert!(again.stderr.contains("not found"), "{}", again.stderr);
    let none = ctl(3, &["policy", "get", "--json"]);
    none.assert_success();
    assert_eq!(none.json()["policies"], serde_json::json!([]));
}

/// An image pushed and deleted while r3 was cut off is never copied to r3 after healing.
#[test]
fn an_image_deleted_while_a_region_was_cut_off_is_not_copied_there() {
    let cluster = three_regions();
    cluster.partition(&[3], &[1, 2]);
    let doomed = cluster.must_push_image(1, "tmp/build", "v1", &layers());
    wait_for_blob_files(&cluster, 2, &doomed, REPLICATED);
    let r = cluster
        .client(1)
        .request(
            "DELETE",
            &format!("/v2/tmp/build/manifests/{}", doomed.manifest_digest),
            &[],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());

    cluster.heal();
    cluster.wait_for_applied_converged(REPLICATED);
    // r3 replicates again: a later image gets there, the deleted one never does.
    let later = cluster.must_push_image(1, "tmp/build", "v2", &layers());
    wait_for_blob_files(&cluster, 3, &later, REPLICATED);
    must_wait_complete(&cluster, 3, "tmp/build", REPLICATED);
    assert_holds_no_blob(&cluster, 3, &doomed);
    let gone = cluster
        .client(3)
        .get_manifest("tmp/build", &doomed.manifest_digest)
        .unwrap();
    assert_eq!(gone.status, 404);
}

/// Every node killed at once while r3 still lacked an image: after the restart the
/// replicator recomputes its work from the state and r3 gets the image.
#[test]
fn replication_resumes_after_every_node_restarts_at_once() {
    let mut cluster = three_regions();
    cluster.partition(&[3], &[1, 2]);
    let image = cluster.must_push_image(1, "batch/job", "v1", &layers());
    wait_for_blob_files(&cluster, 2, &image, REPLICATED);
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    // No partition after the restart.
    cluster.heal();
    for id in [1, 2, 3] {
        cluster.restart(id);
    }
    for id in [1, 2, 3] {
        cluster.wait_for_ready(id, READY_TIMEOUT);
    }
    must_wait_complete(&cluster, 2, &reference(&image), REPLICATED);
    assert_holds_every_blob(&cluster, 3, &image);
    cluster.must_pull_image(3, "batch/job", "v1", &image);
}

/// A corrupt copy and a missing copy are found by the scrubber and replaced from a peer, byte
/// for byte, with no pull; the repairs are counted.
#[test]
fn the_scrubber_repairs_a_corrupt_and_a_missing_copy() {
    let cluster = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .env("BERTH_REPLICATION__SCRUB_INTERVAL_SECS", "1")
        .build();
    let image = cluster.must_push_image(1, "scrub/me", "v1", &layers());
    must_wait_complete(&cluster, 1, &reference(&image), REPLICATED);
    let corrupt = &image.layers[0];
    let missing = &image.layers[1];
    let path = blob_path(&cluster, 2, &corrupt.digest);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::remove_file(blob_path(&cluster, 3, &missing.digest)).unwrap();

    for (id, blob) in [(2, corrupt), (3, missing)] {
        wait_until(
            &format!("node {id} to repair {}", blob.digest),
            REPLICATED,
            || match std::fs::read(blob_path(&cluster, id, &blob.digest)) {
                Ok(b) if sha256_digest(&b) == blob.digest => Ok(()),
                Ok(_) => Err("still corrupt".to_string()),
                Err(e) => Err(e.to_string()),
            },
        );
        // Counted once the repair is recorded (just after the file is in place).
        wait_until(
            &format!("node {id} to count its repair"),
            REPLICATED,
            || match metric_sum(&cluster, id, SCRUB_REPAIRS, &[]) {
                n if n >= 1.0 => Ok(()),
                n => Err(format!("{SCRUB_REPAIRS} = {n}")),
            },
        );
        assert!(metric_sum(&cluster, id, SCRUB_CHECKED, &[]) >= 1.0);
    }
    cluster.must_pull_image(2, "scrub/me", "v1", &image);
    cluster.must_pull_image(3, "scrub/me", "v1", &image);
}

/// With `copies_per_region = 2` and two nodes in r1, both hold every blob; the other regions
/// one each.
#[test]
fn copies_per_region_places_that_many_copies_in_a_region() {
    let cluster = ClusterBuilder::new()
        .nodes(4)
        .regions(&["r1", "r2", "r3"])
        .env("BERTH_REPLICATION__COPIES_PER_REGION", "2")
        .build();
    // Node 4 is in r1 with node 1.
    let image = cluster.must_push_image(2, "two/copies", "v1", &layers());
    must_wait_complete(&cluster, 4, &reference(&image), REPLICATED);
    for id in [1, 2, 3, 4] {
        assert_holds_every_blob(&cluster, id, &image);
    }
}

/// By default a region keeps one copy: with two nodes in r1 and the push at r2, each blob
/// lands on exactly one node of r1 — the one its placement names — and nowhere else there.
#[test]
fn one_copy_per_region_lands_on_the_placed_node_only() {
    let cluster = ClusterBuilder::new()
        .nodes(4)
        .regions(&["r1", "r2", "r3"])
        .build();
    let images: Vec<ImageRef> = (0..3)
        .map(|i| cluster.must_push_image(2, "one/copy", &format!("v{i}"), &layers()))
        .collect();
    must_wait_complete(&cluster, 1, "one/copy", REPLICATED);
    let verbose = cluster_tests::replication::ctl(
        &cluster,
        3,
        &["status", "one/copy", "--verbose", "--json"],
        Duration::from_secs(10),
    );
    verbose.assert_success();
    let blobs = verbose.json()["blobs"].as_array().unwrap().clone();
    for image in &images {
        for blob in image.blobs() {
            let entry = blobs
                .iter()
                .find(|b| b["digest"] == blob.digest.as_str())
                .unwrap_or_else(|| panic!("{} missing from {blobs:?}", blob.digest));
            let wanted: Vec<u64> = entry["wanted"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let in_r1: Vec<u64> = wanted
                .iter()
                .copied()
                .filter(|n| [1, 4].contains(n))
                .collect();
            assert_eq!(in_r1.len(), 1, "{entry}");
            let placed = in_r1[0];
            let other = if placed == 1 { 4 } else { 1 };
            assert!(holds_blob(&cluster, placed, &blob.digest), "{entry}");
            assert!(!holds_blob(&cluster, other, &blob.digest), "{entry}");
        }
    }
}
