//! Scenario 21: garbage collection across nodes (docs/lifecycle.md). Three regions (`r1`,
//! `r2`, `r3`, one node each), so the replicator copies every blob to every node; the leader
//! runs a pass every second and a blob is collectable as soon as no manifest references it
//! (grace 0). A deleted image's blobs leave every node's disk, its shared layer stays; a node
//! down during the collection removes its copies when it returns and catches up; an image
//! pushed again after its collection is whole everywhere.
//!
//! With a grace of 0 a pass may collect a blob between its upload and the manifest PUT that
//! references it; the PUT then answers `MANIFEST_BLOB_UNKNOWN` (lifecycle.md, "the Raft
//! ordering") and a client pushes again, as [`push`] does.

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_tests::oci::PushError;
use cluster_tests::replication::{
    blob_files, image_blobs, must_wait_complete, wait_for_blob_files, wait_for_exact_blob_files,
};
use cluster_tests::wait::try_wait_until;
use cluster_tests::{
    Cluster, ClusterBuilder, Image, ImageRef, READY_TIMEOUT, UploadStyle, random_layer,
};

/// How long replication may take.
const REPLICATED: Duration = Duration::from_secs(60);
/// How long collection (a pass, the Raft command, every reaper) may take.
const COLLECTED: Duration = Duration::from_secs(60);
/// How long a push is tried again while a pass collects its blobs before the manifest PUT.
const PUSH_BUDGET: Duration = Duration::from_secs(30);
/// How long a node may take to serve a manifest committed elsewhere.
const VISIBLE: Duration = Duration::from_secs(10);

/// Three nodes in three regions, collecting every second with no grace.
fn collecting_cluster() -> Cluster {
    ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .env("BERTH_GC__INTERVAL_SECS", "1")
        .env("BERTH_GC__GRACE_PERIOD_SECS", "0")
        .build()
}

fn reference(image: &ImageRef) -> String {
    format!("{}:{}", image.repo, image.tag)
}

/// Pushes `image` at node `id`, again when the manifest PUT answers `MANIFEST_BLOB_UNKNOWN`
/// (a pass collected a blob of it first) or 503; panics on anything else.
fn push(cluster: &Cluster, id: u64, image: &Image) -> ImageRef {
    let client = cluster.client(id);
    let mut collected_first = 0;
    let r = try_wait_until(PUSH_BUDGET, || {
        match client.try_push_image(image, UploadStyle::Monolithic) {
            Ok(pushed) => Ok(Ok(pushed)),
            Err(e @ PushError::Unavailable { .. }) => Err(e.to_string()),
            Err(PushError::Unexpected {
                status: 400,
                body,
                step,
            }) if body.contains("MANIFEST_BLOB_UNKNOWN") => {
                collected_first += 1;
                Err(format!("{step}: {body}"))
            }
            Err(e) => Ok(Err(e)),
        }
    });
    match r {
        Ok(Ok(pushed)) => {
            if collected_first > 0 {
                eprintln!(
                    "push of {}:{} at node {id}: {collected_first} manifest PUTs found a blob \
                     collected first, pushed again",
                    image.repo, image.tag
                );
            }
            pushed
        }
        Ok(Err(e)) => panic!(
            "push of {}:{} at node {id} failed: {e}",
            image.repo, image.tag
        ),
        Err(last) => panic!(
            "push of {}:{} at node {id} did not succeed within {PUSH_BUDGET:?}: {last}",
            image.repo, image.tag
        ),
    }
}

/// `DELETE /v2/<repo>/manifests/<digest>` of `image` at node `id`; panics unless 202.
fn delete_manifest(cluster: &Cluster, id: u64, image: &ImageRef) {
    let path = format!("/v2/{}/manifests/{}", image.repo, image.manifest_digest);
    let r = cluster
        .client(id)
        .request("DELETE", &path, &[], None)
        .unwrap_or_else(|e| panic!("DELETE {path} at node {id}: {e}"));
    assert_eq!(r.status, 202, "DELETE {path} at node {id}: {}", r.text());
}

/// Waits until every node holds every blob file of `images`, and replication reports each
/// image complete.
fn wait_replicated(cluster: &Cluster, images: &[&ImageRef]) {
    for image in images {
        must_wait_complete(cluster, 1, &reference(image), REPLICATED);
        for id in [1, 2, 3] {
            wait_for_blob_files(cluster, id, image, REPLICATED);
        }
    }
}

/// A and B share a layer. With B deleted while node 3 is down, nodes 1 and 2 end up holding
/// exactly A's blobs; node 3, restarted, removes B's as it applies the collection, keeps A's,
/// and every node serves A whole.
#[test]
fn collected_blobs_leave_every_node_and_a_node_down_during_gc_removes_its_copies_when_it_returns() {
    let mut cluster = collecting_cluster();
    let repo = "gc/app";
    let shared = random_layer(4 * 1024);
    let a = push(
        &cluster,
        1,
        &Image::new(repo, "a", &[shared.clone(), random_layer(3 * 1024)]),
    );
    let b = push(
        &cluster,
        1,
        &Image::new(repo, "b", &[shared, random_layer(5 * 1024)]),
    );
    assert_eq!(
        a.layers[0], b.layers[0],
        "the images share their first layer"
    );
    wait_replicated(&cluster, &[&a, &b]);
    let a_blobs = image_blobs(&a);
    let all: BTreeSet<String> = a_blobs.union(&image_blobs(&b)).cloned().collect();
    assert_eq!(all.len(), 5, "A and B have 5 distinct blobs: {all:?}");
    for id in [1, 2, 3] {
        assert_eq!(blob_files(&cluster, id), all, "blob files of node {id}");
    }

    cluster.kill(3);
    delete_manifest(&cluster, 1, &b);
    for id in [1, 2] {
        wait_for_exact_blob_files(&cluster, id, &a_blobs, COLLECTED);
    }
    // Node 3 was down throughout: it still has B's files.
    assert_eq!(blob_files(&cluster, 3), all, "blob files of node 3, down");

    cluster.restart(3);
    cluster.wait_for_ready(3, READY_TIMEOUT);
    wait_for_exact_blob_files(&cluster, 3, &a_blobs, COLLECTED);

    for id in [1, 2, 3] {
        cluster.wait_for_image(id, &a, VISIBLE);
    }
    cluster.must_pull_everywhere(&[1, 2, 3], &[a]);
    for id in [1, 2, 3] {
        assert_eq!(
            blob_files(&cluster, id),
            a_blobs,
            "blob files of node {id} after pulls of A"
        );
        let gone = cluster
            .client(id)
            .get_manifest(repo, &b.manifest_digest)
            .unwrap_or_else(|e| panic!("manifest GET of B at node {id}: {e}"));
        assert_eq!(
            gone.status,
            404,
            "B's manifest at node {id}: {}",
            gone.text()
        );
    }
}

/// An image deleted and collected from every node, then pushed again with the same bytes at
/// another node: every node serves it whole, and replication puts its files back everywhere.
#[test]
fn an_image_pushed_again_after_collection_is_whole_everywhere() {
    let cluster = collecting_cluster();
    let image = Image::new(
        "gc/again",
        "v1",
        &[random_layer(4 * 1024), random_layer(2 * 1024)],
    );
    let first = push(&cluster, 1, &image);
    wait_replicated(&cluster, &[&first]);

    delete_manifest(&cluster, 1, &first);
    for id in [1, 2, 3] {
        wait_for_exact_blob_files(&cluster, id, &BTreeSet::new(), COLLECTED);
    }

    let again = push(&cluster, 2, &image);
    assert_eq!(again.manifest_digest, first.manifest_digest, "same bytes");
    for id in [1, 2, 3] {
        cluster.wait_for_image(id, &again, VISIBLE);
    }
    cluster.must_pull_everywhere(&[1, 2, 3], std::slice::from_ref(&again));
    must_wait_complete(&cluster, 2, &reference(&again), REPLICATED);
    for id in [1, 2, 3] {
        wait_for_exact_blob_files(&cluster, id, &image_blobs(&again), REPLICATED);
    }
    cluster.must_pull_everywhere(&[1, 2, 3], &[again]);
}
