//! Connections to the other nodes' cluster endpoints (gRPC), shared by every node-to-node
//! caller: Raft replication, write forwarding, blob fetches and admin relays.
//!
//! One lazily connected channel per address, reused; every call gets a deadline and the
//! `berth-from-node` metadata naming this node. With the `fault-injection` feature, a set of
//! blocked peers makes calls to them fail at once and calls from them be refused — the
//! partition the cluster tests create (docs/adr/007).
//!
//! [`Peers::call`] is the one unary-or-stream-opening call path: channel, deadline, a bound
//! on the wait, and the mapping of a failure to [`PeerError`]. `Cluster::call_member` and
//! `Cluster::call_leader` (`cluster/call.rs`) put the member lookup in front of it; every
//! node-to-node caller but Raft's own client (`network.rs`, which openraft hands the address)
//! goes through them.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use berth_proto::FROM_NODE_HEADER;
use tonic::transport::{Channel, Endpoint};

use crate::meta::NodeId;
use crate::types::ErrorKind;

/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 keep-alive ping interval on peer connections.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// A peer that does not answer a keep-alive ping within this is dead to its streams.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a peer could not be called.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The address is not usable.
    #[error("bad cluster address {addr:?}: {reason}")]
    BadAddress {
        /// The address.
        addr: String,
        /// What is wrong.
        reason: String,
    },
    /// A test partition cuts this node off from the peer.
    #[error("node {0} is cut off by a test partition")]
    Partitioned(NodeId),
    /// The node is not in the membership this node knows.
    #[error("node {0} is not a member of the cluster")]
    NotMember(NodeId),
    /// No leader is known to call.
    #[error("no leader is known; the cluster may have no quorum")]
    NoLeader,
    /// The call failed.
    #[error("call to node {node} at {addr} failed: {}", status.message())]
    Call {
        /// The peer.
        node: NodeId,
        /// Its address.
        addr: String,
        /// What the peer or the transport answered.
        status: Box<tonic::Status>,
    },
}

impl PeerError {
    /// The broad class of the error. A failed call is [`ErrorKind::Unavailable`] from this
    /// node's side whatever the peer answered (its status is kept in the error).
    pub fn kind(&self) -> ErrorKind {
        match self {
            PeerError::BadAddress { .. } => ErrorKind::Invalid,
            PeerError::NotMember(_) => ErrorKind::NotFound,
            PeerError::Partitioned(_) | PeerError::NoLeader | PeerError::Call { .. } => {
                ErrorKind::Unavailable
            }
        }
    }

    /// The gRPC status, when the call got that far.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            PeerError::Call { status, .. } => Some(status),
            _ => None,
        }
    }

    /// Whether the peer could not be reached at all (as opposed to answering an error).
    pub fn is_unreachable(&self) -> bool {
        match self {
            PeerError::BadAddress { .. }
            | PeerError::Partitioned(_)
            | PeerError::NotMember(_)
            | PeerError::NoLeader => true,
            PeerError::Call { status, .. } => status.code() == tonic::Code::Unavailable,
        }
    }
}

/// This node's connections to its peers.
#[derive(Debug)]
pub struct Peers {
    me: NodeId,
    channels: Mutex<HashMap<String, Channel>>,
    /// Peers a test partition cuts off (always empty without `fault-injection`).
    blocked: Mutex<BTreeSet<NodeId>>,
}

impl Peers {
    /// Connections made on behalf of node `me`.
    pub fn new(me: NodeId) -> Peers {
        Peers {
            me,
            channels: Mutex::default(),
            blocked: Mutex::default(),
        }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// A channel to `addr` (`host:port`) for a call to `node`, unless a test partition cuts it.
    pub fn channel(&self, node: NodeId, addr: &str) -> Result<Channel, PeerError> {
        if self.cut_off(node) {
            return Err(PeerError::Partitioned(node));
        }
        let mut channels = self.channels.lock().expect("peer channel map poisoned");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let bad = |reason: String| PeerError::BadAddress {
            addr: addr.to_string(),
            reason,
        };
        if addr.is_empty() {
            return Err(bad("empty".to_string()));
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // Long-lived replication streams notice a dead or hung peer by keep-alive.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Wraps a message into a request with a deadline and this node's id.
    pub fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = self.stream_request(message);
        req.set_timeout(timeout);
        req
    }

    /// Wraps a long-lived stream into a request carrying this node's id, without a deadline
    /// on the whole call (the caller bounds its setup; keep-alive bounds the rest).
    pub fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut().insert(
            FROM_NODE_HEADER,
            self.me
                .to_string()
                .parse()
                .expect("digits are valid metadata"),
        );
        req
    }

    /// Calls `node` at `addr`: `call` gets the channel and `message` wrapped with a deadline of
    /// `timeout` (see [`Peers::request`]), and the wait for its answer is bounded by the same
    /// `timeout` here, so a hung peer cannot hold the caller past it. For a streaming call the
    /// bound covers opening the stream; the peer's deadline covers the whole stream.
    ///
    /// Errors: [`PeerError::Partitioned`] or [`PeerError::BadAddress`] before calling;
    /// [`PeerError::Call`] with what the peer or the transport answered, or
    /// `DEADLINE_EXCEEDED` when no answer came within `timeout`.
    pub async fn call<M, T, F, Fut>(
        &self,
        node: NodeId,
        addr: &str,
        timeout: Duration,
        message: M,
        call: F,
    ) -> Result<T, PeerError>
    where
        F: FnOnce(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let channel = self.channel(node, addr)?;
        let answer = tokio::time::timeout(timeout, call(channel, self.request(message, timeout)))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded(no_answer_within(timeout))));
        answer
            .map(tonic::Response::into_inner)
            .map_err(|status| Self::call_error(node, addr, status))
    }

    /// Turns a failed call into a [`PeerError`].
    pub fn call_error(node: NodeId, addr: &str, status: tonic::Status) -> PeerError {
        PeerError::Call {
            node,
            addr: addr.to_string(),
            status: Box::new(status),
        }
    }

    /// The node an incoming call names as its sender.
    pub fn sender<T>(req: &tonic::Request<T>) -> Option<NodeId> {
        req.metadata()
            .get(FROM_NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<NodeId>().ok())
    }

    /// Refuses an incoming call from a peer a test partition cuts off
    /// ([`PeerError::Partitioned`]).
    pub fn admit<T>(&self, req: &tonic::Request<T>) -> Result<(), PeerError> {
        match Self::sender(req) {
            Some(n) if self.cut_off(n) => Err(PeerError::Partitioned(n)),
            _ => Ok(()),
        }
    }

    /// Replaces the set of peers cut off from this node (fault injection; empty heals).
    #[cfg(feature = "fault-injection")]
    pub fn set_blocked(&self, nodes: BTreeSet<NodeId>) {
        tracing::warn!(?nodes, "test partition: peers cut off");
        *self.blocked.lock().expect("blocked set poisoned") = nodes;
    }

    /// Whether a test partition cuts `node` off (the HTTP relay checks it too, through
    /// `Cluster::reachable_member`).
    pub fn cut_off(&self, node: NodeId) -> bool {
        self.blocked
            .lock()
            .expect("blocked set poisoned")
            .contains(&node)
    }
}

/// "no answer within 1 s", or in milliseconds when the timeout is not whole seconds.
fn no_answer_within(timeout: Duration) -> String {
    if timeout.subsec_millis() == 0 {
        format!("no answer within {} s", timeout.as_secs())
    } else {
        format!("no answer within {} ms", timeout.as_millis())
    }
}
