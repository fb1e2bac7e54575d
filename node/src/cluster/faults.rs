//! The fault layer between this node and its peers: one table of the faults a test injects
//! (which peers are cut off, and the link — delay, bandwidth — to each), read by the three
//! places that enforce it, as TiKV's transport filters are (docs/adr/007, ADR 012):
//!
//! - the client side, [`Peers::channel`](super::Peers::channel): a call to a blocked peer fails
//!   at once with `PeerError::Partitioned` (and `Cluster::reachable_member` refuses the HTTP
//!   relay the same way);
//! - the connections this node dials (`link.rs`): each one's bytes go through an in-process
//!   delay proxy that applies the peer's link live, and that closes the connection the moment
//!   the peer is blocked, so streams open before a partition end with it;
//! - the server side, [`FaultLayer`] over every service of the cluster endpoint: a call whose
//!   `berth-from-node` sender is blocked is refused with `UNAVAILABLE`, and a stream it has
//!   open (request or response) ends with that status when the sender becomes blocked.
//!
//! Only builds with the `fault-injection` feature can change the table (the `Faults` gRPC
//! service) or have the proxy and the server layer; in a release build the table stays empty
//! and [`Faults::is_blocked`] is a constant `false`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::meta::NodeId;

/// The emulated network path to one peer, applied to every connection this node dials to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// Added to each direction (a round trip gains twice this).
    pub delay: Duration,
    /// Bytes per second in each direction; `None`: unlimited.
    pub bandwidth: Option<u64>,
}

#[derive(Debug, Default)]
struct Table {
    blocked: BTreeSet<NodeId>,
    links: BTreeMap<NodeId, Link>,
}

/// The faults in force at this node (see the module docs).
#[derive(Debug)]
pub struct Faults {
    /// The table, published through a watch channel so that open connections and streams
    /// learn of every change.
    table: tokio::sync::watch::Sender<Table>,
    /// The bottleneck of each direction of the link to each peer, shared by every connection
    /// to that peer (a WAN path is one queue, whichever connection the bytes belong to).
    #[cfg(feature = "fault-injection")]
    bottlenecks: std::sync::Mutex<BTreeMap<(NodeId, bool), super::link::SharedBottleneck>>,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults::new()
    }
}

impl Faults {
    /// No faults.
    pub fn new() -> Faults {
        Faults {
            table: tokio::sync::watch::Sender::new(Table::default()),
            #[cfg(feature = "fault-injection")]
            bottlenecks: std::sync::Mutex::default(),
        }
    }

    /// The bottleneck of the link to `node` in one direction (`outbound`: from this node).
    #[cfg(feature = "fault-injection")]
    pub(super) fn bottleneck(&self, node: NodeId, outbound: bool) -> super::link::SharedBottleneck {
        self.bottlenecks
            .lock()
            .expect("bottlenecks poisoned")
            .entry((node, outbound))
            .or_default()
            .clone()
    }

    /// Whether a test partition cuts `node` off from this node.
    pub fn is_blocked(&self, node: NodeId) -> bool {
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = node;
            false
        }
        #[cfg(feature = "fault-injection")]
        self.table.borrow().blocked.contains(&node)
    }

    /// The link to `node`, when one is set.
    pub fn link(&self, node: NodeId) -> Option<Link> {
        self.table.borrow().links.get(&node).copied()
    }

    /// Replaces the set of peers cut off from this node (empty heals).
    #[cfg(feature = "fault-injection")]
    pub fn set_blocked(&self, nodes: BTreeSet<NodeId>) {
        tracing::warn!(?nodes, "test partition: peers cut off");
        self.table.send_modify(|t| t.blocked = nodes);
    }

    /// Replaces the links to peers (empty clears them all). Applies to open connections.
    #[cfg(feature = "fault-injection")]
    pub fn set_links(&self, links: BTreeMap<NodeId, Link>) {
        tracing::warn!(?links, "test links to peers set");
        self.table.send_modify(|t| t.links = links);
    }

    /// Resolves once `node` is blocked (at once if it is now); pending forever otherwise.
    pub fn blocked(&self, node: NodeId) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut table = self.table.subscribe();
        async move {
            loop {
                if table.borrow_and_update().blocked.contains(&node) {
                    return;
                }
                if table.changed().await.is_err() {
                    // The table went with its node: nothing blocks this peer any more.
                    return std::future::pending().await;
                }
            }
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use filter::FaultLayer;

/// The server side of the fault layer: a tower layer over every service of the cluster
/// endpoint.
#[cfg(feature = "fault-injection")]
mod filter {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use berth_proto::FROM_NODE_HEADER;
    use bytes::Bytes;
    use http_body::Frame;
    use tonic::body::Body;

    use super::Faults;
    use crate::cluster::PeerError;
    use crate::meta::NodeId;

    /// Refuses calls from blocked peers and ends their open streams (see the module docs).
    #[derive(Debug, Clone)]
    pub struct FaultLayer {
        faults: Arc<Faults>,
    }

    impl FaultLayer {
        /// A layer enforcing `faults`.
        pub fn new(faults: Arc<Faults>) -> FaultLayer {
            FaultLayer { faults }
        }
    }

    impl<S> tower::Layer<S> for FaultLayer {
        type Service = FaultFilter<S>;

        fn layer(&self, inner: S) -> FaultFilter<S> {
            FaultFilter {
                inner,
                faults: self.faults.clone(),
            }
        }
    }

    /// The service [`FaultLayer`] wraps around the cluster endpoint's routes.
    #[derive(Debug, Clone)]
    pub struct FaultFilter<S> {
        inner: S,
        faults: Arc<Faults>,
    }

    /// What a blocked sender is answered: UNAVAILABLE, through the one table of codes.
    fn refusal(node: NodeId) -> tonic::Status {
        PeerError::Partitioned(node).into()
    }

    impl<S> tower::Service<http::Request<Body>> for FaultFilter<S>
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
        S::Future: Send + 'static,
    {
        type Response = http::Response<Body>;
        type Error = S::Error;
        type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let sender = req
                .headers()
                .get(FROM_NODE_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<NodeId>().ok());
            // Calls that name no sender (clusterctl, the harness) are never filtered.
            let Some(node) = sender else {
                return Box::pin(self.inner.call(req));
            };
            if self.faults.is_blocked(node) {
                let answer = refusal(node).into_http();
                return Box::pin(async move { Ok(answer) });
            }
            let faults = self.faults.clone();
            let req = req.map(|b| Body::new(CutBody::new(b, &faults, node, Side::Request)));
            let answer = self.inner.call(req);
            Box::pin(async move {
                let resp = answer.await?;
                Ok(resp.map(|b| Body::new(CutBody::new(b, &faults, node, Side::Response))))
            })
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Side {
        Request,
        Response,
    }

    /// A body that ends with UNAVAILABLE once its peer is blocked: a request stream fails
    /// with that status, a response stream ends with it in its trailers.
    struct CutBody {
        inner: Body,
        cut: Pin<Box<dyn Future<Output = ()> + Send>>,
        node: NodeId,
        side: Side,
        ended: bool,
    }

    impl CutBody {
        fn new(inner: Body, faults: &Faults, node: NodeId, side: Side) -> CutBody {
            CutBody {
                inner,
                cut: Box::pin(faults.blocked(node)),
                node,
                side,
                ended: false,
            }
        }
    }

    impl http_body::Body for CutBody {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            let this = self.get_mut();
            if this.ended {
                return Poll::Ready(None);
            }
            if this.cut.as_mut().poll(cx).is_ready() {
                this.ended = true;
                let status = refusal(this.node);
                return Poll::Ready(Some(match this.side {
                    Side::Request => Err(status),
                    Side::Response => {
                        let mut trailers = http::HeaderMap::new();
                        match status.add_header(&mut trailers) {
                            Ok(()) => Ok(Frame::trailers(trailers)),
                            Err(status) => Err(status),
                        }
                    }
                }));
            }
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            if let Poll::Ready(None) = polled {
                this.ended = true;
            }
            polled
        }

        fn is_end_stream(&self) -> bool {
            self.ended || self.inner.is_end_stream()
        }

        fn size_hint(&self) -> http_body::SizeHint {
            self.inner.size_hint()
        }
    }
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    use berth_proto::FROM_NODE_HEADER;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tonic::body::Body;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    /// A service that answers with a body streaming `chunks` slowly (one per 50 ms).
    fn slow_stream(
        chunks: usize,
    ) -> impl Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(move |_req: http::Request<Body>| async move {
            let frames = futures::stream::unfold(0, move |i| async move {
                if i == chunks {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let frame = http_body::Frame::data(Bytes::from_static(b"chunk"));
                Some((Ok::<_, tonic::Status>(frame), i + 1))
            });
            Ok(http::Response::new(Body::new(
                http_body_util::StreamBody::new(frames),
            )))
        })
    }

    fn request(from: Option<NodeId>) -> http::Request<Body> {
        let mut req = http::Request::new(Body::empty());
        if let Some(n) = from {
            req.headers_mut()
                .insert(FROM_NODE_HEADER, n.to_string().parse().unwrap());
        }
        req
    }

    fn grpc_status(headers: &http::HeaderMap) -> Option<&str> {
        headers.get("grpc-status").and_then(|v| v.to_str().ok())
    }

    /// A call from a blocked peer is refused with UNAVAILABLE (14); others pass.
    #[tokio::test]
    async fn calls_from_a_blocked_peer_are_refused() {
        let faults = Arc::new(Faults::new());
        faults.set_blocked([3].into());
        let svc = FaultLayer::new(faults).layer(slow_stream(1));
        let refused = svc.clone().oneshot(request(Some(3))).await.unwrap();
        assert_eq!(grpc_status(refused.headers()), Some("14"));
        for from in [Some(2), None] {
            let passed = svc.clone().oneshot(request(from)).await.unwrap();
            assert_eq!(grpc_status(passed.headers()), None);
            let body = passed.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"chunk");
        }
    }

    /// A stream open from a peer that then gets blocked ends with UNAVAILABLE in its trailers.
    #[tokio::test]
    async fn an_open_stream_ends_when_its_peer_is_blocked() {
        let faults = Arc::new(Faults::new());
        let svc = FaultLayer::new(faults.clone()).layer(slow_stream(1000));
        let mut body = svc.oneshot(request(Some(3))).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        faults.set_blocked([3].into());
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let frame = body.frame().await.expect("a frame").expect("no error");
                if let Ok(trailers) = frame.into_trailers() {
                    return trailers;
                }
            }
        })
        .await
        .expect("the stream did not end");
        assert_eq!(grpc_status(&ended), Some("14"));
        assert!(body.frame().await.is_none());
    }
}
