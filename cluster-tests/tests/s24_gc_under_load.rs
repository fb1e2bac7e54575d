//! Scenario 24: garbage collection during concurrent pushes, deletes and pulls at every node
//! (docs/lifecycle.md). Three regions, one node each, so every blob is replicated to every
//! node; the leader runs a pass every second with a grace of a few seconds (longer than a
//! push takes here). Eight pushers, spread over the nodes, push images over a small pool of
//! layers (each push uploads them again) and delete every other image they pushed at another
//! node, so layers keep going unreferenced and being reused while passes run and replicas are
//! copied; a reader pulls a set of tagged images sharing those layers at every node all
//! along. No push fails, no pull fails, and once the churn is deleted and its grace has passed,
//! every node's blob directory holds exactly the blobs of the tagged images (a full walk).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster_tests::replication::{
    image_blobs, must_wait_complete, wait_for_blob_files, wait_for_exact_blob_files,
};
use cluster_tests::{ClusterBuilder, Image, ImageRef, UploadStyle, random_layer};

/// The grace period: pushes (uploads, then the manifest PUT) take far less here.
const GRACE_SECS: u64 = 4;
/// How long replication may take.
const REPLICATED: Duration = Duration::from_secs(60);
/// How long collection may take once the grace has passed (passes, Raft, every reaper).
const COLLECTED: Duration = Duration::from_secs(90);
/// Rounds of each pusher (each deletes every other image it pushes).
const ROUNDS: usize = 10;

#[test]
fn collection_during_concurrent_pushes_deletes_and_pulls_at_every_node() {
    let cluster = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .env("BERTH_GC__INTERVAL_SECS", "1")
        .env("BERTH_GC__GRACE_PERIOD_SECS", &GRACE_SECS.to_string())
        .build();
    let layers: Vec<Vec<u8>> = (0..10).map(|_| random_layer(2048)).collect();
    let stable: Vec<ImageRef> = (0..3)
        .map(|i| {
            let image = Image::new("gc/stable", &format!("s{i}"), &[layers[i].clone()]);
            cluster.client(1).must_push(&image)
        })
        .collect();
    for image in &stable {
        must_wait_complete(
            &cluster,
            1,
            &format!("{}:{}", image.repo, image.tag),
            REPLICATED,
        );
        for id in [1, 2, 3] {
            wait_for_blob_files(&cluster, id, image, REPLICATED);
        }
    }

    let done = AtomicBool::new(false);
    let (left, pulls) = std::thread::scope(|s| {
        let pushers: Vec<_> = (0..8usize)
            .map(|p| {
                let (cluster, layers) = (&cluster, &layers);
                s.spawn(move || {
                    let at = 1 + (p as u64 % 3);
                    let delete_at = 1 + ((p as u64 + 1) % 3);
                    let client = cluster.client(at);
                    let mut kept = Vec::new();
                    for round in 0..ROUNDS {
                        let image = Image::new(
                            &format!("gc/churn{p}"),
                            &format!("r{round}"),
                            &[
                                layers[(p + round) % layers.len()].clone(),
                                layers[(p * 3 + round + 5) % layers.len()].clone(),
                            ],
                        );
                        let pushed = client
                            .try_push_image(&image, UploadStyle::Monolithic)
                            .unwrap_or_else(|e| {
                                panic!("push {p}/{round} at node {at} failed: {e}")
                            });
                        if round % 2 == 1 {
                            delete(cluster.client(delete_at), &pushed);
                        } else {
                            kept.push(pushed);
                        }
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    kept
                })
            })
            .collect();
        let reader = s.spawn(|| {
            let mut pulls = 0u32;
            while !done.load(Ordering::Relaxed) && pulls < 10_000 {
                for id in [1, 2, 3] {
                    for image in &stable {
                        cluster.must_pull_image(id, &image.repo, &image.tag, image);
                        pulls += 1;
                    }
                }
            }
            pulls
        });
        let mut left = Vec::new();
        for p in pushers {
            left.extend(p.join().expect("a pusher failed"));
        }
        done.store(true, Ordering::Relaxed);
        (left, reader.join().expect("a pull failed"))
    });
    assert!(pulls > 0);

    // Delete the churn left; then only the tagged images are referenced.
    for (i, image) in left.iter().enumerate() {
        delete(cluster.client(1 + (i as u64 % 3)), image);
    }
    let want: BTreeSet<String> = stable.iter().flat_map(image_blobs).collect();
    for id in [1, 2, 3] {
        wait_for_exact_blob_files(&cluster, id, &want, COLLECTED);
    }
    cluster.must_pull_everywhere(&[1, 2, 3], &stable);
}

/// `DELETE /v2/<repo>/manifests/<digest>`; panics unless 202.
fn delete(client: cluster_tests::Client, image: &ImageRef) {
    let path = format!("/v2/{}/manifests/{}", image.repo, image.manifest_digest);
    let r = client
        .request("DELETE", &path, &[], None)
        .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
    assert_eq!(r.status, 202, "DELETE {path}: {}", r.text());
}
