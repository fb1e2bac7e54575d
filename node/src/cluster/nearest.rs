//! Which copy of a blob is nearest: the order in which holders are tried.
//!
//! This node first, then nodes of its zone, then of its region (each of these two groups by
//! node id), then every other member by the round-trip time this node measured to it
//! (`peer_view.rs`; members not measured yet after the measured ones, by id), then nodes that
//! are not in the membership this node knows. A peer in failure backoff goes after all of
//! those, whatever its placement: it failed a moment ago.

use std::time::{Duration, Instant};

use super::Cluster;
use super::peer_view::PeerView;
use crate::meta::{NodeId, NodeInfo};

impl Cluster {
    /// `nodes`, nearest first (see the module docs), without duplicates.
    pub fn order_by_nearness(&self, nodes: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
        let now = Instant::now();
        rank_by_nearness(
            self.node_id,
            nodes,
            |n| self.member(n),
            |n| self.views.view(n, now),
        )
    }
}

/// The ordering of [`Cluster::order_by_nearness`], over what `member` and `view` say of each
/// node.
pub(super) fn rank_by_nearness(
    me: NodeId,
    nodes: impl IntoIterator<Item = NodeId>,
    member: impl Fn(NodeId) -> Option<NodeInfo>,
    view: impl Fn(NodeId) -> Option<PeerView>,
) -> Vec<NodeId> {
    let mine = member(me);
    let mut ranked: Vec<((bool, u8, Duration, NodeId), NodeId)> = nodes
        .into_iter()
        .map(|n| {
            let seen = if n == me { None } else { view(n) };
            let backed_off = seen.as_ref().is_some_and(|v| v.backoff.is_some());
            let (group, rtt) = if n == me {
                (0, Duration::ZERO)
            } else {
                match (member(n), &mine) {
                    (Some(info), Some(mine))
                        if info.region == mine.region && info.zone == mine.zone =>
                    {
                        (1, Duration::ZERO)
                    }
                    (Some(info), Some(mine)) if info.region == mine.region => (2, Duration::ZERO),
                    (Some(_), _) => (3, seen.and_then(|v| v.rtt).unwrap_or(Duration::MAX)),
                    (None, _) => (4, Duration::ZERO),
                }
            };
            ((backed_off, group, rtt, n), n)
        })
        .collect();
    ranked.sort_unstable();
    ranked.dedup_by_key(|(_, n)| *n);
    ranked.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn info(region: &str, zone: &str) -> NodeInfo {
        NodeInfo {
            url: String::new(),
            cluster_addr: String::new(),
            region: region.to_string(),
            zone: zone.to_string(),
        }
    }

    fn seen(node: NodeId, rtt_ms: Option<u64>, backoff: bool) -> PeerView {
        PeerView {
            node,
            rtt: rtt_ms.map(Duration::from_millis),
            throughput: None,
            failures: u32::from(backoff),
            backoff: backoff.then_some(Duration::from_secs(1)),
            up: !backoff,
        }
    }

    /// Node 1 in r1/a; 2 in r1/a; 3 in r1/b; 4, 5, 6, 7 in other regions; 9 unknown.
    fn members() -> BTreeMap<NodeId, NodeInfo> {
        BTreeMap::from([
            (1, info("r1", "a")),
            (2, info("r1", "a")),
            (3, info("r1", "b")),
            (4, info("r2", "a")),
            (5, info("r3", "a")),
            (6, info("r3", "b")),
            (7, info("r2", "b")),
        ])
    }

    fn order(views: &[PeerView], nodes: &[NodeId]) -> Vec<NodeId> {
        let members = members();
        rank_by_nearness(
            1,
            nodes.iter().copied(),
            |n| members.get(&n).cloned(),
            |n| views.iter().find(|v| v.node == n).cloned(),
        )
    }

    /// Among other regions' nodes the measured round trip decides: a low-RTT node of a third
    /// region comes before a high-RTT one of the region nearer by name or id.
    #[test]
    fn other_regions_are_ordered_by_measured_rtt() {
        let views = [
            seen(4, Some(300), false),
            seen(5, Some(20), false),
            seen(6, Some(80), false),
        ];
        assert_eq!(order(&views, &[4, 5, 6]), vec![5, 6, 4]);
        // Unmeasured nodes come after measured ones, by id.
        assert_eq!(order(&views, &[7, 4, 5]), vec![5, 4, 7]);
    }

    /// Placement groups come first whatever the round trips: self, zone, region.
    #[test]
    fn self_zone_and_region_come_before_measurement() {
        let views = [
            seen(2, Some(900), false),
            seen(3, Some(500), false),
            seen(5, Some(1), false),
        ];
        assert_eq!(order(&views, &[5, 3, 2, 1, 9, 2]), vec![1, 2, 3, 5, 9]);
    }

    /// A node in failure backoff goes last, even one of this node's zone.
    #[test]
    fn a_backed_off_node_goes_last() {
        let views = [
            seen(2, Some(1), true),
            seen(4, Some(300), false),
            seen(5, Some(20), true),
        ];
        assert_eq!(order(&views, &[2, 4, 5, 9]), vec![4, 9, 2, 5]);
    }
}
