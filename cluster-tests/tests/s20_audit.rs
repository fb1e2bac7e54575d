//! Scenario 20 — the audit log across a cluster: each node records what happened at it, and
//! `clusterctl audit` asks every member and merges.
//!
//! 1. Three nodes in two regions (the harness's joins and promotions are admin changes too).
//!    A push at node 1 (auth off: anonymous, from 127.0.0.1), a
//!    replication policy set and cleared through node 2, and a promote of a voter (refused)
//!    through node 3 (a follower relays it to the leader; without mutual TLS the leader cannot
//!    tell a relay from a client that sets the relay marker, so it records the call too).
//! 2. `clusterctl audit --json` at node 3 returns the push from node 1 and the three admin
//!    changes, each with its node, region, identity (`cluster`: no authorization metadata, no
//!    client certificate) and outcome; `--identity` filters.
//! 3. With node 2 killed, `clusterctl audit` at node 1 still exits 0, shows node 1's records
//!    and reports node 2 as not answering.

use std::time::Duration;

use cluster_tests::clusterctl::{self, CtlOutput};
use cluster_tests::{ClusterBuilder, LEADER_TIMEOUT, random_layer, wait_until};
use serde_json::Value;

/// Bound on one clusterctl run.
const CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long records may take to reach a node's store (its writer stores them in the
/// background).
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

fn ctl(endpoint: &str, args: &[&str]) -> CtlOutput {
    clusterctl::run(endpoint, args, CTL_TIMEOUT)
}

/// `clusterctl --json audit <args>` at `endpoint`: the record lines.
fn audit_records(endpoint: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "audit"];
    all.extend_from_slice(args);
    let out = ctl(endpoint, &all);
    out.assert_success();
    out.json_lines()
        .into_iter()
        .filter(|l| l.get("event").is_some())
        .collect()
}

fn admin_changes<'a>(records: &'a [Value], what: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["event"] == "admin_change" && r["what"] == what)
        .collect()
}

#[test]
fn every_member_answers_for_what_it_saw_and_clusterctl_merges_them() {
    let mut cluster = ClusterBuilder::new()
        .nodes(3)
        .regions(&["eu", "us"])
        .build();
    cluster.wait_for_leader(LEADER_TIMEOUT);
    let addrs: Vec<String> = cluster
        .ids()
        .iter()
        .map(|&id| cluster.node(id).cluster_addr())
        .collect();
    let at = |id: u64| addrs[(id - 1) as usize].clone();

    // 1. What happens, and where.
    let image = cluster.must_push_image(1, "team/app", "v1", &[random_layer(4096)]);
    ctl(&at(2), &["replication", "policy", "set", "team/**"]).assert_success();
    ctl(&at(2), &["replication", "policy", "clear", "team/**"]).assert_success();
    let leader = cluster.leader();
    let refused = ctl(&at(3), &["nodes", "promote", &leader.to_string()]);
    assert!(!refused.status.success(), "promoting a voter is refused");

    // 2. Merged from every member.
    let records = wait_until("the audit records of every member", RECORD_TIMEOUT, || {
        let records = audit_records(&at(3), &[]);
        let promote = admin_changes(&records, "PromoteNode")
            .into_iter()
            .filter(|r| r["target"] == format!("node {leader}"))
            .count();
        let policies = admin_changes(&records, "SetReplicationPolicy").len()
            + admin_changes(&records, "ClearReplicationPolicy").len();
        let push = records.iter().any(|r| r["event"] == "push");
        let expected = if leader == 3 { 1 } else { 2 };
        if push && promote == expected && policies == 2 {
            Ok(records)
        } else {
            Err(format!("{records:?}"))
        }
    });
    let push = records.iter().find(|r| r["event"] == "push").unwrap();
    assert_eq!(push["node"], 1, "{push}");
    assert_eq!(push["region"], "eu", "{push}");
    assert_eq!(push["repository"], "team/app");
    assert_eq!(push["tag"], "v1");
    assert_eq!(push["digest"], image.manifest_digest.as_str());
    assert_eq!(push["identity"], Value::Null, "auth is off: anonymous");
    assert_eq!(push["address"], "127.0.0.1");
    for r in admin_changes(&records, "SetReplicationPolicy")
        .into_iter()
        .chain(admin_changes(&records, "ClearReplicationPolicy"))
    {
        assert_eq!(r["node"], 2, "{r}");
        assert_eq!(r["region"], "us", "{r}");
        assert_eq!(r["identity"], "cluster", "{r}");
        assert_eq!(r["target"], "team/**", "{r}");
        assert_eq!(r["outcome"], "ok", "{r}");
        assert_eq!(r["address"], "127.0.0.1", "{r}");
    }
    // The harness's own joins and promotions are there too (`AddNode` from `--join`).
    assert!(!admin_changes(&records, "AddNode").is_empty());
    let promotes: Vec<&Value> = admin_changes(&records, "PromoteNode")
        .into_iter()
        .filter(|r| r["target"] == format!("node {leader}"))
        .collect();
    let mut at_nodes: Vec<u64> = promotes
        .iter()
        .map(|r| r["node"].as_u64().unwrap())
        .collect();
    at_nodes.sort();
    let mut want = vec![3, leader];
    want.sort();
    want.dedup();
    assert_eq!(
        at_nodes, want,
        "recorded where it was called and at the leader: {promotes:?}"
    );
    for promote in promotes {
        assert!(
            promote["outcome"].as_str().unwrap().starts_with("failed"),
            "{promote}"
        );
    }
    let times: Vec<u64> = records
        .iter()
        .map(|r| r["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "merged by time");
    let cluster_only = audit_records(&at(1), &["--identity", "cluster"]);
    assert_eq!(
        cluster_only.len(),
        admin_changes(&records, "AddNode").len() + admin_changes(&records, "PromoteNode").len() + 2,
        "{cluster_only:?}"
    );
    assert!(cluster_only.iter().all(|r| r["identity"] == "cluster"));

    // 3. A member that does not answer is reported, not fatal.
    cluster.kill(2);
    let out = ctl(&at(1), &["audit"]);
    out.assert_success();
    assert!(out.stdout.contains("push"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains(&format!("node 2 ({}) did not answer", at(2))),
        "{}",
        out.stdout
    );
}

/// With mutual TLS on the cluster port, an admin change is recorded under the client
/// certificate (`cert:` and the start of its SHA-256), and `clusterctl audit` reaches every
/// member over TLS.
#[test]
fn admin_changes_over_mutual_tls_name_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).to_string_lossy().into_owned();
    for args in [
        vec!["certs", "init", "--out", &p("ca")],
        vec![
            "certs",
            "issue",
            "--ca",
            &p("ca"),
            "--name",
            "node",
            "--host",
            "127.0.0.1",
            "--out",
            &p("node"),
        ],
    ] {
        ctl("127.0.0.1:1", &args).assert_success();
    }
    let cluster = ClusterBuilder::new()
        .nodes(2)
        .cluster_tls(&dir.path().join("node"))
        .build();
    let (ca, cert, key) = (p("node/ca.pem"), p("node/node.pem"), p("node/node-key.pem"));
    let tls = ["--ca", &ca, "--cert", &cert, "--key", &key];
    let at1 = cluster.node(1).cluster_addr();
    let with_tls = |args: &[&'static str]| -> Vec<String> {
        tls.iter().chain(args).map(|a| a.to_string()).collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl(&at1, &args)
    };
    run(with_tls(&["replication", "policy", "set", "x/**"])).assert_success();
    let change = wait_until("the policy change in the audit log", RECORD_TIMEOUT, || {
        let out = run(with_tls(&["--json", "audit"]));
        out.assert_success();
        let lines = out.json_lines();
        assert!(
            lines.iter().all(|l| l.get("error").is_none()),
            "every member answers over TLS: {lines:?}"
        );
        lines
            .into_iter()
            .find(|l| l["what"] == "SetReplicationPolicy")
            .ok_or_else(|| out.stdout.clone())
    });
    let identity = change["identity"].as_str().unwrap();
    assert!(
        identity.starts_with("cert:") && identity.len() == "cert:".len() + 16,
        "{change}"
    );
}
