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
    BlobLinkRecord, BlobRecord, Command, CommandV1, ManifestRecord, PutManifest, ReferrerRecord,
    Rejection, ReplicationPolicy, RepositoryRecord, Stored, TagRecord, WriteResult,
};
use super::notices::{Notice, Notices};
use super::snapshot::{SnapshotBuilder, SnapshotFiles};
use super::tag_cache::TagCache;
use super::write_gate::WriteGate;
use super::{CF_STATE, MetaError, TypeConfig, decode, encode, gc, keys, lifecycle, webhooks};
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
    /// Told which blobs were garbage-collected, for the node's reaper (`gc::reaper`).
    collected: Arc<Notices>,
    /// Which repositories have locks (refreshed after writes to them).
    indexes: Arc<lifecycle::Indexes>,
}

impl StateMachine {
    // One argument per shared part: they are made together in `meta::open_closable`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        db: Arc<DB>,
        snapshot_dir: PathBuf,
        tags: Arc<TagCache>,
        gate: WriteGate,
        notices: Arc<Notices>,
        auth: Arc<AuthPublisher>,
        collected: Arc<Notices>,
        indexes: Arc<lifecycle::Indexes>,
    ) -> Result<StateMachine, MetaError> {
        let snapshots = SnapshotFiles::open(snapshot_dir)?;
        Ok(StateMachine {
            db,
            snapshots,
            tags,
            gate,
            notices,
            auth,
            collected,
            indexes,
        })
    }
}

/// The command of a normal entry, unwrapped from [`CommandV1::Traced`].
fn command_of(entry: &openraft::alias::EntryOf<TypeConfig>) -> Option<&CommandV1> {
    match &entry.payload {
        EntryPayload::Normal(Command::V1(cmd)) => Some(cmd.untraced().0),
        _ => None,
    }
}

/// The repository whose attributes an applied command may have changed, if any: an
/// attributes change, or a removal of tags or manifests (their attributes go with them). A
/// manifest PUT changes none, and is not looked at again (the hot path).
fn attributes_changed_by(cmd: &CommandV1) -> Option<&RepositoryName> {
    match cmd {
        CommandV1::PutManifest(_) => None,
        CommandV1::Lifecycle(l) => match l.as_ref() {
            lifecycle::LifecycleCommand::UpdateAttributes { repo, .. } => Some(repo),
            _ => tags_changed_by(cmd),
        },
        _ => tags_changed_by(cmd),
    }
}

/// The repository whose tags a command may change, if any.
fn tags_changed_by(cmd: &CommandV1) -> Option<&RepositoryName> {
    match cmd {
        CommandV1::PutManifest(p) if p.tag.is_some() => Some(&p.repo),
        CommandV1::DeleteTag { repo, .. }
        | CommandV1::DeleteManifest { repo, .. }
        | CommandV1::RemoveManifest { repo, .. } => Some(repo),
        CommandV1::Lifecycle(l) => match l.as_ref() {
            lifecycle::LifecycleCommand::Restore { repo, .. }
            | lifecycle::LifecycleCommand::RemoveUntagged { repo, .. }
            | lifecycle::LifecycleCommand::DeleteTagIf { repo, .. } => Some(repo),
            _ => None,
        },
        _ => None,
    }
}

/// Tells the replicator (and, of collected blobs, the reaper) what an applied entry changed.
fn notify(
    notices: &Notices,
    collected: &Notices,
    entry: &openraft::alias::EntryOf<TypeConfig>,
    result: &WriteResult,
) {
    match &entry.payload {
        EntryPayload::Normal(Command::V1(cmd)) => match cmd.untraced().0 {
            CommandV1::PutManifest(p) => notices.push(Notice::Manifest {
                repo: p.repo.clone(),
                digest: p.digest.clone(),
            }),
            CommandV1::DeleteManifest { repo, digest }
            | CommandV1::RemoveManifest { repo, digest, .. } => notices.push(Notice::Manifest {
                repo: repo.clone(),
                digest: digest.clone(),
            }),
            CommandV1::CollectBlobs { .. } => {
                if let WriteResult::Collected(blobs) = result {
                    for b in blobs {
                        notices.push(Notice::Blob(b.digest.clone()));
                        collected.push(Notice::Blob(b.digest.clone()));
                    }
                }
            }
            CommandV1::Lifecycle(l) => match l.as_ref() {
                lifecycle::LifecycleCommand::Restore { repo, digest, .. }
                | lifecycle::LifecycleCommand::RemoveUntagged { repo, digest, .. } => {
                    notices.push(Notice::Manifest {
                        repo: repo.clone(),
                        digest: digest.clone(),
                    })
                }
                _ => {}
            },
            CommandV1::CountReferences { .. } | CommandV1::TouchBlobs { .. } => {}
            CommandV1::BlobStored { digest, .. } | CommandV1::BlobCopied { digest, .. } => {
                notices.push(Notice::Blob(digest.clone()))
            }
            CommandV1::SetReplicationPolicy { .. } | CommandV1::ClearReplicationPolicy { .. } => {
                notices.resync()
            }
            CommandV1::MountBlob { .. } | CommandV1::UnlinkBlob { .. } | CommandV1::Auth(_) => {}
            CommandV1::DeleteTag { .. } | CommandV1::Webhooks(_) | CommandV1::Traced(_) => {}
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
    sm: &Parts<'_>,
    entry: &openraft::alias::EntryOf<TypeConfig>,
) -> Result<WriteResult, MetaError> {
    let Parts {
        db,
        tags,
        notices,
        auth,
        collected,
        indexes,
    } = *sm;
    let cf = state_cf(db);
    let mut batch = WriteBatch::default();
    let log_id = entry.log_id();
    let result = match &entry.payload {
        EntryPayload::Blank => WriteResult::Done,
        EntryPayload::Normal(Command::V1(cmd)) => {
            let (cmd, traced) = cmd.untraced();
            let events = webhooks::derive(
                db,
                cmd,
                log_id.index,
                traced.map(|t| t.at_ms),
                traced.map(|t| &t.request),
            )?;
            let result = apply_command(db, cf, &mut batch, cmd)?;
            if result == WriteResult::Done {
                webhooks::record(db, cf, &mut batch, events)?;
            }
            result
        }
        EntryPayload::Membership(m) => {
            let stored = StoredMembership::new(Some(log_id), m.clone());
            put(&mut batch, cf, keys::MEMBERSHIP, &stored);
            WriteResult::Done
        }
    };
    put(&mut batch, cf, keys::APPLIED, &log_id);
    db.write(batch).map_err(MetaError::db("apply"))?;
    // After the write: a reader that scans from now on sees it (see `tag_cache`).
    if let Some(cmd) = command_of(entry) {
        if let Some(repo) = tags_changed_by(cmd) {
            tags.invalidate(repo);
        }
        if let Some(repo) = attributes_changed_by(cmd) {
            indexes.locks.refresh(db, repo)?;
        }
        if let CommandV1::Lifecycle(l) = cmd
            && let lifecycle::LifecycleCommand::SetNamespace { namespace, .. } = l.as_ref()
        {
            indexes.limits.refresh(db, namespace)?;
        }
        if matches!(cmd, CommandV1::Auth(_)) {
            auth.reload(db)?;
        }
    }
    notify(notices, collected, entry, &result);
    Ok(result)
}

/// What applying an entry touches besides the database.
#[derive(Clone, Copy)]
struct Parts<'a> {
    db: &'a DB,
    tags: &'a TagCache,
    notices: &'a Notices,
    auth: &'a AuthPublisher,
    collected: &'a Notices,
    indexes: &'a lifecycle::Indexes,
}

impl StateMachine {
    fn parts(&self) -> Parts<'_> {
        Parts {
            db: &self.db,
            tags: &self.tags,
            notices: &self.notices,
            auth: &self.auth,
            collected: &self.collected,
            indexes: &self.indexes,
        }
    }
}

/// Whether the state has `key`.
pub(super) fn exists(db: &DB, key: &[u8]) -> Result<bool, MetaError> {
    Ok(db
        .get_pinned_cf(state_cf(db), key)
        .map_err(MetaError::db("read state"))?
        .is_some())
}

/// Creates the repository if it is new (refused when its namespace is at its repository
/// limit), after checking that it is not locked for writes.
fn ensure_repo(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    at_ms: u64,
) -> Result<Option<Rejection>, MetaError> {
    let key = keys::repo(repo);
    if exists(db, &key)? {
        return lifecycle::check_push(db, repo, None);
    }
    if gc::counting(db)?
        && let Some(r) = lifecycle::repository_created(db, cf, batch, repo)?
    {
        return Ok(Some(r));
    }
    put(batch, cf, &key, &RepositoryRecord { created_ms: at_ms });
    Ok(None)
}

/// Returns early with the rejection, if any.
macro_rules! refuse {
    ($check:expr) => {
        if let Some(r) = $check {
            return Ok(WriteResult::Rejected(r));
        }
    };
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
        if gc::counting(db)? {
            gc::linked(cf, batch, repo, digest);
        }
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
            refuse!(ensure_repo(db, cf, batch, repo, *at_ms)?);
            record.holders.insert(*node);
            put(batch, cf, &key, &record);
            ensure_link(db, cf, batch, repo, digest, *at_ms)?;
            if gc::counting(db)? {
                // A re-upload of an unreferenced blob restarts its grace.
                gc::touch(db, cf, batch, digest, *at_ms)?;
            }
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
            refuse!(ensure_repo(db, cf, batch, to, *at_ms)?);
            ensure_link(db, cf, batch, to, digest, *at_ms)?;
            if gc::counting(db)? {
                gc::touch(db, cf, batch, digest, *at_ms)?;
            }
            Ok(WriteResult::Mounted(true))
        }
        CommandV1::UnlinkBlob { repo, digest } => {
            let key = keys::link(repo, digest);
            if !exists(db, &key)? {
                return Ok(WriteResult::Rejected(Rejection::BlobUnknown(
                    digest.clone(),
                )));
            }
            if !lifecycle::attributes(db, repo, &lifecycle::LockTarget::Repository)?.deletable() {
                return Ok(WriteResult::Rejected(Rejection::Locked(format!(
                    "repository {repo} is locked: deletes are disabled"
                ))));
            }
            batch.delete_cf(cf, key);
            if gc::counting(db)? {
                gc::unlinked(cf, batch, repo, digest);
            }
            Ok(WriteResult::Done)
        }
        CommandV1::PutManifest(p) => apply_put_manifest(db, cf, batch, p),
        CommandV1::CountReferences { at_ms } => {
            // Once only: proposers read lagging state, and a second count would restart
            // every unreferenced blob's grace.
            if !gc::counting(db)? {
                gc::count_references(db, cf, batch, *at_ms)?;
            }
            Ok(WriteResult::Done)
        }
        CommandV1::TouchBlobs { digests, at_ms } => {
            if gc::counting(db)? {
                let distinct: std::collections::BTreeSet<&Digest> = digests.iter().collect();
                for d in distinct {
                    // Only blobs the cluster has: a touch never creates a record.
                    if exists(db, &keys::blob(d))? {
                        gc::touch(db, cf, batch, d, *at_ms)?;
                    }
                }
            }
            Ok(WriteResult::Done)
        }
        CommandV1::CollectBlobs { digests, cutoff_ms } => {
            if !gc::counting(db)? {
                return Ok(WriteResult::Collected(Vec::new()));
            }
            Ok(WriteResult::Collected(gc::collect(
                db, cf, batch, digests, *cutoff_ms,
            )?))
        }
        CommandV1::RemoveManifest {
            repo,
            digest,
            at_ms,
        } => remove_manifest(db, cf, batch, repo, digest, Some(*at_ms)),
        CommandV1::Auth(a) => super::auth::apply(db, batch, a),
        CommandV1::Webhooks(w) => webhooks::apply(db, cf, batch, w),
        CommandV1::Traced(t) => apply_command(db, cf, batch, &t.command),
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
        CommandV1::DeleteTag { repo, tag } => delete_tag(db, cf, batch, repo, tag, None),
        CommandV1::Lifecycle(l) => match l.as_ref() {
            lifecycle::LifecycleCommand::RemoveUntagged {
                repo,
                digest,
                pushed_by_ms,
                at_ms,
            } => {
                refuse!(lifecycle::check_untagged(db, repo, digest, *pushed_by_ms)?);
                remove_manifest(db, cf, batch, repo, digest, Some(*at_ms))
            }
            lifecycle::LifecycleCommand::DeleteTagIf {
                repo,
                tag,
                digest,
                updated_ms,
            } => delete_tag(db, cf, batch, repo, tag, Some((digest, *updated_ms))),
            l => lifecycle::apply(db, cf, batch, l, &RefsOf { db, cf }),
        },
        CommandV1::DeleteManifest { repo, digest } => {
            remove_manifest(db, cf, batch, repo, digest, None)
        }
    }
}

/// Removes a tag (refused when it or its repository is locked for deletes); with `expect`,
/// only if it still points at that manifest and was last set at that time.
fn delete_tag(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    tag: &crate::types::Tag,
    expect: Option<(&Digest, u64)>,
) -> Result<WriteResult, MetaError> {
    let key = keys::tag(repo, tag);
    let Some(current) = get::<TagRecord>(db, "tag", &key)? else {
        return Ok(WriteResult::Rejected(Rejection::TagUnknown(tag.clone())));
    };
    if let Some((digest, updated_ms)) = expect
        && (&current.digest != digest || current.updated_ms != updated_ms)
    {
        return Ok(WriteResult::Rejected(Rejection::Changed(format!(
            "tag {repo}:{tag} was set again since"
        ))));
    }
    refuse!(lifecycle::check_delete_tag(db, repo, tag)?);
    batch.delete_cf(cf, key);
    lifecycle::forget_attributes(cf, batch, repo, &lifecycle::LockTarget::Tag(tag.clone()));
    Ok(WriteResult::Done)
}

/// Drops references for lifecycle commands (purging or restoring soft-deleted manifests).
struct RefsOf<'a> {
    db: &'a DB,
    cf: &'a ColumnFamily,
}

impl lifecycle::References for RefsOf<'_> {
    fn drop_refs(
        &self,
        batch: &mut WriteBatch,
        repo: &RepositoryName,
        record: &ManifestRecord,
        at_ms: u64,
    ) -> Result<(), MetaError> {
        if gc::counting(self.db)? {
            gc::reference(self.db, self.cf, batch, repo, &record.blobs, false, at_ms)?;
        }
        Ok(())
    }
}

/// Removes a manifest, every tag pointing at it and its referrer entry (refused when it or
/// one of those tags is locked). With soft delete on, it goes to the recycle bin with its
/// tags and keeps its references; otherwise its references to its blobs go. Blobs left
/// unreferenced start their grace at `at_ms` (`None`, for a [`CommandV1::DeleteManifest`]
/// of an older berth: when the manifest was pushed; that one is never soft).
fn remove_manifest(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    digest: &Digest,
    at_ms: Option<u64>,
) -> Result<WriteResult, MetaError> {
    let key = keys::manifest(repo, digest);
    let Some(record) = get::<ManifestRecord>(db, "manifest", &key)? else {
        return Ok(WriteResult::Rejected(Rejection::ManifestUnknown(
            digest.clone(),
        )));
    };
    let prefix = keys::tag_prefix(repo);
    let mut tags = Vec::new();
    for item in super::read::scan(db, &prefix, None) {
        let (k, v) = item?;
        let Stored::V1(tag) = decode::<Stored<TagRecord>>("tag", &v)?;
        if &tag.digest == digest
            && let Ok(t) = std::str::from_utf8(&k[prefix.len()..]).map(crate::types::Tag::parse)
            && let Ok(t) = t
        {
            tags.push(t);
        }
    }
    refuse!(lifecycle::check_delete_manifest(db, repo, digest, &tags)?);
    let counting = gc::counting(db)?;
    if counting {
        refuse!(lifecycle::check_parents_unlocked(db, repo, digest)?);
        lifecycle::index_children(cf, batch, repo, digest, &record, false);
    }
    batch.delete_cf(cf, key);
    for t in &tags {
        batch.delete_cf(cf, keys::tag(repo, t));
        lifecycle::forget_attributes(cf, batch, repo, &lifecycle::LockTarget::Tag(t.clone()));
    }
    lifecycle::forget_attributes(
        cf,
        batch,
        repo,
        &lifecycle::LockTarget::Manifest(digest.clone()),
    );
    let referrer = match &record.subject {
        Some(subject) => {
            let k = keys::referrer(repo, subject, digest);
            let r = get::<ReferrerRecord>(db, "referrer", &k)?;
            batch.delete_cf(cf, k);
            r
        }
        None => None,
    };
    let at = at_ms.unwrap_or(record.created_ms);
    // Soft delete keeps the manifest (and so its references) in the recycle bin; a
    // `DeleteManifest` of an older berth is always final.
    if let (Some(soft), Some(at_ms)) = (lifecycle::soft_delete(db)?, at_ms) {
        let entry = lifecycle::DeletedManifest {
            record,
            tags,
            referrer,
            deleted_ms: at_ms,
            expires_ms: at_ms.saturating_add(u64::from(soft.retention_days) * lifecycle::DAY_MS),
        };
        let replaced = lifecycle::recycle(db, cf, batch, repo, digest, entry)?;
        if let (Some(old), true) = (replaced, counting) {
            gc::reference(db, cf, batch, repo, &old.record.blobs, false, at)?;
        }
        return Ok(WriteResult::Done);
    }
    if counting {
        gc::reference(db, cf, batch, repo, &record.blobs, false, at)?;
    }
    Ok(WriteResult::Done)
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
    refuse!(lifecycle::check_push(
        db,
        &p.repo,
        p.tag.as_ref().map(|t| (t, &p.digest))
    )?);
    let key = keys::manifest(&p.repo, &p.digest);
    let new = !exists(db, &key)?;
    let counting = gc::counting(db)?;
    if new && counting {
        refuse!(lifecycle::check_quota(
            db,
            &p.repo,
            &gc::sized(db, &p.record.blobs)?
        )?);
    }
    refuse!(ensure_repo(db, cf, batch, &p.repo, at_ms)?);
    if new {
        put(batch, cf, &key, &p.record);
        if counting {
            gc::reference(db, cf, batch, &p.repo, &p.record.blobs, true, at_ms)?;
            lifecycle::index_children(cf, batch, &p.repo, &p.digest, &p.record, true);
        }
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
        // A full count walks every manifest: never on the calling task.
        let heavy = entries
            .iter()
            .any(|e| matches!(command_of(e), Some(CommandV1::CountReferences { .. })));
        let results = if entries.len() <= INLINE_APPLY_MAX && !heavy {
            // A few memtable writes take microseconds: less than two thread hand-offs to the
            // blocking pool and back (ADR 006). Applying never fsyncs (the log is durable).
            entries
                .iter()
                .map(|e| apply_entry(&self.parts(), e))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            // A long catch-up batch goes to the blocking pool in one trip.
            let (db, tags, notices, auth, collected, indexes) = (
                self.db.clone(),
                self.tags.clone(),
                self.notices.clone(),
                self.auth.clone(),
                self.collected.clone(),
                self.indexes.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let parts = Parts {
                    db: &db,
                    tags: &tags,
                    notices: &notices,
                    auth: &auth,
                    collected: &collected,
                    indexes: &indexes,
                };
                entries
                    .iter()
                    .map(|e| apply_entry(&parts, e))
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
        // Readers that act on a record's absence wait until the state is whole again.
        let _installing = self.indexes.installing.clone().write_owned().await;
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
        // Collected blobs may be among what the snapshot left out: the reaper sweeps.
        self.collected.resync();
        let db = self.db.clone();
        let (auth, indexes) = (self.auth.clone(), self.indexes.clone());
        tokio::task::spawn_blocking(move || {
            auth.reload(&db)?;
            indexes.reload(&db)
        })
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
    use crate::meta::lifecycle::{
        Attributes, AttributesUpdate, DAY_MS, LifecycleCommand, LockTarget, NamespaceLimits,
        NamespaceUsage,
    };
    use crate::meta::{MetaReader, Notice, Page, open};

    fn entry(index: u64, cmd: CommandV1) -> openraft::alias::EntryOf<TypeConfig> {
        Entry {
            log_id: log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::V1(cmd)),
        }
    }

    fn apply(sm: &StateMachine, index: u64, cmd: CommandV1) -> WriteResult {
        apply_entry(&sm.parts(), &entry(index, cmd)).unwrap()
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

    fn repo(name: &str) -> RepositoryName {
        RepositoryName::parse(name).unwrap()
    }

    fn stored(r: &str, d: &Digest, at_ms: u64) -> CommandV1 {
        CommandV1::BlobStored {
            repo: repo(r),
            digest: d.clone(),
            size: 7,
            node: 1,
            at_ms,
        }
    }

    fn manifest(
        r: &str,
        bytes: &[u8],
        blobs: &[&Digest],
        tag: Option<&str>,
    ) -> (Digest, CommandV1) {
        put_command(r, bytes, blobs, &[], tag)
    }

    /// A manifest PUT: an image manifest over `blobs`, or (with `children`) an index.
    fn put_command(
        r: &str,
        bytes: &[u8],
        blobs: &[&Digest],
        children: &[&Digest],
        tag: Option<&str>,
    ) -> (Digest, CommandV1) {
        let digest = Digest::sha256_of(bytes);
        let media_type = if children.is_empty() {
            "application/vnd.oci.image.manifest.v1+json"
        } else {
            "application/vnd.oci.image.index.v1+json"
        };
        let cmd = CommandV1::PutManifest(Box::new(PutManifest {
            repo: repo(r),
            digest: digest.clone(),
            tag: tag.map(|t| crate::types::Tag::parse(t).unwrap()),
            record: ManifestRecord {
                media_type: media_type.into(),
                bytes: bytes.to_vec(),
                blobs: blobs.iter().map(|d| (*d).clone()).collect(),
                children: children.iter().map(|d| (*d).clone()).collect(),
                subject: None,
                created_ms: 10,
            },
            referrer: None,
        }));
        (digest, cmd)
    }

    fn collect(digests: &[&Digest], cutoff_ms: u64) -> CommandV1 {
        CommandV1::CollectBlobs {
            digests: digests.iter().map(|d| (*d).clone()).collect(),
            cutoff_ms,
        }
    }

    fn collected(r: WriteResult) -> Vec<Digest> {
        match r {
            WriteResult::Collected(c) => c.into_iter().map(|c| c.digest).collect(),
            other => panic!("not a collection: {other:?}"),
        }
    }

    /// The Raft ordering that makes collection safe: a manifest PUT applied before the
    /// collection keeps its blobs; one applied after it is rejected (the blob is gone from
    /// the repository), never stored over a missing blob. A touch (HEAD) or a re-upload
    /// after the cutoff saves an unreferenced blob.
    #[tokio::test]
    async fn collection_is_ordered_against_puts_and_touches() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm, reader) = open(dir.path()).unwrap();
        let mut i = 0;
        let mut next = || {
            i += 1;
            i
        };
        let (a, b, c) = (
            Digest::sha256_of(b"a"),
            Digest::sha256_of(b"b"),
            Digest::sha256_of(b"c"),
        );
        // Before the counts exist nothing is collected.
        assert_eq!(apply(&sm, next(), stored("r", &a, 100)), WriteResult::Done);
        assert!(collected(apply(&sm, next(), collect(&[&a], u64::MAX))).is_empty());
        apply(&sm, next(), CommandV1::CountReferences { at_ms: 100 });
        assert!(reader.verify_references().await.unwrap().is_empty());
        for d in [&b, &c] {
            apply(&sm, next(), stored("r", d, 100));
        }
        // a is referenced by a manifest applied before the collection: it stays.
        let (_, put) = manifest("r", b"m1", &[&a], Some("v1"));
        assert_eq!(apply(&sm, next(), put), WriteResult::Done);
        // b was touched (a HEAD) after the cutoff: it stays.
        apply(
            &sm,
            next(),
            CommandV1::TouchBlobs {
                digests: vec![b.clone()],
                at_ms: 300,
            },
        );
        let gone = collected(apply(&sm, next(), collect(&[&a, &b, &c], 200)));
        assert_eq!(gone, vec![c.clone()]);
        assert!(reader.blob(&c).await.unwrap().is_none());
        assert!(reader.linked_blob(&repo("r"), &c).await.unwrap().is_none());
        assert!(
            reader
                .collected()
                .take()
                .notices
                .contains(&Notice::Blob(c.clone()))
        );
        // A manifest PUT ordered after the collection is rejected: c is not in the repository.
        let (_, late) = manifest("r", b"m2", &[&c], None);
        assert_eq!(
            apply(&sm, next(), late),
            WriteResult::Rejected(Rejection::BlobUnknown(c.clone()))
        );
        // A re-upload brings c back with a fresh grace.
        apply(&sm, next(), stored("r", &c, 400));
        assert!(collected(apply(&sm, next(), collect(&[&c], 399))).is_empty());
        // Deleting the manifest leaves a unreferenced from the delete's time on.
        let (m1, _) = manifest("r", b"m1", &[&a], None);
        let del = CommandV1::RemoveManifest {
            repo: repo("r"),
            digest: m1,
            at_ms: 500,
        };
        assert_eq!(apply(&sm, next(), del), WriteResult::Done);
        assert!(collected(apply(&sm, next(), collect(&[&a], 499))).is_empty());
        assert_eq!(
            collected(apply(&sm, next(), collect(&[&a], 500))),
            vec![a.clone()]
        );
        assert!(reader.verify_references().await.unwrap().is_empty());
        // Candidates come oldest first, up to the cutoff.
        let (page, _) = reader.gc_candidates(1000, None, 10).await.unwrap();
        let order: Vec<_> = page
            .iter()
            .map(|c| (c.digest.clone(), c.touched_ms))
            .collect();
        assert_eq!(order, vec![(b.clone(), 300), (c.clone(), 400)]);
        let (page, _) = reader.gc_candidates(350, None, 10).await.unwrap();
        assert_eq!(page.len(), 1);
    }

    fn lifecycle_cmd(l: LifecycleCommand) -> CommandV1 {
        CommandV1::Lifecycle(Box::new(l))
    }

    /// Sets every attribute of `target`: all enabled, then as `f` changes them.
    fn set_attrs(r: &str, target: LockTarget, f: impl FnOnce(&mut Attributes)) -> CommandV1 {
        let mut a = Attributes::default();
        f(&mut a);
        lifecycle_cmd(LifecycleCommand::UpdateAttributes {
            repo: repo(r),
            target,
            update: AttributesUpdate {
                write_enabled: Some(a.write_enabled),
                delete_enabled: Some(a.delete_enabled),
                read_enabled: Some(a.read_enabled),
                list_enabled: Some(a.list_enabled),
            },
        })
    }

    fn tag(t: &str) -> crate::types::Tag {
        crate::types::Tag::parse(t).unwrap()
    }

    fn locked(r: WriteResult) -> bool {
        matches!(r, WriteResult::Rejected(Rejection::Locked(_)))
    }

    /// Locks refuse what they forbid and change nothing; unlocking lets it through.
    #[tokio::test]
    async fn locks_refuse_overwrites_deletes_and_pushes() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm, reader) = open(dir.path()).unwrap();
        let mut i = 0;
        let mut next = || {
            i += 1;
            i
        };
        apply(&sm, next(), CommandV1::CountReferences { at_ms: 1 });
        let a = Digest::sha256_of(b"a");
        apply(&sm, next(), stored("r", &a, 10));
        let (m1, put1) = manifest("r", b"m1", &[&a], Some("v1"));
        let (m2, put2) = manifest("r", b"m2", &[&a], Some("v1"));
        assert_eq!(apply(&sm, next(), put1), WriteResult::Done);
        // A tag locked for writes cannot move, nor be deleted; its manifest cannot be deleted.
        let v1 = LockTarget::Tag(tag("v1"));
        apply(
            &sm,
            next(),
            set_attrs("r", v1.clone(), |a| a.write_enabled = false),
        );
        assert!(locked(apply(&sm, next(), put2.clone())));
        let del_tag = CommandV1::DeleteTag {
            repo: repo("r"),
            tag: tag("v1"),
        };
        assert!(locked(apply(&sm, next(), del_tag)));
        let del = CommandV1::RemoveManifest {
            repo: repo("r"),
            digest: m1.clone(),
            at_ms: 20,
        };
        assert!(locked(apply(&sm, next(), del.clone())));
        // Re-pushing the same manifest to the locked tag changes nothing: accepted.
        let (_, same) = manifest("r", b"m1", &[&a], Some("v1"));
        assert_eq!(apply(&sm, next(), same), WriteResult::Done);
        let at_v1 = reader
            .manifest_by_tag(&repo("r"), &tag("v1"))
            .await
            .unwrap();
        assert_eq!(at_v1.unwrap().0, m1);
        // A manifest locked for deletes.
        apply(&sm, next(), set_attrs("r", v1, |_| {}));
        let m1_target = LockTarget::Manifest(m1.clone());
        apply(
            &sm,
            next(),
            set_attrs("r", m1_target.clone(), |a| a.delete_enabled = false),
        );
        assert!(locked(apply(&sm, next(), del.clone())));
        // A repository locked for writes refuses blobs and manifests.
        apply(
            &sm,
            next(),
            set_attrs("r", LockTarget::Repository, |a| a.write_enabled = false),
        );
        assert!(locked(apply(
            &sm,
            next(),
            stored("r", &Digest::sha256_of(b"b"), 30)
        )));
        assert!(locked(apply(&sm, next(), put2.clone())));
        // Unlocked: everything goes, and the manifest's attributes go with it.
        apply(&sm, next(), set_attrs("r", LockTarget::Repository, |_| {}));
        apply(
            &sm,
            next(),
            set_attrs("r", m1_target, |a| a.read_enabled = false),
        );
        assert_eq!(apply(&sm, next(), put2), WriteResult::Done);
        let del2 = CommandV1::RemoveManifest {
            repo: repo("r"),
            digest: m2,
            at_ms: 40,
        };
        assert_eq!(apply(&sm, next(), del2), WriteResult::Done);
        assert_eq!(reader.all_attributes(&repo("r")).await.unwrap().len(), 1);
        assert_eq!(apply(&sm, next(), del), WriteResult::Done);
        assert!(reader.all_attributes(&repo("r")).await.unwrap().is_empty());
        // Locks on things that do not exist are refused.
        let nope = set_attrs("r", LockTarget::Tag(tag("nope")), |a| {
            a.read_enabled = false
        });
        assert_eq!(
            apply(&sm, next(), nope),
            WriteResult::Rejected(Rejection::TagUnknown(tag("nope")))
        );
        assert!(reader.verify_references().await.unwrap().is_empty());
    }

    /// Soft delete keeps a deleted manifest and its references in the recycle bin until it
    /// is purged after its window; a restore brings it and its tags back.
    #[tokio::test]
    async fn soft_deleted_manifests_keep_their_blobs_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm, reader) = open(dir.path()).unwrap();
        let mut i = 0;
        let mut next = || {
            i += 1;
            i
        };
        apply(&sm, next(), CommandV1::CountReferences { at_ms: 1 });
        let on = LifecycleCommand::SetSoftDelete {
            retention_days: Some(1),
        };
        apply(&sm, next(), lifecycle_cmd(on));
        let a = Digest::sha256_of(b"a");
        apply(&sm, next(), stored("r", &a, 10));
        let (m1, put1) = manifest("r", b"m1", &[&a], Some("v1"));
        apply(&sm, next(), put1);
        let del = |at_ms| CommandV1::RemoveManifest {
            repo: repo("r"),
            digest: m1.clone(),
            at_ms,
        };
        assert_eq!(apply(&sm, next(), del(100)), WriteResult::Done);
        assert!(reader.manifest(&repo("r"), &m1).await.unwrap().is_none());
        let tags = reader.tags(&repo("r"), Page::default()).await.unwrap();
        assert_eq!(tags.unwrap().0, Vec::<String>::new());
        let bin = reader.deleted_manifests(Some(&repo("r"))).await.unwrap();
        assert_eq!(bin.len(), 1);
        assert_eq!(bin[0].2.tags, vec![tag("v1")]);
        assert_eq!(bin[0].2.expires_ms, 100 + DAY_MS);
        // Its blob is still referenced: not collected.
        assert!(collected(apply(&sm, next(), collect(&[&a], u64::MAX))).is_empty());
        // A restore brings the manifest and its tag back.
        let restore = lifecycle_cmd(LifecycleCommand::Restore {
            repo: repo("r"),
            digest: m1.clone(),
            tag: None,
            at_ms: 200,
        });
        assert_eq!(apply(&sm, next(), restore.clone()), WriteResult::Done);
        let at_v1 = reader
            .manifest_by_tag(&repo("r"), &tag("v1"))
            .await
            .unwrap();
        assert_eq!(at_v1.unwrap().0, m1);
        assert!(reader.deleted_manifests(None).await.unwrap().is_empty());
        assert_eq!(
            apply(&sm, next(), restore),
            WriteResult::Rejected(Rejection::ManifestUnknown(m1.clone()))
        );
        // Deleted again: a purge before the window ends is refused; after, it goes, and so
        // does the blob at the next collection.
        apply(&sm, next(), del(300));
        let purge = |at_ms| {
            lifecycle_cmd(LifecycleCommand::PurgeDeleted {
                repo: repo("r"),
                digest: m1.clone(),
                at_ms,
            })
        };
        assert!(locked(apply(&sm, next(), purge(300 + DAY_MS - 1))));
        assert_eq!(apply(&sm, next(), purge(300 + DAY_MS)), WriteResult::Done);
        assert!(reader.verify_references().await.unwrap().is_empty());
        assert_eq!(
            collected(apply(&sm, next(), collect(&[&a], u64::MAX))),
            vec![a]
        );
    }

    /// A namespace's usage counts the distinct blobs its manifests reference; a manifest that
    /// would take it past its quota, or a repository past its limit, is refused.
    #[tokio::test]
    async fn namespace_quotas_are_enforced_when_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm, reader) = open(dir.path()).unwrap();
        let mut i = 0;
        let mut next = || {
            i += 1;
            i
        };
        apply(&sm, next(), CommandV1::CountReferences { at_ms: 1 });
        // Each blob is 7 bytes (`stored`).
        let limits = NamespaceLimits {
            quota_bytes: Some(14),
            max_repositories: Some(2),
            ..Default::default()
        };
        let set = LifecycleCommand::SetNamespace {
            namespace: "team".into(),
            limits,
        };
        apply(&sm, next(), lifecycle_cmd(set));
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let c = Digest::sha256_of(b"c");
        for d in [&a, &b, &c] {
            apply(&sm, next(), stored("team/x", d, 10));
        }
        let quota = |r| matches!(r, WriteResult::Rejected(Rejection::QuotaExceeded(_)));
        let put = |r, m: &[u8], blobs: &[&Digest]| manifest(r, m, blobs, None).1;
        assert_eq!(
            apply(&sm, next(), put("team/x", b"m1", &[&a, &b])),
            WriteResult::Done
        );
        // The same blobs again add nothing.
        assert_eq!(
            apply(&sm, next(), put("team/x", b"m2", &[&a, &b, &a])),
            WriteResult::Done
        );
        assert!(quota(apply(&sm, next(), put("team/x", b"m3", &[&c]))));
        let (limits, usage) = reader.namespace("team").unwrap().unwrap();
        assert_eq!(limits.quota_bytes, Some(14));
        assert_eq!(
            usage,
            NamespaceUsage {
                bytes: 14,
                repositories: 1
            }
        );
        apply(&sm, next(), stored("team/y", &c, 10));
        assert!(quota(apply(&sm, next(), stored("team/z", &c, 10))));
        // Deleting frees the space.
        for m in [b"m1".as_slice(), b"m2"] {
            let digest = Digest::sha256_of(m);
            let del = CommandV1::RemoveManifest {
                repo: repo("team/x"),
                digest,
                at_ms: 20,
            };
            assert_eq!(apply(&sm, next(), del), WriteResult::Done);
        }
        assert_eq!(
            apply(&sm, next(), put("team/y", b"m3", &[&c])),
            WriteResult::Done
        );
        let usage = reader.namespace("team").unwrap().unwrap().1;
        assert_eq!(
            usage,
            NamespaceUsage {
                bytes: 7,
                repositories: 2
            }
        );
        assert!(reader.verify_references().await.unwrap().is_empty());
    }

    /// An index over `children` (no blobs), stored in `r`.
    fn index(
        r: &str,
        bytes: &[u8],
        children: &[&Digest],
        tag: Option<&str>,
    ) -> (Digest, CommandV1) {
        put_command(r, bytes, &[], children, tag)
    }

    /// Retention's and purge's conditional deletes hold only while what they read holds: a
    /// manifest tagged or named by an index since is kept, a tag set again is kept; a lock on
    /// an index or its tag protects its children; attribute changes merge.
    #[tokio::test]
    async fn conditional_deletes_and_locks_follow_the_state_when_they_apply() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm, reader) = open(dir.path()).unwrap();
        let mut i = 0;
        let mut next = || {
            i += 1;
            i
        };
        apply(&sm, next(), CommandV1::CountReferences { at_ms: 1 });
        let a = Digest::sha256_of(b"a");
        apply(&sm, next(), stored("r", &a, 10));
        let (m1, put1) = manifest("r", b"m1", &[&a], None);
        let (m2, put2) = manifest("r", b"m2", &[&a], None);
        apply(&sm, next(), put1);
        apply(&sm, next(), put2);
        let untagged = |d: &Digest, pushed_by_ms| {
            lifecycle_cmd(LifecycleCommand::RemoveUntagged {
                repo: repo("r"),
                digest: d.clone(),
                pushed_by_ms,
                at_ms: 50,
            })
        };
        let changed = |r| matches!(r, WriteResult::Rejected(Rejection::Changed(_)));
        // Tagged since the read: kept.
        let (_, tag_m1) = manifest("r", b"m1", &[&a], Some("prod"));
        apply(&sm, next(), tag_m1);
        assert!(changed(apply(&sm, next(), untagged(&m1, 100))));
        // Pushed after the cutoff: kept.
        assert!(changed(apply(&sm, next(), untagged(&m2, 5))));
        // Named by an index since: kept; the index's lock protects it from a plain delete.
        let (ix, put_ix) = index("r", b"ix", &[&m2], Some("multi"));
        apply(&sm, next(), put_ix);
        assert!(changed(apply(&sm, next(), untagged(&m2, 100))));
        apply(
            &sm,
            next(),
            set_attrs("r", LockTarget::Tag(tag("multi")), |a| {
                a.delete_enabled = false
            }),
        );
        let del_m2 = CommandV1::RemoveManifest {
            repo: repo("r"),
            digest: m2.clone(),
            at_ms: 60,
        };
        assert!(locked(apply(&sm, next(), del_m2.clone())));
        apply(
            &sm,
            next(),
            set_attrs("r", LockTarget::Tag(tag("multi")), |_| {}),
        );
        apply(
            &sm,
            next(),
            set_attrs("r", LockTarget::Manifest(ix.clone()), |a| {
                a.write_enabled = false
            }),
        );
        assert!(locked(apply(&sm, next(), del_m2.clone())));
        apply(
            &sm,
            next(),
            set_attrs("r", LockTarget::Manifest(ix.clone()), |_| {}),
        );
        // Once the index is gone the child is untagged again, and retention may take it.
        let del_ix = CommandV1::RemoveManifest {
            repo: repo("r"),
            digest: ix,
            at_ms: 70,
        };
        assert_eq!(apply(&sm, next(), del_ix), WriteResult::Done);
        assert_eq!(apply(&sm, next(), untagged(&m2, 100)), WriteResult::Done);
        assert!(reader.verify_references().await.unwrap().is_empty());
        // A tag set again since purge read it stays.
        let stale = lifecycle_cmd(LifecycleCommand::DeleteTagIf {
            repo: repo("r"),
            tag: tag("prod"),
            digest: m1.clone(),
            updated_ms: 9,
        });
        assert!(changed(apply(&sm, next(), stale)));
        let fresh = lifecycle_cmd(LifecycleCommand::DeleteTagIf {
            repo: repo("r"),
            tag: tag("prod"),
            digest: m1.clone(),
            updated_ms: 10,
        });
        assert_eq!(apply(&sm, next(), fresh), WriteResult::Done);
        // Two attribute changes to different switches both hold.
        let switch = |update| {
            lifecycle_cmd(LifecycleCommand::UpdateAttributes {
                repo: repo("r"),
                target: LockTarget::Repository,
                update,
            })
        };
        apply(
            &sm,
            next(),
            switch(AttributesUpdate {
                write_enabled: Some(false),
                ..Default::default()
            }),
        );
        apply(
            &sm,
            next(),
            switch(AttributesUpdate {
                list_enabled: Some(false),
                ..Default::default()
            }),
        );
        let now = reader
            .attributes(&repo("r"), &LockTarget::Repository)
            .unwrap();
        assert!(!now.write_enabled && !now.list_enabled && now.read_enabled);
        // A second count changes nothing (it is proposed by nodes reading lagging state).
        let before = reader.blob_refs(&a).unwrap();
        apply(&sm, next(), CommandV1::CountReferences { at_ms: 999 });
        assert_eq!(reader.blob_refs(&a).unwrap(), before);
        assert!(reader.verify_references().await.unwrap().is_empty());
    }

    /// Random pushes, mounts, unlinks, deletes, touches and collections over a few
    /// repositories and blobs: after every step the maintained counts, the candidate queue and
    /// the reverse links equal what a full mark computes, both where counts were maintained
    /// from the start and where they were built late (from a state that was not counted).
    #[tokio::test]
    async fn maintained_counts_equal_a_full_mark() {
        use rand::{Rng, SeedableRng};
        for seed in 0..12u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let counted = tempfile::tempdir().unwrap();
            let late = tempfile::tempdir().unwrap();
            let (_l1, sm, reader) = open(counted.path()).unwrap();
            let (_l2, sm_late, reader_late) = open(late.path()).unwrap();
            apply(&sm, 1, CommandV1::CountReferences { at_ms: 1 });
            let repos = ["a", "a/b", "c"];
            let blobs: Vec<Digest> = (0..6u8).map(|i| Digest::sha256_of(&[i])).collect();
            let count_at = rng.random_range(2..120u64);
            for step in 2..120u64 {
                let r = repos[rng.random_range(0..repos.len())];
                let d = &blobs[rng.random_range(0..blobs.len())];
                let cmd = match rng.random_range(0..11) {
                    0 | 1 => stored(r, d, step),
                    2 => CommandV1::MountBlob {
                        from: repo(repos[rng.random_range(0..repos.len())]),
                        to: repo(r),
                        digest: d.clone(),
                        at_ms: step,
                    },
                    3 => CommandV1::UnlinkBlob {
                        repo: repo(r),
                        digest: d.clone(),
                    },
                    4 => {
                        let picked: Vec<&Digest> =
                            blobs.iter().filter(|_| rng.random_bool(0.4)).collect();
                        let id = [rng.random_range(0..5u8)];
                        manifest(r, &id, &picked, Some("t")).1
                    }
                    5 => {
                        let id = [rng.random_range(0..5u8)];
                        let digest = Digest::sha256_of(&id);
                        if rng.random_bool(0.5) {
                            CommandV1::RemoveManifest {
                                repo: repo(r),
                                digest,
                                at_ms: step,
                            }
                        } else {
                            CommandV1::DeleteManifest {
                                repo: repo(r),
                                digest,
                            }
                        }
                    }
                    6 => CommandV1::TouchBlobs {
                        digests: vec![d.clone()],
                        at_ms: step,
                    },
                    7 => collect(&blobs.iter().collect::<Vec<_>>(), step.saturating_sub(10)),
                    8 => lifecycle_cmd(LifecycleCommand::SetSoftDelete {
                        retention_days: rng.random_bool(0.5).then_some(1),
                    }),
                    9 => lifecycle_cmd(LifecycleCommand::Restore {
                        repo: repo(r),
                        digest: Digest::sha256_of(&[rng.random_range(0..5u8)]),
                        tag: None,
                        at_ms: step,
                    }),
                    _ => lifecycle_cmd(LifecycleCommand::PurgeDeleted {
                        repo: repo(r),
                        digest: Digest::sha256_of(&[rng.random_range(0..5u8)]),
                        // Past every window: a purge always applies.
                        at_ms: step + 2 * DAY_MS,
                    }),
                };
                apply(&sm, step, cmd.clone());
                if step == count_at {
                    apply(&sm_late, step, CommandV1::CountReferences { at_ms: step });
                }
                apply(&sm_late, step + 1000, cmd);
                let problems = reader.verify_references().await.unwrap();
                assert!(problems.is_empty(), "seed {seed} step {step}: {problems:?}");
                if step >= count_at {
                    let problems = reader_late.verify_references().await.unwrap();
                    assert!(
                        problems.is_empty(),
                        "late, seed {seed} step {step}: {problems:?}"
                    );
                }
            }
        }
    }

    /// Events are derived from commands that apply (none from a refused one), name the
    /// request of a traced command, and keep the log order; cursors never move back; the log
    /// and the events are pruned as the commands say.
    #[tokio::test]
    async fn events_follow_applied_commands_and_cursors_only_move_forward() {
        use crate::meta::webhooks::{Action, Delivery, Format, Webhook, WebhookCommand};
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm, reader) = open(dir.path()).unwrap();
        let hook = |cmd| CommandV1::Webhooks(Box::new(cmd));
        let webhook = Webhook {
            uri: "http://127.0.0.1:1/".into(),
            headers: vec![],
            actions: vec![Action::Push],
            scopes: vec![],
            enabled: true,
            region: None,
            format: Format::Acr,
            created_ms: 1,
            updated_ms: 1,
        };
        // An event before the webhook exists: it starts after it.
        let blob = Digest::sha256_of(b"layer");
        apply(&sm, 1, stored("app", &blob, 1));
        let (d1, put1) = manifest("app", b"m1", &[&blob], Some("v1"));
        assert_eq!(apply(&sm, 2, put1), WriteResult::Done);
        let create = WebhookCommand::Put {
            name: "h".into(),
            webhook: webhook.clone(),
            create: true,
            expect: None,
        };
        assert_eq!(apply(&sm, 3, hook(create.clone())), WriteResult::Done);
        assert!(matches!(
            apply(&sm, 4, hook(create)),
            WriteResult::Rejected(Rejection::Exists(_))
        ));
        assert_eq!(reader.webhook("h").unwrap().unwrap().1, 1);
        // A replace read before another change is refused.
        let stale = WebhookCommand::Put {
            name: "h".into(),
            webhook: webhook.clone(),
            create: false,
            expect: Some(0),
        };
        assert!(matches!(
            apply(&sm, 4, hook(stale)),
            WriteResult::Rejected(Rejection::Changed(_))
        ));
        // A refused PUT (blob unknown) records nothing; a traced one names its request.
        let (_, refused) = manifest("app", b"m2", &[&Digest::sha256_of(b"absent")], None);
        assert!(matches!(apply(&sm, 5, refused), WriteResult::Rejected(_)));
        let (d3, put3) = manifest("app", b"m3", &[&blob], Some("v3"));
        let request = crate::types::RequestMeta {
            id: "r-3".into(),
            host: "h".into(),
            method: "PUT".into(),
            user_agent: "ua".into(),
        };
        let traced = CommandV1::Traced(Box::new(crate::meta::Traced {
            request: request.clone(),
            at_ms: 77,
            command: put3,
        }));
        assert_eq!(apply(&sm, 6, traced), WriteResult::Done);
        let del_tag = CommandV1::DeleteTag {
            repo: repo("app"),
            tag: crate::types::Tag::parse("v3").unwrap(),
        };
        assert_eq!(apply(&sm, 7, del_tag), WriteResult::Done);
        let del = CommandV1::RemoveManifest {
            repo: repo("app"),
            digest: d1.clone(),
            at_ms: 90,
        };
        assert_eq!(apply(&sm, 8, del), WriteResult::Done);
        let events = reader.events(0, 100).await.unwrap();
        let seen: Vec<_> = events
            .iter()
            .map(|(seq, e)| (*seq, e.action, e.log_index, e.digest.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                (0, Action::Push, 2, Some(d1.clone())),
                (1, Action::Push, 6, Some(d3.clone())),
                (2, Action::TagDelete, 7, Some(d3.clone())),
                (3, Action::Delete, 8, Some(d1.clone())),
            ]
        );
        assert_eq!(events[0].1.request, None);
        assert_eq!(events[1].1.request, Some(request));
        assert_eq!(events[1].1.at_ms, 77);
        assert_eq!(
            events[2].1.at_ms, 77,
            "no time of its own: the last event's"
        );
        assert_eq!(events[3].1.at_ms, 90);
        assert_eq!(
            events[3].1.media_type.as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(reader.event_head().unwrap().next, 4);
        // Progress: the cursor moves forward only; the log keeps what is newer than the cut.
        let delivery = |at_ms| Delivery {
            at_ms,
            event_id: format!("e{at_ms}"),
            action: Action::Push,
            seq: Some(1),
            region: None,
            status: Some(200),
            error: None,
            latency_ms: 1,
            excerpt: String::new(),
            attempts: 1,
            node: 1,
        };
        let progress = |cursor, at: &[u64], keep_after_ms| {
            hook(WebhookCommand::Progress {
                name: "h".into(),
                cursor,
                deliveries: at.iter().map(|a| delivery(*a)).collect(),
                keep_after_ms,
            })
        };
        assert_eq!(
            apply(&sm, 9, progress(Some(3), &[100, 100, 200], 0)),
            WriteResult::Done
        );
        assert_eq!(
            apply(&sm, 10, progress(Some(2), &[300], 150)),
            WriteResult::Done
        );
        assert_eq!(reader.webhook("h").unwrap().unwrap().1, 3, "never back");
        let log: Vec<u64> = reader
            .deliveries("h", 10)
            .await
            .unwrap()
            .iter()
            .map(|d| d.at_ms)
            .collect();
        assert_eq!(log, [300, 200], "newest first; older than 150 pruned");
        // At most MAX_LOG entries are kept.
        let many: Vec<u64> = vec![400; crate::meta::webhooks::MAX_LOG as usize];
        assert_eq!(apply(&sm, 10, progress(None, &many, 0)), WriteResult::Done);
        let kept = reader.deliveries("h", 20_000).await.unwrap();
        assert_eq!(kept.len() as u64, crate::meta::webhooks::MAX_LOG);
        assert!(kept.iter().all(|d| d.at_ms == 400));
        // Prune, then delete the webhook with its log.
        assert_eq!(
            apply(&sm, 11, hook(WebhookCommand::PruneEvents { below: 3 })),
            WriteResult::Done
        );
        let left: Vec<u64> = reader
            .events(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(left, [3]);
        assert_eq!(
            apply(&sm, 12, hook(WebhookCommand::Delete { name: "h".into() })),
            WriteResult::Done
        );
        assert!(reader.webhook("h").unwrap().is_none());
        assert!(reader.deliveries("h", 10).await.unwrap().is_empty());
        assert!(matches!(
            apply(&sm, 13, progress(Some(4), &[], 0)),
            WriteResult::Rejected(Rejection::Unknown(_))
        ));
    }
}
