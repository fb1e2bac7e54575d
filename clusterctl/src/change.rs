//! The membership changes `clusterctl` can ask for, and how messages name them.
//!
//! A [`Change`] is already validated (node ids ≥ 1, well-formed addresses): [`crate::cli`]
//! builds it from checked arguments. No IO here.

use berth_proto::admin::AddNodeRequest;

/// One membership change: each maps to one server-streaming Admin RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `AddNode`: add a node as a learner and wait until it caught up.
    Add(AddNodeRequest),
    /// `PromoteNode`: make a learner a voter.
    Promote {
        /// The node to promote.
        id: u64,
    },
    /// `DemoteNode`: make a voter a learner.
    Demote {
        /// The node to demote.
        id: u64,
    },
    /// `RemoveNode`: remove a voter or learner.
    Remove {
        /// The node to remove.
        id: u64,
    },
    /// `TransferLeader`: hand leadership to another voter.
    TransferLeader {
        /// The voter that should lead.
        to: u64,
    },
}

impl Change {
    /// The node the change is about.
    pub fn node_id(&self) -> u64 {
        match self {
            Change::Add(req) => req.id,
            Change::Promote { id } | Change::Demote { id } | Change::Remove { id } => *id,
            Change::TransferLeader { to } => *to,
        }
    }

    /// What is attempted, for `failed to <what>` messages: `add node 4`.
    pub fn what(&self) -> String {
        let id = self.node_id();
        match self {
            Change::Add(_) => format!("add node {id}"),
            Change::Promote { .. } => format!("promote node {id}"),
            Change::Demote { .. } => format!("demote node {id}"),
            Change::Remove { .. } => format!("remove node {id}"),
            Change::TransferLeader { .. } => format!("transfer leadership to node {id}"),
        }
    }

    /// The operation's name in `--json` output: `add_node`, `promote_node`, …
    pub fn name(&self) -> &'static str {
        match self {
            Change::Add(_) => "add_node",
            Change::Promote { .. } => "promote_node",
            Change::Demote { .. } => "demote_node",
            Change::Remove { .. } => "remove_node",
            Change::TransferLeader { .. } => "transfer_leader",
        }
    }

    /// The outcome said when the server's final message is empty: `node 4 added as a learner`.
    pub fn done_text(&self) -> String {
        let id = self.node_id();
        match self {
            Change::Add(_) => format!("node {id} added as a learner"),
            Change::Promote { .. } => format!("node {id} promoted to voter"),
            Change::Demote { .. } => format!("node {id} demoted to learner"),
            Change::Remove { .. } => format!("node {id} removed"),
            Change::TransferLeader { .. } => format!("node {id} is the leader"),
        }
    }
}
