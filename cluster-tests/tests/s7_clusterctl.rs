//! Scenario 7 — `clusterctl` against live nodes: every command, in text and `--json`, and
//! every refusal the admin service makes.
//!
//! Shows the operator's contract of the CLI (exit 0 on success; exit 1 with
//! `clusterctl: failed to <what>: refused: <reason>` on stderr — and, with `--json`, a last
//! stdout line `{"ok":false,…,"code":"FAILED_PRECONDITION"}` — when the cluster refuses;
//! exit 2 on a usage error, before anything is contacted) and that a refused change changes
//! nothing:
//!
//! 1. a one-node cluster: `status`, `nodes list`, `leader transfer` to the leader itself
//!    ("already leads"), and the refusals that are cheap there — demoting or removing the
//!    last voter, promoting a voter or an unknown node, transferring to a non-voter — after
//!    which the Raft log has not moved;
//! 2. membership by hand: a node started with `--join`, then `nodes add` with the same
//!    addresses (idempotent, its progress lines) and with other ones (refused), `promote`,
//!    `demote`, `remove` (some at the learner's own endpoint, which relays to the leader),
//!    each followed in `status`;
//! 3. a learner that was SIGKILLed: `promote` is refused ("does not answer the leader"),
//!    `status` shows it unreachable, `leader transfer` to it is refused, an endpoint that is
//!    down is reported unreachable, and the dead learner can still be removed.
//! 4. a promote sent right after the learner died is refused too (the leader wants a
//!    heartbeat acknowledgement received after the request), so the membership never gets
//!    stuck on a change that cannot commit.

use std::time::{Duration, Instant};

use cluster_tests::clusterctl::{self, CtlOutput};
use cluster_tests::{Cluster, ClusterBuilder, wait_until};
use serde_json::Value;

/// Bound on one clusterctl run (the harness kills it and fails the test after that).
const CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the answering node may take to apply a membership change the leader committed.
const ROLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Raft timing of every cluster here (the harness's quick defaults, spelled out because
/// scenario 3 depends on them): heartbeat, election timeout min and max, in milliseconds.
const HEARTBEAT_MS: u64 = 50;
const ELECTION_MIN_MS: u64 = 150;
const ELECTION_MAX_MS: u64 = 300;

fn cluster(nodes: usize) -> Cluster {
    ClusterBuilder::new()
        .nodes(nodes)
        .raft_timing(HEARTBEAT_MS, ELECTION_MIN_MS, ELECTION_MAX_MS)
        .build()
}

fn ctl(endpoint: &str, args: &[&str]) -> CtlOutput {
    clusterctl::run(endpoint, args, CTL_TIMEOUT)
}

/// `clusterctl --json status` at `endpoint`, parsed.
fn status_json(endpoint: &str) -> Value {
    let out = ctl(endpoint, &["--json", "status"]);
    out.assert_success();
    out.json()
}

/// Member `id` of a `status --json` document or a `nodes list --json` array.
fn member(doc: &Value, id: u64) -> Option<&Value> {
    let members = doc.get("members").unwrap_or(doc);
    members
        .as_array()
        .unwrap_or_else(|| panic!("no members array in {doc}"))
        .iter()
        .find(|m| m["id"].as_u64() == Some(id))
}

/// The rows of a human table (the lines after the one starting with `ID`), as cells split on
/// whitespace (multi-word cells such as an `ERROR` text come out as several cells).
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("ID "));
    assert!(lines.next().is_some(), "no table header in:\n{text}");
    lines
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The table row of member `id`.
fn row(text: &str, id: u64) -> Option<Vec<String>> {
    table_rows(text)
        .into_iter()
        .find(|r| r.first().map(String::as_str) == Some(id.to_string().as_str()))
}

/// Waits until `status --json` at `endpoint` shows member `id` with `role` (`None`: not a
/// member); returns that document. The answering node reports the membership it applied,
/// which may lag the leader's for a moment after a change.
fn wait_for_role(endpoint: &str, id: u64, role: Option<&str>) -> Value {
    wait_until(
        &format!("clusterctl status to show node {id} as {role:?}"),
        ROLE_TIMEOUT,
        || {
            let json = status_json(endpoint);
            let seen = member(&json, id).map(|m| m["role"].as_str().unwrap_or_default());
            if seen == role {
                Ok(json)
            } else {
                Err(json.to_string())
            }
        },
    )
}

/// A membership change in text mode that succeeded: exit 0, progress lines, then
/// `ok: <ok_text>` as the last line; returns the lines before it.
fn assert_ok_text(out: &CtlOutput, ok_text: &str) -> Vec<String> {
    out.assert_success();
    let lines: Vec<String> = out.stdout.lines().map(str::to_string).collect();
    assert_eq!(
        lines.last().map(String::as_str),
        Some(format!("ok: {ok_text}").as_str()),
        "last line of {:?}: {out:?}",
        out.args
    );
    assert!(out.stderr.is_empty(), "stderr of a success: {out:?}");
    lines[..lines.len() - 1].to_vec()
}

/// A membership change in `--json` mode that succeeded: exit 0, every stdout line JSON,
/// progress objects then `{"ok":true,"operation":…,"node_id":…,"message":…}` last; returns
/// the progress objects.
fn assert_ok_json(out: &CtlOutput, operation: &str, node_id: u64, message: &str) -> Vec<Value> {
    out.assert_success();
    let mut lines = out.json_lines();
    let last = lines.pop().unwrap_or_else(|| panic!("no output: {out:?}"));
    assert_eq!(
        last,
        serde_json::json!({
            "ok": true, "operation": operation, "node_id": node_id, "message": message,
        }),
        "outcome line of {:?}",
        out.args
    );
    for p in &lines {
        assert!(
            p["message"].is_string() && p["done"].is_boolean() && p.get("ok").is_none(),
            "not a progress object: {p}"
        );
    }
    // The server's final progress message is the outcome's message.
    let done = lines
        .last()
        .unwrap_or_else(|| panic!("no progress line: {out:?}"));
    assert_eq!(done["done"], true, "last progress: {done}");
    assert_eq!(done["message"], message, "last progress: {done}");
    lines
}

/// A refusal in text mode: exit 1, nothing on stdout, and on stderr
/// `clusterctl: failed to <what>: refused: …<reason>…`.
fn assert_refused(out: &CtlOutput, what: &str, reason: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status of a refusal: {out:?}"
    );
    assert!(out.stdout.is_empty(), "stdout of a refusal: {out:?}");
    let prefix = format!("clusterctl: failed to {what}: refused: ");
    let line = out.stderr.trim_end();
    assert!(
        line.starts_with(&prefix) && line.contains(reason) && !line.contains('\n'),
        "expected one stderr line `{prefix}…{reason}…`: {out:?}"
    );
}

/// A refusal in `--json` mode: exit 1, one stdout line
/// `{"ok":false,"error":"failed to <what>: refused: …<reason>…","code":"FAILED_PRECONDITION"}`
/// whose `error` is the stderr line without `clusterctl: `.
fn assert_refused_json(out: &CtlOutput, what: &str, reason: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status of a refusal: {out:?}"
    );
    let lines = out.json_lines();
    assert_eq!(lines.len(), 1, "stdout of a refusal: {out:?}");
    let error = &lines[0];
    assert_eq!(error["ok"], false, "{error}");
    assert_eq!(error["code"], "FAILED_PRECONDITION", "{error}");
    let text = error["error"].as_str().unwrap_or_default();
    assert!(
        text.starts_with(&format!("failed to {what}: refused: ")) && text.contains(reason),
        "error of a refusal to {what} ({reason}): {error}"
    );
    assert_eq!(
        out.stderr.trim_end(),
        format!("clusterctl: {text}"),
        "stderr and the JSON error differ"
    );
}

/// Asserts a usage error: exit 2 and clap's message naming `mentions`.
fn assert_usage_error(out: &CtlOutput, mentions: &str) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit status of a usage error: {out:?}"
    );
    assert!(out.stdout.is_empty(), "stdout of a usage error: {out:?}");
    assert!(
        out.stderr.contains(mentions),
        "usage error without {mentions:?}: {out:?}"
    );
}

/// Scenario 1: reads and refusals on a one-voter cluster; nothing is written.
#[test]
fn one_node_cluster_reads_and_refusals() {
    let c = cluster(1);
    let node = c.node(1);
    let ep = node.cluster_addr();
    let before = status_json(&ep);

    // status, human: a header line naming who answered and the leader, then one row.
    let out = ctl(&ep, &["status"]);
    out.assert_success();
    let header = out.stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("node 1 answered; leader: node 1; term: "),
        "status header: {out:?}"
    );
    assert!(
        out.stdout
            .lines()
            .nth(1)
            .unwrap_or_default()
            .starts_with("ID  ROLE"),
        "status table header: {out:?}"
    );
    let rows = table_rows(&out.stdout);
    assert_eq!(rows.len(), 1, "status rows: {out:?}");
    let (url, addr) = (node.url(), node.cluster_addr());
    assert_eq!(
        rows[0][..6],
        [
            "1",
            "leader",
            url.as_str(),
            addr.as_str(),
            "default",
            "default"
        ],
        "status row: {out:?}"
    );
    assert_eq!(rows[0].last().map(String::as_str), Some("yes"), "{out:?}");
    assert!(
        !out.stdout.contains("ERROR"),
        "no unreachable member: {out:?}"
    );

    // status --json: the StatusResponse field for field.
    assert_eq!(before["node_id"], 1);
    assert_eq!(before["leader_id"], 1);
    let members = before["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{before}");
    let m = &members[0];
    assert_eq!(
        (&m["id"], &m["role"], &m["reachable"]),
        (&Value::from(1), &Value::from("leader"), &Value::from(true)),
        "{before}"
    );
    assert_eq!(
        (&m["url"], &m["cluster_addr"]),
        (&Value::from(url.clone()), &Value::from(addr.clone()))
    );
    assert_eq!(m["lag"], 0);
    assert_eq!(m["error"], "");

    // nodes list, human and JSON.
    let out = ctl(&ep, &["nodes", "list"]);
    out.assert_success();
    assert!(out.stdout.starts_with("ID  ROLE"), "nodes list: {out:?}");
    let rows = table_rows(&out.stdout);
    assert_eq!(
        rows,
        [[
            "1",
            "leader",
            url.as_str(),
            addr.as_str(),
            "default",
            "default",
            "yes"
        ]],
        "nodes list: {out:?}"
    );
    let out = ctl(&ep, &["--json", "nodes", "list"]);
    out.assert_success();
    let list = out.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["role"], "leader", "{list}");
    assert_eq!(list[0]["reachable"], true, "{list}");

    // The last voter can be neither demoted nor removed.
    let last_voter = "node 1 is the last voter";
    assert_refused(
        &ctl(&ep, &["nodes", "demote", "1"]),
        "demote node 1",
        last_voter,
    );
    assert_refused(
        &ctl(&ep, &["nodes", "remove", "1"]),
        "remove node 1",
        last_voter,
    );
    assert_refused_json(
        &ctl(&ep, &["--json", "nodes", "demote", "1"]),
        "demote node 1",
        last_voter,
    );
    assert_refused_json(
        &ctl(&ep, &["--json", "nodes", "remove", "1"]),
        "remove node 1",
        last_voter,
    );
    // A voter is not promoted again; unknown nodes are refused by every operation.
    assert_refused(
        &ctl(&ep, &["nodes", "promote", "1"]),
        "promote node 1",
        "node 1 is already a voter",
    );
    assert_refused(
        &ctl(&ep, &["nodes", "promote", "99"]),
        "promote node 99",
        "node 99 is not a member",
    );
    assert_refused(
        &ctl(&ep, &["nodes", "demote", "99"]),
        "demote node 99",
        "node 99 is not a voter",
    );
    assert_refused(
        &ctl(&ep, &["nodes", "remove", "99"]),
        "remove node 99",
        "node 99 is not a member",
    );
    assert_refused(
        &ctl(&ep, &["leader", "transfer", "--to", "99"]),
        "transfer leadership to node 99",
        "node 99 is not a voter",
    );

    // Transferring leadership to the leader succeeds at once.
    let progress = assert_ok_text(
        &ctl(&ep, &["leader", "transfer", "--to", "1"]),
        "node 1 already leads",
    );
    assert!(
        progress.is_empty(),
        "progress of a no-op transfer: {progress:?}"
    );
    assert_ok_json(
        &ctl(&ep, &["--json", "leader", "transfer", "--to", "1"]),
        "transfer_leader",
        1,
        "node 1 already leads",
    );

    // Usage errors: exit 2, before anything is contacted.
    assert_usage_error(&ctl(&ep, &["nodes", "promote", "0"]), "node ids start at 1");
    assert_usage_error(
        &ctl(
            &ep,
            &[
                "nodes",
                "add",
                "2",
                "--cluster",
                "127.0.0.1",
                "--url",
                "http://x:1",
            ],
        ),
        "--cluster",
    );
    assert_usage_error(
        &ctl(
            &ep,
            &[
                "nodes",
                "add",
                "2",
                "--cluster",
                "127.0.0.1:1",
                "--url",
                "x:1",
            ],
        ),
        "--url",
    );
    assert_usage_error(&ctl(&ep, &["leader", "transfer"]), "--to");

    // Nothing changed: still one leader, and no refusal or no-op wrote to the log.
    let after = status_json(&ep);
    let members = after["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{after}");
    assert_eq!(members[0]["role"], "leader", "{after}");
    assert_eq!(after["leader_id"], 1, "{after}");
    assert_eq!(
        (&after["term"], &after["last_log_index"]),
        (&before["term"], &before["last_log_index"]),
        "the log moved: before {before}, after {after}"
    );
}

/// Scenarios 2 and 4: a joined learner added again by hand (idempotent) and at another
/// address (refused), promoted, demoted and removed — in text and `--json` mode, at the
/// leader and at the learner (which relays to the leader).
#[test]
fn add_promote_demote_remove_by_hand() {
    let mut c = cluster(1);
    let leader_ep = c.node(1).cluster_addr();
    let id = c.add_node(1);
    assert_eq!(id, 2);
    let (url, addr) = (c.node(2).url(), c.node(2).cluster_addr());
    let own_ep = addr.clone();
    let status = wait_for_role(&leader_ep, 2, Some("learner"));
    let m = member(&status, 2).expect("node 2");
    assert_eq!(
        (&m["url"], &m["cluster_addr"], &m["reachable"]),
        (
            &Value::from(url.clone()),
            &Value::from(addr.clone()),
            &Value::from(true)
        ),
        "{status}"
    );

    // `nodes add` of a node that joined with the same addresses: nothing to add, it reports
    // so, waits until the node is caught up, and succeeds.
    let add = ["nodes", "add", "2", "--cluster", &addr, "--url", &url];
    let out = ctl(&leader_ep, &add);
    let progress = assert_ok_text(&out, "node 2 added as a learner and caught up");
    assert_eq!(
        progress.first().map(String::as_str),
        Some("node 2 is already a member"),
        "{out:?}"
    );
    let catching_up: Vec<&String> = progress[1..].iter().collect();
    assert!(
        !catching_up.is_empty()
            && catching_up
                .iter()
                .all(|l| l.starts_with("node 2 catching up: ")),
        "progress lines: {out:?}"
    );
    // The last one shows matched == target.
    let last = catching_up.last().expect("a catching-up line");
    let (matched, target) = last
        .trim_start_matches("node 2 catching up: ")
        .split_once('/')
        .unwrap_or_else(|| panic!("no matched/target in {last:?}"));
    assert_eq!(matched, target, "{out:?}");

    // The same in --json at the learner's endpoint (relayed to the leader).
    let json_add: Vec<&str> = std::iter::once("--json").chain(add).collect();
    let progress = assert_ok_json(
        &ctl(&own_ep, &json_add),
        "add_node",
        2,
        "node 2 added as a learner and caught up",
    );
    assert_eq!(progress[0]["message"], "node 2 is already a member");
    let caught_up = &progress[progress.len() - 2];
    assert_eq!(caught_up["message"], "node 2 catching up", "{progress:?}");
    assert!(
        caught_up["target_index"].as_u64() > Some(0)
            && caught_up["matched_index"] == caught_up["target_index"],
        "{progress:?}"
    );

    // The same id at another address is refused, and the membership keeps the old one.
    let elsewhere = [
        "nodes",
        "add",
        "2",
        "--cluster",
        "127.0.0.1:1",
        "--url",
        "http://127.0.0.1:1",
    ];
    let already =
        format!("node id 2 is already a member with other addresses or placement (cluster {addr}");
    assert_refused(&ctl(&leader_ep, &elsewhere), "add node 2", &already);
    let json_elsewhere: Vec<&str> = std::iter::once("--json").chain(elsewhere).collect();
    assert_refused_json(&ctl(&own_ep, &json_elsewhere), "add node 2", &already);
    let status = status_json(&leader_ep);
    let m = member(&status, 2).expect("node 2");
    assert_eq!(
        (&m["role"], &m["cluster_addr"]),
        (&Value::from("learner"), &Value::from(addr.clone())),
        "{status}"
    );

    // Promote, at the learner's own endpoint.
    let progress = assert_ok_text(
        &ctl(&own_ep, &["nodes", "promote", "2"]),
        "node 2 is a voter",
    );
    assert_eq!(
        progress.last().map(String::as_str),
        Some("promoting node 2 to voter"),
        "{progress:?}"
    );
    wait_for_role(&leader_ep, 2, Some("voter"));
    let out = ctl(&leader_ep, &["status"]);
    out.assert_success();
    let r = row(&out.stdout, 2).unwrap_or_else(|| panic!("no row of node 2: {out:?}"));
    assert_eq!((r[1].as_str(), r[11].as_str()), ("voter", "yes"), "{out:?}");
    assert_refused(
        &ctl(&leader_ep, &["nodes", "promote", "2"]),
        "promote node 2",
        "node 2 is already a voter",
    );

    // Demote, in --json mode.
    let progress = assert_ok_json(
        &ctl(&leader_ep, &["--json", "nodes", "demote", "2"]),
        "demote_node",
        2,
        "node 2 is a learner",
    );
    assert_eq!(progress[0]["message"], "demoting node 2 to learner");
    wait_for_role(&leader_ep, 2, Some("learner"));
    let out = ctl(&leader_ep, &["nodes", "list"]);
    out.assert_success();
    let r = row(&out.stdout, 2).unwrap_or_else(|| panic!("no row of node 2: {out:?}"));
    assert_eq!(
        (r[1].as_str(), r[6].as_str()),
        ("learner", "yes"),
        "{out:?}"
    );
    assert_refused_json(
        &ctl(&leader_ep, &["--json", "nodes", "demote", "2"]),
        "demote node 2",
        "node 2 is not a voter",
    );
    assert_refused(
        &ctl(&leader_ep, &["leader", "transfer", "--to", "2"]),
        "transfer leadership to node 2",
        "node 2 is not a voter",
    );

    // Remove the learner.
    let progress = assert_ok_text(
        &ctl(&leader_ep, &["nodes", "remove", "2"]),
        "node 2 removed",
    );
    assert_eq!(progress, ["removing learner 2"]);
    let status = wait_for_role(&leader_ep, 2, None);
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    let out = ctl(&leader_ep, &["nodes", "list"]);
    out.assert_success();
    assert_eq!(table_rows(&out.stdout).len(), 1, "{out:?}");
    assert!(row(&out.stdout, 2).is_none(), "{out:?}");
    assert_refused(
        &ctl(&leader_ep, &["nodes", "promote", "2"]),
        "promote node 2",
        "node 2 is not a member",
    );
    assert_refused_json(
        &ctl(&leader_ep, &["--json", "nodes", "remove", "2"]),
        "remove node 2",
        "node 2 is not a member",
    );
}

/// Scenario 3: a learner that was SIGKILLed is not promoted, not made leader, shown
/// unreachable, and can be removed.
#[test]
fn promote_of_an_unreachable_learner_is_refused() {
    let mut c = cluster(1);
    let leader_ep = c.node(1).cluster_addr();
    let id = c.add_node(1);
    assert_eq!(id, 2);
    let own_ep = c.node(2).cluster_addr();
    wait_for_role(&leader_ep, 2, Some("learner"));

    c.kill(2);
    // Observable first: the status shows node 2 unreachable.
    wait_until("node 2 to be unreachable", ROLE_TIMEOUT, || {
        let status = status_json(&leader_ep);
        let m = member(&status, 2).ok_or_else(|| status.to_string())?;
        if m["reachable"] == false {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });

    // The server waits up to three election timeouts for an acknowledgement, then refuses.
    let started = Instant::now();
    assert_refused(
        &ctl(&leader_ep, &["nodes", "promote", "2"]),
        "promote node 2",
        "node 2 does not answer the leader",
    );
    eprintln!(
        "promote of the dead learner refused after {:?}",
        started.elapsed()
    );
    assert_refused_json(
        &ctl(&leader_ep, &["--json", "nodes", "promote", "2"]),
        "promote node 2",
        "node 2 does not answer the leader",
    );

    // Still a learner, unreachable, in both outputs.
    let status = status_json(&leader_ep);
    let m = member(&status, 2).expect("node 2");
    assert_eq!(
        (&m["role"], &m["reachable"]),
        (&Value::from("learner"), &Value::from(false)),
        "{status}"
    );
    assert_ne!(
        m["error"], "",
        "an unreachable member has an error: {status}"
    );
    assert_eq!(member(&status, 1).expect("node 1")["role"], "leader");
    let out = ctl(&leader_ep, &["status"]);
    out.assert_success();
    let header = out.stdout.lines().nth(1).unwrap_or_default();
    assert!(header.trim_end().ends_with("REACHABLE  ERROR"), "{out:?}");
    let r = row(&out.stdout, 2).unwrap_or_else(|| panic!("no row of node 2: {out:?}"));
    // id role url addr region zone, then TERM LAST LOG APPLIED LAG RTT MS as "-",
    // REACHABLE "no".
    assert_eq!(r[1], "learner", "{out:?}");
    assert_eq!(r[6..12], ["-", "-", "-", "-", "-", "no"], "{out:?}");
    assert!(r.len() > 12, "no ERROR text: {out:?}");
    let out = ctl(&leader_ep, &["nodes", "list"]);
    out.assert_success();
    let r = row(&out.stdout, 2).unwrap_or_else(|| panic!("no row of node 2: {out:?}"));
    assert_eq!((r[1].as_str(), r[6].as_str()), ("learner", "no"), "{out:?}");

    // Leadership does not go to it either.
    assert_refused(
        &ctl(&leader_ep, &["leader", "transfer", "--to", "2"]),
        "transfer leadership to node 2",
        "node 2 is not a voter",
    );

    // The dead node's own endpoint: unreachable (exit 1, code UNAVAILABLE), not a refusal.
    let out = ctl(&own_ep, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .starts_with(&format!("clusterctl: cannot reach {own_ep}")),
        "{out:?}"
    );
    let out = ctl(&own_ep, &["--json", "nodes", "promote", "2"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = out.json_lines();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert_eq!(
        (&lines[0]["ok"], &lines[0]["code"]),
        (&Value::from(false), &Value::from("UNAVAILABLE"))
    );

    // The operator removes the dead learner; the leader is alone again.
    assert_ok_text(
        &ctl(&leader_ep, &["nodes", "remove", "2"]),
        "node 2 removed",
    );
    let status = wait_for_role(&leader_ep, 2, None);
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(status["leader_id"], 1, "{status}");
}

/// What the product should do when the learner dies just before the promote: refuse it, as
/// it does a moment later, and leave the cluster able to change its membership.
///
/// (Were it accepted, the joint membership {1} → {1, 2} would need the dead node and never
/// commit, refusing every later change; an acknowledgement from before the kill must not
/// count.)
#[test]
fn promote_right_after_the_learner_dies_is_refused() {
    let mut c = cluster(1);
    let leader_ep = c.node(1).cluster_addr();
    assert_eq!(c.add_node(1), 2);
    wait_for_role(&leader_ep, 2, Some("learner"));

    c.kill(2);
    let out = ctl(&leader_ep, &["--timeout", "5", "nodes", "promote", "2"]);
    assert_refused(&out, "promote node 2", "node 2 does not answer the leader");
    assert_ok_text(
        &ctl(&leader_ep, &["--timeout", "5", "nodes", "remove", "2"]),
        "node 2 removed",
    );
    wait_for_role(&leader_ep, 2, None);
}
