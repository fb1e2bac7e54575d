//! Scenario 9 — regions a WAN apart (ADR 012), emulated by the fault layer's links: every
//! connection between nodes of different regions pays a delay each way (and, where a test
//! says so, a bandwidth cap), applied by berth's in-process delay proxy.
//!
//! - With berth's default Raft timings and 150 ms one way between three regions, the cluster
//!   forms, elects one leader, keeps it and its term for 20 s (no spurious elections), and
//!   commits pushes at the leader and at followers.
//! - With `raft.preferred_leader_region`, leadership moves to that region and stays there.
//! - A learner joining behind a slow link (100 ms each way, 2 MB/s) after the log was
//!   compacted receives a multi-megabyte snapshot and catches up.
//! - The round trips a node measures (admin `Status`, `clusterctl status --json`, `GET
//!   /metrics`) follow the links: a near peer shows a shorter RTT than a far one, and each at
//!   least twice its delay.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster_tests::clusterctl;
use cluster_tests::oci::Image;
use cluster_tests::{CONVERGE_TIMEOUT, ClusterBuilder, random_layer, wait_until};

const REPO: &str = "s9/app";
const WAN: Duration = Duration::from_millis(150);
/// How long the leader and term must hold still.
const STABLE_FOR: Duration = Duration::from_secs(20);

/// Every node's (leader, term), or why it could not be read.
fn leaders_and_terms(c: &cluster_tests::Cluster) -> Result<BTreeMap<u64, (u64, u64)>, String> {
    c.ids()
        .into_iter()
        .map(|id| c.node_status(id).map(|s| (id, (s.leader_id, s.term))))
        .collect()
}

#[test]
fn three_regions_150ms_apart_elect_once_stay_stable_and_commit() {
    let c = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .default_raft_timing()
        .region_links(WAN, None)
        .build();
    let leader = c.leader();
    let before = leaders_and_terms(&c).expect("every node answers");
    let term = before[&leader].1;
    assert!(
        before.values().all(|(l, t)| *l == leader && *t == term),
        "the nodes disagree: {before:?}"
    );

    // Writes commit across the WAN: at the leader, and forwarded from a follower.
    let at_leader = c.must_push_image(leader, REPO, "at-leader", &[random_layer(4096)]);
    let follower = c.followers()[0];
    let at_follower = c.must_push_image(follower, REPO, "at-follower", &[random_layer(2048)]);

    // Leader and term hold still: no election fires across 150 ms links.
    let started = Instant::now();
    let mut samples = 0;
    while started.elapsed() < STABLE_FOR {
        let now = leaders_and_terms(&c).expect("every node answers");
        assert_eq!(
            now,
            before,
            "leadership or term changed after {:?} ({samples} samples)",
            started.elapsed()
        );
        samples += 1;
        std::thread::sleep(Duration::from_millis(500));
    }

    c.wait_for_applied_converged(CONVERGE_TIMEOUT);
    c.must_pull_everywhere(&c.ids(), &[at_leader, at_follower]);
    assert_eq!(leaders_and_terms(&c).expect("every node answers"), before);
}

#[test]
fn leadership_moves_to_the_preferred_region_and_stays() {
    let c = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .default_raft_timing()
        .region_links(Duration::from_millis(50), None)
        .env("BERTH_RAFT__PREFERRED_LEADER_REGION", "r3")
        .build();
    // Node 1 (r1) initialised the cluster and led it; node 3 is the voter of r3.
    let leader = wait_until(
        "leadership to move to region r3",
        Duration::from_secs(40),
        || {
            let l = c.leader();
            if l == 3 {
                Ok(l)
            } else {
                Err(format!("node {l} leads"))
            }
        },
    );
    let term = c.node_status(leader).expect("the leader answers").term;
    // It stays: the preference never moves leadership out of the region.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let s = c.node_status(3).expect("node 3 answers");
        assert_eq!(
            (s.state.as_str(), s.term),
            ("leader", term),
            "node 3 lost leadership"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let image = c.must_push_image(1, REPO, "preferred", &[random_layer(1000)]);
    c.must_pull_image(3, REPO, "preferred", &image);
}

#[test]
fn a_learner_behind_a_slow_link_catches_up_from_a_snapshot() {
    // Snapshot (and compact) every 20 entries: a node joining later cannot replay the log.
    let mut c = ClusterBuilder::new()
        .nodes(1)
        .default_raft_timing()
        .snapshots(20, 5)
        .build();
    // About 6 MiB of metadata: manifests with a 768 KiB annotation each.
    let pad = "x".repeat(768 * 1024);
    let mut pushed = Vec::new();
    for i in 0..8 {
        let tag = format!("big-{i}");
        let layer = random_layer(1000);
        let image = Image::with_annotation(REPO, &tag, &[layer], Some(("pad", &pad)));
        pushed.push(c.client(1).must_push(&image));
    }
    // Node 2 will be behind 100 ms each way and 2 MB/s: the snapshot takes seconds to cross.
    c.set_link(1, 2, Duration::from_millis(100), Some(2_000_000));
    let started = Instant::now();
    let learner = c.add_node(1);
    assert_eq!(learner, 2);
    let last = c.wait_for_applied_converged(Duration::from_secs(60));
    eprintln!(
        "the learner caught up to index {last} in {:?}",
        started.elapsed()
    );
    let log = c.node(2).all_stderr();
    assert!(
        log.contains("installed metadata snapshot"),
        "the learner caught up without a snapshot; stderr:\n{}",
        c.node(2).stderr_tail(40)
    );
    let s = c.status(1);
    let m = s
        .members
        .iter()
        .find(|m| m.id == 2)
        .expect("node 2 is a member");
    assert_eq!(m.role, "learner", "{s:?}");
    c.must_pull_everywhere(&[2], &pushed[..2]);
}

#[test]
fn measured_round_trips_follow_the_links() {
    let c = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .default_raft_timing()
        .build();
    // From node 1: r2 is near (20 ms each way), r3 far (120 ms each way).
    c.set_link(1, 2, Duration::from_millis(20), None);
    c.set_link(1, 3, Duration::from_millis(120), None);
    // The smoothed RTT converges within a few probes (every 2 s).
    let (near, far) = wait_until(
        "node 1 to measure both links",
        Duration::from_secs(30),
        || {
            let s = c.status(1);
            let rtt = |id| {
                s.members
                    .iter()
                    .find(|m| m.id == id)
                    .map_or(0.0, |m| m.rtt_ms)
            };
            let (near, far) = (rtt(2), rtt(3));
            if near >= 40.0 && far >= 240.0 && near < far {
                Ok((near, far))
            } else {
                Err(format!("rtt to node 2: {near} ms, to node 3: {far} ms"))
            }
        },
    );
    eprintln!("node 1 measures {near:.1} ms to node 2 and {far:.1} ms to node 3");
    assert_eq!(
        c.status(1)
            .members
            .iter()
            .find(|m| m.id == 1)
            .map(|m| m.rtt_ms),
        Some(0.0),
        "a node does not measure itself"
    );

    // clusterctl shows the same view.
    let out = clusterctl::run(
        &c.node(1).cluster_addr(),
        &["--json", "status"],
        Duration::from_secs(20),
    );
    out.assert_success();
    let status = out.json();
    let rtt = |id: u64| {
        status["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["id"] == id)
            .and_then(|m| m["rtt_ms"].as_f64())
            .unwrap_or_else(|| panic!("no rtt_ms of node {id}: {status}"))
    };
    assert!(rtt(2) >= 40.0 && rtt(3) >= 240.0, "{status}");
    assert!(rtt(2) < rtt(3), "{status}");

    // And the metrics: one RTT gauge and one up gauge per peer, labelled with its region.
    let r = c.client(1).get("/metrics").expect("GET /metrics at node 1");
    assert_eq!(r.status, 200);
    let text = r.text();
    let gauge = |name: &str, peer: u64, region: &str| -> f64 {
        let prefix = format!("{name}{{peer=\"{peer}\",region=\"{region}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
    };
    assert!(gauge("berth_peer_rtt_seconds", 3, "r3") >= 0.24, "{text}");
    assert!(gauge("berth_peer_rtt_seconds", 2, "r2") >= 0.04, "{text}");
    assert_eq!(gauge("berth_peer_up", 3, "r3"), 1.0, "{text}");

    // Lifting the links brings the measured round trips back down.
    c.clear_links();
    wait_until(
        "node 1's RTT to node 3 to fall",
        Duration::from_secs(30),
        || {
            let s = c.status(1);
            let far = s
                .members
                .iter()
                .find(|m| m.id == 3)
                .map_or(0.0, |m| m.rtt_ms);
            if far > 0.0 && far < 100.0 {
                Ok(())
            } else {
                Err(format!("rtt to node 3: {far} ms"))
            }
        },
    );
}
