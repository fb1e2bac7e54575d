//! Scenario 22 — garbage collection through `clusterctl gc` on a live node.
//!
//! A one-node cluster with a grace period of 0 and no scheduled passes:
//!
//! 1. a pass over the fresh, empty registry frees nothing;
//! 2. a blob pushed with no manifest referring to it: a dry run reports it (1 blob, its size)
//!    and leaves it; `gc run --wait` frees it (1 blob, its size, on node 1), after which the
//!    registry answers 404 for it and `gc status` shows the pass and the reaper's removal.

use std::time::Duration;

use cluster_tests::clusterctl::{self, CtlOutput};
use cluster_tests::oci::{BlobRef, UploadStyle};
use cluster_tests::{ClusterBuilder, LEADER_TIMEOUT, random_layer, wait_until};

/// Bound on one clusterctl run (a pass here handles at most one blob).
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the node may take to answer 404 for a collected blob, and its reaper to remove
/// the file (both follow the collection as it is applied).
const REAP_TIMEOUT: Duration = Duration::from_secs(20);

fn ctl(endpoint: &str, args: &[&str]) -> CtlOutput {
    clusterctl::run(endpoint, args, CTL_TIMEOUT)
}

#[test]
fn gc_run_frees_an_unreferenced_blob_and_gc_status_shows_it() {
    let cluster = ClusterBuilder::new()
        .nodes(1)
        .env("BERTH_GC__GRACE_PERIOD_SECS", "0")
        .env("BERTH_GC__INTERVAL_SECS", "0")
        .build();
    cluster.wait_for_leader(LEADER_TIMEOUT);
    let at = cluster.node(1).cluster_addr();

    // 1. A pass over the empty registry frees nothing (the leader builds the reference
    //    counts at start; if it has not yet, this pass does).
    let first = ctl(&at, &["--json", "gc", "run", "--wait"]);
    first.assert_success();
    let first = first.json();
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["blobs"], 0, "{first}");

    // 2. A blob no manifest refers to.
    let repo = "gc/orphan";
    let data = random_layer(3000);
    let blob = BlobRef::of(&data);
    let client = cluster.client(1);
    client
        .push_blob(repo, &data, UploadStyle::Monolithic)
        .unwrap_or_else(|e| panic!("failed to push the blob: {e:?}"));

    let dry = ctl(&at, &["--json", "gc", "run", "--dry-run", "--wait"]);
    dry.assert_success();
    let dry = dry.json();
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["blobs"], 1, "{dry}");
    assert_eq!(dry["bytes"], blob.size, "{dry}");
    let kept = client.get_blob(repo, &blob.digest).expect("GET blob");
    assert_eq!(kept.status, 200, "a dry run removes nothing");
    assert_eq!(kept.body, data);

    let run = ctl(&at, &["gc", "run", "--wait"]);
    run.assert_success();
    assert!(
        run.stdout.contains(&format!(
            ": freed 1 blob ({} bytes) of 1 candidate\n",
            blob.size
        )),
        "{run:?}"
    );
    let size = blob.size.to_string();
    assert!(
        run.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["1", "1", size.as_str()])),
        "no row for node 1 in the per-node table: {run:?}"
    );

    wait_until(
        "the collected blob to answer 404",
        REAP_TIMEOUT,
        || match client.get_blob(repo, &blob.digest) {
            Ok(r) if r.status == 404 => Ok(()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e),
        },
    );
    let status = wait_until("the reaper to remove the file", REAP_TIMEOUT, || {
        let out = ctl(&at, &["--json", "gc", "status"]);
        out.assert_success();
        let status = out.json();
        if status["reaper_removed_files"] == 1 {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    });
    assert_eq!(status["node_id"], 1, "{status}");
    assert_eq!(status["reaper_removed_bytes"], blob.size, "{status}");
    let last = &status["last"];
    assert_eq!(last["dry_run"], false, "{status}");
    assert_eq!(last["blobs"], 1, "{status}");
    assert_eq!(last["bytes"], blob.size, "{status}");
    assert_eq!(
        last["per_node"],
        serde_json::json!([{"node_id": 1, "blobs": 1, "bytes": blob.size}]),
        "{status}"
    );
    let text = ctl(&at, &["gc", "status"]);
    text.assert_success();
    assert!(
        text.stdout.contains(&format!(
            "reaper: removed 1 blob file ({} bytes) since the node started",
            blob.size
        )),
        "{text:?}"
    );
}
