//! Reads of the applied state. Served from this node's local state (it may lag the leader by
//! the replication lag; a node that answered a write has applied it).

use std::sync::Arc;

use rocksdb::{DB, Direction, IteratorMode, ReadOptions};

use super::auth::AuthView;
use super::command::{
    BlobRecord, ManifestRecord, ReferrerRecord, ReplicationPolicy, Stored, TagRecord,
};
use super::gc::{self, BlobRefs, Candidate, CandidateCursor};
use super::lifecycle::{
    self, Attributes, DeletedManifest, LockTarget, NamespaceLimits, NamespaceUsage,
    RetentionPolicy, SoftDelete,
};
use super::notices::Notices;
use super::state_machine::{get, state_cf};
use super::tag_cache::TagCache;
use super::webhooks::{self, Delivery, Event, EventHead, Webhook};
use super::{MetaError, decode, keys};
use crate::types::{Digest, RepositoryName, Tag};

/// A page request of a lexically ordered list: at most `n` items after `last`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Most items to return; `None`: all.
    pub n: Option<usize>,
    /// Return items strictly after this one.
    pub last: Option<String>,
}

/// A key and value of the state column family.
type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Iterates `(key, value)` of the state column family under `prefix`, from `start` (inclusive)
/// or the prefix's first key.
pub(super) fn scan<'a>(
    db: &'a DB,
    prefix: &[u8],
    start: Option<&[u8]>,
) -> impl Iterator<Item = Result<KeyValue, MetaError>> + 'a {
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(keys::prefix_end(prefix));
    let from = start.unwrap_or(prefix).to_vec();
    db.iterator_cf_opt(
        state_cf(db),
        opts,
        IteratorMode::From(&from, Direction::Forward),
    )
    .map(|item| item.map_err(MetaError::db("scan state")))
}

/// Lists the suffixes (after `prefix`) of keys under `prefix`, a page at a time.
fn list_suffixes(db: &DB, prefix: &[u8], page: &Page) -> Result<(Vec<String>, bool), MetaError> {
    let start = page.last.as_ref().map(|last| {
        let mut k = prefix.to_vec();
        k.extend_from_slice(last.as_bytes());
        k.push(0); // strictly after `last`
        k
    });
    let limit = page.n.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    // A raw iterator: keys are borrowed, and values (not needed here) are never copied.
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(keys::prefix_end(prefix));
    let mut it = db.raw_iterator_cf_opt(state_cf(db), opts);
    it.seek(start.as_deref().unwrap_or(prefix));
    while let Some(k) = it.key() {
        if out.len() == limit {
            return Ok((out, true));
        }
        out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        it.next();
    }
    it.status().map_err(MetaError::db("scan state"))?;
    Ok((out, false))
}

/// One page of a sorted list, with the same meaning as a scan: the items strictly after
/// `last`, at most `n` of them, and whether more follow.
fn page_of(all: &[String], page: &Page) -> (Vec<String>, bool) {
    let start = match &page.last {
        Some(last) => all.partition_point(|t| t.as_str() <= last.as_str()),
        None => 0,
    };
    let rest = &all[start..];
    let n = page.n.unwrap_or(usize::MAX).min(rest.len());
    (rest[..n].to_vec(), n < rest.len())
}

/// Where a walk over manifests goes on: strictly after this `m/` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestCursor(Vec<u8>);

/// A manifest as the replicator sees it: what it references and the records of its blobs.
#[derive(Debug, Clone)]
pub struct ManifestEntry {
    /// Its repository.
    pub repo: RepositoryName,
    /// Its digest.
    pub digest: Digest,
    /// When it was pushed (ms since the epoch).
    pub created_ms: u64,
    /// Each blob it references, with the blob's record (`None`: no record, which the state
    /// machine does not allow for a stored manifest, but a reader does not assume it).
    pub blobs: Vec<(Digest, Option<BlobRecord>)>,
    /// The manifests it references (an index's children).
    pub children: Vec<Digest>,
}

/// A stored manifest without its bytes (see [`MetaReader::manifest_summaries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSummary {
    /// Its digest.
    pub digest: Digest,
    /// When it was pushed (ms since the epoch).
    pub created_ms: u64,
    /// The manifests it references (an index's children).
    pub children: Vec<Digest>,
    /// Its subject, if it is a referrer.
    pub subject: Option<Digest>,
}

/// One page of a walk over manifests.
#[derive(Debug, Clone)]
pub struct ManifestPage {
    /// The manifests, in key order (repository, then digest).
    pub entries: Vec<ManifestEntry>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<ManifestCursor>,
}

/// Splits an `m/<repo>\0<digest>` key.
fn manifest_key_parts(key: &[u8]) -> Option<(RepositoryName, Digest)> {
    keys::parse_repo_digest(key.strip_prefix(keys::MANIFEST_PREFIX)?)
}

/// The entry of a stored manifest, with its blobs' records.
fn manifest_entry(
    db: &DB,
    repo: RepositoryName,
    digest: Digest,
    record: ManifestRecord,
) -> Result<ManifestEntry, MetaError> {
    let blobs = record
        .blobs
        .into_iter()
        .map(|d| {
            let r = get::<BlobRecord>(db, "blob record", &keys::blob(&d))?;
            Ok((d, r))
        })
        .collect::<Result<Vec<_>, MetaError>>()?;
    Ok(ManifestEntry {
        repo,
        digest,
        created_ms: record.created_ms,
        blobs,
        children: record.children,
    })
}

/// Read-only view of the applied metadata. Cheap to clone.
#[derive(Clone)]
pub struct MetaReader {
    db: Arc<DB>,
    tags: Arc<TagCache>,
    notices: Arc<Notices>,
    auth: AuthView,
    collected: Arc<Notices>,
    indexes: Arc<lifecycle::Indexes>,
}

impl std::fmt::Debug for MetaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaReader").finish_non_exhaustive()
    }
}

impl MetaReader {
    /// Size and compaction state of the metadata database (cheap: RocksDB's in-memory
    /// properties).
    pub fn db_stats(&self) -> super::DbStats {
        super::db_stats(&self.db)
    }

    pub(super) fn new(
        db: Arc<DB>,
        tags: Arc<TagCache>,
        notices: Arc<Notices>,
        auth: AuthView,
        collected: Arc<Notices>,
        indexes: Arc<lifecycle::Indexes>,
    ) -> MetaReader {
        MetaReader {
            db,
            tags,
            notices,
            auth,
            collected,
            indexes,
        }
    }

    /// The blobs garbage collection removed from the records lately, for this node's reaper
    /// (each as a [`super::Notice::Blob`]; `resync`: sweep the whole blob directory).
    pub fn collected(&self) -> &Arc<Notices> {
        &self.collected
    }

    /// A blob's garbage-collection record (`None`: no such blob, or counts not built yet).
    pub fn blob_refs(&self, digest: &Digest) -> Result<Option<BlobRefs>, MetaError> {
        self.point(|db| gc::refs(db, digest))
    }

    /// Whether reference counts are maintained (garbage collection can run).
    pub fn refs_counted(&self) -> Result<bool, MetaError> {
        self.point(gc::counting)
    }

    /// Up to `n` unreferenced blobs last touched at or before `cutoff_ms`, oldest first, after
    /// `after`, and where the next page starts; read on the blocking pool.
    pub async fn gc_candidates(
        &self,
        cutoff_ms: u64,
        after: Option<CandidateCursor>,
        n: usize,
    ) -> Result<(Vec<Candidate>, Option<CandidateCursor>), MetaError> {
        self.blocking(move |db| gc::candidates(db, cutoff_ms, after, n))
            .await
    }

    /// The attributes (locks) of a repository, tag or manifest; all enabled when none are set.
    /// A repository with no attributes record anywhere costs no read of the database.
    pub fn attributes(
        &self,
        repo: &RepositoryName,
        target: &LockTarget,
    ) -> Result<Attributes, MetaError> {
        if !self.indexes.locks.has_any(repo) {
            return Ok(Attributes::default());
        }
        self.point(|db| lifecycle::attributes(db, repo, target))
    }

    /// Waits until no snapshot is being installed and returns a guard during which none
    /// starts: hold it while acting on the absence of a record (a snapshot install empties
    /// the state before it writes it back).
    pub async fn whole_state(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.indexes.installing.clone().read_owned().await
    }

    /// Whether the namespace has limits set (no read of the database).
    pub fn has_namespace_limits(&self, ns: &str) -> bool {
        self.indexes.limits.has(ns)
    }

    /// Whether the repository, or anything in it, has attributes (locks) set.
    pub fn has_attributes(&self, repo: &RepositoryName) -> bool {
        self.indexes.locks.has_any(repo)
    }

    /// Every attributes record of a repository (those not all enabled).
    pub async fn all_attributes(
        &self,
        repo: &RepositoryName,
    ) -> Result<Vec<(LockTarget, Attributes)>, MetaError> {
        if !self.indexes.locks.has_any(repo) {
            return Ok(Vec::new());
        }
        let repo = repo.clone();
        self.blocking(move |db| lifecycle::all_attributes(db, &repo))
            .await
    }

    /// Every tag of a repository with its record (what it points at, when it was set), in tag
    /// order.
    pub async fn tag_records(
        &self,
        repo: &RepositoryName,
    ) -> Result<Vec<(Tag, TagRecord)>, MetaError> {
        let prefix = keys::tag_prefix(repo);
        self.blocking(move |db| {
            let mut out = Vec::new();
            for item in scan(db, &prefix, None) {
                let (k, v) = item?;
                let Ok(tag) = std::str::from_utf8(&k[prefix.len()..]).map(Tag::parse) else {
                    continue;
                };
                let Ok(tag) = tag else { continue };
                let Stored::V1(record) = decode::<Stored<TagRecord>>("tag", &v)?;
                out.push((tag, record));
            }
            Ok(out)
        })
        .await
    }

    /// Every manifest of a repository, without its bytes: what retention and purge decide on.
    pub async fn manifest_summaries(
        &self,
        repo: &RepositoryName,
    ) -> Result<Vec<ManifestSummary>, MetaError> {
        let prefix = keys::manifest_prefix(repo);
        self.blocking(move |db| {
            let mut out = Vec::new();
            for item in scan(db, &prefix, None) {
                let (k, v) = item?;
                let Some(digest) = std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(|s| Digest::parse(s).ok())
                else {
                    continue;
                };
                let Stored::V1(m) = decode::<Stored<ManifestRecord>>("manifest", &v)?;
                out.push(ManifestSummary {
                    digest,
                    created_ms: m.created_ms,
                    children: m.children,
                    subject: m.subject,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Whether soft delete is on, and its window.
    pub fn soft_delete(&self) -> Result<Option<SoftDelete>, MetaError> {
        self.point(lifecycle::soft_delete)
    }

    /// The soft-deleted manifests of a repository (or of every repository), in key order.
    pub async fn deleted_manifests(
        &self,
        repo: Option<&RepositoryName>,
    ) -> Result<Vec<(RepositoryName, Digest, DeletedManifest)>, MetaError> {
        let repo = repo.cloned();
        self.blocking(move |db| lifecycle::deleted(db, repo.as_ref()))
            .await
    }

    /// Every retention policy, by pattern.
    pub async fn retention_policies(&self) -> Result<Vec<(String, RetentionPolicy)>, MetaError> {
        self.blocking(lifecycle::retention_policies).await
    }

    /// A namespace's limits and usage (`None`: neither set nor used).
    pub fn namespace(
        &self,
        ns: &str,
    ) -> Result<Option<(NamespaceLimits, NamespaceUsage)>, MetaError> {
        self.point(|db| lifecycle::namespace(db, ns))
    }

    /// Every namespace with limits or usage.
    pub async fn namespaces(
        &self,
    ) -> Result<Vec<(String, NamespaceLimits, NamespaceUsage)>, MetaError> {
        self.blocking(lifecycle::namespaces).await
    }

    /// Whether a manifest of the namespace already references the blob (it adds nothing to
    /// the namespace's usage).
    pub fn namespace_holds(&self, ns: &str, digest: &Digest) -> Result<bool, MetaError> {
        self.point(|db| lifecycle::namespace_holds(db, ns, digest))
    }

    /// Compares the maintained reference counts with a full mark over every manifest; one
    /// line per difference (empty: they agree). Reads everything: for tests and audits.
    pub async fn verify_references(&self) -> Result<Vec<String>, MetaError> {
        self.blocking(gc::verify).await
    }

    /// The applied auth records (identities, scope maps, keys, settings).
    pub fn auth(&self) -> &AuthView {
        &self.auth
    }

    /// What the state machine applied lately, for the replicator (see [`Notices`]).
    pub fn notices(&self) -> &Arc<Notices> {
        &self.notices
    }

    /// Up to `n` blob records after the blob `after` (in digest order), read on the blocking
    /// pool by one RocksDB iterator: a walk over every blob record a page at a time.
    pub async fn blob_page(
        &self,
        after: Option<Digest>,
        n: usize,
    ) -> Result<Vec<(Digest, BlobRecord)>, MetaError> {
        self.blocking(move |db| {
            let prefix = b"b/";
            let start = after.map(|d| {
                let mut k = keys::blob(&d);
                k.push(0); // strictly after
                k
            });
            let mut out = Vec::new();
            for item in scan(db, prefix, start.as_deref()) {
                if out.len() == n {
                    break;
                }
                let (k, v) = item?;
                let digest = std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(|s| Digest::parse(s).ok());
                let Some(digest) = digest else { continue };
                let Stored::V1(record) = decode::<Stored<BlobRecord>>("blob record", &v)?;
                out.push((digest, record));
            }
            Ok(out)
        })
        .await
    }

    /// Every replication policy, by pattern (in pattern order).
    pub async fn replication_policies(
        &self,
    ) -> Result<Vec<(String, ReplicationPolicy)>, MetaError> {
        self.blocking(|db| {
            let mut out = Vec::new();
            for item in scan(db, keys::POLICY_PREFIX, None) {
                let (k, v) = item?;
                let pattern = String::from_utf8_lossy(&k[keys::POLICY_PREFIX.len()..]).into_owned();
                let Stored::V1(policy) = decode::<Stored<ReplicationPolicy>>("policy", &v)?;
                out.push((pattern, policy));
            }
            Ok(out)
        })
        .await
    }

    /// The replication policy of exactly this pattern.
    pub async fn replication_policy(
        &self,
        pattern: &str,
    ) -> Result<Option<ReplicationPolicy>, MetaError> {
        let key = keys::policy(pattern);
        self.point(move |db| get(db, "policy", &key))
    }

    /// A manifest with its blobs' records, if it is stored.
    pub async fn manifest_entry(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<ManifestEntry>, MetaError> {
        let key = keys::manifest(repo, digest);
        let (repo, digest) = (repo.clone(), digest.clone());
        self.point(
            move |db| match get::<ManifestRecord>(db, "manifest", &key)? {
                Some(record) => manifest_entry(db, repo, digest, record).map(Some),
                None => Ok(None),
            },
        )
    }

    /// Up to `n` manifests (of `repo`, or of every repository) after `after`, with their
    /// blobs' records, read on the blocking pool by one RocksDB iterator. A walk over every
    /// manifest holds one page in memory at a time; it is not a snapshot (a manifest stored
    /// or deleted meanwhile may or may not be seen).
    pub async fn manifest_page(
        &self,
        repo: Option<&RepositoryName>,
        after: Option<ManifestCursor>,
        n: usize,
    ) -> Result<ManifestPage, MetaError> {
        let prefix = match repo {
            Some(r) => keys::manifest_prefix(r),
            None => keys::MANIFEST_PREFIX.to_vec(),
        };
        self.blocking(move |db| {
            let start = after.map(|ManifestCursor(mut k)| {
                k.push(0); // strictly after
                k
            });
            let mut entries = Vec::new();
            let mut last = None;
            for item in scan(db, &prefix, start.as_deref()) {
                if entries.len() == n {
                    return Ok(ManifestPage {
                        entries,
                        next: last.map(ManifestCursor),
                    });
                }
                let (k, v) = item?;
                let Stored::V1(record) = decode::<Stored<ManifestRecord>>("manifest", &v)?;
                last = Some(k.to_vec());
                let Some((repo, digest)) = manifest_key_parts(&k) else {
                    continue;
                };
                entries.push(manifest_entry(db, repo, digest, record)?);
            }
            Ok(ManifestPage {
                entries,
                next: None,
            })
        })
        .await
    }

    /// Runs a point read (a few keys) inline: they are served from RocksDB's memtable and
    /// block cache in microseconds, far less than a trip to the blocking pool (ADR 006).
    fn point<T>(&self, f: impl FnOnce(&DB) -> Result<T, MetaError>) -> Result<T, MetaError> {
        f(&self.db)
    }

    /// Runs a scan on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, MetaError>
    where
        T: Send + 'static,
        F: FnOnce(&DB) -> Result<T, MetaError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(MetaError::Task)?
    }

    /// Every webhook with its cursor, by name.
    pub async fn webhooks(&self) -> Result<Vec<(String, Webhook, u64)>, MetaError> {
        self.blocking(webhooks::webhooks).await
    }

    /// A webhook's definition and cursor.
    pub fn webhook(&self, name: &str) -> Result<Option<(Webhook, u64)>, MetaError> {
        self.point(|db| {
            Ok(match webhooks::webhook(db, name)? {
                Some(w) => Some((w, webhooks::cursor(db, name)?)),
                None => None,
            })
        })
    }

    /// The head of the event log: the next seq and the last event's time.
    pub fn event_head(&self) -> Result<EventHead, MetaError> {
        self.point(webhooks::head)
    }

    /// Up to `n` events from seq `from` on, with their seqs.
    pub async fn events(&self, from: u64, n: usize) -> Result<Vec<(u64, Event)>, MetaError> {
        self.blocking(move |db| webhooks::events(db, from, n)).await
    }

    /// The seq of the first event at or after `ms` (the head when none is).
    pub async fn first_event_since(&self, ms: u64) -> Result<u64, MetaError> {
        self.blocking(move |db| webhooks::first_since(db, ms)).await
    }

    /// A webhook's delivery log, newest first, at most `n` entries.
    pub async fn deliveries(&self, name: &str, n: usize) -> Result<Vec<Delivery>, MetaError> {
        let name = name.to_string();
        self.blocking(move |db| webhooks::deliveries(db, &name, n))
            .await
    }

    /// A manifest of the repository, by digest.
    pub async fn manifest(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        let key = keys::manifest(repo, digest);
        self.point(move |db| get(db, "manifest", &key))
    }

    /// The manifest a tag points at, with its digest.
    pub async fn manifest_by_tag(
        &self,
        repo: &RepositoryName,
        tag: &Tag,
    ) -> Result<Option<(Digest, ManifestRecord)>, MetaError> {
        let tag_key = keys::tag(repo, tag);
        let repo = repo.clone();
        self.point(move |db| {
            let Some(t) = get::<TagRecord>(db, "tag", &tag_key)? else {
                return Ok(None);
            };
            Ok(get(db, "manifest", &keys::manifest(&repo, &t.digest))?.map(|m| (t.digest, m)))
        })
    }

    /// What the cluster knows of a blob (size, holders), whatever repositories link it.
    pub async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError> {
        let key = keys::blob(digest);
        self.point(move |db| get(db, "blob record", &key))
    }

    /// The blob record, if the blob is linked into the repository (the repository may serve it).
    pub async fn linked_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<BlobRecord>, MetaError> {
        let link = keys::link(repo, digest);
        let blob = keys::blob(digest);
        self.point(move |db| {
            let cf = state_cf(db);
            if db
                .get_pinned_cf(cf, link)
                .map_err(MetaError::db("read state"))?
                .is_none()
            {
                return Ok(None);
            }
            get(db, "blob record", &blob)
        })
    }

    /// Tags of a repository in lexical order, a page at a time; `None` when the repository
    /// does not exist. The flag says whether more follow.
    pub async fn tags(
        &self,
        repo: &RepositoryName,
        page: Page,
    ) -> Result<Option<(Vec<String>, bool)>, MetaError> {
        // A repository is never removed, so a cached list also says that it exists.
        if let Some(all) = self.tags.get(repo) {
            return Ok(Some(page_of(&all, &page)));
        }
        let repo_key = keys::repo(repo);
        let prefix = keys::tag_prefix(repo);
        let whole = page.last.is_none() && page.n.is_none();
        let epoch = self.tags.epoch();
        let found = self
            .blocking(move |db| {
                if db
                    .get_pinned_cf(state_cf(db), repo_key)
                    .map_err(MetaError::db("read state"))?
                    .is_none()
                {
                    return Ok(None);
                }
                list_suffixes(db, &prefix, &page).map(Some)
            })
            .await?;
        if whole && let Some((list, _)) = &found {
            self.tags.insert(repo, epoch, Arc::new(list.clone()));
        }
        Ok(found)
    }

    /// Repository names in lexical order, a page at a time. The flag says whether more follow.
    pub async fn repositories(&self, page: Page) -> Result<(Vec<String>, bool), MetaError> {
        self.blocking(move |db| list_suffixes(db, keys::REPO_PREFIX, &page))
            .await
    }

    /// The referrers of `subject` in the repository: digest and descriptor data of each.
    pub async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
    ) -> Result<Vec<(Digest, ReferrerRecord)>, MetaError> {
        let prefix = keys::referrer_prefix(repo, subject);
        self.blocking(move |db| {
            let mut out = Vec::new();
            for item in scan(db, &prefix, None) {
                let (k, v) = item?;
                let digest = std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(|s| Digest::parse(s).ok());
                let Some(digest) = digest else { continue };
                let Stored::V1(record) = decode::<Stored<ReferrerRecord>>("referrer", &v)?;
                out.push((digest, record));
            }
            Ok(out)
        })
        .await
    }
}
