//! Manifests: `PUT`/`GET`/`HEAD`/`DELETE /v2/<name>/manifests/<reference>` for every supported
//! kind, and every way a push is refused (which must leave the registry unchanged).

mod common;

use axum::body::Body;
use common::*;
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};

/// Pushes `manifest` under `tag` and checks every way of reading it back returns the exact
/// bytes with its media type and digest.
async fn push_and_read_back(t: &Client, repo: &str, tag: &str, manifest: &Value) -> String {
    let bytes = bytes_of(manifest);
    let media_type = manifest["mediaType"].as_str().unwrap();
    let d = digest_of(&bytes);
    let r = t.put_manifest(repo, tag, media_type, &bytes).await;
    r.expect(StatusCode::CREATED);
    let location = format!("/v2/{repo}/manifests/{d}");
    assert_eq!(r.header("location"), Some(location.as_str()));
    assert_eq!(r.header(DIGEST_HEADER), Some(d.as_str()));
    assert_eq!(r.header("oci-subject"), None, "no subject");
    assert_read_back(t, repo, &[tag, &d], media_type, &bytes).await;
    d
}

/// GET and HEAD of each reference return `bytes` with `media_type` and their digest.
async fn assert_read_back(t: &Client, repo: &str, refs: &[&str], media_type: &str, bytes: &[u8]) {
    let d = digest_of(bytes);
    let len = bytes.len().to_string();
    for reference in refs {
        let uri = format!("/v2/{repo}/manifests/{reference}");
        let g = t.get(&uri).await;
        g.expect(StatusCode::OK);
        assert_eq!(&g.body[..], bytes, "{uri}: exact bytes");
        assert_eq!(g.header("content-type"), Some(media_type), "{uri}");
        assert_eq!(g.header(DIGEST_HEADER), Some(d.as_str()), "{uri}");
        assert_eq!(g.header("content-length"), Some(len.as_str()), "{uri}");
        let h = t.head(&uri).await;
        h.expect(StatusCode::OK);
        assert!(h.body.is_empty(), "{uri}: HEAD has no body");
        assert_eq!(h.header("content-type"), Some(media_type), "{uri}");
        assert_eq!(h.header(DIGEST_HEADER), Some(d.as_str()), "{uri}");
        assert_eq!(h.header("content-length"), Some(len.as_str()), "{uri}");
    }
}

/// Pushes a config and one layer blob; returns the OCI manifest over them.
async fn image(t: &Client, repo: &str, seed: &str) -> Value {
    let config = format!("{{\"architecture\":\"amd64\",\"seed\":\"{seed}\"}}").into_bytes();
    let layer = format!("layer {seed}").into_bytes();
    t.push_blob(repo, &config).await;
    t.push_blob(repo, &layer).await;
    oci_manifest(&config, &[&layer])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_image_manifest_round_trip() {
    let t = TestNode::start().await;
    let mut m = image(&t, "lib/app", "1").await;
    m["annotations"] = json!({ "org.opencontainers.image.title": "app" });
    let d = push_and_read_back(&t, "lib/app", "v1", &m).await;
    assert_eq!(t.tags("lib/app").await, Some(vec!["v1".to_string()]));
    // The same manifest again, by digest: accepted, nothing changes.
    let r = t
        .put_manifest("lib/app", &d, OCI_MANIFEST, &bytes_of(&m))
        .await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.header(DIGEST_HEADER), Some(d.as_str()));
    assert_eq!(t.tags("lib/app").await, Some(vec!["v1".to_string()]));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_stored_exactly_as_pushed() {
    let t = TestNode::start().await;
    let m = image(&t, "r", "1").await;
    // Pretty-printed, with unusual key order and a trailing newline: not canonical JSON.
    let mut text = serde_json::to_string_pretty(&json!({
        "layers": m["layers"],
        "config": m["config"],
        "mediaType": OCI_MANIFEST,
        "schemaVersion": 2,
    }))
    .unwrap();
    text.push('\n');
    let bytes = text.into_bytes();
    let r = t.put_manifest("r", "pretty", OCI_MANIFEST, &bytes).await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.header(DIGEST_HEADER), Some(digest_of(&bytes).as_str()));
    assert_read_back(
        &t,
        "r",
        &["pretty", &digest_of(&bytes)],
        OCI_MANIFEST,
        &bytes,
    )
    .await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_by_digest_creates_no_tag() {
    let t = TestNode::start().await;
    let m = image(&t, "r", "1").await;
    let bytes = bytes_of(&m);
    let d = digest_of(&bytes);
    let r = t.put_manifest("r", &d, OCI_MANIFEST, &bytes).await;
    r.expect(StatusCode::CREATED);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/r/manifests/{d}").as_str())
    );
    assert_eq!(r.header(DIGEST_HEADER), Some(d.as_str()));
    assert_read_back(&t, "r", &[&d], OCI_MANIFEST, &bytes).await;
    assert_eq!(t.tags("r").await, Some(vec![]));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_without_media_type_field_takes_the_content_type() {
    let t = TestNode::start().await;
    let mut m = image(&t, "r", "1").await;
    m.as_object_mut().unwrap().remove("mediaType");
    let bytes = bytes_of(&m);
    t.put_manifest("r", "t", OCI_MANIFEST, &bytes)
        .await
        .expect(StatusCode::CREATED);
    assert_read_back(&t, "r", &["t"], OCI_MANIFEST, &bytes).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_parameters_and_generic_json_are_accepted() {
    let t = TestNode::start().await;
    let m = image(&t, "r", "1").await;
    let bytes = bytes_of(&m);
    for (tag, ct) in [
        (
            "params",
            "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
        ),
        ("json", "application/json"),
        ("none", ""),
    ] {
        t.put_manifest("r", tag, ct, &bytes)
            .await
            .expect(StatusCode::CREATED);
        // Served with the manifest's own media type, whatever it was pushed with.
        assert_read_back(&t, "r", &[tag], OCI_MANIFEST, &bytes).await;
    }
    t.stop().await;
}

/// Pushes one untagged image per architecture into `r`: (digest, bytes) of each, in order.
async fn linux_images<const N: usize>(t: &TestNode, archs: [&str; N]) -> [(String, Vec<u8>); N] {
    let mut out = Vec::new();
    for arch in archs {
        out.push(t.push_image("r", None, arch).await);
    }
    out.try_into().expect("one image per architecture")
}

/// An OCI index of linux images: (digest, bytes, architecture) per entry, in order.
fn index_of(entries: &[(&String, &Vec<u8>, &str)]) -> serde_json::Value {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(digest, bytes, arch)| {
            json!({ "mediaType": OCI_MANIFEST, "digest": digest, "size": bytes.len(),
                    "platform": { "architecture": arch, "os": "linux" } })
        })
        .collect();
    json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_index_round_trip() {
    let t = TestNode::start().await;
    let [(amd, amd_bytes), (arm, arm_bytes)] = linux_images(&t, ["amd64", "arm64"]).await;
    let index = index_of(&[(&amd, &amd_bytes, "amd64"), (&arm, &arm_bytes, "arm64")]);
    push_and_read_back(&t, "r", "multi", &index).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema2_and_manifest_list_round_trip() {
    let t = TestNode::start().await;
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}";
    let layer = b"docker layer";
    t.push_blob("d", config).await;
    t.push_blob("d", layer).await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG, config),
        "layers": [desc(DOCKER_LAYER, layer)],
    });
    let md = push_and_read_back(&t, "d", "amd64", &m).await;
    let list = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{
            "mediaType": DOCKER_MANIFEST,
            "digest": md,
            "size": bytes_of(&m).len(),
            "platform": { "architecture": "amd64", "os": "linux" },
        }],
    });
    push_and_read_back(&t, "d", "latest", &list).await;
    assert_eq!(
        t.tags("d").await,
        Some(vec!["amd64".to_string(), "latest".to_string()])
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_with_artifact_type_and_empty_config() {
    let t = TestNode::start().await;
    t.push_blob("art", b"{}").await;
    let sbom = b"{\"spdxVersion\":\"SPDX-2.3\"}";
    t.push_blob("art", sbom).await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": { "mediaType": OCI_EMPTY, "digest": digest_of(b"{}"), "size": 2, "data": "e30=" },
        "layers": [desc("application/spdx+json", sbom)],
    });
    push_and_read_back(&t, "art", "sbom", &m).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_chart() {
    let t = TestNode::start().await;
    let config = b"{\"name\":\"mychart\",\"version\":\"0.1.0\",\"apiVersion\":\"v2\"}";
    let chart = b"\x1f\x8b chart tarball";
    t.push_blob("charts/mychart", config).await;
    t.push_blob("charts/mychart", chart).await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.cncf.helm.config.v1+json", config),
        "layers": [desc("application/vnd.cncf.helm.chart.content.v1.tar+gzip", chart)],
    });
    push_and_read_back(&t, "charts/mychart", "0.1.0", &m).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_manifest_with_foreign_layer_not_uploaded() {
    let t = TestNode::start().await;
    let config = b"{\"os\":\"windows\"}";
    let layer = b"windows app layer";
    t.push_blob("win", config).await;
    t.push_blob("win", layer).await;
    let foreign = json!({
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": digest_of(b"the windows base layer, never uploaded"),
        "size": 1234567,
        "urls": ["https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:abc"],
    });
    let m = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG, config),
        "layers": [foreign, desc(DOCKER_LAYER, layer)],
    });
    push_and_read_back(&t, "win", "ltsc2022", &m).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retagging_moves_the_tag_and_keeps_the_old_manifest() {
    let t = TestNode::start().await;
    let (d1, b1) = t.push_image("r", Some("latest"), "1").await;
    let (d2, b2) = t.push_image("r", Some("latest"), "2").await;
    assert_ne!(d1, d2);
    assert_read_back(&t, "r", &["latest", &d2], OCI_MANIFEST, &b2).await;
    assert_read_back(&t, "r", &[&d1], OCI_MANIFEST, &b1).await;
    assert_eq!(t.tags("r").await, Some(vec!["latest".to_string()]));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_by_digest_that_does_not_match_is_digest_invalid() {
    let t = TestNode::start().await;
    let (_, _) = t.push_image("r", Some("keep"), "0").await;
    let m = image(&t, "r", "1").await;
    let bytes = bytes_of(&m);
    let before = t.snapshot(&["r"], &[("r", "keep")]).await;
    let wrong = digest_of(b"not the manifest");
    let r = t.put_manifest("r", &wrong, OCI_MANIFEST, &bytes).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    for reference in [wrong, digest_of(&bytes)] {
        let g = t.get(&format!("/v2/r/manifests/{reference}")).await;
        assert_error(&g, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    }
    // A malformed digest reference.
    let r = t
        .put_manifest("r", "sha256:abc", OCI_MANIFEST, &bytes)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    assert_eq!(t.snapshot(&["r"], &[("r", "keep")]).await, before);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_manifest_invalid_and_change_nothing() {
    let t = TestNode::start().await;
    t.push_image("r", Some("keep"), "0").await;
    let good = image(&t, "r", "1").await;
    let mut v1 = good.clone();
    v1["schemaVersion"] = json!(1);
    let mut no_version = good.clone();
    no_version.as_object_mut().unwrap().remove("schemaVersion");
    let mut no_config = good.clone();
    no_config.as_object_mut().unwrap().remove("config");
    let mut bad_desc = good.clone();
    bad_desc["layers"][0]["digest"] = json!("sha256:nothex");
    let mut negative = good.clone();
    negative["layers"][0]["size"] = json!(-1);
    let mut bad_data = good.clone();
    bad_data["config"]["data"] = json!("not base64!");
    let mut wrong_data = good.clone();
    wrong_data["config"]["data"] = json!("e30="); // "{}", not the config
    let mut bad_body_type = good.clone();
    bad_body_type["mediaType"] = json!("application/vnd.example.not-a-manifest");
    // The same key twice: parsers disagree on which value counts.
    let mut duplicate_key = b"{\"schemaVersion\":2,".to_vec();
    duplicate_key.extend_from_slice(&bytes_of(&good)[1..]);
    let nested_duplicate = String::from_utf8(bytes_of(&good)).unwrap().replacen(
        "\"size\":",
        "\"size\":1,\"size\":",
        1,
    );
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("duplicate key", OCI_MANIFEST, duplicate_key),
        (
            "duplicate key in a descriptor",
            OCI_MANIFEST,
            nested_duplicate.into_bytes(),
        ),
        ("not json", OCI_MANIFEST, b"{this is not json".to_vec()),
        ("json array", OCI_MANIFEST, b"[]".to_vec()),
        ("empty body", OCI_MANIFEST, Vec::new()),
        ("schemaVersion 1", OCI_MANIFEST, bytes_of(&v1)),
        ("no schemaVersion", OCI_MANIFEST, bytes_of(&no_version)),
        ("no config", OCI_MANIFEST, bytes_of(&no_config)),
        ("bad descriptor digest", OCI_MANIFEST, bytes_of(&bad_desc)),
        ("negative size", OCI_MANIFEST, bytes_of(&negative)),
        ("data not base64", OCI_MANIFEST, bytes_of(&bad_data)),
        ("data not the content", OCI_MANIFEST, bytes_of(&wrong_data)),
        (
            "content type vs mediaType",
            DOCKER_MANIFEST,
            bytes_of(&good),
        ),
        ("index content type", OCI_INDEX, bytes_of(&good)),
        ("unsupported content type", "text/plain", bytes_of(&good)),
        ("unsupported body mediaType", "", bytes_of(&bad_body_type)),
    ];
    for reference in ["new", "keep"] {
        let before = t.snapshot(&["r"], &[("r", "keep")]).await;
        for (what, ct, body) in &cases {
            let r = t.put_manifest("r", reference, ct, body).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {:?}", r.body);
            assert_eq!(error_code(&r), "MANIFEST_INVALID", "{what}");
        }
        assert_eq!(t.snapshot(&["r"], &[("r", "keep")]).await, before);
    }
    assert_error(
        &t.get("/v2/r/manifests/new").await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    );
    // Nothing was created in a repository that did not exist either.
    let before = t.catalog().await;
    let r = t.put_manifest("fresh", "t", OCI_MANIFEST, b"{").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID");
    assert_eq!(t.catalog().await, before);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tag_is_refused() {
    let t = TestNode::start().await;
    let m = image(&t, "r", "1").await;
    let before = t.snapshot(&["r"], &[]).await;
    let long = "t".repeat(129);
    for tag in ["-dash", ".dot", long.as_str(), "a+b"] {
        let r = t.put_manifest("r", tag, OCI_MANIFEST, &bytes_of(&m)).await;
        r.expect(StatusCode::BAD_REQUEST);
        let code = error_code(&r);
        assert!(
            code == "MANIFEST_INVALID" || code == "TAG_INVALID",
            "{tag}: {code}"
        );
    }
    assert_eq!(t.snapshot(&["r"], &[]).await, before);
    // The longest valid tag works.
    let longest = "t".repeat(128);
    t.push_manifest("r", &longest, &m).await;
    assert_eq!(t.tags("r").await, Some(vec![longest]));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_blobs_are_manifest_blob_unknown_and_change_nothing() {
    let t = TestNode::start().await;
    t.push_image("r", Some("keep"), "0").await;
    let config = b"{\"c\":1}";
    let layer = b"a layer";
    t.push_blob("r", config).await;
    // The layer is in another repository only: that does not count.
    t.push_blob("other", layer).await;
    let no_layer = oci_manifest(config, &[layer]);
    let no_config = oci_manifest(b"{\"never\":\"pushed\"}", &[]);
    for (what, m, missing) in [
        ("layer", &no_layer, digest_of(layer)),
        ("config", &no_config, digest_of(b"{\"never\":\"pushed\"}")),
    ] {
        let before = t.snapshot(&["r"], &[("r", "keep")]).await;
        for reference in [
            "keep".to_string(),
            "new".to_string(),
            digest_of(&bytes_of(m)),
        ] {
            let r = t
                .put_manifest("r", &reference, OCI_MANIFEST, &bytes_of(m))
                .await;
            assert_error(&r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN");
            assert_eq!(
                r.json()["errors"][0]["detail"]["digest"],
                json!(missing),
                "{what}: the detail names the missing blob"
            );
        }
        assert_eq!(t.snapshot(&["r"], &[("r", "keep")]).await, before, "{what}");
        let g = t
            .get(&format!("/v2/r/manifests/{}", digest_of(&bytes_of(m))))
            .await;
        assert_error(&g, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    }
    // After uploading the layer the same manifest is accepted.
    t.push_blob("r", layer).await;
    t.push_manifest("r", "new", &no_layer).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_with_missing_child_is_manifest_blob_unknown() {
    let t = TestNode::start().await;
    let (present, present_bytes) = t.push_image("r", Some("keep"), "0").await;
    // A child that exists only in another repository does not count either.
    let (elsewhere, elsewhere_bytes) = t.push_image("other", None, "1").await;
    let absent = json!({ "mediaType": OCI_MANIFEST, "digest": ABSENT_DIGEST, "size": 10 });
    for (child, docker) in [
        (absent.clone(), false),
        (
            json!({ "mediaType": OCI_MANIFEST, "digest": elsewhere, "size": elsewhere_bytes.len() }),
            false,
        ),
        (
            json!({ "mediaType": DOCKER_MANIFEST, "digest": ABSENT_DIGEST, "size": 10 }),
            true,
        ),
    ] {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": if docker { DOCKER_LIST } else { OCI_INDEX },
            "manifests": [
                { "mediaType": OCI_MANIFEST, "digest": present, "size": present_bytes.len() },
                child,
            ],
        });
        let before = t.snapshot(&["r"], &[("r", "keep")]).await;
        let r = t
            .put_manifest(
                "r",
                "idx",
                index["mediaType"].as_str().unwrap(),
                &bytes_of(&index),
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN");
        assert_eq!(t.snapshot(&["r"], &[("r", "keep")]).await, before);
    }
    t.stop().await;
}

/// A descriptor whose `size` is not the size of the content its digest names is refused with
/// 400 `MANIFEST_INVALID` (the content is known, so not `MANIFEST_BLOB_UNKNOWN`; image-spec:
/// content whose length differs from `size` must not be trusted), whether it describes a blob
/// or an index's child manifest, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_size_must_match_the_stored_content() {
    let t = TestNode::start().await;
    let (child, child_bytes) = t.push_image("r", Some("keep"), "0").await;
    let good = image(&t, "r", "1").await;
    let mut cases = Vec::new();
    for (field, delta) in [
        ("config", 1i64),
        ("config", -1),
        ("layers", 1),
        ("layers", -3),
    ] {
        let mut m = good.clone();
        let d = if field == "config" {
            &mut m["config"]
        } else {
            &mut m["layers"][0]
        };
        let real = d["size"].as_i64().unwrap();
        d["size"] = json!(real + delta);
        let digest = d["digest"].clone();
        cases.push((
            format!("{field} {delta:+}"),
            OCI_MANIFEST,
            m,
            digest,
            real + delta,
        ));
    }
    for delta in [1i64, -1] {
        let size = child_bytes.len() as i64 + delta;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{ "mediaType": OCI_MANIFEST, "digest": child, "size": size }],
        });
        cases.push((
            format!("child {delta:+}"),
            OCI_INDEX,
            index,
            json!(child),
            size,
        ));
    }
    let before = t.snapshot(&["r"], &[("r", "keep")]).await;
    for (what, media_type, m, digest, size) in &cases {
        for reference in ["new".to_string(), digest_of(&bytes_of(m))] {
            let r = t
                .put_manifest("r", &reference, media_type, &bytes_of(m))
                .await;
            assert_error(&r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID");
            let detail = &r.json()["errors"][0]["detail"];
            assert_eq!(detail["digest"], *digest, "{what}");
            assert_eq!(detail["size"], json!(size), "{what}");
        }
    }
    assert_eq!(t.snapshot(&["r"], &[("r", "keep")]).await, before);
    // With the right sizes both are accepted.
    t.push_manifest("r", "new", &good).await;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{ "mediaType": OCI_MANIFEST, "digest": child, "size": child_bytes.len() }],
    });
    t.push_manifest("r", "idx", &index).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_too_large_is_413() {
    let t = TestNode::start().await;
    t.push_image("r", Some("keep"), "0").await;
    let limit = 4 * 1024 * 1024;
    let big = sized_manifest(&t, limit + 1).await;
    let before = t.snapshot(&["r"], &[("r", "keep")]).await;
    // With a Content-Length (refused before reading) ...
    let r = t.put_manifest("r", "big", OCI_MANIFEST, &big).await;
    r.expect(StatusCode::PAYLOAD_TOO_LARGE);
    error_code(&r);
    // ... and streamed without one (refused while reading).
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/v2/r/manifests/big")
        .header("content-type", OCI_MANIFEST)
        .body(streamed(
            big.chunks(64 * 1024).map(<[u8]>::to_vec).collect(),
        ))
        .unwrap();
    let r = t.send(req).await;
    r.expect(StatusCode::PAYLOAD_TOO_LARGE);
    error_code(&r);
    assert_eq!(t.snapshot(&["r"], &[("r", "keep")]).await, before);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_of_exactly_4_mib_is_accepted() {
    let t = TestNode::start().await;
    let limit = 4 * 1024 * 1024;
    let exact = sized_manifest(&t, limit).await;
    assert_eq!(exact.len(), limit);
    let r = t.put_manifest("r", "big", OCI_MANIFEST, &exact).await;
    r.expect(StatusCode::CREATED);
    assert_read_back(&t, "r", &["big"], OCI_MANIFEST, &exact).await;
    // Streamed, without a Content-Length.
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/v2/r/manifests/big2")
        .header("content-type", OCI_MANIFEST)
        .body(Body::from_stream(futures::stream::iter(
            exact
                .chunks(100_000)
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )))
        .unwrap();
    t.send(req).await.expect(StatusCode::CREATED);
    t.stop().await;
}

/// A valid OCI manifest (blobs pushed to `r`) padded with an annotation to exactly `size` bytes.
async fn sized_manifest(t: &Client, size: usize) -> Vec<u8> {
    let mut m = image(t, "r", "big").await;
    m["annotations"] = json!({ "pad": "" });
    let base = bytes_of(&m).len();
    m["annotations"]["pad"] = json!("x".repeat(size - base));
    let bytes = bytes_of(&m);
    assert_eq!(bytes.len(), size);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_references_are_manifest_unknown() {
    let t = TestNode::start().await;
    t.push_image("r", Some("v1"), "1").await;
    for uri in [
        "/v2/r/manifests/nope".to_string(),
        format!("/v2/r/manifests/{ABSENT_DIGEST}"),
        "/v2/unknown/repo/manifests/v1".to_string(),
    ] {
        let r = t.get(&uri).await;
        r.expect(StatusCode::NOT_FOUND);
        let code = error_code(&r);
        assert!(
            code == "MANIFEST_UNKNOWN" || (uri.contains("unknown") && code == "NAME_UNKNOWN"),
            "{uri}: {code}"
        );
        t.head(&uri).await.expect(StatusCode::NOT_FOUND);
        let r = t.delete(&uri).await;
        r.expect(StatusCode::NOT_FOUND);
        let code = error_code(&r);
        assert!(
            code == "MANIFEST_UNKNOWN" || (uri.contains("unknown") && code == "NAME_UNKNOWN"),
            "{uri}: {code}"
        );
    }
    // Manifests are per repository.
    let (d, _) = t.push_image("a", Some("only-a"), "2").await;
    for uri in [
        format!("/v2/r/manifests/{d}"),
        "/v2/r/manifests/only-a".to_string(),
    ] {
        assert_error(
            &t.get(&uri).await,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        );
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tag_removes_only_the_tag() {
    let t = TestNode::start().await;
    let (d, bytes) = t.push_image("r", Some("a"), "1").await;
    t.push_manifest("r", "b", &serde_json::from_slice(&bytes).unwrap())
        .await;
    let r = t.delete("/v2/r/manifests/a").await;
    r.expect(StatusCode::ACCEPTED);
    assert_error(
        &t.get("/v2/r/manifests/a").await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    );
    assert_read_back(&t, "r", &["b", &d], OCI_MANIFEST, &bytes).await;
    assert_eq!(t.tags("r").await, Some(vec!["b".to_string()]));
    // Deleting it again finds nothing.
    assert_error(
        &t.delete("/v2/r/manifests/a").await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_digest_removes_manifest_and_its_tags() {
    let t = TestNode::start().await;
    let (d, bytes) = t.push_image("r", Some("a"), "1").await;
    t.push_manifest("r", "b", &serde_json::from_slice(&bytes).unwrap())
        .await;
    let (other, other_bytes) = t.push_image("r", Some("c"), "2").await;
    // The same manifest in another repository.
    assert_eq!(t.push_image("s", Some("a"), "1").await.0, d);
    let r = t.delete(&format!("/v2/r/manifests/{d}")).await;
    r.expect(StatusCode::ACCEPTED);
    for reference in ["a", "b", d.as_str()] {
        let uri = format!("/v2/r/manifests/{reference}");
        assert_error(
            &t.get(&uri).await,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        );
        t.head(&uri).await.expect(StatusCode::NOT_FOUND);
    }
    assert_eq!(t.tags("r").await, Some(vec!["c".to_string()]));
    assert_read_back(&t, "r", &["c", &other], OCI_MANIFEST, &other_bytes).await;
    assert_error(
        &t.delete(&format!("/v2/r/manifests/{d}")).await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    );
    // The other repository's copy is untouched.
    assert_read_back(&t, "s", &["a", &d], OCI_MANIFEST, &bytes).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_name_or_reference_on_manifest_endpoints() {
    let t = TestNode::start().await;
    let (d, bytes) = t.push_image("r", Some("v1"), "1").await;
    let before = t.snapshot(&["r"], &[("r", "v1")]).await;
    for name in ["R", "a//b", "a/../b"] {
        let uri = format!("/v2/{name}/manifests/v1");
        assert_error(&t.get(&uri).await, StatusCode::BAD_REQUEST, "NAME_INVALID");
        t.head(&uri).await.expect(StatusCode::BAD_REQUEST);
        assert_error(
            &t.delete(&uri).await,
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        );
        let r = t.put_manifest(name, "v1", OCI_MANIFEST, &bytes).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "NAME_INVALID");
    }
    assert_eq!(t.snapshot(&["r"], &[("r", "v1")]).await, before);
    assert_read_back(&t, "r", &["v1", &d], OCI_MANIFEST, &bytes).await;
    t.stop().await;
}

/// A reference that is neither a tag nor a digest names nothing that can exist: GET and HEAD
/// answer 404 `MANIFEST_UNKNOWN` (the OCI conformance suite asks for `.INVALID_MANIFEST_NAME`
/// that way), and so does DELETE (the spec: a manifest that is not found is 404). Only a PUT,
/// which would create the name, refuses it with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_references_are_manifest_unknown_except_on_put() {
    let t = TestNode::start().await;
    let (_, bytes) = t.push_image("r", Some("v1"), "1").await;
    let before = t.snapshot(&["r"], &[("r", "v1")]).await;
    for bad in [
        ".INVALID_MANIFEST_NAME",
        "-dash",
        "a+b",
        "a:b",
        "sha256:abc",
        "sha256:totallywrong",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:",
    ] {
        let uri = format!("/v2/r/manifests/{bad}");
        for r in [t.get(&uri).await, t.delete(&uri).await] {
            assert_error(&r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
            assert_eq!(r.json()["errors"][0]["detail"]["reference"], json!(bad));
        }
        let h = t.head(&uri).await;
        h.expect(StatusCode::NOT_FOUND);
        assert!(h.body.is_empty(), "{bad}: HEAD has no body");
        let r = t.put_manifest("r", bad, OCI_MANIFEST, &bytes).await;
        r.expect(StatusCode::BAD_REQUEST);
        let code = error_code(&r);
        let expected = if bad.contains(':') {
            "DIGEST_INVALID"
        } else {
            "MANIFEST_INVALID"
        };
        assert_eq!(code, expected, "PUT {bad}");
    }
    assert_eq!(t.snapshot(&["r"], &[("r", "v1")]).await, before);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_blob_cannot_be_referenced_by_a_new_manifest() {
    let t = TestNode::start().await;
    let config = b"{\"c\":2}";
    let layer = b"layer to delete";
    t.push_blob("r", config).await;
    let ld = t.push_blob("r", layer).await;
    t.delete(&format!("/v2/r/blobs/{ld}"))
        .await
        .expect(StatusCode::ACCEPTED);
    let m = oci_manifest(config, &[layer]);
    let r = t.put_manifest("r", "t", OCI_MANIFEST, &bytes_of(&m)).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_without_index_types_gets_the_linux_amd64_image_of_a_tagged_index() {
    let t = TestNode::start().await;
    let [(amd, amd_bytes), (arm, arm_bytes)] = linux_images(&t, ["amd64", "arm64"]).await;
    // The amd64 entry comes second: the choice is by platform, not position.
    let index = index_of(&[(&arm, &arm_bytes, "arm64"), (&amd, &amd_bytes, "amd64")]);
    let index_bytes = bytes_of(&index);
    let idx = t.push_manifest("r", "multi", &index).await;
    let get = |accept: Vec<&'static str>, reference: String| {
        let t = t.client.clone();
        async move {
            let h: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
            let r = t
                .get_with(&format!("/v2/r/manifests/{reference}"), &h)
                .await;
            r.expect(StatusCode::OK);
            r
        }
    };
    // Only image manifests accepted (one header, with parameters and other types).
    for accept in [
        vec![OCI_MANIFEST],
        vec!["application/json, application/vnd.oci.image.manifest.v1+json; q=0.5"],
        vec![DOCKER_MANIFEST, OCI_MANIFEST],
    ] {
        let r = get(accept.clone(), "multi".into()).await;
        assert_eq!(&r.body[..], &amd_bytes[..], "{accept:?}");
        assert_eq!(r.header(DIGEST_HEADER), Some(amd.as_str()), "{accept:?}");
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST), "{accept:?}");
    }
    // The index itself when it is accepted, when anything is, or when nothing is said.
    for accept in [vec![OCI_MANIFEST, OCI_INDEX], vec!["*/*"], vec![]] {
        let r = get(accept.clone(), "multi".into()).await;
        assert_eq!(&r.body[..], &index_bytes[..], "{accept:?}");
        assert_eq!(r.header(DIGEST_HEADER), Some(idx.as_str()));
        assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    }
    // By digest the stored manifest is returned whatever Accept says.
    let r = get(vec![OCI_MANIFEST], idx.clone()).await;
    assert_eq!(&r.body[..], &index_bytes[..]);
    // An image manifest is returned as stored even if its type is not accepted.
    t.push_manifest("r", "single", &serde_json::from_slice(&amd_bytes).unwrap())
        .await;
    let r = get(vec![DOCKER_MANIFEST], "single".into()).await;
    assert_eq!(&r.body[..], &amd_bytes[..]);
    t.stop().await;
}
