//! Upload sessions under careless and hostile clients (issue 8): a stalled request blocks
//! nobody, a client that hangs up cannot leave a session or the blob store inconsistent, a
//! chunk must carry the length it declares, sessions are bounded per node and per client,
//! and idle sessions hold bounded memory. In-process router, real node.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use tokio::sync::mpsc;

/// A node in a directory the test can look into.
struct Node {
    client: Client,
    node: berth_node::Node,
    dir: tempfile::TempDir,
}

impl Node {
    async fn start(tune: impl FnOnce(&mut berth_node::config::Config)) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tune(&mut config);
        let node = berth_node::Node::start(&config, Duration::from_secs(10))
            .await
            .unwrap();
        Node {
            client: Client { app: node.router() },
            node,
            dir,
        }
    }

    fn uploads_dir_is_empty(&self) -> bool {
        std::fs::read_dir(self.dir.path().join("uploads"))
            .unwrap()
            .next()
            .is_none()
    }

    /// Digests of every blob file on disk.
    fn blob_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.dir.path().join("blobs").join("sha256");
        for prefix in std::fs::read_dir(root).unwrap() {
            for f in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
                let name = f.unwrap().file_name().into_string().unwrap();
                out.push(format!("sha256:{name}"));
            }
        }
        out
    }
}

/// A request body fed by the test: what it sends arrives, and the body stays open (a stalled
/// client) until the sender is dropped.
fn fed_body() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, Body) {
    let (tx, rx) = mpsc::channel(4);
    (
        tx,
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
}

fn patch_with(location: &str, headers: &[(&str, &str)], body: Body) -> http::Request<Body> {
    let mut b = http::Request::builder().method(Method::PATCH).uri(location);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).unwrap()
}

/// Polls `cond` every 20 ms for up to 10 s.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Answers within `limit` or fails the test: the request must not wait behind a stalled one.
async fn at_once<T>(what: &str, limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_leaves_the_session_answering() {
    let n = Node::start(|_| {}).await;
    let location = n.client.start_upload("r").await;
    let (tx, body) = fed_body();
    let stalled = tokio::spawn({
        let c = n.client.clone();
        let req = patch_with(&location, &[], body);
        async move { c.send(req).await }
    });
    // 2 MiB + a little arrive, then the client goes silent.
    tx.send(Ok(Bytes::from(vec![1u8; 2 * 1024 * 1024 + 10])))
        .await
        .unwrap();
    // A competing write is refused at once with a clear error while the other one writes.
    // (Its range is out of order, so before the stalled request holds the session it is
    // refused with 416 and changes nothing.)
    eventually("a competing PATCH is refused", async || {
        let r = n.client.patch(&location, Some("9-9"), b"x").await;
        if r.status == StatusCode::CONFLICT {
            assert_error(&r, StatusCode::CONFLICT, "BLOB_UPLOAD_INVALID");
            true
        } else {
            false
        }
    })
    .await;
    let limit = Duration::from_secs(5);
    let status = at_once("a status GET", limit, n.client.get(&location)).await;
    status.expect(StatusCode::NO_CONTENT);
    assert_eq!(
        status.header("range"),
        Some("0-0"),
        "offset of the last completed request"
    );
    let cancelled = at_once("a DELETE", limit, n.client.delete(&location)).await;
    cancelled.expect(StatusCode::NO_CONTENT);
    // The stalled request is stopped and its staging file removed, though its client is
    // still connected and silent.
    let r = at_once("the cancelled PATCH", limit, stalled)
        .await
        .unwrap();
    assert_error(&r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
    eventually("the staging file is removed", async || {
        n.uploads_dir_is_empty()
    })
    .await;
    n.client.get(&location).await.expect(StatusCode::NOT_FOUND);
    drop(tx);
    n.node.stop().await;
}

/// Slow clients hold no thread: with a blocking pool of 6 threads, a dozen stalled uploads
/// (each past its first full block) and a dozen downloads whose clients never read leave small
/// reads, large pushes and manifest writes working. (Before, each held a blocking thread.)
#[test]
fn slow_clients_hold_no_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(6)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n = Node::start(|_| {}).await;
        let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let big_digest = n.client.push_blob("r", &big).await;
        let small_digest = n.client.push_blob("r", b"nine byte").await;
        let mut feeders = Vec::new();
        let mut stalled = Vec::new();
        for _ in 0..12 {
            let location = n.client.start_upload("r").await;
            let (tx, body) = fed_body();
            let req = patch_with(&location, &[], body);
            let c = n.client.clone();
            stalled.push(tokio::spawn(async move { c.send(req).await }));
            tx.send(Ok(Bytes::from(vec![3u8; 1024 * 1024 + 7])))
                .await
                .unwrap();
            feeders.push(tx);
        }
        let mut unread = Vec::new();
        for _ in 0..12 {
            let req = request(
                Method::GET,
                &format!("/v2/r/blobs/{big_digest}"),
                &[],
                vec![],
            );
            let resp = tower::ServiceExt::oneshot(n.client.app.clone(), req)
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            unread.push(resp); // never read
        }
        let limit = Duration::from_secs(20);
        let small = at_once(
            "a 9-byte blob GET",
            limit,
            n.client.get(&format!("/v2/r/blobs/{small_digest}")),
        )
        .await;
        small.expect(StatusCode::OK);
        assert_eq!(&small.body[..], b"nine byte");
        let pushed: Vec<u8> = (0..3 * 1024 * 1024 / 2u32)
            .map(|i| (i % 13) as u8)
            .collect();
        at_once("a 1.5 MiB push", limit, n.client.push_blob("r", &pushed)).await;
        let whole = at_once(
            "a 4 MiB blob GET",
            limit,
            n.client.get(&format!("/v2/r/blobs/{big_digest}")),
        )
        .await;
        assert_eq!(whole.body.len(), big.len());
        at_once(
            "a manifest push",
            limit,
            n.client.push_image("r", Some("t"), "slow-clients"),
        )
        .await;
        drop(unread);
        drop(feeders);
        for s in stalled {
            s.await.unwrap().expect(StatusCode::ACCEPTED);
        }
        n.node.stop().await;
    });
}

/// A client that sends a whole chunk (or a final PUT) and hangs up before the answer: the
/// session stays consistent with its staging file, and every blob file has its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_cannot_poison_a_session() {
    let n = Node::start(|_| {}).await;
    for round in 0..12u32 {
        let content: Vec<u8> = (0..(3 * 1024 * 1024 + round * 1000))
            .map(|i| (i.wrapping_mul(round + 7) % 251) as u8)
            .collect();
        let location = n.client.start_upload("r").await;
        let first = &content[..content.len() / 2];
        // PATCH the first half; the client vanishes once the body is sent.
        let (tx, body) = fed_body();
        let req = patch_with(&location, &[], body);
        let c = n.client.clone();
        let task = tokio::spawn(async move { c.send(req).await });
        tx.send(Ok(Bytes::copy_from_slice(first))).await.unwrap();
        drop(tx);
        for _ in 0..round {
            tokio::task::yield_now().await;
        }
        task.abort();
        // Whatever the server got, the session says it and the next chunk continues from it
        // (a request still finishing in the background answers 409, an offset that moved
        // meanwhile 416: the client asks again).
        let tail = &content[content.len() - 1000..];
        eventually("the next chunk continues the session", async || {
            let s = n.client.get(&location).await;
            s.expect(StatusCode::NO_CONTENT);
            let range = s.header("range").unwrap();
            let end: u64 = range.split_once('-').unwrap().1.parse().unwrap();
            let offset = if range == "0-0" { 0 } else { end + 1 };
            assert!(
                offset == 0 || offset == first.len() as u64,
                "round {round}: the session stands at {offset}"
            );
            let mid = &content[offset as usize..content.len() - 1000];
            let range = format!("{offset}-{}", offset + mid.len() as u64 - 1);
            let r = n.client.patch(&location, Some(&range), mid).await;
            match r.status {
                StatusCode::ACCEPTED => true,
                StatusCode::CONFLICT | StatusCode::RANGE_NOT_SATISFIABLE => false,
                other => panic!("round {round}: PATCH answered {other}: {r:?}"),
            }
        })
        .await;
        // The final PUT; its client vanishes too.
        let d = digest_of(&content);
        let req = request(
            Method::PUT,
            &format!("{location}?digest={d}"),
            &[],
            tail.to_vec(),
        );
        let c = n.client.clone();
        let task = tokio::spawn(async move { c.send(req).await });
        for _ in 0..round {
            tokio::task::yield_now().await;
        }
        task.abort();
        // Either the PUT never reached the registry (the session is still open: finish it) or
        // it goes on without its client and stores and records the blob.
        eventually("the blob is stored and recorded", async || {
            if n.client.head(&format!("/v2/r/blobs/{d}")).await.status == StatusCode::OK {
                return true;
            }
            let r = n.client.finish(&location, &d, tail).await;
            match r.status {
                StatusCode::CREATED => true,
                StatusCode::CONFLICT | StatusCode::NOT_FOUND => false,
                other => panic!("round {round}: PUT answered {other}: {r:?}"),
            }
        })
        .await;
        let got = n.client.get(&format!("/v2/r/blobs/{d}")).await;
        got.expect(StatusCode::OK);
        assert_eq!(&got.body[..], &content[..], "round {round}");
    }
    // No blob file without its record.
    for d in n.blob_files() {
        n.client
            .head(&format!("/v2/r/blobs/{d}"))
            .await
            .expect(StatusCode::OK);
    }
    eventually("no staging file is left", async || n.uploads_dir_is_empty()).await;
    n.node.stop().await;
}

#[tokio::test]
async fn a_chunk_must_carry_the_length_it_declares() {
    let n = Node::start(|_| {}).await;
    let c = &n.client;
    // Chunked transfer encoding (no Content-Length): the declared range still binds.
    let location = c.start_upload("r").await;
    let req = patch_with(
        &location,
        &[("content-range", "0-99")],
        streamed(vec![vec![5u8; 1000], vec![5u8; 2000]]),
    );
    assert_error(&c.send(req).await, StatusCode::BAD_REQUEST, "SIZE_INVALID");
    let s = c.get(&location).await;
    assert_eq!(
        s.header("range"),
        Some("0-99"),
        "bytes up to the declared end are kept"
    );
    // Too short.
    let req = patch_with(
        &location,
        &[("content-range", "100-199")],
        streamed(vec![vec![5u8; 30], vec![5u8; 20]]),
    );
    assert_error(&c.send(req).await, StatusCode::BAD_REQUEST, "SIZE_INVALID");
    assert_eq!(c.get(&location).await.header("range"), Some("0-149"));
    // A range whose length does not fit in 64 bits, with an empty body.
    let req = patch_with(
        &location,
        &[("content-range", "150-18446744073709551615")],
        streamed(vec![]),
    );
    let r = c.send(req).await;
    assert!(r.status.is_client_error(), "{r:?}");
    let req = patch_with(
        &location,
        &[
            ("content-range", "0-18446744073709551615"),
            ("content-length", "0"),
        ],
        Body::empty(),
    );
    assert!(c.send(req).await.status.is_client_error());
    assert_eq!(c.get(&location).await.header("range"), Some("0-149"));
    // `N-N` with an empty body stays accepted (some clients send it).
    let req = patch_with(&location, &[("content-range", "150-150")], Body::empty());
    c.send(req).await.expect(StatusCode::ACCEPTED);
    // And the session still completes.
    let req = patch_with(
        &location,
        &[("content-range", "150-159")],
        streamed(vec![vec![5u8; 10]]),
    );
    c.send(req).await.expect(StatusCode::ACCEPTED);
    let d = digest_of(&[5u8; 160]);
    c.finish(&location, &d, b"")
        .await
        .expect(StatusCode::CREATED);
    n.node.stop().await;
}

fn post_from(client: SocketAddr) -> http::Request<Body> {
    let mut req = request(Method::POST, "/v2/r/blobs/uploads/", &[], vec![]);
    req.extensions_mut().insert(ConnectInfo(client));
    req
}

#[tokio::test]
async fn upload_sessions_are_bounded_per_client_and_per_node() {
    let n = Node::start(|c| {
        c.limits.max_upload_sessions = 5;
        c.limits.max_upload_sessions_per_client = 2;
    })
    .await;
    let a: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let b: SocketAddr = "192.0.2.2:4000".parse().unwrap();
    let first = n.client.send(post_from(a)).await;
    first.expect(StatusCode::ACCEPTED);
    n.client
        .send(post_from(a))
        .await
        .expect(StatusCode::ACCEPTED);
    let refused = n.client.send(post_from(a)).await;
    assert_error(&refused, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    assert!(refused.header("retry-after").is_some());
    // Another client is not affected; a session that ends frees its place.
    n.client
        .send(post_from(b))
        .await
        .expect(StatusCode::ACCEPTED);
    n.client
        .delete(first.header("location").unwrap())
        .await
        .expect(StatusCode::NO_CONTENT);
    n.client
        .send(post_from(a))
        .await
        .expect(StatusCode::ACCEPTED);
    // The node's bound counts every client.
    n.client
        .send(post_from(b))
        .await
        .expect(StatusCode::ACCEPTED);
    let full = n.client.post("/v2/r/blobs/uploads/", Vec::new()).await;
    full.expect(StatusCode::ACCEPTED);
    let over = n.client.post("/v2/r/blobs/uploads/", Vec::new()).await;
    assert_error(&over, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    n.node.stop().await;
}

/// 300 sessions each left with a 100 KB partial block: what stays in memory is bounded by
/// the store's budget; the rest is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_hold_bounded_memory() {
    let n = Node::start(|_| {}).await;
    let chunk = vec![9u8; 100_000];
    let small = vec![9u8; 10_000];
    let mut locations = Vec::new();
    for i in 0..300 {
        let location = n.client.start_upload("r").await;
        let body = if i % 2 == 0 { &chunk } else { &small };
        n.client
            .patch(&location, None, body)
            .await
            .expect(StatusCode::ACCEPTED);
        locations.push(location);
    }
    let held = n.node.registry.blob_store().held_tail_bytes();
    assert!(held <= 32 * 1024 * 1024, "{held} bytes held");
    assert!(held <= 150 * 12 * 1024, "only small tails are held: {held}");
    for l in &locations {
        n.client.delete(l).await.expect(StatusCode::NO_CONTENT);
    }
    assert_eq!(n.node.registry.blob_store().held_tail_bytes(), 0);
    eventually("staging files are removed", async || {
        n.uploads_dir_is_empty()
    })
    .await;
    n.node.stop().await;
}

/// A final PUT whose body fails (here: longer than its range) leaves its session open, and
/// the partial block it received goes to the staging file like any idle session's, not into
/// memory for the session's lifetime.
#[tokio::test]
async fn a_failed_final_put_parks_its_partial_block() {
    let n = Node::start(|_| {}).await;
    let location = n.client.start_upload("r").await;
    let id = location.rsplit('/').next().unwrap().to_string();
    let d = digest_of(&[4u8; 1_048_575]);
    let req = http::Request::builder()
        .method(Method::PUT)
        .uri(format!("{location}?digest={d}"))
        .header("content-range", "0-1048574")
        .body(streamed(vec![vec![4u8; 600_000], vec![4u8; 448_576]]))
        .unwrap();
    assert_error(
        &n.client.send(req).await,
        StatusCode::BAD_REQUEST,
        "SIZE_INVALID",
    );
    let s = n.client.get(&location).await;
    s.expect(StatusCode::NO_CONTENT);
    assert_eq!(s.header("range"), Some("0-1048574"));
    let staged = std::fs::metadata(n.dir.path().join("uploads").join(&id))
        .expect("the partial block is in the staging file");
    assert_eq!(staged.len(), 1_048_575);
    assert_eq!(n.node.registry.blob_store().held_tail_bytes(), 0);
    // The session completes from there.
    n.client
        .finish(&location, &d, b"")
        .await
        .expect(StatusCode::CREATED);
    n.node.stop().await;
}
