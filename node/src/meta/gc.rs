//! The state machine's half of garbage collection: reference counts of blobs, the queue of
//! unreferenced blobs ordered by when they were last touched, and the collection itself.
//!
//! Keys (in the `state` column family, so in snapshots too):
//!
//! ```text
//! "g/" digest                       BlobRefs { refs, touched_ms }: manifests referencing the
//!                                   blob (one per repository and manifest), and when it was
//!                                   last stored, mounted, HEADed, or left unreferenced
//! "c/" touched_ms (u64 BE) digest   (empty): a blob with no reference, in touch order
//! "y/" digest \0 repo               (empty): the blob is linked into the repository (the
//!                                   reverse of "l/", to unlink it everywhere when collected)
//! "s/refs-counted"                  u64: when the counts were first built (CountReferences)
//! ```
//!
//! Invariants, once `s/refs-counted` is set:
//! - Every blob record `b/d` has a `g/d`, whose `refs` is the number of stored manifests
//!   (`m/` keys) whose `blobs` name `d` (each manifest counted once per digest). A test checks
//!   this against a full mark ([`full_mark`]).
//! - `c/t d` exists exactly when `g/d` has `refs == 0` and `touched_ms == t`.
//! - `y/d\0r` exists exactly when `l/r\0d` does.
//!
//! Before the flag is set (a database written by a berth without garbage collection), none of
//! this is maintained and nothing can be collected: [`CountReferences`] builds it all in one
//! command, and the collector proposes that first.
//!
//! [`CountReferences`]: super::CommandV1::CountReferences

use std::collections::{BTreeSet, HashMap};

use rocksdb::{ColumnFamily, DB, WriteBatch};
use serde::{Deserialize, Serialize};

use super::command::{BlobRecord, ManifestRecord, Stored};
use super::read::scan;
use super::state_machine::{get, put};
use super::{MetaError, NodeId, decode, keys};
use crate::types::{Digest, RepositoryName};

/// The garbage-collection record of a blob (`g/<digest>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRefs {
    /// Stored manifests that reference the blob (over every repository).
    pub refs: u64,
    /// When it was last stored, mounted or announced to a client (a HEAD), or when its last
    /// reference went (ms since the epoch): its grace period runs from here.
    pub touched_ms: u64,
}

/// A blob removed from the cluster's records by [`super::CommandV1::CollectBlobs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectedBlob {
    /// The blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The nodes that held a copy (each removes it).
    pub holders: Vec<NodeId>,
}

/// Key of the flag that says the counts are maintained.
const COUNTED: &[u8] = b"s/refs-counted";
const REFS_PREFIX: &[u8] = b"g/";
const CANDIDATE_PREFIX: &[u8] = b"c/";
const REVERSE_LINK_PREFIX: &[u8] = b"y/";
const LINK_PREFIX: &[u8] = b"l/";
const BLOB_PREFIX: &[u8] = b"b/";

fn refs_key(digest: &Digest) -> Vec<u8> {
    let mut k = REFS_PREFIX.to_vec();
    k.extend_from_slice(digest.as_str().as_bytes());
    k
}

fn candidate_key(touched_ms: u64, digest: &Digest) -> Vec<u8> {
    let mut k = CANDIDATE_PREFIX.to_vec();
    k.extend_from_slice(&touched_ms.to_be_bytes());
    k.extend_from_slice(digest.as_str().as_bytes());
    k
}

fn reverse_link_prefix(digest: &Digest) -> Vec<u8> {
    let mut k = REVERSE_LINK_PREFIX.to_vec();
    k.extend_from_slice(digest.as_str().as_bytes());
    k.push(0);
    k
}

fn reverse_link_key(digest: &Digest, repo: &RepositoryName) -> Vec<u8> {
    let mut k = reverse_link_prefix(digest);
    k.extend_from_slice(repo.as_str().as_bytes());
    k
}

/// Whether reference counts are maintained (set by `CountReferences`).
pub(super) fn counting(db: &DB) -> Result<bool, MetaError> {
    Ok(get::<u64>(db, "refs-counted flag", COUNTED)?.is_some())
}

/// Reads a blob's GC record.
pub(super) fn refs(db: &DB, digest: &Digest) -> Result<Option<BlobRefs>, MetaError> {
    get(db, "blob refs", &refs_key(digest))
}

/// Writes `refs` for `digest`, moving its candidate key from `old` (if it had one).
fn write_refs(
    batch: &mut WriteBatch,
    cf: &ColumnFamily,
    digest: &Digest,
    old: Option<BlobRefs>,
    new: BlobRefs,
) {
    if let Some(o) = old
        && o.refs == 0
        && (new.refs != 0 || new.touched_ms != o.touched_ms)
    {
        batch.delete_cf(cf, candidate_key(o.touched_ms, digest));
    }
    if new.refs == 0 && old.is_none_or(|o| o.refs != 0 || o.touched_ms != new.touched_ms) {
        batch.put_cf(cf, candidate_key(new.touched_ms, digest), []);
    }
    if old != Some(new) {
        put(batch, cf, &refs_key(digest), &new);
    }
}

/// A blob was stored, mounted or announced at `at_ms`: an unreferenced blob's grace starts
/// again (never earlier than it was). Creates the record of a blob new to the counts.
pub(super) fn touch(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    digest: &Digest,
    at_ms: u64,
) -> Result<(), MetaError> {
    let old = refs(db, digest)?;
    let new = match old {
        None => BlobRefs {
            refs: 0,
            touched_ms: at_ms,
        },
        Some(o) if o.refs == 0 => BlobRefs {
            refs: 0,
            touched_ms: o.touched_ms.max(at_ms),
        },
        Some(o) => o,
    };
    write_refs(batch, cf, digest, old, new);
    Ok(())
}

/// The distinct blobs of `blobs` with their sizes (0 for a blob with no record).
pub(super) fn sized(db: &DB, blobs: &[Digest]) -> Result<Vec<(Digest, u64)>, MetaError> {
    let distinct: BTreeSet<&Digest> = blobs.iter().collect();
    distinct
        .into_iter()
        .map(|d| {
            let size = get::<BlobRecord>(db, "blob record", &keys::blob(d))?.map_or(0, |b| b.size);
            Ok((d.clone(), size))
        })
        .collect()
}

/// Adds (`added`) or removes one reference of a manifest of `repo` to each distinct blob of
/// `blobs` (the manifest was stored, or removed for good), in the blob's count and in its
/// namespace's (`lifecycle`). A blob whose last reference goes at `at_ms` starts its grace
/// then.
pub(super) fn reference(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    blobs: &[Digest],
    added: bool,
    at_ms: u64,
) -> Result<(), MetaError> {
    let distinct = sized(db, blobs)?;
    super::lifecycle::namespace_reference(db, cf, batch, repo, &distinct, added)?;
    for (digest, _) in &distinct {
        let old = refs(db, digest)?;
        let base = old.unwrap_or(BlobRefs {
            refs: 0,
            touched_ms: at_ms,
        });
        let new = if added {
            BlobRefs {
                refs: base.refs + 1,
                ..base
            }
        } else if base.refs <= 1 {
            BlobRefs {
                refs: 0,
                touched_ms: base.touched_ms.max(at_ms),
            }
        } else {
            BlobRefs {
                refs: base.refs - 1,
                ..base
            }
        };
        write_refs(batch, cf, digest, old, new);
    }
    Ok(())
}

/// A blob was linked into a repository.
pub(super) fn linked(cf: &ColumnFamily, batch: &mut WriteBatch, repo: &RepositoryName, d: &Digest) {
    batch.put_cf(cf, reverse_link_key(d, repo), []);
}

/// A blob's link into a repository was removed.
pub(super) fn unlinked(
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    repo: &RepositoryName,
    d: &Digest,
) {
    batch.delete_cf(cf, reverse_link_key(d, repo));
}

/// Removes each blob of `digests` that no manifest references and that was last touched at
/// or before `cutoff_ms`: its record, GC record and every link to it. Others are left as
/// they are (a manifest PUT, a HEAD or an upload ordered before this command saved them).
pub(super) fn collect(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    digests: &[Digest],
    cutoff_ms: u64,
) -> Result<Vec<CollectedBlob>, MetaError> {
    let mut out = Vec::new();
    let distinct: BTreeSet<&Digest> = digests.iter().collect();
    for digest in distinct {
        let Some(r) = refs(db, digest)? else { continue };
        if r.refs != 0 || r.touched_ms > cutoff_ms {
            continue;
        }
        let blob_key = keys::blob(digest);
        let record = get::<BlobRecord>(db, "blob record", &blob_key)?;
        batch.delete_cf(cf, blob_key);
        batch.delete_cf(cf, refs_key(digest));
        batch.delete_cf(cf, candidate_key(r.touched_ms, digest));
        let prefix = reverse_link_prefix(digest);
        for item in scan(db, &prefix, None) {
            let (k, _) = item?;
            let Some(repo) = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|s| RepositoryName::parse(s).ok())
            else {
                continue;
            };
            batch.delete_cf(cf, keys::link(&repo, digest));
            batch.delete_cf(cf, k);
        }
        if let Some(record) = record {
            out.push(CollectedBlob {
                digest: digest.clone(),
                size: record.size,
                holders: record.holders.into_iter().collect(),
            });
        }
    }
    Ok(out)
}

/// Counts every blob's references from scratch (a full mark over the stored manifests),
/// rebuilds the candidate queue and the reverse links, and sets the flag that says they are
/// maintained from now on. Blobs found unreferenced start their grace at `at_ms`.
///
/// Holds one count per referenced blob in memory (about 100 bytes each): it runs once in a
/// cluster's life, when a database written before garbage collection existed is upgraded.
pub(super) fn count_references(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    at_ms: u64,
) -> Result<(), MetaError> {
    for prefix in [REFS_PREFIX, CANDIDATE_PREFIX, REVERSE_LINK_PREFIX] {
        batch.delete_range_cf(cf, prefix, keys::prefix_end(prefix).as_slice());
    }
    let size_of = |d: &Digest| -> Result<u64, MetaError> {
        Ok(get::<BlobRecord>(db, "blob record", &keys::blob(d))?.map_or(0, |b| b.size))
    };
    super::lifecycle::count_namespaces(db, cf, batch, &size_of)?;
    super::lifecycle::rebuild_parents(db, cf, batch)?;
    let counts = full_mark(db)?;
    for item in scan(db, BLOB_PREFIX, None) {
        let (k, _) = item?;
        let Some(digest) = keys::parse_digest(&k[BLOB_PREFIX.len()..]) else {
            continue;
        };
        let new = BlobRefs {
            refs: counts.get(&digest).copied().unwrap_or(0),
            touched_ms: at_ms,
        };
        write_refs(batch, cf, &digest, None, new);
    }
    for item in scan(db, LINK_PREFIX, None) {
        let (k, _) = item?;
        if let Some((repo, digest)) = keys::parse_repo_digest(&k[LINK_PREFIX.len()..]) {
            linked(cf, batch, &repo, &digest);
        }
    }
    put(batch, cf, COUNTED, &at_ms);
    Ok(())
}

/// The reference count of every referenced blob, computed from the stored and the
/// soft-deleted manifests alone (what the maintained counts must equal).
pub(super) fn full_mark(db: &DB) -> Result<HashMap<Digest, u64>, MetaError> {
    let mut counts: HashMap<Digest, u64> = HashMap::new();
    let mut count = |blobs: Vec<Digest>| {
        let distinct: BTreeSet<Digest> = blobs.into_iter().collect();
        for d in distinct {
            *counts.entry(d).or_default() += 1;
        }
    };
    for item in scan(db, keys::MANIFEST_PREFIX, None) {
        let (_, v) = item?;
        let Stored::V1(m) = decode::<Stored<ManifestRecord>>("manifest", &v)?;
        count(m.blobs);
    }
    for (_, _, d) in super::lifecycle::deleted(db, None)? {
        count(d.record.blobs);
    }
    Ok(counts)
}

/// Compares the maintained counts, candidate queue and reverse links with what they must be;
/// returns one line per difference (empty: they agree).
pub(super) fn verify(db: &DB) -> Result<Vec<String>, MetaError> {
    let mut problems = Vec::new();
    let mut counts = full_mark(db)?;
    for item in scan(db, BLOB_PREFIX, None) {
        let (k, _) = item?;
        let Some(digest) = keys::parse_digest(&k[BLOB_PREFIX.len()..]) else {
            continue;
        };
        let want = counts.remove(&digest).unwrap_or(0);
        match refs(db, &digest)? {
            None => problems.push(format!("{digest}: no refs record (want {want})")),
            Some(r) => {
                if r.refs != want {
                    problems.push(format!("{digest}: refs {} (want {want})", r.refs));
                }
                let has_candidate =
                    super::state_machine::exists(db, &candidate_key(r.touched_ms, &digest))?;
                if has_candidate != (r.refs == 0) {
                    problems.push(format!(
                        "{digest}: candidate key {has_candidate} with refs {}",
                        r.refs
                    ));
                }
            }
        }
    }
    for (digest, n) in counts {
        problems.push(format!(
            "{digest}: referenced {n} times but has no blob record"
        ));
    }
    let mut candidates = 0usize;
    for item in scan(db, CANDIDATE_PREFIX, None) {
        item?;
        candidates += 1;
    }
    let mut zero = 0usize;
    for item in scan(db, REFS_PREFIX, None) {
        let (_, v) = item?;
        let Stored::V1(r) = decode::<Stored<BlobRefs>>("blob refs", &v)?;
        zero += usize::from(r.refs == 0);
    }
    if candidates != zero {
        problems.push(format!(
            "{candidates} candidate keys for {zero} unreferenced blobs"
        ));
    }
    let (mut links, mut reverse) = (BTreeSet::new(), BTreeSet::new());
    for item in scan(db, LINK_PREFIX, None) {
        let (k, _) = item?;
        let rest = &k[LINK_PREFIX.len()..];
        if let Some(sep) = rest.iter().position(|b| *b == 0) {
            links.insert((rest[sep + 1..].to_vec(), rest[..sep].to_vec()));
        }
    }
    for item in scan(db, REVERSE_LINK_PREFIX, None) {
        let (k, _) = item?;
        let rest = &k[REVERSE_LINK_PREFIX.len()..];
        if let Some(sep) = rest.iter().position(|b| *b == 0) {
            reverse.insert((rest[..sep].to_vec(), rest[sep + 1..].to_vec()));
        }
    }
    let size_of = |d: &Digest| -> Result<u64, MetaError> {
        Ok(get::<BlobRecord>(db, "blob record", &keys::blob(d))?.map_or(0, |b| b.size))
    };
    problems.extend(super::lifecycle::verify_namespaces(db, &size_of)?);
    problems.extend(super::lifecycle::verify_parents(db)?);
    for missing in links.symmetric_difference(&reverse) {
        problems.push(format!(
            "link of {} in {} is only on one side",
            String::from_utf8_lossy(&missing.0),
            String::from_utf8_lossy(&missing.1)
        ));
    }
    Ok(problems)
}

/// An unreferenced blob the collector may take: its digest, size and last touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The blob.
    pub digest: Digest,
    /// Its size (0 when its record is gone meanwhile).
    pub size: u64,
    /// When it was last touched (ms since the epoch).
    pub touched_ms: u64,
}

/// Where a walk over candidates goes on: strictly after this `c/` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateCursor(Vec<u8>);

/// Up to `n` unreferenced blobs last touched at or before `cutoff_ms`, oldest first, after
/// `after`; and where the next page starts (`None`: no more).
pub(super) fn candidates(
    db: &DB,
    cutoff_ms: u64,
    after: Option<CandidateCursor>,
    n: usize,
) -> Result<(Vec<Candidate>, Option<CandidateCursor>), MetaError> {
    let start = after.map(|CandidateCursor(mut k)| {
        k.push(0);
        k
    });
    let mut out = Vec::new();
    for item in scan(db, CANDIDATE_PREFIX, start.as_deref()) {
        let (k, _) = item?;
        let rest = &k[CANDIDATE_PREFIX.len()..];
        if rest.len() < 8 {
            continue;
        }
        let touched_ms = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        if touched_ms > cutoff_ms {
            return Ok((out, None));
        }
        let Some(digest) = std::str::from_utf8(&rest[8..])
            .ok()
            .and_then(|s| Digest::parse(s).ok())
        else {
            continue;
        };
        let size =
            get::<BlobRecord>(db, "blob record", &keys::blob(&digest))?.map_or(0, |b| b.size);
        out.push(Candidate {
            digest,
            size,
            touched_ms,
        });
        if out.len() == n {
            return Ok((out, Some(CandidateCursor(k.to_vec()))));
        }
    }
    Ok((out, None))
}
