//! Scenario 8 — SIGTERM ends a node within its shutdown grace, whatever its peers do.
//!
//! A follower keeps a long-lived replication stream from the leader open on its cluster
//! endpoint, and the leader keeps one open to each follower; neither may hold the shutdown
//! past `shutdown_grace_secs` (plus berth's fixed margin for stopping Raft, the cluster
//! endpoint and the metadata store). Each stopped node exits with status 0, and the cluster
//! goes on with the rest.

use std::time::{Duration, Instant};

use cluster_tests::{ClusterBuilder, LEADER_TIMEOUT, random_layer};

/// The grace this scenario configures.
const GRACE_SECS: u64 = 3;
/// What the test allows on top of the grace: berth's margin is 5 s at most, and an idle node
/// needs none of the grace; 2 s covers process exit and polling on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);

const REPO: &str = "s8/app";

/// SIGTERMs node `id`, and asserts it exits with 0 within the grace plus [`SLACK`].
fn must_stop_in_time(c: &mut cluster_tests::Cluster, id: u64) {
    let started = Instant::now();
    let status = c.node_mut(id).stop();
    let took = started.elapsed();
    let tail = c.node(id).stderr_tail(40);
    let status = status.unwrap_or_else(|| {
        panic!("node {id} still ran {took:?} after SIGTERM (SIGKILLed); stderr:\n{tail}")
    });
    assert!(
        status.success(),
        "node {id} exited with {status} after SIGTERM; stderr:\n{tail}"
    );
    let bound = Duration::from_secs(GRACE_SECS) + SLACK;
    assert!(
        took <= bound,
        "node {id} took {took:?} to exit after SIGTERM (bound {bound:?}); stderr:\n{tail}"
    );
    eprintln!("node {id} exited {took:?} after SIGTERM");
}

#[test]
fn sigterm_ends_a_follower_then_the_leader_within_the_grace() {
    let mut c = ClusterBuilder::new()
        .nodes(3)
        .env("BERTH_SHUTDOWN_GRACE_SECS", &GRACE_SECS.to_string())
        .build();
    let leader = c.leader();
    // Replication streams are open and busy.
    c.must_push_image(leader, REPO, "v1", &[random_layer(4096)]);

    let follower = c.followers()[0];
    must_stop_in_time(&mut c, follower);

    // The two left still form a quorum and take writes.
    let leader = c.wait_for_leader_among(&c.running_ids(), LEADER_TIMEOUT);
    c.must_push_image(leader, REPO, "v2", &[random_layer(2048)]);

    // The leader, with a follower alive that keeps asking for it.
    must_stop_in_time(&mut c, leader);
    let last = c.running_ids();
    assert_eq!(last.len(), 1, "one node left: {last:?}");
    // A node without quorum stops in time too.
    must_stop_in_time(&mut c, last[0]);
}
