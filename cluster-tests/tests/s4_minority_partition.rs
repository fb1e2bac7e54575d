//! Scenario 4 — one follower is cut off from the other two (a minority of one).
//!
//! Shows consistency line 4: the cut-off node keeps serving pulls from local state (a
//! manifest and blobs it held before the cut) and answers a write — a manifest PUT of a new
//! tag — with 503, a `Retry-After` header and an OCI error body with code `UNAVAILABLE`;
//! the majority keeps accepting writes; and after the partition heals every node converges
//! to the same tags (line 2: reads lag, then catch up) and the formerly cut-off node pulls
//! what the majority wrote and accepts writes again.

use std::time::{Duration, Instant};

use cluster_tests::oci::OCI_MANIFEST;
use cluster_tests::{CONVERGE_TIMEOUT, ClusterBuilder, LEADER_TIMEOUT, random_layer};

const REPO: &str = "s4/app";
/// A write at the cut-off node must be refused within this (its write timeout is 2 s).
const REFUSAL_WITHIN: Duration = Duration::from_secs(8);

#[test]
fn minority_serves_pulls_refuses_writes_and_converges_after_heal() {
    let c = ClusterBuilder::new()
        .nodes(3)
        .write_timeout_ms(2000)
        .build();
    let leader = c.leader();
    let cut = c.followers()[0];
    let majority: Vec<u64> = c.ids().into_iter().filter(|id| *id != cut).collect();

    let before = c.must_push_image(
        leader,
        REPO,
        "before",
        &[random_layer(16 * 1024), random_layer(900)],
    );
    // Pull it at the node to be cut off, so that it holds the blobs locally.
    c.wait_for_image(cut, &before, Duration::from_secs(10));
    c.must_pull_image(cut, REPO, "before", &before);

    c.partition(&[cut], &majority);

    // The minority serves pulls of what it had.
    c.must_pull_image(cut, REPO, "before", &before);
    assert_eq!(c.must_tags(cut, REPO), vec!["before".to_string()]);

    // It refuses a write: a new tag for a manifest whose blobs it holds.
    let sent = Instant::now();
    let r = c
        .client(cut)
        .put_manifest(REPO, "during-cut", OCI_MANIFEST, &before.manifest)
        .expect("manifest PUT at the cut-off node got no answer");
    assert_eq!(
        r.status,
        503,
        "manifest PUT at the cut-off node: {}",
        r.text()
    );
    eprintln!(
        "the cut-off node refused the write after {:?}: {}",
        sent.elapsed(),
        r.text()
    );
    assert!(
        sent.elapsed() < REFUSAL_WITHIN,
        "the refusal took {:?}",
        sent.elapsed()
    );
    let retry_after = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("503 without Retry-After; headers {:?}", r.headers));
    assert!(
        retry_after.trim().parse::<u64>().is_ok(),
        "Retry-After is not a number of seconds: {retry_after:?}"
    );
    assert_eq!(
        r.error_codes(),
        vec!["UNAVAILABLE".to_string()],
        "body: {}",
        r.text()
    );
    assert!(
        r.text().contains("no quorum"),
        "the error body does not say the cluster has no quorum: {}",
        r.text()
    );

    // The majority keeps accepting writes, at the leader and at the other follower.
    let other = *majority
        .iter()
        .find(|id| **id != leader)
        .expect("another follower");
    let at_leader = c.must_push_image(leader, REPO, "majority-1", &[random_layer(2000)]);
    let at_other = c.must_push_image(other, REPO, "majority-2", &[random_layer(3000)]);
    c.wait_for_image(other, &at_leader, Duration::from_secs(10));
    c.must_pull_image(other, REPO, "majority-1", &at_leader);
    // Nothing of it reaches the cut-off node.
    assert_eq!(c.must_tags(cut, REPO), vec!["before".to_string()]);

    c.heal();
    c.wait_for_leader(LEADER_TIMEOUT);
    c.wait_for_applied_converged(CONVERGE_TIMEOUT);
    let tags = c.wait_for_same_tags(&c.ids(), REPO, Duration::from_secs(10));
    for t in ["before", "majority-1", "majority-2"] {
        assert!(
            tags.iter().any(|x| x == t),
            "tag {t} missing after the heal: {tags:?}"
        );
    }
    c.must_pull_everywhere(&c.ids(), &[before, at_leader, at_other]);

    // The healed node accepts writes again.
    let after = c.must_push_image(cut, REPO, "after-heal", &[random_layer(1000)]);
    c.must_pull_image(cut, REPO, "after-heal", &after);
}
