//! The rest of the HTTP surface: the `/v2/` base, health endpoints, repository-name and digest
//! validation across endpoints, unknown endpoints, wrong methods, and the error body shape.

mod common;

use common::*;
use http::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_endpoint_answers_200_with_api_version() {
    let t = TestNode::start().await;
    for uri in ["/v2/", "/v2"] {
        let r = t.get(uri).await;
        r.expect(StatusCode::OK);
        assert_eq!(r.header(API_VERSION_HEADER), Some("registry/2.0"));
        assert_eq!(r.json(), serde_json::json!({}));
        let r = t.head(uri).await;
        r.expect(StatusCode::OK);
        assert_eq!(r.header(API_VERSION_HEADER), Some("registry/2.0"));
        assert!(r.body.is_empty());
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v2_response_carries_the_api_version_header() {
    let t = TestNode::start().await;
    let d = t.push_blob("r", b"blob").await;
    let (m, _) = t.push_image("r", Some("v1"), "1").await;
    let location = t.start_upload("r").await;
    // Success and failure of every endpoint; `send` checks the header on each.
    let cases: Vec<(Method, String)> = vec![
        (Method::GET, "/v2/".into()),
        (Method::GET, "/v2/_catalog".into()),
        (Method::GET, "/v2/_catalog?n=x".into()),
        (Method::GET, "/v2/r/tags/list".into()),
        (Method::GET, "/v2/nope/tags/list".into()),
        (Method::GET, format!("/v2/r/manifests/{m}")),
        (Method::HEAD, "/v2/r/manifests/v1".into()),
        (Method::GET, "/v2/r/manifests/nope".into()),
        (Method::PUT, "/v2/r/manifests/x".into()),
        (Method::DELETE, "/v2/r/manifests/nope".into()),
        (Method::GET, format!("/v2/r/blobs/{d}")),
        (Method::HEAD, format!("/v2/r/blobs/{d}")),
        (Method::GET, format!("/v2/r/blobs/{ABSENT_DIGEST}")),
        (Method::HEAD, format!("/v2/r/blobs/{ABSENT_DIGEST}")),
        (Method::DELETE, format!("/v2/r/blobs/{ABSENT_DIGEST}")),
        (Method::GET, format!("/v2/r/referrers/{m}")),
        (Method::GET, "/v2/r/referrers/bad".into()),
        (Method::POST, "/v2/r/blobs/uploads/".into()),
        (Method::GET, location.clone()),
        (Method::PATCH, location.clone()),
        (Method::PUT, location.clone()),
        (Method::DELETE, location),
        (Method::GET, "/v2/Bad/tags/list".into()),
        (Method::GET, "/v2/no/such/endpoint".into()),
        (Method::POST, "/v2/r/manifests/v1".into()),
    ];
    for (method, uri) in cases {
        let r = t.send(request(method, &uri, &[], Vec::new())).await;
        assert_eq!(
            r.header(API_VERSION_HEADER),
            Some("registry/2.0"),
            "{}",
            r.what
        );
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz() {
    let t = TestNode::start().await;
    let r = t.get("/healthz").await;
    r.expect(StatusCode::OK);
    assert_eq!(&r.body[..], b"ok\n");
    let r = t.get("/readyz").await;
    r.expect(StatusCode::OK);
    assert_eq!(&r.body[..], b"ready\n");
    t.stop().await;
}

/// Invalid repository names, each as it appears in a path.
fn invalid_names() -> Vec<String> {
    vec![
        "Upper".into(),
        "a/B".into(),
        "..".into(),
        "a/..".into(),
        "a/../b".into(),
        "./a".into(),
        "a//b".into(),
        "a/".into(),
        "-a".into(),
        "a-".into(),
        "a___b".into(),
        "a b".into(),
        "a%2Fb".into(),
        "a:b".into(),
        "a".repeat(256),
        format!("{}/{}", "a".repeat(200), "b".repeat(55)), // 256 with the slash
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_repository_names_are_name_invalid_on_every_endpoint() {
    let t = TestNode::start().await;
    let d = t.push_blob("a", b"x").await;
    for name in invalid_names() {
        let name = name.replace(' ', "%20");
        let uris = [
            (Method::GET, format!("/v2/{name}/tags/list")),
            (Method::GET, format!("/v2/{name}/manifests/latest")),
            (Method::PUT, format!("/v2/{name}/manifests/latest")),
            (Method::DELETE, format!("/v2/{name}/manifests/latest")),
            (Method::GET, format!("/v2/{name}/blobs/{d}")),
            (Method::DELETE, format!("/v2/{name}/blobs/{d}")),
            (Method::POST, format!("/v2/{name}/blobs/uploads/")),
            (Method::GET, format!("/v2/{name}/referrers/{d}")),
        ];
        for (method, uri) in uris {
            let r = t.send(request(method, &uri, &[], b"{}".to_vec())).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.what);
            assert_eq!(error_code(&r), "NAME_INVALID", "{}", r.what);
        }
    }
    assert_eq!(t.catalog().await, vec!["a"]);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_slash_in_name_is_name_invalid() {
    let t = TestNode::start().await;
    let d = t.push_blob("a", b"x").await;
    t.push_image("a", Some("v1"), "1").await;
    // `/v2//a/…` names the repository "/a", which is not a valid name; it must not be
    // served as repository "a".
    for (method, uri) in [
        (Method::GET, "/v2//a/tags/list".to_string()),
        (Method::GET, "/v2//a/manifests/v1".to_string()),
        (Method::GET, format!("/v2//a/blobs/{d}")),
        (Method::POST, "/v2//a/blobs/uploads/".to_string()),
    ] {
        let r = t.send(request(method, &uri, &[], Vec::new())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.what);
        assert_eq!(error_code(&r), "NAME_INVALID", "{}", r.what);
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_name_and_many_components_work() {
    let t = TestNode::start().await;
    let longest = format!("{}/{}", "a".repeat(200), "b".repeat(54)); // 255 bytes
    assert_eq!(longest.len(), 255);
    let deep = "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p";
    let tricky = "x/blobs/uploads/manifests/tags/list/referrers"; // endpoint words
    for repo in [longest.as_str(), deep, tricky, "a.b_c__d---e/0"] {
        let (m, bytes) = t.push_image(repo, Some("v1"), repo).await;
        let g = t.get(&format!("/v2/{repo}/manifests/v1")).await;
        g.expect(StatusCode::OK);
        assert_eq!(&g.body[..], &bytes[..]);
        assert_eq!(t.tags(repo).await, Some(vec!["v1".to_string()]));
        t.get(&format!("/v2/{repo}/manifests/{m}"))
            .await
            .expect(StatusCode::OK);
        let location = t.start_upload(repo).await;
        assert!(location.starts_with(&format!("/v2/{repo}/blobs/uploads/")));
        t.finish(&location, &digest_of(b"z"), b"z")
            .await
            .expect(StatusCode::CREATED);
        t.get(&format!("/v2/{repo}/blobs/{}", digest_of(b"z")))
            .await
            .expect(StatusCode::OK);
    }
    let mut want = vec![
        longest.clone(),
        deep.into(),
        tricky.into(),
        "a.b_c__d---e/0".into(),
    ];
    want.sort();
    assert_eq!(t.catalog().await, want);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_digests_are_digest_invalid() {
    let t = TestNode::start().await;
    t.push_blob("r", b"x").await;
    for bad in [
        "sha256:123",
        "sha256:xyz",
        "sha256",
        "sha256:",
        ":abc",
        "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
    ] {
        for (method, uri) in [
            (Method::GET, format!("/v2/r/blobs/{bad}")),
            (Method::DELETE, format!("/v2/r/blobs/{bad}")),
            (Method::POST, format!("/v2/r/blobs/uploads/?digest={bad}")),
            (
                Method::POST,
                format!("/v2/r/blobs/uploads/?mount={bad}&from=r"),
            ),
            (Method::GET, format!("/v2/r/referrers/{bad}")),
        ] {
            let r = t.send(request(method, &uri, &[], b"x".to_vec())).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.what);
            assert_eq!(error_code(&r), "DIGEST_INVALID", "{}", r.what);
        }
        // As a manifest reference, anything with a colon must be a valid digest to be stored;
        // reading it finds nothing (see api_manifests.rs).
        if bad.contains(':') {
            let r = t.put_manifest("r", bad, OCI_MANIFEST, b"{}").await;
            assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID");
            let r = t.get(&format!("/v2/r/manifests/{bad}")).await;
            assert_error(&r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
        }
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoints_are_404() {
    let t = TestNode::start().await;
    t.push_image("r", Some("v1"), "1").await;
    for uri in [
        "/v2/r",
        "/v2/r/",
        "/v2/r/unknown/x",
        "/v2/r/manifests/",
        "/v2/r/blobs/",
        "/v2/r/tags",
        "/v2/tags/list",
        "/v2/_catalog/x",
        "/v2/r/referrers/",
    ] {
        let r = t.get(uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        error_code(&r);
    }
    // Outside /v2: plain 404.
    for uri in ["/", "/v1/", "/healthz/x", "/metrics/x"] {
        t.get(uri).await.expect(StatusCode::NOT_FOUND);
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let t = TestNode::start().await;
    let r = t.get("/metrics").await;
    r.expect(StatusCode::OK);
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.header("content-type")
    );
    let text = String::from_utf8(r.body.to_vec()).expect("metrics are UTF-8");
    assert!(text.contains("berth_node_info{node=\"1\""), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405_unsupported() {
    let t = TestNode::start().await;
    let d = t.push_blob("r", b"x").await;
    let location = t.start_upload("r").await;
    for (method, uri, _) in wrong_methods(&d, &location) {
        let head = method == Method::HEAD;
        let r = t.send(request(method, &uri, &[], Vec::new())).await;
        if head {
            // No body on a HEAD answer.
            r.expect(StatusCode::METHOD_NOT_ALLOWED);
        } else {
            assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
        }
    }
    // Nothing was changed by them.
    t.get(&format!("/v2/r/blobs/{d}"))
        .await
        .expect(StatusCode::OK);
    t.get(&location).await.expect(StatusCode::NO_CONTENT);
    t.stop().await;
}

/// RFC 9110 §15.5.6: a 405 response MUST carry an `Allow` header listing the methods the
/// target resource supports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_405_lists_allowed_methods() {
    let t = TestNode::start().await;
    let d = t.push_blob("r", b"x").await;
    let location = t.start_upload("r").await;
    for (method, uri, allowed) in wrong_methods(&d, &location) {
        let r = t.send(request(method, &uri, &[], Vec::new())).await;
        r.expect(StatusCode::METHOD_NOT_ALLOWED);
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("{}: no Allow header", r.what));
        let mut got: Vec<&str> = allow.split(',').map(str::trim).collect();
        got.sort_unstable();
        let mut want = allowed.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "{}: Allow", r.what);
    }
    t.stop().await;
}

/// Requests with a method the resource does not support, and the methods it does.
fn wrong_methods(d: &str, location: &str) -> Vec<(Method, String, &'static [&'static str])> {
    const BASE: &[&str] = &["GET", "HEAD"];
    const LIST: &[&str] = &["GET"];
    const MANIFEST: &[&str] = &["GET", "HEAD", "PUT", "DELETE"];
    const BLOB: &[&str] = &["GET", "HEAD", "DELETE"];
    const UPLOADS: &[&str] = &["POST"];
    const UPLOAD: &[&str] = &["GET", "PATCH", "PUT", "DELETE"];
    vec![
        (Method::POST, "/v2/".into(), BASE),
        (Method::DELETE, "/v2/".into(), BASE),
        (Method::POST, "/v2/_catalog".into(), LIST),
        (Method::DELETE, "/v2/_catalog".into(), LIST),
        (Method::PUT, "/v2/r/tags/list".into(), LIST),
        (Method::PATCH, "/v2/r/tags/list".into(), LIST),
        (Method::POST, "/v2/r/manifests/v1".into(), MANIFEST),
        (Method::PATCH, "/v2/r/manifests/v1".into(), MANIFEST),
        (Method::PUT, format!("/v2/r/blobs/{d}"), BLOB),
        (Method::POST, format!("/v2/r/blobs/{d}"), BLOB),
        (Method::PATCH, format!("/v2/r/blobs/{d}"), BLOB),
        (Method::GET, "/v2/r/blobs/uploads/".into(), UPLOADS),
        (Method::PUT, "/v2/r/blobs/uploads/".into(), UPLOADS),
        (Method::DELETE, "/v2/r/blobs/uploads/".into(), UPLOADS),
        (Method::POST, location.to_string(), UPLOAD),
        (Method::HEAD, location.to_string(), UPLOAD),
        (Method::DELETE, format!("/v2/r/referrers/{d}"), LIST),
        (Method::PUT, format!("/v2/r/referrers/{d}"), LIST),
        (Method::OPTIONS, format!("/v2/r/blobs/{d}"), BLOB),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_have_the_oci_shape() {
    let t = TestNode::start().await;
    let location = t.start_upload("r").await;
    let d = t.push_blob("r", b"0123456789").await;
    // One request per error code the API produces, with the code and status expected.
    // (method, path, headers, body, expected status, expected code)
    type Case<'a> = (
        Method,
        String,
        Vec<(&'a str, &'a str)>,
        &'a str,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            format!("/v2/r/blobs/{ABSENT_DIGEST}"),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
        ),
        (
            Method::PATCH,
            location.clone(),
            vec![("content-range", "x")],
            "a",
            StatusCode::BAD_REQUEST,
            "BLOB_UPLOAD_INVALID",
        ),
        (
            Method::GET,
            "/v2/r/blobs/uploads/nope".into(),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            Method::GET,
            "/v2/r/blobs/sha256:1".into(),
            vec![],
            "",
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::PUT,
            "/v2/r/manifests/t".into(),
            vec![("content-type", OCI_MANIFEST)],
            r#"{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}"#,
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            Method::PUT,
            "/v2/r/manifests/t".into(),
            vec![("content-type", OCI_MANIFEST)],
            "{",
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/r/manifests/nope".into(),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            Method::GET,
            "/v2/R/tags/list".into(),
            vec![],
            "",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/nope/tags/list".into(),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            Method::PATCH,
            location.clone(),
            vec![("content-range", "0-9"), ("content-length", "1")],
            "a",
            StatusCode::BAD_REQUEST,
            "SIZE_INVALID",
        ),
        (
            Method::POST,
            "/v2/".into(),
            vec![],
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            "/v2/_catalog?n=-1".into(),
            vec![],
            "",
            StatusCode::BAD_REQUEST,
            "PAGINATION_NUMBER_INVALID",
        ),
        (
            Method::PATCH,
            location.clone(),
            vec![("content-range", "5-5")],
            "a",
            StatusCode::RANGE_NOT_SATISFIABLE,
            "RANGE_INVALID",
        ),
        (
            Method::GET,
            format!("/v2/r/blobs/{d}"),
            vec![("range", "bytes=10-")],
            "",
            StatusCode::RANGE_NOT_SATISFIABLE,
            "RANGE_INVALID",
        ),
    ];
    for (method, uri, headers, body, status, code) in cases {
        let r = t.send(request(method, &uri, &headers, body)).await;
        assert_eq!(r.status, status, "{}: {:?}", r.what, r.body);
        // `error_code` asserts the shape: {"errors":[{"code","message","detail"}]}.
        assert_eq!(error_code(&r), code, "{}", r.what);
        let v = r.json();
        let e = &v["errors"][0];
        assert!(
            !e["message"].as_str().unwrap().is_empty(),
            "{}: a message",
            r.what
        );
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_raft_stopped_reads_work_and_writes_fail_with_an_oci_error() {
    let t = TestNode::start().await;
    let d = t.push_blob("r", b"x").await;
    let (m, _) = t.push_image("r", Some("v1"), "1").await;
    t.stop_raft().await;
    // Reads are served from the applied state.
    t.get(&format!("/v2/r/blobs/{d}"))
        .await
        .expect(StatusCode::OK);
    t.get(&format!("/v2/r/manifests/{m}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(t.tags("r").await, Some(vec!["v1".to_string()]));
    // Writes cannot commit: a server error in the OCI shape (checked by `send`), never a
    // success and never a client error.
    for r in [
        t.post(
            &format!("/v2/r/blobs/uploads/?digest={}", digest_of(b"y")),
            &b"y"[..],
        )
        .await,
        t.delete(&format!("/v2/r/blobs/{d}")).await,
        t.delete("/v2/r/manifests/v1").await,
    ] {
        assert!(r.status.is_server_error(), "{}: {}", r.what, r.status);
        let code = error_code(&r);
        assert!(
            code == "UNAVAILABLE" || code == "UNKNOWN",
            "{}: {code}",
            r.what
        );
    }
    assert_eq!(t.tags("r").await, Some(vec!["v1".to_string()]));
    // A node whose Raft has stopped cannot take writes: it is not ready.
    let r = t.get("/readyz").await;
    r.expect(StatusCode::SERVICE_UNAVAILABLE);
}
