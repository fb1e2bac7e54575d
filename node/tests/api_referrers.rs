//! The referrers API: `GET /v2/<name>/referrers/<digest>`, and `OCI-Subject` on manifest PUT.

mod common;

use common::*;
use http::StatusCode;
use serde_json::{Value, json};

const SBOM: &str = "application/vnd.example.sbom.v1+json";
const SIG: &str = "application/vnd.example.signature.v1";

/// The `?artifactType=` query of a media type (`+` percent-encoded: in a query it means space).
fn filter(artifact_type: &str) -> String {
    format!("?artifactType={}", artifact_type.replace('+', "%2B"))
}

/// Pushes an artifact referring to `subject` (empty config, one layer); returns its digest and
/// size. `artifact_type` empty: none, so the config media type is the effective type.
async fn push_referrer(
    t: &Client,
    repo: &str,
    subject: (&str, usize),
    artifact_type: &str,
    annotations: Value,
    seed: &str,
) -> (String, usize) {
    let layer = format!("payload {seed}").into_bytes();
    t.push_blob(repo, &layer).await;
    let config = format!("{{\"kind\":\"{seed}\"}}").into_bytes();
    t.push_blob(repo, &config).await;
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": if artifact_type.is_empty() {
            desc("application/vnd.example.config.v1+json", &config)
        } else {
            t.push_blob(repo, b"{}").await;
            desc(OCI_EMPTY, b"{}")
        },
        "layers": [desc("application/octet-stream", &layer)],
        "subject": { "mediaType": OCI_MANIFEST, "digest": subject.0, "size": subject.1 },
    });
    if !artifact_type.is_empty() {
        m["artifactType"] = json!(artifact_type);
    }
    if !annotations.is_null() {
        m["annotations"] = annotations;
    }
    let bytes = bytes_of(&m);
    let d = digest_of(&bytes);
    let r = t.put_manifest(repo, &d, OCI_MANIFEST, &bytes).await;
    r.expect(StatusCode::CREATED);
    assert_eq!(
        r.header("oci-subject"),
        Some(subject.0),
        "OCI-Subject on PUT"
    );
    assert_eq!(r.header(DIGEST_HEADER), Some(d.as_str()));
    (d, bytes.len())
}

/// GETs the referrers of `subject`; checks the index envelope and returns its descriptors
/// sorted by digest.
async fn referrers(t: &Client, repo: &str, subject: &str, query: &str) -> (Resp, Vec<Value>) {
    let r = t
        .get(&format!("/v2/{repo}/referrers/{subject}{query}"))
        .await;
    r.expect(StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let mut ds = v["manifests"].as_array().expect("manifests array").clone();
    ds.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    (r, ds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_index_lists_every_referrer_with_its_descriptor() {
    let t = TestNode::start().await;
    let (subject, sbytes) = t.push_image("r", Some("v1"), "base").await;
    let s = (subject.as_str(), sbytes.len());
    let ann = json!({ "org.opencontainers.image.created": "2024-01-01T00:00:00Z" });
    let (sbom, sbom_len) = push_referrer(&t, "r", s, SBOM, ann.clone(), "sbom").await;
    let (sig, sig_len) = push_referrer(&t, "r", s, SIG, Value::Null, "sig").await;
    let (plain, plain_len) = push_referrer(&t, "r", s, "", Value::Null, "plain").await;

    let (r, ds) = referrers(&t, "r", &subject, "").await;
    assert_eq!(r.header("oci-filters-applied"), None, "no filter asked");
    let mut expected = vec![
        json!({ "mediaType": OCI_MANIFEST, "digest": sbom, "size": sbom_len,
                "artifactType": SBOM, "annotations": ann }),
        json!({ "mediaType": OCI_MANIFEST, "digest": sig, "size": sig_len,
                "artifactType": SIG }),
        // No artifactType: the config's media type stands in.
        json!({ "mediaType": OCI_MANIFEST, "digest": plain, "size": plain_len,
                "artifactType": "application/vnd.example.config.v1+json" }),
    ];
    expected.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    assert_eq!(ds, expected);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_referrer_without_artifact_type_has_none() {
    let t = TestNode::start().await;
    let (subject, sbytes) = t.push_image("r", Some("v1"), "base").await;
    let (child, cbytes) = t.push_image("r", None, "child").await;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{ "mediaType": OCI_MANIFEST, "digest": child, "size": cbytes.len() }],
        "subject": { "mediaType": OCI_MANIFEST, "digest": subject, "size": sbytes.len() },
        "annotations": { "k": "v" },
    });
    let bytes = bytes_of(&index);
    let r = t.put_manifest("r", "idx", OCI_INDEX, &bytes).await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.header("oci-subject"), Some(subject.as_str()));
    let (_, ds) = referrers(&t, "r", &subject, "").await;
    assert_eq!(
        ds,
        vec![json!({ "mediaType": OCI_INDEX, "digest": digest_of(&bytes),
                     "size": bytes.len(), "annotations": { "k": "v" } })]
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_type_filter() {
    let t = TestNode::start().await;
    let (subject, sbytes) = t.push_image("r", Some("v1"), "base").await;
    let s = (subject.as_str(), sbytes.len());
    let (sbom1, _) = push_referrer(&t, "r", s, SBOM, Value::Null, "sbom1").await;
    let (sbom2, _) = push_referrer(&t, "r", s, SBOM, Value::Null, "sbom2").await;
    push_referrer(&t, "r", s, SIG, Value::Null, "sig").await;

    let (r, ds) = referrers(&t, "r", &subject, &filter(SBOM)).await;
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let mut want = vec![sbom1, sbom2];
    want.sort();
    let got: Vec<&str> = ds.iter().map(|d| d["digest"].as_str().unwrap()).collect();
    assert_eq!(got, want);
    assert!(ds.iter().all(|d| d["artifactType"] == SBOM));

    // A type nobody has: an empty, filtered list.
    let (r, ds) = referrers(&t, "r", &subject, &filter("application/x-none")).await;
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    assert!(ds.is_empty());
    // An empty filter is no filter.
    let (r, ds) = referrers(&t, "r", &subject, "?artifactType=").await;
    assert_eq!(r.header("oci-filters-applied"), None);
    assert_eq!(ds.len(), 3);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_need_not_exist() {
    let t = TestNode::start().await;
    let (d, len) = push_referrer(&t, "r", (ABSENT_DIGEST, 123), SIG, Value::Null, "x").await;
    let (_, ds) = referrers(&t, "r", ABSENT_DIGEST, "").await;
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0]["digest"], d);
    assert_eq!(ds[0]["size"], len);
    // The subject is still unknown as a manifest.
    let g = t.get(&format!("/v2/r/manifests/{ABSENT_DIGEST}")).await;
    assert_error(&g, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_referrers_is_an_empty_index_never_404() {
    let t = TestNode::start().await;
    let (subject, _) = t.push_image("r", Some("v1"), "base").await;
    for (repo, digest) in [
        ("r", subject.as_str()),
        ("r", ABSENT_DIGEST),
        ("unknown/repo", ABSENT_DIGEST),
    ] {
        let (_, ds) = referrers(&t, repo, digest, "").await;
        assert!(ds.is_empty(), "{repo} {digest}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_per_repository() {
    let t = TestNode::start().await;
    let (subject, sbytes) = t.push_image("a", Some("v1"), "base").await;
    push_referrer(&t, "a", (&subject, sbytes.len()), SIG, Value::Null, "sig").await;
    t.push_image("b", Some("v1"), "base").await;
    let (_, ds) = referrers(&t, "b", &subject, "").await;
    assert!(ds.is_empty());
    let (_, ds) = referrers(&t, "a", &subject, "").await;
    assert_eq!(ds.len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_referrer_removes_it_from_the_list() {
    let t = TestNode::start().await;
    let (subject, sbytes) = t.push_image("r", Some("v1"), "base").await;
    let s = (subject.as_str(), sbytes.len());
    let (gone, _) = push_referrer(&t, "r", s, SBOM, Value::Null, "gone").await;
    let (kept, _) = push_referrer(&t, "r", s, SIG, Value::Null, "kept").await;
    // Tag the one to delete: deleting the tag alone keeps it a referrer.
    let g = t.get(&format!("/v2/r/manifests/{gone}")).await;
    t.put_manifest("r", "sbom", OCI_MANIFEST, &g.body)
        .await
        .expect(StatusCode::CREATED);
    t.delete("/v2/r/manifests/sbom")
        .await
        .expect(StatusCode::ACCEPTED);
    let (_, ds) = referrers(&t, "r", &subject, "").await;
    assert_eq!(ds.len(), 2);

    let (_, ds) = referrers(&t, "r", &subject, &filter(SBOM)).await;
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0]["digest"], gone);

    t.delete(&format!("/v2/r/manifests/{gone}"))
        .await
        .expect(StatusCode::ACCEPTED);
    let (_, ds) = referrers(&t, "r", &subject, "").await;
    let got: Vec<&str> = ds.iter().map(|d| d["digest"].as_str().unwrap()).collect();
    assert_eq!(got, vec![kept.as_str()]);
    let (_, ds) = referrers(&t, "r", &subject, &filter(SBOM)).await;
    assert!(ds.is_empty());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_push_with_subject_adds_no_referrer() {
    let t = TestNode::start().await;
    let (subject, sbytes) = t.push_image("r", Some("v1"), "base").await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIG,
        "config": desc(OCI_EMPTY, b"{}"), // never pushed
        "layers": [],
        "subject": { "mediaType": OCI_MANIFEST, "digest": subject, "size": sbytes.len() },
    });
    let r = t
        .put_manifest("r", "sig", OCI_MANIFEST, &bytes_of(&m))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(r.header("oci-subject"), None);
    let (_, ds) = referrers(&t, "r", &subject, "").await;
    assert!(ds.is_empty());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_without_subject_has_no_oci_subject_header() {
    let t = TestNode::start().await;
    let config = b"{}";
    t.push_blob("r", config).await;
    let m = oci_manifest(config, &[]);
    let r = t.put_manifest("r", "t", OCI_MANIFEST, &bytes_of(&m)).await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.header("oci-subject"), None);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_digest_or_name_is_400() {
    let t = TestNode::start().await;
    for bad in ["sha256:abc", "latest", "sha256:"] {
        let r = t.get(&format!("/v2/r/referrers/{bad}")).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    }
    let r = t.get(&format!("/v2/Bad/referrers/{ABSENT_DIGEST}")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "NAME_INVALID");
    t.stop().await;
}
