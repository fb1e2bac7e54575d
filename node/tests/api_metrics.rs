//! Metrics and request ids through the real router: a push, pulls and 404s, then `GET /metrics`
//! holds each family with the values those requests imply; every response carries an
//! `X-Request-Id` (the client's when it is plain, a new one otherwise), which the request's
//! log lines carry too; with `[metrics] enabled = false`, `/metrics` is 404.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};

/// The samples of a Prometheus text page: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// A sample's value; panics with the page when it is missing.
#[track_caller]
fn value(page: &BTreeMap<String, f64>, series: &str) -> f64 {
    *page
        .get(series)
        .unwrap_or_else(|| panic!("{series} missing in {page:#?}"))
}

async fn scrape(t: &TestNode) -> BTreeMap<String, f64> {
    let r = t.get("/metrics").await;
    r.expect(StatusCode::OK);
    assert_request_id(&r);
    samples(std::str::from_utf8(&r.body).unwrap())
}

/// Every response names its request.
#[track_caller]
fn assert_request_id(r: &Resp) {
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{}: no X-Request-Id", r.what));
    assert!(!id.is_empty(), "{}", r.what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_and_pulls_show_in_every_family() {
    let t = TestNode::start().await;
    let (digest, manifest) = t.push_image("m/app", Some("v1"), "s1").await;
    let blobs = image_blobs(&manifest);
    let config = b"{\"seed\":\"s1\"}".to_vec();
    let layer = b"layer of s1".to_vec();
    assert_eq!(blobs, vec![digest_of(&config), digest_of(&layer)]);
    let _open = t.start_upload("m/app").await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        let r = t
            .get_with("/v2/m/app/manifests/v1", &[("accept", OCI_MANIFEST)])
            .await;
        r.expect(StatusCode::OK);
        assert_eq!(r.body, manifest);
        answers.push(r);
    }
    let r = t.get(&format!("/v2/m/app/blobs/{}", blobs[1])).await;
    r.expect(StatusCode::OK);
    assert_eq!(&r.body[..], &layer[..]);
    answers.push(r);
    let r = t.get("/v2/m/app/manifests/nope").await;
    assert_error(&r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    answers.push(r);
    let r = t.get("/nothing/here").await;
    r.expect(StatusCode::NOT_FOUND);
    answers.push(r);
    answers.push(t.head(&format!("/v2/m/app/manifests/{digest}")).await);
    for r in &answers {
        assert_request_id(r);
    }

    // The blob store's first count runs in the background at start: wait for it to show.
    let mut page = scrape(&t).await;
    for _ in 0..100 {
        if page.get("berth_blobstore_files") == Some(&2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        page = scrape(&t).await;
    }
    let http = |route: &str, method: &str, status: u16| {
        format!(
            "berth_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
        )
    };
    for (series, want) in [
        (http("manifest", "GET", 200), 3.0),
        (http("manifest", "GET", 404), 1.0),
        (http("manifest", "HEAD", 200), 1.0),
        (http("manifest", "PUT", 201), 1.0),
        (http("upload", "POST", 201), 2.0),
        (http("upload", "POST", 202), 1.0),
        (http("blob", "GET", 200), 1.0),
        (http("other", "GET", 404), 1.0),
        (
            "berth_http_request_duration_seconds_count{route=\"manifest\",method=\"GET\"}"
                .to_string(),
            4.0,
        ),
        (
            "berth_http_received_bytes_total{route=\"upload\"}".to_string(),
            (config.len() + layer.len()) as f64,
        ),
        (
            "berth_http_received_bytes_total{route=\"manifest\"}".to_string(),
            manifest.len() as f64,
        ),
        // The scrape being answered is the one request in flight.
        ("berth_http_requests_in_flight".to_string(), 1.0),
        ("berth_uploads_in_progress".to_string(), 1.0),
        ("berth_blobstore_files".to_string(), 2.0),
        (
            "berth_blobstore_bytes".to_string(),
            (config.len() + layer.len()) as f64,
        ),
        ("berth_raft_is_leader".to_string(), 1.0),
        ("berth_raft_leader_id".to_string(), 1.0),
        ("berth_raft_voters".to_string(), 1.0),
    ] {
        assert_eq!(value(&page, &series), want, "{series}");
    }
    // Manifest GETs sent the manifest three times, and a 404 body.
    let sent = value(&page, "berth_http_sent_bytes_total{route=\"manifest\"}");
    assert!(sent > (3 * manifest.len()) as f64, "{sent}");
    let sent = value(&page, "berth_http_sent_bytes_total{route=\"blob\"}");
    assert!(sent >= layer.len() as f64, "{sent}");
    let applied = value(&page, "berth_raft_applied_index");
    assert!(applied > 0.0, "{applied}");
    assert!(value(&page, "berth_raft_committed_index") >= applied);
    assert!(value(&page, "berth_raft_last_log_index") >= applied);
    assert!(value(&page, "berth_raft_apply_lag") >= 0.0);
    assert!(value(&page, "berth_raft_term") >= 1.0);
    assert!(value(&page, "berth_raft_proposals_total{outcome=\"ok\"}") >= 1.0);
    let pending = value(&page, "berth_rocksdb_compaction_pending");
    assert!(pending == 0.0 || pending == 1.0, "{pending}");
    assert!(value(&page, "berth_raft_snapshot_bytes") >= 0.0);
    assert!(value(&page, "berth_rocksdb_size_bytes") > 0.0);
    assert!(value(&page, "berth_rocksdb_compaction_pending_bytes") >= 0.0);
    let total = value(&page, "berth_disk_total_bytes");
    let free = value(&page, "berth_disk_free_bytes");
    assert!(total > 0.0 && free <= total, "{free} of {total}");
    assert!(value(&page, "berth_process_resident_memory_bytes") > 0.0);
    assert!(value(&page, "berth_process_open_fds") > 0.0);
    assert!(value(&page, "berth_process_max_fds") >= value(&page, "berth_process_open_fds"));
    assert!(value(&page, "berth_process_cpu_seconds_total") > 0.0);
    assert!(value(&page, "berth_process_start_time_seconds") > 1.0e9);
    // Repository names never become labels.
    assert!(page.keys().all(|k| !k.contains("m/app")), "{page:#?}");
    // Scrapes count themselves, once answered.
    let page = scrape(&t).await;
    assert!(value(&page, &http("metrics", "GET", 200)) >= 1.0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_when_plain_and_replaced_otherwise() {
    let t = TestNode::start().await;
    for uri in [
        "/v2/",
        "/v2/a/manifests/missing",
        "/nowhere",
        "/metrics",
        "/healthz",
    ] {
        let r = t.get_with(uri, &[("x-request-id", "client-Id_1.2")]).await;
        assert_eq!(r.header("x-request-id"), Some("client-Id_1.2"), "{uri}");
        let r = t.get_with(uri, &[("x-request-id", "not plain!")]).await;
        let id = r.header("x-request-id").unwrap();
        assert!(id != "not plain!" && id.len() == 36, "{uri}: {id}");
        let a = t.get(uri).await;
        let b = t.get(uri).await;
        assert_ne!(a.header("x-request-id"), b.header("x-request-id"), "{uri}");
    }
    // Also on an error with a request body (an upload session that does not exist).
    let r = t
        .send(request(
            Method::PATCH,
            "/v2/a/blobs/uploads/1-00000000000000000000000000000000",
            &[("x-request-id", "patch-1")],
            b"x".to_vec(),
        ))
        .await;
    assert!(r.status.is_client_error(), "{}", r.status);
    assert_eq!(r.header("x-request-id"), Some("patch-1"));
    t.stop().await;
}

/// A `Write` the test's log lines go to.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_lines_carry_the_request_id_node_and_region() {
    let t = TestNode::start_with(|c| c.region = "eu-west".to_string()).await;
    let captured = Captured::default();
    // The JSON format of `berth serve --log-format json` (main.rs), into a buffer. The
    // subscriber is this thread's: the middleware's closing event is logged on it, in the
    // future the test awaits.
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(move || writer.clone())
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let r = t
        .get_with("/v2/bad..name/tags/list", &[("x-request-id", "log-me-1")])
        .await;
    drop(guard);
    assert_error(&r, StatusCode::BAD_REQUEST, "NAME_INVALID");
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("log-me-1"))
        .unwrap_or_else(|| panic!("no log line names the request: {text}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["span"]["request_id"], "log-me-1", "{line}");
    assert_eq!(v["span"]["node"], 1, "{line}");
    assert_eq!(v["span"]["region"], "eu-west", "{line}");
    assert_eq!(v["span"]["status"], 400, "{line}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_metrics_record_nothing_and_are_not_served() {
    let t = TestNode::start_with(|c| c.metrics.enabled = false).await;
    t.push_image("r", Some("v1"), "1").await;
    let r = t
        .get_with("/metrics", &[("x-request-id", "scrape-1")])
        .await;
    r.expect(StatusCode::NOT_FOUND);
    assert_eq!(r.header("x-request-id"), Some("scrape-1"));
    // Nothing was recorded either (the families are still there, for other components).
    let text = t.node().registry.metrics().render();
    assert!(!text.contains("berth_http_requests_total{"), "{text}");
    assert!(text.contains("berth_http_requests_in_flight 0"), "{text}");
    t.stop().await;
}
