//! Scenario 11 — read after a write at another node, without waiting (3 nodes).
//!
//! Shows consistency line 8: a node about to answer 404 for a manifest, a tag list or a blob
//! first confirms with the leader's commit index (ReadIndex) when it hears from the leader, so
//! a pull at any node right after the push's 201 at another never answers "unknown" — ACR's
//! documented failure (a range of a blob the node has no copy of waits for the copy), on
//! loopback and across three regions 20 ms apart (the fault layer's links). And a node cut off
//! from the leader answers from what it has, at once: its 404 does not wait for the write
//! timeout. Nor does a node whose leader hangs (SIGSTOP: connections open, nothing answers)
//! while it still counts the leader as heard from: the confirmation is bounded
//! (`registry::CONFIRM_ABSENCE_WITHIN`, 2 s; measured: the first 404 after the hang took
//! 2.01 s, the next ones 6–60 ms once the others elected a leader; before the bound it would
//! have been the write timeout, 10 s).

use std::time::{Duration, Instant};

use cluster_tests::oci::sha256_digest;
use cluster_tests::{ClusterBuilder, UploadStyle, random_layer, wait_until};

/// Rounds of push-then-read.
const ROUNDS: usize = 30;
/// The write timeout of these clusters: a cut-off node's 404 must come well before it.
const WRITE_TIMEOUT_MS: u64 = 10_000;

#[test]
fn a_push_at_one_node_is_readable_at_once_at_the_others() {
    let c = ClusterBuilder::new()
        .nodes(3)
        .write_timeout_ms(WRITE_TIMEOUT_MS)
        .build();
    let (n2, n3) = (c.client(2), c.client(3));
    for round in 0..ROUNDS {
        // A fresh repository each round: its tag list, too, is unknown until the push.
        let repo = format!("s11/r{round}");
        let layer = random_layer(1000 + round * 37);
        let image = c.must_push_image(1, &repo, "v1", std::slice::from_ref(&layer));
        for client in [&n2, &n3] {
            // Tag, every blob (read through from node 1), manifest by digest, tag list.
            client.must_pull_image(&repo, "v1", &image);
            let r = client
                .get_manifest(&repo, &image.manifest_digest)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                r.status,
                200,
                "round {round}: manifest by digest at {}: {}",
                client.base(),
                r.text()
            );
            assert_eq!(client.must_tags(&repo), vec!["v1".to_string()]);
        }
        // A blob alone: its 201 at node 1, then a GET at node 3 at once.
        let blob = random_layer(500 + round);
        c.client(1)
            .push_blob(&repo, &blob, UploadStyle::Monolithic)
            .unwrap_or_else(|e| panic!("{e}"));
        let r = n3
            .get(&format!("/v2/{repo}/blobs/{}", sha256_digest(&blob)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.status,
            200,
            "round {round}: blob GET at node 3: {}",
            r.text()
        );
        assert!(r.body == blob, "round {round}: node 3 served other bytes");
        // And a range of it at node 2, which has no copy: it waits for the copy.
        let r = n2
            .request(
                "GET",
                &format!("/v2/{repo}/blobs/{}", sha256_digest(&blob)),
                &[("Range", "bytes=100-299")],
                None,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.status,
            206,
            "round {round}: range GET at node 2: {}",
            r.text()
        );
        assert!(
            r.body == blob[100..300],
            "round {round}: node 2 served another range"
        );
    }
}

/// Rounds of push-then-read across the emulated WAN.
const WAN_ROUNDS: usize = 10;

#[test]
fn across_regions_20ms_apart_a_push_is_readable_at_once() {
    // The measurement: through a 20 ms WAN, a tag GET at another region 2 ms after the
    // 201 answered 404 for ~26 ms. Three regions, one node each, 20 ms each way between them.
    let c = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .default_raft_timing()
        .region_links(Duration::from_millis(20), None)
        .write_timeout_ms(WRITE_TIMEOUT_MS)
        .build();
    let (n2, n3) = (c.client(2), c.client(3));
    for round in 0..WAN_ROUNDS {
        let repo = format!("s11/wan{round}");
        let image = c.must_push_image(1, &repo, "v1", &[random_layer(800 + round)]);
        for client in [&n2, &n3] {
            client.must_pull_image(&repo, "v1", &image);
        }
    }
}

#[test]
fn a_node_cut_off_from_the_leader_answers_404_at_once() {
    let c = ClusterBuilder::new()
        .nodes(3)
        .write_timeout_ms(WRITE_TIMEOUT_MS)
        .build();
    let image = c.must_push_image(1, "s11/cut", "v1", &[random_layer(2000)]);
    let leader = c.leader();
    let cut = c.followers()[0];
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != cut).collect();
    c.wait_for_image(cut, &image, Duration::from_secs(10));
    // Its own copy of every blob, so that it can serve the image once cut off.
    c.must_pull_image(cut, "s11/cut", "v1", &image);
    c.partition(&[cut], &others);
    let client = c.client(cut);
    let bound = Duration::from_millis(WRITE_TIMEOUT_MS / 2);
    // Right after the cut (it may still count the leader as heard from) and once it knows it
    // is cut off: both answer 404 from what it has, well before the write timeout.
    for phase in ["just cut off", "no contact with the leader"] {
        if phase == "no contact with the leader" {
            wait_until(
                "the cut-off node to lose the leader",
                Duration::from_secs(20),
                || {
                    let r = client.get("/readyz")?;
                    if r.status == 503 {
                        Ok(())
                    } else {
                        Err(format!("/readyz {}: {}", r.status, r.text()))
                    }
                },
            );
        }
        let started = Instant::now();
        let r = client
            .get_manifest("s11/cut", "never-pushed")
            .unwrap_or_else(|e| panic!("{e}"));
        let took = started.elapsed();
        assert_eq!(r.status, 404, "{phase}: {}", r.text());
        assert!(
            took < bound,
            "{phase}: the 404 took {took:?} (leader {leader}, write timeout {WRITE_TIMEOUT_MS} ms)"
        );
        let r = client
            .get("/v2/s11/never/tags/list")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 404, "{phase}: {}", r.text());
        // What it has, it serves.
        client.must_pull_image("s11/cut", "v1", &image);
    }
    c.heal();
}

/// The pid of the `berth serve` process whose command line names `data_dir`.
fn pid_of(data_dir: &std::path::Path) -> i32 {
    let needle = data_dir.to_string_lossy().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(" serve ") && cmd.contains(&needle) {
            return pid;
        }
    }
    panic!("no berth process serves {needle}");
}

/// A process stopped with SIGSTOP, continued (SIGCONT) when dropped, also on a failure.
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        // SAFETY: kill(2) on the pid of a berth process this test's cluster started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn a_node_whose_leader_hangs_answers_404_within_the_bound() {
    let c = ClusterBuilder::new()
        .nodes(3)
        .write_timeout_ms(WRITE_TIMEOUT_MS)
        .build();
    let image = c.must_push_image(1, "s11/hang", "v1", &[random_layer(2000)]);
    let leader = c.leader();
    let follower = c.followers()[0];
    c.wait_for_image(follower, &image, Duration::from_secs(10));
    let client = c.client(follower);
    let hung = Stopped::new(pid_of(c.node(leader).data_dir()));
    let bound = Duration::from_millis(WRITE_TIMEOUT_MS / 2);
    for round in 0..5 {
        let started = Instant::now();
        let r = client
            .get_manifest("s11/hang", "never-pushed")
            .unwrap_or_else(|e| panic!("{e}"));
        let took = started.elapsed();
        assert_eq!(r.status, 404, "round {round}: {}", r.text());
        assert!(took < bound, "round {round}: the 404 took {took:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(hung);
}
