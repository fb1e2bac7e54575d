//! Garbage collection on one node: what is collected and when (the grace rule, touches by
//! HEAD and re-upload), what is never collected (referenced blobs, uploads in flight), the
//! Raft ordering against manifest PUTs, and collection during concurrent pushes, deletes and
//! pulls, checked afterwards against a full walk of the blob directory.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_node::gc::GcReport;
use berth_node::meta::{Command, CommandV1, WriteResult};
use berth_node::registry::{CopyFor, RegistryError};
use berth_node::types::time::now_ms;
use berth_node::types::{Digest, RepositoryName};
use common::*;
use http::StatusCode;
use tokio_util::sync::CancellationToken;

/// A node whose blobs are collectable as soon as they are unreferenced, with its reaper
/// running (as `berth serve` runs it).
async fn node_with_grace(grace_secs: u64) -> (TestNode, Reaping) {
    let t = TestNode::start_with(|c| {
        c.gc.grace_period_secs = grace_secs;
        c.gc.interval_secs = 0;
    })
    .await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(t.node().reaper.clone().run(stop.clone()));
    (t, Reaping { stop, task })
}

/// The node's reaper, running.
struct Reaping {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Reaping {
    /// Stops the reaper, then the node.
    async fn stop(self, t: TestNode) {
        self.stop.cancel();
        self.task.await.unwrap();
        t.stop().await;
    }
}

async fn gc(t: &TestNode) -> GcReport {
    let r = t.node().gc.run(false).await.unwrap();
    assert_eq!(r.error, None, "{r:?}");
    r
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

/// Every blob file on the node's disk (a full walk of the blob directory).
async fn files_on_disk(t: &TestNode) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in 0..=255u8 {
        for f in t
            .node()
            .registry
            .blob_store()
            .list_prefix(prefix)
            .await
            .unwrap()
        {
            out.insert(f.digest.to_string());
        }
    }
    out
}

/// Waits (bounded) until the node's blob files are exactly `want`; panics with the difference.
async fn await_files(t: &TestNode, want: &BTreeSet<String>) {
    for _ in 0..200 {
        if &files_on_disk(t).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let have = files_on_disk(t).await;
    let meta = t.node().registry.meta();
    let mut extra = Vec::new();
    for d in have.difference(want) {
        let record = meta.blob(&digest(d)).await.unwrap().is_some();
        extra.push(format!(
            "{d} (record {record}, refs {:?})",
            meta.blob_refs(&digest(d)).unwrap()
        ));
    }
    panic!(
        "blob files differ: extra {extra:?}, missing {:?}",
        want.difference(&have).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_blobs_are_collected_and_referenced_ones_kept() {
    let (t, stop) = node_with_grace(0).await;
    let (_, kept) = t.push_image("app", Some("v1"), "kept").await;
    let (gone_digest, gone) = t.push_image("app", Some("v2"), "gone").await;
    let loose = t.push_blob("app", b"never referenced").await;
    // The first pass on a fresh cluster builds the counts, then collects.
    let r = gc(&t).await;
    assert!(r.counted);
    assert_eq!((r.blobs, r.bytes), (1, b"never referenced".len() as u64));
    assert_eq!(r.per_node.get(&1), Some(&(1, r.bytes)));
    t.head(&format!("/v2/app/blobs/{loose}"))
        .await
        .expect(StatusCode::NOT_FOUND);
    // Deleting an image leaves its blobs unreferenced: the next pass takes them.
    t.delete(&format!("/v2/app/manifests/{gone_digest}"))
        .await
        .expect(StatusCode::ACCEPTED);
    let r = gc(&t).await;
    assert!(!r.counted);
    assert_eq!(r.blobs, 2);
    for d in image_blobs(&gone) {
        t.get(&format!("/v2/app/blobs/{d}"))
            .await
            .expect(StatusCode::NOT_FOUND);
    }
    // The tagged image pulls whole, and the disk holds exactly its blobs.
    t.get("/v2/app/manifests/v1").await.expect(StatusCode::OK);
    for d in image_blobs(&kept) {
        t.get(&format!("/v2/app/blobs/{d}"))
            .await
            .expect(StatusCode::OK);
    }
    await_files(&t, &image_blobs(&kept).into_iter().collect()).await;
    // Nothing left to collect.
    assert_eq!(gc(&t).await.blobs, 0);
    stop.stop(t).await;
}

/// The Raft ordering: a manifest PUT after its blob was collected answers
/// MANIFEST_BLOB_UNKNOWN and stores nothing; the blob uploaded again is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_naming_a_collected_blob_is_refused_until_it_is_uploaded_again() {
    let (t, stop) = node_with_grace(0).await;
    let config = b"{\"c\":1}";
    let layer = b"layer";
    t.push_blob("r", config).await;
    t.push_blob("r", layer).await;
    assert_eq!(gc(&t).await.blobs, 2);
    let m = oci_manifest(config, &[layer]);
    let r = t.put_manifest("r", "v1", OCI_MANIFEST, &bytes_of(&m)).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(t.tags("r").await, Some(vec![]));
    t.push_blob("r", config).await;
    t.push_blob("r", layer).await;
    t.push_manifest("r", "v1", &m).await;
    assert_eq!(gc(&t).await.blobs, 0);
    t.get("/v2/r/manifests/v1").await.expect(StatusCode::OK);
    stop.stop(t).await;
}

/// An upload session in progress is not a blob yet: a pass leaves it alone, and it completes
/// and is referenced afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_flight_survives_a_pass() {
    let (t, stop) = node_with_grace(0).await;
    let config = b"{\"c\":2}";
    t.push_blob("r", config).await;
    let layer = vec![7u8; 100_000];
    let location = t.start_upload("r").await;
    t.patch(&location, Some("0-49999"), &layer[..50_000])
        .await
        .expect(StatusCode::ACCEPTED);
    gc(&t).await;
    let status = t.get(&location).await;
    status.expect(StatusCode::NO_CONTENT);
    let layer_digest = digest_of(&layer);
    t.finish(&location, &layer_digest, &layer[50_000..])
        .await
        .expect(StatusCode::CREATED);
    // The config was collected meanwhile: pushed again, as a client retrying would.
    t.push_blob("r", config).await;
    t.push_manifest("r", "v1", &oci_manifest(config, &[&layer]))
        .await;
    assert_eq!(gc(&t).await.blobs, 0);
    t.get(&format!("/v2/r/blobs/{layer_digest}"))
        .await
        .expect(StatusCode::OK);
    stop.stop(t).await;
}

/// Proposes a command through the node's Raft, as the registry would.
async fn propose(t: &TestNode, cmd: CommandV1) -> WriteResult {
    t.node()
        .registry
        .cluster()
        .write(Command::V1(cmd))
        .await
        .unwrap()
}

/// Builds the reference counts as the first pass does, but with the blobs found unreferenced
/// last touched `ago` before now: a test needs no wait for their touch slack to pass.
async fn count_references_touched_ago(t: &TestNode, ago: Duration) {
    let at_ms = now_ms() - ago.as_millis() as u64;
    propose(t, CommandV1::CountReferences { at_ms }).await;
    assert!(t.node().registry.meta().refs_counted().unwrap());
}

/// The index of the last entry of the node's Raft log (a single node: it leads).
async fn log_index(t: &TestNode) -> u64 {
    t.node().registry.cluster().read_index().await.unwrap()
}

/// A HEAD (a client told "exists") and a mount restart an unreferenced blob's grace; a HEAD
/// within the touch slack and a HEAD of a referenced blob write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_or_a_mount_restarts_the_grace_of_an_unreferenced_blob() {
    // Grace 600 s: a touch within a minute of the last one is skipped (`gc::touch_slack`).
    let (t, stop) = node_with_grace(600).await;
    let meta = t.node().registry.meta().clone();
    let (_, image) = t.push_image("r", Some("v1"), "s").await;
    let loose = t.push_blob("r", b"loose").await;
    count_references_touched_ago(&t, Duration::from_secs(120)).await;
    let first = meta.blob_refs(&digest(&loose)).unwrap().unwrap();
    assert_eq!(first.refs, 0);
    t.head(&format!("/v2/r/blobs/{loose}"))
        .await
        .expect(StatusCode::OK);
    let touched = meta.blob_refs(&digest(&loose)).unwrap().unwrap();
    assert!(
        touched.touched_ms >= first.touched_ms + 120_000,
        "{first:?} then {touched:?}"
    );
    // Within the slack (a minute) a second HEAD writes nothing.
    let before = log_index(&t).await;
    t.head(&format!("/v2/r/blobs/{loose}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(meta.blob_refs(&digest(&loose)).unwrap().unwrap(), touched);
    assert_eq!(log_index(&t).await, before);
    // A mount always touches.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    t.post(
        &format!("/v2/other/blobs/uploads/?mount={loose}&from=r"),
        Vec::new(),
    )
    .await
    .expect(StatusCode::CREATED);
    let mounted = meta.blob_refs(&digest(&loose)).unwrap().unwrap();
    assert!(mounted.touched_ms >= touched.touched_ms + 1000);
    // A referenced blob: a HEAD changes nothing.
    let layer = &image_blobs(&image)[1];
    let before = meta.blob_refs(&digest(layer)).unwrap().unwrap();
    assert_eq!(before.refs, 1);
    t.head(&format!("/v2/r/blobs/{layer}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(meta.blob_refs(&digest(layer)).unwrap().unwrap(), before);
    // Nothing is past its grace.
    assert_eq!(gc(&t).await.blobs, 0);
    drop(meta);
    stop.stop(t).await;
}

/// Concurrent HEADs of one unreferenced blob write one touch between them: the others wait
/// for it and find the blob freshly touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_heads_of_an_unreferenced_blob_write_one_touch() {
    let (t, stop) = node_with_grace(600).await;
    let loose = t.push_blob("r", b"headed at once").await;
    count_references_touched_ago(&t, Duration::from_secs(120)).await;
    let meta = t.node().registry.meta().clone();
    let first = meta.blob_refs(&digest(&loose)).unwrap().unwrap();
    let before = log_index(&t).await;
    let heads: Vec<_> = (0..16)
        .map(|_| {
            let c = t.client.clone();
            let uri = format!("/v2/r/blobs/{loose}");
            tokio::spawn(async move {
                c.head(&uri).await.expect(StatusCode::OK);
            })
        })
        .collect();
    for h in heads {
        h.await.expect("a HEAD failed");
    }
    assert_eq!(log_index(&t).await, before + 1, "one touch, one log entry");
    let touched = meta.blob_refs(&digest(&loose)).unwrap().unwrap();
    assert_eq!(touched.refs, 0);
    assert!(touched.touched_ms >= first.touched_ms + 120_000);
    drop(meta);
    stop.stop(t).await;
}

/// A copy on disk whose record lacks this node (a crash between its rename and its record)
/// is recorded under the digest's lock, as every path that records a file it placed: a
/// reaper holding the lock, which found no reason to keep the file, removes it before the
/// record can name this node, and the copy is then fetched again rather than recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_on_disk_is_recorded_under_the_digest_lock() {
    let mut data_dir = None;
    let t = TestNode::start_with(|c| data_dir = Some(c.data_dir.clone())).await;
    let registry = t.node().registry.clone();
    let place = |content: &[u8]| {
        // As a copy that was moved into place, then lost its `BlobCopied` in a crash.
        let d = digest(&digest_of(content));
        let hex = d.hex();
        let dir = data_dir
            .as_ref()
            .unwrap()
            .join("blobs/sha256")
            .join(&hex[..2]);
        std::fs::write(dir.join(hex), content).unwrap();
        assert!(registry.blob_store().holds(&d));
        d
    };
    // The cluster knows the blobs from another holder (node 2, not a member: it provides
    // nothing).
    let record_elsewhere = |d: Digest, size: usize| CommandV1::BlobStored {
        repo: RepositoryName::parse("r").unwrap(),
        digest: d,
        size: size as u64,
        node: 2,
        at_ms: now_ms(),
    };
    let holders = |d: &Digest| {
        let meta = t.node().registry.meta().clone();
        let d = d.clone();
        async move { Vec::from_iter(meta.blob(&d).await.unwrap().unwrap().holders) }
    };

    // No reaper: the copy is recorded.
    let kept = b"kept copy";
    let d = place(kept);
    propose(&t, record_elsewhere(d.clone(), kept.len())).await;
    registry
        .ensure_local_copy(&d, CopyFor::Placement)
        .await
        .unwrap();
    assert_eq!(holders(&d).await, vec![1, 2]);

    // The reaper holds the digest's lock and removes the file: the record never names this
    // node.
    let reaped = b"reaped copy";
    let d = place(reaped);
    propose(&t, record_elsewhere(d.clone(), reaped.len())).await;
    let reaping = registry.blob_store().lock_digest(&d).await;
    let copy = {
        let (registry, d) = (registry.clone(), d.clone());
        tokio::spawn(async move { registry.ensure_local_copy(&d, CopyFor::Placement).await })
    };
    // Time for a copy that does not wait for the lock to write its record.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(holders(&d).await, vec![2]);
    registry.blob_store().delete(&d).await.unwrap();
    drop(reaping);
    let res = tokio::time::timeout(Duration::from_secs(30), copy)
        .await
        .expect("the copy ended")
        .unwrap();
    assert!(
        matches!(res, Err(RegistryError::Unavailable(_))),
        "fetched from node 2: {res:?}"
    );
    assert_eq!(holders(&d).await, vec![2]);
    assert!(!registry.blob_store().holds(&d));
    drop(registry);
    t.stop().await;
}

/// A dry pass reports what a pass would free and frees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_pass_changes_nothing() {
    let (t, stop) = node_with_grace(0).await;
    // Before the counts exist a dry pass cannot tell: it says so.
    let r = t.node().gc.run(true).await.unwrap();
    assert!(r.error.unwrap().contains("not built yet"));
    gc(&t).await;
    let loose = t.push_blob("r", b"loose").await;
    let r = t.node().gc.run(true).await.unwrap();
    assert!(r.dry_run);
    assert_eq!((r.blobs, r.bytes), (1, 5));
    t.head(&format!("/v2/r/blobs/{loose}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(gc(&t).await.blobs, 1);
    stop.stop(t).await;
}

/// Eight pushers reuse the layers of images that others delete, while passes run back to
/// back and readers pull a set of tagged images that share those layers. No push fails, no
/// pull of a tagged image answers 404, and once the churn ends and the grace has passed the
/// blob directory holds exactly the blobs the remaining tagged images reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_during_concurrent_pushes_deletes_and_pulls() {
    // The grace covers a push's HEADs, uploads and manifest PUT (milliseconds here, much
    // longer on a loaded machine); the churn lasts more than twice as long (12 rounds with
    // 600 ms pauses), so blobs it leaves unreferenced are collected while others reuse them.
    const GRACE: u64 = 3;
    let (t, stop) = node_with_grace(GRACE).await;
    gc(&t).await;
    let layers: Vec<Vec<u8>> = (0..12)
        .map(|i| format!("shared layer {i}").into_bytes())
        .collect();
    // Stable, tagged images over the first four layers: pulled all along.
    let mut stable = Vec::new();
    for (i, layer) in layers.iter().take(4).enumerate() {
        let config = format!("{{\"stable\":{i}}}").into_bytes();
        t.push_blob("stable", &config).await;
        t.push_blob("stable", layer).await;
        let m = oci_manifest(&config, &[layer]);
        t.push_manifest("stable", &format!("s{i}"), &m).await;
        stable.push(m);
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..8usize {
        let c = t.client.clone();
        let layers = layers.clone();
        tasks.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            for round in 0..12usize {
                let repo = format!("churn/{p}");
                let config = format!("{{\"p\":{p},\"r\":{round}}}").into_bytes();
                let a = &layers[(p + round) % layers.len()];
                let b = &layers[(p * 3 + round + 5) % layers.len()];
                // As a client does: HEAD each blob, upload only what is missing.
                for blob in [&config, a, b] {
                    let d = digest_of(blob);
                    let head = c.head(&format!("/v2/{repo}/blobs/{d}")).await;
                    if head.status == StatusCode::NOT_FOUND {
                        c.push_blob(&repo, blob).await;
                    } else {
                        head.expect(StatusCode::OK);
                    }
                }
                let m = oci_manifest(&config, &[a, b]);
                let digest = c.push_manifest(&repo, "latest", &m).await;
                c.get(&format!("/v2/{repo}/manifests/{digest}"))
                    .await
                    .expect(StatusCode::OK);
                if round % 2 == 1 {
                    c.delete(&format!("/v2/{repo}/manifests/{digest}"))
                        .await
                        .expect(StatusCode::ACCEPTED);
                } else {
                    kept.push((repo, digest));
                }
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            kept
        }));
    }
    let reader = {
        let c = t.client.clone();
        let stable = stable.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut pulls = 0u32;
            while !done.load(Ordering::Relaxed) && pulls < 100_000 {
                for (i, m) in stable.iter().enumerate() {
                    c.get(&format!("/v2/stable/manifests/s{i}"))
                        .await
                        .expect(StatusCode::OK);
                    for d in image_blobs(&bytes_of(m)) {
                        c.get(&format!("/v2/stable/blobs/{d}"))
                            .await
                            .expect(StatusCode::OK);
                    }
                }
                pulls += 1;
            }
            pulls
        })
    };
    let collector = {
        let gc = t.node().gc.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let (mut passes, mut freed) = (0u32, 0u64);
            while !done.load(Ordering::Relaxed) && passes < 10_000 {
                let r = gc.run(false).await.unwrap();
                assert_eq!(r.error, None);
                passes += 1;
                freed += r.blobs;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            freed
        })
    };
    let mut kept = Vec::new();
    for task in tasks {
        kept.extend(task.await.expect("a pusher failed"));
    }
    done.store(true, Ordering::Relaxed);
    assert!(reader.await.expect("a pull failed") > 0);
    assert!(
        collector.await.expect("a pass failed") > 0,
        "no blob was collected during the churn"
    );

    // The churn images left (untagged manifests are kept until deleted or retention takes
    // them) are deleted now: only the stable images remain referenced.
    for (repo, digest) in kept {
        t.delete(&format!("/v2/{repo}/manifests/{digest}"))
            .await
            .expect(StatusCode::ACCEPTED);
    }
    tokio::time::sleep(Duration::from_secs(GRACE) + Duration::from_millis(500)).await;
    gc(&t).await;
    let want: BTreeSet<String> = stable
        .iter()
        .flat_map(|m| image_blobs(&bytes_of(m)))
        .collect();
    await_files(&t, &want).await;
    let problems = t.node().registry.meta().verify_references().await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    stop.stop(t).await;
}

/// An upload session nobody writes to for `uploads.expiry_secs` is cancelled by the expiry
/// worker and its staging file removed; the client's next request finds it unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_expires_and_its_staging_file_goes() {
    let mut data_dir = None;
    let t = TestNode::start_with(|c| {
        c.uploads.expiry_secs = 1;
        data_dir = Some(c.data_dir.clone());
    })
    .await;
    let uploads = data_dir.unwrap().join("uploads");
    let staging = || std::fs::read_dir(&uploads).unwrap().count();
    let location = t.start_upload("r").await;
    t.patch(&location, Some("0-99999"), &vec![1u8; 100_000])
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(staging(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(t.node().registry.expire_idle_uploads().await, 1);
    assert_eq!(staging(), 0);
    assert_error(
        &t.get(&location).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    t.stop().await;
}
