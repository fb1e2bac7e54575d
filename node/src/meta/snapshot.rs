//! Snapshots of the state machine: one file holding every record of the `state` column family.
//!
//! File format (version 2), `<data-dir>/snapshots/current.snap`:
//!
//! ```text
//! "BERTHSNP" | u32 BE format version (2) | u32 BE meta length | meta (postcard Stored::V1(SnapshotMeta))
//! then records until end of file: u32 BE key length | key | u32 BE value length | value
//! ```
//!
//! Version 1 (read, never written) had the meta as plain postcard with unversioned node
//! infos (see `legacy.rs`); the records are the same.
//!
//! A snapshot is written to a temporary file, fsynced and renamed over `current.snap`; an
//! installed snapshot is first made the current one, then loaded, so a crash half-way through
//! loading is repaired at start-up by openraft installing the current snapshot again.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::RaftSnapshotBuilder;
use openraft::alias::{SnapshotMetaOf, SnapshotOf};
use rocksdb::{DB, IteratorMode, WriteBatch};

use super::command::Stored;
use super::state_machine::{put, state_cf};
use super::{MetaError, TypeConfig, decode, encode, keys};

const MAGIC: &[u8; 8] = b"BERTHSNP";
/// The current snapshot's file name in the snapshot directory.
pub(super) const CURRENT_FILE: &str = "current.snap";
const FORMAT_VERSION: u32 = 2;
/// The format before snapshot metadata was versioned.
const LEGACY_FORMAT_VERSION: u32 = 1;
/// Bytes of records gathered into one write batch while installing.
const INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> MetaError {
    move |source| MetaError::Io { op, source }
}

/// The snapshot directory.
#[derive(Debug, Clone)]
pub(super) struct SnapshotFiles {
    dir: Arc<PathBuf>,
    seq: Arc<AtomicU64>,
}

impl SnapshotFiles {
    pub(super) fn open(dir: PathBuf) -> Result<SnapshotFiles, MetaError> {
        // Temporary files of a snapshot interrupted by a crash are garbage.
        for entry in std::fs::read_dir(&dir).map_err(io_err("list snapshots"))? {
            let path = entry.map_err(io_err("list snapshots"))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path).map_err(io_err("remove snapshot leftover"))?;
            }
        }
        Ok(SnapshotFiles {
            dir: Arc::new(dir),
            seq: Arc::new(AtomicU64::new(0)),
        })
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT_FILE)
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{}-{n}.tmp", std::process::id()))
    }

    /// Makes a fully written temporary file the current snapshot.
    fn publish(&self, tmp: &PathBuf) -> Result<(), MetaError> {
        std::fs::rename(tmp, self.current_path()).map_err(io_err("rename snapshot"))?;
        File::open(&*self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync snapshot dir"))
    }

    /// The current snapshot, positioned at its start.
    pub(super) fn current(&self) -> Result<Option<SnapshotOf<TypeConfig, File>>, MetaError> {
        let mut file = match File::open(self.current_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open snapshot")(e)),
        };
        let meta = read_header(&mut file)?;
        file.seek(SeekFrom::Start(0))
            .map_err(io_err("read snapshot"))?;
        Ok(Some(SnapshotOf::<TypeConfig, File> {
            meta,
            snapshot: file,
        }))
    }
}

fn read_header(r: &mut impl Read) -> Result<SnapshotMetaOf<TypeConfig>, MetaError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(io_err("read snapshot header"))?;
    if &magic != MAGIC {
        return Err(io_err("read snapshot header")(io::Error::other(
            "not a berth snapshot",
        )));
    }
    let version = read_u32(r)?.ok_or_else(|| io_err("read snapshot header")(eof()))?;
    if version != FORMAT_VERSION && version != LEGACY_FORMAT_VERSION {
        return Err(io_err("read snapshot header")(io::Error::other(format!(
            "unknown snapshot format version {version}"
        ))));
    }
    let meta = read_chunk(r)?.ok_or_else(|| io_err("read snapshot header")(eof()))?;
    if version == LEGACY_FORMAT_VERSION {
        return super::legacy::snapshot_meta(&meta);
    }
    match decode::<Stored<SnapshotMetaOf<TypeConfig>>>("snapshot meta", &meta)? {
        Stored::V1(m) => Ok(m),
    }
}

fn eof() -> io::Error {
    io::Error::from(io::ErrorKind::UnexpectedEof)
}

/// Reads a big-endian u32, or `None` at a clean end of file.
fn read_u32(r: &mut impl Read) -> Result<Option<u32>, MetaError> {
    let mut b = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut b[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io_err("read snapshot")(eof())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read snapshot")(e)),
        }
    }
    Ok(Some(u32::from_be_bytes(b)))
}

fn read_chunk(r: &mut impl Read) -> Result<Option<Vec<u8>>, MetaError> {
    let Some(len) = read_u32(r)? else {
        return Ok(None);
    };
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).map_err(io_err("read snapshot"))?;
    Ok(Some(buf))
}

fn write_chunk(w: &mut impl Write, b: &[u8]) -> io::Result<()> {
    w.write_all(&(b.len() as u32).to_be_bytes())?;
    w.write_all(b)
}

/// A snapshot being received from the leader, spooled to `incoming-<pid>-<n>.tmp` in the
/// snapshot directory until openraft installs it. The file is removed when this is dropped
/// (after [`IncomingSnapshot::finish`] the open handle still reads it), and at start-up if a
/// crash interrupts the transfer.
#[derive(Debug)]
pub struct IncomingSnapshot {
    path: PathBuf,
    file: Option<tokio::fs::File>,
}

impl IncomingSnapshot {
    /// Creates the spool file in `dir`.
    pub async fn create(dir: &std::path::Path) -> Result<IncomingSnapshot, MetaError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("incoming-{}-{n}.tmp", std::process::id()));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(io_err("store incoming snapshot"))?;
        Ok(IncomingSnapshot {
            path,
            file: Some(file),
        })
    }

    /// Appends received bytes.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), MetaError> {
        use tokio::io::AsyncWriteExt;
        let file = self.file.as_mut().expect("written before finish");
        file.write_all(data)
            .await
            .map_err(io_err("store incoming snapshot"))
    }

    /// Ends the transfer and returns the file to read the snapshot from.
    pub async fn finish(mut self) -> Result<File, MetaError> {
        use tokio::io::AsyncWriteExt;
        let mut file = self.file.take().expect("finished once");
        file.flush()
            .await
            .map_err(io_err("store incoming snapshot"))?;
        drop(file);
        let file = tokio::fs::File::open(&self.path)
            .await
            .map_err(io_err("store incoming snapshot"))?;
        Ok(file.into_std().await)
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Builds a snapshot from a consistent RocksDB snapshot of the state.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    files: SnapshotFiles,
}

impl SnapshotBuilder {
    pub(super) fn new(db: Arc<DB>, files: SnapshotFiles) -> SnapshotBuilder {
        SnapshotBuilder { db, files }
    }
}

fn build(db: &DB, files: &SnapshotFiles) -> Result<SnapshotOf<TypeConfig, File>, MetaError> {
    let snap = db.snapshot();
    let cf = state_cf(db);
    let get = |key: &[u8]| snap.get_cf(cf, key).map_err(MetaError::db("read state"));
    let last_log_id = match get(keys::APPLIED)? {
        Some(b) => match decode::<Stored<_>>("applied log id", &b)? {
            Stored::V1(v) => Some(v),
        },
        None => None,
    };
    let last_membership = match get(keys::MEMBERSHIP)? {
        Some(b) => match decode::<Stored<_>>("membership", &b)? {
            Stored::V1(v) => v,
        },
        None => Default::default(),
    };
    let meta = SnapshotMetaOf::<TypeConfig> {
        last_log_id,
        last_membership,
    };

    let tmp = files.temp_path();
    let file = File::create(&tmp).map_err(io_err("create snapshot"))?;
    let mut w = BufWriter::with_capacity(1024 * 1024, file);
    let write = |w: &mut BufWriter<File>| -> Result<(), MetaError> {
        w.write_all(MAGIC).map_err(io_err("write snapshot"))?;
        w.write_all(&FORMAT_VERSION.to_be_bytes())
            .map_err(io_err("write snapshot"))?;
        write_chunk(w, &encode(&Stored::V1(&meta))).map_err(io_err("write snapshot"))?;
        for item in snap.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(MetaError::db("read state"))?;
            if k.starts_with(keys::SM_PREFIX) {
                continue;
            }
            write_chunk(w, &k).map_err(io_err("write snapshot"))?;
            write_chunk(w, &v).map_err(io_err("write snapshot"))?;
        }
        Ok(())
    };
    if let Err(e) = write(&mut w) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let file = w
        .into_inner()
        .map_err(|e| io_err("write snapshot")(e.into_error()))?;
    file.sync_all().map_err(io_err("fsync snapshot"))?;
    files.publish(&tmp)?;
    tracing::info!(last_log_id = ?meta.last_log_id, "built metadata snapshot");
    let snapshot = File::open(files.current_path()).map_err(io_err("open snapshot"))?;
    Ok(SnapshotOf::<TypeConfig, File> { meta, snapshot })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = File;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, File>> {
        let db = self.db.clone();
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || build(&db, &files))
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::from)
    }
}

/// Makes `snapshot` the current snapshot, then replaces the whole state with its records.
pub(super) fn install(
    db: &DB,
    files: &SnapshotFiles,
    meta: &SnapshotMetaOf<TypeConfig>,
    mut snapshot: File,
) -> Result<(), MetaError> {
    // 1. Persist it as the current snapshot (it may already be that file).
    snapshot
        .seek(SeekFrom::Start(0))
        .map_err(io_err("read snapshot"))?;
    let tmp = files.temp_path();
    let mut out = File::create(&tmp).map_err(io_err("create snapshot"))?;
    io::copy(&mut snapshot, &mut out).map_err(io_err("copy snapshot"))?;
    out.sync_all().map_err(io_err("fsync snapshot"))?;
    files.publish(&tmp)?;

    // 2. Load it.
    let mut r = BufReader::with_capacity(
        1024 * 1024,
        File::open(files.current_path()).map_err(io_err("open snapshot"))?,
    );
    let file_meta = read_header(&mut r)?;
    if file_meta.last_log_id != meta.last_log_id {
        return Err(io_err("install snapshot")(io::Error::other(
            "snapshot file does not match its metadata",
        )));
    }
    let cf = state_cf(db);
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf, [0u8].as_slice(), [0xffu8; 8].as_slice());
    db.write(batch).map_err(MetaError::db("clear state"))?;
    let mut batch = WriteBatch::default();
    loop {
        let Some(k) = read_chunk(&mut r)? else { break };
        let v = read_chunk(&mut r)?.ok_or_else(|| io_err("read snapshot")(eof()))?;
        batch.put_cf(cf, k, v);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.write(std::mem::take(&mut batch))
                .map_err(MetaError::db("install snapshot"))?;
        }
    }
    if let Some(applied) = &meta.last_log_id {
        put(&mut batch, cf, keys::APPLIED, applied);
    }
    put(&mut batch, cf, keys::MEMBERSHIP, &meta.last_membership);
    db.write(batch).map_err(MetaError::db("install snapshot"))?;
    db.flush_wal(true)
        .map_err(MetaError::db("install snapshot"))?;
    tracing::info!(last_log_id = ?meta.last_log_id, "installed metadata snapshot");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::storage::SnapshotMeta;
    use openraft::testing::log_id;
    use openraft::{Membership, StoredMembership};

    use super::*;
    use crate::meta::{NodeId, NodeInfo, NodeInfoV1};

    /// A snapshot file of format 1 (meta as plain postcard, node infos unversioned), as the
    /// code before format 2 wrote it, still opens: its meta reads back with the members.
    #[test]
    fn reads_a_format_1_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let info = NodeInfoV1 {
            url: "http://a:5000".into(),
            cluster_addr: "a:7000".into(),
            region: "r".into(),
            zone: "z".into(),
        };
        let configs = vec![BTreeSet::from([1u64])];
        let old = SnapshotMeta {
            last_log_id: Some(log_id::<TypeConfig>(2, 1, 9)),
            last_membership: StoredMembership::new(
                Some(log_id::<TypeConfig>(1, 1, 0)),
                Membership::<NodeId, NodeInfoV1>::new(
                    configs.clone(),
                    BTreeMap::from([(1, info.clone())]),
                )
                .unwrap(),
            ),
        };
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_be_bytes());
        write_chunk(&mut bytes, &postcard::to_stdvec(&old).unwrap()).unwrap();
        write_chunk(&mut bytes, b"r/x").unwrap();
        write_chunk(&mut bytes, b"v").unwrap();
        std::fs::write(dir.path().join("current.snap"), &bytes).unwrap();

        let files = SnapshotFiles::open(dir.path().to_path_buf()).unwrap();
        let snap = files.current().unwrap().unwrap();
        assert_eq!(snap.meta.last_log_id, old.last_log_id);
        let expected = Membership::<NodeId, NodeInfo>::new(
            configs,
            BTreeMap::from([(1, NodeInfo::from(info))]),
        )
        .unwrap();
        assert_eq!(snap.meta.last_membership.membership(), &expected);
        // A file of an unknown format is refused.
        bytes[8..12].copy_from_slice(&3u32.to_be_bytes());
        std::fs::write(dir.path().join("current.snap"), &bytes).unwrap();
        assert!(files.current().is_err());
    }
}
