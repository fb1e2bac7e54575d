//! Replication status of an image, a repository or the whole registry: per region, whether
//! every blob the placement wants there is there, and what is still pending.
//!
//! Computed from the answering node's applied state after it caught up with the leader's
//! commit index (ReadIndex), so a status asked right after a push sees the push. A node that
//! cannot reach the leader answers from its own state and says so (`stale`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::meta::NodeId;
use crate::types::{Digest, RepositoryName, Tag};

use super::{Replication, ReplicationError, Tally, per_region};

/// How long a status waits to catch up with the leader before answering from local state.
const CATCH_UP: Duration = Duration::from_secs(3);

/// One region's replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionStatus {
    /// The region.
    pub region: String,
    /// Whether every blob the placement wants in the region is held there.
    pub complete: bool,
    /// Blobs still missing on some placement node of the region.
    pub pending_blobs: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// The earliest push time (ms since the epoch) of a manifest with a pending blob here.
    pub oldest_pending_ms: Option<u64>,
}

impl RegionStatus {
    /// A complete region.
    pub fn empty(region: &str) -> RegionStatus {
        RegionStatus {
            region: region.to_string(),
            complete: true,
            pending_blobs: 0,
            pending_bytes: 0,
            oldest_pending_ms: None,
        }
    }
}

/// One blob's holders and placement (verbose status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobStatus {
    /// The blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Nodes holding a verified copy.
    pub holders: Vec<NodeId>,
    /// Nodes the placement wants it on.
    pub wanted: Vec<NodeId>,
}

/// Where an image has reached ([`Replication::reach`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The regions the placement copies it to, in order.
    pub wanted: Vec<String>,
    /// Those that hold every blob the placement wants there.
    pub complete: BTreeSet<String>,
}

/// The answer to a status request.
#[derive(Debug, Clone)]
pub struct ReplicationReport {
    /// Every region of the membership, in order.
    pub regions: Vec<RegionStatus>,
    /// Every blob, when verbose and a reference was given; else empty.
    pub blobs: Vec<BlobStatus>,
    /// Manifests counted.
    pub manifests: u64,
    /// Set when the node could not catch up with the leader: why (the answer is from its
    /// own, possibly older, state).
    pub stale: Option<String>,
    /// The log index of the state the answer was computed from.
    pub applied_index: u64,
}

impl ReplicationReport {
    /// Whether every region is complete.
    pub fn complete(&self) -> bool {
        self.regions.iter().all(|r| r.complete)
    }
}

/// What a status reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every manifest.
    All,
    /// Every manifest of a repository.
    Repository(RepositoryName),
    /// A tagged manifest, with its children and referrers.
    Tag(RepositoryName, Tag),
    /// A manifest by digest, with its children and referrers.
    Digest(RepositoryName, Digest),
}

/// Parses `""`, `repo`, `repo:tag` or `repo@digest`.
pub fn parse_target(reference: &str) -> Result<Target, ReplicationError> {
    let bad = |reason: String| ReplicationError::Reference {
        reference: reference.to_string(),
        reason,
    };
    let name = |s: &str| RepositoryName::parse(s).map_err(|e| bad(e.to_string()));
    let reference = reference.trim();
    if reference.is_empty() {
        return Ok(Target::All);
    }
    if let Some((repo, digest)) = reference.split_once('@') {
        let digest = Digest::parse(digest).map_err(|e| bad(e.to_string()))?;
        return Ok(Target::Digest(name(repo)?, digest));
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if let Some((_, tag)) = last.split_once(':') {
        let repo = &reference[..reference.len() - tag.len() - 1];
        let tag = Tag::parse(tag).map_err(|e| bad(e.to_string()))?;
        return Ok(Target::Tag(name(repo)?, tag));
    }
    Ok(Target::Repository(name(reference)?))
}

impl Replication {
    /// Catches up with the leader's commit index (ReadIndex), waiting at most 3 s. Returns why
    /// not, when it could not: the caller then answers from this node's own state.
    pub async fn catch_up(&self) -> Option<String> {
        match tokio::time::timeout(CATCH_UP, self.cluster.catch_up_with_leader()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "not caught up with the leader within {} s",
                CATCH_UP.as_secs()
            )),
        }
    }

    /// The replication status of `reference` (see [`parse_target`]); `verbose` adds every
    /// blob's holders and placement (for a reference, not for the whole registry).
    ///
    /// Errors: [`ReplicationError::Reference`] for a malformed reference;
    /// [`ReplicationError::NotFound`] for an unknown repository, tag or manifest.
    pub async fn status(
        &self,
        reference: &str,
        verbose: bool,
    ) -> Result<ReplicationReport, ReplicationError> {
        let target = parse_target(reference)?;
        let stale = self.catch_up().await;
        let applied_index = self.cluster.node_status().applied_index;
        let plan = self.plan().await?;
        let keep_all = verbose && target != Target::All;
        let tally = match &target {
            Target::All => self.walk(&plan, None, false).await?,
            Target::Repository(repo) => {
                if self
                    .meta
                    .tags(
                        repo,
                        crate::meta::Page {
                            n: Some(1),
                            last: None,
                        },
                    )
                    .await?
                    .is_none()
                {
                    return Err(ReplicationError::NotFound(format!("repository {repo}")));
                }
                self.walk(&plan, Some(repo), keep_all).await?
            }
            Target::Tag(repo, tag) => {
                let Some((digest, _)) = self.meta.manifest_by_tag(repo, tag).await? else {
                    return Err(ReplicationError::NotFound(format!("manifest {repo}:{tag}")));
                };
                self.image(&plan, repo, digest, keep_all).await?
            }
            Target::Digest(repo, digest) => {
                self.image(&plan, repo, digest.clone(), keep_all).await?
            }
        };
        let regions = per_region(&plan, &tally.pending).into_values().collect();
        Ok(ReplicationReport {
            regions,
            blobs: tally
                .all
                .map(|a| a.into_values().collect())
                .unwrap_or_default(),
            manifests: tally.manifests,
            stale,
            applied_index,
        })
    }

    /// Where an image has reached, from this node's applied state (no catch-up): the regions
    /// the placement copies it to (its policy's regions, or every region, less the on-demand
    /// ones), and which of those hold every blob the placement wants there. `None` when the
    /// manifest is not (or no longer) in the repository.
    pub async fn reach(
        &self,
        plan: &super::Plan,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<Reach>, ReplicationError> {
        let tally = match self.image(plan, repo, digest.clone(), false).await {
            Ok(t) => t,
            Err(ReplicationError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let wanted = plan.copied_to(repo);
        let status = per_region(plan, &tally.pending);
        let complete = wanted
            .iter()
            .filter(|r| status.get(*r).is_none_or(|s| s.complete))
            .cloned()
            .collect();
        Ok(Some(Reach { wanted, complete }))
    }

    /// Tallies a manifest with its children (of an index) and referrers, recursively.
    async fn image(
        &self,
        plan: &super::Plan,
        repo: &RepositoryName,
        root: Digest,
        keep_all: bool,
    ) -> Result<Tally, ReplicationError> {
        let mut tally = Tally {
            all: keep_all.then(BTreeMap::new),
            ..Tally::default()
        };
        let mut seen = BTreeSet::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let Some(entry) = self.meta.manifest_entry(repo, &d).await? else {
                if d == root {
                    return Err(ReplicationError::NotFound(format!("manifest {repo}@{d}")));
                }
                continue;
            };
            plan.add(&mut tally, &entry);
            stack.extend(entry.children.iter().cloned());
            for (referrer, _) in self.meta.referrers(repo, &d).await? {
                stack.push(referrer);
            }
        }
        Ok(tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_into_targets() {
        let repo = |s| RepositoryName::parse(s).unwrap();
        assert_eq!(parse_target("").unwrap(), Target::All);
        assert_eq!(
            parse_target("library/nginx").unwrap(),
            Target::Repository(repo("library/nginx"))
        );
        assert_eq!(
            parse_target("library/nginx:1.25").unwrap(),
            Target::Tag(repo("library/nginx"), Tag::parse("1.25").unwrap())
        );
        let d = Digest::sha256_of(b"x");
        assert_eq!(
            parse_target(&format!("a/b@{d}")).unwrap(),
            Target::Digest(repo("a/b"), d)
        );
        assert!(parse_target("Bad").is_err());
        assert!(parse_target("a:").is_err());
        assert!(parse_target("a@sha256:12").is_err());
    }
}
