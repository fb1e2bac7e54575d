//! Connections to the other nodes' cluster endpoints (gRPC), shared by every node-to-node
//! caller: Raft replication, write forwarding, blob fetches, probes and admin relays.
//!
//! Lazily connected channels per peer, reused: one for Raft and the small calls, and one each
//! for blob streams a client or a manifest PUT waits for and for replication's paced copies
//! ([`Lane`]): a paced stream leaves up to a stream window of bytes unread in its connection's
//! window, and those must not hold back Raft's answers or an unpaced read. Every call gets a
//! deadline and the
//! `berth-from-node` metadata naming this node. The client side of the fault layer
//! (`faults.rs`) is here and nowhere else: [`Peers::channel`] refuses a peer a test partition
//! cuts off, and — in `fault-injection` builds — dials through the in-process delay proxy
//! (`link.rs`) that applies the peer's link and closes the connection when the peer is cut.
//!
//! [`Peers::call`] is the one unary-or-stream-opening call path: channel, deadline, a bound
//! on the wait, and the mapping of a failure to [`PeerError`]. `Cluster::call_member` and
//! `Cluster::call_leader` (`cluster/call.rs`) put the member lookup in front of it; every
//! node-to-node caller but Raft's own client (`network.rs`, which openraft hands the address)
//! goes through them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::FROM_NODE_HEADER;
use tonic::transport::{Channel, Endpoint};

use super::faults::Faults;
use crate::meta::NodeId;
use crate::types::ErrorKind;

/// HTTP/2 receive window of one stream on a peer connection (both ends): what may be in flight
/// unacknowledged, so the most one stream carries per round trip.
pub const STREAM_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame a peer may send on a blob stream's connection (a blob message is at
/// most 1 MiB).
const BLOB_FRAME: u32 = 1 << 20;
/// HTTP/2 receive window of a whole peer connection.
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// How long connecting to a peer may take (a TCP handshake across regions costs a round
/// trip of up to a few hundred milliseconds).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
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

/// Which of a peer's connections a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Raft, write forwarding, probes, admin relays, durability requests.
    Control,
    /// Blob streams a client or a manifest PUT waits for.
    Reads,
    /// Blob streams of replication copies, which may pause for their pace.
    Copies,
}

/// This node's connections to its peers.
#[derive(Debug)]
pub struct Peers {
    me: NodeId,
    /// By peer, address and lane (a peer's channels dial through that peer's link).
    channels: Mutex<HashMap<(NodeId, String, Lane), Channel>>,
    /// The faults a test injects (always empty without `fault-injection`).
    faults: Arc<Faults>,
    /// Mutual TLS on every connection, when `[cluster_tls]` is set.
    tls: Option<super::tls::ClusterTls>,
}

impl Peers {
    /// Connections made on behalf of node `me`.
    pub fn new(me: NodeId) -> Peers {
        Peers {
            me,
            channels: Mutex::default(),
            faults: Arc::new(Faults::new()),
            tls: None,
        }
    }

    /// These connections, dialled with mutual TLS when `tls` is set (ADR 018).
    pub fn with_tls(mut self, tls: Option<super::tls::ClusterTls>) -> Peers {
        self.tls = tls;
        self
    }

    /// The cluster TLS these connections use, when `[cluster_tls]` is set.
    pub fn tls(&self) -> Option<&super::tls::ClusterTls> {
        self.tls.as_ref()
    }

    /// An endpoint for the cluster address `addr` (`host:port`), with this node's TLS.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        super::tls::endpoint(addr, self.tls.as_ref())
    }

    /// The fault table this node's connections obey (see `faults.rs`).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// A channel to `addr` (`host:port`) for a call to `node`, unless a test partition cuts it.
    pub fn channel(&self, node: NodeId, addr: &str) -> Result<Channel, PeerError> {
        self.channel_on(Lane::Control, node, addr)
    }

    /// As [`Peers::channel`], on the connection of `lane`.
    pub fn channel_on(&self, lane: Lane, node: NodeId, addr: &str) -> Result<Channel, PeerError> {
        if self.faults.is_blocked(node) {
            return Err(PeerError::Partitioned(node));
        }
        let key = (node, addr.to_string(), lane);
        let mut channels = self.channels.lock().expect("peer channel map poisoned");
        if let Some(c) = channels.get(&key) {
            return Ok(c.clone());
        }
        let bad = |reason: String| PeerError::BadAddress {
            addr: addr.to_string(),
            reason,
        };
        if addr.is_empty() {
            return Err(bad("empty".to_string()));
        }
        let endpoint = self
            .endpoint(addr)
            .map_err(bad)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // Long-lived replication streams notice a dead or hung peer by keep-alive.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            // Receive windows for round trips between regions (ADR 012): hyper's defaults
            // (2 MiB per stream) cap a blob stream at 2 MiB per round trip, ~7 MB/s at 300 ms.
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            // Blob streams in frames of up to a message (fewer frames to cut and reassemble);
            // Raft's connection keeps small frames, so a message never waits behind a large one.
            .max_frame_size((lane != Lane::Control).then_some(BLOB_FRAME));
        #[cfg(feature = "fault-injection")]
        let channel =
            endpoint.connect_with_connector_lazy(super::link::connector(node, self.faults.clone()));
        #[cfg(not(feature = "fault-injection"))]
        let channel = endpoint.connect_lazy();
        channels.insert(key, channel.clone());
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

    /// Calls `node` at `addr` on the connection of `lane`: `call` gets the channel and `message`
    /// wrapped with a deadline of `timeout` (see [`Peers::request`]), and the wait for its
    /// answer is bounded by the same `timeout` here, so a hung peer cannot hold the caller past it. For a streaming call the
    /// bound covers opening the stream; the peer's deadline covers the whole stream.
    ///
    /// Errors: [`PeerError::Partitioned`] or [`PeerError::BadAddress`] before calling;
    /// [`PeerError::Call`] with what the peer or the transport answered, or
    /// `DEADLINE_EXCEEDED` when no answer came within `timeout`.
    pub async fn call<M, T, F, Fut>(
        &self,
        lane: Lane,
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
        let channel = self.channel_on(lane, node, addr)?;
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
}

/// "no answer within 1 s", or in milliseconds when the timeout is not whole seconds.
fn no_answer_within(timeout: Duration) -> String {
    if timeout.subsec_millis() == 0 {
        format!("no answer within {} s", timeout.as_secs())
    } else {
        format!("no answer within {} ms", timeout.as_millis())
    }
}
