//! berth node: the OCI Distribution API over Raft-replicated metadata and a local blob store.
//!
//! Modules, each with one job (dependencies point down):
//!
//! - [`types`]: wire value types (digests, names, references, ranges, manifests); no IO.
//! - [`blobstore`]: content-addressed blob files on local disk; knows digests, not repos.
//! - [`meta`]: the Raft log store and state machine in RocksDB; the only user of RocksDB.
//! - [`cluster`]: this node's Raft instance; proposes metadata writes.
//! - [`registry`]: the use cases (push, pull, delete, lists) over the three above.
//! - [`api`]: the HTTP adapter (axum) of the OCI Distribution API.
//! - [`rpc`]: the gRPC adapter (tonic) of the cluster endpoint: Raft, forwarding, blob
//!   streaming, admin.
//! - [`space`]: free space of the data directory's file system (upload reserve, metadata
//!   write floor).
//! - [`config`]: configuration loading and validation.
//!
//! [`run`] is the composition root: it wires the concrete parts and serves until shutdown.

pub mod api;
pub mod blobstore;
pub mod cluster;
pub mod config;
pub mod meta;
pub mod registry;
pub mod rpc;
pub mod space;
pub mod types;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::blobstore::{BlobStore, BlobStoreError};
use crate::cluster::{Bootstrap, Cluster, ClusterError, Peers};
use crate::config::Config;
use crate::meta::{MetaError, NodeInfo};
use crate::registry::Registry;

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The blob store could not be opened.
    #[error("failed to open the blob store")]
    BlobStore(#[from] BlobStoreError),
    /// The metadata store could not be opened.
    #[error("failed to open the metadata store")]
    Meta(#[from] MetaError),
    /// Raft could not start.
    #[error("failed to start the cluster")]
    Cluster(#[from] ClusterError),
    /// Serving failed.
    #[error("failed to serve")]
    Serve(#[from] std::io::Error),
    /// Serving the cluster endpoint failed.
    #[error("failed to serve the cluster endpoint")]
    ServeCluster(#[from] tonic::transport::Error),
}

/// How often idle upload sessions are looked for.
const UPLOAD_EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// A started node: its registry (for in-process tests) and its cluster handle.
#[derive(Debug, Clone)]
pub struct Node {
    /// The registry use cases.
    pub registry: Arc<Registry>,
}

impl Node {
    /// Opens storage and starts Raft; returns once a leader is known or `leader_wait` passed
    /// (without waiting when the node is waiting to join a cluster). The node advertises
    /// `config.advertised_url()` and `config.advertised_cluster()`.
    pub async fn start(config: &Config, leader_wait: Duration) -> Result<Node, RunError> {
        let blobs = Arc::new(
            BlobStore::open(&config.data_dir)?
                .with_direct_writes(config.storage.direct_writes)
                .with_reserve(config.storage.reserve()),
        );
        let (log_store, state_machine, reader) = meta::open(&config.data_dir)?;
        let bootstrap = if config.join.is_some() {
            Bootstrap::Join
        } else {
            Bootstrap::Initialize
        };
        let cluster = Cluster::start(
            config.node_id,
            node_info(config),
            log_store,
            state_machine,
            &config.raft_settings(),
            Arc::new(Peers::new(config.node_id)),
            bootstrap,
        )
        .await?;
        if !leader_wait.is_zero() && !cluster.awaiting_join() {
            wait_for_leader(&cluster, leader_wait).await;
        }
        let registry = Registry::new(blobs, reader, cluster, config.registry_settings());
        Ok(Node { registry })
    }

    /// The HTTP router of this node.
    pub fn router(&self) -> axum::Router {
        api::router(self.registry.clone())
    }

    /// Stops Raft (after the HTTP front has stopped).
    pub async fn stop(&self) {
        self.registry.cluster().shutdown().await;
    }
}

/// What the cluster records of this node.
fn node_info(config: &Config) -> NodeInfo {
    NodeInfo {
        url: config.advertised_url(),
        cluster_addr: config.advertised_cluster(),
        region: config.region.clone(),
        zone: config.zone.clone(),
    }
}

async fn wait_for_leader(cluster: &Cluster, wait: Duration) {
    if !cluster.wait_for_leader(wait).await {
        tracing::warn!(
            waited_ms = wait.as_millis() as u64,
            "no raft leader yet; writes answer 503 until one is elected"
        );
    }
}

/// Runs a node on its bound listeners (registry HTTP, cluster gRPC) until `shutdown`
/// resolves; then stops accepting, gives in-flight requests `config.shutdown_grace_secs` to
/// finish, and stops Raft. Unset advertised addresses default to the bound ones.
pub async fn run(
    mut config: Config,
    listener: tokio::net::TcpListener,
    cluster_listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    if config.advertise_url.is_none() {
        config.advertise_url = Some(format!("http://{}", listener.local_addr()?));
    }
    if config.advertise_cluster.is_none() {
        config.advertise_cluster = Some(cluster_listener.local_addr()?.to_string());
    }
    let node = Node::start(&config, Duration::ZERO).await?;
    let stop = CancellationToken::new();
    let cluster = node.registry.cluster().clone();

    // The cluster endpoint first: peers must reach this node before it can have a leader.
    // It keeps serving through the HTTP grace period (in-flight writes need Raft) and stops
    // after Raft.
    let rpc_stop = CancellationToken::new();
    let rpc = tokio::spawn(rpc::serve(
        node.registry.clone(),
        config.data_dir.join("snapshots"),
        cluster_listener,
        rpc_stop.clone(),
    ));
    let joiner = match (&config.join, cluster.awaiting_join()) {
        (Some(addr), true) => Some(tokio::spawn(rpc::join(
            cluster.clone(),
            addr.clone(),
            node_info(&config),
            stop.clone(),
        ))),
        _ => {
            wait_for_leader(&cluster, Duration::from_secs(10)).await;
            None
        }
    };

    let expiry = tokio::spawn({
        let registry = node.registry.clone();
        let stop = stop.clone();
        async move {
            let mut tick = tokio::time::interval(UPLOAD_EXPIRY_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let n = registry.expire_idle_uploads().await;
                        if n > 0 {
                            tracing::info!(expired = n, "cancelled idle uploads");
                        }
                    }
                }
            }
        }
    });

    tracing::info!(
        listen = %listener.local_addr()?,
        cluster = %config.advertised_cluster(),
        data_dir = %config.data_dir.display(),
        node_id = config.node_id,
        "berth is serving"
    );
    let serve = axum::serve(listener, node.router())
        .with_graceful_shutdown({
            let stop = stop.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections; finishing requests in flight");
                stop.cancel();
            }
        })
        .into_future();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let served = tokio::select! {
        res = serve => res,
        () = deadline => {
            tracing::warn!(grace_secs = grace.as_secs(), "requests still in flight after the grace period; closing them");
            Ok(())
        }
    };
    stop.cancel();
    let _ = expiry.await;
    if let Some(j) = joiner {
        let _ = j.await;
    }
    // Raft first (it may still be sending to peers), then the cluster endpoint.
    node.stop().await;
    rpc_stop.cancel();
    match rpc.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "cluster endpoint stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "cluster endpoint task failed"),
        Ok(Ok(())) => {}
    }
    tracing::info!("stopped");
    Ok(served?)
}
