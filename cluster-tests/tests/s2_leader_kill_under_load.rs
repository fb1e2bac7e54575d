//! Scenario 2 — the leader is killed (`kill -9`) while 8 clients push continuously.
//!
//! Shows consistency line 6 (an acknowledged push is never lost, not by a crash, not by a
//! leader change) and the availability side of lines 1 and 4: writes stop only for the
//! election and resume at the survivors.
//!
//! The clients push small random images with distinct tags through the two followers (never
//! the leader, so that the kill costs them no connections); a 503 or a failed connection is
//! retried at the other survivor, and a push counts as acknowledged only when its manifest
//! PUT answered 201. The load phases are bounded by a count of acknowledged pushes and a
//! deadline. Afterwards the killed node is restarted and catches up, and every acknowledged
//! push is pulled, manifest and blobs byte for byte, from every node.

use std::time::{Duration, Instant};

use cluster_tests::{
    CONVERGE_TIMEOUT, ClusterBuilder, LEADER_TIMEOUT, Load, LoadSpec, READY_TIMEOUT,
};

const REPO: &str = "s2/load";
/// Acknowledged pushes wanted before the kill, and after it.
const ACKS_BEFORE: usize = 40;
const ACKS_AFTER: usize = 40;
/// Upper bounds of the two load phases.
const PHASE_TIMEOUT: Duration = Duration::from_secs(15);

#[test]
fn leader_kill_under_load_loses_no_acknowledged_push() {
    let mut c = ClusterBuilder::new().nodes(3).build();
    let leader = c.leader();
    let survivors = c.followers();
    assert_eq!(survivors.len(), 2);

    let start = Instant::now();
    let load = Load::start(
        LoadSpec {
            clients: 8,
            repo: REPO.to_string(),
            ..LoadSpec::default()
        },
        c.urls(&survivors),
    );
    let before = load.wait_for_acks_sent_after(start, ACKS_BEFORE, PHASE_TIMEOUT);
    assert!(before > 0, "no push was acknowledged before the kill");

    let killed_at = Instant::now();
    c.kill(leader);
    let new_leader = c.wait_for_leader_among(&survivors, LEADER_TIMEOUT);
    eprintln!(
        "killed leader {leader} after {before} acks; node {new_leader} leads after {:?}",
        killed_at.elapsed()
    );
    let after = load.wait_for_acks_sent_after(killed_at, ACKS_AFTER, PHASE_TIMEOUT);
    let report = load.stop();
    assert!(
        report.unexpected.is_empty(),
        "pushes got answers other than 201/503: {:?}",
        report.unexpected
    );
    assert!(
        after > 0,
        "no push was acknowledged after the leader was killed: {}",
        report.summary()
    );

    // The killed node comes back and catches up; then nothing acknowledged is missing anywhere.
    c.restart(leader);
    c.wait_for_ready(leader, READY_TIMEOUT);
    c.wait_for_applied_converged(CONVERGE_TIMEOUT);
    let images: Vec<_> = report.acked.iter().map(|a| a.image.clone()).collect();
    for id in c.ids() {
        let tags = c.must_tags(id, REPO);
        for image in &images {
            assert!(
                tags.binary_search(&image.tag).is_ok(),
                "node {id} lost acknowledged tag {} (of {} acked)",
                image.tag,
                images.len()
            );
        }
    }
    c.must_pull_everywhere(&c.ids(), &images);
}
