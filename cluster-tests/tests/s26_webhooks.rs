//! Scenario 26 — webhooks across failures, with a real HTTP receiver started by the test.
//!
//! 1. Three nodes; three clients push sequentially, each into its own repository, through the
//!    followers, and delete every fourth image after pushing it. The leader is killed
//!    (`kill -9`) under that load; later the receiver goes down for 30 s while pushes go on,
//!    then comes back, and the killed node restarts. Every acknowledged push and delete
//!    arrives — after de-duplication by event id — exactly once (a write whose answer was lost
//!    and that was retried may count twice: it was applied twice), per repository in the
//!    order made, and so does the `replicated` event of every image not deleted. The delivery
//!    log shows the failed attempts.
//! 2. Two regions (r1: nodes 1 and 2; r2: node 3) with r2 cut off: a regional webhook of r2
//!    (push) and a global one (`replicated`) see a push at r1. The global one hears `replicated`
//!    for r1 while r2 is cut off, and nothing of r2; once the partition heals, the r2 webhook's
//!    push and the `replicated` event for r2 arrive, and at that moment node 3's disk holds
//!    every blob of the image.
//! 3. A push made at a follower keeps its request id across the hop: the leader logs the
//!    forwarded write under it, and the webhook payload names it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_testkit::receiver::{Received, Receiver};
use cluster_tests::clusterctl::{self, CtlOutput};
use cluster_tests::replication::holds_blob;
use cluster_tests::{
    CONVERGE_TIMEOUT, ClusterBuilder, Image, LEADER_TIMEOUT, READY_TIMEOUT, UploadStyle,
    random_layer, wait_until,
};

const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on every delivery the test waits for.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the receiver stays down.
const OUTAGE: Duration = Duration::from_secs(30);

fn ctl(endpoint: &str, args: &[&str]) -> CtlOutput {
    clusterctl::run(endpoint, args, CTL_TIMEOUT)
}

/// What one pushing client did, in order: each push or delete (`delete`) of a tag, and
/// whether it needed a retry (its first attempt's outcome is unknown: it may have applied
/// too).
#[derive(Default)]
struct Pushed {
    writes: Vec<Write>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Write {
    digest: String,
    delete: bool,
    retried: bool,
}

impl Pushed {
    fn pushes(&self) -> usize {
        self.writes.iter().filter(|w| !w.delete).count()
    }
}

/// Runs `f` at `urls[*at]`, moving on to the next URL after a failure, until it succeeds or
/// 30 s passed. Returns whether it needed a retry.
fn retrying<T>(
    what: &str,
    urls: &[String],
    at: &mut usize,
    mut f: impl FnMut(&cluster_tests::Client) -> Result<T, String>,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut retried = false;
    loop {
        let url = &urls[*at % urls.len()];
        match f(&cluster_tests::Client::new(url, "pusher")) {
            Ok(_) => return retried,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what} at {url}: {e}; retrying");
                retried = true;
                *at += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{what} not acknowledged within 30 s: {e}"),
        }
    }
}

/// Pushes `repo:tNNNN` one after the other through `urls` until `stop`, deleting every fourth
/// image (by digest) once pushed; a failed write is retried at the next URL (bounded).
fn pusher(repo: String, urls: Vec<String>, stop: Arc<AtomicBool>, out: Arc<Mutex<Pushed>>) {
    let mut at = 0;
    for n in 0..10_000 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let tag = format!("t{n:04}");
        let image = Image::new(&repo, &tag, &[random_layer(256)]);
        let retried = retrying(&format!("push {repo}:{tag}"), &urls, &mut at, |c| {
            c.try_push_image(&image, UploadStyle::Monolithic)
                .map_err(|e| format!("{e:?}"))
        });
        let digest = image.image_ref().manifest_digest;
        out.lock().unwrap().writes.push(Write {
            digest: digest.clone(),
            delete: false,
            retried,
        });
        // Paced: the point is the failures, not the volume.
        std::thread::sleep(Duration::from_millis(100));
        if n % 4 != 3 {
            continue;
        }
        let path = format!("/v2/{repo}/manifests/{digest}");
        let mut first = true;
        let retried = retrying(&format!("delete {repo}:{tag}"), &urls, &mut at, |c| {
            let r = c.request("DELETE", &path, &[], None)?;
            // A 404 after a failed first attempt: that attempt applied.
            let done = r.status == 202 || (r.status == 404 && !first);
            first = false;
            if done {
                Ok(())
            } else {
                Err(format!("answered {}", r.status))
            }
        });
        out.lock().unwrap().writes.push(Write {
            digest,
            delete: true,
            retried,
        });
    }
}

/// The events received with a 2xx answer, de-duplicated by id, in order of first arrival:
/// (action, repository, manifest digest, id).
fn unique_events(got: &[Received]) -> Vec<(String, String, String, String)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in got {
        let v = r.json();
        if r.status != 200 {
            continue;
        }
        let id = v["id"].as_str().unwrap_or_default().to_string();
        if seen.insert(id.clone()) {
            let text = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
            out.push((
                text(&v["action"]),
                text(&v["target"]["repository"]),
                text(&v["target"]["digest"]),
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
            "push,delete,replicated",
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
        pushed.iter().map(|p| p.lock().unwrap().pushes()).sum()
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
    // Meanwhile the delivery log (at any node) shows attempts that got no answer.
    wait_until(
        "a failed attempt in the delivery log",
        Duration::from_secs(20),
        || {
            let log = ctl(
                &c.node(survivors[0]).cluster_addr(),
                &["--json", "webhooks", "events", "all", "--limit", "50"],
            );
            log.assert_success();
            let entries = log.json();
            let failed = entries["deliveries"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["status"].is_null() && e["error"] != ""));
            if failed {
                Ok(())
            } else {
                Err(entries.to_string())
            }
        },
    );
    std::thread::sleep(OUTAGE.saturating_sub(down_at.elapsed()));
    receiver.up();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("pusher panicked");
    }
    c.restart(leader);
    c.wait_for_ready(leader, READY_TIMEOUT);
    c.wait_for_applied_converged(CONVERGE_TIMEOUT);

    // What must arrive: (action, digest) → (the repository, how many writes, whether one
    // was retried, its place among the repository's writes).
    let mut expected: BTreeMap<(String, String), (String, usize, bool, usize)> = BTreeMap::new();
    for (repo, p) in repos.iter().zip(&pushed) {
        for (i, w) in p.lock().unwrap().writes.iter().enumerate() {
            let action = if w.delete { "delete" } else { "push" };
            let e = expected
                .entry((action.to_string(), w.digest.clone()))
                .or_insert((repo.clone(), 0, false, i));
            e.1 += 1;
            e.2 |= w.retried;
        }
    }
    let deleted: BTreeSet<String> = expected
        .keys()
        .filter(|(a, _)| a == "delete")
        .map(|(_, d)| d.clone())
        .collect();
    let kept: Vec<String> = expected
        .keys()
        .filter(|(a, d)| a == "push" && !deleted.contains(d))
        .map(|(_, d)| d.clone())
        .collect();
    let complete = |g: &[Received]| {
        let have: BTreeSet<(String, String)> = unique_events(g)
            .into_iter()
            .map(|(a, _, d, _)| (a, d))
            .collect();
        expected.keys().all(|k| have.contains(k))
            && kept
                .iter()
                .all(|d| have.contains(&("replicated".to_string(), d.clone())))
    };
    let got = receiver.wait_for(DELIVERY_TIMEOUT, complete);
    assert!(
        complete(&got),
        "not every event arrived ({} requests)",
        got.len()
    );
    let unique = unique_events(&got);
    let mut count: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (a, _, d, _) in &unique {
        *count.entry((a.clone(), d.clone())).or_default() += 1;
    }
    for ((action, digest), (repo, writes, retried, _)) in &expected {
        let n = count
            .get(&(action.clone(), digest.clone()))
            .copied()
            .unwrap_or(0);
        assert!(
            n == *writes || (*retried && n > *writes),
            "{action} of {repo}@{digest}: {n} distinct events for {writes} write(s)"
        );
        if action == "push" {
            let r = count
                .get(&("replicated".to_string(), digest.clone()))
                .copied()
                .unwrap_or(0);
            assert!(
                r <= n && (deleted.contains(digest) || r >= 1),
                "replicated of {repo}@{digest}: {r} distinct events for {n} push(es)"
            );
        }
    }
    for (action, digest) in count.keys() {
        let key = if action == "replicated" {
            "push"
        } else {
            action.as_str()
        };
        assert!(
            expected.contains_key(&(key.to_string(), digest.clone())),
            "an event {action} for {digest}, never written"
        );
    }
    // Per repository, pushes and deletes in the order they were made.
    for repo in &repos {
        let order: Vec<usize> = unique
            .iter()
            .filter(|(a, r, _, _)| r == repo && a != "replicated")
            .map(|(a, _, d, _)| expected[&(a.clone(), d.clone())].3)
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "{repo}: events out of order");
    }
    assert!(
        got.iter()
            .all(|r| r.header("x-hook-token") == Some("t0ken")),
        "every delivery carries the webhook's header"
    );
    let dupes = got.iter().filter(|r| r.status == 200).count() - unique.len();
    eprintln!(
        "{} writes, {} deliveries, {} unique events, {dupes} duplicates (same id)",
        expected.values().map(|e| e.1).sum::<usize>(),
        got.len(),
        unique.len()
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

#[test]
fn a_push_at_a_follower_keeps_its_request_id_at_the_leader_and_in_the_payload() {
    const ID: &str = "s26-forwarded-1";
    let c = ClusterBuilder::new()
        .nodes(3)
        .env("RUST_LOG", "info,openraft=warn,berth_node::rpc::peer=debug")
        .build();
    let leader = c.leader();
    let follower = c.followers()[0];
    let receiver = Receiver::start();
    ctl(
        &c.node(follower).cluster_addr(),
        &[
            "webhooks",
            "create",
            "ids",
            "--uri",
            &receiver.url(),
            "--actions",
            "push",
        ],
    )
    .assert_success();
    let image = Image::new("s26/ids", "v1", &[random_layer(128)]);
    let client = c.client(follower);
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        client
            .push_blob(&image.repo, blob, UploadStyle::Monolithic)
            .expect("blob push at the follower");
    }
    let resp = client
        .request(
            "PUT",
            &format!("/v2/{}/manifests/{}", image.repo, image.tag),
            &[
                ("content-type", "application/vnd.oci.image.manifest.v1+json"),
                ("x-request-id", ID),
            ],
            Some(&image.manifest),
        )
        .expect("manifest PUT");
    assert_eq!(resp.status, 201);
    assert_eq!(resp.header("x-request-id"), Some(ID));
    let got = receiver.wait_for(DELIVERY_TIMEOUT, |g| g.iter().any(|r| r.status == 200));
    let push = got
        .iter()
        .find(|r| r.status == 200)
        .expect("the push")
        .json();
    assert_eq!(push["request"]["id"], ID);
    assert_eq!(push["request"]["method"], "PUT");
    wait_until(
        "the leader to log the forwarded write under the request id",
        Duration::from_secs(10),
        || {
            let log = c.node(leader).stderr();
            if log
                .lines()
                .any(|l| l.contains(ID) && l.contains("forwarded_write"))
            {
                Ok(())
            } else {
                Err(c.node(leader).stderr_tail(20))
            }
        },
    );
}
