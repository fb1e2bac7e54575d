//! Scenario 6 — every node is killed at once (`kill -9`) and restarted.
//!
//! Shows consistency line 6 (an acknowledged push survives a crash of the whole cluster:
//! Raft log, state machine and blobs are durable before the 201) and that the cluster comes
//! back by itself: the restarted nodes elect a leader from their stored state, every image
//! is pullable from every node, and new pushes work at every node.

use std::time::Duration;

use cluster_tests::{
    CONVERGE_TIMEOUT, ClusterBuilder, LEADER_TIMEOUT, READY_TIMEOUT, random_layer,
};

const REPO: &str = "s6/app";

#[test]
fn whole_cluster_killed_and_restarted_keeps_every_image() {
    let mut c = ClusterBuilder::new().nodes(3).build();
    // Images pushed at every node, the last ones right before the kill.
    let mut images = Vec::new();
    for (i, id) in [1, 2, 3, 1, 2, 3].into_iter().enumerate() {
        let layers = [random_layer(4096 + i * 1000), random_layer(100 + i)];
        images.push(c.must_push_image(id, REPO, &format!("v{i}"), &layers));
    }

    for id in c.ids() {
        c.kill(id);
    }
    for id in c.ids() {
        c.restart(id);
    }
    let leader = c.wait_for_leader(LEADER_TIMEOUT);
    eprintln!("node {leader} leads after the restart");
    for id in c.ids() {
        c.wait_for_ready(id, READY_TIMEOUT);
    }
    c.wait_for_applied_converged(CONVERGE_TIMEOUT);
    let want: Vec<String> = (0..images.len()).map(|i| format!("v{i}")).collect();
    for id in c.ids() {
        assert_eq!(c.must_tags(id, REPO), want, "tags at node {id}");
    }
    c.must_pull_everywhere(&c.ids(), &images);

    // New pushes work at every node and are seen everywhere.
    let mut new = Vec::new();
    for id in c.ids() {
        new.push(c.must_push_image(id, REPO, &format!("after-{id}"), &[random_layer(2048)]));
    }
    for image in &new {
        for id in c.ids() {
            c.wait_for_image(id, image, Duration::from_secs(10));
        }
    }
    c.must_pull_everywhere(&c.ids(), &new);
}
