//! End-to-end tests of the `clusterctl` binary.
//!
//! Each test runs the built binary as a process. Those that need a server start a fake
//! Admin service in-process (tonic on 127.0.0.1:0, its own thread and runtime) that gives
//! canned answers keyed by node id:
//!
//! - `Status`: three members, node 3 unreachable (refuses calls without a gRPC timeout);
//! - `AddNode` 4: three progress messages, then `done`; 9: one message, then
//!   FAILED_PRECONDITION mid-stream; other ids: INVALID_ARGUMENT;
//! - `PromoteNode` 2: FAILED_PRECONDITION before any message; others: `done` with no text;
//! - `DemoteNode`: one message, then the stream ends without `done`;
//! - `RemoveNode`: UNAVAILABLE;
//! - `TransferLeader`: one message, then nothing ever (for `--timeout`);
//! - `ReplicationStatus`: `done:1` complete; `slow:1` incomplete for the first two calls of
//!   the fake, then complete; `stuck:1` never complete; anything else NOT_FOUND;
//! - `GetReplicationPolicy`: empty pattern two policies, `eu/**` one, others NOT_FOUND;
//!   `SetReplicationPolicy` echoes the policy with its regions sorted;
//!   `ClearReplicationPolicy` `eu/**` leaves `**`, others NOT_FOUND.
//! - the auth RPCs want metadata `authorization` `Basic admin:adminpw` or `Bearer good-token`
//!   (else UNAUTHENTICATED); identities `admin` (a user) and `ci-push` (a token with two
//!   passwords), others NOT_FOUND; `CreateUser` wants the password `bobpassword` (else
//!   INVALID_ARGUMENT); `CreateToken` and a regenerating `UpdateIdentity` answer generated
//!   passwords `generated-N`; `DeleteScopeMap` of `ci` is FAILED_PRECONDITION (in use); the
//!   settings calls answer what they were asked to set.
//! - `Audit`: node 1's two records (a push by `ann`, a refused login by nobody), filtered
//!   by identity and `since_ms` and cut to `limit` as a node does.
//! - `GcRun` (only without `wait`: clusterctl follows with `GcStatus`) starts pass #7, once;
//!   another is FAILED_PRECONDITION. `GcStatus` answers no pass before; then, call by call, a
//!   pass that is not dry freed 1 blob (1024 bytes) of 2 candidates on the first two calls
//!   and ends on the third with 2 blobs (3072 bytes: node 1 2 blobs, node 2 1) and the reaper
//!   at 1 file; a dry pass ends on the first call with the "counts are not built" error.
//! - `UpdateAttributes` of repository `app` (or a tag or manifest of it) answers the default
//!   attributes with what the request sets; another repository is NOT_FOUND.
//! - `ListNamespaces`: `team` (quota 100000 bytes, 2 repositories at most, 1234 bytes and 1
//!   repository used) and `web` (no limits, 3 repositories).
//! - `Purge`: a filter starting with `(` is INVALID_ARGUMENT; otherwise tag `app:v2` (and,
//!   with `untagged`, its manifest) deleted and `app:v1` skipped as locked, `dry_run` echoed.
//! - The other lifecycle RPCs are not faked (UNIMPLEMENTED).
//! - Webhooks: `CreateWebhook` echoes the request as a server answers it (header values
//!   `***`); the name `taken` is FAILED_PRECONDITION. `UpdateWebhook` answers `deploy` with
//!   what the request sets and `unchanged` markers for the rest (scopes `[unchanged]`, URI
//!   `http://unchanged/`, region `unchanged`). `ListWebhooks` and `GetWebhook` know `deploy`
//!   (header `Authorization`); `DeleteWebhook` and `GetWebhook` of another name are NOT_FOUND.
//!   `PingWebhook` of `down` answers HTTP 503, of `refused` no answer (an error), of others
//!   HTTP 200 `pong`. `WebhookEvents` answers a ping (200) and a push that failed.

use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_proto::admin as pb;
use berth_proto::admin::admin_server::{Admin, AdminServer};
use berth_proto::admin::{
    AddNodeRequest, AuditField, AuditRecord, AuditRequest, AuditResponse, Member, NodeRef,
    NodeStatusRequest, NodeStatusResponse, Progress, RegionReplication, ReplicationPolicies,
    ReplicationPolicy, ReplicationPolicyEntry, ReplicationPolicyRef, ReplicationStatusRequest,
    ReplicationStatusResponse, StatusRequest, StatusResponse, TransferLeaderRequest,
};
use futures::{Stream, StreamExt, stream};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::{Request, Response, Status};

/// Runs `clusterctl` with `args` (and no `CLUSTERCTL_…` settings from the environment).
fn clusterctl(args: &[&str]) -> Output {
    clusterctl_with(args, &[], "")
}

/// Runs `clusterctl` with `args`, `env` and `stdin`, bounded in time.
fn clusterctl_with(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clusterctl"));
    cmd.args(args);
    berth_testkit::process::without_env_prefix(&mut cmd, "CLUSTERCTL_");
    cmd.envs(env.iter().copied());
    let out = berth_testkit::process::run_cmd_with_input(
        &mut cmd,
        Some(stdin.as_bytes()),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("clusterctl {args:?}: {e}"));
    Output {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

/// `clusterctl --endpoint <endpoint> <args…>` with `env` and `stdin`.
fn at(endpoint: &str, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut all = vec!["--endpoint", endpoint];
    all.extend_from_slice(args);
    clusterctl_with(&all, env, stdin)
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// Asserts the exit status, showing both streams when it differs.
#[track_caller]
fn must_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// Every stdout line parsed as JSON.
fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Without a server.

#[test]
fn help_lists_the_commands() {
    let out = clusterctl(&["--help"]);
    must_exit(&out, 0);
    let text = stdout(&out);
    for word in [
        "status",
        "nodes",
        "leader",
        "users",
        "tokens",
        "scope-maps",
        "roles",
        "auth",
        "--endpoint",
        "--user",
        "--password-stdin",
        "--token",
        "--json",
        "--timeout",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    for word in [
        "repos",
        "soft-delete",
        "retention",
        "namespaces",
        "purge",
        "webhooks",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    let out = clusterctl(&["retention", "set", "--help"]);
    must_exit(&out, 0);
    for word in ["--untagged-days", "`**` alone: the whole cluster"] {
        assert!(
            stdout(&out).contains(word),
            "retention set --help lacks {word}"
        );
    }
    let out = clusterctl(&["gc", "run", "--help"]);
    must_exit(&out, 0);
    for word in ["--dry-run", "--wait"] {
        assert!(stdout(&out).contains(word), "gc run --help lacks {word}");
    }
    let out = clusterctl(&["nodes", "add", "--help"]);
    must_exit(&out, 0);
    for word in ["--cluster", "--url", "--region", "--zone"] {
        assert!(stdout(&out).contains(word), "nodes add --help lacks {word}");
    }
}

#[test]
fn unreachable_endpoint_exits_1_with_cannot_reach() {
    let out = clusterctl(&["--endpoint", "127.0.0.1:1", "status"]);
    must_exit(&out, 1);
    assert!(
        stderr(&out).starts_with("clusterctl: cannot reach 127.0.0.1:1: "),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");

    let out = clusterctl(&[
        "nodes",
        "remove",
        "3",
        "--endpoint",
        "127.0.0.1:1",
        "--json",
    ]);
    must_exit(&out, 1);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["ok"], false);
    assert_eq!(lines[0]["code"], "UNAVAILABLE");
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot reach 127.0.0.1:1")
    );
}

#[test]
fn bad_arguments_are_refused_before_contacting_anything() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let cases: [&[&str]; 4] = [
        &["nodes", "promote", "0"],
        &["leader", "transfer", "--to", "0"],
        &[
            "nodes",
            "add",
            "4",
            "--cluster",
            "10.0.0.4",
            "--url",
            "http://a",
        ],
        &[
            "nodes",
            "add",
            "4",
            "--cluster",
            "a:7000",
            "--url",
            "a:5000",
        ],
    ];
    for args in cases {
        let mut all = vec!["--endpoint", endpoint.as_str()];
        all.extend_from_slice(args);
        let out = clusterctl(&all);
        must_exit(&out, 2);
        assert!(stderr(&out).contains("invalid value"), "{}", stderr(&out));
    }
    assert!(
        stderr(&clusterctl(&["nodes", "promote", "0"])).contains("node ids start at 1"),
        "the reason is shown"
    );
    listener.set_nonblocking(true).unwrap();
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "clusterctl connected although its arguments were bad: {accepted:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Against the fake Admin service.

#[test]
fn status_prints_a_header_and_an_aligned_table() {
    let addr = start_fake_admin();
    let out = clusterctl(&["--endpoint", &addr.to_string(), "status"]);
    must_exit(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "node 1 answered; leader: node 1; term: 7; last log: 5000; applied: 5000"
    );
    assert!(lines[1].starts_with("ID  ROLE     URL"), "{text}");
    assert!(lines[1].ends_with("REACHABLE  ERROR"), "{text}");
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[2].starts_with(" 1  leader "), "{text}");
    assert!(lines[4].starts_with(" 3  learner"), "{text}");
    assert!(
        lines[4].ends_with("  no         connection refused"),
        "{text}"
    );
    // Columns line up: every row has its URL where the header has "URL".
    let url_col = lines[1].find("URL").unwrap();
    for row in &lines[2..] {
        assert_eq!(row.find("http://"), Some(url_col), "{text}");
    }
}

#[test]
fn status_json_is_one_object() {
    let addr = start_fake_admin();
    // http:// prefix, endpoint from the environment, --json after the subcommand.
    let out = Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .args(["status", "--json"])
        .env("CLUSTERCTL_ENDPOINT", format!("http://{addr}"))
        .output()
        .unwrap();
    must_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    let status = &lines[0];
    assert_eq!(status["node_id"], 1);
    assert_eq!(status["leader_id"], 1);
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert_eq!(status["members"][2]["reachable"], false);
    assert_eq!(status["members"][2]["error"], "connection refused");
}

#[test]
fn nodes_list_as_table_and_json() {
    let addr = start_fake_admin();
    let endpoint = addr.to_string();
    let out = clusterctl(&["--endpoint", &endpoint, "nodes", "list"]);
    must_exit(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0]
            .split("  ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect::<Vec<_>>(),
        [
            "ID",
            "ROLE",
            "URL",
            "CLUSTER ADDR",
            "REGION",
            "ZONE",
            "REACHABLE"
        ]
    );
    assert_eq!(lines.len(), 4);
    assert!(lines[3].ends_with("no"), "{text}");

    let out = clusterctl(&["--endpoint", &endpoint, "nodes", "list", "--json"]);
    must_exit(&out, 0);
    let members = json_lines(&out).remove(0);
    let ids: Vec<u64> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
}

#[test]
fn add_prints_progress_and_the_outcome() {
    let addr = start_fake_admin();
    let out = clusterctl(&[
        "--endpoint",
        &addr.to_string(),
        "nodes",
        "add",
        "4",
        "--cluster",
        "127.0.0.1:7004",
        "--url",
        "http://127.0.0.1:5004",
    ]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "\
adding node 4: cluster 127.0.0.1:7004, url http://127.0.0.1:5004, region default, zone default
catching up: 1200/5000
catching up: 5000/5000
ok: node 4 added as a learner
"
    );
    assert_eq!(stderr(&out), "");
}

#[test]
fn add_in_json_prints_json_lines() {
    let addr = start_fake_admin();
    let out = clusterctl(&[
        "--endpoint",
        &addr.to_string(),
        "--json",
        "nodes",
        "add",
        "4",
        "--cluster",
        "127.0.0.1:7004",
        "--url",
        "https://registry-4.example",
        "--region",
        "eu-west",
        "--zone",
        "b",
    ]);
    must_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 5, "{}", stdout(&out));
    assert_eq!(
        lines[0]["message"],
        "adding node 4: cluster 127.0.0.1:7004, url https://registry-4.example, region eu-west, zone b"
    );
    assert_eq!(
        lines[1],
        json!({"message": "catching up", "done": false, "matched_index": 1200, "target_index": 5000})
    );
    assert_eq!(lines[3]["done"], true);
    assert_eq!(
        lines[4],
        json!({"ok": true, "operation": "add_node", "node_id": 4, "message": "node 4 added as a learner"})
    );
}

#[test]
fn add_refused_mid_stream_exits_1() {
    let addr = start_fake_admin();
    let endpoint = addr.to_string();
    let args = [
        "--endpoint",
        &endpoint,
        "nodes",
        "add",
        "9",
        "--cluster",
        "10.0.0.9:7000",
        "--url",
        "http://10.0.0.9:5000",
    ];
    let out = clusterctl(&args);
    must_exit(&out, 1);
    assert_eq!(stdout(&out), "adding node 9\n");
    assert_eq!(
        stderr(&out),
        "clusterctl: failed to add node 9: refused: node 9 cannot be reached at 10.0.0.9:7000\n"
    );

    let mut with_json = args.to_vec();
    with_json.push("--json");
    let out = clusterctl(&with_json);
    must_exit(&out, 1);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[1],
        json!({
            "ok": false,
            "error": "failed to add node 9: refused: node 9 cannot be reached at 10.0.0.9:7000",
            "code": "FAILED_PRECONDITION",
        })
    );
}

#[test]
fn server_errors_map_to_words() {
    let addr = start_fake_admin();
    let endpoint = addr.to_string();
    let cases: [(&[&str], &str); 4] = [
        (
            &["nodes", "promote", "2"],
            "clusterctl: failed to promote node 2: refused: node 2 is not a learner\n",
        ),
        (
            &["nodes", "remove", "3"],
            "clusterctl: failed to remove node 3: unavailable: no leader is known\n",
        ),
        (
            &["nodes", "demote", "2"],
            "clusterctl: failed to demote node 2: the server ended the stream before the operation finished\n",
        ),
        (
            &["nodes", "add", "5", "--cluster", "a:1", "--url", "http://a"],
            "clusterctl: failed to add node 5: invalid request: node 5 is not expected\n",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["--endpoint", endpoint.as_str()];
        all.extend_from_slice(args);
        let out = clusterctl(&all);
        must_exit(&out, 1);
        assert_eq!(stderr(&out), expected, "{args:?}");
    }
}

#[test]
fn promote_with_an_empty_final_message_says_ok() {
    let addr = start_fake_admin();
    let out = clusterctl(&["--endpoint", &addr.to_string(), "nodes", "promote", "3"]);
    must_exit(&out, 0);
    assert_eq!(stdout(&out), "ok: node 3 promoted to voter\n");
}

#[test]
fn timeout_ends_a_stalled_change() {
    let addr = start_fake_admin();
    let started = Instant::now();
    let out = clusterctl(&[
        "--endpoint",
        &addr.to_string(),
        "--timeout",
        "1",
        "leader",
        "transfer",
        "--to",
        "2",
    ]);
    must_exit(&out, 1);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(stdout(&out), "transferring leadership to node 2\n");
    assert!(
        stderr(&out)
            .starts_with("clusterctl: failed to transfer leadership to node 2: timed out after 1s"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn replication_status_exits_0_when_complete_and_1_when_not() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&["--endpoint", &addr, "replication", "status", "done:1"]);
    must_exit(&out, 0);
    assert!(
        stdout(&out).contains("replication complete"),
        "{}",
        stdout(&out)
    );
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "replication",
        "status",
        "stuck:1",
        "--json",
    ]);
    must_exit(&out, 1);
    // One JSON document: the status, no error line after it.
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stdout(&out));
    assert_eq!(lines[0]["complete"], false);
    assert_eq!(lines[0]["regions"]["r2"]["pending_blobs"], 2);
    assert_eq!(lines[0]["regions"]["r1"]["complete"], true);
    assert_eq!(
        stderr(&out).trim(),
        "clusterctl: replication of stuck:1 is not complete: r2: 2 blobs (2048 bytes)"
    );
    let out = clusterctl(&["--endpoint", &addr, "replication", "status", "gone:1"]);
    must_exit(&out, 1);
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

#[test]
fn replication_status_wait_polls_until_complete_or_the_timeout() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "replication",
        "status",
        "slow:1",
        "--wait",
        "--timeout",
        "20",
    ]);
    must_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.starts_with("waiting: r2: 2 blobs (2048 bytes)\n"),
        "{text}"
    );
    assert!(text.contains("replication complete"), "{text}");

    let started = Instant::now();
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "replication",
        "status",
        "stuck:1",
        "--wait",
        "--timeout",
        "1.5",
    ]);
    must_exit(&out, 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stderr(&out).contains("is not complete after waiting"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn gc_run_wait_prints_progress_then_the_report() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&["--endpoint", &addr, "gc", "status"]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "node 1 answered\nno garbage collection has run on this node since it started\n\
         reaper: removed 0 blob files (0 bytes) since the node started\n"
    );
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "gc",
        "run",
        "--wait",
        "--timeout",
        "20",
    ]);
    must_exit(&out, 0);
    // A line per change: the one after the start, the first poll's (the second poll's is
    // the same), then the report of the third.
    assert_eq!(
        stdout(&out),
        "\
pass #7: freed 0 blobs (0 bytes) of 0 candidates so far
pass #7: freed 1 blob (1024 bytes) of 2 candidates so far
garbage collection pass #7 finished in 2.5s: freed 2 blobs (3072 bytes) of 2 candidates
NODE  BLOBS  BYTES
   1      2   3072
   2      1   1024
"
    );
    let out = clusterctl(&["--endpoint", &addr, "--json", "gc", "status"]);
    must_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stdout(&out));
    assert_eq!(lines[0]["last"]["blobs"], 2);
    assert_eq!(lines[0]["reaper_removed_files"], 1);
}

#[test]
fn gc_run_without_wait_names_the_pass_and_a_second_is_refused() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&["--endpoint", &addr, "gc", "run"]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        format!(
            "started garbage collection pass #7 at {addr}; follow it with `clusterctl \
             --endpoint {addr} gc status` (or use `gc run --wait`)\n"
        )
    );
    let out = clusterctl(&["--endpoint", &addr, "--json", "gc", "run", "--dry-run"]);
    must_exit(&out, 1);
    assert_eq!(
        stderr(&out).trim(),
        "clusterctl: failed to run a dry garbage collection pass: refused: a garbage \
         collection pass (#7) is already running on this node"
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stdout(&out));
    assert_eq!(lines[0]["code"], "FAILED_PRECONDITION");
}

#[test]
fn a_dry_gc_run_that_stops_early_prints_its_report_and_exits_1() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&["--endpoint", &addr, "gc", "run", "--dry-run", "--wait"]);
    must_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.starts_with("pass #7: would free 0 blobs (0 bytes) of 0 candidates so far\n"),
        "{text}"
    );
    assert!(
        text.contains("dry garbage collection pass #7 stopped early after 0.1s: would free"),
        "{text}"
    );
    assert!(
        text.ends_with("error: the reference counts are not built yet: a pass that is not dry builds them first\n"),
        "{text}"
    );
    assert_eq!(
        stderr(&out).trim(),
        "clusterctl: garbage collection pass #7 stopped early: the reference counts are not \
         built yet: a pass that is not dry builds them first"
    );
}

#[test]
fn a_dry_gc_run_in_json_is_one_document_with_ok_false() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "--json",
        "gc",
        "run",
        "--dry-run",
        "--wait",
    ]);
    must_exit(&out, 1);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stdout(&out));
    assert_eq!(lines[0]["ok"], false);
    assert_eq!(lines[0]["dry_run"], true);
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("not built yet"),
        "{}",
        lines[0]
    );
}

#[test]
fn repos_update_prints_the_attributes_and_unknown_repositories_are_not_found() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "repos",
        "update",
        "app:v1",
        "--write-enabled",
        "false",
        "--delete-enabled",
        "false",
    ]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "ok: attributes of app:v1 updated\nwrite-enabled: no\ndelete-enabled: no\n\
         read-enabled: yes\nlist-enabled: yes\n"
    );
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "--json",
        "repos",
        "update",
        "app",
        "--list-enabled",
        "false",
    ]);
    must_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stdout(&out));
    assert_eq!(
        lines[0],
        json!({
            "ok": true,
            "repository": "app",
            "tag": "",
            "digest": "",
            "attributes": {
                "write_enabled": true,
                "delete_enabled": true,
                "read_enabled": true,
                "list_enabled": false,
            },
        })
    );
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "repos",
        "update",
        "other:v1",
        "--write-enabled",
        "false",
    ]);
    must_exit(&out, 1);
    assert_eq!(
        stderr(&out).trim(),
        "clusterctl: failed to update the attributes of other:v1: not found: repository other \
         does not exist"
    );
    // Refused before contacting anything.
    let out = clusterctl(&["--endpoint", &addr, "repos", "update", "app:v1"]);
    must_exit(&out, 2);
}

#[test]
fn webhooks_create_update_and_delete_print_the_webhook_without_header_values() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "webhooks",
        "create",
        "ci",
        "--uri",
        "https://hooks.example/ci",
        "--actions",
        "push,tag_delete",
        "--scope",
        "team/**:*",
        "--header",
        "Authorization=Bearer s3cret",
        "--region",
        "eu-west",
    ]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "ok: webhook ci created\nname: ci\nuri: https://hooks.example/ci\nstatus: enabled\n\
         actions: push,tag_delete\nscopes: team/**:*\nheaders: Authorization: ***\n\
         region: eu-west\nformat: acr\ncreated: 2027-01-31T00:00:00Z\n\
         updated: 2027-01-31T00:00:00Z\ncursor: 0\nbacklog: 0\n"
    );
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "webhooks",
        "create",
        "taken",
        "--uri",
        "http://h/",
        "--actions",
        "push",
    ]);
    must_exit(&out, 1);
    assert_eq!(
        stderr(&out).trim(),
        "clusterctl: failed to create webhook taken: refused: webhook taken exists already"
    );

    // Update: what is not given is left out of the request (the fake says `unchanged`).
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "webhooks",
        "update",
        "deploy",
        "--clear-scopes",
        "--no-region",
        "--disable",
    ]);
    must_exit(&out, 0);
    let text = stdout(&out);
    for line in [
        "ok: webhook deploy updated\n",
        "status: disabled\n",
        "scopes: *\n",
        "region: -\n",
        "uri: http://unchanged/\n",
        "actions: unchanged\n",
        "format: unchanged\n",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "--json",
        "webhooks",
        "update",
        "deploy",
        "--header",
        "X-Key=k3y",
        "--actions",
        "ping",
    ]);
    must_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stdout(&out));
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(
        lines[0]["headers"],
        json!([{"name": "X-Key", "value": "***"}])
    );
    assert_eq!(lines[0]["actions"], json!(["ping"]));
    assert_eq!(lines[0]["scopes"], json!(["unchanged"]));
    assert!(!stdout(&out).contains("k3y"));

    let out = clusterctl(&["--endpoint", &addr, "webhooks", "delete", "deploy"]);
    must_exit(&out, 0);
    assert_eq!(stdout(&out), "ok: webhook deploy deleted\n");
    let out = clusterctl(&["--endpoint", &addr, "webhooks", "delete", "other"]);
    must_exit(&out, 1);
    assert!(stderr(&out).contains("not found: webhook other does not exist"));
}

#[test]
fn webhooks_list_show_and_events() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&["--endpoint", &addr, "webhooks", "list"]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "\
NAME    STATUS   REGION  FORMAT  ACTIONS      SCOPES     BACKLOG  URI
deploy  enabled  -       acr     push,delete  team/**:*        2  https://hooks.example/deploy
"
    );
    let out = clusterctl(&["--endpoint", &addr, "--json", "webhooks", "show", "deploy"]);
    must_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines[0]["name"], "deploy");
    assert_eq!(lines[0]["backlog"], 2);
    assert_eq!(
        lines[0]["headers"],
        json!([{"name": "Authorization", "value": "***"}])
    );
    let out = clusterctl(&["--endpoint", &addr, "webhooks", "show", "nope"]);
    must_exit(&out, 1);

    let out = clusterctl(&["--endpoint", &addr, "webhooks", "events", "deploy"]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "\
TIME                  EVENT ID  ACTION  REGION  STATUS  LATENCY MS  ATTEMPTS  NODE  EXCERPT/ERROR
2027-01-31T00:00:00Z  ping-1    ping    -          200          12         1     1  pong
2027-01-31T00:00:00Z  push-1    push    -            -          12         3     1  timed out
"
    );
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "--json",
        "webhooks",
        "events",
        "deploy",
        "--limit",
        "5",
    ]);
    must_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines[0]["deliveries"][0]["seq"], Value::Null);
    assert_eq!(lines[0]["deliveries"][1]["seq"], 4);
    assert_eq!(lines[0]["deliveries"][1]["status"], Value::Null);
}

#[test]
fn webhooks_ping_prints_the_delivery_and_exits_1_without_a_2xx() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&["--endpoint", &addr, "webhooks", "ping", "deploy"]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "ping of deploy: HTTP 200 in 12 ms (node 1)\nevent id: ping-1\nresponse: pong\n"
    );
    let out = clusterctl(&["--endpoint", &addr, "webhooks", "ping", "down"]);
    must_exit(&out, 1);
    assert!(stdout(&out).starts_with("ping of down: HTTP 503 in 12 ms"));
    assert!(stdout(&out).contains("response: maintenance\n"));
    assert_eq!(
        stderr(&out).trim(),
        "clusterctl: webhook down did not answer the ping with 2xx: HTTP 503"
    );
    let out = clusterctl(&["--endpoint", &addr, "webhooks", "ping", "refused"]);
    must_exit(&out, 1);
    assert!(stdout(&out).contains("failed after 12 ms (node 1): connection refused"));
    // In JSON one document: the delivery with `ok: false`, no error line after it.
    let out = clusterctl(&["--endpoint", &addr, "--json", "webhooks", "ping", "down"]);
    must_exit(&out, 1);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stdout(&out));
    assert_eq!(lines[0]["ok"], false);
    assert_eq!(lines[0]["status"], 503);
}

#[test]
fn bad_webhook_arguments_are_refused_before_contacting_anything() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "create",
                "d",
                "--uri",
                "http://h/",
                "--actions",
                "push,pull",
            ],
            "unknown action \"pull\"",
        ),
        (
            &["create", "d", "--uri", "ftp://h/", "--actions", "push"],
            "http://",
        ),
        (
            &[
                "create",
                "d",
                "--uri",
                "http://h/",
                "--actions",
                "push",
                "--header",
                "X",
            ],
            "NAME=VALUE",
        ),
        (&["update", "d"], "required"),
    ];
    for (args, why) in cases {
        let mut all = vec!["--endpoint", endpoint.as_str(), "webhooks"];
        all.extend_from_slice(args);
        let out = clusterctl(&all);
        must_exit(&out, 2);
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
    }
    listener.set_nonblocking(true).unwrap();
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "clusterctl connected although its arguments were bad: {accepted:?}"
    );
}

#[test]
fn namespaces_list_shows_usage_against_limits() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&["--endpoint", &addr, "namespaces", "list"]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "\
NAMESPACE  BYTES USED   QUOTA  REPOS  MAX REPOS  PULLS/S  PUSHES/S
team             1234  100000      1          2     none      none
web                 0    none      3       none     none      none
"
    );
    let out = clusterctl(&["--endpoint", &addr, "--json", "namespaces", "list"]);
    must_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stdout(&out));
    assert_eq!(lines[0]["namespaces"][0]["namespace"], "team");
    assert_eq!(lines[0]["namespaces"][0]["used_bytes"], 1234);
    assert_eq!(lines[0]["namespaces"][0]["quota_bytes"], 100_000);
    assert_eq!(lines[0]["namespaces"][1]["repositories"], 3);
    assert_eq!(lines[0]["namespaces"][1]["max_repositories"], 0);
}

#[test]
fn purge_reports_what_it_deleted_and_skipped() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "purge",
        "--filter",
        "app:.*",
        "--untagged",
    ]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "\
purge: deleted 2 tags and 1 untagged manifest, skipped 1
deleted tag app:v2 (sha256:22)
… and 1 more tags (not listed)
deleted manifest app@sha256:22
skipped app:v1: the tag is locked
"
    );
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "--json",
        "purge",
        "--filter",
        "app:.*",
        "--ago",
        "2d",
        "--dry-run",
    ]);
    must_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stdout(&out));
    assert_eq!(lines[0]["dry_run"], true);
    assert_eq!(lines[0]["deleted_tags"], 2);
    assert_eq!(lines[0]["deleted_manifests"], 0, "no --untagged");
    assert_eq!(
        lines[0]["skipped"],
        json!([{"what": "app:v1", "why": "the tag is locked"}])
    );
    let out = clusterctl(&["--endpoint", &addr, "purge", "--filter", "(app:.*"]);
    must_exit(&out, 1);
    assert!(
        stderr(&out).contains("failed to purge: invalid request: invalid filter"),
        "{}",
        stderr(&out)
    );
    for bad in [
        &["purge"][..],
        &["purge", "--filter", "app"],
        &["purge", "--filter", "app:.*", "--ago", "yesterday"],
    ] {
        let mut args = vec!["--endpoint", addr.as_str()];
        args.extend_from_slice(bad);
        must_exit(&clusterctl(&args), 2);
    }
}

#[test]
fn replication_policies_get_set_clear() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&["--endpoint", &addr, "replication", "policy", "get"]);
    must_exit(&out, 0);
    assert!(
        stdout(&out).starts_with("PATTERN  REGIONS  ON DEMAND\n**       all      r3\n"),
        "{}",
        stdout(&out)
    );
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "--json",
        "replication",
        "policy",
        "get",
        "eu/**",
    ]);
    must_exit(&out, 0);
    assert_eq!(
        json_lines(&out)[0]["policies"][0],
        json!({"pattern": "eu/**", "regions": ["r1", "r2"], "on_demand": []})
    );
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "replication",
        "policy",
        "set",
        "eu/**",
        "--regions",
        "r2,r1",
    ]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "ok: policy of eu/** set: regions r1,r2; on demand -\n"
    );
    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "replication",
        "policy",
        "clear",
        "eu/**",
    ]);
    must_exit(&out, 0);
    assert_eq!(stdout(&out), "ok: policy of eu/** cleared\n");
    let out = clusterctl(&["--endpoint", &addr, "replication", "policy", "clear", "x/*"]);
    must_exit(&out, 1);
    assert!(
        stderr(&out)
            .starts_with("clusterctl: failed to clear the replication policy of x/*: not found"),
        "{}",
        stderr(&out)
    );
}

/// `audit` asks the endpoint and every other member; node 1 (the fake) answers, nodes 2 and
/// 3 (nothing listens at their addresses) are reported, and the command still succeeds.
#[test]
fn audit_merges_what_members_answer_and_reports_the_others() {
    let addr = start_fake_admin().to_string();
    let out = clusterctl(&["--endpoint", &addr, "--timeout", "5", "audit"]);
    must_exit(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("TIME "), "{text}");
    assert!(
        lines[1].starts_with("2026-11-30T06:00:00.250Z")
            && lines[1].contains("push")
            && lines[1].ends_with("repository=team/app tag=v1"),
        "{text}"
    );
    assert!(lines[2].contains("(anonymous)") && lines[2].contains("login_failed"));
    assert!(
        lines[2].ends_with("reason=\"invalid user name or password\""),
        "{text}"
    );
    assert!(
        text.contains("node 3 (127.0.0.1:7003) did not answer"),
        "{text}"
    );

    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "--timeout",
        "5",
        "audit",
        "--identity",
        "ann",
        "--json",
    ]);
    must_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines[0]["event"], "push");
    assert_eq!(lines[0]["identity"], "ann");
    assert_eq!(lines[0]["node"], 1);
    assert_eq!(lines[0]["tag"], "v1");
    assert!(
        lines[1..].iter().all(|l| l["error"].is_string()),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 3, "{lines:?}");

    let out = clusterctl(&[
        "--endpoint",
        &addr,
        "audit",
        "--json",
        "--since",
        "2026-11-30T06:00:01Z",
    ]);
    must_exit(&out, 0);
    assert_eq!(json_lines(&out)[0]["event"], "login_failed");
}

// ---------------------------------------------------------------------------------------
// The fake Admin service.

// ---------------------------------------------------------------------------------------
// Auth commands, against the fake.

const ADMIN: [(&str, &str); 2] = [
    ("CLUSTERCTL_USER", "admin"),
    ("CLUSTERCTL_PASSWORD", "adminpw"),
];

#[test]
fn auth_commands_need_credentials_and_send_them() {
    let endpoint = start_fake_admin().to_string();
    let e = endpoint.as_str();
    let out = at(e, &["users", "list"], &[], "");
    must_exit(&out, 1);
    let says = "failed to list the users: unauthenticated";
    assert!(stderr(&out).contains(says), "{}", stderr(&out));
    // From the environment, from stdin, and as a bearer token.
    let out = at(e, &["users", "list"], &ADMIN, "");
    must_exit(&out, 0);
    assert!(stdout(&out).starts_with("NAME "), "{}", stdout(&out));
    assert!(stdout(&out).contains("admin"));
    assert!(
        !stdout(&out).contains("ci-push"),
        "users list shows no token"
    );
    let stdin_login = ["--user", "admin", "--password-stdin"];
    let out = at(
        e,
        &[&stdin_login[..], &["tokens", "list", "--json"]].concat(),
        &[],
        "adminpw\n",
    );
    must_exit(&out, 0);
    assert_eq!(json_lines(&out)[0]["tokens"][0]["name"], "ci-push");
    let out = at(
        e,
        &["roles", "list"],
        &[("CLUSTERCTL_TOKEN", "good-token")],
        "",
    );
    must_exit(&out, 0);
    assert!(stdout(&out).contains("reader"), "{}", stdout(&out));
    let out = at(
        e,
        &[&stdin_login[..], &["roles", "list"]].concat(),
        &[],
        "wrong\n",
    );
    must_exit(&out, 1);
    assert!(stderr(&out).contains("unauthenticated"), "{}", stderr(&out));
}

#[test]
fn credentials_are_checked_before_contacting_anything() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--user", "admin", "users", "list"],
            "--password-stdin or CLUSTERCTL_PASSWORD",
        ),
        (
            &["--password-stdin", "users", "list"],
            "no password to read",
        ),
        (&["users", "create", "bob"], "--password-stdin"),
        (
            &["--user", "admin", "--token", "t", "users", "list"],
            "cannot be used with",
        ),
    ];
    for (args, says) in cases {
        let out = at("127.0.0.1:1", args, &[], "");
        must_exit(&out, 2);
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn users_create_reads_the_admin_then_the_new_password() {
    let endpoint = start_fake_admin().to_string();
    let e = endpoint.as_str();
    let create = ["users", "create", "bob", "--role", "writer:team/**"];
    let args = [&["--user", "admin", "--password-stdin"][..], &create].concat();
    let out = at(e, &args, &[], "adminpw\nbobpassword\n");
    must_exit(&out, 0);
    assert_eq!(stdout(&out), "ok: user bob created\n");
    // With the admin's password in the environment, stdin holds only the new one.
    let args = [&["--password-stdin", "--json"][..], &create].concat();
    let out = at(e, &args, &ADMIN, "bobpassword\n");
    must_exit(&out, 0);
    let v = &json_lines(&out)[0];
    assert_eq!(v["ok"], true);
    assert_eq!(v["identity"]["name"], "bob");
    let out = at(e, &args, &ADMIN, "");
    must_exit(&out, 1);
    assert!(
        stderr(&out).contains("line 1 is missing"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn tokens_print_generated_passwords_once() {
    let endpoint = start_fake_admin().to_string();
    let run = |args: &[&str]| at(&endpoint, args, &ADMIN, "");
    let out = run(&[
        "tokens",
        "create",
        "ci-push",
        "--scope-map",
        "ci",
        "--passwords",
        "2",
        "--expiry",
        "90d",
    ]);
    must_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "ok: token ci-push created\npassword1: generated-1\npassword2: generated-2\nSave the \
         password now: it is not shown again.\n"
    );
    let out = run(&["tokens", "update", "ci-push", "--regenerate", "1", "--json"]);
    must_exit(&out, 0);
    assert_eq!(
        json_lines(&out)[0]["passwords"],
        json!([{"slot": 1, "password": "generated-1"}])
    );
    let out = run(&["tokens", "show", "ci-push"]);
    must_exit(&out, 0);
    assert!(!stdout(&out).contains("generated"), "{}", stdout(&out));
    // A token is not a user.
    let out = run(&["users", "delete", "ci-push"]);
    must_exit(&out, 1);
    let says = "ci-push is a token, not a user";
    assert!(stderr(&out).contains(says), "{}", stderr(&out));
    let out = run(&["tokens", "show", "nobody", "--json"]);
    must_exit(&out, 1);
    assert_eq!(json_lines(&out)[0]["code"], "NOT_FOUND");
}

#[test]
fn scope_maps_roles_keys_and_settings() {
    let endpoint = start_fake_admin().to_string();
    let run = |args: &[&str]| at(&endpoint, args, &ADMIN, "");
    let rule = "team/*:content/read,content/write";
    let out = run(&[
        "scope-maps",
        "create",
        "ci",
        "--rule",
        rule,
        "--description",
        "CI",
    ]);
    must_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.starts_with("ok: scope map ci created\n"), "{text}");
    assert!(text.contains("rule: team/*:content/read,content/write\n"));
    let out = run(&["scope-maps", "delete", "ci"]);
    must_exit(&out, 1);
    let says = "failed to delete scope map ci: refused: scope map ci is used by token ci-push";
    assert!(stderr(&out).contains(says), "{}", stderr(&out));
    let grant = [
        "--identity",
        "ci-push",
        "--role",
        "reader",
        "--pattern",
        "pub/**",
    ];
    let out = run(&[&["roles", "assign"][..], &grant].concat());
    must_exit(&out, 0);
    assert_eq!(stdout(&out), "ok: ci-push has role reader on pub/**\n");
    let out = run(&["auth", "rotate-key", "--json"]);
    must_exit(&out, 0);
    assert_eq!(json_lines(&out)[0]["signing_kid"], "k2");
    let out = run(&["auth", "drop-key", "k1"]);
    must_exit(&out, 0);
    assert!(stdout(&out).contains("key k1 dropped"), "{}", stdout(&out));
    let out = run(&["auth", "drop-key", "k2"]);
    must_exit(&out, 1);
    assert!(stderr(&out).contains("rotate first"), "{}", stderr(&out));
    let set = [
        "--default",
        "deny",
        "--allow",
        "10.0.0.0/8",
        "--public",
        "off",
    ];
    let out = run(&[&["auth", "network", "set"][..], &set].concat());
    must_exit(&out, 0);
    let text = stdout(&out);
    let says = "network default: deny\nnetwork allow: 10.0.0.0/8\npublic access: off\n";
    assert!(text.contains(says), "{text}");
    let out = run(&["auth", "anonymous-pull", "set", "public/**", "--json"]);
    must_exit(&out, 0);
    assert_eq!(json_lines(&out)[0]["anonymous_pull"], json!(["public/**"]));
    let out = run(&[
        "auth",
        "network",
        "repo",
        "set",
        "secret/**",
        "--allow",
        "10.1.0.0/16",
        "--json",
    ]);
    must_exit(&out, 0);
    assert_eq!(
        json_lines(&out)[0]["network"]["repositories"][0],
        json!({"pattern": "secret/**", "default_allow": false, "allow": ["10.1.0.0/16"]})
    );
    for bad in [
        &["scope-maps", "create", "ci", "--rule", "team/*:pull"][..],
        &["scope-maps", "create", "ci"],
        &["auth", "network", "set"],
        &[
            "roles",
            "assign",
            "--identity",
            "x",
            "--role",
            "owner",
            "--pattern",
            "a",
        ],
        &["tokens", "create", "t", "--passwords", "3"],
        &["tokens", "update", "t", "--expiry", "yesterday"],
    ] {
        must_exit(&run(bad), 2);
    }
}

/// Starts the fake on 127.0.0.1:0 in its own thread; returns its address once it listens.
/// The thread lives until the test process exits.
fn start_fake_admin() -> SocketAddr {
    let (addr_tx, addr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("failed to build the fake's runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("failed to bind the fake");
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            tonic::transport::Server::builder()
                .add_service(AdminServer::new(FakeAdmin::default()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .expect("the fake admin server failed");
        });
    });
    addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the fake admin server did not start")
}

#[derive(Default)]
struct FakeAdmin {
    /// `ReplicationStatus` calls for `slow:1` so far.
    slow_polls: AtomicU64,
    /// The pass `GcRun` started: whether dry, and the `GcStatus` calls since.
    gc: std::sync::Mutex<Option<(bool, u64)>>,
}

/// The fake's pass #7 as `GcStatus` reports it after `polls` calls (see the module docs).
fn fake_gc_report(dry_run: bool, polls: u64) -> pb::GcReport {
    let running = pb::GcReport {
        id: 7,
        dry_run,
        started_ms: 1_796_018_400_000,
        ..pb::GcReport::default()
    };
    let freed = |node_id, blobs, bytes| pb::GcNodeFreed {
        node_id,
        blobs,
        bytes,
    };
    match (dry_run, polls) {
        (_, 0) => running,
        (true, _) => pb::GcReport {
            finished_ms: running.started_ms + 100,
            error: "the reference counts are not built yet: a pass that is not dry builds \
                    them first"
                .into(),
            ..running
        },
        (false, 1 | 2) => pb::GcReport {
            candidates: 2,
            blobs: 1,
            bytes: 1024,
            ..running
        },
        (false, _) => pb::GcReport {
            finished_ms: running.started_ms + 2500,
            candidates: 2,
            blobs: 2,
            bytes: 3072,
            per_node: vec![freed(1, 2, 3072), freed(2, 1, 1024)],
            ..running
        },
    }
}

fn fake_policy(pattern: &str, regions: &[&str], on_demand: &[&str]) -> ReplicationPolicyEntry {
    ReplicationPolicyEntry {
        pattern: pattern.into(),
        policy: Some(ReplicationPolicy {
            regions: regions.iter().map(|r| r.to_string()).collect(),
            on_demand: on_demand.iter().map(|r| r.to_string()).collect(),
        }),
    }
}

fn fake_replication(complete: bool) -> ReplicationStatusResponse {
    let region = |name: &str, complete: bool| RegionReplication {
        region: name.into(),
        complete,
        pending_blobs: if complete { 0 } else { 2 },
        pending_bytes: if complete { 0 } else { 2048 },
        oldest_pending_age_ms: if complete { 0 } else { 1500 },
    };
    ReplicationStatusResponse {
        node_id: 1,
        complete,
        regions: vec![region("r1", true), region("r2", complete)],
        blobs: vec![],
        manifests: 1,
        stale: false,
        stale_reason: String::new(),
        applied_index: 40,
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<Progress, Status>> + Send>>;

fn progress(message: &str, matched_index: u64, target_index: u64, done: bool) -> Progress {
    Progress {
        message: message.into(),
        done,
        matched_index,
        target_index,
    }
}

fn answer(items: Vec<Result<Progress, Status>>) -> Result<Response<ProgressStream>, Status> {
    Ok(Response::new(Box::pin(stream::iter(items))))
}

fn fake_member(id: u64, role: &str, reachable: bool) -> Member {
    Member {
        id,
        url: format!("http://127.0.0.1:500{id}"),
        cluster_addr: format!("127.0.0.1:700{id}"),
        region: "default".into(),
        zone: "default".into(),
        role: role.into(),
        reachable,
        term: if reachable { 7 } else { 0 },
        last_log_index: if reachable { 5000 } else { 0 },
        applied_index: if reachable { 5000 } else { 0 },
        lag: 0,
        rtt_ms: 0.0,
        error: if reachable {
            String::new()
        } else {
            "connection refused".into()
        },
    }
}

#[tonic::async_trait]
impl Admin for FakeAdmin {
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        // clusterctl must pass its deadline on as the gRPC timeout.
        if request.metadata().get("grpc-timeout").is_none() {
            return Err(Status::invalid_argument("no grpc-timeout header"));
        }
        Ok(Response::new(StatusResponse {
            node_id: 1,
            term: 7,
            leader_id: 1,
            last_log_index: 5000,
            applied_index: 5000,
            members: vec![
                fake_member(1, "leader", true),
                fake_member(2, "voter", true),
                fake_member(3, "learner", false),
            ],
        }))
    }

    async fn node_status(
        &self,
        _request: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    type AddNodeStream = ProgressStream;

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let req = request.into_inner();
        match req.id {
            4 => answer(vec![
                Ok(progress(
                    &format!(
                        "adding node 4: cluster {}, url {}, region {}, zone {}",
                        req.cluster_addr, req.url, req.region, req.zone
                    ),
                    0,
                    0,
                    false,
                )),
                Ok(progress("catching up", 1200, 5000, false)),
                Ok(progress("catching up", 5000, 5000, false)),
                Ok(progress("node 4 added as a learner", 5000, 5000, true)),
            ]),
            9 => answer(vec![
                Ok(progress("adding node 9", 0, 0, false)),
                Err(Status::failed_precondition(
                    "node 9 cannot be reached at 10.0.0.9:7000",
                )),
            ]),
            id => Err(Status::invalid_argument(format!(
                "node {id} is not expected"
            ))),
        }
    }

    type PromoteNodeStream = ProgressStream;

    async fn promote_node(
        &self,
        request: Request<NodeRef>,
    ) -> Result<Response<ProgressStream>, Status> {
        match request.into_inner().id {
            2 => Err(Status::failed_precondition("node 2 is not a learner")),
            _ => answer(vec![Ok(progress("", 0, 0, true))]),
        }
    }

    type DemoteNodeStream = ProgressStream;

    async fn demote_node(
        &self,
        request: Request<NodeRef>,
    ) -> Result<Response<ProgressStream>, Status> {
        let id = request.into_inner().id;
        answer(vec![Ok(progress(
            &format!("demoting node {id}"),
            0,
            0,
            false,
        ))])
    }

    type RemoveNodeStream = ProgressStream;

    async fn remove_node(
        &self,
        _request: Request<NodeRef>,
    ) -> Result<Response<ProgressStream>, Status> {
        Err(Status::unavailable("no leader is known"))
    }

    async fn replication_status(
        &self,
        request: Request<ReplicationStatusRequest>,
    ) -> Result<Response<ReplicationStatusResponse>, Status> {
        match request.into_inner().reference.as_str() {
            "done:1" => Ok(Response::new(fake_replication(true))),
            "slow:1" => {
                let n = self.slow_polls.fetch_add(1, Ordering::SeqCst);
                Ok(Response::new(fake_replication(n >= 2)))
            }
            "stuck:1" => Ok(Response::new(fake_replication(false))),
            other => Err(Status::not_found(format!("manifest {other} not found"))),
        }
    }

    async fn get_replication_policy(
        &self,
        request: Request<ReplicationPolicyRef>,
    ) -> Result<Response<ReplicationPolicies>, Status> {
        let policies = match request.into_inner().pattern.as_str() {
            "" => vec![
                fake_policy("**", &[], &["r3"]),
                fake_policy("eu/**", &["r1", "r2"], &[]),
            ],
            "eu/**" => vec![fake_policy("eu/**", &["r1", "r2"], &[])],
            other => {
                return Err(Status::not_found(format!(
                    "replication policy {other:?} not found"
                )));
            }
        };
        Ok(Response::new(ReplicationPolicies { policies }))
    }

    async fn set_replication_policy(
        &self,
        request: Request<ReplicationPolicyEntry>,
    ) -> Result<Response<ReplicationPolicyEntry>, Status> {
        let mut entry = request.into_inner();
        if let Some(p) = entry.policy.as_mut() {
            p.regions.sort();
        }
        Ok(Response::new(entry))
    }

    async fn clear_replication_policy(
        &self,
        request: Request<ReplicationPolicyRef>,
    ) -> Result<Response<ReplicationPolicies>, Status> {
        match request.into_inner().pattern.as_str() {
            "eu/**" => Ok(Response::new(ReplicationPolicies {
                policies: vec![fake_policy("**", &[], &["r3"])],
            })),
            other => Err(Status::not_found(format!(
                "replication policy {other:?} not found"
            ))),
        }
    }

    async fn list_identities(
        &self,
        r: Request<pb::ListIdentitiesRequest>,
    ) -> AuthAnswer<pb::Identities> {
        fake_login(&r)?;
        let kind = r.into_inner().kind;
        let identities = ["admin", "ci-push"]
            .into_iter()
            .filter_map(fake_identity)
            .filter(|i| kind.is_empty() || i.kind == kind)
            .collect();
        Ok(Response::new(pb::Identities { identities }))
    }

    async fn get_identity(&self, r: Request<pb::IdentityRef>) -> AuthAnswer<pb::Identity> {
        fake_login(&r)?;
        let name = r.into_inner().name;
        fake_identity(&name)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("{name} does not exist")))
    }

    async fn create_user(&self, r: Request<pb::CreateUserRequest>) -> AuthAnswer<pb::Identity> {
        fake_login(&r)?;
        let req = r.into_inner();
        if req.password != "bobpassword" {
            return Err(Status::invalid_argument("not the expected password"));
        }
        Ok(Response::new(fake_identity(&req.name).unwrap_or_default()))
    }

    async fn create_token(
        &self,
        r: Request<pb::CreateTokenRequest>,
    ) -> AuthAnswer<pb::IdentityChanged> {
        fake_login(&r)?;
        let req = r.into_inner();
        if req.expiry_ms == 0 {
            return Err(Status::invalid_argument("the fake wants an expiry"));
        }
        Ok(Response::new(pb::IdentityChanged {
            identity: fake_identity(&req.name),
            passwords: generated(1..=req.passwords),
        }))
    }

    async fn update_identity(
        &self,
        r: Request<pb::UpdateIdentityRequest>,
    ) -> AuthAnswer<pb::IdentityChanged> {
        fake_login(&r)?;
        let req = r.into_inner();
        let passwords = match req.regenerate {
            0 => vec![],
            n => generated(n..=n),
        };
        Ok(Response::new(pb::IdentityChanged {
            identity: fake_identity(&req.name),
            passwords,
        }))
    }

    async fn delete_identity(&self, r: Request<pb::IdentityRef>) -> AuthAnswer<pb::Deleted> {
        fake_login(&r)?;
        Ok(Response::new(pb::Deleted {
            name: r.into_inner().name,
        }))
    }

    async fn list_scope_maps(
        &self,
        r: Request<pb::ListScopeMapsRequest>,
    ) -> AuthAnswer<pb::ScopeMaps> {
        fake_login(&r)?;
        Ok(Response::new(pb::ScopeMaps::default()))
    }

    async fn get_scope_map(&self, r: Request<pb::ScopeMapRef>) -> AuthAnswer<pb::ScopeMap> {
        fake_login(&r)?;
        Err(Status::not_found("not faked"))
    }

    async fn put_scope_map(&self, r: Request<pb::PutScopeMapRequest>) -> AuthAnswer<pb::ScopeMap> {
        fake_login(&r)?;
        let req = r.into_inner();
        Ok(Response::new(pb::ScopeMap {
            name: req.name,
            description: req.description.unwrap_or_default(),
            rules: req.rules,
            ..Default::default()
        }))
    }

    async fn delete_scope_map(&self, r: Request<pb::ScopeMapRef>) -> AuthAnswer<pb::Deleted> {
        fake_login(&r)?;
        match r.into_inner().name.as_str() {
            "ci" => Err(Status::failed_precondition(
                "scope map ci is used by token ci-push",
            )),
            other => Ok(Response::new(pb::Deleted { name: other.into() })),
        }
    }

    async fn list_roles(&self, r: Request<pb::ListRolesRequest>) -> AuthAnswer<pb::Roles> {
        fake_login(&r)?;
        Ok(Response::new(pb::Roles {
            roles: vec![pb::RoleInfo {
                name: "reader".into(),
                actions: vec!["content/read".into(), "metadata/read".into()],
                description: "pull and list".into(),
            }],
        }))
    }

    async fn list_auth_keys(
        &self,
        r: Request<pb::ListAuthKeysRequest>,
    ) -> AuthAnswer<pb::AuthKeys> {
        fake_login(&r)?;
        Ok(Response::new(pb::AuthKeys::default()))
    }

    async fn rotate_auth_key(
        &self,
        r: Request<pb::RotateAuthKeyRequest>,
    ) -> AuthAnswer<pb::AuthKeys> {
        fake_login(&r)?;
        Ok(Response::new(pb::AuthKeys {
            keys: vec![],
            signing_kid: "k2".into(),
        }))
    }

    async fn drop_auth_key(&self, r: Request<pb::AuthKeyRef>) -> AuthAnswer<pb::AuthKeys> {
        fake_login(&r)?;
        if r.get_ref().kid == "k2" {
            return Err(Status::failed_precondition(
                "signing key k2 signs now: rotate first; the key that signs cannot be dropped",
            ));
        }
        Ok(Response::new(pb::AuthKeys {
            keys: vec![],
            signing_kid: "k2".into(),
        }))
    }

    async fn get_auth_settings(
        &self,
        r: Request<pb::GetAuthSettingsRequest>,
    ) -> AuthAnswer<pb::AuthSettings> {
        fake_login(&r)?;
        Ok(Response::new(fake_settings(vec![], default_network())))
    }

    async fn set_anonymous_pull(
        &self,
        r: Request<pb::SetAnonymousPullRequest>,
    ) -> AuthAnswer<pb::AuthSettings> {
        fake_login(&r)?;
        let patterns = r.into_inner().patterns;
        Ok(Response::new(fake_settings(patterns, default_network())))
    }

    async fn set_network_rules(
        &self,
        r: Request<pb::SetNetworkRulesRequest>,
    ) -> AuthAnswer<pb::AuthSettings> {
        fake_login(&r)?;
        let req = r.into_inner();
        let mut n = default_network();
        n.default_allow = req.default_allow.unwrap_or(n.default_allow);
        n.public_access = req.public_access.unwrap_or(n.public_access);
        if req.set_allow {
            n.allow = req.allow;
        }
        Ok(Response::new(fake_settings(vec![], n)))
    }

    async fn set_repository_network_rule(
        &self,
        r: Request<pb::RepositoryNetworkRule>,
    ) -> AuthAnswer<pb::AuthSettings> {
        fake_login(&r)?;
        let mut n = default_network();
        n.repositories.push(r.into_inner());
        Ok(Response::new(fake_settings(vec![], n)))
    }

    async fn clear_repository_network_rule(
        &self,
        r: Request<pb::RepositoryNetworkRuleRef>,
    ) -> AuthAnswer<pb::AuthSettings> {
        fake_login(&r)?;
        Ok(Response::new(fake_settings(vec![], default_network())))
    }

    type TransferLeaderStream = ProgressStream;

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let to = request.into_inner().to;
        let first = stream::iter(vec![Ok(progress(
            &format!("transferring leadership to node {to}"),
            0,
            0,
            false,
        ))]);
        Ok(Response::new(Box::pin(first.chain(stream::pending()))))
    }

    async fn audit(
        &self,
        request: Request<AuditRequest>,
    ) -> Result<Response<AuditResponse>, Status> {
        if request.metadata().get("grpc-timeout").is_none() {
            return Err(Status::invalid_argument("no grpc-timeout header"));
        }
        let q = request.into_inner();
        let field = |k: &str, v: &str| AuditField {
            key: k.into(),
            value: v.into(),
        };
        let records = vec![
            AuditRecord {
                time_ms: 1_796_018_400_250,
                node_id: 1,
                region: "default".into(),
                identity: "ann".into(),
                address: "10.0.0.7".into(),
                event: "push".into(),
                fields: vec![field("repository", "team/app"), field("tag", "v1")],
            },
            AuditRecord {
                time_ms: 1_796_018_401_000,
                node_id: 1,
                region: "default".into(),
                identity: String::new(),
                address: "10.0.0.8".into(),
                event: "login_failed".into(),
                fields: vec![field("reason", "invalid user name or password")],
            },
        ];
        let mut records: Vec<AuditRecord> = records
            .into_iter()
            .filter(|r| r.time_ms >= q.since_ms)
            .filter(|r| q.identity.is_empty() || r.identity == q.identity)
            .collect();
        let skip = records.len().saturating_sub(q.limit as usize);
        Ok(Response::new(AuditResponse {
            node_id: 1,
            records: records.split_off(skip),
            dropped: 0,
        }))
    }

    async fn gc_run(
        &self,
        request: Request<pb::GcRunRequest>,
    ) -> Result<Response<pb::GcReport>, Status> {
        let r = request.into_inner();
        if r.wait {
            return Err(Status::invalid_argument(
                "clusterctl follows a pass with GcStatus",
            ));
        }
        let mut gc = self.gc.lock().unwrap();
        if gc.is_some() {
            return Err(Status::failed_precondition(
                "a garbage collection pass (#7) is already running on this node",
            ));
        }
        *gc = Some((r.dry_run, 0));
        Ok(Response::new(fake_gc_report(r.dry_run, 0)))
    }

    async fn gc_status(
        &self,
        _: Request<pb::GcStatusRequest>,
    ) -> Result<Response<pb::GcStatusResponse>, Status> {
        let mut gc = self.gc.lock().unwrap();
        let last = gc.as_mut().map(|(dry_run, polls)| {
            *polls += 1;
            fake_gc_report(*dry_run, *polls)
        });
        let reaped = last
            .as_ref()
            .is_some_and(|r| !r.dry_run && r.finished_ms > 0);
        Ok(Response::new(pb::GcStatusResponse {
            node_id: 1,
            last,
            reaper_removed_files: u64::from(reaped),
            reaper_removed_bytes: if reaped { 1024 } else { 0 },
        }))
    }

    async fn update_attributes(
        &self,
        request: Request<pb::UpdateAttributesRequest>,
    ) -> Result<Response<pb::AttributesEntry>, Status> {
        let r = request.into_inner();
        if r.repository != "app" {
            return Err(Status::not_found(format!(
                "repository {} does not exist",
                r.repository
            )));
        }
        Ok(Response::new(pb::AttributesEntry {
            attributes: Some(pb::Attributes {
                write_enabled: r.write_enabled.unwrap_or(true),
                delete_enabled: r.delete_enabled.unwrap_or(true),
                read_enabled: r.read_enabled.unwrap_or(true),
                list_enabled: r.list_enabled.unwrap_or(true),
            }),
            repository: r.repository,
            tag: r.tag,
            digest: r.digest,
        }))
    }

    async fn get_attributes(
        &self,
        _: Request<pb::RepositoryRef>,
    ) -> Result<Response<pb::RepositoryAttributes>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_deleted(
        &self,
        _: Request<pb::RepositoryRef>,
    ) -> Result<Response<pb::DeletedManifests>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn restore_manifest(
        &self,
        _: Request<pb::RestoreManifestRequest>,
    ) -> Result<Response<pb::RestoreManifestResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn set_soft_delete(
        &self,
        _: Request<pb::SoftDeleteSettings>,
    ) -> Result<Response<pb::SoftDeleteSettings>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn get_soft_delete(
        &self,
        _: Request<pb::GetSoftDeleteRequest>,
    ) -> Result<Response<pb::SoftDeleteSettings>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn set_retention(
        &self,
        _: Request<pb::RetentionPolicyEntry>,
    ) -> Result<Response<pb::RetentionPolicies>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn clear_retention(
        &self,
        _: Request<pb::RetentionPolicyRef>,
    ) -> Result<Response<pb::RetentionPolicies>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_retention(
        &self,
        _: Request<pb::ListRetentionRequest>,
    ) -> Result<Response<pb::RetentionPolicies>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn set_namespace(
        &self,
        _: Request<pb::SetNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn get_namespace(
        &self,
        _: Request<pb::NamespaceRef>,
    ) -> Result<Response<pb::Namespace>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_namespaces(
        &self,
        _: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::Namespaces>, Status> {
        Ok(Response::new(pb::Namespaces {
            namespaces: vec![
                pb::Namespace {
                    namespace: "team".into(),
                    quota_bytes: 100_000,
                    max_repositories: 2,
                    used_bytes: 1234,
                    repositories: 1,
                    ..pb::Namespace::default()
                },
                pb::Namespace {
                    namespace: "web".into(),
                    repositories: 3,
                    ..pb::Namespace::default()
                },
            ],
        }))
    }

    async fn purge(
        &self,
        request: Request<pb::PurgeRequest>,
    ) -> Result<Response<pb::PurgeReport>, Status> {
        let r = request.into_inner();
        if let Some(bad) = r.filters.iter().find(|f| f.starts_with('(')) {
            return Err(Status::invalid_argument(format!(
                "invalid filter {bad:?}: unclosed group"
            )));
        }
        let manifests = if r.untagged {
            vec![pb::PurgedManifest {
                repository: "app".into(),
                digest: "sha256:22".into(),
            }]
        } else {
            vec![]
        };
        Ok(Response::new(pb::PurgeReport {
            dry_run: r.dry_run,
            tags: vec![pb::PurgedTag {
                repository: "app".into(),
                tag: "v2".into(),
                digest: "sha256:22".into(),
            }],
            manifests,
            skipped: vec![pb::PurgeSkipped {
                what: "app:v1".into(),
                why: "the tag is locked".into(),
            }],
            // As a server cuts its lists: one more tag deleted than listed.
            tags_total: 2,
            manifests_total: if r.untagged { 1 } else { 0 },
            skipped_total: 1,
        }))
    }

    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let r = request.into_inner();
        if r.name == "taken" {
            return Err(Status::failed_precondition("webhook taken exists already"));
        }
        Ok(Response::new(pb::Webhook {
            name: r.name,
            uri: r.uri,
            headers: masked(r.headers),
            actions: r.actions,
            scopes: r.scopes,
            enabled: !r.disabled,
            region: r.region,
            format: r.format,
            created_ms: 1_801_353_600_000,
            updated_ms: 1_801_353_600_000,
            cursor: 0,
            backlog: 0,
        }))
    }

    async fn update_webhook(
        &self,
        request: Request<pb::UpdateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let r = request.into_inner();
        let unchanged = || vec!["unchanged".to_string()];
        Ok(Response::new(pb::Webhook {
            name: r.name,
            uri: r.uri.unwrap_or_else(|| "http://unchanged/".into()),
            headers: if r.set_headers {
                masked(r.headers)
            } else {
                fake_webhook().headers
            },
            actions: if r.set_actions {
                r.actions
            } else {
                unchanged()
            },
            scopes: if r.set_scopes { r.scopes } else { unchanged() },
            enabled: r.enabled.unwrap_or(true),
            region: r.region.unwrap_or_else(|| "unchanged".into()),
            format: r.format.unwrap_or_else(|| "unchanged".into()),
            ..fake_webhook()
        }))
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::WebhookRef>,
    ) -> Result<Response<pb::Deleted>, Status> {
        let name = request.into_inner().name;
        if name != "deploy" {
            return Err(Status::not_found(format!("webhook {name} does not exist")));
        }
        Ok(Response::new(pb::Deleted { name }))
    }

    async fn list_webhooks(
        &self,
        _: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::Webhooks>, Status> {
        Ok(Response::new(pb::Webhooks {
            webhooks: vec![fake_webhook()],
        }))
    }

    async fn get_webhook(
        &self,
        request: Request<pb::WebhookRef>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let name = request.into_inner().name;
        if name != "deploy" {
            return Err(Status::not_found(format!("webhook {name} does not exist")));
        }
        Ok(Response::new(fake_webhook()))
    }

    async fn ping_webhook(
        &self,
        request: Request<pb::WebhookRef>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let (status, error, excerpt) = match request.into_inner().name.as_str() {
            "down" => (503, "", "maintenance"),
            "refused" => (0, "connection refused", ""),
            _ => (200, "", "pong"),
        };
        Ok(Response::new(pb::WebhookDelivery {
            status,
            error: error.into(),
            excerpt: excerpt.into(),
            ..fake_delivery("ping")
        }))
    }

    async fn webhook_events(
        &self,
        _: Request<pb::WebhookEventsRequest>,
    ) -> Result<Response<pb::WebhookDeliveries>, Status> {
        Ok(Response::new(pb::WebhookDeliveries {
            deliveries: vec![
                pb::WebhookDelivery {
                    status: 200,
                    excerpt: "pong".into(),
                    ..fake_delivery("ping")
                },
                pb::WebhookDelivery {
                    seq: 4,
                    has_seq: true,
                    error: "timed out".into(),
                    attempts: 3,
                    ..fake_delivery("push")
                },
            ],
        }))
    }
}

/// Headers as a server answers them: values masked.
fn masked(headers: Vec<pb::WebhookHeader>) -> Vec<pb::WebhookHeader> {
    headers
        .into_iter()
        .map(|h| pb::WebhookHeader {
            name: h.name,
            value: "***".into(),
        })
        .collect()
}

fn fake_webhook() -> pb::Webhook {
    pb::Webhook {
        name: "deploy".into(),
        uri: "https://hooks.example/deploy".into(),
        headers: vec![pb::WebhookHeader {
            name: "Authorization".into(),
            value: "***".into(),
        }],
        actions: vec!["push".into(), "delete".into()],
        scopes: vec!["team/**:*".into()],
        enabled: true,
        region: String::new(),
        format: "acr".into(),
        created_ms: 1_801_353_600_000,
        updated_ms: 1_801_353_600_000,
        cursor: 5,
        backlog: 2,
    }
}

fn fake_delivery(action: &str) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        at_ms: 1_801_353_600_000,
        event_id: format!("{action}-1"),
        action: action.into(),
        latency_ms: 12,
        attempts: 1,
        node: 1,
        ..pb::WebhookDelivery::default()
    }
}

/// The fake's check of the credentials of an auth call.
fn fake_login<T>(request: &Request<T>) -> Result<(), Status> {
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:adminpw")
    );
    match request.metadata().get("authorization").map(|v| v.to_str()) {
        Some(Ok(v)) if v == basic || v == "Bearer good-token" => Ok(()),
        Some(_) => Err(Status::unauthenticated("invalid user name or password")),
        None => Err(Status::unauthenticated(
            "the admin service needs credentials",
        )),
    }
}

fn fake_identity(name: &str) -> Option<pb::Identity> {
    let slot = |slot| pb::PasswordInfo {
        slot,
        created_ms: 1_801_353_600_000,
        expiry_ms: 0,
    };
    let kind = match name {
        "admin" | "bob" => "user",
        "ci-push" => "token",
        _ => return None,
    };
    Some(pb::Identity {
        name: name.into(),
        kind: kind.into(),
        enabled: true,
        passwords: if kind == "token" {
            vec![slot(1), slot(2)]
        } else {
            vec![slot(1)]
        },
        scope_map: if kind == "token" {
            "ci".into()
        } else {
            String::new()
        },
        admin: name == "admin",
        created_ms: 1_801_353_600_000,
        updated_ms: 1_801_353_600_000,
        ..Default::default()
    })
}

fn generated(slots: std::ops::RangeInclusive<u32>) -> Vec<pb::NewPassword> {
    slots
        .map(|slot| pb::NewPassword {
            slot,
            password: format!("generated-{slot}"),
        })
        .collect()
}

fn fake_settings(anonymous_pull: Vec<String>, network: pb::NetworkRules) -> pb::AuthSettings {
    pb::AuthSettings {
        enabled: true,
        anonymous_pull,
        network: Some(network),
    }
}

fn default_network() -> pb::NetworkRules {
    pb::NetworkRules {
        default_allow: true,
        allow: vec![],
        public_access: true,
        repositories: vec![],
    }
}

type AuthAnswer<T> = Result<Response<T>, Status>;
