//! Scenario 15: the one fetch of a blob a node lacks is read by every client from its staging
//! file as it grows (`registry::fetch`, `blobstore::follow`).
//!
//! Two nodes in regions r1 and r2, the link between them capped at 1 MB/s; an 8 MiB blob is
//! uploaded at node 1 (the blob alone: the replicator and the durability policy copy what
//! manifests reference, so no copy to node 2 starts before a client asks for it). At node 2,
//! which lacks it:
//! - a first client starts a GET and reads the response head, then nothing (its connection
//!   stays open): it started the fetch, and must not slow it down;
//! - a second client's GET joins the fetch and gets its first bytes while the blob is not yet
//!   stored at node 2 (its file is absent) — before, a joiner got nothing until the whole copy
//!   was stored and verified — and then the whole blob, byte for byte;
//! - the first client, reading at last, gets the whole blob too.
//!
//! And when the only holder dies part-way through the copy, every response of it breaks (the
//! client never sees a complete one), and node 2 keeps neither the blob nor a staging file.
//!
//! And a client's GET that joins a replication copy paced to a crawl (the busy cap while node 2
//! serves clients, or the per-peer cap: 64 KiB/s, two minutes for the blob) gets the whole
//! blob long before that pace could have copied it: a client joining a copy ends its pacing.
//!
//! And a client reading through at a node cut off from the Raft leader (but not from the
//! holder) gets its last byte before that node's write of the holder record (`BlobCopied`)
//! ends: the write waits three election timeouts for a leader it can reach, then fails.
//!
//! No speed is asserted: "before the blob is stored" is observed on node 2's disk, and the
//! paced copy's bound (10 s against the two minutes it would take) is an outcome, not a speed.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster_tests::oci::sha256_digest;
use cluster_tests::replication::holds_blob;
use cluster_tests::{Cluster, ClusterBuilder, UploadStyle, random_layer, wait_for};

const REPO: &str = "s15/shared";
/// The blob: about 8 s over the capped link.
const SIZE: usize = 8 * 1024 * 1024;
/// Bytes per second between the two nodes.
const LINK_CAP: u64 = 1_000_000;
/// Longest any one GET here may take (the copy takes about 8 s).
const GET_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts a GET of the blob at node `at` and returns once its head is read.
fn open_get(c: &Cluster, at: u64, digest: &str) -> ureq::http::Response<ureq::Body> {
    let url = format!("{}/v2/{REPO}/blobs/{digest}", c.node(at).url());
    let agent = berth_testkit::http::agent_with_timeout(GET_TIMEOUT);
    let resp = agent
        .get(&url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status().as_u16(), 200, "GET {url}");
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    assert_eq!(len, Some(SIZE), "GET {url}: Content-Length");
    resp
}

/// Reads the first bytes a body gives (at least one).
fn must_read_some(who: &str, body: &mut impl Read) -> Vec<u8> {
    let mut first = vec![0u8; 64 * 1024];
    let n = body
        .read(&mut first)
        .unwrap_or_else(|e| panic!("{who}: no first bytes: {e}"));
    assert!(n > 0, "{who}: the body ended before its first byte");
    first.truncate(n);
    first
}

/// Reads the rest of a body after `head`, and checks the whole against `want`'s digest.
fn must_read_rest(who: &str, mut head: Vec<u8>, body: &mut impl Read, want: &str) {
    body.read_to_end(&mut head)
        .unwrap_or_else(|e| panic!("{who}: the body broke after {} bytes: {e}", head.len()));
    assert_eq!(head.len(), SIZE, "{who}: body length");
    assert_eq!(sha256_digest(&head), want, "{who}: the bytes differ");
}

/// Uploads an [`SIZE`]-byte blob at node 1 of a fresh two-node cluster and caps the link;
/// returns the cluster and the blob's digest.
fn cluster_with_a_blob_at_node_1() -> (Cluster, String) {
    let c = ClusterBuilder::new()
        .nodes(2)
        .regions(&["r1", "r2"])
        .build();
    let data = random_layer(SIZE);
    let digest = sha256_digest(&data);
    c.client(1)
        .push_blob(REPO, &data, UploadStyle::Monolithic)
        .unwrap_or_else(|e| panic!("upload at node 1: {e}"));
    assert!(!holds_blob(&c, 2, &digest), "node 2 got a copy unasked");
    c.set_link(1, 2, Duration::ZERO, Some(LINK_CAP));
    (c, digest)
}

#[test]
fn a_joiner_streams_the_fetched_bytes_while_the_starter_reads_nothing() {
    let (c, digest) = cluster_with_a_blob_at_node_1();

    // The starter: its head came once node 1 was sending; it reads nothing more for now.
    let started = Instant::now();
    let starter = open_get(&c, 2, &digest);

    // The joiner reads as fast as it can.
    let mut joiner = open_get(&c, 2, &digest).into_body().into_reader();
    let first = must_read_some("joiner", &mut joiner);
    let stored_at_first_bytes = holds_blob(&c, 2, &digest);
    let first_after = started.elapsed();
    assert!(
        !stored_at_first_bytes,
        "the joiner's first bytes came only after node 2 had stored the blob ({first_after:?} \
         after the first GET): it waited for the whole copy instead of following it"
    );
    eprintln!(
        "the joiner had its first {} bytes {first_after:?} after the first GET",
        first.len()
    );
    must_read_rest("joiner", first, &mut joiner, &digest);
    eprintln!(
        "the joiner had the whole blob {:?} after the first GET",
        started.elapsed()
    );

    // The copy is kept; the starter, reading at last, gets the whole blob too.
    wait_for("node 2 to store the blob", GET_TIMEOUT, || {
        holds_blob(&c, 2, &digest)
    });
    let mut starter = starter.into_body().into_reader();
    must_read_rest("starter", Vec::new(), &mut starter, &digest);
}

#[test]
fn a_fetch_that_fails_part_way_breaks_every_response_and_keeps_nothing() {
    let (mut c, digest) = cluster_with_a_blob_at_node_1();
    let starter = open_get(&c, 2, &digest);
    let mut joiner = open_get(&c, 2, &digest).into_body().into_reader();
    let mut got = must_read_some("joiner", &mut joiner);
    // The only holder dies part-way through the copy.
    c.kill(1);
    let mut starter = starter.into_body().into_reader();
    let mut starter_got = Vec::new();
    for (who, body, got) in [
        ("joiner", &mut joiner as &mut dyn Read, &mut got),
        ("starter", &mut starter, &mut starter_got),
    ] {
        let broke = body.read_to_end(got).err();
        assert!(
            broke.is_some() && got.len() < SIZE,
            "{who}: the response of a failed fetch was not broken ({} of {SIZE} bytes, {broke:?})",
            got.len()
        );
    }
    assert!(!holds_blob(&c, 2, &digest), "node 2 kept a partial blob");
    let uploads = c.node(2).data_dir().join("uploads");
    wait_for(
        "node 2 to remove the staging file of the failed fetch",
        Duration::from_secs(30),
        || std::fs::read_dir(&uploads).is_ok_and(|mut d| d.next().is_none()),
    );
}

/// The pace of the replication copies in the paced-copy tests: [`SIZE`] takes two minutes, and
/// one 1 MiB piece of the holder's stream 16 s.
const PACE: u64 = 64 * 1024;
/// Longest a client's GET that joined a paced copy may take: a tenth of what the rest of the
/// copy would take at [`PACE`] (at least 7 MiB: 112 s), and less than the pause for the one
/// piece the copy is waiting on when the client joins (about 15 s).
const JOINED_GET_BOUND: Duration = Duration::from_secs(10);

/// Whether the directory `dir` holds a file.
fn has_a_file(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Sets its flag when dropped (also when the test panics).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Node 2 (its copies paced by `pace_env`) replicates an image with a [`SIZE`]-byte layer
/// pushed at node 1, while a client sends requests to node 2 every 20 ms from before the push
/// to the end (so the busy cap applies throughout). Once the copy of the layer is under way (its
/// staging file holds a first block, about 16 s in) and still going a second later (it is
/// paced), a client GETs the layer at node 2: it must get it whole within [`JOINED_GET_BOUND`].
///
/// Guards the pacing by the most urgent wanter (registry::fetch): if the copy went on at its
/// pace after the client joined, the GET would take the rest of the paced copy (over 100 s).
/// And `Wanters::more_urgent`: the copy is then pausing for the next piece of the holder's
/// stream (1 MiB, 16 s at the pace); a pause that did not end when the client joined would
/// hold the GET for its rest (about 15 s, past the bound; a holder sending smaller pieces
/// would make that pause, and what this test can see of it, shorter). A joiner that got the
/// bytes of another attempt, or lost some at the switch to the stored blob, would fail the
/// byte-for-byte check.
fn a_client_joining_a_paced_copy_gets_the_blob_long_before_the_pace_would(pace_env: &str) {
    let c = ClusterBuilder::new()
        .nodes(2)
        .regions(&["r1", "r2"])
        .env(pace_env, &PACE.to_string())
        .build();
    let stop = AtomicBool::new(false);
    let client = c.client(2);
    std::thread::scope(|s| {
        let _stop_pings = SetOnDrop(&stop);
        let pings = s.spawn(|| {
            let started = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < 2 * GET_TIMEOUT {
                // Any registry request counts as a client's; its answer does not matter.
                let _ = client.get("/v2/");
                sent += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            sent
        });
        let image = c.must_push_image(1, REPO, "paced", &[random_layer(SIZE)]);
        let layer = image.layers[0].digest.clone();
        // Only node 2's replication copies stage files there (the push was at node 1).
        let uploads = c.node(2).data_dir().join("uploads");
        wait_for(
            "node 2 to have copied a first block of the layer",
            GET_TIMEOUT,
            || has_a_file(&uploads) || holds_blob(&c, 2, &layer),
        );
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            !holds_blob(&c, 2, &layer),
            "node 2 copied the layer within seconds: the copy was not paced ({pace_env} = {PACE})"
        );
        let joined = Instant::now();
        let mut body = open_get(&c, 2, &layer).into_body().into_reader();
        assert!(
            !holds_blob(&c, 2, &layer),
            "node 2 held the layer when the client's GET began: it joined no copy"
        );
        must_read_rest("the joined GET", Vec::new(), &mut body, &layer);
        let took = joined.elapsed();
        stop.store(true, Ordering::Relaxed);
        let sent = pings.join().expect("the pinging client panicked");
        eprintln!("the joined GET took {took:?} ({sent} pings in the test)");
        assert!(
            took < JOINED_GET_BOUND,
            "a GET that joined a paced copy took {took:?}: the copy went on at its pace \
             ({pace_env} = {PACE}) instead of at the client's"
        );
        wait_for("node 2 to store the layer", GET_TIMEOUT, || {
            holds_blob(&c, 2, &layer)
        });
    });
}

#[test]
fn a_client_joining_a_copy_held_to_the_busy_cap_gets_the_blob_promptly() {
    a_client_joining_a_paced_copy_gets_the_blob_long_before_the_pace_would(
        "BERTH_REPLICATION__BUSY_BYTES_PER_SEC",
    );
}

#[test]
fn a_client_joining_a_copy_held_to_the_per_peer_cap_gets_the_blob_promptly() {
    a_client_joining_a_paced_copy_gets_the_blob_long_before_the_pace_would(
        "BERTH_REPLICATION__MAX_BYTES_PER_SEC_PER_PEER",
    );
}

/// What the fetching node logs when its holder record (`BlobCopied`) could not be written
/// (registry::fetch).
const RECORD_FAILED: &str = "failed to record a fetched blob copy";

/// Three nodes with slow Raft timings (election timeout 3–6 s): a write at a node cut off
/// from the leader waits three election timeouts (18 s) for another leader before it fails.
/// The [`SIZE`]-byte blob is uploaded at a follower (the holder); the other follower (the
/// reader), cut off from the leader but not from the holder, reads it through.
///
/// Guards the order at the end of a fetch (registry::fetch, `Job::run`): its readers get their
/// last bytes once the copy is verified and stored, before the `BlobCopied` write. Were the
/// readers ended after that write, the GET's last byte would wait the 18 s for it, and the
/// node would have logged the write's failure by the time the GET ended. No time is measured:
/// the order is read from the node's log.
#[test]
fn a_reader_gets_its_last_byte_before_the_holder_record_is_written() {
    let c = ClusterBuilder::new()
        .nodes(3)
        .raft_timing(300, 3000, 6000)
        .write_timeout_ms(60_000)
        .build();
    let leader = c.wait_for_leader(GET_TIMEOUT);
    let [holder, reader] = c.followers()[..] else {
        panic!("not two followers: {:?}", c.followers());
    };
    let data = random_layer(SIZE);
    let digest = sha256_digest(&data);
    c.client(holder)
        .push_blob(REPO, &data, UploadStyle::Monolithic)
        .unwrap_or_else(|e| panic!("upload at node {holder}: {e}"));
    // The reader knows the blob (and its holder) before it is cut off.
    c.wait_for_applied_converged(GET_TIMEOUT);
    assert!(
        !holds_blob(&c, reader, &digest),
        "node {reader} got a copy unasked"
    );
    c.partition(&[reader], &[leader]);
    let mut body = open_get(&c, reader, &digest).into_body().into_reader();
    must_read_rest("the reader", Vec::new(), &mut body, &digest);
    assert!(
        holds_blob(&c, reader, &digest),
        "node {reader} sent the whole blob but does not hold it"
    );
    assert!(
        !c.node(reader).stderr().contains(RECORD_FAILED),
        "the reader's last byte came only after node {reader}'s BlobCopied write had failed: \
         the readers of a fetch waited for its holder record"
    );
    // The premise: that write was held up, and failed (no leader within reach).
    wait_for(
        &format!("node {reader} to give up recording its copy"),
        GET_TIMEOUT,
        || c.node(reader).stderr().contains(RECORD_FAILED),
    );
    c.heal();
}
