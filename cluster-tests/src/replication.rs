//! Replication helpers of the scenarios: which blob files a node's data directory holds
//! (one blob, an image's, or a full walk of the directory), and `clusterctl replication …`
//! runs, bounded.
//!
//! A blob file is `<data-dir>/blobs/sha256/<first two hex>/<hex>` (docs/on-disk-layout.md);
//! its presence is what "the node holds a copy" means on disk, whatever the metadata says.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::clusterctl::{self, CtlOutput};
use crate::oci::ImageRef;
use crate::wait::wait_until;

/// Slack for one `clusterctl` run beyond the `--timeout` it is given.
const CTL_SLACK: Duration = Duration::from_secs(15);

/// Path of a blob's file under node `id`'s data directory.
pub fn blob_path(cluster: &Cluster, id: u64, digest: &str) -> PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    cluster
        .node(id)
        .data_dir()
        .join("blobs")
        .join("sha256")
        .join(&hex[..2])
        .join(hex)
}

/// Whether node `id`'s data directory holds the blob's file.
pub fn holds_blob(cluster: &Cluster, id: u64, digest: &str) -> bool {
    blob_path(cluster, id, digest).is_file()
}

/// The blobs of `image` (config and layers) whose files node `id` lacks.
pub fn missing_blobs(cluster: &Cluster, id: u64, image: &ImageRef) -> Vec<String> {
    image
        .blobs()
        .filter(|b| !holds_blob(cluster, id, &b.digest))
        .map(|b| b.digest.clone())
        .collect()
}

/// Waits until node `id`'s data directory holds every blob file of `image`.
pub fn wait_for_blob_files(cluster: &Cluster, id: u64, image: &ImageRef, timeout: Duration) {
    wait_until(
        &format!(
            "node {id} to hold the blob files of {}:{}",
            image.repo, image.tag
        ),
        timeout,
        || match missing_blobs(cluster, id, image).as_slice() {
            [] => Ok(()),
            missing => Err(format!("missing {missing:?}")),
        },
    );
}

/// Every blob file in node `id`'s data directory, as digests (`sha256:<file name>`): a full
/// walk of `blobs/sha256/*/*` (a stray file beside the prefix directories is listed by its
/// path). Panics when the directory cannot be read.
pub fn blob_files(cluster: &Cluster, id: u64) -> BTreeSet<String> {
    let root = cluster.node(id).data_dir().join("blobs").join("sha256");
    let read = |dir: &std::path::Path| -> Vec<std::fs::DirEntry> {
        std::fs::read_dir(dir)
            .and_then(|entries| entries.collect::<std::io::Result<Vec<_>>>())
            .unwrap_or_else(|e| panic!("failed to list {} of node {id}: {e}", dir.display()))
    };
    let mut files = BTreeSet::new();
    for prefix in read(&root) {
        if !prefix.path().is_dir() {
            // Not where a blob file goes: listed by path, so that it never equals a digest.
            files.insert(prefix.path().display().to_string());
            continue;
        }
        for file in read(&prefix.path()) {
            files.insert(format!("sha256:{}", file.file_name().to_string_lossy()));
        }
    }
    files
}

/// The digests of `image`'s blobs (config and layers).
pub fn image_blobs(image: &ImageRef) -> BTreeSet<String> {
    image.blobs().map(|b| b.digest.clone()).collect()
}

/// Waits until a full walk of node `id`'s blob directory ([`blob_files`]) gives exactly
/// `want`. A file of `want` that one walk saw and a later walk does not panics at once: what
/// the wait expects to stay must never be removed meanwhile.
pub fn wait_for_exact_blob_files(
    cluster: &Cluster,
    id: u64,
    want: &BTreeSet<String>,
    timeout: Duration,
) {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    wait_until(
        &format!("node {id} to hold exactly the blob files {want:?}"),
        timeout,
        || {
            let held = blob_files(cluster, id);
            let lost: Vec<&String> = seen.iter().filter(|d| !held.contains(*d)).collect();
            assert!(
                lost.is_empty(),
                "node {id} removed blob files {lost:?} that it held and must keep; it holds {held:?}"
            );
            seen.extend(held.intersection(want).cloned());
            if held == *want {
                return Ok(());
            }
            let extra: Vec<&String> = held.difference(want).collect();
            let missing: Vec<&String> = want.difference(&held).collect();
            Err(format!("extra {extra:?}, missing {missing:?}"))
        },
    );
}

/// Runs `clusterctl replication <args…> --timeout <timeout>` at node `at`.
pub fn ctl(cluster: &Cluster, at: u64, args: &[&str], timeout: Duration) -> CtlOutput {
    let secs = format!("{}", timeout.as_secs_f64());
    let mut all = vec!["replication"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--timeout", &secs]);
    clusterctl::run(&cluster.node(at).cluster_addr(), &all, timeout + CTL_SLACK)
}

/// `clusterctl replication status <reference> --json` at node `at` (no wait): its JSON, and
/// whether it exited 0.
pub fn status(cluster: &Cluster, at: u64, reference: &str) -> (serde_json::Value, bool) {
    let mut args = vec!["status", "--json"];
    if !reference.is_empty() {
        args.insert(1, reference);
    }
    let out = ctl(cluster, at, &args, Duration::from_secs(10));
    (out.json(), out.status.success())
}

/// `clusterctl replication status <reference> --wait --json` at node `at`; panics (with the
/// output) unless it exits 0 with `"complete": true` within `timeout`.
pub fn must_wait_complete(cluster: &Cluster, at: u64, reference: &str, timeout: Duration) {
    let mut args = vec!["status", "--wait", "--json"];
    if !reference.is_empty() {
        args.insert(1, reference);
    }
    let out = ctl(cluster, at, &args, timeout);
    out.assert_success();
    assert_eq!(
        out.json()["complete"],
        true,
        "`clusterctl {}`: {}",
        out.args.join(" "),
        out.stdout
    );
}

/// The sum of every sample of metric `name` at node `id` (`GET /metrics`) whose labels
/// include all of `labels` (`key="value"` pairs); 0 when there is none.
pub fn metric_sum(cluster: &Cluster, id: u64, name: &str, labels: &[(&str, &str)]) -> f64 {
    let r = cluster
        .client(id)
        .get("/metrics")
        .unwrap_or_else(|e| panic!("GET /metrics at node {id}: {e}"));
    assert_eq!(r.status, 200, "GET /metrics at node {id}: {}", r.text());
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            if metric != name || !wanted.iter().all(|w| rest.contains(w.as_str())) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// Waits until `clusterctl replication status <reference>` at node `at` reports `region`
/// complete (the copies there are recorded, not only on disk); returns that status.
pub fn wait_for_region_complete(
    cluster: &Cluster,
    at: u64,
    reference: &str,
    region: &str,
    timeout: Duration,
) -> serde_json::Value {
    wait_until(
        &format!("{reference} to be complete in {region} (as node {at} sees it)"),
        timeout,
        || {
            let (seen, _) = status(cluster, at, reference);
            if seen["regions"][region]["complete"] == true {
                Ok(seen)
            } else {
                Err(seen.to_string())
            }
        },
    )
}
