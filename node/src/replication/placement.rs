//! Placement: which nodes should hold a blob. Pure and deterministic, so every node computes
//! the same answer from the same membership and policy, with no coordination.
//!
//! For each region the policy copies into, the `copies_per_region` nodes of that region with
//! the highest rendezvous score for the blob (the first 8 bytes of
//! `sha256(digest ‖ 0 ‖ node id as 8 big-endian bytes)`) hold it; a region with fewer nodes
//! wants all of them. Rendezvous hashing means that adding a node to a region moves to it
//! only the blobs for which it now ranks among the top, and takes nothing from other regions.
//! Voters and learners alike hold copies (a learner is a full replica of the metadata too).

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest as _, Sha256};

use crate::meta::{NodeId, ReplicationPolicy};
use crate::types::Digest;

use crate::meta::policy;

/// The rendezvous score of `node` for `digest`: higher ranks first.
pub fn score(digest: &Digest, node: NodeId) -> u64 {
    let mut h = Sha256::new();
    h.update(digest.as_str().as_bytes());
    h.update([0u8]);
    h.update(node.to_be_bytes());
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

/// The members by region, and how many copies each region keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    regions: BTreeMap<String, Vec<NodeId>>,
    region_of: BTreeMap<NodeId, String>,
    copies_per_region: usize,
}

impl Placement {
    /// Builds the placement over `members` (node id and region).
    pub fn new<'a>(
        members: impl IntoIterator<Item = (NodeId, &'a str)>,
        copies_per_region: usize,
    ) -> Placement {
        let mut regions: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
        let mut region_of = BTreeMap::new();
        for (id, region) in members {
            regions.entry(region.to_string()).or_default().push(id);
            region_of.insert(id, region.to_string());
        }
        for nodes in regions.values_mut() {
            nodes.sort_unstable();
            nodes.dedup();
        }
        Placement {
            regions,
            region_of,
            copies_per_region: copies_per_region.max(1),
        }
    }

    /// The regions that have members, in order.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.regions.keys().map(String::as_str)
    }

    /// The region of a member.
    pub fn region_of(&self, node: NodeId) -> Option<&str> {
        self.region_of.get(&node).map(String::as_str)
    }

    /// The nodes of `region` that should hold `digest` (none when the region is unknown).
    pub fn in_region(&self, digest: &Digest, region: &str) -> Vec<NodeId> {
        let Some(nodes) = self.regions.get(region) else {
            return Vec::new();
        };
        let mut ranked: Vec<(u64, NodeId)> =
            nodes.iter().map(|n| (score(digest, *n), *n)).collect();
        // Highest score first; the node id breaks a (practically impossible) tie.
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        ranked
            .into_iter()
            .take(self.copies_per_region)
            .map(|(_, n)| n)
            .collect()
    }

    /// The nodes that should hold `digest` under `policy` (`None`: the default, every
    /// region): the placement nodes of every region the policy replicates to.
    pub fn nodes_for(
        &self,
        digest: &Digest,
        policy: Option<&ReplicationPolicy>,
    ) -> BTreeSet<NodeId> {
        self.regions()
            .filter(|r| policy::replicates_to(policy, r))
            .flat_map(|r| self.in_region(digest, r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn digest(i: u32) -> Digest {
        Digest::sha256_of(&i.to_be_bytes())
    }

    fn three_regions() -> Placement {
        Placement::new([(1, "r1"), (2, "r2"), (3, "r3"), (4, "r1")], 1)
    }

    #[test]
    fn one_copy_in_every_region_by_default() {
        let p = three_regions();
        for i in 0..100 {
            let nodes = p.nodes_for(&digest(i), None);
            assert_eq!(nodes.len(), 3, "{nodes:?}");
            assert!(nodes.contains(&2) && nodes.contains(&3));
            assert!(nodes.contains(&1) ^ nodes.contains(&4));
        }
    }

    #[test]
    fn the_answer_is_deterministic() {
        let a = three_regions();
        // Another order of the same members.
        let b = Placement::new([(4, "r1"), (3, "r3"), (1, "r1"), (2, "r2")], 1);
        for i in 0..100 {
            assert_eq!(a.nodes_for(&digest(i), None), b.nodes_for(&digest(i), None));
        }
        // Fixed: a stable hash, not a per-process random one.
        assert_eq!(score(&digest(0), 1), score(&digest(0), 1));
        assert_eq!(
            score(
                &Digest::parse(
                    "sha256:0000000000000000000000000000000000000000000000000000000000000000"
                )
                .unwrap(),
                1
            ),
            0x2114_110f_a683_cff4,
            "the rendezvous hash changed: placements of stored blobs would move"
        );
    }

    #[test]
    fn a_region_spreads_its_blobs_over_its_nodes() {
        let p = Placement::new((1..=4).map(|n| (n, "r1")), 1);
        let mut counts = BTreeMap::new();
        for i in 0..4000 {
            for n in p.nodes_for(&digest(i), None) {
                *counts.entry(n).or_insert(0) += 1;
            }
        }
        // Each of 4 nodes gets about 1000; allow a wide margin.
        for n in 1..=4 {
            let c = counts[&n];
            assert!((800..1200).contains(&c), "node {n} got {c}: {counts:?}");
        }
    }

    #[test]
    fn copies_per_region_raises_the_count_and_small_regions_want_all() {
        let p = Placement::new([(1, "r1"), (2, "r1"), (3, "r1"), (4, "r2")], 2);
        for i in 0..50 {
            let nodes = p.nodes_for(&digest(i), None);
            assert_eq!(nodes.len(), 3);
            assert!(nodes.contains(&4));
        }
    }

    #[test]
    fn policies_limit_the_regions() {
        let p = three_regions();
        let limited = ReplicationPolicy {
            regions: vec!["r2".into(), "r3".into()],
            on_demand: vec!["r3".into()],
        };
        for i in 0..20 {
            assert_eq!(p.nodes_for(&digest(i), Some(&limited)), BTreeSet::from([2]));
        }
    }

    proptest! {
        /// Adding a node to a region moves only blobs onto it: every blob whose placement
        /// changed now lists the new node, and every other region keeps its nodes.
        #[test]
        fn adding_a_node_moves_only_its_share(
            nodes in 1u64..8,
            copies in 1usize..3,
            seeds in proptest::collection::vec(any::<u32>(), 50),
        ) {
            let before_members: Vec<(u64, &str)> =
                (1..=nodes).map(|n| (n, "r1")).chain([(100, "r2")]).collect();
            let mut after_members = before_members.clone();
            after_members.push((nodes + 1, "r1"));
            let before = Placement::new(before_members, copies);
            let after = Placement::new(after_members, copies);
            for s in seeds {
                let d = digest(s);
                let (b, a) = (before.nodes_for(&d, None), after.nodes_for(&d, None));
                if a != b {
                    prop_assert!(a.contains(&(nodes + 1)));
                    // At most one node of r1 was displaced by the new one.
                    prop_assert_eq!(b.difference(&a).count(), usize::from(b.len() == a.len()));
                }
                prop_assert!(a.contains(&100));
            }
        }
    }
}
