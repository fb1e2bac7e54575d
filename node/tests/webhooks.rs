//! Webhooks on one node, delivered to a real HTTP receiver the test starts: which events
//! arrive (actions, scopes, Helm charts), in what order and shape (ACR and CloudEvents
//! payloads, headers, the request id), retries of a failing receiver with the delivery log,
//! pings, and disabled webhooks.

mod common;

use std::time::Duration;

use berth_node::meta::webhooks::Action;
use berth_node::webhooks::{WebhookSpec, WebhookUpdate};
use berth_testkit::receiver::{Received, Receiver};
use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Deliveries wait at most this long in a test.
const WAIT: Duration = Duration::from_secs(20);

/// A node with its webhook dispatcher running (as `berth serve` runs it), retrying quickly.
struct Hooked {
    t: TestNode,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Hooked {
    async fn start() -> Hooked {
        let t = TestNode::start_with(|c| c.webhooks.max_backoff_secs = 1).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(t.node().webhooks.clone().run(stop.clone()));
        Hooked { t, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        self.t.stop().await;
    }

    async fn create(&self, name: &str, uri: &str, actions: &[&str], scopes: &[&str]) {
        self.create_with(name, |s| {
            s.uri = uri.to_string();
            s.actions = actions.iter().map(|a| a.to_string()).collect();
            s.scopes = scopes.iter().map(|a| a.to_string()).collect();
        })
        .await;
    }

    async fn create_with(&self, name: &str, f: impl FnOnce(&mut WebhookSpec)) {
        let mut spec = WebhookSpec::default();
        f(&mut spec);
        self.t.node().webhooks.create(name, spec).await.unwrap();
    }
}

/// Waits on a blocking thread until the receiver has `n` requests (or `WAIT` passed).
async fn wait_for(r: &Receiver, n: usize) -> Vec<Received> {
    let got = tokio::task::block_in_place(|| r.wait_for(WAIT, |got| got.len() >= n));
    assert!(got.len() >= n, "expected {n} deliveries, got {got:#?}");
    got
}

/// The webhook's delivery log once it has `n` entries (it is committed about once a second),
/// newest first; panics after `WAIT`.
async fn log_of(h: &Hooked, name: &str, n: usize) -> Vec<berth_node::meta::webhooks::Delivery> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = h.t.node().webhooks.events(name, 1000).await.unwrap();
        if log.len() >= n || tokio::time::Instant::now() >= deadline {
            assert!(log.len() >= n, "expected {n} log entries: {log:#?}");
            return log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn actions(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.json()["action"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_deletes_arrive_in_order_with_acr_payloads() {
    let h = Hooked::start().await;
    let r = Receiver::start();
    h.create_with("all", |s| {
        s.uri = r.url();
        s.actions = vec!["push".into(), "tag_delete".into(), "delete".into()];
        s.scopes = vec!["app:*".into()];
        s.headers = vec![("X-Token".into(), "s3cret".into())];
    })
    .await;
    let config = br#"{"seed":"one"}"#;
    let layer = b"layer one";
    h.t.push_blob("app", config).await;
    h.t.push_blob("app", layer).await;
    let m = bytes_of(&oci_manifest(config, &[layer]));
    let digest = digest_of(&m);
    h.t.send(request(
        Method::PUT,
        "/v2/app/manifests/v1",
        &[
            ("content-type", OCI_MANIFEST),
            ("x-request-id", "req-push-1"),
            ("user-agent", "test-agent/1"),
            ("host", "registry.test"),
        ],
        m.clone(),
    ))
    .await
    .expect(StatusCode::CREATED);
    h.t.delete("/v2/app/manifests/v1")
        .await
        .expect(StatusCode::ACCEPTED);
    h.t.delete(&format!("/v2/app/manifests/{digest}"))
        .await
        .expect(StatusCode::ACCEPTED);
    let got = wait_for(&r, 3).await;
    assert_eq!(actions(&got), ["push", "tag_delete", "delete"]);
    let push = got[0].json();
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(got[0].header("x-token"), Some("s3cret"));
    assert_eq!(push["target"]["repository"], "app");
    assert_eq!(push["target"]["tag"], "v1");
    assert_eq!(push["target"]["digest"], digest.as_str());
    assert_eq!(push["target"]["mediaType"], OCI_MANIFEST);
    assert_eq!(push["target"]["size"], m.len());
    assert_eq!(push["target"]["length"], m.len());
    assert_eq!(push["request"]["id"], "req-push-1");
    assert_eq!(push["request"]["method"], "PUT");
    assert_eq!(push["request"]["useragent"], "test-agent/1");
    assert_eq!(push["request"]["host"], "registry.test");
    assert!(push["timestamp"].as_str().unwrap().ends_with('Z'));
    let tag_delete = got[1].json();
    assert_eq!(tag_delete["target"]["tag"], "v1");
    assert_eq!(tag_delete["target"]["digest"], digest.as_str());
    let ids: std::collections::BTreeSet<String> = got
        .iter()
        .map(|g| g.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "every event has its own id");
    // The log has the three successes.
    let log = log_of(&h, "all", 3).await;
    assert_eq!(log.len(), 3, "{log:#?}");
    assert!(log.iter().all(|d| d.status == Some(200) && d.attempts == 1));
    assert_eq!(log[0].action, Action::Delete, "newest first");
    assert_eq!(log[0].excerpt, "received");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_and_actions_filter_what_each_webhook_is_sent() {
    let h = Hooked::start().await;
    let (ra, rb) = (Receiver::start(), Receiver::start());
    h.create("pushes", &ra.url(), &["push"], &["app:v*"]).await;
    h.create("deletes", &rb.url(), &["delete"], &["other/*:*"])
        .await;
    h.t.push_image("app", Some("x1"), "a").await;
    h.t.push_image("app", Some("v1"), "b").await;
    let (d, _) = h.t.push_image("other/a", Some("1"), "c").await;
    h.t.delete(&format!("/v2/other/a/manifests/{d}"))
        .await
        .expect(StatusCode::ACCEPTED);
    // A last event each webhook is sent, so everything before it has been decided.
    h.t.push_image("app", Some("v2"), "d").await;
    let (e, _) = h.t.push_image("other/b", None, "e").await;
    h.t.delete(&format!("/v2/other/b/manifests/{e}"))
        .await
        .expect(StatusCode::ACCEPTED);
    let a = wait_for(&ra, 2).await;
    let b = wait_for(&rb, 2).await;
    let tags: Vec<_> = a
        .iter()
        .map(|r| r.json()["target"]["tag"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tags, ["v1", "v2"], "only app:v* pushes");
    let repos: Vec<_> = b
        .iter()
        .map(|r| {
            r.json()["target"]["repository"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(repos, ["other/a", "other/b"]);
    assert_eq!(actions(&b), ["delete", "delete"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_with_the_same_event_and_the_log_counts_attempts() {
    let h = Hooked::start().await;
    let r = Receiver::start();
    r.answer(500);
    h.create("flaky", &r.url(), &["push"], &[]).await;
    h.t.push_image("app", Some("v1"), "a").await;
    h.t.push_image("app", Some("v2"), "b").await;
    wait_for(&r, 2).await;
    r.answer(200);
    let got = tokio::task::block_in_place(|| {
        r.wait_for(WAIT, |g| g.iter().filter(|x| x.status == 200).count() >= 2)
    });
    let ok: Vec<_> = got.iter().filter(|x| x.status == 200).collect();
    assert_eq!(ok.len(), 2, "{got:#?}");
    // Nothing of v2 went out before v1 succeeded: the failures were all v1.
    let first_ok = got.iter().position(|x| x.status == 200).unwrap();
    let v1_id = got[0].json()["id"].clone();
    assert!(got[..first_ok].iter().all(|x| x.json()["id"] == v1_id));
    assert_eq!(ok[0].json()["target"]["tag"], "v1");
    assert_eq!(ok[1].json()["target"]["tag"], "v2");
    // The log: failed attempts counted up, then the success.
    // Every request the receiver answered is an attempt in the log.
    let log = log_of(&h, "flaky", got.len()).await;
    let v1: Vec<_> = log
        .iter()
        .rev()
        .filter(|d| serde_json::json!(d.event_id) == v1_id)
        .collect();
    assert!(v1.len() >= 2, "{log:#?}");
    assert_eq!(v1[0].status, Some(500));
    assert_eq!(v1[0].attempts, 1);
    let last = v1.last().unwrap();
    assert_eq!(last.status, Some(200));
    assert_eq!(last.attempts as usize, v1.len());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_pings_and_charts() {
    let h = Hooked::start().await;
    let r = Receiver::start();
    h.create_with("ce", |s| {
        s.uri = r.url();
        s.actions = vec!["push".into(), "chart_push".into()];
        s.format = "cloudevents".into();
    })
    .await;
    let ping = h.t.node().webhooks.ping("ce").await.unwrap();
    assert_eq!(ping.status, Some(200));
    let got = wait_for(&r, 1).await;
    assert_eq!(got[0].json()["type"], "io.berth.ping");
    assert_eq!(
        got[0].header("content-type"),
        Some("application/cloudevents+json")
    );
    // A Helm chart: config of Helm's media type.
    let config = br#"{"name":"mychart","version":"0.1.0"}"#;
    let chart = b"chart tarball";
    h.t.push_blob("charts/mychart", config).await;
    h.t.push_blob("charts/mychart", chart).await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.cncf.helm.config.v1+json",
            "digest": digest_of(config), "size": config.len()
        },
        "layers": [{
            "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            "digest": digest_of(chart), "size": chart.len()
        }]
    });
    h.t.push_manifest("charts/mychart", "0.1.0", &m).await;
    h.t.push_image("app", Some("v1"), "a").await;
    let got = wait_for(&r, 3).await;
    let chart_event = got[1].json();
    assert_eq!(chart_event["specversion"], "1.0");
    assert_eq!(chart_event["type"], "io.berth.chart.pushed");
    assert_eq!(chart_event["subject"], "charts/mychart:0.1.0");
    assert_eq!(chart_event["data"]["action"], "chart_push");
    assert_eq!(got[2].json()["type"], "io.berth.image.pushed");
    let log = log_of(&h, "ce", 3).await;
    assert_eq!(
        log.last().unwrap().action,
        Action::Ping,
        "oldest is the ping"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_webhook_is_sent_nothing_and_starts_from_the_end_when_enabled() {
    let h = Hooked::start().await;
    let r = Receiver::start();
    h.create_with("later", |s| {
        s.uri = r.url();
        s.actions = vec!["push".into()];
        s.disabled = true;
    })
    .await;
    h.t.push_image("app", Some("while-disabled"), "a").await;
    h.t.node()
        .webhooks
        .update(
            "later",
            WebhookUpdate {
                enabled: Some(true),
                ..WebhookUpdate::default()
            },
        )
        .await
        .unwrap();
    h.t.push_image("app", Some("after"), "b").await;
    let got = wait_for(&r, 1).await;
    assert_eq!(got[0].json()["target"]["tag"], "after");
    let view = h.t.node().webhooks.get("later").unwrap();
    assert!(view.webhook.enabled);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_and_change_nothing() {
    let h = Hooked::start().await;
    let hooks = &h.t.node().webhooks;
    for (uri, actions) in [
        ("ftp://x/", vec!["push"]),
        ("http://127.0.0.1:1/", vec!["pull"]),
        ("http://127.0.0.1:1/", vec![]),
    ] {
        let spec = WebhookSpec {
            uri: uri.into(),
            actions: actions.into_iter().map(String::from).collect(),
            ..WebhookSpec::default()
        };
        let e = hooks.create("bad", spec).await.unwrap_err();
        assert_eq!(e.kind(), berth_node::types::ErrorKind::Invalid, "{e}");
    }
    assert!(hooks.list().await.unwrap().is_empty());
    h.create("dup", "http://127.0.0.1:1/", &["push"], &[]).await;
    let spec = WebhookSpec {
        uri: "http://127.0.0.1:1/".into(),
        actions: vec!["push".into()],
        ..WebhookSpec::default()
    };
    let e = hooks.create("dup", spec).await.unwrap_err();
    assert_eq!(e.kind(), berth_node::types::ErrorKind::Conflict, "{e}");
    let e = hooks.delete("missing").await.unwrap_err();
    assert_eq!(e.kind(), berth_node::types::ErrorKind::NotFound, "{e}");
    hooks.delete("dup").await.unwrap();
    assert!(hooks.list().await.unwrap().is_empty());
    h.stop().await;
}
