//! Scenario 23: lifecycle through `clusterctl` on three nodes in three regions (`r1`, `r2`,
//! `r3`, one node each, so the replicator copies every blob to every node); garbage
//! collection only on demand, with no grace (docs/lifecycle.md).
//!
//! 1. Soft delete on at node 1; an image deleted by digest at node 2 is listed as deleted at
//!    node 3, is gone by tag at every node, keeps its blob files on every node through a
//!    collection, and once restored at node 3 pulls whole at every node.
//! 2. A tag locked at node 1 cannot be moved by a push at node 2 or 3; purge deletes the
//!    other tags and the manifests they leave, reports the locked tag as skipped, and deletes
//!    it once it is unlocked.
//! 3. A namespace's limits and its usage (the distinct bytes of its image, one repository).

use std::time::Duration;

use cluster_tests::clusterctl::{self, CtlOutput};
use cluster_tests::oci::PushError;
use cluster_tests::replication::{
    blob_files, image_blobs, must_wait_complete, wait_for_blob_files,
};
use cluster_tests::{
    Cluster, ClusterBuilder, Image, ImageRef, LEADER_TIMEOUT, UploadStyle, random_layer, wait_until,
};

/// Bound on one clusterctl run.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long replication may take.
const REPLICATED: Duration = Duration::from_secs(60);
/// How long a node may take to apply what was committed elsewhere.
const VISIBLE: Duration = Duration::from_secs(10);

/// Three nodes in three regions; collection only when asked, with no grace.
fn cluster() -> Cluster {
    let cluster = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .env("BERTH_GC__INTERVAL_SECS", "0")
        .env("BERTH_GC__GRACE_PERIOD_SECS", "0")
        .build();
    cluster.wait_for_leader(LEADER_TIMEOUT);
    cluster
}

/// `clusterctl <args…>` at node `id`.
fn ctl(cluster: &Cluster, id: u64, args: &[&str]) -> CtlOutput {
    clusterctl::run(&cluster.node(id).cluster_addr(), args, CTL_TIMEOUT)
}

/// `clusterctl --json <args…>` at node `id`; panics unless it exits 0, returns its JSON.
fn must_json(cluster: &Cluster, id: u64, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(cluster, id, &all);
    out.assert_success();
    out.json()
}

/// `repo:tag` of `image`.
fn reference(image: &ImageRef) -> String {
    format!("{}:{}", image.repo, image.tag)
}

/// Waits until every node holds every blob file of `image` and replication reports it
/// complete.
fn wait_replicated(cluster: &Cluster, image: &ImageRef) {
    must_wait_complete(cluster, 1, &reference(image), REPLICATED);
    for id in [1, 2, 3] {
        wait_for_blob_files(cluster, id, image, REPLICATED);
    }
}

/// Waits until node `id` answers `status` to a manifest GET of `repo:reference`; returns
/// the digest it served, if any.
fn wait_manifest_status(
    cluster: &Cluster,
    id: u64,
    repo: &str,
    reference: &str,
    status: u16,
) -> Option<String> {
    let client = cluster.client(id);
    wait_until(
        &format!("node {id} to answer {status} for {repo}:{reference}"),
        VISIBLE,
        || {
            let r = client.get_manifest(repo, reference)?;
            if r.status == status {
                Ok(r.header("docker-content-digest").map(str::to_owned))
            } else {
                Err(format!("{}: {}", r.status, r.text()))
            }
        },
    )
}

/// The `field` of every item of the array `list` of `report`, sorted.
fn sorted<'a>(report: &'a serde_json::Value, list: &str, field: &str) -> Vec<&'a str> {
    let mut all: Vec<&str> = report[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {report}"))
        .iter()
        .map(|item| item[field].as_str().unwrap_or_default())
        .collect();
    all.sort_unstable();
    all
}

#[test]
fn soft_delete_and_restore_across_regions() {
    let cluster = cluster();
    let on = must_json(&cluster, 1, &["soft-delete", "set", "--days", "7"]);
    assert_eq!(on["ok"], true, "{on}");
    assert_eq!(on["retention_days"], 7, "{on}");
    let shown = must_json(&cluster, 3, &["soft-delete", "show"]);
    assert_eq!(shown["retention_days"], 7, "{shown}");

    let image = cluster.client(1).must_push(&Image::new(
        "life/app",
        "v1",
        &[random_layer(4 * 1024), random_layer(3 * 1024)],
    ));
    wait_replicated(&cluster, &image);

    let path = format!("/v2/{}/manifests/{}", image.repo, image.manifest_digest);
    let deleted = cluster
        .client(2)
        .request("DELETE", &path, &[], None)
        .unwrap_or_else(|e| panic!("DELETE {path} at node 2: {e}"));
    assert_eq!(deleted.status, 202, "DELETE at node 2: {}", deleted.text());

    let bin = must_json(&cluster, 3, &["repos", "deleted", &image.repo]);
    let listed = bin["manifests"].as_array().expect("manifests");
    assert_eq!(listed.len(), 1, "{bin}");
    assert_eq!(listed[0]["digest"], image.manifest_digest.as_str(), "{bin}");
    assert_eq!(listed[0]["tags"], serde_json::json!(["v1"]), "{bin}");
    let window = 7 * 86_400_000_u64;
    assert_eq!(
        listed[0]["expires_ms"].as_u64().unwrap() - listed[0]["deleted_ms"].as_u64().unwrap(),
        window,
        "{bin}"
    );
    let text = ctl(&cluster, 3, &["repos", "deleted", &image.repo]);
    text.assert_success();
    assert!(
        text.stdout.contains(&image.manifest_digest) && text.stdout.contains("RESTORABLE UNTIL"),
        "{text:?}"
    );

    for id in [1, 2, 3] {
        wait_manifest_status(&cluster, id, &image.repo, &image.tag, 404);
    }

    // A collection (grace 0) leaves the blobs of a soft-deleted manifest.
    let gc = must_json(&cluster, 1, &["gc", "run", "--wait"]);
    assert_eq!(gc["ok"], true, "{gc}");
    assert_eq!(
        gc["blobs"], 0,
        "a pass collected blobs of a soft-deleted image: {gc}"
    );
    let blobs = image_blobs(&image);
    for id in [1, 2, 3] {
        let held = blob_files(&cluster, id);
        assert!(
            blobs.is_subset(&held),
            "node {id} lost blob files of the soft-deleted image: has {held:?}, wants {blobs:?}"
        );
    }

    let restore = format!("{}@{}", image.repo, image.manifest_digest);
    let restored = ctl(&cluster, 3, &["repos", "restore", &restore]);
    restored.assert_success();
    assert!(restored.stdout.starts_with("ok: "), "{restored:?}");
    for id in [1, 2, 3] {
        cluster.wait_for_image(id, &image, VISIBLE);
    }
    cluster.must_pull_everywhere(&[1, 2, 3], std::slice::from_ref(&image));
    let bin = must_json(&cluster, 1, &["repos", "deleted", &image.repo]);
    assert_eq!(bin["manifests"], serde_json::json!([]), "{bin}");
}

#[test]
fn locks_hold_at_every_node_and_purge_skips_them() {
    let cluster = cluster();
    let client = cluster.client(1);
    let push = |tag: &str| client.must_push(&Image::new("app", tag, &[random_layer(2 * 1024)]));
    let v1 = push("v1");
    let v2 = push("v2");
    let v3 = push("v3");

    let locked = must_json(
        &cluster,
        1,
        &["repos", "update", "app:v1", "--write-enabled", "false"],
    );
    assert_eq!(locked["ok"], true, "{locked}");
    assert_eq!(locked["attributes"]["write_enabled"], false, "{locked}");
    assert_eq!(locked["attributes"]["delete_enabled"], true, "{locked}");
    let shown = must_json(&cluster, 2, &["repos", "show", "app"]);
    assert_eq!(shown["attributes"]["write_enabled"], true, "{shown}");
    assert_eq!(shown["entries"][0]["tag"], "v1", "{shown}");
    assert_eq!(
        shown["entries"][0]["attributes"]["write_enabled"], false,
        "{shown}"
    );

    // A push that would move v1, at each of the other nodes.
    for id in [2, 3] {
        let other = Image::new("app", "v1", &[random_layer(1024)]);
        match cluster
            .client(id)
            .try_push_image(&other, UploadStyle::Monolithic)
        {
            Err(PushError::Unexpected { status, body, step }) => {
                // The lock's refusal is 403 DENIED; v1 stays (below).
                assert!(
                    step.contains("PUT manifest") && status == 403 && body.contains("DENIED"),
                    "push of app:v1 at node {id}, {step}: {status} {body}"
                );
            }
            other => panic!("push of a locked tag at node {id} was not refused: {other:?}"),
        }
        let digest = wait_manifest_status(&cluster, id, "app", "v1", 200);
        assert_eq!(
            digest.as_deref(),
            Some(v1.manifest_digest.as_str()),
            "app:v1 at node {id} moved"
        );
    }

    let purge = must_json(&cluster, 2, &["purge", "--filter", "app:.*", "--untagged"]);
    assert_eq!(purge["ok"], true, "{purge}");
    assert_eq!(purge["dry_run"], false, "{purge}");
    assert_eq!(sorted(&purge, "tags", "tag"), ["v2", "v3"], "{purge}");
    let mut want = vec![v2.manifest_digest.as_str(), v3.manifest_digest.as_str()];
    want.sort_unstable();
    assert_eq!(sorted(&purge, "manifests", "digest"), want, "{purge}");
    assert_eq!(
        purge["skipped"],
        serde_json::json!([{"what": "app:v1", "why": "the tag is locked"}]),
        "{purge}"
    );
    for id in [1, 2, 3] {
        for gone in [&v2, &v3] {
            wait_manifest_status(&cluster, id, "app", &gone.manifest_digest, 404);
        }
        wait_manifest_status(&cluster, id, "app", "v1", 200);
    }

    let unlocked = must_json(
        &cluster,
        3,
        &["repos", "update", "app:v1", "--write-enabled", "true"],
    );
    assert_eq!(unlocked["attributes"]["write_enabled"], true, "{unlocked}");
    let again = ctl(&cluster, 3, &["purge", "--filter", "app:.*", "--untagged"]);
    again.assert_success();
    assert!(
        again
            .stdout
            .starts_with("purge: deleted 1 tag and 1 untagged manifest, skipped 0\n"),
        "{again:?}"
    );
    assert!(
        again
            .stdout
            .contains(&format!("deleted tag app:v1 ({})", v1.manifest_digest)),
        "{again:?}"
    );
    for id in [1, 2, 3] {
        wait_manifest_status(&cluster, id, "app", "v1", 404);
    }

    // Every change is in the audit log of the node that was called, under its RPC name.
    let changes = wait_until("the audit records of the changes", VISIBLE, || {
        let out = ctl(&cluster, 1, &["--json", "audit"]);
        out.assert_success();
        let changes: Vec<(u64, String, String)> = out
            .json_lines()
            .into_iter()
            .filter(|r| r["event"] == "admin_change")
            .map(|r| {
                let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (
                    r["node"].as_u64().unwrap_or(0),
                    field("what"),
                    field("target"),
                )
            })
            .collect();
        if changes.len() >= 4 {
            Ok(changes)
        } else {
            Err(format!("{changes:?}"))
        }
    });
    for expected in [
        (1, "UpdateAttributes", "app:v1"),
        (2, "Purge", "app:.*"),
        (3, "UpdateAttributes", "app:v1"),
        (3, "Purge", "app:.*"),
    ] {
        assert!(
            changes
                .iter()
                .any(|(n, w, t)| (*n, w.as_str(), t.as_str()) == expected),
            "no audit record {expected:?} in {changes:?}"
        );
    }
}

#[test]
fn namespace_limits_are_reported() {
    let cluster = cluster();
    let set = must_json(
        &cluster,
        1,
        &[
            "namespaces",
            "set",
            "team",
            "--quota",
            "100000",
            "--max-repositories",
            "2",
        ],
    );
    assert_eq!(set["ok"], true, "{set}");
    assert_eq!(set["quota_bytes"], 100_000, "{set}");
    assert_eq!(set["max_repositories"], 2, "{set}");
    assert_eq!(set["repositories"], 0, "{set}");

    let image = cluster.client(2).must_push(&Image::new(
        "team/a",
        "v1",
        &[random_layer(3000), random_layer(2000)],
    ));
    let bytes: u64 = image.blobs().map(|b| b.size).sum();

    for id in [1, 2, 3] {
        let team = must_json(&cluster, id, &["namespaces", "get", "team"]);
        assert_eq!(team["used_bytes"], bytes, "node {id}: {team}");
        assert_eq!(team["repositories"], 1, "node {id}: {team}");
        assert_eq!(team["quota_bytes"], 100_000, "node {id}: {team}");
        assert_eq!(team["max_repositories"], 2, "node {id}: {team}");
    }
    let text = ctl(&cluster, 3, &["namespaces", "get", "team"]);
    text.assert_success();
    assert!(
        text.stdout
            .contains(&format!("bytes: {bytes} of 100000\nrepositories: 1 of 2\n")),
        "{text:?}"
    );
    let list = must_json(&cluster, 3, &["namespaces", "list"]);
    let team = list["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["namespace"] == "team")
        .unwrap_or_else(|| panic!("team not listed: {list}"));
    assert_eq!(team["used_bytes"], bytes, "{list}");
}
