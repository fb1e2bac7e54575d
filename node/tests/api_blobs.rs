//! Blob reads and deletes: `HEAD`/`GET`/`DELETE /v2/<name>/blobs/<digest>`, ranges.

mod common;

use common::*;
use http::StatusCode;

const CONTENT: &[u8] = b"0123456789abcdefghij"; // 20 bytes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_reports_size_and_digest_without_body() {
    let t = TestNode::start().await;
    let d = t.push_blob("r", CONTENT).await;
    let r = t.head(&format!("/v2/r/blobs/{d}")).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("20"));
    assert_eq!(r.header(DIGEST_HEADER), Some(d.as_str()));
    assert!(r.body.is_empty(), "HEAD has no body");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_exact_bytes() {
    let t = TestNode::start().await;
    let d = t.push_blob("r", CONTENT).await;
    let r = t.get(&format!("/v2/r/blobs/{d}")).await;
    r.expect(StatusCode::OK);
    assert_eq!(&r.body[..], CONTENT);
    assert_eq!(r.header("content-length"), Some("20"));
    assert_eq!(r.header(DIGEST_HEADER), Some(d.as_str()));
    assert_eq!(r.header("content-range"), None, "no range asked");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_larger_blob_streams_every_byte() {
    let t = TestNode::start().await;
    // Several MiB, so the body comes in many frames.
    let content: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    let d = t.push_blob("r", &content).await;
    let r = t.get(&format!("/v2/r/blobs/{d}")).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body.len(), content.len());
    assert_eq!(digest_of(&r.body), d);
    // Ranges at unaligned offsets that span internal read windows and pages.
    let size = content.len() as u64;
    for (start, end) in [
        (1u64, 4096u64),
        (4095, 4097),
        (1_048_575, 2_097_153),
        (2_097_151, 2_097_152),
        (3, size - 2),
        (size - 5, size - 1),
    ] {
        let r = t
            .get_with(
                &format!("/v2/r/blobs/{d}"),
                &[("range", &format!("bytes={start}-{end}"))],
            )
            .await;
        r.expect(StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{end}/{size}").as_str())
        );
        assert!(
            r.body[..] == content[start as usize..=end as usize],
            "bytes {start}-{end} differ"
        );
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_get_206_with_content_range() {
    let t = TestNode::start().await;
    let d = t.push_blob("r", CONTENT).await;
    let uri = format!("/v2/r/blobs/{d}");
    // (Range header, expected Content-Range, expected bytes)
    let cases: [(&str, &str, &[u8]); 5] = [
        ("bytes=2-5", "bytes 2-5/20", &CONTENT[2..=5]),
        ("bytes=0-0", "bytes 0-0/20", &CONTENT[0..1]),
        ("bytes=15-", "bytes 15-19/20", &CONTENT[15..]),
        ("bytes=-3", "bytes 17-19/20", &CONTENT[17..]),
        // A last position past the end is clamped to the last byte.
        ("bytes=10-1000", "bytes 10-19/20", &CONTENT[10..]),
    ];
    for (range, content_range, bytes) in cases {
        let r = t.get_with(&uri, &[("range", range)]).await;
        r.expect(StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.header("content-range"), Some(content_range), "{range}");
        assert_eq!(&r.body[..], bytes, "{range}");
        let len = bytes.len().to_string();
        assert_eq!(r.header("content-length"), Some(len.as_str()), "{range}");
        assert_eq!(r.header(DIGEST_HEADER), Some(d.as_str()), "{range}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsatisfiable_range_is_416_with_size() {
    let t = TestNode::start().await;
    let d = t.push_blob("r", CONTENT).await;
    let uri = format!("/v2/r/blobs/{d}");
    for range in ["bytes=20-", "bytes=25-30", "bytes=-0"] {
        let r = t.get_with(&uri, &[("range", range)]).await;
        r.expect(StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.header("content-range"), Some("bytes */20"), "{range}");
        error_code(&r);
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_range_is_ignored_and_whole_blob_served() {
    let t = TestNode::start().await;
    let d = t.push_blob("r", CONTENT).await;
    let uri = format!("/v2/r/blobs/{d}");
    for range in ["items=0-3", "bytes=5-2", "bytes=0-1,4-5", "garbage"] {
        let r = t.get_with(&uri, &[("range", range)]).await;
        r.expect(StatusCode::OK);
        assert_eq!(&r.body[..], CONTENT, "{range}");
        assert_eq!(r.header("content-range"), None, "{range}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_blob_reads_and_ranges() {
    let t = TestNode::start().await;
    let d = t.push_blob("r", b"").await;
    assert_eq!(
        d,
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let uri = format!("/v2/r/blobs/{d}");
    let r = t.head(&uri).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("0"));
    let r = t.get(&uri).await;
    r.expect(StatusCode::OK);
    assert!(r.body.is_empty());
    let r = t.get_with(&uri, &[("range", "bytes=0-")]).await;
    r.expect(StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */0"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_blob_is_404_blob_unknown() {
    let t = TestNode::start().await;
    t.push_blob("r", CONTENT).await;
    let uri = format!("/v2/r/blobs/{ABSENT_DIGEST}");
    let r = t.get(&uri).await;
    assert_error(&r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    t.head(&uri).await.expect(StatusCode::NOT_FOUND);
    assert_error(&t.delete(&uri).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    // In a repository that does not exist at all.
    let r = t.get(&format!("/v2/nope/blobs/{ABSENT_DIGEST}")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_of_another_repository_is_not_served() {
    let t = TestNode::start().await;
    let d = t.push_blob("a", CONTENT).await;
    t.push_blob("b", b"something else").await;
    for repo in ["b", "c", "a/x"] {
        let uri = format!("/v2/{repo}/blobs/{d}");
        assert_error(&t.get(&uri).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
        t.head(&uri).await.expect(StatusCode::NOT_FOUND);
        let r = t.get_with(&uri, &[("range", "bytes=0-1")]).await;
        assert_error(&r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
        assert_error(&t.delete(&uri).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    }
    // Still served where it was pushed.
    t.get(&format!("/v2/a/blobs/{d}"))
        .await
        .expect(StatusCode::OK);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_unlinks_from_this_repository_only() {
    let t = TestNode::start().await;
    let d = t.push_blob("a", CONTENT).await;
    t.push_blob("b", CONTENT).await;
    let r = t.delete(&format!("/v2/a/blobs/{d}")).await;
    r.expect(StatusCode::ACCEPTED);
    let uri = format!("/v2/a/blobs/{d}");
    assert_error(&t.get(&uri).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    t.head(&uri).await.expect(StatusCode::NOT_FOUND);
    // A second delete finds nothing.
    assert_error(&t.delete(&uri).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    // The other repository keeps it.
    let r = t.get(&format!("/v2/b/blobs/{d}")).await;
    r.expect(StatusCode::OK);
    assert_eq!(&r.body[..], CONTENT);
    // Pushing it again makes it visible again.
    t.push_blob("a", CONTENT).await;
    t.get(&uri).await.expect(StatusCode::OK);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_digest_or_name_on_blob_endpoints() {
    let t = TestNode::start().await;
    let d = t.push_blob("r", CONTENT).await;
    for bad in [
        "sha256:abc",
        "sha256:ZZZZ",
        "notadigest",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    ] {
        let uri = format!("/v2/r/blobs/{bad}");
        assert_error(
            &t.get(&uri).await,
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        );
        t.head(&uri).await.expect(StatusCode::BAD_REQUEST);
        assert_error(
            &t.delete(&uri).await,
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        );
    }
    let uri = format!("/v2/R/blobs/{d}");
    assert_error(&t.get(&uri).await, StatusCode::BAD_REQUEST, "NAME_INVALID");
    assert_error(
        &t.delete(&uri).await,
        StatusCode::BAD_REQUEST,
        "NAME_INVALID",
    );
    // Nothing was deleted by the failed requests.
    t.get(&format!("/v2/r/blobs/{d}"))
        .await
        .expect(StatusCode::OK);
    t.stop().await;
}
