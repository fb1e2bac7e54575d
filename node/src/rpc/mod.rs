//! The cluster endpoint: the gRPC services every node serves on its cluster address —
//! Raft's transport (`berth.raft.v1`, implemented in `cluster`), write forwarding and blob
//! streaming (`berth.peer.v1`), the admin service `clusterctl` talks to (`berth.admin.v1`),
//! and, in builds with the `fault-injection` feature, the test-only `Faults` service.
//!
//! Like `api`, these are adapters: decode, call the cluster or the registry, encode. Every
//! error that becomes a gRPC answer says its `ErrorKind`, and `status.rs` turns the kind into
//! a code in one table, for these services and for the Raft service alike.

mod admin;
mod join;
mod peer;
mod status;

pub use join::join;

use std::path::PathBuf;
use std::sync::Arc;

use berth_proto::admin::admin_server::AdminServer;
use berth_proto::peer::peer_server::PeerServer;
use berth_proto::raft::raft_server::RaftServer;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

/// Serves the cluster endpoint on `listener` until `stop` is cancelled.
pub async fn serve(
    registry: Arc<Registry>,
    snapshot_dir: PathBuf,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let cluster = registry.cluster().clone();
    let raft = RaftServer::new(cluster.raft_service(snapshot_dir))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let peer = PeerServer::new(peer::PeerService::new(registry.clone()));
    let admin = AdminServer::new(admin::AdminService::new(cluster.clone()));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(raft)
        .add_service(peer)
        .add_service(admin);
    #[cfg(feature = "fault-injection")]
    let router = router.add_service(berth_proto::admin::faults_server::FaultsServer::new(
        admin::FaultsService::new(cluster),
    ));
    router
        .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await })
        .await
}
