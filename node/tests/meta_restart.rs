//! The metadata survives a restart of the node, through the log and through a snapshot.

use std::time::Duration;

use berth_node::Node;
use berth_node::config::Config;
use berth_node::meta::Page;
use berth_node::types::{Digest, Reference, RepositoryName};
use bytes::Bytes;

fn config(dir: &std::path::Path, snapshot_every: u64) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    c.raft.heartbeat_ms = 50;
    c.raft.election_timeout_min_ms = 150;
    c.raft.election_timeout_max_ms = 300;
    c.raft.snapshot_every_entries = snapshot_every;
    c.raft.keep_log_entries = 0;
    c
}

fn body(
    b: &'static [u8],
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin + Send {
    futures::stream::iter(vec![Ok(Bytes::from_static(b))])
}

/// Pushes `tags` manifests (each with its own config blob) into `repo`.
async fn push(node: &Node, repo: &RepositoryName, tags: std::ops::Range<u32>) {
    let r = &node.registry;
    let layer: &'static [u8] = b"shared layer";
    r.upload_blob(repo, &Digest::sha256_of(layer), body(layer))
        .await
        .unwrap();
    for i in tags {
        let config: &'static [u8] =
            Box::leak(format!("{{\"n\":{i}}}").into_bytes().into_boxed_slice());
        let cd = Digest::sha256_of(config);
        r.upload_blob(repo, &cd, body(config)).await.unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::sha256_of(layer).as_str(), "size": layer.len()}],
        });
        let tag = Reference::parse(&format!("t{i:04}")).unwrap();
        r.put_manifest(
            repo,
            &tag,
            Some("application/vnd.oci.image.manifest.v1+json"),
            Bytes::from(serde_json::to_vec(&manifest).unwrap()),
        )
        .await
        .unwrap();
    }
}

/// Starts a node on a data directory a stopped in-process node used: [`Node::stop`] returned
/// only once the store was closed, so this opens at once, with no retry.
async fn reopen(c: &Config) -> Node {
    Node::start(c, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("failed to restart the node: {e:?}"))
}

async fn tags(node: &Node, repo: &RepositoryName) -> Vec<String> {
    node.registry.tags(repo, Page::default()).await.unwrap().0
}

async fn restart_keeps_everything(snapshot_every: u64) {
    let dir = tempfile::tempdir().unwrap();
    let repo = RepositoryName::parse("a/b").unwrap();
    let before = {
        let node = Node::start(&config(dir.path(), snapshot_every), Duration::from_secs(10))
            .await
            .unwrap();
        push(&node, &repo, 0..40).await;
        let t = tags(&node, &repo).await;
        assert_eq!(t.len(), 40);
        assert!(node.stop().await, "the store did not close");
        t
    };
    let node = reopen(&config(dir.path(), snapshot_every)).await;
    assert_eq!(tags(&node, &repo).await, before);
    let m = node
        .registry
        .get_manifest(&repo, &Reference::parse("t0007").unwrap())
        .await
        .unwrap();
    assert_eq!(m.digest, Digest::sha256_of(&m.bytes));
    // Writes keep working after the restart.
    push(&node, &repo, 40..45).await;
    assert_eq!(tags(&node, &repo).await.len(), 45);
    assert!(node.stop().await, "the store did not close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_replays_the_log() {
    restart_keeps_everything(100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_snapshot_after_log_compaction() {
    // A snapshot every 10 entries: ~80 entries were written, so the state comes back from a
    // snapshot plus the tail of the log.
    restart_keeps_everything(10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_file_is_written_and_log_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let repo = RepositoryName::parse("snap").unwrap();
    let node = Node::start(&config(dir.path(), 1_000_000), Duration::from_secs(10))
        .await
        .unwrap();
    push(&node, &repo, 0..5).await;
    node.registry.cluster().trigger_snapshot().await.unwrap();
    let snap = dir.path().join("snapshots").join("current.snap");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !snap.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot file after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(node.stop().await, "the store did not close");
    let node = reopen(&config(dir.path(), 1_000_000)).await;
    assert_eq!(tags(&node, &repo).await.len(), 5);
    assert!(node.stop().await, "the store did not close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_once_the_store_is_closed() {
    // Each round reopens the directory right after `stop` returned: RocksDB refuses a second
    // open while the previous instance's handles are alive ("lock hold by current process").
    let dir = tempfile::tempdir().unwrap();
    let repo = RepositoryName::parse("again").unwrap();
    let c = config(dir.path(), 1_000_000);
    for round in 0..20u32 {
        let node = Node::start(&c, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("round {round}: failed to reopen the store: {e:?}"));
        // Writes keep Raft's storage tasks busy up to the stop.
        push(&node, &repo, round..round + 1).await;
        assert!(node.stop().await, "round {round}: the store did not close");
    }
    let node = reopen(&c).await;
    assert_eq!(tags(&node, &repo).await.len(), 20);
    assert!(node.stop().await, "the store did not close");
}
