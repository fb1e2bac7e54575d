//! berth node: the OCI Distribution API over Raft-replicated metadata and a local blob store.
//!
//! Modules, each with one job (dependencies point down):
//!
//! - [`types`]: wire value types (digests, names, references, ranges, manifests); no IO.
//! - [`blobstore`]: content-addressed blob files on local disk; knows digests, not repos.
//! - [`meta`]: the Raft log store and state machine in RocksDB; the only user of RocksDB.
//! - [`cluster`]: this node's Raft instance; proposes metadata writes.
//! - [`registry`]: the use cases (push, pull, delete, lists) over the three above.
//! - [`replication`]: placement of blobs by region, per-repository policies, the replicator
//!   that copies what this node should hold, and replication status.
//! - [`auth`]: credentials, registry tokens and grants (over the auth records in `meta`).
//! - [`audit`]: this node's audit log (logins, tokens, pushes, deletes, admin changes,
//!   network refusals): a non-blocking recorder over `meta`'s `audit` column family, with
//!   retention and a JSON-lines export.
//! - [`gc`]: garbage collection of blobs: the collector that decides (through Raft) and the
//!   reaper that removes this node's copies.
//! - [`lifecycle`]: locks, soft delete and restores, retention policies, namespaces and their
//!   limits: validated and committed through Raft (the state and its checks are in `meta`).
//! - [`webhooks`]: webhook definitions (through Raft) and the delivery of the event stream
//!   derived from applied commands, at least once, in order per repository.
//! - [`api`]: the HTTP adapter (axum) of the OCI Distribution API and the token endpoint.
//! - [`rpc`]: the gRPC adapter (tonic) of the cluster endpoint: Raft, forwarding, blob
//!   streaming, admin.
//! - [`server`]: the HTTP server loop: connections, timeouts, connection cap, draining of
//!   unread request bodies.
//! - [`metrics`]: the node's Prometheus metric families, rendered at `GET /metrics`
//!   (`[metrics] enabled`); the gauges of the other modules' state are refreshed at each
//!   scrape by the hooks [`Node::start`] registers.
//! - [`space`]: free space of the data directory's file system (upload reserve, metadata
//!   write floor).
//! - [`config`]: configuration loading and validation.
//!
//! [`run`] is the composition root: it wires the concrete parts and serves until shutdown.

pub mod api;
pub mod audit;
pub mod auth;
pub mod blobstore;
pub mod cluster;
pub mod config;
pub mod gc;
pub mod lifecycle;
pub mod meta;
pub mod metrics;
pub mod registry;
pub mod replication;
pub mod rpc;
pub mod server;
pub mod space;
pub mod types;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::blobstore::{BlobStore, BlobStoreError};
use crate::cluster::{Bootstrap, Cluster, ClusterError, Peers};
use crate::config::Config;
use crate::meta::{MetaCloser, MetaError, NodeInfo};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replication::{Replication, ReplicationWorker, ScrubWorker};

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
    /// The bootstrap admin password file could not be read.
    #[error("failed to read auth.bootstrap_admin_password_file")]
    AuthConfig(#[source] std::io::Error),
    /// The webhook client could not be set up (`webhooks.ca_file`).
    #[error("failed to set up webhook delivery")]
    Webhooks(#[source] webhooks::WebhookError),
    /// The TLS certificate or key of the registry port could not be used.
    #[error("failed to set up TLS on the registry port")]
    Tls(#[from] server::tls::TlsError),
}

/// An error and its sources on one line, `error: source: source…`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// How often idle upload sessions are looked for.
const UPLOAD_EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// The most a shutdown takes after the HTTP grace period: background tasks
/// ([`TASKS_STOP`]), Raft ([`RAFT_STOP`]), the cluster endpoint ([`rpc::GRACEFUL_STOP`] and
/// as long again to close what is left), then the metadata store, each bounded.
pub const STOP_MARGIN: Duration = Duration::from_secs(5);
/// How long the background tasks (upload expiry, joining, replicator, scrubber), together,
/// get to end after the HTTP front.
const TASKS_STOP: Duration = Duration::from_secs(1);
/// How long Raft gets to stop.
const RAFT_STOP: Duration = Duration::from_millis(1500);
/// The least time the metadata store gets to close in a shutdown.
const STORE_CLOSE_MIN: Duration = Duration::from_millis(500);
/// How long [`Node::stop`] waits for the metadata store to close.
const STORE_CLOSE: Duration = Duration::from_secs(10);

/// A started node: its registry (for in-process tests) and its cluster handle.
#[derive(Debug)]
pub struct Node {
    /// The registry use cases.
    pub registry: Arc<Registry>,
    /// Replication status and policies (the replicator runs only under [`run`]).
    pub replication: Arc<Replication>,
    /// Credentials and grants of the registry port.
    pub auth: Arc<auth::Auth>,
    /// This node's audit log.
    pub audit: audit::Audit,
    /// Garbage collection: the passes this node runs (scheduled on the leader, or asked for).
    pub gc: Arc<gc::Collector>,
    /// Removes this node's copies of collected blobs.
    pub reaper: Arc<gc::reaper::Reaper>,
    /// Webhooks: definitions, pings, delivery logs (the dispatcher runs only under [`run`]).
    pub webhooks: Arc<webhooks::Webhooks>,
    /// Who this node is and where its request metrics go (the HTTP middleware's view).
    telemetry: api::Telemetry,
    /// Closes the metadata store once every other handle on it is gone.
    closer: MetaCloser,
}

impl Node {
    /// Opens storage and starts Raft; returns once a leader is known or `leader_wait` passed
    /// (without waiting when the node is waiting to join a cluster). The node advertises
    /// `config.advertised_url()` and `config.advertised_cluster()`.
    pub async fn start(config: &Config, leader_wait: Duration) -> Result<Node, RunError> {
        // The cluster certificates load before storage opens: a bad file fails start-up.
        let cluster_tls = config
            .cluster_tls
            .files()
            .map(|f| cluster::tls::ClusterTls::load(&f))
            .transpose()?;
        let blobs = Arc::new(
            BlobStore::open(&config.data_dir)?
                .with_direct_writes(config.storage.direct_writes)
                .with_reserve(config.storage.reserve()),
        );
        let (log_store, state_machine, reader, audit_store, closer) =
            meta::open_closable(&config.data_dir)?;
        let audit = audit::Audit::start(audit_store, config.audit_settings());
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
            Arc::new(Peers::new(config.node_id).with_tls(cluster_tls)),
            bootstrap,
        )
        .await?;
        if !leader_wait.is_zero() && !cluster.awaiting_join() {
            wait_for_leader(&cluster, leader_wait).await;
        }
        let metrics = Metrics::new(config.node_id, &config.region, &config.zone);
        register_peer_gauges(&metrics, &cluster);
        cluster.count_proposals_in(metrics.raft_proposals.clone());
        let replication = Replication::new(
            reader.clone(),
            cluster.clone(),
            config.replication_settings(),
        );
        replication::worker::register_metrics(replication.clone(), &metrics);
        let auth = auth::Auth::new(
            config.auth_settings().map_err(RunError::AuthConfig)?,
            reader.auth().clone(),
            audit.clone(),
        );
        let webhooks = webhooks::Webhooks::new(
            reader.clone(),
            cluster.clone(),
            replication.clone(),
            config.webhook_settings(),
            metrics.clone(),
        )
        .map_err(RunError::Webhooks)?;
        let registry = Registry::new(
            blobs,
            reader,
            cluster,
            config.registry_settings(),
            metrics.clone(),
        );
        register_node_gauges(&metrics, &registry, &config.data_dir);
        let telemetry = api::Telemetry::new(
            config.node_id,
            &config.region,
            config.metrics.enabled.then_some(metrics),
        );
        let gc_settings = config.gc_settings();
        let gc = gc::Collector::new(registry.clone(), gc_settings);
        let reaper = gc::reaper::Reaper::new(
            registry.clone(),
            gc_settings.max_blobs_per_sec,
            gc_settings.interval.unwrap_or(gc::reaper::SWEEP_MIN_AGE),
        );
        Ok(Node {
            registry,
            replication,
            auth,
            audit,
            gc,
            reaper,
            webhooks,
            telemetry,
            closer,
        })
    }

    /// The HTTP router of this node.
    pub fn router(&self) -> axum::Router {
        api::router(
            self.registry.clone(),
            self.auth.clone(),
            self.telemetry.clone(),
        )
    }

    /// Stops Raft (after the HTTP front has stopped), waiting at most 1.5 s for it; the
    /// registry then answers writes with 503. Returns false when Raft had not stopped by then.
    pub async fn stop_raft(&self) -> bool {
        self.registry.cluster().shutdown(RAFT_STOP).await
    }

    /// Stops Raft, then closes the metadata store, and returns true once it is closed: the
    /// data directory can then be opened again at once. Every other holder of the registry
    /// (routers, servers, tasks) must be gone or going; false when one still held it 10 s
    /// later (the store then closes when the last one goes).
    pub async fn stop(self) -> bool {
        self.stop_raft().await;
        self.close_store(STORE_CLOSE).await
    }

    /// Drops this node's handles and waits, up to `bound`, for the metadata store to close.
    async fn close_store(self, bound: Duration) -> bool {
        let Node {
            registry,
            replication,
            auth,
            audit,
            gc,
            reaper,
            webhooks,
            telemetry,
            closer,
        } = self;
        drop(telemetry);
        drop(webhooks);
        drop(gc);
        drop(reaper);
        drop(registry);
        drop(replication);
        drop(auth);
        // The audit writer stores what is queued and lets go of the store once the last
        // handle is gone.
        drop(audit);
        match closer.close(bound).await {
            Ok(()) => true,
            Err(closer) => {
                tracing::warn!(
                    waited_ms = bound.as_millis() as u64,
                    ?closer,
                    "metadata store still in use; it closes when its last user ends"
                );
                false
            }
        }
    }
}

/// Fills `berth_peer_rtt_seconds` and `berth_peer_up` from the cluster's peer views at each
/// scrape (peers no longer measured disappear).
fn register_peer_gauges(metrics: &Metrics, cluster: &Cluster) {
    let cluster = cluster.clone();
    metrics.on_scrape(move |m| {
        m.peer_rtt.clear();
        m.peer_up.clear();
        for view in cluster.peer_views() {
            let labels = metrics::PeerLabels {
                peer: view.node,
                region: cluster
                    .member(view.node)
                    .map(|i| i.region)
                    .unwrap_or_default(),
            };
            if let Some(rtt) = view.rtt {
                m.peer_rtt.get_or_create(&labels).set(rtt.as_secs_f64());
            }
            m.peer_up.get_or_create(&labels).set(i64::from(view.up));
        }
    });
}

/// Fills the gauges of this node's state at each scrape: Raft's figures, the metadata
/// database and its last snapshot, the blob store's totals, open upload sessions, and the
/// data directory's file system. Each is a read of memory or one cheap syscall; the blob
/// store is never walked (its totals are kept as blobs come and go). The hook holds the
/// registry weakly: the registry holds the metrics, and must not be kept alive by them.
fn register_node_gauges(metrics: &Metrics, registry: &Arc<Registry>, data_dir: &std::path::Path) {
    use metrics::set_u64;
    let registry = Arc::downgrade(registry);
    let data_dir = data_dir.to_path_buf();
    metrics.on_scrape(move |m| {
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let raft = registry.cluster().raft_figures();
        set_u64(&m.raft_term, raft.term);
        set_u64(&m.raft_leader_id, raft.leader.unwrap_or(0));
        m.raft_is_leader.set(i64::from(raft.is_leader));
        set_u64(&m.raft_last_log_index, raft.last_log_index);
        set_u64(&m.raft_committed_index, raft.committed_index);
        set_u64(&m.raft_applied_index, raft.applied_index);
        set_u64(
            &m.raft_apply_lag,
            raft.last_log_index.saturating_sub(raft.applied_index),
        );
        set_u64(&m.raft_voters, raft.voters);
        set_u64(
            &m.raft_snapshot_bytes,
            meta::snapshot_bytes(&data_dir).unwrap_or(0),
        );
        let db = registry.meta().db_stats();
        set_u64(&m.rocksdb_size_bytes, db.size_bytes);
        set_u64(
            &m.rocksdb_compaction_pending_bytes,
            db.compaction_pending_bytes,
        );
        m.rocksdb_compaction_pending
            .set(i64::from(db.compaction_pending));
        let blobs = registry.blob_store().totals();
        set_u64(&m.blobstore_files, blobs.files);
        set_u64(&m.blobstore_bytes, blobs.bytes);
        set_u64(
            &m.uploads_in_progress,
            registry.uploads_in_progress() as u64,
        );
        if let Ok(disk) = space::statvfs(&data_dir) {
            set_u64(&m.disk_free_bytes, disk.available);
            set_u64(&m.disk_total_bytes, disk.total);
        }
    });
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

/// Waits up to `bound` for a background task to end, then aborts it.
async fn finish<T>(task: tokio::task::JoinHandle<T>, bound: Duration) {
    let abort = task.abort_handle();
    if tokio::time::timeout(bound, task).await.is_err() {
        abort.abort();
    }
}

/// Runs a node on its bound listeners (registry HTTP, cluster gRPC) until `shutdown`
/// resolves; then stops accepting, gives in-flight requests `config.shutdown_grace_secs` to
/// finish, and stops the rest within [`STOP_MARGIN`]: Raft, the cluster endpoint, and the
/// metadata store. Unset advertised addresses default to the bound ones. With `config.tls`
/// the registry port serves HTTPS; its certificate must load before anything else starts.
pub async fn run(
    mut config: Config,
    listener: tokio::net::TcpListener,
    cluster_listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let certs = config
        .tls
        .files()
        .map(server::tls::CertStore::open)
        .transpose()?;
    let tls = certs.as_ref().map(|c| c.server_config()).transpose()?;
    if config.open_cluster_port_with_auth() {
        tracing::warn!(
            cluster_listen = %config.cluster_listen,
            "auth is on but the cluster port is open without mutual TLS \
             (auth.allow_open_cluster_port = true): whoever reaches it can change identities"
        );
    }
    if config.plaintext_beyond_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "serving plain HTTP beyond loopback (tls.allow_plaintext = true): credentials and \
             content cross the network unencrypted"
        );
    }
    if config.advertise_url.is_none() {
        config.advertise_url = Some(format!("{}://{}", config.scheme(), listener.local_addr()?));
    }
    if config.advertise_cluster.is_none() {
        config.advertise_cluster = Some(cluster_listener.local_addr()?.to_string());
    }
    let node = Node::start(&config, Duration::ZERO).await?;
    let stop = CancellationToken::new();
    let signal = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = shutdown => {
                    tracing::info!("shutting down: no new connections; finishing requests in flight");
                    stop.cancel();
                }
                () = stop.cancelled() => {}
            }
        }
    });
    let cluster = node.registry.cluster().clone();

    // The cluster endpoint first: peers must reach this node before it can have a leader.
    // It keeps serving through the HTTP grace period (in-flight writes need Raft) and stops
    // after Raft.
    let rpc_stop = CancellationToken::new();
    let rpc = tokio::spawn(rpc::serve(
        node.registry.clone(),
        node.replication.clone(),
        node.auth.clone(),
        node.audit.clone(),
        node.gc.clone(),
        node.reaper.clone(),
        node.webhooks.clone(),
        config.data_dir.join("snapshots"),
        cluster_listener,
        rpc_stop.clone(),
    ));
    let joiner = match (&config.join, cluster.awaiting_join()) {
        (Some(addr), true) => Some(tokio::spawn(rpc::join(
            cluster.clone(),
            addr.clone(),
            node_info(&config),
            node.auth.clone(),
            stop.clone(),
        ))),
        _ => {
            tokio::select! {
                () = wait_for_leader(&cluster, Duration::from_secs(10)) => {}
                () = stop.cancelled() => {}
            }
            None
        }
    };
    drop(cluster);

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
                            tracing::info!(expired = n, "cancelled idle uploads and removed their staging files");
                        }
                    }
                }
            }
        }
    });

    let auth_bootstrap = tokio::spawn(
        auth::manage::AuthAdmin::new(node.auth.clone(), node.registry.cluster().clone())
            .bootstrap(stop.clone()),
    );
    let replicator = tokio::spawn(
        ReplicationWorker::new(node.replication.clone(), node.registry.clone()).run(stop.clone()),
    );
    let cert_watch =
        certs.map(|c| tokio::spawn(c.watch(config.tls.watch_interval(), stop.clone())));
    let collector = tokio::spawn(node.gc.clone().run_scheduled(stop.clone()));
    let reaper = tokio::spawn(node.reaper.clone().run(stop.clone()));
    let dispatcher = tokio::spawn(node.webhooks.clone().run(stop.clone()));
    let scrubber = node.replication.settings().scrub_every.map(|every| {
        let scrub = ScrubWorker::new(
            node.registry.clone(),
            node.replication.meta().clone(),
            every,
            node.replication.settings().scrub_bytes_per_sec,
        );
        tokio::spawn(scrub.run(stop.clone()))
    });

    tracing::info!(
        listen = %listener.local_addr()?,
        tls = tls.is_some(),
        cluster = %config.advertised_cluster(),
        data_dir = %config.data_dir.display(),
        node_id = config.node_id,
        "berth is serving"
    );
    server::serve(
        listener,
        node.router(),
        config.http_settings(),
        tls,
        stop.clone(),
        Duration::from_secs(config.shutdown_grace_secs),
    )
    .await;
    stop.cancel();
    let margin_end = tokio::time::Instant::now() + STOP_MARGIN;
    let _ = signal.await;
    let tasks_end = tokio::time::Instant::now() + TASKS_STOP;
    let tasks_left = || tasks_end.saturating_duration_since(tokio::time::Instant::now());
    finish(expiry, tasks_left()).await;
    finish(replicator, tasks_left()).await;
    finish(auth_bootstrap, tasks_left()).await;
    finish(collector, tasks_left()).await;
    finish(reaper, tasks_left()).await;
    finish(dispatcher, tasks_left()).await;
    if let Some(s) = scrubber {
        finish(s, tasks_left()).await;
    }
    if let Some(j) = joiner {
        finish(j, tasks_left()).await;
    }
    if let Some(w) = cert_watch {
        finish(w, tasks_left()).await;
    }
    // Raft first (it may still be sending to peers), then the cluster endpoint, then the
    // store, once nothing uses it.
    node.stop_raft().await;
    rpc_stop.cancel();
    match rpc.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "cluster endpoint stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "cluster endpoint task failed"),
        Ok(Ok(())) => {}
    }
    let left = margin_end.saturating_duration_since(tokio::time::Instant::now());
    node.close_store(left.max(STORE_CLOSE_MIN)).await;
    tracing::info!("stopped");
    Ok(())
}
