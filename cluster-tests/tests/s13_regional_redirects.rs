//! Scenario 13 — regional endpoints: docker, skopeo and containerd follow berth's redirects of
//! blob GETs (2 nodes, regions r1 and r2).
//!
//! - `routing.client_regions`: every node maps 127.0.0.1/32 (the clients here) to r2, so a
//!   blob GET at node 1 (r1) is answered 307 to node 2 (r2), which reads the blob through.
//! - `routing.redirect_missing`: a blob GET at node 2, which lacks the blob pushed at node 1,
//!   is answered 307 to node 1 instead of being read through (node 2's `/metrics` count no
//!   read-through; a copy something else placed on node 2 may be served from there).
//!
//! Each client pulls the image through the node that redirects, byte for byte: docker (the
//! image id is the config's digest), skopeo (a `dir:` copy, every file hashed) and `ctr` (the
//! image's digest; it unpacks the layer). The image is pushed with the harness's client: one
//! uncompressed tar layer made by `tar`, and a config whose diff id names it. A client that is
//! not available is skipped with a printed reason, unless `BERTH_REQUIRE_CLIENT_TOOLS` names
//! it (see `cluster_tests::clients`).

use std::path::Path;
use std::process::Command;

use cluster_tests::clients::{self, Ctr, DockerImages};
use cluster_tests::oci::sha256_digest;
use cluster_tests::{Cluster, ClusterBuilder, Image, ImageRef, random_layer};

/// A layer: an uncompressed tar of a directory with a random file.
fn layer_tar(tmp: &Path) -> Vec<u8> {
    let root = tmp.join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), b"hello from berth, redirected\n").unwrap();
    std::fs::write(root.join("random.bin"), random_layer(256 * 1024)).unwrap();
    let tar = tmp.join("layer.tar");
    clients::must(Command::new("tar").args([
        "-C",
        root.to_str().unwrap(),
        "-cf",
        tar.to_str().unwrap(),
        ".",
    ]));
    std::fs::read(&tar).unwrap()
}

/// `host:port` of a node's registry endpoint.
fn host_port(c: &Cluster, id: u64) -> String {
    c.node(id)
        .url()
        .strip_prefix("http://")
        .expect("an http URL")
        .to_string()
}

/// Checks, with a client that follows no redirect, that every blob GET at node `at` answers
/// 307 to node `to` with the same path. With `held_may_serve`, a node that holds the blob on
/// its disk (a copy another part of the cluster, such as a replicator, put there) may serve it
/// instead — but never by reading it through.
fn must_redirect(c: &Cluster, at: u64, to: u64, image: &ImageRef, held_may_serve: bool) {
    for blob in image.blobs() {
        let path = format!("/v2/{}/blobs/{}", image.repo, blob.digest);
        let r = c.client(at).get(&path).unwrap_or_else(|e| panic!("{e}"));
        if held_may_serve && r.status == 200 && holds(c, at, &blob.digest) {
            eprintln!("node {at} already holds {} and serves it", blob.digest);
            continue;
        }
        assert_eq!(r.status, 307, "blob GET at node {at}: {}", r.text());
        let want = format!("{}{path}", c.node(to).url());
        assert_eq!(r.header("location"), Some(want.as_str()), "at node {at}");
        // Manifests are never redirected.
        let m = c
            .client(at)
            .get_manifest(&image.repo, &image.tag)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.status, 200, "manifest GET at node {at}: {}", m.text());
    }
    assert_no_read_through(c, at);
}

/// Whether node `id`'s data directory holds the blob.
fn holds(c: &Cluster, id: u64, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap();
    c.node(id)
        .data_dir()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .is_file()
}

/// Node `id` fetched no blob from a peer to serve a client (`/metrics`).
fn assert_no_read_through(c: &Cluster, id: u64) {
    let r = c
        .client(id)
        .get("/metrics")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(
        !text.contains("berth_read_through_fetches_total{"),
        "node {id} read a blob through:\n{text}"
    );
}

/// Pulls `image` through node `at` with every available client and checks the bytes.
fn pull_with_every_client(test: &str, c: &Cluster, at: u64, image: &ImageRef, tmp: &Path) {
    let reference = format!("{}/{}:{}", host_port(c, at), image.repo, image.tag);

    if clients::ready(test, "docker", clients::docker_available()) {
        let _cleanup = DockerImages(vec![reference.clone()]);
        clients::must(Command::new("docker").args(["pull", &reference]));
        assert_eq!(
            clients::docker_image_id(&reference).as_deref(),
            Some(image.config.digest.as_str()),
            "docker's image id is not the pushed config's digest"
        );
    }

    if clients::ready(test, "skopeo", clients::skopeo_available()) {
        let dir = tmp.join(format!("skopeo-{at}"));
        clients::must(Command::new("skopeo").args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("dir:{}", dir.display()),
        ]));
        let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
        assert!(manifest == image.manifest, "skopeo's manifest differs");
        for blob in image.blobs() {
            let hex = blob.digest.strip_prefix("sha256:").unwrap();
            let bytes = std::fs::read(dir.join(hex))
                .unwrap_or_else(|e| panic!("skopeo copied no blob {}: {e}", blob.digest));
            assert_eq!(sha256_digest(&bytes), blob.digest, "skopeo's copy differs");
        }
    }

    if clients::ready(test, "containerd", clients::containerd_socket().map(|_| ())) {
        let socket = clients::containerd_socket().expect("probed");
        let ctr = Ctr::new(socket, format!("berth-s13-{}-{at}", std::process::id()));
        clients::must(&mut ctr.command(&["images", "pull", "--plain-http", &reference]));
        assert_eq!(ctr.image_digest(&reference), image.manifest_digest);
    }
}

fn push(c: &Cluster, at: u64, repo: &str, tmp: &Path) -> ImageRef {
    let image = Image::new(repo, "v1", &[layer_tar(tmp)]);
    c.client(at).must_push(&image)
}

#[test]
fn clients_follow_a_redirect_to_a_node_of_their_region() {
    let test = "clients_follow_a_redirect_to_a_node_of_their_region";
    let tmp = tempfile::tempdir().unwrap();
    let c = ClusterBuilder::new()
        .nodes(2)
        .regions(&["r1", "r2"])
        .env("BERTH_ROUTING__CLIENT_REGIONS", "127.0.0.1/32=r2")
        .build();
    let image = push(&c, 1, "s13/region", tmp.path());
    c.wait_for_image(2, &image, cluster_tests::CONVERGE_TIMEOUT);
    must_redirect(&c, 1, 2, &image, false);
    // Node 2 serves its region's clients itself (reading the blobs through from node 1).
    c.must_pull_image(2, &image.repo, &image.tag, &image);
    pull_with_every_client(test, &c, 1, &image, tmp.path());
}

#[test]
fn clients_follow_a_redirect_to_the_nearest_holder() {
    let test = "clients_follow_a_redirect_to_the_nearest_holder";
    let tmp = tempfile::tempdir().unwrap();
    let c = ClusterBuilder::new()
        .nodes(2)
        .regions(&["r1", "r2"])
        .env("BERTH_ROUTING__REDIRECT_MISSING", "true")
        .build();
    let image = push(&c, 1, "s13/missing", tmp.path());
    c.wait_for_image(2, &image, cluster_tests::CONVERGE_TIMEOUT);
    must_redirect(&c, 2, 1, &image, true);
    pull_with_every_client(test, &c, 2, &image, tmp.path());
    // Node 2 never read the blobs through: it sent every client on to node 1.
    assert_no_read_through(&c, 2);
}
