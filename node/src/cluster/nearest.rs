//! Which copy of a blob is nearest: the order in which holders are tried.
//!
//! This node first, then nodes of its zone, then of its region, then every other node. Within
//! each group the order is stable (by node id).

use super::Cluster;
use crate::meta::NodeId;

impl Cluster {
    /// `nodes`, nearest first (see the module docs), without duplicates. Nodes that are not in
    /// the membership this node knows come last.
    pub fn order_by_nearness(&self, nodes: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
        let me = self.member(self.node_id);
        let mut ranked: Vec<(u8, NodeId)> = nodes
            .into_iter()
            .map(|n| {
                let rank = if n == self.node_id {
                    0
                } else {
                    match (self.member(n), &me) {
                        (Some(info), Some(me))
                            if info.region == me.region && info.zone == me.zone =>
                        {
                            1
                        }
                        (Some(info), Some(me)) if info.region == me.region => 2,
                        (Some(_), _) => 3,
                        (None, _) => 4,
                    }
                };
                (rank, n)
            })
            .collect();
        ranked.sort_unstable();
        ranked.dedup_by_key(|(_, n)| *n);
        ranked.into_iter().map(|(_, n)| n).collect()
    }
}
