//! Metadata: the Raft log store and the replicated state machine, both in one RocksDB.
//!
//! This is the only module that names RocksDB and openraft's storage traits. Everything that
//! describes the registry (repositories, manifests, tags, referrers, blob records and links)
//! changes only through a [`Command`] committed to the Raft log and applied, in log order, by
//! [`StateMachine`]; readers get a [`MetaReader`] over the applied state.
//!
//! RocksDB layout (`<data-dir>/meta/`); keys are bytes, `\0` separates a repository name (which
//! never holds `\0`) from what follows, so one repository's keys sort together:
//!
//! ```text
//! column family  key                                   value (postcard, versioned)
//! logs           <index: u64 big-endian>               Raft log entry
//! raft           "vote" | "committed" | "purged"       Vote / LogId
//! raft           "format"                              u32: format of `logs` and `raft` (1)
//! state          "_sm/applied" | "_sm/membership"      last applied LogId / StoredMembership
//! state          "r/" repo                             RepositoryRecord
//! state          "m/" repo \0 digest                   ManifestRecord (the exact bytes)
//! state          "t/" repo \0 tag                      TagRecord (-> manifest digest)
//! state          "l/" repo \0 digest                   BlobLinkRecord (repo may serve the blob)
//! state          "b/" digest                           BlobRecord (size, holders, first seen)
//! state          "f/" repo \0 subject \0 referrer      ReferrerRecord (descriptor of a referrer)
//! state          "p/" pattern                          ReplicationPolicy (repositories it matches)
//! state          "a/…"                                 auth records (identities, scope maps,
//!                                                      signing keys, settings; see `auth`)
//! state          "g/" | "c/" | "y/" | "s/refs-counted" garbage collection: reference counts,
//!                                                      unreferenced blobs by last touch,
//!                                                      reverse links (see `gc`)
//! state          "e/" | "w/…"                           the event log, webhooks, their cursors and
//!                                                      delivery logs (see `webhooks`)
//! audit          <time ms: u64 BE> <seq: u32 BE>       AuditRecord (this node's own audit
//!                                                      log: not Raft, not in snapshots; `audit`)
//! ```
//!
//! Invariants:
//! - Applying a command is deterministic: it depends on the command and the state only (times
//!   are stamped into the command by the node that proposed it).
//! - Each applied entry is written in one RocksDB write batch together with `_sm/applied`.
//! - Log appends are fsynced before openraft is told they are flushed; state-machine writes are
//!   not (a crash re-applies committed entries from the log).
//! - No write reaches RocksDB while the disk is nearly full: it waits at the [`WriteGate`]
//!   (RocksDB cannot recover from `ENOSPC` in its log files without a restart; ADR 010).

pub mod audit;
pub mod auth;
mod command;
mod gc;
mod keys;
mod legacy;
pub mod lifecycle;
mod log_store;
mod notices;
pub mod policy;
mod read;
mod snapshot;
mod state_machine;
mod tag_cache;
pub mod webhooks;
mod write_gate;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use audit::{AuditEvent, AuditQuery, AuditRecord, AuditStore, DeleteKind};
pub use command::{
    BlobRecord, Command, CommandV1, ManifestRecord, PutManifest, ReferrerRecord, Rejection,
    ReplicationPolicy, TagRecord, Traced, WriteResult,
};
pub use gc::{BlobRefs, Candidate, CandidateCursor, CollectedBlob};
pub use log_store::LogStore;
pub use notices::{NOTICE_CAPACITY, Notice, Notices, Taken};
pub use read::{ManifestCursor, ManifestEntry, ManifestPage, ManifestSummary, MetaReader, Page};
pub use snapshot::IncomingSnapshot;
pub use state_machine::StateMachine;
pub use write_gate::{DiskFull, WriteGate};

/// A node's id in the cluster.
pub type NodeId = u64;

/// What the cluster records of each member: how to reach it and where it is.
///
/// It is written inside membership entries of the Raft log, the applied membership and
/// snapshot metadata, so it carries its own version: it is encoded as
/// `NodeInfoVersions::V1(..)`; a new field adds `V2` and decodes `V1` by upgrading it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "NodeInfoVersions", into = "NodeInfoVersions")]
pub struct NodeInfo {
    /// Base URL of the node's registry HTTP front, e.g. `http://10.0.0.1:5000`.
    pub url: String,
    /// Address of the node's cluster gRPC endpoint, e.g. `10.0.0.1:7000`.
    pub cluster_addr: String,
    /// Region the node is placed in.
    pub region: String,
    /// Zone within the region.
    pub zone: String,
}

/// The versioned encoding of [`NodeInfo`].
#[derive(serde::Serialize, serde::Deserialize)]
enum NodeInfoVersions {
    /// Version 1.
    V1(NodeInfoV1),
}

/// Version 1 of [`NodeInfo`]: frozen; a change adds a version.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct NodeInfoV1 {
    url: String,
    cluster_addr: String,
    region: String,
    zone: String,
}

impl From<NodeInfoVersions> for NodeInfo {
    fn from(v: NodeInfoVersions) -> NodeInfo {
        match v {
            NodeInfoVersions::V1(n) => n.into(),
        }
    }
}

impl From<NodeInfo> for NodeInfoVersions {
    fn from(n: NodeInfo) -> NodeInfoVersions {
        NodeInfoVersions::V1(NodeInfoV1 {
            url: n.url,
            cluster_addr: n.cluster_addr,
            region: n.region,
            zone: n.zone,
        })
    }
}

impl From<NodeInfoV1> for NodeInfo {
    fn from(n: NodeInfoV1) -> NodeInfo {
        NodeInfo {
            url: n.url,
            cluster_addr: n.cluster_addr,
            region: n.region,
            zone: n.zone,
        }
    }
}

openraft::declare_raft_types!(
    /// openraft's type configuration for berth's metadata.
    pub TypeConfig:
        D = Command,
        R = WriteResult,
        NodeId = NodeId,
        Node = NodeInfo,
);

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// RocksDB failed.
    #[error("failed to {op} metadata")]
    Db {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: rocksdb::Error,
    },
    /// A stored value could not be decoded.
    #[error("failed to decode stored {what}")]
    Decode {
        /// Which kind of value.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: postcard::Error,
    },
    /// A file operation on snapshot files failed.
    #[error("failed to {op}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A stored value decoded but does not hold together.
    #[error("failed to decode stored {what}: {reason}")]
    Invalid {
        /// Which kind of value.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The Raft storage was written in a format this build does not know (a newer berth).
    #[error("failed to open metadata: raft storage format {found} is newer than {supported}")]
    UnknownFormat {
        /// The format found.
        found: u32,
        /// The newest format this build reads.
        supported: u32,
    },
    /// A blocking task failed.
    #[error("metadata task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The disk is full and the node is stopping: the write waited for space and gave up.
    #[error("failed to write metadata")]
    DiskFull(#[source] DiskFull),
}

impl MetaError {
    fn db(op: &'static str) -> impl FnOnce(rocksdb::Error) -> MetaError {
        move |source| MetaError::Db { op, source }
    }
}

impl From<MetaError> for std::io::Error {
    fn from(e: MetaError) -> Self {
        std::io::Error::other(e)
    }
}

/// Collected blobs queued for the reaper at most (see `open_closable`).
const COLLECTED_CAPACITY: usize = 1 << 18;

const CF_LOGS: &str = "logs";
const CF_RAFT: &str = "raft";
const CF_STATE: &str = "state";
const CF_AUDIT: &str = "audit";

/// Opens (creating if needed) the metadata database under `data_dir/meta` and returns the
/// three views of it: Raft log store, state machine, and reader.
pub fn open(data_dir: &Path) -> Result<(LogStore, StateMachine, MetaReader), MetaError> {
    let (log, sm, reader, _audit, _closer) = open_closable(data_dir)?;
    Ok((log, sm, reader))
}

/// As [`open`], with this node's [`AuditStore`] and a [`MetaCloser`] that can wait for the
/// database to be closed.
pub fn open_closable(
    data_dir: &Path,
) -> Result<(LogStore, StateMachine, MetaReader, AuditStore, MetaCloser), MetaError> {
    let path = data_dir.join("meta");
    let snapshot_dir = data_dir.join("snapshots");
    std::fs::create_dir_all(&snapshot_dir).map_err(|source| MetaError::Io {
        op: "create snapshot directory",
        source,
    })?;
    let db = Arc::new(open_db(&path)?);
    log_store::upgrade(&db)?;
    let tags = Arc::new(tag_cache::TagCache::default());
    // One gate for both writers: the log store and the state machine share the disk.
    let gate = WriteGate::new(&path);
    let notices = Arc::new(Notices::default());
    // Collected blobs for the reaper: a collection proposes at most `gc.max_blobs_per_sec`
    // and the reaper removes as many, so this holds minutes of backlog (about 100 bytes
    // each); past it the reaper sweeps instead.
    let collected = Arc::new(Notices::with_capacity(COLLECTED_CAPACITY));
    let indexes = Arc::new(lifecycle::Indexes::default());
    indexes.reload(&db)?;
    let (auth, auth_view) = auth::AuthPublisher::open(&db)?;
    let sm = StateMachine::open(
        db.clone(),
        snapshot_dir,
        tags.clone(),
        gate.clone(),
        notices.clone(),
        Arc::new(auth),
        collected.clone(),
        indexes.clone(),
    )?;
    let closer = MetaCloser { db: db.clone() };
    let audit = AuditStore::open(db.clone(), gate.clone())?;
    Ok((
        LogStore::new(db.clone(), gate),
        sm,
        MetaReader::new(db, tags, notices, auth_view, collected, indexes),
        audit,
        closer,
    ))
}

/// Size and compaction state of the metadata database, from RocksDB's properties summed
/// over the column families ([`MetaReader::db_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbStats {
    /// SST files and memtables, in bytes.
    pub size_bytes: u64,
    /// RocksDB's estimate of the bytes compactions have to rewrite.
    pub compaction_pending_bytes: u64,
    /// Whether a compaction is pending in any column family.
    pub compaction_pending: bool,
}

/// See [`DbStats`]: in-memory property reads, no IO (a property RocksDB cannot give counts 0).
fn db_stats(db: &rocksdb::DB) -> DbStats {
    let mut stats = DbStats::default();
    for name in [CF_LOGS, CF_RAFT, CF_STATE, CF_AUDIT] {
        let Some(cf) = db.cf_handle(name) else {
            continue;
        };
        let prop = |p: &str| db.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
        stats.size_bytes +=
            prop("rocksdb.total-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables");
        stats.compaction_pending_bytes += prop("rocksdb.estimate-pending-compaction-bytes");
        stats.compaction_pending |= prop("rocksdb.compaction-pending") > 0;
    }
    stats
}

/// Size in bytes of the current snapshot under `data_dir` (the last one this node built or
/// installed); `None` when there is none. One `stat`.
pub fn snapshot_bytes(data_dir: &Path) -> Option<u64> {
    std::fs::metadata(data_dir.join("snapshots").join(snapshot::CURRENT_FILE))
        .ok()
        .map(|m| m.len())
}

/// One more handle on the metadata database, kept to close it: RocksDB closes when its last
/// handle is dropped, and [`MetaCloser::close`] makes sure that last one is this.
pub struct MetaCloser {
    db: Arc<rocksdb::DB>,
}

impl std::fmt::Debug for MetaCloser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaCloser")
            .field("handles", &Arc::strong_count(&self.db))
            .finish()
    }
}

impl MetaCloser {
    /// Waits, up to `bound`, until every other handle (log store, state machine, readers) is
    /// dropped, then closes the database and returns once it is closed (its directory can be
    /// opened again at once). `Err(self)` when other handles remain after `bound`.
    pub async fn close(self, bound: Duration) -> Result<(), MetaCloser> {
        let deadline = tokio::time::Instant::now() + bound;
        let mut pause = Duration::from_millis(1);
        // No handle can appear meanwhile: new ones are only cloned from existing ones, and
        // once this is the last one there are none to clone from.
        while Arc::strong_count(&self.db) > 1 {
            if tokio::time::Instant::now() >= deadline {
                return Err(self);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        let db = self.db;
        // Closing flushes and joins RocksDB's threads: not on an async worker.
        let _ = tokio::task::spawn_blocking(move || drop(db)).await;
        Ok(())
    }
}

fn open_db(path: &Path) -> Result<rocksdb::DB, MetaError> {
    use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options};

    // Small and bounded: metadata is small, and the node's memory budget is tight.
    let cache = Cache::new_lru_cache(8 * 1024 * 1024).map_err(MetaError::db("create cache"))?;
    let cf_opts = |write_buffer: usize| {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        let mut o = Options::default();
        o.set_block_based_table_factory(&table);
        o.set_write_buffer_size(write_buffer);
        o.set_max_write_buffer_number(2);
        o
    };
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_max_background_jobs(2);
    db_opts.set_max_open_files(256);
    db_opts.set_keep_log_file_num(3);
    // No periodic stats lines in RocksDB's info log: on a full disk, the second failed write
    // to that log aborts the process (see `write_gate`), and the gate holds back every write
    // of ours but cannot hold back a timer.
    db_opts.set_stats_dump_period_sec(0);
    let cfs = vec![
        ColumnFamilyDescriptor::new(CF_LOGS, cf_opts(4 * 1024 * 1024)),
        ColumnFamilyDescriptor::new(CF_RAFT, cf_opts(1024 * 1024)),
        ColumnFamilyDescriptor::new(CF_STATE, cf_opts(4 * 1024 * 1024)),
        ColumnFamilyDescriptor::new(CF_AUDIT, cf_opts(1024 * 1024)),
    ];
    rocksdb::DB::open_cf_descriptors(&db_opts, path, cfs).map_err(MetaError::db("open"))
}

/// Encodes a stored value (postcard).
fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("in-memory postcard encoding cannot fail")
}

/// Decodes a stored value (postcard).
fn decode<T: serde::de::DeserializeOwned>(what: &'static str, b: &[u8]) -> Result<T, MetaError> {
    postcard::from_bytes(b).map_err(|source| MetaError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
            let dir = tempfile::tempdir()
                .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
            let (log, sm, _) =
                open(dir.path()).map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite against our RocksDB log store and state machine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite() {
        Suite::test_all(Builder).await.unwrap();
    }
}
