//! Scenario 26 — webhooks across failures, with a real HTTP receiver started by the test.
//!
//! 1. Three nodes; three clients push sequentially, each into its own repository, through the
//!    followers. The leader is killed (`kill -9`) under that load; later the receiver goes
//!    down for 30 s while pushes go on, then comes back, and the killed node restarts. Every
//!    acknowledged push arrives — after de-duplication by event id — exactly once (a push
//!    whose answer was lost and that was retried may count twice: it was pushed twice), and
//!    per repository in the order pushed. The delivery log shows the failed attempts.
//! 2. Two regions (r1: nodes 1 and 2; r2: node 3) with r2 cut off: a regional webhook of r2
//!    (push) and a global one (`replicated`) see a push at r1. The global one hears `replicated`
//!    for r1 while r2 is cut off, and nothing of r2; once the partition heals, the r2 webhook's
//!    push and the `replicated` event for r2 arrive, and at that moment node 3's disk holds
//!    every blob of the image.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_testkit::receiver::{Received, Receiver};
use cluster_tests::clusterctl::{self, CtlOutput};
use cluster_tests::replication::holds_blob;
use cluster_tests::{
    CONVERGE_TIMEOUT, ClusterBuilder, Image, LEADER_TIMEOUT, READY_TIMEOUT, UploadStyle,
    random_layer,
};

const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on every delivery the test waits for.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the receiver stays down.
const OUTAGE: Duration = Duration::from_secs(30);

fn ctl(endpoint: &str, args: &[&str]) -> CtlOutput {
    clusterctl::run(endpoint, args, CTL_TIMEOUT)
}

/// What one pushing client did: each tag, in order, and whether it needed a retry (its first
/// attempt's outcome is unknown: it may have been committed too).
#[derive(Default)]
struct Pushed {
    tags: Vec<(String, bool)>,
}

/// Pushes `repo:tNNNN` one after the other through `urls` until `stop`, retrying a failed
/// push at the next URL (bounded per push).
fn pusher(repo: String, urls: Vec<String>, stop: Arc<AtomicBool>, out: Arc<Mutex<Pushed>>) {
    let mut at = 0;
    for n in 0..10_000 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let tag = format!("t{n:04}");
        let image = Image::new(&repo, &tag, &[random_layer(256)]);
        let mut retried = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let client = cluster_tests::Client::new(&urls[at % urls.len()], "pusher");
            match client.try_push_image(&image, UploadStyle::Monolithic) {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{repo}:{tag} at {}: {e:?}; retrying", urls[at % urls.len()]);
                    retried = true;
                    at += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{repo}:{tag} not acknowledged within 30 s: {e:?}"),
            }
        }
        out.lock().unwrap().tags.push((tag, retried));
    }
}

/// The push events received, de-duplicated by id, in order of first arrival: (repo, tag, id).
fn unique_pushes(got: &[Received]) -> Vec<(String, String, String)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in got {
        let v = r.json();
        if v["action"] != "push" || r.status != 200 {
            continue;
        }
        let id = v["id"].as_str().unwrap_or_default().to_string();
        if seen.insert(id.clone()) {
            out.push((
                v["target"]["repository"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["target"]["tag"].as_str().unwrap_or_default().to_string(),
                id,
            ));
        }
    }
    out
}

#[test]
fn every_acknowledged_push_arrives_once_across_a_leader_kill_and_a_receiver_outage() {
    let mut c = ClusterBuilder::new()
        .nodes(3)
        .env("BERTH_WEBHOOKS__MAX_BACKOFF_SECS", "2")
        .build();
    let leader = c.leader();
    let survivors = c.followers();
    let mut receiver = Receiver::start();
    ctl(
        &c.node(survivors[0]).cluster_addr(),
        &[
            "webhooks",
            "create",
            "all",
            "--uri",
            &receiver.url(),
            "--actions",
            "push",
            "--scope",
            "s26/**:*",
            "--header",
            "X-Hook-Token=t0ken",
        ],
    )
    .assert_success();

    let stop = Arc::new(AtomicBool::new(false));
    let urls = c.urls(&survivors);
    let repos: Vec<String> = (0..3).map(|i| format!("s26/r{i}")).collect();
    let pushed: Vec<Arc<Mutex<Pushed>>> = repos.iter().map(|_| Arc::default()).collect();
    let threads: Vec<_> = repos
        .iter()
        .zip(&pushed)
        .map(|(repo, out)| {
            let (repo, urls, stop, out) = (repo.clone(), urls.clone(), stop.clone(), out.clone());
            std::thread::spawn(move || pusher(repo, urls, stop, out))
        })
        .collect();
    let acked = |pushed: &[Arc<Mutex<Pushed>>]| -> usize {
        pushed.iter().map(|p| p.lock().unwrap().tags.len()).sum()
    };
    let wait_acked = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked(&pushed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            acked(&pushed) >= n,
            "only {} pushes acknowledged",
            acked(&pushed)
        );
    };

    wait_acked(15);
    c.kill(leader);
    let new_leader = c.wait_for_leader_among(&survivors, LEADER_TIMEOUT);
    eprintln!("killed leader {leader}; node {new_leader} leads");
    let before_outage = acked(&pushed);
    wait_acked(before_outage + 15);
    receiver.down();
    let down_at = Instant::now();
    let during = acked(&pushed);
    wait_acked(during + 15);
    std::thread::sleep(OUTAGE.saturating_sub(down_at.elapsed()));
    receiver.up();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("pusher panicked");
    }
    c.restart(leader);
    c.wait_for_ready(leader, READY_TIMEOUT);
    c.wait_for_applied_converged(CONVERGE_TIMEOUT);

    let expected: BTreeMap<(String, String), bool> = repos
        .iter()
        .zip(&pushed)
        .flat_map(|(repo, p)| {
            p.lock()
                .unwrap()
                .tags
                .iter()
                .map(|(t, retried)| ((repo.clone(), t.clone()), *retried))
                .collect::<Vec<_>>()
        })
        .collect();
    let got = receiver.wait_for(DELIVERY_TIMEOUT, |g| {
        let have: BTreeSet<(String, String)> = unique_pushes(g)
            .into_iter()
            .map(|(r, t, _)| (r, t))
            .collect();
        expected.keys().all(|k| have.contains(k))
    });
    let unique = unique_pushes(&got);
    let mut per_tag: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (r, t, _) in &unique {
        *per_tag.entry((r.clone(), t.clone())).or_default() += 1;
    }
    for (key, retried) in &expected {
        let n = per_tag.get(key).copied().unwrap_or(0);
        assert!(
            n >= 1,
            "push {key:?} never arrived ({} requests)",
            got.len()
        );
        assert!(
            n == 1 || *retried,
            "push {key:?} arrived as {n} distinct events but was pushed once"
        );
    }
    for key in per_tag.keys() {
        assert!(
            expected.contains_key(key),
            "an event for {key:?}, never pushed"
        );
    }
    // Per repository, in the order pushed.
    for repo in &repos {
        let order: Vec<&String> = unique
            .iter()
            .filter(|(r, _, _)| r == repo)
            .map(|(_, t, _)| t)
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "{repo}: events out of push order");
    }
    assert!(
        got.iter()
            .all(|r| r.header("x-hook-token") == Some("t0ken")),
        "every delivery carries the webhook's header"
    );
    let dupes = got.iter().filter(|r| r.status == 200).count() - unique.len();
    eprintln!(
        "{} pushes acknowledged, {} deliveries, {} unique, {dupes} duplicates (same id)",
        expected.len(),
        got.len(),
        unique.len()
    );
    // The delivery log shows attempts that failed while the receiver was down.
    let log = ctl(
        &c.node(new_leader).cluster_addr(),
        &["--json", "webhooks", "events", "all", "--limit", "1000"],
    );
    log.assert_success();
    let entries = log.json();
    let failed = entries
        .as_array()
        .or_else(|| entries["deliveries"].as_array())
        .map(|a| {
            a.iter()
                .filter(|e| e["status"] == 0 || e["status"].is_null())
                .count()
        })
        .unwrap_or(0);
    assert!(
        failed > 0,
        "no failed attempt logged during the outage: {entries}"
    );
}

#[test]
fn regional_webhooks_fire_once_the_image_is_on_the_regions_disks() {
    let c = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r1", "r2"])
        .env("BERTH_WEBHOOKS__MAX_BACKOFF_SECS", "2")
        .build();
    let leader = c.wait_for_leader(LEADER_TIMEOUT);
    let at = c.node(1).cluster_addr();
    let regional = Receiver::start();
    let global = Receiver::start();
    ctl(
        &at,
        &[
            "webhooks",
            "create",
            "inr2",
            "--uri",
            &regional.url(),
            "--actions",
            "push",
            "--region",
            "r2",
        ],
    )
    .assert_success();
    ctl(
        &at,
        &[
            "webhooks",
            "create",
            "reached",
            "--uri",
            &global.url(),
            "--actions",
            "replicated",
            "--format",
            "cloudevents",
        ],
    )
    .assert_success();
    c.partition(&[1, 2], &[3]);
    let r1_leader = c.wait_for_leader_among(&[1, 2], LEADER_TIMEOUT);
    eprintln!("leader was {leader}; r1 leads with {r1_leader} while r2 is cut off");

    let image = Image::new("s26/geo", "v1", &[random_layer(4096), random_layer(2048)]);
    let pushed = cluster_tests::Client::new(&c.node(r1_leader).url(), "push")
        .try_push_image(&image, UploadStyle::Monolithic)
        .expect("push at r1");
    let blobs: Vec<String> = pushed.blobs().map(|b| b.digest.clone()).collect();
    // Each delivery to either receiver notes whether node 3 held every blob at that moment.
    let on_disk: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let node3_blobs: Vec<std::path::PathBuf> = blobs
        .iter()
        .map(|d| cluster_tests::replication::blob_path(&c, 3, d))
        .collect();
    for r in [&regional, &global] {
        let (on_disk, paths) = (on_disk.clone(), node3_blobs.clone());
        r.check(Box::new(move |req| {
            let v = req.json();
            let what = format!(
                "{} {}",
                v["action"]
                    .as_str()
                    .or(v["data"]["action"].as_str())
                    .unwrap_or("?"),
                v["region"]
                    .as_str()
                    .or(v["data"]["region"].as_str())
                    .unwrap_or("")
            );
            let held = paths.iter().all(|p| p.is_file());
            on_disk.lock().unwrap().push((what, held));
        }));
    }

    let regions_of = |got: &[Received]| -> Vec<String> {
        got.iter()
            .filter(|r| r.status == 200)
            .map(|r| {
                r.json()["data"]["region"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    let got = global.wait_for(DELIVERY_TIMEOUT, |g| {
        regions_of(g).contains(&"r1".to_string())
    });
    assert_eq!(
        regions_of(&got),
        ["r1"],
        "only r1 has the image while r2 is cut off"
    );
    assert_eq!(got[0].json()["type"], "io.berth.image.replicated");
    assert!(
        regional.received().is_empty(),
        "r2's webhook fired while r2 was cut off"
    );
    assert!(blobs.iter().all(|d| !holds_blob(&c, 3, d)));

    c.heal();
    let got = global.wait_for(DELIVERY_TIMEOUT, |g| {
        regions_of(g).contains(&"r2".to_string())
    });
    let regions: BTreeSet<String> = regions_of(&got).into_iter().collect();
    assert_eq!(
        regions,
        BTreeSet::from(["r1".into(), "r2".into()]),
        "{got:#?}"
    );
    let got = regional.wait_for(DELIVERY_TIMEOUT, |g| g.iter().any(|r| r.status == 200));
    let push = got
        .iter()
        .find(|r| r.status == 200)
        .expect("r2's push")
        .json();
    assert_eq!(push["action"], "push");
    assert_eq!(push["region"], "r2");
    assert_eq!(push["target"]["tag"], "v1");
    let notes = on_disk.lock().unwrap().clone();
    for (what, held) in &notes {
        if what.ends_with("r2") {
            assert!(
                held,
                "{what} was sent before node 3 held the image: {notes:?}"
            );
        }
    }
    assert!(
        notes.iter().any(|(w, _)| w == "push r2")
            && notes.iter().any(|(w, _)| w == "replicated r2"),
        "{notes:?}"
    );
}
