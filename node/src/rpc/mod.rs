//! The cluster endpoint: the gRPC services every node serves on its cluster address —
//! Raft's transport (`berth.raft.v1`, implemented in `cluster`), write forwarding and blob
//! streaming (`berth.peer.v1`), the admin service `clusterctl` talks to (`berth.admin.v1`),
//! and, in builds with the `fault-injection` feature, the test-only `Faults` service.
//!
//! With `[cluster_tls]` the endpoint serves mutual TLS (`cluster::tls`, ADR 018): every
//! connection must present a certificate the cluster CA signed. Without it, and with auth on,
//! the admin service wants an admin's credentials on every call (`admin_auth.rs`); the Raft
//! and Peer services answer anyone who reaches the port, which therefore belongs on a
//! private network.
//!
//! In `fault-injection` builds the cluster's fault layer (`cluster::FaultLayer`) wraps every
//! service: calls and streams from a peer a test partition cuts off are refused there, in one
//! place, not by each handler.
//!
//! Like `api`, these are adapters: decode, call the cluster or the registry, encode. Every
//! error that becomes a gRPC answer says its `ErrorKind`, and `status.rs` turns the kind into
//! a code in one table, for these services and for the Raft service alike.

mod admin;
mod admin_auth;
mod admin_lifecycle;
mod admin_webhooks;
mod join;
mod peer;
mod status;

pub use join::join;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use berth_proto::admin::admin_server::AdminServer;
use berth_proto::peer::peer_server::PeerServer;
use berth_proto::raft::raft_server::RaftServer;
use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::audit::Audit;
use crate::auth::Auth;
use crate::auth::manage::AuthAdmin;
use crate::gc::Collector;
use crate::gc::reaper::Reaper;
use crate::registry::Registry;
use crate::replication::Replication;
use crate::webhooks::Webhooks;

/// How long the cluster endpoint waits, after `stop`, for its connections to close by
/// themselves (peers' replication streams never do) before it closes them.
pub const GRACEFUL_STOP: Duration = Duration::from_secs(1);
/// How long it then waits for the closed connections' tasks to end.
const SEVERED_STOP: Duration = Duration::from_secs(1);

/// Serves the cluster endpoint on `listener` until `stop` is cancelled; then stops accepting,
/// lets calls in flight finish for at most [`GRACEFUL_STOP`], and closes every connection
/// still open (their tasks, and the registry handles they hold, end with them). Admin changes
/// are recorded in `audit`; `gc` runs the garbage-collection passes asked for, and `reaper`
/// reports what this node removed; `webhooks` manages the webhooks and their delivery logs.
// Each argument is one of the node's parts the services answer for, passed by the
// composition root (`crate::run`); a struct bundling them would only restate `Node`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    registry: Arc<Registry>,
    replication: Arc<Replication>,
    auth: Arc<Auth>,
    audit: Audit,
    gc: Arc<Collector>,
    reaper: Arc<Reaper>,
    webhooks: Arc<Webhooks>,
    snapshot_dir: PathBuf,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let cluster = registry.cluster().clone();
    let raft = RaftServer::new(cluster.raft_service(snapshot_dir))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let peer = PeerServer::new(peer::PeerService::new(registry.clone()));
    let guard = admin_auth::AdminGuard::new(auth.clone(), cluster.peers().tls().is_some());
    let auth_rpc = admin_auth::AuthRpc::new(AuthAdmin::new(auth, cluster.clone()), cluster.clone());
    let admin = AdminServer::new(admin::AdminService::new(
        cluster.clone(),
        replication,
        guard,
        auth_rpc,
        audit,
        gc,
        reaper,
        admin_lifecycle::LifecycleRpc::new(crate::lifecycle::Lifecycle::new(registry.clone())),
        admin_webhooks::WebhooksRpc::new(webhooks),
    ));
    let sever = CancellationToken::new();
    let incoming = {
        let sever = sever.clone();
        tokio_stream::wrappers::TcpListenerStream::new(listener)
            .map_ok(move |stream| Severable::new(stream, sever.clone()))
    };
    #[cfg(feature = "fault-injection")]
    let filter = crate::cluster::FaultLayer::new(cluster.peers().faults().clone());
    #[cfg(not(feature = "fault-injection"))]
    let filter = tower::layer::util::Identity::new();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = cluster.peers().tls() {
        // Mutual TLS (ADR 018): a connection without a certificate the cluster CA signed
        // fails in the handshake.
        builder = builder.tls_config(tls.server_config())?;
    }
    let router = builder
        .tcp_nodelay(true)
        // Raft's append streams and snapshots arrive here across regions: the same receive
        // windows as the peer connections this node dials (ADR 012).
        .initial_stream_window_size(crate::cluster::STREAM_WINDOW)
        .initial_connection_window_size(crate::cluster::CONNECTION_WINDOW)
        .layer(filter)
        .add_service(raft)
        .add_service(peer)
        .add_service(admin);
    #[cfg(feature = "fault-injection")]
    let router = router.add_service(berth_proto::admin::faults_server::FaultsServer::new(
        admin::FaultsService::new(cluster),
    ));
    let server = router.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => return served,
        () = stop.cancelled() => {}
    }
    if let Ok(served) = tokio::time::timeout(GRACEFUL_STOP, &mut server).await {
        return served;
    }
    tracing::info!("closing the cluster connections still open");
    sever.cancel();
    match tokio::time::timeout(SEVERED_STOP, &mut server).await {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!("cluster connections still open after they were closed");
            Ok(())
        }
    }
}

/// A cluster connection that fails every read and write once `sever` is cancelled, so that
/// its hyper connection (and the task tonic spawned for it) ends.
struct Severable<S> {
    io: S,
    severed: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl<S> Severable<S> {
    fn new(io: S, sever: CancellationToken) -> Severable<S> {
        Severable {
            io,
            severed: Box::pin(sever.cancelled_owned()),
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        match self.severed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the cluster endpoint is stopping",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<S: Connected> Connected for Severable<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Severable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Severable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
