//! The durability policy of a manifest PUT: every blob the manifest references is held by at
//! least `durability.min_copies` nodes in at least `durability.min_regions` regions before the
//! PUT is acknowledged. When a blob is short, the node taking the PUT makes the copies while
//! the client waits: it chooses nodes (nearest first, among the regions the repository's
//! replication policy lets hold copies; nodes of regions that hold no copy first
//! while regions are short), asks each to copy the blob now (`Peer.Replicate`, served by
//! [`Registry::ensure_local_copy`]; itself directly), catches up with the leader so it sees
//! their holder records, and looks again — until the policy holds or the write timeout ends.
//!
//! Only members count: a holder no longer in the membership holds nothing the cluster can
//! serve. A policy the membership cannot meet (fewer nodes or regions than asked) fails at
//! once; a copy that fails is retried on other nodes first, then on the same ones, until the
//! deadline. Every failure answers [`RegistryError::Unavailable`] with the blob, the copies
//! and regions it has, what the policy asks, and why.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use berth_proto::peer::ReplicateRequest;
use berth_proto::peer::peer_client::PeerClient;

use super::{Registry, RegistryError};
use crate::cluster::MemberView;
use crate::meta::{BlobRecord, NodeId};
use crate::types::{Digest, RepositoryName};

/// Pause before asking again nodes whose copies all failed.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The copies of a blob that count: holders that are members, and their regions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tally {
    copies: usize,
    regions: BTreeSet<String>,
}

fn tally(members: &[MemberView], holders: &BTreeSet<NodeId>) -> Tally {
    let held: Vec<&MemberView> = members.iter().filter(|m| holders.contains(&m.id)).collect();
    Tally {
        copies: held.len(),
        regions: held.iter().map(|m| m.info.region.clone()).collect(),
    }
}

/// The nodes to copy a blob to so that it is held by `min_copies` nodes in `min_regions`
/// regions: from `candidates` (non-holders, nearest first, with their regions), first one node
/// of each region that holds no copy, nearest first, while regions are short; then the nearest
/// others while copies are short. `None` when the candidates cannot meet the policy.
fn choose_targets(
    candidates: &[(NodeId, &str)],
    held: &Tally,
    min_copies: usize,
    min_regions: usize,
) -> Option<Vec<NodeId>> {
    let mut chosen: Vec<NodeId> = Vec::new();
    let mut regions: BTreeSet<&str> = held.regions.iter().map(String::as_str).collect();
    for (id, region) in candidates {
        if regions.len() >= min_regions {
            break;
        }
        if regions.insert(region) {
            chosen.push(*id);
        }
    }
    if regions.len() < min_regions {
        return None;
    }
    for (id, _) in candidates {
        if held.copies + chosen.len() >= min_copies {
            break;
        }
        if !chosen.contains(id) {
            chosen.push(*id);
        }
    }
    (held.copies + chosen.len() >= min_copies).then_some(chosen)
}

impl Registry {
    /// Whether a blob's record meets the durability policy.
    pub(super) fn durable(&self, record: &BlobRecord) -> bool {
        let t = tally(&self.cluster.members(), &record.holders);
        t.copies >= self.settings.min_copies && t.regions.len() >= self.settings.min_regions
    }

    /// Makes copies of `digests` until each meets the durability policy (see the module docs).
    ///
    /// Errors: [`RegistryError::Unavailable`] when the policy cannot be met, or not within the
    /// write timeout; [`RegistryError::NoQuorum`] when this node cannot catch up with the
    /// leader; [`RegistryError::ManifestBlobUnknown`] when a blob's record is gone.
    pub(super) async fn make_durable(
        &self,
        repo: &RepositoryName,
        digests: &[Digest],
    ) -> Result<(), RegistryError> {
        let (min_copies, min_regions) = (self.settings.min_copies, self.settings.min_regions);
        // Copies go only where the repository's replication policy lets them be (residency).
        let policies = self.meta.replication_policies().await?;
        let policy = crate::meta::policy::effective(repo.as_str(), &policies).map(|(_, p)| p);
        let restricted = policy.is_some_and(|p| !p.regions.is_empty());
        let deadline = Instant::now() + self.settings.write_timeout;
        // Nodes whose copy failed in this PUT, and why; tried again only once no other is left.
        let mut failed: BTreeMap<NodeId, String> = BTreeMap::new();
        loop {
            let members = self.cluster.members();
            let mut work: Vec<(Digest, NodeId)> = Vec::new();
            let mut short: Option<(Digest, Tally)> = None;
            for digest in digests {
                let record = self
                    .meta
                    .blob(digest)
                    .await?
                    .ok_or_else(|| RegistryError::ManifestBlobUnknown(digest.clone()))?;
                let held = tally(&members, &record.holders);
                if held.copies >= min_copies && held.regions.len() >= min_regions {
                    continue;
                }
                let nearest = self.cluster.order_by_nearness(
                    members
                        .iter()
                        .filter(|m| crate::meta::policy::allows(policy, &m.info.region))
                        .map(|m| m.id)
                        .filter(|id| !record.holders.contains(id)),
                );
                let region_of = |id: &NodeId| {
                    members
                        .iter()
                        .find(|m| m.id == *id)
                        .map_or("", |m| m.info.region.as_str())
                };
                let all: Vec<(NodeId, &str)> =
                    nearest.iter().map(|id| (*id, region_of(id))).collect();
                if choose_targets(&all, &held, min_copies, min_regions).is_none() {
                    let allowed: Vec<_> = members
                        .iter()
                        .filter(|m| crate::meta::policy::allows(policy, &m.info.region))
                        .collect();
                    let regions: BTreeSet<&str> =
                        allowed.iter().map(|m| m.info.region.as_str()).collect();
                    let whose = if restricted {
                        "the repository's replication policy allows"
                    } else {
                        "the cluster has"
                    };
                    return Err(self.shortfall(
                        digest,
                        &held,
                        &format!(
                            "{whose} {} node(s) in {} region(s)",
                            allowed.len(),
                            regions.len()
                        ),
                    ));
                }
                let untried: Vec<(NodeId, &str)> = all
                    .iter()
                    .filter(|(id, _)| !failed.contains_key(id))
                    .copied()
                    .collect();
                if let Some(targets) = choose_targets(&untried, &held, min_copies, min_regions) {
                    work.extend(targets.into_iter().map(|n| (digest.clone(), n)));
                }
                short.get_or_insert((digest.clone(), held));
            }
            let Some((digest, held)) = short else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let why = if failed.is_empty() {
                    format!(
                        "the copies were not made within {} ms",
                        self.settings.write_timeout.as_millis()
                    )
                } else {
                    failures(&failed)
                };
                return Err(self.shortfall(&digest, &held, &why));
            }
            if work.is_empty() {
                // Every node that could take a copy failed once: try them again, shortly.
                tokio::time::sleep(RETRY_PAUSE.min(deadline - Instant::now())).await;
                failed.clear();
                continue;
            }
            let copies = work.iter().map(|(d, node)| async move {
                let r = self.copy_to(*node, d, deadline).await;
                (*node, d, r)
            });
            for (node, d, r) in futures::future::join_all(copies).await {
                match r {
                    Ok(()) => tracing::info!(digest = %d, node, "copied a blob for durability"),
                    Err(why) => {
                        tracing::warn!(digest = %d, node, error = %why, "failed to copy a blob for durability");
                        failed.insert(node, why);
                    }
                }
            }
            // The copies were recorded through Raft at their nodes: see their records here.
            let left = deadline.saturating_duration_since(Instant::now());
            // (The leader applied them before they were acknowledged.)
            if !self.cluster.is_leader() {
                match tokio::time::timeout(left, self.cluster.catch_up_with_leader()).await {
                    Ok(r) => r?,
                    Err(_) => continue,
                }
            }
        }
    }

    /// Asks `node` to hold a copy of `digest` now (this node: directly), within the deadline.
    async fn copy_to(
        &self,
        node: NodeId,
        digest: &Digest,
        deadline: Instant,
    ) -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if node == self.cluster.node_id() {
            return match tokio::time::timeout(
                left,
                self.ensure_local_copy(digest, super::CopyFor::Durability),
            )
            .await
            {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no copy within {} ms", left.as_millis())),
            };
        }
        let req = ReplicateRequest {
            digest: digest.to_string(),
        };
        self.cluster
            .call_member(node, left, req, |channel, req| async move {
                PeerClient::new(channel).replicate(req).await
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The 503 of a blob the policy wants more copies of.
    fn shortfall(&self, digest: &Digest, held: &Tally, why: &str) -> RegistryError {
        RegistryError::Unavailable(format!(
            "blob {digest} is held by {} node(s) in {} region(s); durability requires {} \
             node(s) in {} region(s), and the copies could not be made: {why}",
            held.copies,
            held.regions.len(),
            self.settings.min_copies,
            self.settings.min_regions,
        ))
    }
}

fn failures(failed: &BTreeMap<NodeId, String>) -> String {
    failed
        .iter()
        .map(|(node, why)| format!("node {node}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(copies: usize, regions: &[&str]) -> Tally {
        Tally {
            copies,
            regions: regions.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn copies_go_to_the_nearest_nodes() {
        let c = [(2, "r1"), (3, "r1"), (4, "r2")];
        assert_eq!(choose_targets(&c, &held(1, &["r1"]), 2, 1), Some(vec![2]));
        assert_eq!(
            choose_targets(&c, &held(1, &["r1"]), 3, 1),
            Some(vec![2, 3])
        );
        assert_eq!(choose_targets(&c, &held(2, &["r1"]), 2, 1), Some(vec![]));
    }

    #[test]
    fn short_regions_are_filled_first() {
        let c = [(2, "r1"), (3, "r1"), (4, "r2"), (5, "r3")];
        // One copy in another region, although nearer nodes exist in this one.
        assert_eq!(choose_targets(&c, &held(1, &["r1"]), 1, 2), Some(vec![4]));
        // Two more regions, then the nearest to make three copies in all... already three.
        assert_eq!(
            choose_targets(&c, &held(1, &["r1"]), 3, 3),
            Some(vec![4, 5])
        );
        // Four copies in two regions: the region first, then the nearest.
        assert_eq!(
            choose_targets(&c, &held(1, &["r1"]), 4, 2),
            Some(vec![4, 2, 3])
        );
    }

    #[test]
    fn a_policy_the_candidates_cannot_meet_is_none() {
        let c = [(2, "r1"), (3, "r1")];
        assert_eq!(choose_targets(&c, &held(1, &["r1"]), 4, 1), None);
        assert_eq!(choose_targets(&c, &held(1, &["r1"]), 1, 2), None);
        assert_eq!(choose_targets(&[], &held(0, &[]), 1, 1), None);
    }
}
