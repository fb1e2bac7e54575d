//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (monolithic, session, mount) and
//! `GET`/`PATCH`/`PUT`/`DELETE /v2/<name>/blobs/uploads/<id>`.

mod common;

use axum::body::Body;
use common::*;
use http::{Method, Request, StatusCode};

/// The session id at the end of an upload location.
fn id_of(location: &str) -> &str {
    location.rsplit('/').next().unwrap()
}

/// Asserts a session response: status, `Location`, `Range` and `Docker-Upload-UUID`.
#[track_caller]
fn assert_session(r: &Resp, status: StatusCode, repo: &str, location: &str, range: &str) {
    r.expect(status);
    assert_eq!(r.header("location"), Some(location), "{}", r.what);
    assert!(
        location.starts_with(&format!("/v2/{repo}/blobs/uploads/")),
        "{location}"
    );
    assert_eq!(r.header("range"), Some(range), "{}", r.what);
    assert_eq!(
        r.header(UPLOAD_UUID_HEADER),
        Some(id_of(location)),
        "{}",
        r.what
    );
}

/// Asserts a 201 for a blob now in `repo`, and that it reads back as `content`.
async fn assert_stored(t: &Client, r: &Resp, repo: &str, content: &[u8]) {
    let d = digest_of(content);
    r.expect(StatusCode::CREATED);
    let location = format!("/v2/{repo}/blobs/{d}");
    assert_eq!(r.header("location"), Some(location.as_str()), "{}", r.what);
    assert_eq!(r.header(DIGEST_HEADER), Some(d.as_str()), "{}", r.what);
    let got = t.get(&location).await;
    got.expect(StatusCode::OK);
    assert_eq!(&got.body[..], content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolithic_post_with_digest() {
    let t = TestNode::start().await;
    let content = b"monolithic content";
    let d = digest_of(content);
    let r = t
        .post(&format!("/v2/a/b/blobs/uploads/?digest={d}"), &content[..])
        .await;
    assert_stored(&t, &r, "a/b", content).await;
    // The repository now exists (empty tag list).
    assert_eq!(t.tags("a/b").await, Some(vec![]));
    // The same content again is fine.
    let r = t
        .post(&format!("/v2/a/b/blobs/uploads/?digest={d}"), &content[..])
        .await;
    assert_stored(&t, &r, "a/b", content).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolithic_post_digest_mismatch_stores_nothing() {
    let t = TestNode::start().await;
    let before = t.snapshot(&["a"], &[]).await;
    let claimed = digest_of(b"what the client says");
    let r = t
        .post(
            &format!("/v2/a/blobs/uploads/?digest={claimed}"),
            &b"what the client sends"[..],
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    for d in [claimed, digest_of(b"what the client sends")] {
        t.head(&format!("/v2/a/blobs/{d}"))
            .await
            .expect(StatusCode::NOT_FOUND);
    }
    assert_eq!(t.snapshot(&["a"], &[]).await, before);
    // A malformed digest parameter.
    let r = t
        .post("/v2/a/blobs/uploads/?digest=sha256:xyz", &b"x"[..])
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    assert_eq!(t.snapshot(&["a"], &[]).await, before);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_opens_a_session() {
    let t = TestNode::start().await;
    // Both the canonical trailing-slash form and the bare form open a session.
    for uri in ["/v2/a/b/blobs/uploads/", "/v2/a/b/blobs/uploads"] {
        let r = t
            .send(request(
                Method::POST,
                uri,
                &[("content-length", "0")],
                Vec::new(),
            ))
            .await;
        let location = r.header("location").unwrap().to_string();
        assert_session(&r, StatusCode::ACCEPTED, "a/b", &location, "0-0");
        let id = id_of(&location);
        assert!(!id.is_empty());
        // The session is live.
        let s = t.get(&location).await;
        assert_session(&s, StatusCode::NO_CONTENT, "a/b", &location, "0-0");
    }
    // Two sessions never share an id.
    let l1 = t.start_upload("a/b").await;
    let l2 = t.start_upload("a/b").await;
    assert_ne!(l1, l2);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_streamed_then_put() {
    let t = TestNode::start().await;
    let location = t.start_upload("r").await;
    // A streamed chunk: several frames, no Content-Length, no Content-Range.
    let req = Request::builder()
        .method(Method::PATCH)
        .uri(&location)
        .header("content-type", "application/octet-stream")
        .body(streamed(vec![b"hello ".to_vec(), b"streamed ".to_vec()]))
        .unwrap();
    let r = t.send(req).await;
    assert_session(&r, StatusCode::ACCEPTED, "r", &location, "0-14");
    // Another streamed chunk appends.
    let r = t.patch(&location, None, b"world").await;
    assert_session(&r, StatusCode::ACCEPTED, "r", &location, "0-19");
    let s = t.get(&location).await;
    assert_session(&s, StatusCode::NO_CONTENT, "r", &location, "0-19");
    let content = b"hello streamed world";
    let r = t.finish(&location, &digest_of(content), b"").await;
    assert_stored(&t, &r, "r", content).await;
    // The session is over.
    assert_error(
        &t.get(&location).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_chunked_with_content_range() {
    let t = TestNode::start().await;
    let content = b"0123456789abcdefghijXYZ";
    let location = t.start_upload("r").await;
    let r = t.patch(&location, Some("0-9"), &content[0..10]).await;
    assert_session(&r, StatusCode::ACCEPTED, "r", &location, "0-9");
    let r = t.patch(&location, Some("10-19"), &content[10..20]).await;
    assert_session(&r, StatusCode::ACCEPTED, "r", &location, "0-19");
    // Status agrees.
    let s = t.get(&location).await;
    assert_session(&s, StatusCode::NO_CONTENT, "r", &location, "0-19");
    // The final chunk in the PUT, with its Content-Range.
    let r = t
        .send(request(
            Method::PUT,
            &format!("{location}?digest={}", digest_of(content)),
            &[("content-range", "20-22")],
            &content[20..],
        ))
        .await;
    assert_stored(&t, &r, "r", content).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_chunk_is_416_and_appends_nothing() {
    let t = TestNode::start().await;
    let content = b"abcdefghijklmno";
    let location = t.start_upload("r").await;
    // A first chunk that does not start at 0.
    let r = t.patch(&location, Some("5-9"), &content[5..10]).await;
    assert_error(&r, StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID");
    assert_eq!(r.header("range"), Some("0-0"));
    t.patch(&location, Some("0-4"), &content[0..5])
        .await
        .expect(StatusCode::ACCEPTED);
    // A gap, then an overlap.
    for (cr, chunk) in [
        ("10-14", &content[10..15]),
        ("0-4", &content[0..5]),
        ("3-7", &content[3..8]),
    ] {
        let r = t.patch(&location, Some(cr), chunk).await;
        r.expect(StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(
            r.header("range"),
            Some("0-4"),
            "{cr}: range of what was received"
        );
        let s = t.get(&location).await;
        assert_session(&s, StatusCode::NO_CONTENT, "r", &location, "0-4");
    }
    // An out-of-order final chunk on PUT is refused the same way, and keeps the session.
    let r = t
        .send(request(
            Method::PUT,
            &format!("{location}?digest={}", digest_of(content)),
            &[("content-range", "10-14")],
            &content[10..15],
        ))
        .await;
    r.expect(StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("range"), Some("0-4"));
    // The upload goes on from where it stood: nothing was appended by the refused chunks.
    t.patch(&location, Some("5-9"), &content[5..10])
        .await
        .expect(StatusCode::ACCEPTED);
    let r = t
        .send(request(
            Method::PUT,
            &format!("{location}?digest={}", digest_of(content)),
            &[("content-range", "10-14")],
            &content[10..15],
        ))
        .await;
    assert_stored(&t, &r, "r", content).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_inconsistent_content_range_is_400_and_appends_nothing() {
    let t = TestNode::start().await;
    let location = t.start_upload("r").await;
    t.patch(&location, Some("0-2"), b"abc")
        .await
        .expect(StatusCode::ACCEPTED);
    for cr in ["garbage", "5-3", "x-y", "-4"] {
        let r = t.patch(&location, Some(cr), b"def").await;
        assert_error(&r, StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID");
    }
    // Content-Range covers 5 bytes, Content-Length says 3.
    let r = t.patch(&location, Some("3-7"), b"def").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "SIZE_INVALID");
    let s = t.get(&location).await;
    assert_session(&s, StatusCode::NO_CONTENT, "r", &location, "0-2");
    t.patch(&location, Some("3-5"), b"def")
        .await
        .expect(StatusCode::ACCEPTED);
    let r = t.finish(&location, &digest_of(b"abcdef"), b"").await;
    assert_stored(&t, &r, "r", b"abcdef").await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_whole_body_after_post() {
    let t = TestNode::start().await;
    let content = b"POST then PUT";
    let location = t.start_upload("r").await;
    let r = t
        .send(request(
            Method::PUT,
            &format!("{location}?digest={}", digest_of(content)),
            &[("content-type", "application/octet-stream")],
            &content[..],
        ))
        .await;
    assert_stored(&t, &r, "r", content).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_without_final_chunk() {
    let t = TestNode::start().await;
    let content = b"all in patches";
    let location = t.start_upload("r").await;
    t.patch(&location, Some("0-6"), &content[..7])
        .await
        .expect(StatusCode::ACCEPTED);
    t.patch(&location, Some("7-13"), &content[7..])
        .await
        .expect(StatusCode::ACCEPTED);
    let r = t
        .send(request(
            Method::PUT,
            &format!("{location}?digest={}", digest_of(content)),
            &[("content-length", "0")],
            Vec::new(),
        ))
        .await;
    assert_stored(&t, &r, "r", content).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_digest_mismatch_is_400_and_blob_absent() {
    let t = TestNode::start().await;
    let before = t.snapshot(&["r"], &[]).await;
    let location = t.start_upload("r").await;
    t.patch(&location, None, b"actual bytes")
        .await
        .expect(StatusCode::ACCEPTED);
    let claimed = digest_of(b"other bytes");
    let r = t.finish(&location, &claimed, b"").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    for d in [claimed, digest_of(b"actual bytes")] {
        let uri = format!("/v2/r/blobs/{d}");
        t.head(&uri).await.expect(StatusCode::NOT_FOUND);
        assert_error(&t.get(&uri).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    }
    assert_eq!(t.snapshot(&["r"], &[]).await, before);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_without_or_with_bad_digest_is_400_and_keeps_session() {
    let t = TestNode::start().await;
    let location = t.start_upload("r").await;
    t.patch(&location, None, b"abc")
        .await
        .expect(StatusCode::ACCEPTED);
    let r = t.put(&location, Vec::new()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    let r = t
        .put(&format!("{location}?digest=sha256:nothex"), Vec::new())
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    let r = t.put(&format!("{location}?digest="), Vec::new()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    // The session survived the refused requests.
    let s = t.get(&location).await;
    assert_session(&s, StatusCode::NO_CONTENT, "r", &location, "0-2");
    let r = t.finish(&location, &digest_of(b"abc"), b"").await;
    assert_stored(&t, &r, "r", b"abc").await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_the_session() {
    let t = TestNode::start().await;
    let location = t.start_upload("r").await;
    t.patch(&location, None, b"abandoned")
        .await
        .expect(StatusCode::ACCEPTED);
    let r = t.delete(&location).await;
    r.expect(StatusCode::NO_CONTENT);
    assert_error(
        &t.get(&location).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    assert_error(
        &t.patch(&location, None, b"more").await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    assert_error(
        &t.finish(&location, &digest_of(b"abandoned"), b"").await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    assert_error(
        &t.delete(&location).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    t.head(&format!("/v2/r/blobs/{}", digest_of(b"abandoned")))
        .await
        .expect(StatusCode::NOT_FOUND);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_garbage_upload_id_is_404() {
    let t = TestNode::start().await;
    let live = t.start_upload("r").await;
    let node_part = id_of(&live).split_once('-').unwrap().0.to_string();
    for id in [
        "garbage".to_string(),
        format!("{node_part}-0123456789abcdef0123456789abcdef"), // well-formed, never issued
        format!("{node_part}-0123456789ABCDEF0123456789ABCDEF"),
        "..".to_string(),
        "%2e%2e%2fetc".to_string(),
        id_of(&live).to_uppercase(),
    ] {
        assert_session_unknown(&t, &format!("/v2/r/blobs/uploads/{id}")).await;
    }
    // The live session was not disturbed.
    let s = t.get(&live).await;
    assert_session(&s, StatusCode::NO_CONTENT, "r", &live, "0-0");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_of_a_node_that_is_not_a_member_is_unknown() {
    // Sessions of other members are relayed to them (cluster-tests s1); an id naming a node
    // the cluster does not have cannot be relayed anywhere: nobody holds that session.
    let t = TestNode::start().await;
    let live = t.start_upload("r").await;
    assert!(id_of(&live).starts_with("1-"), "{live}");
    assert_session_unknown(
        &t,
        "/v2/r/blobs/uploads/2a-0123456789abcdef0123456789abcdef",
    )
    .await;
    let s = t.get(&live).await;
    assert_session(&s, StatusCode::NO_CONTENT, "r", &live, "0-0");
    t.stop().await;
}

/// GET, PATCH, PUT and DELETE of the session at `location` all answer 404 BLOB_UPLOAD_UNKNOWN.
async fn assert_session_unknown(t: &TestNode, location: &str) {
    let d = digest_of(b"x");
    for r in [
        t.get(location).await,
        t.patch(location, None, b"x").await,
        t.finish(location, &d, b"x").await,
        t.delete(location).await,
    ] {
        assert_error(&r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_id_under_another_repository_is_unknown() {
    let t = TestNode::start().await;
    let location = t.start_upload("a").await;
    t.patch(&location, None, b"abc")
        .await
        .expect(StatusCode::ACCEPTED);
    let other = format!("/v2/b/blobs/uploads/{}", id_of(&location));
    assert_session_unknown(&t, &other).await;
    let d = digest_of(b"abcdef");
    t.head(&format!("/v2/b/blobs/{d}"))
        .await
        .expect(StatusCode::NOT_FOUND);
    // Nothing reached the session; it completes in its own repository.
    let s = t.get(&location).await;
    assert_session(&s, StatusCode::NO_CONTENT, "a", &location, "0-2");
    let r = t.finish(&location, &d, b"def").await;
    assert_stored(&t, &r, "a", b"abcdef").await;
    assert_eq!(t.tags("b").await, None, "repository b was never created");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_the_same_blob_all_succeed() {
    let t = TestNode::start().await;
    let content: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = t.client.clone();
        let content = content.clone();
        tasks.push(tokio::spawn(async move {
            let d = digest_of(&content);
            if i % 2 == 0 {
                // Chunked session.
                let location = c.start_upload("r").await;
                let half = content.len() / 2;
                let cr = format!("0-{}", half - 1);
                c.patch(&location, Some(&cr), &content[..half])
                    .await
                    .expect(StatusCode::ACCEPTED);
                c.finish(&location, &d, &content[half..]).await
            } else {
                c.post(&format!("/v2/r/blobs/uploads/?digest={d}"), content.clone())
                    .await
            }
        }));
    }
    for task in tasks {
        let r = task.await.unwrap();
        assert_stored(&t, &r, "r", &content).await;
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_from_a_repository_that_has_the_blob() {
    let t = TestNode::start().await;
    let content = b"shared layer";
    let d = t.push_blob("src/x", content).await;
    let r = t
        .post(
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src/x"),
            Vec::new(),
        )
        .await;
    assert_stored(&t, &r, "dst", content).await;
    // The source keeps it; the mount created the destination repository.
    t.get(&format!("/v2/src/x/blobs/{d}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(t.catalog().await, vec!["dst", "src/x"]);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_falls_back_to_a_session_when_source_lacks_the_blob() {
    let t = TestNode::start().await;
    let content = b"not in the source";
    let d = digest_of(content);
    t.push_blob("src", b"something else").await;
    t.push_blob("elsewhere", content).await;
    for query in [
        format!("mount={d}&from=src"),
        format!("mount={d}&from=unknown-repo"),
    ] {
        let r = t
            .post(&format!("/v2/dst/blobs/uploads/?{query}"), Vec::new())
            .await;
        let location = r.header("location").unwrap_or("").to_string();
        assert_session(&r, StatusCode::ACCEPTED, "dst", &location, "0-0");
        t.head(&format!("/v2/dst/blobs/{d}"))
            .await
            .expect(StatusCode::NOT_FOUND);
        // The session is usable to upload the blob.
        let done = t.finish(&location, &d, content).await;
        assert_stored(&t, &done, "dst", content).await;
        t.delete(&format!("/v2/dst/blobs/{d}"))
            .await
            .expect(StatusCode::ACCEPTED);
    }
    // Without `from` a registry may mount from wherever it finds the blob (201) or open a
    // session (202); either way the answer is consistent with what the repository holds.
    let r = t
        .post(&format!("/v2/dst/blobs/uploads/?mount={d}"), Vec::new())
        .await;
    if r.status == StatusCode::CREATED {
        assert_stored(&t, &r, "dst", content).await;
    } else {
        let location = r.header("location").unwrap_or("").to_string();
        assert_session(&r, StatusCode::ACCEPTED, "dst", &location, "0-0");
        t.head(&format!("/v2/dst/blobs/{d}"))
            .await
            .expect(StatusCode::NOT_FOUND);
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_with_invalid_digest_or_source_name_is_400() {
    let t = TestNode::start().await;
    let d = t.push_blob("src", b"x").await;
    let before = t.snapshot(&["src", "dst"], &[]).await;
    let r = t
        .post(
            "/v2/dst/blobs/uploads/?mount=sha256:nope&from=src",
            Vec::new(),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    let r = t
        .post(
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=Bad//Name"),
            Vec::new(),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "NAME_INVALID");
    assert_eq!(t.snapshot(&["src", "dst"], &[]).await, before);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_blob_uploads() {
    let t = TestNode::start().await;
    let empty = digest_of(b"");
    // Monolithic.
    let r = t
        .send(request(
            Method::POST,
            &format!("/v2/a/blobs/uploads/?digest={empty}"),
            &[("content-length", "0")],
            Vec::new(),
        ))
        .await;
    assert_stored(&t, &r, "a", b"").await;
    // Session closed by an empty PUT.
    let location = t.start_upload("b").await;
    let r = t.finish(&location, &empty, b"").await;
    assert_stored(&t, &r, "b", b"").await;
    let h = t.head(&format!("/v2/b/blobs/{empty}")).await;
    h.expect(StatusCode::OK);
    assert_eq!(h.header("content-length"), Some("0"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_endpoints_refuse_invalid_names() {
    let t = TestNode::start().await;
    let location = t.start_upload("r").await;
    let id = id_of(&location).to_string();
    for name in ["R", "a//b", "a/../b", "-a"] {
        let r = t
            .post(&format!("/v2/{name}/blobs/uploads/"), Vec::new())
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "NAME_INVALID");
        let up = format!("/v2/{name}/blobs/uploads/{id}");
        assert_error(&t.get(&up).await, StatusCode::BAD_REQUEST, "NAME_INVALID");
        assert_error(
            &t.patch(&up, None, b"x").await,
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        );
        assert_error(
            &t.finish(&up, &digest_of(b"x"), b"x").await,
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        );
        assert_error(
            &t.delete(&up).await,
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        );
    }
    let s = t.get(&location).await;
    assert_session(&s, StatusCode::NO_CONTENT, "r", &location, "0-0");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_error_mid_stream_is_reported_and_stores_nothing() {
    let t = TestNode::start().await;
    let content = b"partial";
    let d = digest_of(content);
    let body = Body::from_stream(futures::stream::iter(vec![
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(content)),
        Err(std::io::Error::other("client went away")),
    ]));
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/v2/r/blobs/uploads/?digest={d}"))
        .body(body)
        .unwrap();
    let r = t.send(req).await;
    assert!(r.status.is_client_error(), "{}: {}", r.what, r.status);
    t.head(&format!("/v2/r/blobs/{d}"))
        .await
        .expect(StatusCode::NOT_FOUND);
    assert_eq!(t.catalog().await, Vec::<String>::new());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_requests_on_one_session_get_one_writer() {
    let t = TestNode::start().await;
    // Concurrent streamed PATCHes: one request writes at a time; a competing one is refused
    // with 409 and appends nothing, so the session holds exactly the accepted chunks.
    let location = t.start_upload("r").await;
    let chunks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'a' + i; 50_000]).collect();
    let mut tasks = Vec::new();
    for chunk in chunks.clone() {
        let c = t.client.clone();
        let location = location.clone();
        tasks.push(tokio::spawn(async move {
            c.patch(&location, None, &chunk).await
        }));
    }
    let mut accepted = 0u64;
    for task in tasks {
        let r = task.await.unwrap();
        if r.status == StatusCode::ACCEPTED {
            accepted += 1;
        } else {
            assert_error(&r, StatusCode::CONFLICT, "BLOB_UPLOAD_INVALID");
        }
    }
    assert!(accepted >= 1);
    let s = t.get(&location).await;
    let want = format!("0-{}", accepted * 50_000 - 1);
    assert_session(&s, StatusCode::NO_CONTENT, "r", &location, &want);
    // Concurrent PUTs closing the same session: exactly one stores the blob; the others find
    // the session busy or gone.
    let content: Vec<u8> = (0..30_000u32).map(|i| (i % 256) as u8).collect();
    let location = t.start_upload("r").await;
    t.patch(&location, None, &content)
        .await
        .expect(StatusCode::ACCEPTED);
    let d = digest_of(&content);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = t.client.clone();
        let (location, d) = (location.clone(), d.clone());
        tasks.push(tokio::spawn(
            async move { c.finish(&location, &d, b"").await },
        ));
    }
    let mut created = 0;
    for task in tasks {
        let r = task.await.unwrap();
        if r.status == StatusCode::CREATED {
            created += 1;
            assert_stored(&t, &r, "r", &content).await;
        } else if r.status == StatusCode::CONFLICT {
            assert_error(&r, StatusCode::CONFLICT, "BLOB_UPLOAD_INVALID");
        } else {
            assert_error(&r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
        }
    }
    assert_eq!(created, 1);
    t.stop().await;
}
