//! Scenario 3 — a follower that was down while 500 tags were written comes back and
//! catches up: its tag list equals the leader's and it pulls what was written meanwhile.
//!
//! Shows consistency lines 2 and 6: a restarted node recovers every committed write (its
//! reads lag only until it has applied the log), and line 3: it reads through blobs it never
//! received. Two ways back:
//! - through the log (default snapshot settings: the leader still holds every entry the
//!   follower misses, so the follower must not need a snapshot);
//! - through a snapshot (`BERTH_RAFT__SNAPSHOT_EVERY_ENTRIES=100`, `…KEEP_LOG_ENTRIES=5`: the
//!   leader compacts its log while the follower is down). The admin API does not expose the
//!   purged index, so the compaction is observed in the node logs: the leader logs "built
//!   metadata snapshot" and the follower, after its restart, "installed metadata snapshot".

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cluster_tests::{
    CONVERGE_TIMEOUT, ClusterBuilder, Image, ImageRef, READY_TIMEOUT, random_layer,
};

const REPO: &str = "s3/many";
const TAGS: usize = 500;
const WRITERS: usize = 4;
const INSTALLED: &str = "installed metadata snapshot";
const BUILT: &str = "built metadata snapshot";

#[test]
fn follower_catches_up_through_the_log() {
    let out = down_while_writing(ClusterBuilder::new().nodes(3));
    assert!(
        !out.follower_log.contains(INSTALLED),
        "the follower needed a snapshot although the leader kept the whole log"
    );
}

#[test]
fn follower_catches_up_through_a_snapshot() {
    let out = down_while_writing(ClusterBuilder::new().nodes(3).snapshots(100, 5));
    assert!(
        out.leader_built_snapshot,
        "the leader built no snapshot during {TAGS} writes"
    );
    assert!(
        out.follower_log.contains(INSTALLED),
        "the follower caught up without installing a snapshot, so the leader's log was not \
         compacted past it; its stderr:\n{}",
        out.follower_log
    );
}

/// What the two ways back are told apart by.
struct Outcome {
    /// Whether the leader logged building a snapshot (by the end of the writes).
    leader_built_snapshot: bool,
    /// The follower's stderr since its restart.
    follower_log: String,
}

/// Kills a follower, writes [`TAGS`] manifests (distinct, over shared blobs) and one image
/// with a fresh layer at the leader, restarts the follower and checks that it caught up.
fn down_while_writing(builder: ClusterBuilder) -> Outcome {
    let mut c = builder.build();
    let leader = c.leader();
    let follower = c.followers()[0];
    let base_image = Image::new(REPO, "base", &[random_layer(8 * 1024)]);
    let base = c.client(leader).must_push(&base_image);
    c.wait_for_applied_converged(CONVERGE_TIMEOUT);
    c.kill(follower);

    // The tags: manifests over the base image's blobs that differ by an annotation.
    let next = AtomicUsize::new(0);
    let mut written: Vec<ImageRef> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..WRITERS)
            .map(|_| {
                s.spawn(|| {
                    let client = c.client(leader);
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= TAGS {
                            return mine;
                        }
                        let n = i.to_string();
                        let image = Image::from_config(
                            REPO,
                            &format!("t{i:04}"),
                            base_image.config.clone(),
                            &base_image.layers,
                            Some(("s3.index", &n)),
                        );
                        mine.push(client.must_push_manifest(&image));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a writer panicked"))
            .collect()
    });
    written.sort_by(|a, b| a.tag.cmp(&b.tag));
    assert_eq!(written.len(), TAGS);
    // And one image whose layer the follower has never seen.
    let fresh = c.must_push_image(leader, REPO, "fresh", &[random_layer(32 * 1024)]);
    let leader_built_snapshot = c.node(leader).all_stderr().contains(BUILT);

    c.restart(follower);
    c.wait_for_ready(follower, READY_TIMEOUT);
    c.wait_for_applied_converged(CONVERGE_TIMEOUT);
    let tags = c.wait_for_same_tags(&[leader, follower], REPO, Duration::from_secs(10));
    assert_eq!(tags.len(), TAGS + 2, "tags: {tags:?}");

    // Pull at the follower: the fresh image and every 25th tag, manifests and blobs.
    let mut sample: Vec<ImageRef> = written.iter().step_by(25).cloned().collect();
    sample.push(written[TAGS - 1].clone());
    sample.push(fresh);
    sample.push(base);
    c.must_pull_everywhere(&[follower], &sample);
    Outcome {
        leader_built_snapshot,
        follower_log: c.node(follower).stderr(),
    }
}
