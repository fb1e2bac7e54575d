//! The replicated state machine: applies committed [`Command`]s to the `state` column family.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, StoredMembership};
use rocksdb::{ColumnFamily, DB, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::auth::AuthPublisher;
use super::command::{
    BlobLinkRecord, BlobRecord, Command, CommandV1, ManifestRecord, PutManifest, Rejection,
    ReplicationPolicy, RepositoryRecord, Stored, TagRecord, WriteResult,
};
use super::notices::{Notice, Notices};
use super::snapshot::{SnapshotBuilder, SnapshotFiles};
use super::tag_cache::TagCache;
use super::write_gate::WriteGate;
use super::{CF_STATE, MetaError, TypeConfig, decode, encode, keys};
use crate::types::{Digest, RepositoryName};

/// The state machine. Owned by openraft; readers use [`super::MetaReader`].
pub struct StateMachine {
    db: Arc<DB>,
    snapshots: SnapshotFiles,
    /// Told which repositories' tags changed (after they are written).
    tags: Arc<TagCache>,
    /// Applies wait here while the disk is full (shared with the log store).
    gate: WriteGate,
    /// Told what changed for the replicator (after it is written).
    notices: Arc<Notices>,
    /// Republishes the auth state after an auth command or a snapshot.
    auth: Arc<AuthPublisher>,
}

impl StateMachine {
    pub(super) fn open(
        db: Arc<DB>,
        snapshot_dir: PathBuf,
        tags: Arc<TagCache>,
        gate: WriteGate,
        notices: Arc<Notices>,
        auth: Arc<AuthPublisher>,
    ) -> Result<StateMachine, MetaError> {
        let snapshots = SnapshotFiles::open(snapshot_dir)?;
        Ok(StateMachine {
            db,
            snapshots,
            tags,
            gate,
            notices,
            auth,
        })
    }
}

/// The repository whose tags a command may change, if any.
fn tags_changed_by(entry: &openraft::alias::EntryOf<TypeConfig>) -> Option<&RepositoryName> {
    match &entry.payload {
        EntryPayload::Normal(Command::V1(cmd)) => match cmd {
            CommandV1::PutManifest(p) if p.tag.is_some() => Some(&p.repo),
            CommandV1::DeleteTag { repo, .. } | CommandV1::DeleteManifest { repo, .. } => {
                Some(repo)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Tells the replicator what an applied entry changed.
fn notify(notices: &Notices, entry: &openraft::alias::EntryOf<TypeConfig>) {
    match &entry.payload {
        EntryPayload::Normal(Command::V1(cmd)) => match cmd {
            CommandV1::PutManifest(p) => notices.push(Notice::Manifest {
                repo: p.repo.clone(),
                digest: p.digest.clone(),
            }),
            CommandV1::DeleteManifest { repo, digest } => notices.push(Notice::Manifest {
                repo: repo.clone(),
                digest: digest.clone(),
            }),
            CommandV1::BlobStored { digest, .. } | CommandV1::BlobCopied { digest, .. } => {
                notices.push(Notice::Blob(digest.clone()))
            }
            CommandV1::SetReplicationPolicy { .. } | CommandV1::ClearReplicationPolicy { .. } => {
                notices.resync()
            }
            CommandV1::MountBlob { .. } | CommandV1::UnlinkBlob { .. } | CommandV1::Auth(_) => {}
            CommandV1::DeleteTag { .. } => {}
        },
        EntryPayload::Membership(_) => notices.resync(),
        EntryPayload::Blank => {}
    }
}

/// Reads a versioned value from the state column family.
pub(super) fn get<T: DeserializeOwned>(
    db: &DB,
    what: &'static str,
    key: &[u8],
) -> Result<Option<T>, MetaError> {
    let cf = state_cf(db);
    match db
        .get_pinned_cf(cf, key)
        .map_err(MetaError::db("read state"))?
    {
        Some(b) => match decode::<Stored<T>>(what, &b)? {
            Stored::V1(v) => Ok(Some(v)),
        },
        None => Ok(None),
    }
}

/// Writes a versioned value into a batch for the state column family.
pub(super) fn put<T: Serialize>(batch: &mut WriteBatch, cf: &ColumnFamily, key: &[u8], v: &T) {
    batch.put_cf(cf, key, encode(&Stored::V1(v)));
}

pub(super) fn state_cf(db: &DB) -> &ColumnFamily {
    db.cf_handle(CF_STATE).expect("state column family")
}

/// The applied log id and membership, as stored.
pub(super) fn applied_state(
    db: &DB,
) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), MetaError> {
    let applied = get(db, "applied log id", keys::APPLIED)?;
    let membership = get(db, "membership", keys::MEMBERSHIP)?.unwrap_or_default();
    Ok((applied, membership))
}

/// Applies one entry in one write batch (with the new applied log id). Not fsynced.
fn apply_entry(
    db: &DB,
    tags: &TagCache,
    notices: &Notices,
    auth: &AuthPublisher,
    entry: &openraft::alias::EntryOf<TypeConfig>,
) -> Result<WriteResult, MetaError> {
    let cf = state_cf(db);
    let mut batch = WriteBatch::default();
    let log_id = entry.log_id();
    let result = match &entry.payload {
        EntryPayload::Blank => WriteResult::Done,
        EntryPayload::Normal(Command::V1(cmd)) => apply_command(db, cf, &mut batch, cmd)?,
        EntryPayload::Membership(m) => {
            let stored = StoredMembership::new(Some(log_id), m.clone());
            put(&mut batch, cf, keys::MEMBERSHIP, &stored);
            WriteResult::Done
        }
    };
    put(&mut batch, cf, keys::APPLIED, &log_id);
    db.write(batch).map_err(MetaError::db("apply"))?;
    // After the write: a reader that scans from now on sees it (see `tag_cache`).
    if let Some(repo) = tags_changed_by(entry) {
        tags.invalidate(repo);
    }
    if matches!(
        &entry.payload,
        EntryPayload::Normal(Command::V1(CommandV1::Auth(_)))
    ) {
        auth.reload(db)?;
    }
    notify(notices, entry);
    Ok(result)
}

fn exists(db: &DB, key: &[u8]) -> Result<bool, MetaError> {
    Ok(db
        .get_pinned_cf(state_cf(db), key)
        .map_err(MetaError::db("read state"))?
        .is_some())
}

fn ensure_repo(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    at_ms: u64,
) -> Result<(), MetaError> {
    let key = keys::repo(repo);
    if !exists(db, &key)? {
        put(batch, cf, &key, &RepositoryRecord { created_ms: at_ms });
    }
    Ok(())
}

fn ensure_link(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    digest: &Digest,
    at_ms: u64,
) -> Result<(), MetaError> {
    let key = keys::link(repo, digest);
    if !exists(db, &key)? {
        put(batch, cf, &key, &BlobLinkRecord { linked_ms: at_ms });
    }
    Ok(())
}

fn apply_command(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    cmd: &CommandV1,
) -> Result<WriteResult, MetaError> {
    match cmd {
        CommandV1::BlobStored {
            repo,
            digest,
            size,
            node,
            at_ms,
        } => {
            let key = keys::blob(digest);
            let mut record = get::<BlobRecord>(db, "blob record", &key)?.unwrap_or(BlobRecord {
                size: *size,
                holders: Default::default(),
                first_seen_ms: *at_ms,
            });
            record.holders.insert(*node);
            put(batch, cf, &key, &record);
            ensure_repo(db, cf, batch, repo, *at_ms)?;
            ensure_link(db, cf, batch, repo, digest, *at_ms)?;
            Ok(WriteResult::Done)
        }
        CommandV1::BlobCopied { digest, node } => {
            let key = keys::blob(digest);
            let Some(mut record) = get::<BlobRecord>(db, "blob record", &key)? else {
                return Ok(WriteResult::Rejected(Rejection::BlobUnknown(
                    digest.clone(),
                )));
            };
            if record.holders.insert(*node) {
                put(batch, cf, &key, &record);
            }
            Ok(WriteResult::Done)
        }
        CommandV1::MountBlob {
            from,
            to,
            digest,
            at_ms,
        } => {
            if !exists(db, &keys::link(from, digest))? || !exists(db, &keys::blob(digest))? {
                return Ok(WriteResult::Mounted(false));
            }
            ensure_repo(db, cf, batch, to, *at_ms)?;
            ensure_link(db, cf, batch, to, digest, *at_ms)?;
            Ok(WriteResult::Mounted(true))
        }
        CommandV1::UnlinkBlob { repo, digest } => {
            let key = keys::link(repo, digest);
            if !exists(db, &key)? {
                return Ok(WriteResult::Rejected(Rejection::BlobUnknown(
                    digest.clone(),
                )));
            }
            batch.delete_cf(cf, key);
            Ok(WriteResult::Done)
        }
        CommandV1::PutManifest(p) => apply_put_manifest(db, cf, batch, p),
        CommandV1::Auth(a) => super::auth::apply(db, batch, a),
        CommandV1::SetReplicationPolicy { pattern, policy } => {
            put::<ReplicationPolicy>(batch, cf, &keys::policy(pattern), policy);
            Ok(WriteResult::Done)
        }
        CommandV1::ClearReplicationPolicy { pattern } => {
            let key = keys::policy(pattern);
            if !exists(db, &key)? {
                return Ok(WriteResult::Rejected(Rejection::PolicyUnknown(
                    pattern.clone(),
                )));
            }
            batch.delete_cf(cf, key);
            Ok(WriteResult::Done)
        }
        CommandV1::DeleteTag { repo, tag } => {
            let key = keys::tag(repo, tag);
            if !exists(db, &key)? {
                return Ok(WriteResult::Rejected(Rejection::TagUnknown(tag.clone())));
            }
            batch.delete_cf(cf, key);
            Ok(WriteResult::Done)
        }
        CommandV1::DeleteManifest { repo, digest } => {
            let key = keys::manifest(repo, digest);
            let Some(record) = get::<ManifestRecord>(db, "manifest", &key)? else {
                return Ok(WriteResult::Rejected(Rejection::ManifestUnknown(
                    digest.clone(),
                )));
            };
            batch.delete_cf(cf, key);
            let prefix = keys::tag_prefix(repo);
            for item in super::read::scan(db, &prefix, None) {
                let (k, v) = item?;
                let Stored::V1(tag) = decode::<Stored<TagRecord>>("tag", &v)?;
                if &tag.digest == digest {
                    batch.delete_cf(cf, k);
                }
            }
            if let Some(subject) = &record.subject {
                batch.delete_cf(cf, keys::referrer(repo, subject, digest));
            }
            Ok(WriteResult::Done)
        }
    }
}

fn apply_put_manifest(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    p: &PutManifest,
) -> Result<WriteResult, MetaError> {
    for blob in &p.record.blobs {
        if !exists(db, &keys::link(&p.repo, blob))? {
            return Ok(WriteResult::Rejected(Rejection::BlobUnknown(blob.clone())));
        }
    }
    for child in &p.record.children {
        if !exists(db, &keys::manifest(&p.repo, child))? {
            return Ok(WriteResult::Rejected(Rejection::ManifestUnknown(
                child.clone(),
            )));
        }
    }
    let at_ms = p.record.created_ms;
    ensure_repo(db, cf, batch, &p.repo, at_ms)?;
    let key = keys::manifest(&p.repo, &p.digest);
    if !exists(db, &key)? {
        put(batch, cf, &key, &p.record);
    }
    if let Some(tag) = &p.tag {
        put(
            batch,
            cf,
            &keys::tag(&p.repo, tag),
            &TagRecord {
                digest: p.digest.clone(),
                updated_ms: at_ms,
            },
        );
    }
    if let (Some(subject), Some(referrer)) = (&p.record.subject, &p.referrer) {
        put(
            batch,
            cf,
            &keys::referrer(&p.repo, subject, &p.digest),
            referrer,
        );
    }
    Ok(WriteResult::Done)
}

/// Batches of at most this many entries are applied on the calling task.
const INLINE_APPLY_MAX: usize = 64;

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = std::fs::File;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || applied_state(&db))
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::from)
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let (entries, responders): (Vec<_>, Vec<_>) =
            entries.try_collect::<Vec<_>>().await?.into_iter().unzip();
        self.gate.wait_for_room().await?;
        let results = if entries.len() <= INLINE_APPLY_MAX {
            // A few memtable writes take microseconds: less than two thread hand-offs to the
            // blocking pool and back (ADR 006). Applying never fsyncs (the log is durable).
            entries
                .iter()
                .map(|e| apply_entry(&self.db, &self.tags, &self.notices, &self.auth, e))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            // A long catch-up batch goes to the blocking pool in one trip.
            let (db, tags, notices, auth) = (
                self.db.clone(),
                self.tags.clone(),
                self.notices.clone(),
                self.auth.clone(),
            );
            tokio::task::spawn_blocking(move || {
                entries
                    .iter()
                    .map(|e| apply_entry(&db, &tags, &notices, &auth, e))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(io::Error::other)??
        };
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder::new(self.db.clone(), self.snapshots.clone())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: std::fs::File,
    ) -> io::Result<()> {
        self.gate.wait_for_room().await?;
        let db = self.db.clone();
        let files = self.snapshots.clone();
        let meta = meta.clone();
        let res = tokio::task::spawn_blocking(move || {
            super::snapshot::install(&db, &files, &meta, snapshot)
        })
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::from);
        // The whole state was replaced (or partly, on an error): no cached list holds, and
        // the replicator recomputes its work.
        self.tags.clear();
        self.notices.resync();
        let db = self.db.clone();
        let auth = self.auth.clone();
        tokio::task::spawn_blocking(move || auth.reload(&db))
            .await
            .map_err(io::Error::other)??;
        res
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, std::fs::File>>> {
        let files = self.snapshots.clone();
        tokio::task::spawn_blocking(move || files.current())
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use openraft::Entry;
    use openraft::storage::RaftSnapshotBuilder;
    use openraft::testing::log_id;

    use super::*;
    use crate::meta::{MetaReader, Notice, open};

    fn entry(index: u64, cmd: CommandV1) -> openraft::alias::EntryOf<TypeConfig> {
        Entry {
            log_id: log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::V1(cmd)),
        }
    }

    fn apply(sm: &StateMachine, index: u64, cmd: CommandV1) -> WriteResult {
        apply_entry(&sm.db, &sm.tags, &sm.notices, &sm.auth, &entry(index, cmd)).unwrap()
    }

    fn policy(regions: &[&str], on_demand: &[&str]) -> ReplicationPolicy {
        ReplicationPolicy {
            regions: regions.iter().map(|r| r.to_string()).collect(),
            on_demand: on_demand.iter().map(|r| r.to_string()).collect(),
        }
    }

    async fn policies(reader: &MetaReader) -> Vec<(String, ReplicationPolicy)> {
        reader.replication_policies().await.unwrap()
    }

    /// Set replaces, clear removes, clearing an unknown pattern is rejected and changes
    /// nothing; each change asks the replicator to resync.
    #[tokio::test]
    async fn replication_policies_are_set_replaced_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm, reader) = open(dir.path()).unwrap();
        let set = |pattern: &str, p| CommandV1::SetReplicationPolicy {
            pattern: pattern.into(),
            policy: p,
        };
        assert_eq!(
            apply(&sm, 1, set("eu/**", policy(&["r1"], &[]))),
            WriteResult::Done
        );
        assert_eq!(
            apply(&sm, 2, set("*", policy(&[], &["r3"]))),
            WriteResult::Done
        );
        assert_eq!(
            apply(&sm, 3, set("eu/**", policy(&["r1", "r2"], &[]))),
            WriteResult::Done
        );
        assert!(reader.notices().take().resync);
        assert_eq!(
            policies(&reader).await,
            vec![
                ("*".to_string(), policy(&[], &["r3"])),
                ("eu/**".to_string(), policy(&["r1", "r2"], &[])),
            ]
        );
        assert_eq!(
            reader.replication_policy("eu/**").await.unwrap(),
            Some(policy(&["r1", "r2"], &[]))
        );
        let clear = |pattern: &str| CommandV1::ClearReplicationPolicy {
            pattern: pattern.into(),
        };
        assert_eq!(apply(&sm, 4, clear("*")), WriteResult::Done);
        assert_eq!(
            apply(&sm, 5, clear("nope")),
            WriteResult::Rejected(Rejection::PolicyUnknown("nope".into()))
        );
        assert_eq!(policies(&reader).await.len(), 1);
        assert_eq!(reader.replication_policy("*").await.unwrap(), None);
    }

    /// Stored manifests and blob records come back in pages, and a put or delete of a
    /// manifest is a notice.
    #[tokio::test]
    async fn manifests_are_walked_in_pages_and_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm, reader) = open(dir.path()).unwrap();
        let mut index = 0;
        let mut next = || {
            index += 1;
            index
        };
        let mut digests = Vec::new();
        for (r, i) in [("a", 1u8), ("a", 2), ("b/c", 3)] {
            let repo = RepositoryName::parse(r).unwrap();
            let blob = Digest::sha256_of(&[i, 0]);
            let stored = CommandV1::BlobStored {
                repo: repo.clone(),
                digest: blob.clone(),
                size: 10 + i as u64,
                node: 1,
                at_ms: 5,
            };
            assert_eq!(apply(&sm, next(), stored), WriteResult::Done);
            let bytes = vec![i; 3];
            let digest = Digest::sha256_of(&bytes);
            let put = CommandV1::PutManifest(Box::new(PutManifest {
                repo: repo.clone(),
                digest: digest.clone(),
                tag: None,
                record: ManifestRecord {
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    bytes,
                    blobs: vec![blob],
                    children: vec![],
                    subject: None,
                    created_ms: 100 + i as u64,
                },
                referrer: None,
            }));
            assert_eq!(apply(&sm, next(), put), WriteResult::Done);
            digests.push((repo, digest));
        }
        let taken = reader.notices().take();
        assert!(!taken.resync);
        assert_eq!(
            taken
                .notices
                .iter()
                .filter(|n| matches!(n, Notice::Manifest { .. }))
                .count(),
            3
        );
        // Two pages of two, in key order.
        let first = reader.manifest_page(None, None, 2).await.unwrap();
        assert_eq!(first.entries.len(), 2);
        assert!(first.entries.iter().all(|e| e.repo.as_str() == "a"));
        let second = reader.manifest_page(None, first.next, 2).await.unwrap();
        assert_eq!(second.entries.len(), 1);
        assert!(second.next.is_none());
        let e = &second.entries[0];
        assert_eq!(e.repo.as_str(), "b/c");
        assert_eq!(e.created_ms, 103);
        assert_eq!(e.blobs[0].1.as_ref().unwrap().size, 13);
        // One repository only.
        let a = RepositoryName::parse("a").unwrap();
        let page = reader.manifest_page(Some(&a), None, 10).await.unwrap();
        assert_eq!(page.entries.len(), 2);
        // A delete is noticed and the manifest is gone.
        let (repo, digest) = digests[0].clone();
        let del = CommandV1::DeleteManifest {
            repo: repo.clone(),
            digest: digest.clone(),
        };
        assert_eq!(apply(&sm, next(), del), WriteResult::Done);
        assert_eq!(
            reader.notices().take().notices,
            vec![Notice::Manifest {
                repo: repo.clone(),
                digest: digest.clone()
            }]
        );
        assert!(
            reader
                .manifest_entry(&repo, &digest)
                .await
                .unwrap()
                .is_none()
        );
    }

    /// Policies travel in snapshots: installed on another node's store, they read back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn policies_survive_a_snapshot_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, _reader) = open(dir.path()).unwrap();
        let set = CommandV1::SetReplicationPolicy {
            pattern: "eu/*".into(),
            policy: policy(&["r1"], &[]),
        };
        assert_eq!(apply(&sm, 1, set), WriteResult::Done);
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();

        let other = tempfile::tempdir().unwrap();
        let (_log2, mut sm2, reader2) = open(other.path()).unwrap();
        sm2.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert!(reader2.notices().take().resync);
        assert_eq!(
            reader2.replication_policies().await.unwrap(),
            vec![("eu/*".to_string(), policy(&["r1"], &[]))]
        );
    }
}
