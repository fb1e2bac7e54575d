//! The Raft log and vote in RocksDB (column families `logs` and `raft`).
//!
//! Every value is versioned as the state is (ADR 003, ADR 011): log entries, the vote, the
//! committed and purged log ids are `Stored::V1(..)` of openraft's types, and the
//! [`NodeInfo`](super::NodeInfo) inside membership entries carries its own version. The key
//! `format` in `raft` says which format the two column families hold; a database without it
//! was written unversioned (before format 1) and is upgraded in one write batch when it is
//! opened ([`upgrade`]).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use super::command::Stored;
use super::write_gate::WriteGate;
use super::{CF_LOGS, CF_RAFT, CF_STATE, MetaError, TypeConfig, decode, encode, keys, legacy};

pub(super) const VOTE: &[u8] = b"vote";
pub(super) const COMMITTED: &[u8] = b"committed";
pub(super) const PURGED: &[u8] = b"purged";
/// The key of the format of the `logs` and `raft` column families.
pub(super) const FORMAT: &[u8] = b"format";
/// The format this build writes: every value in an envelope.
pub(super) const RAFT_FORMAT: u32 = 1;

/// Encodes a value of the `logs` or `raft` column family.
fn encode_raft<T: serde::Serialize>(v: &T) -> Vec<u8> {
    encode(&Stored::V1(v))
}

/// Decodes a value of the `logs` or `raft` column family.
fn decode_raft<T: serde::de::DeserializeOwned>(
    what: &'static str,
    b: &[u8],
) -> Result<T, MetaError> {
    match decode::<Stored<T>>(what, b)? {
        Stored::V1(v) => Ok(v),
    }
}

/// Brings the Raft storage to [`RAFT_FORMAT`]: a new database is marked; one written before
/// format 1 (no `format` key, but values) has every log entry, the vote, the committed and
/// purged ids and the applied membership rewritten, with the mark, in one synced write batch,
/// so a crash leaves either the old or the new format. A newer format is an error.
pub(super) fn upgrade(db: &DB) -> Result<(), MetaError> {
    let raft = db.cf_handle(CF_RAFT).expect("raft column family");
    if let Some(b) = db
        .get_pinned_cf(raft, FORMAT)
        .map_err(MetaError::db("read raft format"))?
    {
        let found: u32 = decode("raft format", &b)?;
        if found != RAFT_FORMAT {
            return Err(MetaError::UnknownFormat {
                found,
                supported: RAFT_FORMAT,
            });
        }
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    let logs = db.cf_handle(CF_LOGS).expect("logs column family");
    let mut entries = 0u64;
    for item in db.iterator_cf(logs, IteratorMode::Start) {
        let (k, v) = item.map_err(MetaError::db("read log"))?;
        batch.put_cf(logs, k, encode_raft(&legacy::entry(&v)?));
        entries += 1;
    }
    for (key, upgraded) in [
        (
            VOTE,
            legacy::vote as fn(&[u8]) -> Result<Vec<u8>, MetaError>,
        ),
        (COMMITTED, legacy::committed),
        (PURGED, legacy::purged),
    ] {
        if let Some(v) = db
            .get_cf(raft, key)
            .map_err(MetaError::db("read raft state"))?
        {
            batch.put_cf(raft, key, upgraded(&v)?);
        }
    }
    let state = db.cf_handle(CF_STATE).expect("state column family");
    if let Some(v) = db
        .get_cf(state, keys::MEMBERSHIP)
        .map_err(MetaError::db("read state"))?
    {
        batch.put_cf(state, keys::MEMBERSHIP, legacy::applied_membership(&v)?);
    }
    let was_legacy = !batch.is_empty();
    batch.put_cf(raft, FORMAT, encode(&RAFT_FORMAT));
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo)
        .map_err(MetaError::db("upgrade raft storage"))?;
    if was_legacy {
        tracing::info!(
            entries,
            format = RAFT_FORMAT,
            "upgraded the raft log from the unversioned format"
        );
    }
    Ok(())
}

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
            Some(b) => Ok(Some(decode_raft("raft state", &b)?)),
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
        db.put_cf_opt(cf, key, encode_raft(v), &wo)
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
                out.push(decode_raft::<EntryOf<TypeConfig>>("log entry", &v)?);
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
                    Some(decode_raft::<EntryOf<TypeConfig>>("log entry", &v)?.log_id())
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
                batch.put_cf(cf, keys::log(entry.index()), encode_raft(&entry));
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
            batch.put_cf(raft, PURGED, encode_raft(&log_id));
            batch.delete_range_cf(logs, keys::log(0), keys::log(log_id.index() + 1));
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(batch, &wo).map_err(MetaError::db("purge log"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::alias::{CommittedLeaderIdOf, StoredMembershipOf};
    use openraft::storage::RaftStateMachine;
    use openraft::testing::log_id;
    use openraft::{Entry, EntryPayload, Membership, StoredMembership, Vote};
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::meta::command::{Command, CommandV1};
    use crate::meta::{NodeId, NodeInfo, open, open_db};

    /// `NodeInfo` as the code before format 1 declared it (plain, unversioned).
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    struct OldNodeInfo {
        url: String,
        cluster_addr: String,
        region: String,
        zone: String,
    }

    type Clid = CommittedLeaderIdOf<TypeConfig>;

    /// The encoder of the format before format 1: plain postcard of openraft's types.
    fn legacy<T: Serialize>(v: &T) -> Vec<u8> {
        postcard::to_stdvec(v).unwrap()
    }

    fn old_node(n: u64) -> OldNodeInfo {
        OldNodeInfo {
            url: format!("http://10.0.0.{n}:5000"),
            cluster_addr: format!("10.0.0.{n}:7000"),
            region: "eu".into(),
            zone: format!("eu-{n}"),
        }
    }

    fn node(n: u64) -> NodeInfo {
        let o = old_node(n);
        NodeInfo {
            url: o.url,
            cluster_addr: o.cluster_addr,
            region: o.region,
            zone: o.zone,
        }
    }

    fn command() -> Command {
        Command::V1(CommandV1::BlobCopied {
            digest: crate::types::Digest::sha256_of(b"x"),
            node: 2,
        })
    }

    /// A database written by the code before format 1 (log entries of every kind, vote,
    /// committed id, applied membership) opens with this build: the entries, vote, committed
    /// id and membership read back, new entries append, and it reopens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_a_log_written_in_the_unversioned_format() {
        let dir = tempfile::tempdir().unwrap();
        let configs = vec![BTreeSet::from([1u64])];
        let old_membership: Membership<NodeId, OldNodeInfo> = Membership::new(
            configs.clone(),
            BTreeMap::from([(1, old_node(1)), (2, old_node(2))]),
        )
        .unwrap();
        let membership: Membership<NodeId, NodeInfo> =
            Membership::new(configs, BTreeMap::from([(1, node(1)), (2, node(2))])).unwrap();
        let vote = Vote::new_committed(3, 1);
        let committed = Some(log_id::<TypeConfig>(3, 1, 2));
        {
            let db = open_db(&dir.path().join("meta")).unwrap();
            let logs = db.cf_handle(CF_LOGS).unwrap();
            let old_entries: Vec<Entry<Clid, EntryPayload<Command, NodeId, OldNodeInfo>>> = vec![
                Entry {
                    log_id: log_id::<TypeConfig>(1, 1, 0),
                    payload: EntryPayload::Membership(old_membership.clone()),
                },
                Entry {
                    log_id: log_id::<TypeConfig>(3, 1, 1),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id::<TypeConfig>(3, 1, 2),
                    payload: EntryPayload::Normal(command()),
                },
            ];
            for e in &old_entries {
                db.put_cf(logs, keys::log(e.log_id.index), legacy(e))
                    .unwrap();
            }
            let raft = db.cf_handle(CF_RAFT).unwrap();
            db.put_cf(raft, VOTE, legacy(&vote)).unwrap();
            db.put_cf(raft, COMMITTED, legacy(&committed)).unwrap();
            let state = db.cf_handle(CF_STATE).unwrap();
            let applied =
                StoredMembership::new(Some(log_id::<TypeConfig>(1, 1, 0)), old_membership);
            db.put_cf(state, keys::MEMBERSHIP, legacy(&Stored::V1(applied)))
                .unwrap();
            db.put_cf(
                state,
                keys::APPLIED,
                legacy(&Stored::V1(log_id::<TypeConfig>(1, 1, 0))),
            )
            .unwrap();
        }
        let expected: Vec<EntryOf<TypeConfig>> = vec![
            Entry {
                log_id: log_id::<TypeConfig>(1, 1, 0),
                payload: EntryPayload::Membership(membership.clone()),
            },
            Entry {
                log_id: log_id::<TypeConfig>(3, 1, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id::<TypeConfig>(3, 1, 2),
                payload: EntryPayload::Normal(command()),
            },
        ];
        for round in 0..2 {
            let (mut log, mut sm, _) = open(dir.path()).unwrap();
            let got = log.try_get_log_entries(0..10).await.unwrap();
            assert_eq!(got.len(), 3 + round, "round {round}");
            assert_eq!(got[..3], expected[..], "round {round}");
            assert_eq!(log.read_vote().await.unwrap(), Some(vote), "round {round}");
            assert_eq!(log.read_committed().await.unwrap(), committed);
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id.map(|l| l.index), Some(2 + round as u64));
            let (_, applied): (_, StoredMembershipOf<TypeConfig>) =
                sm.applied_state().await.unwrap();
            assert_eq!(applied.membership(), &membership);
            if round == 0 {
                // New entries are written in the new format beside the upgraded ones.
                let entry: EntryOf<TypeConfig> = Entry {
                    log_id: log_id::<TypeConfig>(3, 1, 3),
                    payload: EntryPayload::Normal(command()),
                };
                log.blocking(move |db| {
                    let cf = db.cf_handle(CF_LOGS).unwrap();
                    db.put_cf(cf, keys::log(3), encode_raft(&entry))
                        .map_err(MetaError::db("append log"))
                })
                .await
                .unwrap();
            }
            drop((log, sm));
        }
    }

    /// A database marked with a newer format is refused rather than misread.
    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()).unwrap());
        {
            let db = open_db(&dir.path().join("meta")).unwrap();
            let raft = db.cf_handle(CF_RAFT).unwrap();
            db.put_cf(raft, FORMAT, encode(&(RAFT_FORMAT + 1))).unwrap();
        }
        match open(dir.path()) {
            Err(MetaError::UnknownFormat { found, supported }) => {
                assert_eq!((found, supported), (RAFT_FORMAT + 1, RAFT_FORMAT));
            }
            other => panic!("expected UnknownFormat, got {:?}", other.map(|_| ())),
        }
    }
}
