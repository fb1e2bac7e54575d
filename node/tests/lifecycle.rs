//! Locks, namespace quotas and namespace rates at the registry API (docs/lifecycle.md, "Locks,
//! quotas and rate limits at the API"): every refusal is 403 `DENIED` (429 `TOOMANYREQUESTS`
//! for a rate) naming the lock or the limit, and changes nothing.

mod common;

use std::time::{Duration, Instant};

use berth_node::lifecycle::{AttributesUpdate, Lifecycle};
use berth_node::meta::lifecycle::{LockTarget, NamespaceLimits};
use berth_node::types::{Digest, RepositoryName, Tag};
use common::*;
use http::{Method, StatusCode};

fn lifecycle(t: &TestNode) -> Lifecycle {
    Lifecycle::new(t.node().registry.clone())
}

fn repo(name: &str) -> RepositoryName {
    RepositoryName::parse(name).unwrap()
}

fn tag(t: &str) -> LockTarget {
    LockTarget::Tag(Tag::parse(t).unwrap())
}

fn manifest(d: &str) -> LockTarget {
    LockTarget::Manifest(Digest::parse(d).unwrap())
}

const NO_WRITE: AttributesUpdate = AttributesUpdate {
    write_enabled: Some(false),
    delete_enabled: None,
    read_enabled: None,
    list_enabled: None,
};
const NO_DELETE: AttributesUpdate = AttributesUpdate {
    write_enabled: None,
    delete_enabled: Some(false),
    read_enabled: None,
    list_enabled: None,
};
const NO_READ: AttributesUpdate = AttributesUpdate {
    write_enabled: None,
    delete_enabled: None,
    read_enabled: Some(false),
    list_enabled: None,
};
const NO_LIST: AttributesUpdate = AttributesUpdate {
    write_enabled: None,
    delete_enabled: None,
    read_enabled: None,
    list_enabled: Some(false),
};
const ALL_ON: AttributesUpdate = AttributesUpdate {
    write_enabled: Some(true),
    delete_enabled: Some(true),
    read_enabled: Some(true),
    list_enabled: Some(true),
};

async fn set(t: &TestNode, name: &str, target: LockTarget, update: AttributesUpdate) {
    lifecycle(t)
        .update_attributes(&repo(name), target, update)
        .await
        .unwrap();
}

/// Asserts a 403 `DENIED` whose message contains `needle`.
#[track_caller]
fn assert_denied(r: &Resp, needle: &str) {
    assert_error(r, StatusCode::FORBIDDEN, "DENIED");
    let message = r.error_message();
    assert!(
        message.contains(needle),
        "{}: message {message:?} does not name {needle:?}",
        r.what
    );
}

/// A config and a layer of `layer_len` bytes, unique to `seed`.
fn image_parts(seed: &str, layer_len: usize) -> (Vec<u8>, Vec<u8>) {
    let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
    let mut layer = format!("layer of {seed}:").into_bytes();
    layer.resize(layer_len.max(layer.len()), b'x');
    (config, layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_and_delete_locks_refuse_and_change_nothing() {
    let t = TestNode::start().await;
    let (d1, b1) = t.push_image("team/app", Some("v1"), "one").await;
    let (d2, _) = t.push_image("team/app", Some("v2"), "two").await;
    let layer1 = digest_of(b"layer of one");
    // A blob of another repository, to mount.
    let other = t.push_blob("team/other", b"mountable").await;
    let ms = [
        ("team/app", "v1"),
        ("team/app", "v2"),
        ("team/app", d1.as_str()),
        ("team/app", d2.as_str()),
    ];
    let before = t.snapshot(&["team/app", "team/other"], &ms).await;

    // A locked tag cannot move, nor be deleted, nor can its manifest.
    set(&t, "team/app", tag("v1"), NO_WRITE).await;
    let (config3, layer3) = image_parts("three", 10);
    t.push_blob("team/app", &config3).await;
    t.push_blob("team/app", &layer3).await;
    let m3 = bytes_of(&oci_manifest(&config3, &[&layer3]));
    assert_denied(
        &t.put_manifest("team/app", "v1", OCI_MANIFEST, &m3).await,
        "tag team/app:v1 is locked: it cannot be overwritten",
    );
    // Putting the same manifest again does not move it.
    t.put_manifest("team/app", "v1", OCI_MANIFEST, &b1)
        .await
        .expect(StatusCode::CREATED);
    assert_denied(
        &t.delete("/v2/team/app/manifests/v1").await,
        "tag team/app:v1 is locked",
    );
    assert_denied(
        &t.delete(&format!("/v2/team/app/manifests/{d1}")).await,
        "has the locked tag v1",
    );
    // A manifest locked for deletes.
    set(&t, "team/app", manifest(&d2), NO_DELETE).await;
    assert_denied(
        &t.delete(&format!("/v2/team/app/manifests/{d2}")).await,
        &format!("manifest team/app@{d2} is locked"),
    );
    // A repository locked for deletes: blob and manifest deletes.
    set(&t, "team/app", LockTarget::Repository, NO_DELETE).await;
    assert_denied(
        &t.delete(&format!("/v2/team/app/blobs/{layer1}")).await,
        "repository team/app is locked: deletes are disabled",
    );
    assert_denied(
        &t.delete("/v2/team/app/manifests/v2").await,
        "repository team/app is locked: deletes are disabled",
    );
    assert_eq!(t.snapshot(&["team/app", "team/other"], &ms).await, before);
    t.head(&format!("/v2/team/app/blobs/{layer1}"))
        .await
        .expect(StatusCode::OK);

    // A repository locked for writes: an upload finishing, a session, a monolithic upload, a
    // chunk, a mount into it and a manifest PUT are all refused.
    let open = t.start_upload("team/app").await;
    t.patch(&open, None, b"late bytes")
        .await
        .expect(StatusCode::ACCEPTED);
    let chunked = t.start_upload("team/app").await;
    set(&t, "team/app", LockTarget::Repository, NO_WRITE).await;
    let writes = "repository team/app is locked: writes are disabled";
    // An empty final PUT passes the pre-checks: the blob is refused when it is recorded.
    let finish = format!("{open}?digest={}", digest_of(b"late bytes"));
    assert_denied(
        &t.send(request(
            Method::PUT,
            &finish,
            &[("content-length", "0")],
            Vec::new(),
        ))
        .await,
        writes,
    );
    assert_denied(&t.patch(&chunked, None, b"more").await, writes);
    assert_denied(
        &t.post("/v2/team/app/blobs/uploads/", Vec::new()).await,
        writes,
    );
    let fresh = b"fresh blob".to_vec();
    assert_denied(
        &t.post(
            &format!("/v2/team/app/blobs/uploads/?digest={}", digest_of(&fresh)),
            fresh.clone(),
        )
        .await,
        writes,
    );
    assert_denied(
        &t.post(
            &format!("/v2/team/app/blobs/uploads/?mount={other}&from=team/other"),
            Vec::new(),
        )
        .await,
        writes,
    );
    assert_denied(
        &t.put_manifest("team/app", "v3", OCI_MANIFEST, &m3).await,
        writes,
    );
    for d in [digest_of(b"late bytes"), digest_of(&fresh), other.clone()] {
        t.head(&format!("/v2/team/app/blobs/{d}"))
            .await
            .expect(StatusCode::NOT_FOUND);
    }
    assert_eq!(t.snapshot(&["team/app", "team/other"], &ms).await, before);

    // Unlocked, everything works again.
    set(&t, "team/app", LockTarget::Repository, ALL_ON).await;
    set(&t, "team/app", tag("v1"), ALL_ON).await;
    set(&t, "team/app", manifest(&d2), ALL_ON).await;
    t.put_manifest("team/app", "v1", OCI_MANIFEST, &m3)
        .await
        .expect(StatusCode::CREATED);
    t.delete(&format!("/v2/team/app/manifests/{d2}"))
        .await
        .expect(StatusCode::ACCEPTED);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_locks_deny_pulls_but_not_lists() {
    let t = TestNode::start().await;
    let (d1, _) = t.push_image("r/a", Some("v1"), "one").await;
    let (d2, b2) = t.push_image("r/a", Some("v2"), "two").await;
    let layer = digest_of(b"layer of two");
    // A referrer of v2, for the referrers list.
    let artifact = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/x-note",
        "config": { "mediaType": OCI_EMPTY, "digest": digest_of(b"{}"), "size": 2 },
        "layers": [],
        "subject": desc(OCI_MANIFEST, &b2),
    });
    t.push_blob("r/a", b"{}").await;
    let referrer_subject = d2.clone();
    let put = t
        .put_manifest("r/a", "note", OCI_MANIFEST, &bytes_of(&artifact))
        .await;
    put.expect(StatusCode::CREATED);
    let ok = |uri: String| {
        let c = t.client.clone();
        async move { c.get(&uri).await.expect(StatusCode::OK).body.clone() }
    };

    // A tag locked for reads: by that tag only.
    set(&t, "r/a", tag("v1"), NO_READ).await;
    assert_denied(
        &t.get("/v2/r/a/manifests/v1").await,
        "tag r/a:v1 is locked: reads are disabled",
    );
    t.head("/v2/r/a/manifests/v1")
        .await
        .expect(StatusCode::FORBIDDEN);
    ok(format!("/v2/r/a/manifests/{d1}")).await;
    set(&t, "r/a", tag("v1"), ALL_ON).await;

    // A manifest locked for reads: by tag and by digest.
    set(&t, "r/a", manifest(&d1), NO_READ).await;
    let by_manifest = format!("manifest r/a@{d1} is locked: reads are disabled");
    assert_denied(&t.get("/v2/r/a/manifests/v1").await, &by_manifest);
    assert_denied(
        &t.get(&format!("/v2/r/a/manifests/{d1}")).await,
        &by_manifest,
    );
    ok("/v2/r/a/manifests/v2".to_string()).await;
    set(&t, "r/a", manifest(&d1), ALL_ON).await;

    // A repository locked for reads: manifests, blobs, referrers; still listed.
    set(&t, "r/a", LockTarget::Repository, NO_READ).await;
    let reads = "repository r/a is locked: reads are disabled";
    assert_denied(&t.get("/v2/r/a/manifests/v2").await, reads);
    assert_denied(&t.get(&format!("/v2/r/a/manifests/{d2}")).await, reads);
    assert_denied(&t.get(&format!("/v2/r/a/blobs/{layer}")).await, reads);
    t.head(&format!("/v2/r/a/blobs/{layer}"))
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_denied(
        &t.get(&format!("/v2/r/a/referrers/{referrer_subject}"))
            .await,
        reads,
    );
    assert_eq!(
        t.tags("r/a").await.unwrap(),
        ["note", "v1", "v2"].map(String::from)
    );
    assert_eq!(t.catalog().await, ["r/a"]);
    set(&t, "r/a", LockTarget::Repository, ALL_ON).await;
    ok(format!("/v2/r/a/blobs/{layer}")).await;
    let referrers: serde_json::Value =
        serde_json::from_slice(&ok(format!("/v2/r/a/referrers/{referrer_subject}")).await).unwrap();
    assert_eq!(referrers["manifests"].as_array().unwrap().len(), 1);
    t.stop().await;
}

/// Follows `Link` headers from `first`, returning every page's tags (at most 20 pages).
async fn pages(t: &TestNode, first: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut uri = Some(first.to_string());
    while let Some(u) = uri.take() {
        assert!(out.len() < 20, "too many pages from {first}");
        let r = t.get(&u).await;
        r.expect(StatusCode::OK);
        let v = r.json();
        let key = if v.get("tags").is_some() {
            "tags"
        } else {
            "repositories"
        };
        out.push(strings(&v[key]));
        uri = r.header("link").map(|l| {
            l.strip_prefix('<')
                .and_then(|l| l.split_once('>'))
                .unwrap()
                .0
                .to_string()
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_locks_hide_tags_and_repositories_and_paging_stays_correct() {
    let t = TestNode::start().await;
    let (d1, b1) = t.push_image("l/app", Some("a"), "one").await;
    let (d2, b2) = t.push_image("l/app", Some("d"), "two").await;
    let m1: serde_json::Value = serde_json::from_slice(&b1).unwrap();
    let m2: serde_json::Value = serde_json::from_slice(&b2).unwrap();
    for tg in ["b", "c", "f"] {
        t.push_manifest("l/app", tg, &m1).await;
    }
    t.push_manifest("l/app", "e", &m2).await;
    // Hidden: tag b (its own lock), tags d and e (their manifest's lock).
    set(&t, "l/app", tag("b"), NO_LIST).await;
    set(&t, "l/app", manifest(&d2), NO_LIST).await;
    let visible = ["a", "c", "f"].map(String::from);
    assert_eq!(t.tags("l/app").await.unwrap(), visible);
    assert_eq!(
        pages(&t, "/v2/l/app/tags/list?n=1").await,
        [vec!["a"], vec!["c"], vec!["f"]]
    );
    assert_eq!(
        pages(&t, "/v2/l/app/tags/list?n=2").await,
        [vec!["a", "c"], vec!["f"]]
    );
    assert_eq!(
        pages(&t, "/v2/l/app/tags/list?n=2&last=b").await,
        [vec!["c", "f"]]
    );
    let r = t.get("/v2/l/app/tags/list?n=3").await;
    assert_eq!(r.header("link"), None, "nothing visible follows f");
    // Hidden is not locked: the tags still pull.
    t.get("/v2/l/app/manifests/b").await.expect(StatusCode::OK);
    t.get("/v2/l/app/manifests/e").await.expect(StatusCode::OK);
    t.get(&format!("/v2/l/app/manifests/{d1}"))
        .await
        .expect(StatusCode::OK);

    // The catalog leaves out list-locked repositories (a read lock does not hide one).
    for name in ["l/one", "l/three", "l/two"] {
        t.push_blob(name, name.as_bytes()).await;
    }
    set(&t, "l/three", LockTarget::Repository, NO_LIST).await;
    set(&t, "l/one", LockTarget::Repository, NO_READ).await;
    let catalog = ["l/app", "l/one", "l/two"].map(String::from);
    assert_eq!(t.catalog().await, catalog);
    assert_eq!(
        pages(&t, "/v2/_catalog?n=2").await,
        [vec!["l/app", "l/one"], vec!["l/two"]]
    );
    assert_eq!(
        pages(&t, "/v2/_catalog?n=1&last=l/one").await,
        [vec!["l/two"]]
    );
    // Unlocked, everything lists again.
    set(&t, "l/three", LockTarget::Repository, ALL_ON).await;
    set(&t, "l/app", tag("b"), ALL_ON).await;
    set(&t, "l/app", manifest(&d2), ALL_ON).await;
    assert_eq!(t.catalog().await.len(), 4);
    assert_eq!(t.tags("l/app").await.unwrap().len(), 6);
    t.stop().await;
}

/// The namespace's usage in bytes.
async fn usage(t: &TestNode, ns: &str) -> u64 {
    lifecycle(t)
        .namespace(ns)
        .await
        .unwrap()
        .map(|(_, u)| u.bytes)
        .unwrap_or(0)
}

async fn set_limits(t: &TestNode, ns: &str, limits: NamespaceLimits) {
    lifecycle(t).set_namespace(ns, limits).await.unwrap();
}

fn quota(bytes: u64) -> NamespaceLimits {
    NamespaceLimits {
        quota_bytes: Some(bytes),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_allow_exactly_the_quota_and_refuse_one_byte_over() {
    let t = TestNode::start().await;
    let (config, layer) = image_parts("one", 100);
    let size = (config.len() + layer.len()) as u64;
    let m = oci_manifest(&config, &[&layer]);

    // One byte short: the manifest PUT is refused, nothing changes.
    set_limits(&t, "short", quota(size - 1)).await;
    t.push_blob("short/app", &config).await;
    t.push_blob("short/app", &layer).await;
    let before = t.snapshot(&["short/app"], &[("short/app", "v1")]).await;
    assert_denied(
        &t.put_manifest("short/app", "v1", OCI_MANIFEST, &bytes_of(&m))
            .await,
        &format!(
            "namespace short uses 0 of its {}-byte storage quota",
            size - 1
        ),
    );
    assert_eq!(
        t.snapshot(&["short/app"], &[("short/app", "v1")]).await,
        before
    );
    assert_eq!(usage(&t, "short").await, 0);

    // Exactly the quota: stored; then the namespace is full.
    set_limits(&t, "exact", quota(size)).await;
    let session = t.start_upload("exact/app").await;
    t.push_blob("exact/app", &config).await;
    t.push_blob("exact/app", &layer).await;
    t.push_manifest("exact/app", "v1", &m).await;
    assert_eq!(usage(&t, "exact").await, size);
    let ms = [("exact/app", "v1")];
    let before = t.snapshot(&["exact/app"], &ms).await;
    let full = format!("namespace exact uses {size} of its {size}-byte storage quota");
    assert_denied(
        &t.post("/v2/exact/app/blobs/uploads/", Vec::new()).await,
        &full,
    );
    assert_denied(
        &t.post(
            &format!("/v2/exact/app/blobs/uploads/?digest={}", digest_of(b"z")),
            b"z".to_vec(),
        )
        .await,
        &full,
    );
    assert_denied(&t.patch(&session, None, b"chunk").await, &full);
    // A new manifest over the same blobs adds nothing: allowed.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [desc(OCI_MANIFEST, &bytes_of(&m))],
    });
    assert_eq!(t.snapshot(&["exact/app"], &ms).await, before);
    t.push_manifest("exact/app", "all", &index).await;
    assert_eq!(usage(&t, "exact").await, size);

    // A whole blob of known length is refused when it would not fit, unless the namespace
    // holds it already.
    set_limits(&t, "room", quota(size + 5)).await;
    t.push_blob("room/app", &config).await;
    t.push_blob("room/app", &layer).await;
    t.push_manifest("room/app", "v1", &m).await;
    t.push_blob("room/other", &layer).await;
    let six = b"123456".to_vec();
    assert_denied(
        &t.post(
            &format!("/v2/room/app/blobs/uploads/?digest={}", digest_of(&six)),
            six.clone(),
        )
        .await,
        "this blob adds 6",
    );
    t.push_blob("room/app", b"12345").await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_limit_refuses_new_repositories() {
    let t = TestNode::start().await;
    set_limits(
        &t,
        "m",
        NamespaceLimits {
            max_repositories: Some(1),
            ..Default::default()
        },
    )
    .await;
    let (d, _) = t.push_image("m/one", Some("v1"), "one").await;
    let layer = digest_of(b"layer of one");
    let before = t.snapshot(&["m/one"], &[("m/one", "v1")]).await;
    let limit = "namespace m has 1 repositories, its limit";
    assert_denied(&t.post("/v2/m/two/blobs/uploads/", Vec::new()).await, limit);
    assert_denied(
        &t.post(
            &format!("/v2/m/two/blobs/uploads/?digest={}", digest_of(b"b")),
            b"b".to_vec(),
        )
        .await,
        limit,
    );
    // A mount is refused when it applies: DENIED, not "upload it instead".
    assert_denied(
        &t.post(
            &format!("/v2/m/two/blobs/uploads/?mount={layer}&from=m/one"),
            Vec::new(),
        )
        .await,
        limit,
    );
    assert_eq!(t.snapshot(&["m/one"], &[("m/one", "v1")]).await, before);
    assert_eq!(t.tags("m/two").await, None);
    // The existing repository takes pushes.
    t.start_upload("m/one").await;
    t.push_blob("m/one", b"more").await;
    t.get(&format!("/v2/m/one/manifests/{d}"))
        .await
        .expect(StatusCode::OK);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_holds_under_concurrent_pushes() {
    let t = TestNode::start().await;
    const PUSHERS: usize = 8;
    const LAYER: usize = 1000;
    let sizes: Vec<u64> = (0..PUSHERS)
        .map(|i| {
            let (c, l) = image_parts(&format!("p{i}"), LAYER);
            (c.len() + l.len()) as u64
        })
        .collect();
    // Room for three images, not four.
    let limit = sizes.iter().max().unwrap() * 3 + 10;
    assert!(sizes.iter().min().unwrap() * 4 > limit);
    set_limits(&t, "c", quota(limit)).await;

    let mut tasks = Vec::new();
    for i in 0..PUSHERS {
        let c = t.client.clone();
        tasks.push(tokio::spawn(async move {
            let (config, layer) = image_parts(&format!("p{i}"), LAYER);
            let repo = format!("c/app{i}");
            for blob in [&config, &layer] {
                let r = c
                    .post(
                        &format!("/v2/{repo}/blobs/uploads/?digest={}", digest_of(blob)),
                        blob.clone(),
                    )
                    .await;
                if r.status != StatusCode::CREATED {
                    assert_denied(&r, "storage quota");
                    return false;
                }
            }
            let m = bytes_of(&oci_manifest(&config, &[&layer]));
            let r = c.put_manifest(&repo, "v1", OCI_MANIFEST, &m).await;
            if r.status != StatusCode::CREATED {
                assert_denied(&r, "storage quota");
                return false;
            }
            true
        }));
    }
    let mut stored = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if task.await.unwrap() {
            stored.push(i);
        }
    }
    assert!(
        (1..=3).contains(&stored.len()),
        "stored {stored:?} with room for 3"
    );
    let used = usage(&t, "c").await;
    assert!(used <= limit, "usage {used} past the quota {limit}");
    assert_eq!(used, stored.iter().map(|i| sizes[*i]).sum::<u64>());
    for i in 0..PUSHERS {
        let (config, layer) = image_parts(&format!("p{i}"), LAYER);
        let r = t.get(&format!("/v2/c/app{i}/manifests/v1")).await;
        if stored.contains(&i) {
            r.expect(StatusCode::OK);
            assert_eq!(r.body, bytes_of(&oci_manifest(&config, &[&layer])));
            for blob in [&config, &layer] {
                let b = t
                    .get(&format!("/v2/c/app{i}/blobs/{}", digest_of(blob)))
                    .await;
                assert_eq!(&b.expect(StatusCode::OK).body[..], &blob[..]);
            }
        } else {
            assert_error(&r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
        }
    }
    t.stop().await;
}

/// Sends requests built by `make` until `want` answered 429 or `max` were sent (or 30 s
/// passed); returns the 429 answers and how many were sent.
async fn until_limited(
    t: &TestNode,
    make: impl Fn() -> http::Request<axum::body::Body>,
    want: usize,
    max: usize,
) -> (Vec<Resp>, usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut limited = Vec::new();
    let mut sent = 0;
    while limited.len() < want && sent < max && Instant::now() < deadline {
        let r = t.send(make()).await;
        sent += 1;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited.push(r);
        } else {
            assert!(r.status.is_success(), "{}: {}", r.what, r.status);
        }
    }
    (limited, sent)
}

#[track_caller]
fn assert_retry_after(r: &Resp) {
    let secs: u64 = r
        .header("retry-after")
        .expect("a 429 says when to retry")
        .parse()
        .unwrap();
    assert!(secs >= 1, "{}: Retry-After {secs}", r.what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_namespace() {
    let t = TestNode::start().await;
    set_limits(
        &t,
        "rl",
        NamespaceLimits {
            pulls_per_sec: Some(2),
            pushes_per_sec: Some(2),
            ..Default::default()
        },
    )
    .await;
    // Pushes at 2/s: the image's pushes themselves are paced by retrying.
    let (config, layer) = image_parts("rl", 10);
    for blob in [&config, &layer] {
        let uri = format!("/v2/rl/app/blobs/uploads/?digest={}", digest_of(blob));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = t.post(&uri, blob.clone()).await;
            if r.status == StatusCode::CREATED {
                break;
            }
            assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
            assert!(Instant::now() < deadline, "never admitted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (limited, _) = until_limited(
        &t,
        || request(Method::POST, "/v2/rl/app/blobs/uploads/", &[], Vec::new()),
        1,
        200,
    )
    .await;
    assert_eq!(limited.len(), 1, "upload POSTs at 2/s are limited");
    assert_error(
        &limited[0],
        StatusCode::TOO_MANY_REQUESTS,
        "TOOMANYREQUESTS",
    );
    assert_retry_after(&limited[0]);

    // Pulls at 2/s: HEADs in a tight loop are limited.
    let layer_uri = format!("/v2/rl/app/blobs/{}", digest_of(&layer));
    let (limited, sent) = until_limited(
        &t,
        || request(Method::HEAD, &layer_uri, &[], Vec::new()),
        5,
        200,
    )
    .await;
    assert_eq!(limited.len(), 5, "{sent} HEADs at 2/s");
    for r in &limited {
        assert_retry_after(r);
    }
    let (limited, _) = until_limited(
        &t,
        || request(Method::GET, &layer_uri, &[], Vec::new()),
        1,
        200,
    )
    .await;
    assert_error(
        &limited[0],
        StatusCode::TOO_MANY_REQUESTS,
        "TOOMANYREQUESTS",
    );
    assert_retry_after(&limited[0]);

    // A namespace without limits is never limited.
    t.push_image("free/app", Some("v1"), "free").await;
    for _ in 0..50 {
        t.head("/v2/free/app/manifests/v1")
            .await
            .expect(StatusCode::OK);
    }
    t.stop().await;
}
