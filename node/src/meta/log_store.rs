//! The Raft log and vote in RocksDB (column families `logs` and `raft`).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use super::write_gate::WriteGate;
use super::{CF_LOGS, CF_RAFT, MetaError, TypeConfig, decode, encode, keys};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// The Raft log store. Cheap to clone: clones share the database.
///
/// Every write first passes the [`WriteGate`]: on a full disk it waits for space instead of
/// failing, since openraft stops Raft for good on a storage error.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DB>,
    gate: WriteGate,
}

impl LogStore {
    pub(super) fn new(db: Arc<DB>, gate: WriteGate) -> LogStore {
        LogStore { db, gate }
    }

    /// The gate this store's writes (and the state machine's) pass: the cluster asks it
    /// whether the disk is full, and stops it at shutdown.
    pub fn write_gate(&self) -> WriteGate {
        self.gate.clone()
    }

    /// Runs a RocksDB operation on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&DB) -> Result<T, MetaError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::from)
    }

    fn get_raft<T: serde::de::DeserializeOwned>(
        db: &DB,
        key: &'static [u8],
    ) -> Result<Option<T>, MetaError> {
        let cf = db.cf_handle(CF_RAFT).expect("raft column family");
        match db
            .get_pinned_cf(cf, key)
            .map_err(MetaError::db("read raft state"))?
        {
            Some(b) => Ok(Some(decode("raft state", &b)?)),
            None => Ok(None),
        }
    }

    fn put_raft<T: serde::Serialize>(
        db: &DB,
        key: &'static [u8],
        v: &T,
        sync: bool,
    ) -> Result<(), MetaError> {
        let cf = db.cf_handle(CF_RAFT).expect("raft column family");
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        db.put_cf_opt(cf, key, encode(v), &wo)
            .map_err(MetaError::db("write raft state"))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<EntryOf<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Some(*x + 1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        self.blocking(move |db| {
            let cf = db.cf_handle(CF_LOGS).expect("logs column family");
            let mut out = Vec::new();
            let from = keys::log(start);
            for item in db.iterator_cf(cf, IteratorMode::From(&from, Direction::Forward)) {
                let (k, v) = item.map_err(MetaError::db("read log"))?;
                let index = keys::log_index(&k);
                if end.is_some_and(|end| index >= end) {
                    break;
                }
                out.push(decode::<EntryOf<TypeConfig>>("log entry", &v)?);
            }
            Ok(out)
        })
        .await
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<TypeConfig>>> {
        self.blocking(|db| Self::get_raft(db, VOTE)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        self.blocking(|db| {
            let cf = db.cf_handle(CF_LOGS).expect("logs column family");
            let last = match db.iterator_cf(cf, IteratorMode::End).next() {
                Some(item) => {
                    let (_, v) = item.map_err(MetaError::db("read log"))?;
                    Some(decode::<EntryOf<TypeConfig>>("log entry", &v)?.log_id())
                }
                None => None,
            };
            let purged: Option<LogIdOf<TypeConfig>> = Self::get_raft(db, PURGED)?;
            Ok(LogState {
                last_log_id: last.or(purged),
                last_purged_log_id: purged,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> io::Result<()> {
        let vote = *vote;
        self.gate.wait_for_room().await?;
        self.blocking(move |db| Self::put_raft(db, VOTE, &vote, true))
            .await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        // Not fsynced: after a crash openraft re-derives what is committed; this only lets a
        // restarted node re-apply what it already knew was committed sooner.
        self.gate.wait_for_room().await?;
        self.blocking(move |db| Self::put_raft(db, COMMITTED, &committed, false))
            .await
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        self.blocking(|db| {
            Ok(Self::get_raft::<Option<LogIdOf<TypeConfig>>>(db, COMMITTED)?.flatten())
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        {
            let cf = self.db.cf_handle(CF_LOGS).expect("logs column family");
            for entry in entries {
                batch.put_cf(cf, keys::log(entry.index()), encode(&entry));
            }
        }
        let res = match self.gate.wait_for_room().await {
            Ok(()) => {
                self.blocking(move |db| {
                    let mut wo = WriteOptions::default();
                    wo.set_sync(true);
                    db.write_opt(batch, &wo)
                        .map_err(MetaError::db("append log"))
                })
                .await
            }
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.gate.wait_for_room().await?;
        self.blocking(move |db| {
            let cf = db.cf_handle(CF_LOGS).expect("logs column family");
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf, keys::log(from), keys::log(u64::MAX));
            // The entry at u64::MAX is never written: indexes do not get there.
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(batch, &wo)
                .map_err(MetaError::db("truncate log"))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> io::Result<()> {
        self.gate.wait_for_room().await?;
        self.blocking(move |db| {
            // The purge point and the deletion in one synced batch: a crash never leaves
            // entries at or before the recorded purge point.
            let logs = db.cf_handle(CF_LOGS).expect("logs column family");
            let raft = db.cf_handle(CF_RAFT).expect("raft column family");
            let mut batch = WriteBatch::default();
            batch.put_cf(raft, PURGED, encode(&log_id));
            batch.delete_range_cf(logs, keys::log(0), keys::log(log_id.index() + 1));
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(batch, &wo).map_err(MetaError::db("purge log"))
        })
        .await
    }
}
