//! Lifecycle state: locks (attributes of repositories, tags and manifests), soft delete and its
//! recycle bin, retention policies for untagged manifests, and namespaces with their limits and
//! usage. The commands are [`LifecycleCommand`]s inside `CommandV1::Lifecycle`; the checks the
//! other commands make against this state (a locked tag, a quota) are here too.
//!
//! Keys (in the `state` column family):
//!
//! ```text
//! "o/" repo \0 "r"                  Attributes of the repository
//! "o/" repo \0 "t" tag              Attributes of a tag
//! "o/" repo \0 "m" digest           Attributes of a manifest
//! "d/" repo \0 digest               DeletedManifest: a soft-deleted manifest (recycle bin)
//! "s/soft-delete"                   SoftDelete { retention_days }: soft delete is on
//! "z/" pattern                      RetentionPolicy { untagged_days }
//! "n/" namespace                    NamespaceLimits (quota, repositories, rates)
//! "u/" namespace                    NamespaceUsage { bytes, repositories }
//! "v/" namespace \0 digest          u64: manifests of the namespace referencing the blob
//! ```
//!
//! Invariants (once reference counts are maintained, see `gc`):
//! - A soft-deleted manifest keeps its references: its blobs are not collected, and count in
//!   its namespace's usage, until it is purged (its window ended) or restored.
//! - `v/ns\0d` counts the stored and soft-deleted manifests of the namespace's repositories
//!   that reference `d`; `u/ns`.bytes is the sum of the sizes of the blobs with a count.
//! - An absent attributes record means everything is enabled; a record with everything
//!   enabled is not stored.

use std::collections::BTreeSet;

use rocksdb::{ColumnFamily, DB, WriteBatch};
use serde::{Deserialize, Serialize};

use super::command::{ManifestRecord, ReferrerRecord, Rejection, Stored, TagRecord};
use super::read::scan;
use super::state_machine::{exists, get, put};
use super::{MetaError, decode, keys};
use crate::types::{Digest, RepositoryName, Tag};

/// What may be done with a repository, a tag or a manifest (ACR's attributes). A disabled
/// action is refused with 403 `DENIED`, and purge and retention skip the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    /// Pushing (a repository), moving or overwriting (a tag), or deleting it.
    pub write_enabled: bool,
    /// Deleting it.
    pub delete_enabled: bool,
    /// Pulling it.
    pub read_enabled: bool,
    /// Listing it (`_catalog`, `tags/list`).
    pub list_enabled: bool,
}

impl Default for Attributes {
    fn default() -> Self {
        Attributes {
            write_enabled: true,
            delete_enabled: true,
            read_enabled: true,
            list_enabled: true,
        }
    }
}

impl Attributes {
    /// Whether it may be deleted (delete and write both enabled).
    pub fn deletable(&self) -> bool {
        self.write_enabled && self.delete_enabled
    }
}

/// What an attributes change sets (`None`: leave as is). Applied to the attributes as they
/// are when the command applies, so two changes made at once at different nodes both hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributesUpdate {
    /// `write_enabled`.
    pub write_enabled: Option<bool>,
    /// `delete_enabled`.
    pub delete_enabled: Option<bool>,
    /// `read_enabled`.
    pub read_enabled: Option<bool>,
    /// `list_enabled`.
    pub list_enabled: Option<bool>,
}

impl AttributesUpdate {
    /// `a` with this update applied.
    pub fn apply(&self, mut a: Attributes) -> Attributes {
        let set = |field: &mut bool, v: Option<bool>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut a.write_enabled, self.write_enabled);
        set(&mut a.delete_enabled, self.delete_enabled);
        set(&mut a.read_enabled, self.read_enabled);
        set(&mut a.list_enabled, self.list_enabled);
        a
    }
}

/// What attributes are set on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockTarget {
    /// The whole repository.
    Repository,
    /// One tag.
    Tag(Tag),
    /// One manifest.
    Manifest(Digest),
}

/// A soft-deleted manifest, kept until `expires_ms` (`d/<repo>\0<digest>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeletedManifest {
    /// The manifest as it was stored.
    pub record: ManifestRecord,
    /// The tags that pointed at it when it was deleted.
    pub tags: Vec<Tag>,
    /// Its entry in its subject's referrers list, if it had a subject.
    pub referrer: Option<ReferrerRecord>,
    /// When it was deleted (ms since the epoch).
    pub deleted_ms: u64,
    /// When its recycle window ends.
    pub expires_ms: u64,
}

/// Soft delete is on (`s/soft-delete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftDelete {
    /// Days a deleted manifest stays restorable (1 to 90).
    pub retention_days: u16,
}

/// Untagged manifests of the matching repositories older than this are deleted
/// (`z/<pattern>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Days after its push an untagged manifest is kept.
    pub untagged_days: u32,
}

/// Limits a team sets on a namespace (`n/<namespace>`); `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceLimits {
    /// Bytes of distinct blobs its manifests may reference.
    pub quota_bytes: Option<u64>,
    /// Repositories it may have.
    pub max_repositories: Option<u64>,
    /// Pull requests (manifest and blob GET/HEAD) per second, per node.
    pub pulls_per_sec: Option<u32>,
    /// Push requests (upload and manifest PUT requests) per second, per node.
    pub pushes_per_sec: Option<u32>,
}

/// What a namespace uses (`u/<namespace>`), maintained as manifests and repositories come
/// and go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceUsage {
    /// Bytes of the distinct blobs its stored and soft-deleted manifests reference.
    pub bytes: u64,
    /// Its repositories.
    pub repositories: u64,
}

/// A change to lifecycle state (inside `CommandV1::Lifecycle`). Variants are only appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LifecycleCommand {
    /// Turns soft delete on (`Some`: the recycle window) or off (`None`: later deletes are
    /// final; what is in the recycle bin stays until its window ends).
    SetSoftDelete {
        /// Days, 1 to 90 (validated by the proposer).
        retention_days: Option<u16>,
    },
    /// Sets the retention policy of a repository pattern.
    SetRetention {
        /// The pattern (`meta::policy` grammar; `**` for the whole cluster).
        pattern: String,
        /// The policy.
        policy: RetentionPolicy,
    },
    /// Removes the retention policy of a pattern ([`Rejection::PolicyUnknown`] if none).
    ClearRetention {
        /// The pattern.
        pattern: String,
    },
    /// Changes the attributes of a repository, tag or manifest (all enabled afterwards:
    /// removes the record).
    UpdateAttributes {
        /// The repository.
        repo: RepositoryName,
        /// What in it.
        target: LockTarget,
        /// What to change.
        update: AttributesUpdate,
    },
    /// Brings a soft-deleted manifest back, with its tags (those not taken meanwhile) or with
    /// `tag` only.
    Restore {
        /// The repository.
        repo: RepositoryName,
        /// The manifest.
        digest: Digest,
        /// Point this tag at it instead of restoring its old tags.
        tag: Option<Tag>,
        /// When (ms since the epoch).
        at_ms: u64,
    },
    /// Removes a soft-deleted manifest from the recycle bin if its window ended by `at_ms`
    /// (its blobs become collectable).
    PurgeDeleted {
        /// The repository.
        repo: RepositoryName,
        /// The manifest.
        digest: Digest,
        /// Now, on the proposer's clock.
        at_ms: u64,
    },
    /// Sets (replaces) a namespace's limits.
    SetNamespace {
        /// The namespace (a repository name's first component).
        namespace: String,
        /// Its limits.
        limits: NamespaceLimits,
    },
    /// Removes a manifest as `RemoveManifest` does, only if it is still untagged (no tag
    /// points at it, no stored index of the repository names it, it is not a referrer) and
    /// was pushed at or before `pushed_by_ms`: what retention and purge decided from a read
    /// that may be stale. Answers [`Rejection::Changed`] otherwise.
    RemoveUntagged {
        /// The repository.
        repo: RepositoryName,
        /// The manifest.
        digest: Digest,
        /// The newest push time still old enough.
        pushed_by_ms: u64,
        /// When (ms since the epoch).
        at_ms: u64,
    },
    /// Removes a tag as `DeleteTag` does, only if it still points at `digest` and was last
    /// set at `updated_ms` (purge decided from a read that may be stale). Answers
    /// [`Rejection::Changed`] otherwise.
    DeleteTagIf {
        /// The repository.
        repo: RepositoryName,
        /// The tag.
        tag: Tag,
        /// The manifest it pointed at when read.
        digest: Digest,
        /// When it was last set, as read.
        updated_ms: u64,
    },
}

/// A day in milliseconds (retention and recycle windows are set in days).
pub const DAY_MS: u64 = 24 * 3600 * 1000;

// ---- keys ------------------------------------------------------------------------------

const ATTR_PREFIX: &[u8] = b"o/";
const DELETED_PREFIX: &[u8] = b"d/";
const SOFT_DELETE: &[u8] = b"s/soft-delete";
pub(super) const RETENTION_PREFIX: &[u8] = b"z/";
const LIMITS_PREFIX: &[u8] = b"n/";
const USAGE_PREFIX: &[u8] = b"u/";
const NS_REFS_PREFIX: &[u8] = b"v/";

fn with(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

fn attr_key(repo: &RepositoryName, target: &LockTarget) -> Vec<u8> {
    let mut k = with(ATTR_PREFIX, &[repo.as_str().as_bytes(), b""]);
    match target {
        LockTarget::Repository => k.push(b'r'),
        LockTarget::Tag(t) => {
            k.push(b't');
            k.extend_from_slice(t.as_str().as_bytes());
        }
        LockTarget::Manifest(d) => {
            k.push(b'm');
            k.extend_from_slice(d.as_str().as_bytes());
        }
    }
    k
}

fn attr_prefix(repo: &RepositoryName) -> Vec<u8> {
    with(ATTR_PREFIX, &[repo.as_str().as_bytes(), b""])
}

pub(super) fn deleted_key(repo: &RepositoryName, digest: &Digest) -> Vec<u8> {
    with(
        DELETED_PREFIX,
        &[repo.as_str().as_bytes(), digest.as_str().as_bytes()],
    )
}

fn deleted_prefix(repo: Option<&RepositoryName>) -> Vec<u8> {
    match repo {
        Some(r) => with(DELETED_PREFIX, &[r.as_str().as_bytes(), b""]),
        None => DELETED_PREFIX.to_vec(),
    }
}

fn retention_key(pattern: &str) -> Vec<u8> {
    with(RETENTION_PREFIX, &[pattern.as_bytes()])
}

fn limits_key(ns: &str) -> Vec<u8> {
    with(LIMITS_PREFIX, &[ns.as_bytes()])
}

fn usage_key(ns: &str) -> Vec<u8> {
    with(USAGE_PREFIX, &[ns.as_bytes()])
}

fn ns_refs_key(ns: &str, digest: &Digest) -> Vec<u8> {
    with(NS_REFS_PREFIX, &[ns.as_bytes(), digest.as_str().as_bytes()])
}

/// The namespace of a repository: its first path component.
pub fn namespace_of(repo: &RepositoryName) -> &str {
    repo.as_str().split('/').next().unwrap_or_default()
}

// ---- reads -----------------------------------------------------------------------------

/// The in-memory indexes of lifecycle state that reads consult before the database, and the
/// gate that tells readers the state is whole.
#[derive(Debug, Default)]
pub struct Indexes {
    /// Repositories with attributes.
    pub locks: LockIndex,
    /// Namespaces with limits.
    pub limits: LimitIndex,
    /// Held for writing while a snapshot replaces the state (the state is partial then):
    /// whoever acts on the *absence* of a record (the GC reaper) holds it for reading.
    pub installing: std::sync::Arc<tokio::sync::RwLock<()>>,
}

impl Indexes {
    /// Rebuilds both from the state.
    pub(super) fn reload(&self, db: &DB) -> Result<(), MetaError> {
        self.locks.reload(db)?;
        self.limits.reload(db)
    }
}

/// The namespaces that have limits (`n/` records), in memory: so that a request to a
/// namespace without limits (nearly every request) costs no read to find that out. Rebuilt
/// when the database opens and after a snapshot is installed; refreshed after each
/// `SetNamespace`.
#[derive(Debug, Default)]
pub struct LimitIndex {
    names: std::sync::RwLock<std::collections::HashSet<String>>,
}

impl LimitIndex {
    /// Whether the namespace has limits.
    pub fn has(&self, ns: &str) -> bool {
        let names = self.names.read().expect("limit index");
        !names.is_empty() && names.contains(ns)
    }

    /// Rebuilds the index from the state.
    pub(super) fn reload(&self, db: &DB) -> Result<(), MetaError> {
        let mut names = std::collections::HashSet::new();
        for item in scan(db, LIMITS_PREFIX, None) {
            let (k, _) = item?;
            names.insert(String::from_utf8_lossy(&k[LIMITS_PREFIX.len()..]).into_owned());
        }
        *self.names.write().expect("limit index") = names;
        Ok(())
    }

    /// Refreshes one namespace's entry from the state (after a `SetNamespace`).
    pub(super) fn refresh(&self, db: &DB, ns: &str) -> Result<(), MetaError> {
        let any = get::<NamespaceLimits>(db, "namespace limits", &limits_key(ns))?.is_some();
        let mut names = self.names.write().expect("limit index");
        if any {
            names.insert(ns.to_string());
        } else {
            names.remove(ns);
        }
        Ok(())
    }
}

/// The repositories that have any attributes record, in memory: so that a read of a
/// repository with no lock (nearly every read) costs no RocksDB read to find that out. Rebuilt
/// when the database opens and after a snapshot is installed; refreshed for one repository
/// after each applied command that can set or remove its attributes.
#[derive(Debug, Default)]
pub struct LockIndex {
    repos: std::sync::RwLock<std::collections::HashSet<String>>,
}

impl LockIndex {
    /// Whether the repository has any attributes record.
    pub fn has_any(&self, repo: &RepositoryName) -> bool {
        let repos = self.repos.read().expect("lock index");
        !repos.is_empty() && repos.contains(repo.as_str())
    }

    /// Rebuilds the index from the state.
    pub(super) fn reload(&self, db: &DB) -> Result<(), MetaError> {
        let mut repos = std::collections::HashSet::new();
        for item in scan(db, ATTR_PREFIX, None) {
            let (k, _) = item?;
            let rest = &k[ATTR_PREFIX.len()..];
            if let Some(sep) = rest.iter().position(|b| *b == 0) {
                repos.insert(String::from_utf8_lossy(&rest[..sep]).into_owned());
            }
        }
        *self.repos.write().expect("lock index") = repos;
        Ok(())
    }

    /// Refreshes one repository's entry from the state (after a write to it).
    pub(super) fn refresh(&self, db: &DB, repo: &RepositoryName) -> Result<(), MetaError> {
        let prefix = attr_prefix(repo);
        let any = scan(db, &prefix, None).next().transpose()?.is_some();
        let mut repos = self.repos.write().expect("lock index");
        if any {
            repos.insert(repo.as_str().to_string());
        } else {
            repos.remove(repo.as_str());
        }
        Ok(())
    }
}

/// The attributes of a repository, tag or manifest (all enabled when none are set).
pub(super) fn attributes(
    db: &DB,
    repo: &RepositoryName,
    target: &LockTarget,
) -> Result<Attributes, MetaError> {
    Ok(get(db, "attributes", &attr_key(repo, target))?.unwrap_or_default())
}

/// Every attributes record of a repository (those not all enabled), by target.
pub(super) fn all_attributes(
    db: &DB,
    repo: &RepositoryName,
) -> Result<Vec<(LockTarget, Attributes)>, MetaError> {
    let prefix = attr_prefix(repo);
    let mut out = Vec::new();
    for item in scan(db, &prefix, None) {
        let (k, v) = item?;
        let rest = &k[prefix.len()..];
        let Some((&kind, name)) = rest.split_first() else {
            continue;
        };
        let name = std::str::from_utf8(name).unwrap_or_default();
        let target = match kind {
            b'r' => LockTarget::Repository,
            b't' => match Tag::parse(name) {
                Ok(t) => LockTarget::Tag(t),
                Err(_) => continue,
            },
            b'm' => match Digest::parse(name) {
                Ok(d) => LockTarget::Manifest(d),
                Err(_) => continue,
            },
            _ => continue,
        };
        let Stored::V1(a) = decode::<Stored<Attributes>>("attributes", &v)?;
        out.push((target, a));
    }
    Ok(out)
}

/// Whether soft delete is on, and its window.
pub(super) fn soft_delete(db: &DB) -> Result<Option<SoftDelete>, MetaError> {
    get(db, "soft delete", SOFT_DELETE)
}

/// The soft-deleted manifests of a repository (or of all), in key order.
pub(super) fn deleted(
    db: &DB,
    repo: Option<&RepositoryName>,
) -> Result<Vec<(RepositoryName, Digest, DeletedManifest)>, MetaError> {
    let prefix = deleted_prefix(repo);
    let mut out = Vec::new();
    for item in scan(db, &prefix, None) {
        let (k, v) = item?;
        let Some((repo, digest)) = keys::parse_repo_digest(&k[DELETED_PREFIX.len()..]) else {
            continue;
        };
        let Stored::V1(d) = decode::<Stored<DeletedManifest>>("deleted manifest", &v)?;
        out.push((repo, digest, d));
    }
    Ok(out)
}

/// Every retention policy, by pattern.
pub(super) fn retention_policies(db: &DB) -> Result<Vec<(String, RetentionPolicy)>, MetaError> {
    let mut out = Vec::new();
    for item in scan(db, RETENTION_PREFIX, None) {
        let (k, v) = item?;
        let pattern = String::from_utf8_lossy(&k[RETENTION_PREFIX.len()..]).into_owned();
        let Stored::V1(p) = decode::<Stored<RetentionPolicy>>("retention policy", &v)?;
        out.push((pattern, p));
    }
    Ok(out)
}

/// A namespace's limits and usage (`None`: neither set nor used).
pub(super) fn namespace(
    db: &DB,
    ns: &str,
) -> Result<Option<(NamespaceLimits, NamespaceUsage)>, MetaError> {
    let limits = get::<NamespaceLimits>(db, "namespace limits", &limits_key(ns))?;
    let usage = get::<NamespaceUsage>(db, "namespace usage", &usage_key(ns))?;
    if limits.is_none() && usage.is_none() {
        return Ok(None);
    }
    Ok(Some((
        limits.unwrap_or_default(),
        usage.unwrap_or_default(),
    )))
}

/// Every namespace with limits or usage, by name.
pub(super) fn namespaces(
    db: &DB,
) -> Result<Vec<(String, NamespaceLimits, NamespaceUsage)>, MetaError> {
    let mut names = BTreeSet::new();
    for prefix in [LIMITS_PREFIX, USAGE_PREFIX] {
        for item in scan(db, prefix, None) {
            let (k, _) = item?;
            names.insert(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
    }
    let mut out = Vec::new();
    for ns in names {
        if let Some((l, u)) = namespace(db, &ns)? {
            out.push((ns, l, u));
        }
    }
    Ok(out)
}

/// Whether the namespace already counts `digest` (a manifest of it references the blob).
pub(super) fn namespace_holds(db: &DB, ns: &str, digest: &Digest) -> Result<bool, MetaError> {
    Ok(get::<u64>(db, "namespace refs", &ns_refs_key(ns, digest))?.is_some_and(|n| n > 0))
}

// ---- checks made by other commands -----------------------------------------------------

fn locked(what: String) -> Rejection {
    Rejection::Locked(what)
}

/// Refuses a push into `repo` (a blob, a mount, a manifest) when the repository is locked
/// for writes; and, for a manifest PUT by `tag` to `digest`, when that tag is locked and would
/// move.
pub(super) fn check_push(
    db: &DB,
    repo: &RepositoryName,
    tag: Option<(&Tag, &Digest)>,
) -> Result<Option<Rejection>, MetaError> {
    if !attributes(db, repo, &LockTarget::Repository)?.write_enabled {
        return Ok(Some(locked(format!(
            "repository {repo} is locked: writes are disabled"
        ))));
    }
    if let Some((tag, digest)) = tag {
        let current = get::<TagRecord>(db, "tag", &keys::tag(repo, tag))?;
        if current.is_some_and(|t| &t.digest != digest)
            && !attributes(db, repo, &LockTarget::Tag(tag.clone()))?.write_enabled
        {
            return Ok(Some(locked(format!(
                "tag {repo}:{tag} is locked: it cannot be overwritten"
            ))));
        }
    }
    Ok(None)
}

/// Refuses deleting a tag that is locked, or any tag of a repository locked for deletes.
pub(super) fn check_delete_tag(
    db: &DB,
    repo: &RepositoryName,
    tag: &Tag,
) -> Result<Option<Rejection>, MetaError> {
    if !attributes(db, repo, &LockTarget::Repository)?.deletable() {
        return Ok(Some(locked(format!(
            "repository {repo} is locked: deletes are disabled"
        ))));
    }
    if !attributes(db, repo, &LockTarget::Tag(tag.clone()))?.deletable() {
        return Ok(Some(locked(format!(
            "tag {repo}:{tag} is locked: it cannot be deleted"
        ))));
    }
    Ok(None)
}

/// Refuses deleting a manifest that is locked, has a locked tag, or is in a repository locked
/// for deletes. `tags` are the tags pointing at it.
pub(super) fn check_delete_manifest(
    db: &DB,
    repo: &RepositoryName,
    digest: &Digest,
    tags: &[Tag],
) -> Result<Option<Rejection>, MetaError> {
    if !attributes(db, repo, &LockTarget::Repository)?.deletable() {
        return Ok(Some(locked(format!(
            "repository {repo} is locked: deletes are disabled"
        ))));
    }
    if !attributes(db, repo, &LockTarget::Manifest(digest.clone()))?.deletable() {
        return Ok(Some(locked(format!(
            "manifest {repo}@{digest} is locked: it cannot be deleted"
        ))));
    }
    for tag in tags {
        if !attributes(db, repo, &LockTarget::Tag(tag.clone()))?.deletable() {
            return Ok(Some(locked(format!(
                "manifest {repo}@{digest} has the locked tag {tag}: it cannot be deleted"
            ))));
        }
    }
    Ok(None)
}

/// Removes the attributes of a tag or manifest that goes away.
pub(super) fn forget_attributes(
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    target: &LockTarget,
) {
    batch.delete_cf(cf, attr_key(repo, target));
}

/// Refuses creating a repository in a namespace at its repository limit; counts it
/// otherwise (call only when the repository is new and counts are maintained).
pub(super) fn repository_created(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
) -> Result<Option<Rejection>, MetaError> {
    let ns = namespace_of(repo);
    let limits = get::<NamespaceLimits>(db, "namespace limits", &limits_key(ns))?;
    let mut usage =
        get::<NamespaceUsage>(db, "namespace usage", &usage_key(ns))?.unwrap_or_default();
    if let Some(max) = limits.and_then(|l| l.max_repositories)
        && usage.repositories >= max
    {
        return Ok(Some(Rejection::QuotaExceeded(format!(
            "namespace {ns} has {} repositories, its limit",
            usage.repositories
        ))));
    }
    usage.repositories += 1;
    put(batch, cf, &usage_key(ns), &usage);
    Ok(None)
}

/// Refuses a new manifest whose blobs would take its namespace past its storage quota.
/// `sizes` are the sizes of the distinct blobs it references.
pub(super) fn check_quota(
    db: &DB,
    repo: &RepositoryName,
    blobs: &[(Digest, u64)],
) -> Result<Option<Rejection>, MetaError> {
    let ns = namespace_of(repo);
    let Some(quota) = get::<NamespaceLimits>(db, "namespace limits", &limits_key(ns))?
        .and_then(|l| l.quota_bytes)
    else {
        return Ok(None);
    };
    let usage = get::<NamespaceUsage>(db, "namespace usage", &usage_key(ns))?.unwrap_or_default();
    let mut added = 0u64;
    for (d, size) in blobs {
        if !namespace_holds(db, ns, d)? {
            added = added.saturating_add(*size);
        }
    }
    if added > 0 && usage.bytes.saturating_add(added) > quota {
        return Ok(Some(Rejection::QuotaExceeded(format!(
            "namespace {ns} uses {} of its {quota}-byte storage quota; this manifest adds {added}",
            usage.bytes
        ))));
    }
    Ok(None)
}

/// Adds (`added`) or removes one reference of the namespace of `repo` to each distinct blob
/// of `blobs` with its size, keeping the namespace's usage.
pub(super) fn namespace_reference(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    blobs: &[(Digest, u64)],
    added: bool,
) -> Result<(), MetaError> {
    let ns = namespace_of(repo);
    let key = usage_key(ns);
    let mut usage = get::<NamespaceUsage>(db, "namespace usage", &key)?.unwrap_or_default();
    let before = usage;
    for (d, size) in blobs {
        let k = ns_refs_key(ns, d);
        let n = get::<u64>(db, "namespace refs", &k)?.unwrap_or(0);
        if added {
            if n == 0 {
                usage.bytes = usage.bytes.saturating_add(*size);
            }
            put(batch, cf, &k, &(n + 1));
        } else if n <= 1 {
            if n == 1 {
                usage.bytes = usage.bytes.saturating_sub(*size);
            }
            batch.delete_cf(cf, k);
        } else {
            put(batch, cf, &k, &(n - 1));
        }
    }
    if usage != before {
        put(batch, cf, &key, &usage);
    }
    Ok(())
}

/// Every namespace's usage and reference counts, computed from the stored and soft-deleted
/// manifests and the repositories alone (what the maintained ones must equal).
type NamespaceMark = (
    std::collections::BTreeMap<String, NamespaceUsage>,
    std::collections::BTreeMap<(String, Digest), u64>,
);

pub(super) fn namespace_mark(
    db: &DB,
    size_of: &dyn Fn(&Digest) -> Result<u64, MetaError>,
) -> Result<NamespaceMark, MetaError> {
    use std::collections::BTreeMap;
    let mut usage: BTreeMap<String, NamespaceUsage> = BTreeMap::new();
    for item in scan(db, keys::REPO_PREFIX, None) {
        let (k, _) = item?;
        let name = String::from_utf8_lossy(&k[keys::REPO_PREFIX.len()..]).into_owned();
        let ns = name.split('/').next().unwrap_or_default().to_string();
        usage.entry(ns).or_default().repositories += 1;
    }
    let mut counts: BTreeMap<(String, Digest), u64> = BTreeMap::new();
    let mut count = |repo: &str, blobs: Vec<Digest>| {
        let ns = repo.split('/').next().unwrap_or_default().to_string();
        let distinct: BTreeSet<Digest> = blobs.into_iter().collect();
        for d in distinct {
            *counts.entry((ns.clone(), d)).or_default() += 1;
        }
    };
    for item in scan(db, keys::MANIFEST_PREFIX, None) {
        let (k, v) = item?;
        let rest = &k[keys::MANIFEST_PREFIX.len()..];
        let repo = rest.split(|b| *b == 0).next().unwrap_or_default();
        let Stored::V1(m) = decode::<Stored<ManifestRecord>>("manifest", &v)?;
        count(&String::from_utf8_lossy(repo), m.blobs);
    }
    for (repo, _, d) in deleted(db, None)? {
        count(repo.as_str(), d.record.blobs);
    }
    for (ns, d) in counts.keys() {
        usage.entry(ns.clone()).or_default().bytes += size_of(d)?;
    }
    Ok((usage, counts))
}

/// Rebuilds every namespace's reference counts and usage from scratch (part of
/// `CountReferences`).
pub(super) fn count_namespaces(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    size_of: &dyn Fn(&Digest) -> Result<u64, MetaError>,
) -> Result<(), MetaError> {
    for prefix in [USAGE_PREFIX, NS_REFS_PREFIX] {
        batch.delete_range_cf(cf, prefix, keys::prefix_end(prefix).as_slice());
    }
    let (usage, counts) = namespace_mark(db, size_of)?;
    for ((ns, d), n) in counts {
        put(batch, cf, &ns_refs_key(&ns, &d), &n);
    }
    for (ns, u) in usage {
        put(batch, cf, &usage_key(&ns), &u);
    }
    Ok(())
}

/// Compares the maintained namespace usage and counts with a full mark; one line per
/// difference.
pub(super) fn verify_namespaces(
    db: &DB,
    size_of: &dyn Fn(&Digest) -> Result<u64, MetaError>,
) -> Result<Vec<String>, MetaError> {
    let (usage, counts) = namespace_mark(db, size_of)?;
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for item in scan(db, USAGE_PREFIX, None) {
        let (k, v) = item?;
        let ns = String::from_utf8_lossy(&k[USAGE_PREFIX.len()..]).into_owned();
        let Stored::V1(u) = decode::<Stored<NamespaceUsage>>("namespace usage", &v)?;
        let want = usage.get(&ns).copied().unwrap_or_default();
        if u != want {
            problems.push(format!("namespace {ns}: usage {u:?} (want {want:?})"));
        }
        seen.insert(ns);
    }
    for (ns, u) in &usage {
        if !seen.contains(ns) && *u != NamespaceUsage::default() {
            problems.push(format!("namespace {ns}: no usage record (want {u:?})"));
        }
    }
    let mut stored = 0usize;
    for item in scan(db, NS_REFS_PREFIX, None) {
        let (k, v) = item?;
        stored += 1;
        let rest = &k[NS_REFS_PREFIX.len()..];
        let Some(sep) = rest.iter().position(|b| *b == 0) else {
            continue;
        };
        let ns = String::from_utf8_lossy(&rest[..sep]).into_owned();
        let Some(d) = std::str::from_utf8(&rest[sep + 1..])
            .ok()
            .and_then(|s| Digest::parse(s).ok())
        else {
            continue;
        };
        let Stored::V1(n) = decode::<Stored<u64>>("namespace refs", &v)?;
        let want = counts.get(&(ns.clone(), d.clone())).copied().unwrap_or(0);
        if n != want {
            problems.push(format!(
                "namespace {ns}, blob {d}: {n} references (want {want})"
            ));
        }
    }
    if stored != counts.len() {
        problems.push(format!(
            "{stored} namespace reference records for {} references",
            counts.len()
        ));
    }
    Ok(problems)
}

// ---- soft delete -----------------------------------------------------------------------

/// Moves a manifest being deleted into the recycle bin. Returns the record it replaced there
/// (the same digest deleted before, pushed again and deleted again), whose references the
/// caller drops.
pub(super) fn recycle(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    digest: &Digest,
    entry: DeletedManifest,
) -> Result<Option<DeletedManifest>, MetaError> {
    let key = deleted_key(repo, digest);
    let old = get::<DeletedManifest>(db, "deleted manifest", &key)?;
    put(batch, cf, &key, &entry);
    Ok(old)
}

// ---- the commands ----------------------------------------------------------------------

/// What applying a lifecycle command needs from the state machine: dropping or restoring
/// references (`gc`), which the state machine owns.
pub(super) trait References {
    /// Drops one reference of `repo` to each blob of `record`, at `at_ms`.
    fn drop_refs(
        &self,
        batch: &mut WriteBatch,
        repo: &RepositoryName,
        record: &ManifestRecord,
        at_ms: u64,
    ) -> Result<(), MetaError>;
}

/// Applies a lifecycle command.
pub(super) fn apply(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    cmd: &LifecycleCommand,
    refs: &dyn References,
) -> Result<super::WriteResult, MetaError> {
    use super::WriteResult::{Done, Rejected};
    match cmd {
        LifecycleCommand::SetSoftDelete { retention_days } => {
            match retention_days {
                Some(days) => put(
                    batch,
                    cf,
                    SOFT_DELETE,
                    &SoftDelete {
                        retention_days: *days,
                    },
                ),
                None => batch.delete_cf(cf, SOFT_DELETE),
            }
            Ok(Done)
        }
        LifecycleCommand::SetRetention { pattern, policy } => {
            put(batch, cf, &retention_key(pattern), policy);
            Ok(Done)
        }
        LifecycleCommand::ClearRetention { pattern } => {
            let key = retention_key(pattern);
            if get::<RetentionPolicy>(db, "retention policy", &key)?.is_none() {
                return Ok(Rejected(Rejection::PolicyUnknown(pattern.clone())));
            }
            batch.delete_cf(cf, key);
            Ok(Done)
        }
        LifecycleCommand::UpdateAttributes {
            repo,
            target,
            update,
        } => {
            let exists = match target {
                LockTarget::Repository => exists(db, &keys::repo(repo))?,
                LockTarget::Tag(t) => exists(db, &keys::tag(repo, t))?,
                LockTarget::Manifest(d) => exists(db, &keys::manifest(repo, d))?,
            };
            if !exists {
                return Ok(Rejected(match target {
                    LockTarget::Repository => Rejection::NameUnknown(repo.clone()),
                    LockTarget::Tag(t) => Rejection::TagUnknown(t.clone()),
                    LockTarget::Manifest(d) => Rejection::ManifestUnknown(d.clone()),
                }));
            }
            let key = attr_key(repo, target);
            let attributes = update.apply(attributes(db, repo, target)?);
            if attributes == Attributes::default() {
                batch.delete_cf(cf, key);
            } else {
                put(batch, cf, &key, &attributes);
            }
            Ok(Done)
        }
        LifecycleCommand::Restore {
            repo,
            digest,
            tag,
            at_ms,
        } => restore(db, cf, batch, repo, digest, tag.as_ref(), *at_ms, refs),
        LifecycleCommand::PurgeDeleted {
            repo,
            digest,
            at_ms,
        } => {
            let key = deleted_key(repo, digest);
            let Some(d) = get::<DeletedManifest>(db, "deleted manifest", &key)? else {
                return Ok(Rejected(Rejection::ManifestUnknown(digest.clone())));
            };
            if d.expires_ms > *at_ms {
                return Ok(Rejected(Rejection::Locked(format!(
                    "{repo}@{digest} stays in the recycle bin until {}",
                    d.expires_ms
                ))));
            }
            batch.delete_cf(cf, key);
            refs.drop_refs(batch, repo, &d.record, *at_ms)?;
            Ok(Done)
        }
        LifecycleCommand::SetNamespace { namespace, limits } => {
            if *limits == NamespaceLimits::default() {
                batch.delete_cf(cf, limits_key(namespace));
            } else {
                put(batch, cf, &limits_key(namespace), limits);
            }
            Ok(Done)
        }
        // Applied by the state machine, which owns manifest and tag removal.
        LifecycleCommand::RemoveUntagged { .. } | LifecycleCommand::DeleteTagIf { .. } => {
            unreachable!("applied by the state machine")
        }
    }
}

// ---- the index of an index's children ---------------------------------------------------

const PARENT_PREFIX: &[u8] = b"x/";

fn parent_key(repo: &RepositoryName, child: &Digest, parent: &Digest) -> Vec<u8> {
    with(
        PARENT_PREFIX,
        &[
            repo.as_str().as_bytes(),
            child.as_str().as_bytes(),
            parent.as_str().as_bytes(),
        ],
    )
}

fn parents_prefix(repo: &RepositoryName, child: &Digest) -> Vec<u8> {
    with(
        PARENT_PREFIX,
        &[repo.as_str().as_bytes(), child.as_str().as_bytes(), b""],
    )
}

/// The stored indexes of the repository that name `child` (`x/<repo>\0<child>\0<index>`,
/// maintained with the reference counts).
pub(super) fn parents(
    db: &DB,
    repo: &RepositoryName,
    child: &Digest,
) -> Result<Vec<Digest>, MetaError> {
    let prefix = parents_prefix(repo, child);
    let mut out = Vec::new();
    for item in scan(db, &prefix, None) {
        let (k, _) = item?;
        if let Some(d) = std::str::from_utf8(&k[prefix.len()..])
            .ok()
            .and_then(|s| Digest::parse(s).ok())
        {
            out.push(d);
        }
    }
    Ok(out)
}

/// Records (`stored`) or forgets the children of the manifest `parent` of `repo`.
pub(super) fn index_children(
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    parent: &Digest,
    record: &ManifestRecord,
    stored: bool,
) {
    for child in &record.children {
        let k = parent_key(repo, child, parent);
        if stored {
            batch.put_cf(cf, k, []);
        } else {
            batch.delete_cf(cf, k);
        }
    }
}

/// Every `x/` key the stored manifests imply (what the maintained index must equal).
fn parent_keys(db: &DB) -> Result<BTreeSet<Vec<u8>>, MetaError> {
    let mut out = BTreeSet::new();
    for item in scan(db, keys::MANIFEST_PREFIX, None) {
        let (k, v) = item?;
        let Some((repo, parent)) = keys::parse_repo_digest(&k[keys::MANIFEST_PREFIX.len()..])
        else {
            continue;
        };
        let Stored::V1(m) = decode::<Stored<ManifestRecord>>("manifest", &v)?;
        for child in &m.children {
            out.insert(parent_key(&repo, child, &parent));
        }
    }
    Ok(out)
}

/// Rebuilds the children index (part of `CountReferences`).
pub(super) fn rebuild_parents(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
) -> Result<(), MetaError> {
    batch.delete_range_cf(
        cf,
        PARENT_PREFIX,
        keys::prefix_end(PARENT_PREFIX).as_slice(),
    );
    for k in parent_keys(db)? {
        batch.put_cf(cf, k, []);
    }
    Ok(())
}

/// Compares the maintained children index with the stored manifests.
pub(super) fn verify_parents(db: &DB) -> Result<Vec<String>, MetaError> {
    let want = parent_keys(db)?;
    let mut have = BTreeSet::new();
    for item in scan(db, PARENT_PREFIX, None) {
        let (k, _) = item?;
        have.insert(k.to_vec());
    }
    Ok(want
        .symmetric_difference(&have)
        .map(|k| format!("children index key {} differs", String::from_utf8_lossy(k)))
        .collect())
}

/// Refuses removing `digest` by retention or purge when it is no longer untagged: a tag
/// points at it, a stored index names it, it is a referrer, or it was pushed after
/// `pushed_by_ms`.
pub(super) fn check_untagged(
    db: &DB,
    repo: &RepositoryName,
    digest: &Digest,
    pushed_by_ms: u64,
) -> Result<Option<Rejection>, MetaError> {
    let Some(m) = get::<ManifestRecord>(db, "manifest", &keys::manifest(repo, digest))? else {
        return Ok(Some(Rejection::ManifestUnknown(digest.clone())));
    };
    let changed = |why: &str| Ok(Some(Rejection::Changed(format!("{repo}@{digest} {why}"))));
    if m.created_ms > pushed_by_ms {
        return changed("was pushed again since");
    }
    if m.subject.is_some() {
        return changed("is a referrer");
    }
    if !parents(db, repo, digest)?.is_empty() {
        return changed("is named by an index now");
    }
    let prefix = keys::tag_prefix(repo);
    for item in scan(db, &prefix, None) {
        let (_, v) = item?;
        let Stored::V1(t) = decode::<Stored<TagRecord>>("tag", &v)?;
        if &t.digest == digest {
            return changed("is tagged now");
        }
    }
    Ok(None)
}

/// Refuses deleting a manifest that a stored index of the repository names while that
/// index, or a tag pointing at it, is locked: a locked image keeps its platforms.
pub(super) fn check_parents_unlocked(
    db: &DB,
    repo: &RepositoryName,
    digest: &Digest,
) -> Result<Option<Rejection>, MetaError> {
    let parents = parents(db, repo, digest)?;
    if parents.is_empty() {
        return Ok(None);
    }
    for p in &parents {
        if !attributes(db, repo, &LockTarget::Manifest(p.clone()))?.deletable() {
            return Ok(Some(locked(format!(
                "manifest {repo}@{digest} belongs to the locked index {p}: it cannot be deleted"
            ))));
        }
    }
    let prefix = keys::tag_prefix(repo);
    for item in scan(db, &prefix, None) {
        let (k, v) = item?;
        let Stored::V1(t) = decode::<Stored<TagRecord>>("tag", &v)?;
        if !parents.contains(&t.digest) {
            continue;
        }
        let Ok(tag) = std::str::from_utf8(&k[prefix.len()..]).map(Tag::parse) else {
            continue;
        };
        let Ok(tag) = tag else { continue };
        if !attributes(db, repo, &LockTarget::Tag(tag.clone()))?.deletable() {
            return Ok(Some(locked(format!(
                "manifest {repo}@{digest} belongs to an index with the locked tag {tag}: it \
                 cannot be deleted"
            ))));
        }
    }
    Ok(None)
}

#[allow(clippy::too_many_arguments)]
fn restore(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    digest: &Digest,
    tag: Option<&Tag>,
    at_ms: u64,
    refs: &dyn References,
) -> Result<super::WriteResult, MetaError> {
    use super::WriteResult::{Done, Rejected};
    let key = deleted_key(repo, digest);
    let Some(d) = get::<DeletedManifest>(db, "deleted manifest", &key)? else {
        return Ok(Rejected(Rejection::ManifestUnknown(digest.clone())));
    };
    if let Some(r) = check_push(db, repo, tag.map(|t| (t, digest)))? {
        return Ok(Rejected(r));
    }
    for child in &d.record.children {
        if !exists(db, &keys::manifest(repo, child))? {
            return Ok(Rejected(Rejection::ManifestUnknown(child.clone())));
        }
    }
    batch.delete_cf(cf, key);
    let manifest_key = keys::manifest(repo, digest);
    if exists(db, &manifest_key)? {
        // Pushed again meanwhile: the stored one counts already; the recycled one's
        // references go.
        refs.drop_refs(batch, repo, &d.record, at_ms)?;
    } else {
        put(batch, cf, &manifest_key, &d.record);
        if super::gc::counting(db)? {
            index_children(cf, batch, repo, digest, &d.record, true);
        }
        if let (Some(subject), Some(referrer)) = (&d.record.subject, &d.referrer) {
            put(batch, cf, &keys::referrer(repo, subject, digest), referrer);
        }
    }
    let record = TagRecord {
        digest: digest.clone(),
        updated_ms: at_ms,
    };
    match tag {
        Some(t) => put(batch, cf, &keys::tag(repo, t), &record),
        None => {
            for t in &d.tags {
                let k = keys::tag(repo, t);
                if !exists(db, &k)? {
                    put(batch, cf, &k, &record);
                }
            }
        }
    }
    Ok(Done)
}
