//! A full disk (ADR 010), on a real file system: a node whose data directory is a small tmpfs
//! refuses blob uploads below its reserve with 503 `UNAVAILABLE` naming the disk, still takes
//! metadata inside the reserve, answers 503 (writes) and 503 (`/readyz`) once the disk is
//! completely full, and takes writes again by itself when space returns — no restart.
//!
//! Needs `mount -t tmpfs` (root): where the mount is refused the test prints why and passes;
//! everywhere else it asserts.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};

const MIB: u64 = 1024 * 1024;
/// Size of the tmpfs.
const DISK: u64 = 64 * MIB;
/// The upload reserve configured on it.
const RESERVE: u64 = 24 * MIB;
/// How long the node may take to notice that space returned.
const RECOVERY: Duration = Duration::from_secs(15);

/// A tmpfs mounted on a temporary directory; unmounted (lazily, so open files cannot hold it)
/// when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one, or says why it cannot.
    fn mount(size: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("failed to run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs was refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    /// Mounts one; where mounting is refused, prints why the test is skipped.
    /// Skips (printing why) only where mounting is not allowed: an unprivileged user. As
    /// root, as in CI, a refused mount fails the test, so it cannot pass without running.
    fn mount_or_skip(size: u64) -> Option<Tmpfs> {
        match Tmpfs::mount(size) {
            Ok(t) => Some(t),
            // SAFETY: geteuid has no preconditions.
            Err(why) if unsafe { libc::geteuid() } == 0 => {
                panic!("running as root, but a tmpfs could not be mounted: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED (not root): {why}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Bytes free on the file system of `path`.
fn free(path: &Path) -> u64 {
    berth_node::space::statvfs(path).unwrap().available
}

/// Fills the file system of `dir` with one file until `leave` bytes or fewer are free (0: to
/// the last byte); returns its path.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5au8; MIB as usize];
    // Large blocks first, then smaller ones down to a byte.
    let mut size = block.len();
    while size > 0 {
        let room = free(dir).saturating_sub(leave) as usize;
        if room == 0 {
            break;
        }
        match f.write(&block[..size.min(room)]) {
            Ok(n) if n > 0 => {}
            _ => size /= 2,
        }
    }
    path
}

/// A single-request blob upload (`POST ?digest=`) with its length.
async fn post_blob(c: &Client, repo: &str, content: &[u8]) -> Resp {
    let uri = format!("/v2/{repo}/blobs/uploads/?digest={}", digest_of(content));
    c.send(request(Method::POST, &uri, &[], content.to_vec()))
        .await
}

/// Asserts a 503 `UNAVAILABLE` with `Retry-After` whose message names `dir` and says `says`.
#[track_caller]
fn assert_no_space(r: &Resp, dir: &Path, says: &str) {
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    let message = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains(&dir.display().to_string()) && message.contains(says),
        "{}: the message names the disk and says {says:?}: {message}",
        r.what
    );
    assert!(r.header("retry-after").is_some(), "{}: Retry-After", r.what);
}

/// Asserts the answer to a write refused for want of free space (below the reserve, or too
/// full for metadata): it names the disk and its free space.
#[track_caller]
fn assert_disk_full(r: &Resp, dir: &Path) {
    assert_no_space(r, dir, "bytes free");
}

fn probe_files(data_dir: &Path) -> Vec<String> {
    let mut names = uploads(data_dir);
    names.retain(|n| n.starts_with(".readyz-probe-"));
    names
}

/// A node whose data directory `data` is on `disk`, with an upload reserve of `reserve`.
async fn start_node(disk: &Tmpfs, reserve: u64) -> (berth_node::Node, Client, PathBuf) {
    let data_dir = disk.path().join("data");
    let mut config = test_config(&data_dir);
    config.storage.reserve_bytes = reserve;
    config.storage.reserve_percent = 0;
    let node = berth_node::Node::start(&config, Duration::from_secs(10))
        .await
        .unwrap();
    let c = Client { app: node.router() };
    c.get("/readyz").await.expect(StatusCode::OK);
    (node, c, data_dir)
}

fn uploads(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_uploads_pauses_writes_and_recovers_without_restart() {
    let Some(disk) = Tmpfs::mount_or_skip(DISK) else {
        return;
    };
    let (node, c, data_dir) = start_node(&disk, RESERVE).await;

    // An image whose blobs are in before the disk fills: its manifest is pushed later.
    let config_blob = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = b"a small layer".to_vec();
    post_blob(&c, "app", &config_blob)
        .await
        .expect(StatusCode::CREATED);
    post_blob(&c, "app", &layer)
        .await
        .expect(StatusCode::CREATED);

    // 1. Push 4 MiB blobs until the reserve refuses one.
    let mut pushed: u8 = 0;
    let refused = loop {
        let blob: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8 ^ pushed).collect();
        let r = post_blob(&c, "big", &blob).await;
        if r.status != StatusCode::CREATED {
            break r;
        }
        pushed += 1;
        assert!(pushed < 16, "the reserve never refused an upload");
    };
    assert!(pushed >= 5, "only {pushed} blobs fit before the reserve");
    assert_disk_full(&refused, &data_dir);
    assert!(
        free(&data_dir) >= RESERVE - 4 * MIB,
        "the refused upload left its bytes behind: {} free",
        free(&data_dir)
    );
    // So is a chunk of that size in a session, before any byte of it is stored.
    let location = c.start_upload("big").await;
    let r = c.patch(&location, None, &vec![7u8; 4 * MIB as usize]).await;
    assert_disk_full(&r, &data_dir);
    c.delete(&location).await.expect(StatusCode::NO_CONTENT);
    // Reads are not affected.
    c.get("/readyz").await.expect(StatusCode::OK);
    c.get(&format!("/v2/app/blobs/{}", digest_of(&layer)))
        .await
        .expect(StatusCode::OK);

    // 2. Metadata still goes in: the reserve is there for it.
    let manifest = bytes_of(&oci_manifest(&config_blob, &[&layer]));
    c.put_manifest("app", "v1", OCI_MANIFEST, &manifest)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(c.tags("app").await, Some(vec!["v1".to_string()]));

    // 3. Something else takes the last byte of the disk.
    let ballast = fill(disk.path(), 0);
    assert!(
        free(&data_dir) < MIB,
        "{} bytes still free",
        free(&data_dir)
    );
    // The node measures free space at most 100 ms apart: within a moment, /readyz says that
    // metadata cannot be written.
    let deadline = Instant::now() + Duration::from_secs(2);
    let text = loop {
        let r = c.get("/readyz").await;
        let text = String::from_utf8_lossy(&r.body).to_string();
        if r.status == StatusCode::SERVICE_UNAVAILABLE && text.contains("metadata writes need") {
            break text;
        }
        assert!(Instant::now() < deadline, "/readyz: {} {text}", r.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(text.starts_with("not ready: disk full"), "{text}");
    let started = Instant::now();
    let r = c.put_manifest("app", "v2", OCI_MANIFEST, &manifest).await;
    assert_disk_full(&r, &data_dir);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a write on a full disk answers at once, not after the write timeout ({:?})",
        started.elapsed()
    );
    // The probe /readyz writes fails on this disk, and leaves nothing behind.
    let probe = node.registry.blob_store().check_writable().await;
    assert!(probe.is_err(), "a write succeeded on a full disk");
    assert_eq!(probe_files(&data_dir), Vec::<String>::new());
    let r = post_blob(&c, "app", b"more").await;
    assert_disk_full(&r, &data_dir);
    // Below the reserve, even opening a session is refused, before any byte is sent.
    let r = c
        .send(request(Method::POST, "/v2/big/blobs/uploads/", &[], vec![]))
        .await;
    assert_disk_full(&r, &data_dir);

    // 4. Space returns: writes resume by themselves.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + RECOVERY;
    loop {
        let r = c.put_manifest("app", "v2", OCI_MANIFEST, &manifest).await;
        if r.status == StatusCode::CREATED {
            break;
        }
        assert_disk_full(&r, &data_dir);
        assert!(
            Instant::now() < deadline,
            "writes did not resume within {RECOVERY:?} after space returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.get("/readyz").await.expect(StatusCode::OK);
    assert_eq!(
        c.tags("app").await,
        Some(vec!["v1".to_string(), "v2".to_string()])
    );
    // The reserve still holds for blobs, and nothing was left in uploads/.
    let r = post_blob(&c, "big", &vec![1u8; 4 * MIB as usize]).await;
    assert_disk_full(&r, &data_dir);
    assert_eq!(probe_files(&data_dir), Vec::<String>::new());

    // The router holds the store too: drop it first, as the server does on shutdown.
    drop(c);
    let stopped = Instant::now();
    node.stop().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "stop took too long"
    );
}

/// Without a reserve, an upload runs into the full disk itself: the client gets 503 naming the
/// file the disk refused (not 500), its staging file is removed, and the space is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_during_an_upload_is_503_and_frees_the_staging_file() {
    let Some(disk) = Tmpfs::mount_or_skip(DISK) else {
        return;
    };
    let (node, c, data_dir) = start_node(&disk, 0).await;
    let _ballast = fill(disk.path(), 20 * MIB);
    let before = free(&data_dir);
    let blob: Vec<u8> = (0..24 * MIB).map(|i| (i % 253) as u8).collect();
    // The file system's own refusal, named as such.
    let assert_enospc = |r: &Resp| assert_no_space(r, &data_dir, "disk is full");

    // One request.
    let r = post_blob(&c, "app", &blob).await;
    assert_enospc(&r);
    assert_eq!(uploads(&data_dir), Vec::<String>::new());

    // A session: the chunk the disk refused ends it, and its file goes with it.
    let location = c.start_upload("app").await;
    let r = c.patch(&location, None, &blob).await;
    assert_enospc(&r);
    assert_eq!(uploads(&data_dir), Vec::<String>::new());
    assert_error(
        &c.get(&location).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );

    // The space came back (RocksDB's own writes aside); what fits is stored.
    assert!(
        free(&data_dir) + MIB >= before,
        "{} of {before}",
        free(&data_dir)
    );
    post_blob(&c, "app", &blob[..4 * MIB as usize])
        .await
        .expect(StatusCode::CREATED);
    drop(c);
    node.stop().await;
}

/// A body of unknown length (chunked, no Content-Length) that starts above the reserve cannot
/// write past it: the reserve is checked before every block, the upload is refused with 503
/// naming the disk, its staging file is removed, and the space below the reserve stays free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_stops_at_the_reserve() {
    let Some(disk) = Tmpfs::mount_or_skip(DISK) else {
        return;
    };
    let (node, c, data_dir) = start_node(&disk, RESERVE).await;
    let before = free(&data_dir);
    assert!(before > RESERVE + 8 * MIB, "{before} free on the test disk");
    // More than is free above the reserve, in 1 MiB frames, with no declared length.
    let frames = ((before - RESERVE) / MIB + 8) as usize;
    let location = c.start_upload("app").await;
    let body = streamed((0..frames).map(|i| vec![i as u8; MIB as usize]).collect());
    let r = c
        .send(
            http::Request::builder()
                .method(Method::PATCH)
                .uri(&location)
                .body(body)
                .unwrap(),
        )
        .await;
    assert_disk_full(&r, &data_dir);
    // At most the blocks in flight went past the check.
    assert!(
        free(&data_dir) + 2 * MIB >= RESERVE,
        "{} free, reserve {RESERVE}",
        free(&data_dir)
    );
    assert_eq!(uploads(&data_dir), Vec::<String>::new());
    assert_error(
        &c.get(&location).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    drop(c);
    node.stop().await;
}
