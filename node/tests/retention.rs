//! Retention of untagged manifests, soft delete and the end of its recycle window as the
//! garbage collector's passes apply them, restores, and `Lifecycle::purge`, on one node.
//!
//! Retention and recycle windows last days: the tests decide "days later" through the clock
//! the rules read (`Lifecycle::apply_retention(now_ms, …)`, `Collector::run_at(now_ms, …)`),
//! never by waiting.

mod common;

use std::time::Duration;

use berth_node::lifecycle::purge::{PurgeFilter, PurgeRequest, Skipped, parse_ago};
use berth_node::lifecycle::{AttributesUpdate, Lifecycle};
use berth_node::meta::lifecycle::LockTarget;
use berth_node::types::time::now_ms;
use berth_node::types::{Digest, RepositoryName, Tag};
use common::*;
use http::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const DAY_MS: u64 = 24 * 3600 * 1000;

/// A node whose unreferenced blobs are collectable at once, with passes on demand only.
async fn node() -> TestNode {
    TestNode::start_with(|c| {
        c.gc.grace_period_secs = 0;
        c.gc.interval_secs = 0;
    })
    .await
}

fn lifecycle(t: &TestNode) -> Lifecycle {
    Lifecycle::new(t.node().registry.clone())
}

fn repo(name: &str) -> RepositoryName {
    RepositoryName::parse(name).unwrap()
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

/// What a pass did: manifests retention deleted and skipped, recycled manifests purged,
/// blobs collected.
#[derive(Debug, PartialEq, Eq)]
struct Did {
    deleted: u64,
    skipped: u64,
    purged: u64,
    blobs: u64,
}

/// A pass deciding as if it were `ahead_ms` later; asserts it ended without an error.
async fn pass_ahead(t: &TestNode, ahead_ms: u64, dry_run: bool) -> Did {
    let r = t
        .node()
        .gc
        .run_at(now_ms() + ahead_ms, dry_run)
        .await
        .unwrap();
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.dry_run, dry_run);
    Did {
        deleted: r.retention_deleted,
        skipped: r.retention_skipped,
        purged: r.recycled_purged,
        blobs: r.blobs,
    }
}

/// A [`Did`] from its counts in field order.
fn did(deleted: u64, skipped: u64, purged: u64, blobs: u64) -> Did {
    Did {
        deleted,
        skipped,
        purged,
        blobs,
    }
}

/// A [`node`] with soft delete on (a window of `window_days`) and a retention of one day for
/// every repository.
async fn soft_delete_node(window_days: u16) -> (TestNode, Lifecycle) {
    let t = node().await;
    let lc = lifecycle(&t);
    lc.set_soft_delete(Some(window_days)).await.unwrap();
    lc.set_retention("**", 1).await.unwrap();
    (t, lc)
}

/// Locks a manifest or a tag against deletes.
async fn lock(t: &TestNode, name: &str, target: LockTarget) {
    lifecycle(t)
        .update_attributes(
            &repo(name),
            target,
            AttributesUpdate {
                delete_enabled: Some(false),
                ..AttributesUpdate::default()
            },
        )
        .await
        .unwrap();
}

/// The status of `GET /v2/<name>/manifests/<reference>`.
async fn manifest_status(t: &TestNode, name: &str, reference: &str) -> StatusCode {
    t.get(&format!("/v2/{name}/manifests/{reference}"))
        .await
        .status
}

/// Asserts the status of `GET` of each manifest (`repository`, `reference`).
async fn expect_manifests(t: &TestNode, status: StatusCode, manifests: &[(&str, &str)]) {
    for (name, reference) in manifests {
        assert_eq!(
            manifest_status(t, name, reference).await,
            status,
            "{name}@{reference}"
        );
    }
}

/// Asserts the status of `GET` of each blob of `app`.
async fn expect_blobs(t: &TestNode, status: StatusCode, blobs: &[String]) {
    for b in blobs {
        t.get(&format!("/v2/app/blobs/{b}")).await.expect(status);
    }
}

/// Pushes an index over one manifest already in the repository, by `tag` or by digest.
async fn push_index(t: &TestNode, name: &str, tag: Option<&str>, child: &[u8]) -> String {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [desc(OCI_MANIFEST, child)],
    });
    let d = digest_of(&bytes_of(&index));
    t.push_manifest(name, tag.unwrap_or(&d), &index).await
}

/// Pushes an artifact whose subject is the manifest `subject` (by digest, untagged).
async fn push_referrer(t: &TestNode, name: &str, subject: &[u8], seed: &str) -> String {
    let payload = format!("signature {seed}").into_bytes();
    t.push_blob(name, &payload).await;
    t.push_blob(name, b"{}").await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature.v1",
        "config": desc(OCI_EMPTY, b"{}"),
        "layers": [desc("application/octet-stream", &payload)],
        "subject": desc(OCI_MANIFEST, subject),
    });
    let d = digest_of(&bytes_of(&m));
    t.push_manifest(name, &d, &m).await
}

/// Waits (bounded) until this node's reaper removed the files of `blobs`.
async fn await_files_gone(t: &TestNode, blobs: &[String]) {
    let store = t.node().registry.blob_store();
    for _ in 0..400 {
        if blobs.iter().all(|b| !store.holds(&digest(b))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let left: Vec<&String> = blobs.iter().filter(|b| store.holds(&digest(b))).collect();
    panic!("the reaper left the files of {left:?}");
}

/// Retention deletes the old untagged manifests of the repositories a policy covers, by the
/// most specific pattern; it keeps tagged manifests, an index's children, referrers, recent
/// manifests and locked ones (reported skipped), and the repositories no pattern matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_untagged_manifests_by_the_most_specific_pattern() {
    let t = node().await;
    let lc = lifecycle(&t);
    // team/app: one of each kind.
    let (_, tagged) = t.push_image("team/app", Some("v1"), "tagged").await;
    let (old, _) = t.push_image("team/app", None, "old").await;
    let (child, child_bytes) = t.push_image("team/app", None, "child").await;
    let index = push_index(&t, "team/app", Some("multi"), &child_bytes).await;
    let referrer = push_referrer(&t, "team/app", &tagged, "sig").await;
    let (locked, _) = t.push_image("team/app", None, "locked").await;
    lock(&t, "team/app", LockTarget::Manifest(digest(&locked))).await;
    // team/keep has a longer retention; team/frozen is locked for deletes; outside has none.
    let (keep, _) = t.push_image("team/keep", None, "keep").await;
    let (frozen, _) = t.push_image("team/frozen", None, "frozen").await;
    lock(&t, "team/frozen", LockTarget::Repository).await;
    let (outside, _) = t.push_image("outside", None, "outside").await;
    lc.set_retention("team/*", 1).await.unwrap();
    lc.set_retention("team/keep", 30).await.unwrap();

    // Within the day nothing is old enough.
    let r = lc
        .apply_retention(now_ms() + DAY_MS / 2, false)
        .await
        .unwrap();
    assert_eq!((r.deleted, r.skipped), (0, 0), "{r:?}");

    // Two days later, a dry run reports and changes nothing.
    let at = now_ms() + 2 * DAY_MS;
    let dry = lc.apply_retention(at, true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.first_deleted, vec![(repo("team/app"), digest(&old))]);
    expect_manifests(&t, StatusCode::OK, &[("team/app", &old)]).await;

    let r = lc.apply_retention(at, false).await.unwrap();
    assert_eq!((r.deleted, r.skipped), (1, 2), "{r:?}");
    assert_eq!(r.first_deleted, vec![(repo("team/app"), digest(&old))]);
    let mut skipped: Vec<String> = r.first_skipped.iter().map(|s| s.what.clone()).collect();
    skipped.sort();
    assert_eq!(
        skipped,
        vec![
            format!("team/app@{locked}"),
            format!("team/frozen@{frozen}")
        ]
    );
    expect_manifests(&t, StatusCode::NOT_FOUND, &[("team/app", &old)]).await;
    expect_manifests(
        &t,
        StatusCode::OK,
        &[
            ("team/app", "v1"),
            ("team/app", &child),
            ("team/app", &index),
            ("team/app", &referrer),
            ("team/app", &locked),
            ("team/keep", &keep),
            ("team/frozen", &frozen),
            ("outside", &outside),
        ],
    )
    .await;

    // `**` covers `outside` now, and team/keep's own pattern still overrides it.
    lc.set_retention("**", 1).await.unwrap();
    let r = lc.apply_retention(at, false).await.unwrap();
    assert_eq!(r.first_deleted, vec![(repo("outside"), digest(&outside))]);
    expect_manifests(&t, StatusCode::OK, &[("team/keep", &keep)]).await;
    // Its 30 days end too.
    let r = lc
        .apply_retention(now_ms() + 31 * DAY_MS, false)
        .await
        .unwrap();
    assert_eq!(r.first_deleted, vec![(repo("team/keep"), digest(&keep))]);
    drop(lc);
    t.stop().await;
}

/// Passes apply retention: a dry pass reports and changes nothing; a pass deletes the old
/// untagged manifest, and (grace 0) collects its blobs in the same pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_applies_retention_and_collects_what_it_freed() {
    let t = node().await;
    lifecycle(&t).set_retention("**", 3).await.unwrap();
    let (_, kept) = t.push_image("app", Some("v1"), "kept").await;
    let (old, old_bytes) = t.push_image("app", None, "old").await;

    assert_eq!(pass_ahead(&t, 0, false).await, did(0, 0, 0, 0));
    assert_eq!(pass_ahead(&t, 4 * DAY_MS, true).await, did(1, 0, 0, 0));
    expect_manifests(&t, StatusCode::OK, &[("app", &old)]).await;

    assert_eq!(pass_ahead(&t, 4 * DAY_MS, false).await, did(1, 0, 0, 2));
    expect_manifests(&t, StatusCode::NOT_FOUND, &[("app", &old)]).await;
    expect_blobs(&t, StatusCode::NOT_FOUND, &image_blobs(&old_bytes)).await;
    expect_blobs(&t, StatusCode::OK, &image_blobs(&kept)).await;
    t.stop().await;
}

/// With soft delete on, retention's deletes go to the recycle bin and their blobs stay
/// through passes; the pass after the window ends purges them and collects their blobs, and
/// the reaper removes the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_deleted_by_retention_then_purged_when_the_window_ends() {
    let (t, lc) = soft_delete_node(7).await;
    let stop = CancellationToken::new();
    let reaper = tokio::spawn(t.node().reaper.clone().run(stop.clone()));
    t.push_image("app", Some("v1"), "kept").await;
    let (old, old_bytes) = t.push_image("app", None, "old").await;
    let blobs = image_blobs(&old_bytes);

    assert_eq!(pass_ahead(&t, 2 * DAY_MS, false).await, did(1, 0, 0, 0));
    expect_manifests(&t, StatusCode::NOT_FOUND, &[("app", &old)]).await;
    let bin = lc.deleted(None).await.unwrap();
    assert_eq!(bin.len(), 1);
    assert_eq!(
        (&bin[0].repo, &bin[0].digest),
        (&repo("app"), &digest(&old))
    );
    let expires = bin[0].deleted.expires_ms;

    // Through the window the blobs stay.
    for ahead in [0, 3 * DAY_MS, 6 * DAY_MS] {
        assert_eq!(pass_ahead(&t, ahead, false).await, did(0, 0, 0, 0));
    }
    expect_blobs(&t, StatusCode::OK, &blobs).await;
    // A dry pass past the window reports the purge and changes nothing.
    let past = expires.saturating_sub(now_ms()) + 60_000;
    assert_eq!(pass_ahead(&t, past, true).await, did(0, 0, 1, 0));
    assert_eq!(lc.deleted(None).await.unwrap().len(), 1);

    assert_eq!(pass_ahead(&t, past, false).await, did(0, 0, 1, 2));
    assert!(lc.deleted(None).await.unwrap().is_empty());
    expect_blobs(&t, StatusCode::NOT_FOUND, &blobs).await;
    await_files_gone(&t, &blobs).await;
    t.get("/v2/app/manifests/v1").await.expect(StatusCode::OK);
    stop.cancel();
    reaper.await.unwrap();
    drop(lc);
    t.stop().await;
}

/// A restore within the window brings the manifest back with its tags, whether an API
/// DELETE or retention put it in the bin; the pass after the window then purges nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_within_the_window_brings_manifest_and_tags_back() {
    let (t, lc) = soft_delete_node(2).await;
    let (tagged, tagged_bytes) = t.push_image("app", Some("v1"), "tagged").await;
    t.put_manifest("app", "latest", OCI_MANIFEST, &tagged_bytes)
        .await
        .expect(StatusCode::CREATED);
    let (old, _) = t.push_image("app", None, "old").await;
    t.delete(&format!("/v2/app/manifests/{tagged}"))
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(t.tags("app").await, Some(vec![]));
    assert_eq!(
        pass_ahead(&t, DAY_MS + 60_000, false).await,
        did(1, 0, 0, 0)
    );
    assert_eq!(lc.deleted(None).await.unwrap().len(), 2);

    lc.restore(&repo("app"), &digest(&tagged), None)
        .await
        .unwrap();
    lc.restore(&repo("app"), &digest(&old), None).await.unwrap();
    assert_eq!(
        t.tags("app").await,
        Some(vec!["latest".to_string(), "v1".to_string()])
    );
    for reference in ["v1", "latest", tagged.as_str(), old.as_str()] {
        let r = t.get(&format!("/v2/app/manifests/{reference}")).await;
        r.expect(StatusCode::OK);
        expect_blobs(&t, StatusCode::OK, &image_blobs(&r.body)).await;
    }
    assert!(lc.deleted(None).await.unwrap().is_empty());
    // Past the window: nothing in the bin to purge. (Without its policy: retention would
    // take the restored untagged manifest again, its push time is unchanged.)
    lc.clear_retention("**").await.unwrap();
    assert_eq!(pass_ahead(&t, 3 * DAY_MS, false).await, did(0, 0, 0, 0));
    expect_manifests(&t, StatusCode::OK, &[("app", "v1"), ("app", &old)]).await;
    drop(lc);
    t.stop().await;
}

/// Pushes `tag` of a fresh image, after the wall clock moved on from the previous push (so
/// tag times differ).
async fn push_tag(t: &TestNode, name: &str, tag: &str) -> String {
    let before = now_ms();
    for _ in 0..100 {
        if now_ms() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t.push_image(name, Some(tag), &format!("{name}:{tag}"))
        .await
        .0
}

fn purge_request(filters: &[&str], ago: &str, keep: usize, dry_run: bool) -> PurgeRequest {
    PurgeRequest {
        filters: filters
            .iter()
            .map(|f| PurgeFilter::parse(f).unwrap())
            .collect(),
        ago: parse_ago(ago).unwrap(),
        untagged: true,
        keep,
        dry_run,
    }
}

/// `Lifecycle::purge` end to end: filters over two repositories and tag regexes, `ago`,
/// `keep` (the newest stay), `untagged` (not referrers), a dry run that changes nothing, and a
/// locked tag skipped and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_matching_tags_and_untagged_manifests() {
    let t = node().await;
    let lc = lifecycle(&t);
    let a1 = push_tag(&t, "team/a", "v1").await;
    let a2 = push_tag(&t, "team/a", "v2").await;
    let a3 = push_tag(&t, "team/a", "v3").await;
    push_tag(&t, "team/a", "dev-1").await;
    let (loose, _) = t.push_image("team/a", None, "loose").await;
    let a3_bytes = t.get("/v2/team/a/manifests/v3").await.body;
    let referrer = push_referrer(&t, "team/a", &a3_bytes, "sig").await;
    let b1 = push_tag(&t, "team/b", "v1").await;
    push_tag(&t, "team/b", "v2").await;
    lock(&t, "team/b", LockTarget::Tag(Tag::parse("v1").unwrap())).await;
    push_tag(&t, "other", "v1").await;
    let (other_loose, _) = t.push_image("other", None, "other-loose").await;
    // The tag times are in push order.
    let times: Vec<u64> = t
        .node()
        .registry
        .meta()
        .tag_records(&repo("team/a"))
        .await
        .unwrap()
        .into_iter()
        .filter(|(tag, _)| tag.as_str().starts_with('v'))
        .map(|(_, r)| r.updated_ms)
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");

    let filters = ["^team/:^v"];
    let repos = ["team/a", "team/b", "other"];
    let manifests = [("team/a", loose.as_str()), ("other", other_loose.as_str())];
    let before = t.snapshot(&repos, &manifests).await;

    // Everything is younger than a day.
    let r = lc
        .purge(purge_request(&filters, "1d", 0, false))
        .await
        .unwrap();
    assert!(r.tags.is_empty() && r.manifests.is_empty(), "{r:?}");
    assert_eq!(t.snapshot(&repos, &manifests).await, before);

    let dry = lc
        .purge(purge_request(&filters, "0", 1, true))
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(t.snapshot(&repos, &manifests).await, before);

    let r = lc
        .purge(purge_request(&filters, "0", 1, false))
        .await
        .unwrap();
    let mut tags: Vec<String> = r
        .tags
        .iter()
        .map(|(repo, tag, d)| format!("{repo}:{tag}@{d}"))
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        vec![format!("team/a:v1@{a1}"), format!("team/a:v2@{a2}")]
    );
    let mut deleted: Vec<String> = r.manifests.iter().map(|(_, d)| d.to_string()).collect();
    deleted.sort();
    let mut want = vec![a1.clone(), a2.clone(), loose.clone()];
    want.sort();
    assert_eq!(deleted, want);
    assert_eq!(
        r.skipped,
        vec![Skipped {
            what: "team/b:v1".into(),
            why: "the tag is locked".into(),
        }]
    );
    // The dry run reported the same.
    assert_eq!(
        (&dry.tags, &dry.manifests, &dry.skipped),
        (&r.tags, &r.manifests, &r.skipped)
    );

    assert_eq!(
        t.tags("team/a").await,
        Some(vec!["dev-1".to_string(), "v3".to_string()])
    );
    assert_eq!(
        t.tags("team/b").await,
        Some(vec!["v1".to_string(), "v2".to_string()])
    );
    assert_eq!(t.tags("other").await, Some(vec!["v1".to_string()]));
    expect_manifests(
        &t,
        StatusCode::NOT_FOUND,
        &[("team/a", &a1), ("team/a", &a2), ("team/a", &loose)],
    )
    .await;
    expect_manifests(
        &t,
        StatusCode::OK,
        &[
            ("team/a", &a3),
            ("team/a", &referrer),
            ("team/b", &b1),
            ("other", &other_loose),
        ],
    )
    .await;
    drop(lc);
    t.stop().await;
}

/// Retention and window ends walk every page of repositories: a repository named after
/// more than a page of others is covered too. With a window of one day stamped now, the pass
/// two days ahead deletes the manifest, purges it and collects its blobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_walks_every_page_of_repositories() {
    let (t, lc) = soft_delete_node(1).await;
    // More repositories than a page of the walk (256) before the last one.
    for i in 0..300 {
        t.push_blob(&format!("filler/r{i:03}"), b"filler").await;
    }
    let (old, _) = t.push_image("zz/last", None, "last").await;
    // Blobs: the image's config and layer, and the unreferenced filler.
    assert_eq!(pass_ahead(&t, 2 * DAY_MS, false).await, did(1, 0, 1, 3));
    expect_manifests(&t, StatusCode::NOT_FOUND, &[("zz/last", &old)]).await;
    assert!(lc.deleted(None).await.unwrap().is_empty());
    drop(lc);
    t.stop().await;
}
