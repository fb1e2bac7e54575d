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

/// Starts a node on a data directory a stopped in-process node used. Raft's storage tasks may
/// still be dropping the previous instance's handles for a moment (RocksDB's LOCK is then
/// held by this process); retried within a bound.
async fn reopen(c: &Config) -> Node {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Node::start(c, Duration::from_secs(10)).await {
            Ok(node) => return node,
            Err(e) if format!("{e:?}").contains("lock hold by current process") => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the previous instance never released its store: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("failed to restart the node: {e:?}"),
        }
    }
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
        node.stop().await;
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
    node.stop().await;
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
    node.stop().await;
    drop(node);
    let node = reopen(&config(dir.path(), 1_000_000)).await;
    assert_eq!(tags(&node, &repo).await.len(), 5);
    node.stop().await;
}
