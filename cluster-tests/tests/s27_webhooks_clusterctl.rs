//! Scenario 27 — webhooks through `clusterctl webhooks` on a live node.
//!
//! A one-node cluster and a webhook receiver on 127.0.0.1 (`berth_testkit::receiver`: answers
//! `received` with the status the test chooses, records each request):
//!
//! 1. `create` with two secret headers, then `list` and `show` (text and JSON): every field
//!    as given, header values only ever `***`; the change is in the audit log;
//! 2. refused definitions create nothing: a bad URI and an unknown action (refused by
//!    clusterctl, exit 2), a malformed scope and a taken name (refused by the node, exit 1),
//!    each with its reason;
//! 3. `ping` reaches the receiver (with the secret header), prints HTTP 200 and the body,
//!    and `events` lists the ping;
//! 4. `update` clears scopes and region, replaces headers, disables; sets them again;
//! 5. a `ping` answered 503, and one to a receiver that is down, exit 1 with the status or
//!    the error, and are logged too;
//! 6. `delete`: the list is empty and `show` is not found.
//!
//! No command's output ever holds a header value.
//!
//! With auth on, the webhook commands are an admin's: without credentials a read and a change
//! are refused (UNAUTHENTICATED), the refused change is in the audit log; the admin's work.

use std::time::Duration;

use berth_testkit::receiver::Receiver;
use cluster_tests::clusterctl::{self, CtlOutput};
use cluster_tests::{ClusterBuilder, LEADER_TIMEOUT, wait_until};
use serde_json::{Value, json};

/// Bound on one clusterctl run (a ping waits for the receiver, at most the node's 10 s).
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the receiver may take to record a request it answered.
const RECEIVED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an audit record may take to reach the node's store.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);
/// The header values, which no output may show.
const SECRETS: [&str; 3] = ["s3cret-token", "trace-secret", "other-secret"];
/// What the receiver answers a 2xx with.
const BODY: &str = "received";

fn ctl(endpoint: &str, args: &[&str]) -> CtlOutput {
    let out = clusterctl::run(endpoint, args, CTL_TIMEOUT);
    for secret in SECRETS {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "a header value was printed: {out:?}"
        );
    }
    out
}

/// `clusterctl … --json webhooks list`: the names.
fn names(at: &str) -> Vec<String> {
    let out = ctl(at, &["--json", "webhooks", "list"]);
    out.assert_success();
    out.json()["webhooks"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|w| w["name"].as_str().expect("a name").to_owned())
        .collect()
}

/// Asserts exit status `code` with `reason` on stderr.
#[track_caller]
fn refused(out: &CtlOutput, code: i32, reason: &str) {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    assert!(out.stderr.contains(reason), "{reason:?} missing: {out:?}");
}

#[test]
fn webhooks_are_managed_pinged_and_logged_through_clusterctl() {
    let cluster = ClusterBuilder::new().nodes(1).build();
    cluster.wait_for_leader(LEADER_TIMEOUT);
    let at = cluster.node(1).cluster_addr();
    let mut receiver = Receiver::start();
    let uri = receiver.url();

    // 1. Create, list, show.
    let auth = format!("Authorization=Bearer {}", SECRETS[0]);
    let trace = format!("X-Trace={}", SECRETS[1]);
    let created = ctl(
        &at,
        &[
            "webhooks",
            "create",
            "deploy",
            "--uri",
            &uri,
            "--actions",
            "push,delete,ping",
            "--scope",
            "team/**:*",
            "--scope",
            "app:v1",
            "--header",
            &auth,
            "--header",
            &trace,
            "--region",
            "default",
            "--format",
            "cloudevents",
        ],
    );
    created.assert_success();
    assert!(
        created.stdout.starts_with("ok: webhook deploy created\n"),
        "{created:?}"
    );
    assert!(
        created
            .stdout
            .contains("headers: Authorization: ***, X-Trace: ***\n"),
        "{created:?}"
    );
    let list = ctl(&at, &["webhooks", "list"]);
    list.assert_success();
    let row: Vec<&str> = list
        .stdout
        .lines()
        .nth(1)
        .expect("a row")
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        [
            "deploy",
            "enabled",
            "default",
            "cloudevents",
            "push,delete,ping",
            "team/**:*,app:v1",
            "0",
            uri.as_str()
        ],
        "{list:?}"
    );
    let show = ctl(&at, &["--json", "webhooks", "show", "deploy"]);
    show.assert_success();
    let w = show.json();
    assert_eq!(w["uri"], uri, "{w}");
    assert_eq!(w["actions"], json!(["push", "delete", "ping"]), "{w}");
    assert_eq!(w["scopes"], json!(["team/**:*", "app:v1"]), "{w}");
    assert_eq!(
        w["headers"],
        json!([
            {"name": "Authorization", "value": "***"},
            {"name": "X-Trace", "value": "***"},
        ]),
        "{w}"
    );
    assert_eq!(w["enabled"], true, "{w}");
    assert_eq!(w["region"], "default", "{w}");
    assert_eq!(w["format"], "cloudevents", "{w}");
    assert_eq!(w["backlog"], 0, "{w}");
    assert!(w["created_ms"].as_u64().unwrap() > 0, "{w}");
    let text = ctl(&at, &["webhooks", "show", "deploy"]);
    text.assert_success();
    for line in [
        "name: deploy\n",
        "status: enabled\n",
        "format: cloudevents\n",
    ] {
        assert!(text.stdout.contains(line), "{line:?} missing: {text:?}");
    }
    let recorded = wait_until("the creation in the audit log", RECORD_TIMEOUT, || {
        let out = ctl(&at, &["--json", "audit"]);
        out.assert_success();
        out.json_lines()
            .into_iter()
            .find(|r| r["event"] == "admin_change" && r["what"] == "CreateWebhook")
            .ok_or_else(|| out.stdout.clone())
    });
    assert_eq!(recorded["target"], "deploy", "{recorded}");
    assert_eq!(recorded["outcome"], "ok", "{recorded}");

    // 2. Refused definitions create nothing.
    refused(
        &ctl(
            &at,
            &[
                "webhooks",
                "create",
                "bad1",
                "--uri",
                "ftp://h/x",
                "--actions",
                "push",
            ],
        ),
        2,
        "http://",
    );
    refused(
        &ctl(
            &at,
            &[
                "webhooks",
                "create",
                "bad2",
                "--uri",
                &uri,
                "--actions",
                "push,pull",
            ],
        ),
        2,
        "unknown action \"pull\"",
    );
    refused(
        &ctl(
            &at,
            &[
                "webhooks",
                "create",
                "bad3",
                "--uri",
                &uri,
                "--actions",
                "push",
                "--scope",
                "Team/App",
            ],
        ),
        1,
        "invalid request: invalid scope \"Team/App\"",
    );
    refused(
        &ctl(
            &at,
            &[
                "webhooks",
                "create",
                "bad4",
                "--uri",
                "http://:80/",
                "--actions",
                "push",
            ],
        ),
        1,
        "invalid request: invalid webhook URI",
    );
    refused(
        &ctl(
            &at,
            &[
                "webhooks",
                "create",
                "deploy",
                "--uri",
                &uri,
                "--actions",
                "push",
            ],
        ),
        1,
        "refused: webhook deploy exists already",
    );
    assert_eq!(names(&at), ["deploy"]);

    // 3. Ping: the receiver gets it, with the headers; the log shows it.
    let ping = ctl(&at, &["webhooks", "ping", "deploy"]);
    ping.assert_success();
    assert!(
        ping.stdout.starts_with("ping of deploy: HTTP 200 in "),
        "{ping:?}"
    );
    assert!(
        ping.stdout.contains(&format!("response: {BODY}\n")),
        "{ping:?}"
    );
    let got = receiver.wait_for(RECEIVED_TIMEOUT, |r| !r.is_empty());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].method.as_str(), got[0].path.as_str()),
        ("POST", "/hook")
    );
    let sent = format!("Bearer {}", SECRETS[0]);
    assert_eq!(got[0].header("authorization"), Some(sent.as_str()));
    assert_eq!(got[0].header("x-trace"), Some(SECRETS[1]));
    let events = ctl(&at, &["webhooks", "events", "deploy"]);
    events.assert_success();
    let lines: Vec<&str> = events.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{events:?}");
    assert!(lines[0].starts_with("TIME "), "{events:?}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[2..5], ["ping", "default", "200"], "{events:?}");
    assert!(lines[1].ends_with(BODY), "{events:?}");
    let events = ctl(
        &at,
        &["--json", "webhooks", "events", "deploy", "--limit", "1"],
    );
    events.assert_success();
    let d = &events.json()["deliveries"][0];
    assert_eq!(d["action"], "ping", "{d}");
    assert_eq!(d["status"], 200, "{d}");
    assert_eq!(d["excerpt"], BODY, "{d}");
    assert_eq!(d["seq"], Value::Null, "{d}");
    assert_eq!(d["attempts"], 1, "{d}");
    assert_eq!(d["node"], 1, "{d}");

    // 4. Update: clear, replace, disable; then set again.
    let other = format!("X-Other={}", SECRETS[2]);
    let uri2 = format!("{uri}?v=2");
    let updated = ctl(
        &at,
        &[
            "--json",
            "webhooks",
            "update",
            "deploy",
            "--clear-scopes",
            "--no-region",
            "--header",
            &other,
            "--disable",
        ],
    );
    updated.assert_success();
    let w = updated.json();
    assert_eq!(w["ok"], true, "{w}");
    assert_eq!(w["scopes"], json!([]), "{w}");
    assert_eq!(w["region"], "", "{w}");
    assert_eq!(w["enabled"], false, "{w}");
    assert_eq!(
        w["headers"],
        json!([{"name": "X-Other", "value": "***"}]),
        "{w}"
    );
    assert_eq!(w["uri"], uri, "unchanged: {w}");
    assert_eq!(w["format"], "cloudevents", "unchanged: {w}");
    assert_eq!(
        w["actions"],
        json!(["push", "delete", "ping"]),
        "unchanged: {w}"
    );
    let updated = ctl(
        &at,
        &[
            "--json",
            "webhooks",
            "update",
            "deploy",
            "--uri",
            &uri2,
            "--scope",
            "app:*",
            "--clear-headers",
            "--actions",
            "push,ping",
            "--format",
            "acr",
            "--enable",
        ],
    );
    updated.assert_success();
    let w = updated.json();
    // A query (where endpoints carry tokens) is never shown.
    assert_eq!(w["uri"], format!("{uri}?***"), "{w}");
    assert_eq!(w["scopes"], json!(["app:*"]), "{w}");
    assert_eq!(w["headers"], json!([]), "{w}");
    assert_eq!(w["actions"], json!(["push", "ping"]), "{w}");
    assert_eq!(w["format"], "acr", "{w}");
    assert_eq!(w["enabled"], true, "{w}");
    let list = ctl(&at, &["webhooks", "list"]);
    list.assert_success();
    let row: Vec<&str> = list
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[1..6],
        ["enabled", "-", "acr", "push,ping", "app:*"],
        "{list:?}"
    );
    refused(
        &ctl(&at, &["webhooks", "update", "nope", "--disable"]),
        1,
        "not found: webhook nope does not exist",
    );

    // 5. A receiver that answers 503, then one that is down: exit 1, logged.
    receiver.answer(503);
    let failed = ctl(&at, &["webhooks", "ping", "deploy"]);
    refused(
        &failed,
        1,
        "webhook deploy did not answer the ping with 2xx: HTTP 503",
    );
    assert!(
        failed.stdout.starts_with("ping of deploy: HTTP 503 in "),
        "{failed:?}"
    );
    receiver.down();
    let failed = ctl(&at, &["webhooks", "ping", "deploy"]);
    refused(
        &failed,
        1,
        "webhook deploy did not answer the ping with 2xx",
    );
    assert!(
        failed.stdout.starts_with("ping of deploy: failed after "),
        "{failed:?}"
    );
    let events = ctl(&at, &["--json", "webhooks", "events", "deploy"]);
    events.assert_success();
    let log = events.json();
    let log = log["deliveries"].as_array().unwrap();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0]["status"], Value::Null, "newest first: {log:?}");
    assert_ne!(log[0]["error"], "", "{log:?}");
    assert_eq!(log[1]["status"], 503, "{log:?}");
    assert_eq!(log[2]["status"], 200, "{log:?}");

    // 6. Delete.
    let deleted = ctl(&at, &["webhooks", "delete", "deploy"]);
    deleted.assert_success();
    assert_eq!(deleted.stdout, "ok: webhook deploy deleted\n");
    assert!(names(&at).is_empty());
    let list = ctl(&at, &["webhooks", "list"]);
    assert_eq!(list.stdout, "no webhooks\n", "{list:?}");
    refused(
        &ctl(&at, &["webhooks", "show", "deploy"]),
        1,
        "not found: webhook deploy does not exist",
    );
    refused(&ctl(&at, &["webhooks", "delete", "deploy"]), 1, "not found");
    drop(receiver);
}

#[test]
fn webhook_commands_are_an_admins() {
    const PASSWORD: &str = "s27-admin-password";
    let admin = [
        ("CLUSTERCTL_USER", "admin"),
        ("CLUSTERCTL_PASSWORD", PASSWORD),
    ];
    let cluster = ClusterBuilder::new().nodes(1).auth(PASSWORD).build();
    cluster.wait_for_leader(LEADER_TIMEOUT);
    let at = cluster.node(1).cluster_addr();
    let create = [
        "--json",
        "webhooks",
        "create",
        "guarded",
        "--uri",
        "http://127.0.0.1:9/hook",
        "--actions",
        "push",
    ];
    for args in [&["--json", "webhooks", "list"][..], &create[..]] {
        let out = ctl(&at, args);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(out.json()["code"], "UNAUTHENTICATED", "{out:?}");
    }
    let as_admin = |args: &[&str]| clusterctl::run_with(&at, args, &admin, None, CTL_TIMEOUT);
    let listed = as_admin(&["--json", "webhooks", "list"]);
    listed.assert_success();
    assert_eq!(
        listed.json()["webhooks"],
        json!([]),
        "the refused create made nothing"
    );
    as_admin(&create).assert_success();
    let changes = wait_until("both creates in the audit log", RECORD_TIMEOUT, || {
        let out = as_admin(&["--json", "audit"]);
        out.assert_success();
        let changes: Vec<Value> = out
            .json_lines()
            .into_iter()
            .filter(|r| r["what"] == "CreateWebhook")
            .collect();
        if changes.len() == 2 {
            Ok(changes)
        } else {
            Err(out.stdout.clone())
        }
    });
    assert!(
        changes[0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("failed (Unauthenticated)"),
        "{changes:?}"
    );
    assert_eq!(changes[1]["outcome"], "ok", "{changes:?}");
    assert_eq!(changes[1]["identity"], "admin", "{changes:?}");
}
