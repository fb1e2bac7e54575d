//! Scenario 5 — membership changes with `clusterctl` while clients push.
//!
//! Shows the Raft-topology contract (learners join, are promoted, voters are removed,
//! leadership moves, all through the admin CLI) and consistency line 6 across those changes:
//! no push fails except with a retried 503, and every acknowledged push is pullable byte for
//! byte from every remaining node.
//!
//! Three voters; a 4th node starts with `--join` (so it joins as a learner, which
//! `clusterctl status --json` shows); then, at a follower's endpoint (so each call is relayed
//! to the leader): `nodes promote 4`, `nodes remove <a non-leader old voter>`,
//! `leader transfer --to 4` — each exits 0. A refusal is checked too: `nodes promote 99`
//! (no such member) exits non-zero with a message. (Removing the last voter is refused by the
//! node as well, but a one-voter cluster is not cheap to reach here.)

use std::time::{Duration, Instant};

use cluster_tests::clusterctl::{self, CtlOutput};
use cluster_tests::{
    CONVERGE_TIMEOUT, ClusterBuilder, LEADER_TIMEOUT, Load, LoadSpec, StatusResponse, wait_until,
};

const REPO: &str = "s5/load";
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the answering node may take to apply a membership change the leader committed.
const ROLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Acknowledged pushes wanted after each change, and the bound on waiting for them.
const ACKS_PER_PHASE: usize = 15;
const PHASE_TIMEOUT: Duration = Duration::from_secs(15);

fn ctl(endpoint: &str, args: &[&str]) -> CtlOutput {
    clusterctl::run(endpoint, args, CTL_TIMEOUT)
}

/// The role of member `id` in `clusterctl status --json` output (`None`: not a member).
fn role_of(status: &serde_json::Value, id: u64) -> Option<String> {
    status["members"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json has no members array: {status}"))
        .iter()
        .find(|m| m["id"].as_u64() == Some(id))
        .map(|m| m["role"].as_str().unwrap_or_default().to_string())
}

/// Waits until `clusterctl status --json` at `endpoint` shows member `id` with `role`
/// (`None`: not a member). The answering node reports the membership it has applied, which
/// may lag the leader's for a moment after a change.
fn wait_for_role(endpoint: &str, id: u64, role: Option<&str>) {
    wait_until(
        &format!("clusterctl status to show node {id} as {role:?}"),
        ROLE_TIMEOUT,
        || {
            let out = ctl(endpoint, &["--json", "status"]);
            out.assert_success();
            let json = out.json();
            if role_of(&json, id).as_deref() == role {
                Ok(())
            } else {
                Err(json.to_string())
            }
        },
    );
}

/// Asserts that a membership command's `--json` lines end with a successful outcome.
fn assert_done(out: &CtlOutput) {
    out.assert_success();
    let lines = out.json_lines();
    let last = lines.last().unwrap_or_else(|| panic!("no output: {out:?}"));
    assert_eq!(
        last["ok"],
        serde_json::Value::Bool(true),
        "last line: {last}"
    );
}

#[test]
fn add_promote_remove_transfer_under_load() {
    let mut c = ClusterBuilder::new().nodes(3).build();
    let leader = c.leader();
    let followers = c.followers();
    let (removed, kept) = (followers[0], followers[1]);
    // Every call at a follower's endpoint: the node relays it to the leader.
    let endpoint = c.node(kept).cluster_addr();

    let start = Instant::now();
    let load = Load::start(
        LoadSpec {
            clients: 6,
            repo: REPO.to_string(),
            ..LoadSpec::default()
        },
        c.urls(&[leader, kept]),
    );
    assert!(load.wait_for_acks_sent_after(start, ACKS_PER_PHASE, PHASE_TIMEOUT) > 0);

    // Node 4 joins as a learner.
    let new = c.add_node(leader);
    assert_eq!(new, 4);
    wait_for_role(&endpoint, new, Some("learner"));

    let t = Instant::now();
    assert_done(&ctl(&endpoint, &["--json", "nodes", "promote", "4"]));
    wait_for_role(&endpoint, new, Some("voter"));
    load.set_targets(c.urls(&[leader, kept, new]));
    assert!(load.wait_for_acks_sent_after(t, ACKS_PER_PHASE, PHASE_TIMEOUT) > 0);

    let t = Instant::now();
    assert_done(&ctl(
        &endpoint,
        &["--json", "nodes", "remove", &removed.to_string()],
    ));
    wait_for_role(&endpoint, removed, None);
    // Until the operator stops it, the removed node tells load balancers it is not ready.
    let client = c.node(removed).client();
    wait_until(
        "the removed node to answer /readyz 503",
        LEADER_TIMEOUT,
        || match client.get("/readyz") {
            Ok(r) if r.status == 503 => Ok(()),
            Ok(r) => Err(format!("/readyz {}: {}", r.status, r.text().trim())),
            Err(e) => Err(e),
        },
    );
    // The operator decommissions the removed node.
    assert!(
        c.node_mut(removed).stop().is_some(),
        "node {removed} did not exit on SIGTERM"
    );
    assert!(load.wait_for_acks_sent_after(t, ACKS_PER_PHASE, PHASE_TIMEOUT) > 0);

    let t = Instant::now();
    assert_done(&ctl(
        &endpoint,
        &["--json", "leader", "transfer", "--to", "4"],
    ));
    assert_eq!(c.wait_for_leader(LEADER_TIMEOUT), new);
    let after_transfer = load.wait_for_acks_sent_after(t, ACKS_PER_PHASE, PHASE_TIMEOUT);

    // A refusal: no node 99.
    let refused = ctl(&endpoint, &["nodes", "promote", "99"]);
    assert!(
        !refused.status.success(),
        "promote 99 succeeded: {refused:?}"
    );
    assert!(
        refused.stderr.contains("99"),
        "promote 99 failed without saying why: {refused:?}"
    );

    let report = load.stop();
    assert!(
        after_transfer > 0,
        "no push acknowledged after the transfer: {}",
        report.summary()
    );
    assert!(
        report.unexpected.is_empty() && report.transport_errors == 0,
        "errors other than retried 503s: {}; {:?}; {:?}",
        report.summary(),
        report.unexpected,
        report.sample_errors
    );

    let remaining = c.running_ids();
    assert_eq!(remaining, vec![leader.min(kept), leader.max(kept), new]);
    let status: StatusResponse = c.status(new);
    assert_eq!(status.leader_id, new);
    assert_eq!(status.members.len(), 3, "members: {:?}", status.members);
    c.wait_for_applied_converged(CONVERGE_TIMEOUT);
    let images: Vec<_> = report.acked.iter().map(|a| a.image.clone()).collect();
    for id in &remaining {
        let tags = c.must_tags(*id, REPO);
        for image in &images {
            assert!(
                tags.binary_search(&image.tag).is_ok(),
                "node {id} lost acknowledged tag {}",
                image.tag
            );
        }
    }
    c.must_pull_everywhere(&remaining, &images);
}
