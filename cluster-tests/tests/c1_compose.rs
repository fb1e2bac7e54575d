//! Compose scenarios: the three-region cluster of `deploy/compose`, brought up by
//! `scripts/compose up` from the `BERTH_BIN` that `scripts/test` built, with the Docker
//! engine's own `docker push` / `docker pull` at the regions' endpoints, under the faults a
//! real deployment meets: a node killed and started again, every node killed at once, a region
//! cut off from the others, a slow link between regions, the loss of the node an image was
//! pushed to once replication completed.
//!
//! Each test brings up its own project on fresh ports (cluster_tests::compose) and takes it
//! down at the end, also when it fails. A test runs when the Docker engine answers and prints
//! `SKIPPED …` otherwise — unless `BERTH_REQUIRE_CLIENT_TOOLS` names docker (scripts/test sets
//! it on a machine with an engine), and then an unavailable engine fails it. The bandwidth
//! test also needs root (`nsenter`, `tc`).

use std::time::Duration;

use cluster_tests::compose::{self, Compose, VOTERS};
use cluster_tests::oci::OCI_MANIFEST;
use cluster_tests::random_layer;

/// How long a write at a cut-off region may take to be refused (it waits for the leader
/// through its write timeout, 10 s by default).
const REFUSAL_WITHIN: Duration = Duration::from_secs(30);
/// How long a healed region may take to see what was written while it was cut off.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of a `docker push` at a cut-off region: docker tries a refused upload five times,
/// pausing 5, 10, 15 and 20 s between tries, and each try waits for the write timeout.
const DOCKER_REFUSAL_WITHIN: Duration = Duration::from_secs(300);
/// The repository docker tries to push to at the cut-off region.
const REFUSED_REPO: &str = "c1/refused";

/// Push at r1 with docker; docker pulls the same image at r2, r3 and r1's learner, each
/// reading through from r1 (every blob downloaded again from that endpoint).
#[test]
fn docker_push_at_r1_pulls_the_same_image_at_r2_r3_and_the_learner() {
    let test = "docker_push_at_r1_pulls_the_same_image_at_r2_r3_and_the_learner";
    if !compose::ready(test) {
        return;
    }
    let c = Compose::up();

    // The layout the compose file promises: regions, roles, one leader.
    let status = c.status(1).expect("clusterctl status through node 1");
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 4, "{status}");
    for m in members {
        let id = m["id"].as_u64().unwrap();
        assert_eq!(m["region"], compose::region_of(id), "{m}");
        assert_eq!(m["reachable"], true, "{m}");
        let role = m["role"].as_str().unwrap();
        if id == 4 {
            assert_eq!(role, "learner", "{m}");
        } else {
            assert!(role == "voter" || role == "leader", "{m}");
        }
    }
    assert!(VOTERS.contains(&status["leader_id"].as_u64().unwrap()));

    let image = c.docker_image("c1/app", "1", 2 * 1024 * 1024);
    let digest = c.docker_push(1, &image);
    for id in [2, 3, 4] {
        c.docker_pull_same(id, &image, Some(&digest));
        eprintln!("{test}: node {id} served the image pushed at node 1");
    }
    // The manifest the registry serves everywhere is the one docker pushed.
    for id in compose::NODES {
        let m = c.client(id).get_manifest("c1/app", "1").unwrap();
        assert_eq!(m.status, 200, "node {id}: {}", m.text());
        assert_eq!(
            m.header("docker-content-digest"),
            Some(digest.as_str()),
            "node {id}"
        );
    }

    // An OCI image pushed at r1 and pulled at r2 and r3 at once: both read through from r1
    // concurrently, byte for byte.
    let pushed = c.client(1).must_push_image(
        "c1/oci",
        "1",
        &[random_layer(3 * 1024 * 1024), random_layer(64 * 1024)],
    );
    std::thread::scope(|s| {
        for id in [2, 3] {
            let (c, pushed) = (&c, &pushed);
            s.spawn(move || c.client(id).must_pull_image("c1/oci", "1", pushed));
        }
    });
}

/// `docker kill` of a voter that does not lead: the others keep taking pushes and serving
/// pulls; after `docker start` it catches up and serves what was pushed while it was down.
#[test]
fn killed_follower_comes_back_and_serves_what_was_pushed_meanwhile() {
    let test = "killed_follower_comes_back_and_serves_what_was_pushed_meanwhile";
    if !compose::ready(test) {
        return;
    }
    let c = Compose::up();
    let leader = c.leader();
    let victim = *VOTERS.iter().rev().find(|id| **id != leader).unwrap();
    let others: Vec<u64> = compose::NODES
        .into_iter()
        .filter(|id| *id != victim)
        .collect();

    let before = c.docker_image("c1/kill", "before", 1024 * 1024);
    let before_digest = c.docker_push(leader, &before);

    c.kill(victim);
    eprintln!("{test}: killed node {victim} (leader {leader})");
    let during = c.docker_image("c1/kill", "during", 1024 * 1024);
    let pushed_at = *others.iter().find(|id| **id != leader).unwrap();
    let during_digest = c.docker_push(pushed_at, &during);
    for id in &others {
        c.docker_pull_same(*id, &before, Some(&before_digest));
        c.docker_pull_same(*id, &during, Some(&during_digest));
    }

    c.start(victim);
    c.wait_ready(victim, compose::READY_TIMEOUT);
    // Ready means it hears from the leader; it may still be catching up with the log.
    c.wait_for_tag(victim, "c1/kill", "during", CONVERGE_TIMEOUT);
    c.docker_pull_same(victim, &during, Some(&during_digest));
    c.docker_pull_same(victim, &before, Some(&before_digest));
    let status = c.status(victim).expect("status through the restarted node");
    assert!(
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["reachable"] == true),
        "{status}"
    );
}

/// Region r3 cut off (its node disconnected from `wan`): it serves pulls of what it held,
/// refuses a manifest push with 503, and a `docker push` of a new image there fails; the rest
/// of the cluster takes a push; after reconnecting, r3 sees and serves that push with no manual
/// step, and nothing r3 refused exists at any node.
#[test]
fn cut_off_region_serves_what_it_had_refuses_writes_and_converges_after_reconnect() {
    let test = "cut_off_region_serves_what_it_had_refuses_writes_and_converges_after_reconnect";
    if !compose::ready(test) {
        return;
    }
    let c = Compose::up();
    let r3 = compose::nodes_in("r3")[0];
    let leader = c.leader();
    let pusher = if leader == r3 { 1 } else { leader };

    let before = c.docker_image("c1/cut", "before", 1024 * 1024);
    let before_digest = c.docker_push(pusher, &before);
    // r3 reads it through once, so that it holds every blob itself.
    c.docker_pull_same(r3, &before, Some(&before_digest));
    let held = c.client(r3).get_manifest("c1/cut", "before").unwrap();
    assert_eq!(held.status, 200, "{}", held.text());

    c.cut_off_region("r3");
    eprintln!("{test}: r3 cut off");
    // The rest keeps a leader (two voters of three) ...
    let majority_leader = c.wait_for_leader_among(1, &[1, 2], Duration::from_secs(60));
    eprintln!("{test}: the majority's leader is node {majority_leader}");
    // ... r3 serves what it had, with docker and byte for byte ...
    c.docker_pull_same(r3, &before, Some(&before_digest));
    assert_eq!(
        c.client(r3).get_manifest("c1/cut", "before").unwrap().body,
        held.body
    );
    // ... and refuses a write: a new tag for a manifest whose blobs it holds.
    let started = std::time::Instant::now();
    let r = c
        .client(r3)
        .put_manifest("c1/cut", "at-r3", &media_type(&held), &held.body)
        .expect("the manifest PUT at r3 got no answer");
    assert_eq!(
        r.status,
        503,
        "manifest PUT at the cut-off r3: {}",
        r.text()
    );
    assert_eq!(
        r.error_codes(),
        vec!["UNAVAILABLE".to_string()],
        "{}",
        r.text()
    );
    assert!(
        started.elapsed() < REFUSAL_WITHIN,
        "{:?}",
        started.elapsed()
    );
    eprintln!(
        "{test}: r3 refused a write after {:?}: {}",
        started.elapsed(),
        r.text()
    );
    // A real client's push at r3 fails too: docker retries the refused upload a few times,
    // then exits non-zero on its own.
    let refused = c.docker_image(REFUSED_REPO, "1", 256 * 1024);
    let started = std::time::Instant::now();
    let (reference, out) = c.try_docker_push(r3, &refused, DOCKER_REFUSAL_WITHIN);
    let out = out.unwrap_or_else(|e| panic!("`docker push {reference}` at the cut-off r3: {e}"));
    let said = format!("{}{}", out.stdout_text(), out.stderr_text());
    assert!(
        !out.status.success(),
        "`docker push {reference}` at the cut-off r3 succeeded:\n{said}"
    );
    assert!(
        said.to_lowercase().contains("unavailable") || said.contains("503"),
        "`docker push {reference}` failed for another reason than the refusal:\n{said}"
    );
    eprintln!(
        "{test}: `docker push` at r3 failed with {} after {:?}: {}",
        out.status,
        started.elapsed(),
        out.stderr_text().trim()
    );

    // The majority takes a push meanwhile (docker, at r1).
    let during = c.docker_image("c1/cut", "during", 512 * 1024);
    let during_digest = c.docker_push(1, &during);

    c.reconnect_region("r3");
    eprintln!("{test}: r3 reconnected");
    c.wait_for_tag(r3, "c1/cut", "during", CONVERGE_TIMEOUT);
    c.wait_ready(r3, compose::READY_TIMEOUT);
    c.docker_pull_same(r3, &during, Some(&during_digest));
    // Nothing r3 refused was written: no node has the tag of the refused manifest PUT, nor
    // anything of the repository docker tried to push to.
    for id in compose::NODES {
        c.wait_for_tag(id, "c1/cut", "during", CONVERGE_TIMEOUT);
        let client = c.client(id);
        let tags = client.must_tags("c1/cut");
        assert!(!tags.iter().any(|t| t == "at-r3"), "node {id}: {tags:?}");
        let catalog = client.must_catalog();
        assert!(
            !catalog.iter().any(|r| r == REFUSED_REPO),
            "node {id} lists {REFUSED_REPO}: {catalog:?}"
        );
        let m = client.get_manifest(REFUSED_REPO, "1").unwrap();
        assert_eq!(m.status, 404, "node {id}: {}", m.text());
    }
    // And it takes writes again.
    let layer = random_layer(4096);
    let pushed = c
        .client(r3)
        .must_push_image("c1/cut", "after", std::slice::from_ref(&layer));
    c.client(1).must_pull_image("c1/cut", "after", &pushed);
}

/// A bandwidth limit on r3's link to the other regions (`tc tbf` both ways): a docker pull at
/// r3 of an image pushed at r1 still succeeds, byte for byte, and its bytes crossed the
/// limited link.
#[test]
fn pull_across_a_bandwidth_limited_link_succeeds() {
    let test = "pull_across_a_bandwidth_limited_link_succeeds";
    if !compose::ready_to_shape(test) {
        return;
    }
    let c = Compose::up();
    let r3 = compose::nodes_in("r3")[0];
    let shapers = c.limit_region_bandwidth("r3", "16mbit");
    let inbound: Vec<_> = shapers.iter().filter(|s| s.inbound).collect();
    let before: u64 = inbound.iter().map(|s| c.shaped_bytes(s)).sum();

    let size = 3 * 1024 * 1024;
    let image = c.docker_image("c1/slow", "1", size);
    let digest = c.docker_push(1, &image);
    c.docker_pull_same(r3, &image, Some(&digest));

    let after: u64 = inbound.iter().map(|s| c.shaped_bytes(s)).sum();
    assert!(
        after - before >= size as u64,
        "only {} bytes went through r3's limited inbound link for a {size}-byte layer",
        after - before
    );
    // The link stays usable for Raft and the other direction: a push at r3 reaches r1.
    let pushed = c
        .client(r3)
        .must_push_image("c1/slow", "from-r3", &[random_layer(256 * 1024)]);
    c.client(1).must_pull_image("c1/slow", "from-r3", &pushed);
}

/// Every container killed at once (`docker kill`, no shutdown) and started again: the cluster
/// elects a leader, every node serves what was acknowledged before, and writes go through.
#[test]
fn every_node_killed_at_once_comes_back_with_everything_acknowledged() {
    let test = "every_node_killed_at_once_comes_back_with_everything_acknowledged";
    if !compose::ready(test) {
        return;
    }
    let c = Compose::up();
    let image = c.docker_image("c1/all", "1", 1024 * 1024);
    let digest = c.docker_push(2, &image);

    for id in compose::NODES {
        c.kill(id);
    }
    eprintln!("{test}: every node killed");
    for id in compose::NODES.into_iter().rev() {
        c.start(id);
    }
    for id in compose::NODES {
        c.wait_ready(id, compose::READY_TIMEOUT);
    }
    let leader = c.leader();
    eprintln!("{test}: every node ready again, leader {leader}");
    for id in [3, 1, 4] {
        c.wait_for_tag(id, "c1/all", "1", CONVERGE_TIMEOUT);
        c.docker_pull_same(id, &image, Some(&digest));
    }
    let pushed = c
        .client(3)
        .must_push_image("c1/all", "after", &[random_layer(64 * 1024)]);
    c.client(2).must_pull_image("c1/all", "after", &pushed);
}

/// `docker push` at r1 with no pull anywhere; `clusterctl replication status --wait` at r2
/// reports every region complete; then r1's voter is killed, and docker pulls the image byte
/// for byte at r2, r3 and r1's learner, from their own disks.
#[test]
fn replicated_image_outlives_the_node_it_was_pushed_to() {
    let test = "replicated_image_outlives_the_node_it_was_pushed_to";
    if !compose::ready(test) {
        return;
    }
    let c = Compose::up();
    let image = c.docker_image("c1/rep", "1", 1024 * 1024);
    let digest = c.docker_push(1, &image);
    c.ctl(
        2,
        &[
            "replication",
            "status",
            "c1/rep:1",
            "--wait",
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    )
    .assert_success();
    c.kill(1);
    eprintln!("{test}: replicated everywhere; node 1 killed");
    for id in [2, 3, 4] {
        c.docker_pull_same(id, &image, Some(&digest));
    }
}

/// The media type a manifest GET answered with (what a PUT of the same bytes must declare).
fn media_type(r: &cluster_tests::oci::Resp) -> String {
    r.header("content-type").unwrap_or(OCI_MANIFEST).to_string()
}
