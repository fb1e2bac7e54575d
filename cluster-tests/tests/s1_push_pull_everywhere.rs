//! Scenario 1 — push anywhere, pull everywhere (3 nodes).
//!
//! Shows consistency lines 1–3: a push acknowledged at one node is pullable, manifest and
//! every blob byte for byte, at every other node once it has applied the write (reads are
//! local and may lag, so each pull first waits for the tag to appear); blobs a node does not
//! hold are read through from a holder. And a push spread over three nodes: an upload
//! session opened at node 1, PATCHed at node 2 and finished at node 3 (sessions are owned by
//! node 1 and the others relay), other blobs uploaded at nodes 1 and 2, the manifest PUT at
//! node 3 — then pulled at node 2.

use std::time::Duration;

use cluster_tests::oci::{BlobRef, OCI_MANIFEST, sha256_digest};
use cluster_tests::{ClusterBuilder, Image, UploadStyle, random_layer};

const VISIBLE_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn push_at_one_node_pull_at_every_node() {
    let c = ClusterBuilder::new().nodes(3).build();
    let image = c.must_push_image(
        1,
        "s1/everywhere",
        "v1",
        &[random_layer(64 * 1024), random_layer(3000)],
    );
    // Read-your-writes at the node that answered.
    c.must_pull_image(1, "s1/everywhere", "v1", &image);
    for id in [2, 3] {
        c.wait_for_image(id, &image, VISIBLE_WITHIN);
        c.must_pull_image(id, "s1/everywhere", "v1", &image);
        assert_eq!(c.must_tags(id, "s1/everywhere"), vec!["v1".to_string()]);
    }
}

#[test]
fn one_push_spread_over_three_nodes() {
    let c = ClusterBuilder::new().nodes(3).build();
    let (n1, n2, n3) = (c.client(1), c.client(2), c.client(3));
    let repo = "s1/spread";
    let chunked = random_layer(200 * 1024);
    let post_put = random_layer(10 * 1024);
    let image = Image::new(repo, "v1", &[chunked.clone(), post_put.clone()]);

    // The config in one request at node 1.
    n1.push_blob(repo, &image.config, UploadStyle::Monolithic)
        .unwrap_or_else(|e| panic!("{e}"));
    // A layer in a session at node 2.
    n2.push_blob(repo, &post_put, UploadStyle::PostPut)
        .unwrap_or_else(|e| panic!("{e}"));
    // A layer in a session that node 1 owns: opened at node 1, both chunks PATCHed at node 2,
    // finished at node 3.
    let location = n1.open_upload(repo).unwrap_or_else(|e| panic!("{e}"));
    let mid = chunked.len() / 3;
    let location = n2
        .patch_upload(&location, 0, &chunked[..mid])
        .unwrap_or_else(|e| panic!("{e}"));
    let location = n2
        .patch_upload(&location, mid as u64, &chunked[mid..])
        .unwrap_or_else(|e| panic!("{e}"));
    n3.finish_upload(&location, &sha256_digest(&chunked), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    // Read-your-write where the client wrote: node 3 relayed the finish to node 1 and answered
    // only once it had caught up, so the blob is there at once, without waiting.
    let r = n3
        .get(&format!("/v2/{repo}/blobs/{}", sha256_digest(&chunked)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.status,
        200,
        "blob GET at node 3 right after finishing there: {}",
        r.text()
    );
    assert!(r.body == chunked, "node 3 served other bytes");

    // The manifest at node 3: it references blobs stored at nodes 1 and 2 (and the chunked one
    // wherever node 1 put it).
    let r = n3
        .put_manifest(repo, "v1", OCI_MANIFEST, &image.manifest)
        .expect("manifest PUT at node 3");
    assert_eq!(r.status, 201, "manifest PUT at node 3: {}", r.text());
    let expected = image.image_ref();
    assert_eq!(
        r.header("docker-content-digest"),
        Some(expected.manifest_digest.as_str())
    );
    assert_eq!(expected.layers[0], BlobRef::of(&chunked));

    c.must_pull_image(3, repo, "v1", &expected);
    c.wait_for_image(2, &expected, VISIBLE_WITHIN);
    c.must_pull_image(2, repo, "v1", &expected);
    c.wait_for_image(1, &expected, VISIBLE_WITHIN);
    c.must_pull_image(1, repo, "v1", &expected);
}

#[test]
fn concurrent_misses_at_one_node_fetch_the_blob_once() {
    let c = ClusterBuilder::new().nodes(3).build();
    let layer = random_layer(4 * 1024 * 1024);
    let image = c.must_push_image(1, "s1/once", "v1", std::slice::from_ref(&layer));
    // Wait through the manifest only: a blob HEAD would itself start the fetch.
    c.wait_for_image(2, &image, VISIBLE_WITHIN);
    let digest = sha256_digest(&layer);
    let path = format!("/v2/s1/once/blobs/{digest}");
    let client = c.client(2);
    let bodies: Vec<Result<(u16, Vec<u8>), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| client.get(&path).map(|r| (r.status, r.body))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("GET thread"))
            .collect()
    });
    for b in bodies {
        let (status, body) = b.unwrap_or_else(|e| panic!("GET at node 2: {e}"));
        assert_eq!(status, 200);
        assert!(
            body == layer,
            "node 2 served other bytes ({} bytes)",
            body.len()
        );
    }
    let fetches = c
        .node(2)
        .stderr()
        .lines()
        .filter(|l| l.contains("fetched a copy of a blob from a peer") && l.contains(&digest))
        .count();
    assert_eq!(fetches, 1, "node 2 fetched {digest} {fetches} times");
}
