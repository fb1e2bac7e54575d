//! Geo-replication: where each blob should be held ([`placement`], [`policy`]), the
//! replicator that makes it so on this node ([`worker`]), and what is still missing where
//! ([`status`], the replication metrics; the replicator keeps its own view of it, indexed, in
//! a [`pending::Backlog`]), and the scrubber that re-hashes this node's copies and repairs a
//! bad one from a peer ([`scrub`]).
//!
//! Nothing here is durable of its own: the work is derived from the state machine (manifests,
//! blob records, policies and the membership, all in Raft), so it resumes after a restart, a
//! partition or a week offline by recomputing it. Copies are made by
//! `Registry::ensure_local_copy` (nearest holder, verified, crash-safe, recorded through
//! Raft); policies change through Raft writes ([`Replication::set_policy`]).
//!
//! Must not: touch files or RocksDB itself (it goes through `meta::MetaReader` and the
//! registry), or hold a whole walk over the manifests in memory (it pages).

pub mod pending;
pub mod placement;
pub mod scrub;
pub mod status;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::{Cluster, ClusterError};
use crate::meta::{
    BlobRecord, Command, CommandV1, ManifestEntry, MetaError, MetaReader, NodeId, Rejection,
    ReplicationPolicy, WriteResult,
};
use crate::types::{Digest, ErrorKind, RepositoryName};

pub use crate::meta::policy::{self, PolicyError};
pub use placement::Placement;
pub use scrub::ScrubWorker;
pub use status::{BlobStatus, RegionStatus, ReplicationReport};
pub use worker::ReplicationWorker;

/// Manifests read per page of a walk over the state.
const PAGE: usize = 256;
/// Manifests remembered per pending blob (to re-check, before copying, that one of them still
/// exists); past it, the blob is only dropped by the next full pass.
const WANTED_BY_MAX: usize = 8;

/// Settings of the replicator (`[replication]` in the config).
#[derive(Debug, Clone)]
pub struct ReplicationSettings {
    /// Nodes of each region that hold a copy of a blob.
    pub copies_per_region: usize,
    /// Copies this node makes at once.
    pub max_parallel: usize,
    /// Time between two full passes over the state.
    pub full_pass_every: Duration,
    /// Time between two scrubs of this node's blobs; `None`: no scrubbing.
    pub scrub_every: Option<Duration>,
    /// Bytes a second a scrub reads at most.
    pub scrub_bytes_per_sec: u64,
}

/// Errors of replication status and policy calls.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Reading the state failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A policy change could not be committed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A malformed pattern or policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A malformed reference.
    #[error("invalid reference {reference:?}: {reason}")]
    Reference {
        /// The reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The repository, tag, manifest or policy does not exist.
    #[error("{0} not found")]
    NotFound(String),
}

impl ReplicationError {
    /// The broad class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReplicationError::Meta(MetaError::DiskFull(_)) => ErrorKind::Exhausted,
            ReplicationError::Meta(_) => ErrorKind::Internal,
            ReplicationError::Cluster(e) => e.kind(),
            ReplicationError::Policy(e) => e.kind(),
            ReplicationError::Reference { .. } => ErrorKind::Invalid,
            ReplicationError::NotFound(_) => ErrorKind::NotFound,
        }
    }
}

/// A blob some placement node does not hold yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its size in bytes.
    pub size: u64,
    /// Placement nodes that do not hold it.
    pub missing: BTreeSet<NodeId>,
    /// Some of the manifests that want it (at most [`WANTED_BY_MAX`]).
    pub wanted_by: Vec<(RepositoryName, Digest)>,
    /// Whether more manifests want it than `wanted_by` lists.
    pub more: bool,
    /// The earliest `created_ms` of the manifests that want it.
    pub oldest_ms: u64,
}

impl Pending {
    /// A blob of `size` bytes first wanted by a manifest pushed at `oldest_ms`, before any
    /// node is known to miss it.
    pub fn new(size: u64, oldest_ms: u64) -> Pending {
        Pending {
            size,
            missing: BTreeSet::new(),
            wanted_by: Vec::new(),
            more: false,
            oldest_ms,
        }
    }

    /// Adds what the manifest `by`, pushed at `created_ms`, wants of it: the placement nodes
    /// that miss it. Returns whether `by` was added to `wanted_by`.
    pub fn want(
        &mut self,
        missing: BTreeSet<NodeId>,
        created_ms: u64,
        by: &(RepositoryName, Digest),
    ) -> bool {
        self.missing.extend(missing);
        self.oldest_ms = self.oldest_ms.min(created_ms);
        if self.wanted_by.contains(by) {
            return false;
        }
        if self.wanted_by.len() < WANTED_BY_MAX {
            self.wanted_by.push(by.clone());
            true
        } else {
            self.more = true;
            false
        }
    }
}

/// What one walk found: the blobs still missing somewhere, and (when asked) every blob seen.
#[derive(Debug, Default)]
pub struct Tally {
    /// Pending blobs by digest.
    pub pending: BTreeMap<Digest, Pending>,
    /// Every blob seen, with its holders and placement (kept only for a verbose status).
    pub all: Option<BTreeMap<Digest, BlobStatus>>,
    /// Manifests counted.
    pub manifests: u64,
}

/// The placement and policies in force, to evaluate manifests with.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Members by region.
    pub placement: Placement,
    policies: Vec<(String, ReplicationPolicy)>,
}

impl Plan {
    /// The policy that applies to a repository (`None`: the default).
    pub fn policy_for(&self, repo: &RepositoryName) -> Option<&ReplicationPolicy> {
        policy::effective(repo.as_str(), &self.policies).map(|(_, p)| p)
    }

    /// The regions the replicator copies the repository's images to: its policy's regions
    /// (every region when it has none or lists none), less its on-demand regions.
    pub fn copied_to(&self, repo: &RepositoryName) -> Vec<String> {
        let policy = self.policy_for(repo);
        self.placement
            .regions()
            .filter(|r| policy::replicates_to(policy, r))
            .map(str::to_string)
            .collect()
    }

    /// Adds a manifest's blobs to `tally`.
    pub fn add(&self, tally: &mut Tally, entry: &ManifestEntry) {
        tally.manifests += 1;
        let by = (entry.repo.clone(), entry.digest.clone());
        for (digest, record, wanted) in self.placed(entry) {
            if let Some(all) = &mut tally.all {
                let b = all.entry(digest.clone()).or_insert_with(|| BlobStatus {
                    digest: digest.clone(),
                    size: record.map_or(0, |r| r.size),
                    holders: record
                        .map(|r| r.holders.iter().copied().collect())
                        .unwrap_or_default(),
                    wanted: Vec::new(),
                });
                let mut w: BTreeSet<NodeId> = b.wanted.iter().copied().collect();
                w.extend(wanted.iter().copied());
                b.wanted = w.into_iter().collect();
            }
            if let Some((size, missing)) = missing_of(record, &wanted) {
                tally
                    .pending
                    .entry(digest.clone())
                    .or_insert_with(|| Pending::new(size, entry.created_ms))
                    .want(missing, entry.created_ms, &by);
            }
        }
    }

    /// The blobs of `entry` that some placement node misses: digest, size and those nodes.
    /// Blobs without a record are left out.
    pub fn missing<'e>(
        &self,
        entry: &'e ManifestEntry,
    ) -> impl Iterator<Item = (&'e Digest, u64, BTreeSet<NodeId>)> {
        self.placed(entry).filter_map(|(digest, record, wanted)| {
            missing_of(record, &wanted).map(|(size, missing)| (digest, size, missing))
        })
    }

    /// Each blob of `entry`, with its record and the placement nodes that should hold it.
    fn placed<'e>(
        &self,
        entry: &'e ManifestEntry,
    ) -> impl Iterator<Item = (&'e Digest, Option<&'e BlobRecord>, BTreeSet<NodeId>)> {
        let policy = self.policy_for(&entry.repo);
        entry.blobs.iter().map(move |(digest, record)| {
            let wanted = self.placement.nodes_for(digest, policy);
            (digest, record.as_ref(), wanted)
        })
    }
}

/// A blob's size and the `wanted` nodes that do not hold it; `None` when none misses it or it
/// has no record.
fn missing_of(
    record: Option<&BlobRecord>,
    wanted: &BTreeSet<NodeId>,
) -> Option<(u64, BTreeSet<NodeId>)> {
    let record = record?;
    let missing: BTreeSet<NodeId> = wanted.difference(&record.holders).copied().collect();
    (!missing.is_empty()).then_some((record.size, missing))
}

/// Pending blobs and bytes per region, and the oldest pending manifest's time.
pub fn per_region(
    plan: &Plan,
    pending: &BTreeMap<Digest, Pending>,
) -> BTreeMap<String, RegionStatus> {
    let mut out: BTreeMap<String, RegionStatus> = plan
        .placement
        .regions()
        .map(|r| (r.to_string(), RegionStatus::empty(r)))
        .collect();
    for p in pending.values() {
        let regions: BTreeSet<&str> = p
            .missing
            .iter()
            .filter_map(|n| plan.placement.region_of(*n))
            .collect();
        for r in regions {
            let s = out
                .entry(r.to_string())
                .or_insert_with(|| RegionStatus::empty(r));
            s.complete = false;
            s.pending_blobs += 1;
            s.pending_bytes += p.size;
            s.oldest_pending_ms = Some(
                s.oldest_pending_ms
                    .map_or(p.oldest_ms, |o| o.min(p.oldest_ms)),
            );
        }
    }
    out
}

/// Replication as the rest of the node sees it: status, policies, and the replicator's last
/// view for the metrics. Shared by the admin service, the worker and the metrics hook.
#[derive(Debug)]
pub struct Replication {
    meta: MetaReader,
    cluster: Cluster,
    settings: ReplicationSettings,
    /// Pending blobs and bytes per region, as the worker last computed them.
    view: Mutex<BTreeMap<String, RegionStatus>>,
}

impl Replication {
    /// The replication of this node over its metadata and cluster.
    pub fn new(
        meta: MetaReader,
        cluster: Cluster,
        settings: ReplicationSettings,
    ) -> Arc<Replication> {
        Arc::new(Replication {
            meta,
            cluster,
            settings,
            view: Mutex::new(BTreeMap::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &ReplicationSettings {
        &self.settings
    }

    /// The metadata reader.
    pub fn meta(&self) -> &MetaReader {
        &self.meta
    }

    /// The cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The placement and policies in force now (membership as this node knows it).
    pub async fn plan(&self) -> Result<Plan, MetaError> {
        let members = self.cluster.members();
        let placement = Placement::new(
            members.iter().map(|m| (m.id, m.info.region.as_str())),
            self.settings.copies_per_region,
        );
        let policies = self.meta.replication_policies().await?;
        Ok(Plan {
            placement,
            policies,
        })
    }

    /// Walks manifests (of `repo`, or all) page by page into a tally.
    pub async fn walk(
        &self,
        plan: &Plan,
        repo: Option<&RepositoryName>,
        keep_all: bool,
    ) -> Result<Tally, MetaError> {
        let mut tally = Tally {
            all: keep_all.then(BTreeMap::new),
            ..Tally::default()
        };
        let mut cursor = None;
        loop {
            let page = self.meta.manifest_page(repo, cursor, PAGE).await?;
            for e in &page.entries {
                plan.add(&mut tally, e);
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(tally),
            }
        }
    }

    /// The worker's last view: pending blobs and bytes per region.
    pub fn view(&self) -> BTreeMap<String, RegionStatus> {
        self.view.lock().expect("view lock").clone()
    }

    pub(crate) fn publish_view(&self, view: BTreeMap<String, RegionStatus>) {
        *self.view.lock().expect("view lock") = view;
    }

    /// Every policy, by pattern.
    pub async fn policies(&self) -> Result<Vec<(String, ReplicationPolicy)>, ReplicationError> {
        Ok(self.meta.replication_policies().await?)
    }

    /// The policy of exactly `pattern`.
    ///
    /// Errors: [`ReplicationError::NotFound`].
    pub async fn policy(&self, pattern: &str) -> Result<ReplicationPolicy, ReplicationError> {
        self.meta
            .replication_policy(pattern)
            .await?
            .ok_or_else(|| ReplicationError::NotFound(format!("replication policy {pattern:?}")))
    }

    /// Sets the policy of `pattern` through Raft (forwarded to the leader at a follower);
    /// returns it as stored (normalised).
    ///
    /// Errors: [`ReplicationError::Policy`] for a bad pattern or policy;
    /// [`ReplicationError::Cluster`] when it cannot be committed.
    pub async fn set_policy(
        &self,
        pattern: &str,
        policy: ReplicationPolicy,
    ) -> Result<ReplicationPolicy, ReplicationError> {
        policy::validate_pattern(pattern)?;
        let policy = policy::normalise(policy)?;
        let cmd = CommandV1::SetReplicationPolicy {
            pattern: pattern.to_string(),
            policy: policy.clone(),
        };
        self.cluster.write(Command::V1(cmd)).await?;
        Ok(policy)
    }

    /// Removes the policy of `pattern` through Raft.
    ///
    /// Errors: [`ReplicationError::NotFound`] when no policy has that pattern;
    /// [`ReplicationError::Cluster`] when it cannot be committed.
    pub async fn clear_policy(&self, pattern: &str) -> Result<(), ReplicationError> {
        policy::validate_pattern(pattern)?;
        let cmd = CommandV1::ClearReplicationPolicy {
            pattern: pattern.to_string(),
        };
        match self.cluster.write(Command::V1(cmd)).await? {
            WriteResult::Rejected(Rejection::PolicyUnknown(p)) => Err(ReplicationError::NotFound(
                format!("replication policy {p:?}"),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::BlobRecord;

    fn entry(repo: &str, i: u8, blobs: &[(u8, &[NodeId])], created_ms: u64) -> ManifestEntry {
        ManifestEntry {
            repo: RepositoryName::parse(repo).unwrap(),
            digest: Digest::sha256_of(&[i]),
            created_ms,
            blobs: blobs
                .iter()
                .map(|(b, holders)| {
                    (
                        Digest::sha256_of(&[*b, 0]),
                        Some(BlobRecord {
                            size: 100,
                            holders: holders.iter().copied().collect(),
                            first_seen_ms: 0,
                        }),
                    )
                })
                .collect(),
            children: vec![],
        }
    }

    fn plan(policies: Vec<(String, ReplicationPolicy)>) -> Plan {
        Plan {
            placement: Placement::new([(1, "r1"), (2, "r2"), (3, "r3")], 1),
            policies,
        }
    }

    #[test]
    fn a_tally_counts_each_missing_blob_once_per_region() {
        let plan = plan(vec![]);
        let mut tally = Tally::default();
        plan.add(
            &mut tally,
            &entry("a", 1, &[(1, &[1]), (2, &[1, 2, 3])], 50),
        );
        // The same blob through another manifest, older.
        plan.add(&mut tally, &entry("b", 2, &[(1, &[1])], 20));
        assert_eq!(tally.manifests, 2);
        assert_eq!(tally.pending.len(), 1);
        let p = tally.pending.values().next().unwrap();
        assert_eq!(p.missing, BTreeSet::from([2, 3]));
        assert_eq!(p.oldest_ms, 20);
        assert_eq!(p.wanted_by.len(), 2);
        let regions = per_region(&plan, &tally.pending);
        assert!(regions["r1"].complete);
        assert_eq!(regions["r2"].pending_blobs, 1);
        assert_eq!(regions["r3"].pending_bytes, 100);
        assert_eq!(regions["r3"].oldest_pending_ms, Some(20));
    }

    #[test]
    fn a_limited_repository_is_not_wanted_outside_its_regions() {
        let limited = ReplicationPolicy {
            regions: vec!["r1".into(), "r2".into()],
            on_demand: vec![],
        };
        let plan = plan(vec![("eu/**".into(), limited)]);
        let mut tally = Tally::default();
        plan.add(&mut tally, &entry("eu/app", 1, &[(1, &[1])], 50));
        let regions = per_region(&plan, &tally.pending);
        assert!(!regions["r2"].complete);
        assert!(regions["r3"].complete);
        assert_eq!(
            tally.pending.values().next().unwrap().missing,
            BTreeSet::from([2])
        );
    }
}
