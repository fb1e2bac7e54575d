//! Node configuration: a versioned TOML file, overridden by `BERTH_…` environment variables,
//! overridden by command-line flags. [`Config::load`] reads from bytes and an env map so tests
//! inject both; [`Config::validate`] reports every problem at once.
//!
//! Environment variables: `BERTH_<FIELD>` for a top-level field, `BERTH_<SECTION>__<FIELD>`
//! for a field of a section (double underscore), e.g. `BERTH_LISTEN=0.0.0.0:5000`,
//! `BERTH_RAFT__HEARTBEAT_MS=100`. `BERTH_CONFIG` names the file and is not a field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::RaftSettings;
use crate::registry::RegistrySettings;

/// The config file format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole node configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Config format version; must be 1.
    pub version: u32,
    /// Address of the registry HTTP front. Default `127.0.0.1:5000`.
    pub listen: SocketAddr,
    /// Data directory (blobs, metadata, snapshots). Default `./berth-data`.
    pub data_dir: PathBuf,
    /// Log format. Default `text`.
    pub log_format: LogFormat,
    /// This node's id in the cluster; never reused. Default 1.
    pub node_id: u64,
    /// Region this node is placed in. Default `default`.
    pub region: String,
    /// Zone within the region. Default `default`.
    pub zone: String,
    /// URL clients and peers use to reach this node's HTTP front. Default `http://<listen>`
    /// (the bound address when `listen` has port 0).
    pub advertise_url: Option<String>,
    /// Address of the cluster gRPC endpoint (Raft, forwarding, blob streaming, admin).
    /// Default `127.0.0.1:7000`.
    pub cluster_listen: SocketAddr,
    /// `host:port` peers and `clusterctl` use to reach the cluster endpoint. Default the bound
    /// `cluster_listen` address.
    pub advertise_cluster: Option<String>,
    /// Cluster address of any member to ask, on first start with an empty data directory, to
    /// add this node as a learner. Unset: an empty data directory starts a new one-voter
    /// cluster. Ignored once the node belongs to a cluster.
    pub join: Option<String>,
    /// Seconds in-flight requests may take to finish after a shutdown signal. Default 10.
    pub shutdown_grace_secs: u64,
    /// Durability policy.
    pub durability: Durability,
    /// Request limits.
    pub limits: Limits,
    /// Raft timing.
    pub raft: Raft,
    /// How blobs are written.
    pub storage: Storage,
    /// Connections of the registry HTTP front: timeouts, connection cap, early-error draining.
    pub http: Http,
    /// TLS on the registry HTTP front.
    pub tls: Tls,
    /// Mutual TLS on the cluster endpoint and on every connection this node dials to a peer.
    pub cluster_tls: ClusterTls,
    /// Regional endpoints: redirects of blob GETs.
    pub routing: Routing,
    /// Geo-replication: copies per region and the replicator's pace.
    pub replication: Replication,
    /// Authentication and authorisation of the registry port (and of the admin service).
    pub auth: Auth,
    /// This node's audit log: retention and export.
    pub audit: Audit,
    /// Upload sessions.
    pub uploads: Uploads,
    /// Garbage collection.
    pub gc: Gc,
    /// Prometheus metrics of the registry port.
    pub metrics: MetricsConfig,
    /// Webhook delivery.
    pub webhooks: Webhooks,
}

/// Prometheus metrics (`[metrics]`, env `BERTH_METRICS__<FIELD>`; docs/observability.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record metrics of every request and serve them at `GET /metrics`; `false`: record
    /// nothing and answer `/metrics` with 404 (request ids and logs are unchanged). Default
    /// `true`.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}

/// Webhook delivery (`[webhooks]`, env `BERTH_WEBHOOKS__<FIELD>`; docs/observability.md).
/// The webhooks themselves are cluster state (`clusterctl webhooks`); these settings are how
/// this node delivers when it is the delivering node, and should match on every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    /// Seconds one delivery attempt may take (connect, send, answer). Default 10.
    pub timeout_secs: u64,
    /// The first retry waits 1 s; each next one twice as long, up to this. Default 300.
    pub max_backoff_secs: u64,
    /// Delivery log entries older than this are removed (at least 3600). Default 604800 (7
    /// days).
    pub log_retention_secs: u64,
    /// Events older than this are removed even if a webhook has not been sent them (it was
    /// failing or its region had no node that long); at least 3600. Default 604800 (7 days).
    pub event_retention_secs: u64,
    /// A PEM file of CA certificates trusted for `https` webhook URIs besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            timeout_secs: 10,
            max_backoff_secs: 300,
            log_retention_secs: 7 * 24 * 3600,
            event_retention_secs: 7 * 24 * 3600,
            ca_file: None,
        }
    }
}

/// Upload sessions (`[uploads]`, env `BERTH_UPLOADS__<FIELD>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Uploads {
    /// Seconds an upload session may stay idle (no request writes to it) before it is
    /// cancelled and its staging file removed. Default 86400 (24 h).
    pub expiry_secs: u64,
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads {
            expiry_secs: 24 * 3600,
        }
    }
}

/// Garbage collection of blobs (`[gc]`, env `BERTH_GC__<FIELD>`; docs/lifecycle.md). These
/// should match on every node: any node may run a collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gc {
    /// Seconds a blob must have been unreferenced (and not stored, mounted or HEADed) before
    /// it is collected. 0 is allowed (for tests). Default 3600.
    pub grace_period_secs: u64,
    /// Seconds between scheduled collections (run by the Raft leader); 0: only on demand
    /// (`clusterctl gc run`). Default 3600.
    pub interval_secs: u64,
    /// Blobs a collection removes per second at most, and a node's reaper deletes per second
    /// at most: collection yields to client traffic. Default 2000.
    pub max_blobs_per_sec: u64,
}

impl Default for Gc {
    fn default() -> Self {
        Gc {
            grace_period_secs: 3600,
            interval_secs: 3600,
            max_blobs_per_sec: 2000,
        }
    }
}

/// The audit log (`[audit]`, env `BERTH_AUDIT__<FIELD>`; docs/operations.md, "Audit log").
/// Every node keeps its own log in its metadata store (not replicated).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// Days a record is kept; older ones are deleted (checked at start and hourly). 1 to
    /// 36500. Default 90.
    pub retention_days: u64,
    /// Also append every record, as one JSON object per line, to `"stdout"` or to the file at
    /// this path (created if missing; flushed after each batch). Default none.
    pub export: Option<String>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            retention_days: 90,
            export: None,
        }
    }
}

/// Longest accepted `audit.retention_days`: a hundred years.
const MAX_RETENTION_DAYS: u64 = 36_500;

/// Authentication (`[auth]`, env `BERTH_AUTH__<FIELD>`; docs/security.md, ADR 019). Its
/// `Debug` never shows the bootstrap password.
/// Identities, scope maps, signing keys and network rules are cluster state (Raft), changed
/// with `clusterctl`; these are the node's own settings, which should match on every node.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Require credentials on the registry port. Default: on whenever `listen` is not a
    /// loopback address.
    pub enabled: Option<bool>,
    /// The `service` of the token challenge and the audience of registry tokens. Default
    /// `berth`; the same on every node (a token issued by one node is checked by all).
    pub service: String,
    /// The token endpoint URL of the challenge. Default `<scheme>://<Host header>/auth/token`.
    pub realm: Option<String>,
    /// How long a registry (access) token lives. Default 300.
    pub token_ttl_secs: u64,
    /// How long a refresh token (`docker login`'s identity token) lives. Default 1209600
    /// (14 days).
    pub refresh_token_ttl_secs: u64,
    /// Password of the `admin` user, created at start-up when the cluster has no user.
    #[serde(skip_serializing)]
    pub bootstrap_admin_password: Option<String>,
    /// A file holding that password (its first line).
    pub bootstrap_admin_password_file: Option<PathBuf>,
    /// Proxies (CIDR) whose `X-Forwarded-For` names the client; from any other address the
    /// header is ignored. In the environment, one string of comma-separated entries.
    #[serde(deserialize_with = "entries")]
    pub trusted_proxies: Vec<String>,
    /// Failed logins per identity and per client address within the window before further
    /// attempts answer 429. Default 10.
    pub max_failed_logins: u32,
    /// The window of `max_failed_logins`, in seconds. Default 300.
    pub failed_login_window_secs: u64,
    /// Client addresses (CIDR) the admin service on the cluster port answers; empty: any.
    /// Include the other nodes (they relay admin calls and ask each other's status). In the
    /// environment, one string of comma-separated entries.
    #[serde(deserialize_with = "entries")]
    pub admin_allow: Vec<String>,
    /// With auth on, a `cluster_listen` address beyond loopback needs `[cluster_tls]`: Raft
    /// and peer calls on that port are not authenticated otherwise, so whoever reaches it can
    /// write any identity. `true` accepts that (a private network only) and logs a warning.
    pub allow_open_cluster_port: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .field("service", &self.service)
            .field("realm", &self.realm)
            .field(
                "bootstrap_admin_password",
                &self.bootstrap_admin_password.as_ref().map(|_| "<redacted>"),
            )
            .field("trusted_proxies", &self.trusted_proxies)
            .field("admin_allow", &self.admin_allow)
            .finish_non_exhaustive()
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            enabled: None,
            service: "berth".to_string(),
            realm: None,
            token_ttl_secs: 300,
            refresh_token_ttl_secs: 14 * 24 * 3600,
            bootstrap_admin_password: None,
            bootstrap_admin_password_file: None,
            trusted_proxies: Vec::new(),
            max_failed_logins: 10,
            failed_login_window_secs: 300,
            admin_allow: Vec::new(),
            allow_open_cluster_port: false,
        }
    }
}

/// Regional endpoints (`[routing]`, env `BERTH_ROUTING__<FIELD>`): where blob GETs are
/// redirected. Manifests are never redirected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    /// Client address ranges and the region of their clients, as `CIDR=region` entries, e.g.
    /// `["10.1.0.0/16=eu", "10.2.0.0/16=us"]` (the longest matching prefix wins; in the
    /// environment, one string with the entries separated by commas). A blob GET from a client
    /// of another region than this node's is answered 307 to the public URL of a node of that
    /// region (one holding the blob first, else the nearest reachable). Default empty (off).
    #[serde(deserialize_with = "entries")]
    pub client_regions: Vec<String>,
    /// Answer a blob GET at a node that lacks the blob with a 307 to the nearest reachable
    /// holder's public URL instead of reading it through. Default false.
    pub redirect_missing: bool,
}

/// A list of strings, also given as one string of comma-separated entries (the environment's
/// form).
fn entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entries {
        List(Vec<String>),
        One(String),
    }
    Ok(match Entries::deserialize(d)? {
        Entries::List(l) => l,
        Entries::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Geo-replication (`[replication]`, env `BERTH_REPLICATION__<FIELD>`); see
/// `docs/geo-replication.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    /// Nodes of each region that hold a copy of every blob the policy places there (a region
    /// with fewer nodes has it on all of them). Must be the same on every node. Default 1.
    pub copies_per_region: usize,
    /// Blob copies this node's replicator makes at once. Default 4.
    pub max_parallel: usize,
    /// Seconds between two full passes of the replicator over every manifest (it also runs
    /// one at start, and after a membership or policy change). Default 300.
    pub full_pass_secs: u64,
    /// Seconds between two scrubs: each re-hashes every blob this node is recorded as
    /// holding, and replaces a corrupt or missing copy from a peer. 0 turns scrubbing off.
    /// Default 86400 (a day).
    pub scrub_interval_secs: u64,
    /// Bytes a second a scrub reads at most (it never crowds out client transfers).
    /// Default 52428800 (50 MiB/s).
    pub scrub_bytes_per_sec: u64,
    /// Bytes per second this node fetches from any one peer for replication and durability
    /// copies (one token bucket per peer; a client's read-through is never capped). 0: no cap.
    /// Default 0.
    pub max_bytes_per_sec_per_peer: u64,
    /// Bytes per second this node fetches for replication copies, from all peers together,
    /// while it serves clients (a registry request within the last 250 ms): the copies leave
    /// the CPU to the clients, then go on at full speed (or `max_bytes_per_sec_per_peer`) once
    /// the node is idle. 0: no such cap. Default 67108864 (64 MiB/s). ADR 016.
    pub busy_bytes_per_sec: u64,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            copies_per_region: 1,
            max_parallel: 4,
            full_pass_secs: 300,
            scrub_interval_secs: 86_400,
            scrub_bytes_per_sec: 50 * 1024 * 1024,
            max_bytes_per_sec_per_peer: 0,
            busy_bytes_per_sec: 64 * 1024 * 1024,
        }
    }
}

/// Connections of the registry HTTP front (`[http]`, env `BERTH_HTTP__<FIELD>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Seconds a client may take to send a whole request head (request line and headers),
    /// counted from its first byte; then the connection is closed. Default 30.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight and no byte of a new one
    /// received; then it is closed. Keep it above the clients' own idle timeout (Go's is 90 s).
    /// Default 120.
    pub idle_timeout_secs: u64,
    /// Seconds a request body may send nothing while the handler waits for it; then the
    /// request fails with a body error (an upload keeps the bytes received so far) and the
    /// connection is closed. Default 60.
    pub body_stall_timeout_secs: u64,
    /// Seconds a response may wait for the client to read (the socket accepts no byte); then
    /// the connection is dropped. Default 60.
    pub write_stall_timeout_secs: u64,
    /// Connections served at once; at the cap the node stops accepting until one closes (new
    /// clients wait in the listen backlog). Lowered at start-up to fit the open-file limit.
    /// Default 10000.
    pub max_connections: usize,
    /// Bytes of an unread request body that are read and discarded after an early answer (a
    /// 413 or 404 sent before the body was read), so that a client still sending gets the
    /// answer instead of a reset. A longer declared body is not read: the answer then carries
    /// `Connection: close`. 0 disables draining. Default 8388608 (8 MiB).
    pub drain_max_bytes: u64,
    /// Seconds an early answer may wait for the rest of the body to be discarded; past it the
    /// answer is sent with `Connection: close`. Default 10.
    pub drain_timeout_secs: u64,
}

/// TLS on the registry HTTP front (`[tls]`, env `BERTH_TLS__<FIELD>`; ADR 017). Without a
/// certificate the front serves plain HTTP, which a listen address other than loopback allows
/// only with `allow_plaintext`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM file of the certificate chain, leaf first (flag `--tls-cert`). Set together with
    /// `key_file`. Reloaded on SIGHUP and when the file changes. Default none (plain HTTP).
    pub cert_file: Option<PathBuf>,
    /// PEM file of the certificate's private key, PKCS#8, PKCS#1 or SEC1 (flag `--tls-key`).
    /// Default none.
    pub key_file: Option<PathBuf>,
    /// Serve plain HTTP on a listen address that is not loopback (e.g. behind a proxy that
    /// terminates TLS, or a private test network); a warning is logged at start-up. Default
    /// false: such an address without a certificate fails start-up.
    pub allow_plaintext: bool,
    /// Seconds between two checks of the certificate and key files for a change (their
    /// modification time or size); a change reloads them. 0 turns the checks off (SIGHUP
    /// still reloads). Default 5.
    pub watch_interval_secs: u64,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert_file: None,
            key_file: None,
            allow_plaintext: false,
            watch_interval_secs: 5,
        }
    }
}

impl Tls {
    /// The certificate and key files, when TLS is on.
    pub fn files(&self) -> Option<crate::server::tls::TlsFiles> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(crate::server::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// How often the files are checked for a change; `None` when never.
    pub fn watch_interval(&self) -> Option<Duration> {
        (self.watch_interval_secs > 0).then(|| Duration::from_secs(self.watch_interval_secs))
    }
}

/// Mutual TLS between nodes (`[cluster_tls]`, env `BERTH_CLUSTER_TLS__<FIELD>`; ADR 018): all
/// three files or none. When set, the cluster endpoint serves TLS and requires a client
/// certificate the CA signed, and every connection to a peer presents `cert_file` and checks
/// the peer's certificate against the CA and the dialled host. Read at start-up. Default none:
/// plain, unauthenticated gRPC.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTls {
    /// PEM file of the cluster CA certificate(s) that sign every node's and client's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM file of this node's certificate chain, leaf first; it must name the host of this
    /// node's advertised cluster address (a DNS or IP subject alternative name).
    pub cert_file: Option<PathBuf>,
    /// PEM file of that certificate's private key.
    pub key_file: Option<PathBuf>,
}

impl ClusterTls {
    /// The three files, when cluster TLS is on.
    pub fn files(&self) -> Option<crate::cluster::tls::ClusterTlsFiles> {
        match (&self.ca_file, &self.cert_file, &self.key_file) {
            (Some(ca), Some(cert), Some(key)) => Some(crate::cluster::tls::ClusterTlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// How blobs are written, and the free space kept back from them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Write uploads of 1 MiB or more with direct I/O (`O_DIRECT`), bypassing the page cache.
    /// Pushes get faster and cheaper; the first pull of a freshly pushed blob then reads it from
    /// disk. Default false (ADR 008 has the measurements).
    pub direct_writes: bool,
    /// Free space, in bytes, kept back from blob uploads on the data directory's file system
    /// so that metadata can still be written: below the reserve, uploads answer 503. The
    /// reserve is the larger of this and `reserve_percent`, capped at half the file system.
    /// 0 (with `reserve_percent = 0`) turns it off. Default 1073741824 (1 GiB). ADR 010.
    pub reserve_bytes: u64,
    /// Share of the data directory's file system kept back from blob uploads, in percent
    /// (0–50). Default 5.
    pub reserve_percent: u8,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            direct_writes: false,
            reserve_bytes: 1024 * 1024 * 1024,
            reserve_percent: 5,
        }
    }
}

impl Storage {
    /// The upload reserve this section configures.
    pub fn reserve(&self) -> crate::space::Reserve {
        crate::space::Reserve {
            bytes: self.reserve_bytes,
            percent: self.reserve_percent,
        }
    }
}

/// Durability policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Durability {
    /// Nodes that must hold every blob a manifest references before the manifest PUT is
    /// acknowledged; the node taking the PUT makes the missing copies first (nearest nodes
    /// first), within `raft.write_timeout_ms`, else answers 503. At least 1. Default 1.
    pub min_copies: usize,
    /// Regions those nodes must span (copies go to other regions first while regions are
    /// short). At least 1. Default 1.
    pub min_regions: usize,
}

/// Request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest manifest accepted, in bytes. Default 4194304 (4 MiB).
    pub max_manifest_bytes: usize,
    /// Upload sessions open on this node at once; past it, new ones get 429
    /// `TOOMANYREQUESTS`. Default 10000.
    pub max_upload_sessions: usize,
    /// Upload sessions open at once per client IP address; past it, new ones get 429.
    /// Default 1000.
    pub max_upload_sessions_per_client: usize,
}

/// Raft timing. The defaults hold across regions with round trips up to about 400 ms
/// (ADR 012): a heartbeat, and each vote, must complete a round trip within the heartbeat
/// interval and the lower election timeout respectively.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Raft {
    /// Leader heartbeat interval, milliseconds; must exceed the longest round trip between
    /// voters. Default 500.
    pub heartbeat_ms: u64,
    /// Election timeout lower bound, milliseconds. Default 1500.
    pub election_timeout_min_ms: u64,
    /// Election timeout upper bound, milliseconds. Default 3000.
    pub election_timeout_max_ms: u64,
    /// Entries between snapshots (the log is compacted behind each). Default 10000.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot, for peers that lag a little. Default 1000.
    pub keep_log_entries: u64,
    /// Milliseconds a write may wait to commit before it answers 503. Default 10000.
    pub write_timeout_ms: u64,
    /// Region whose voters should lead: a leader elsewhere hands leadership to an
    /// up-to-date voter of this region (checked every election timeout). Env
    /// `BERTH_RAFT__PREFERRED_LEADER_REGION`. Default none (leadership stays where elections
    /// put it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_leader_region: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CONFIG_VERSION,
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("./berth-data"),
            log_format: LogFormat::Text,
            node_id: 1,
            region: "default".to_string(),
            zone: "default".to_string(),
            advertise_url: None,
            cluster_listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            advertise_cluster: None,
            join: None,
            shutdown_grace_secs: 10,
            durability: Durability::default(),
            limits: Limits::default(),
            raft: Raft::default(),
            storage: Storage::default(),
            http: Http::default(),
            tls: Tls::default(),
            cluster_tls: ClusterTls::default(),
            routing: Routing::default(),
            replication: Replication::default(),
            auth: Auth::default(),
            audit: Audit::default(),
            uploads: Uploads::default(),
            gc: Gc::default(),
            metrics: MetricsConfig::default(),
            webhooks: Webhooks::default(),
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            header_read_timeout_secs: 30,
            idle_timeout_secs: 120,
            body_stall_timeout_secs: 60,
            write_stall_timeout_secs: 60,
            max_connections: 10_000,
            drain_max_bytes: 8 * 1024 * 1024,
            drain_timeout_secs: 10,
        }
    }
}

impl Default for Durability {
    fn default() -> Self {
        Durability {
            min_copies: 1,
            min_regions: 1,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 * 1024 * 1024,
            max_upload_sessions: 10_000,
            max_upload_sessions_per_client: 1000,
        }
    }
}

impl Default for Raft {
    fn default() -> Self {
        Raft {
            heartbeat_ms: 500,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            snapshot_every_entries: 10_000,
            keep_log_entries: 1000,
            write_timeout_ms: 10_000,
            preferred_leader_region: None,
        }
    }
}

/// A configuration that cannot be used; the message lists every problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

const ENV_PREFIX: &str = "BERTH_";
/// Largest accepted `http.*_secs` timeout: one day.
const MAX_TIMEOUT_SECS: u64 = 86_400;
/// Environment variables with the prefix that are not config fields.
const ENV_NOT_FIELDS: &[&str] = &["BERTH_CONFIG"];

impl Config {
    /// Builds the configuration from a TOML document (empty: all defaults) and environment
    /// variables, then validates it.
    pub fn load(toml_text: &str, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let (config, mut problems) = Config::read(toml_text, env)?;
        problems.extend(config.problems());
        finish(config, problems)
    }

    /// As [`Config::load`] without checking the values (only the syntax, names and types): for
    /// a caller that overrides fields (command-line flags) and then calls [`Config::validate`].
    pub fn parse(toml_text: &str, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let (config, problems) = Config::read(toml_text, env)?;
        finish(config, problems)
    }

    /// The configuration the document and environment describe, and the problems with the
    /// environment's variable names; `Err` when no configuration could be built.
    fn read(
        toml_text: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut problems = Vec::new();
        let mut doc: toml::Table = match toml_text.parse() {
            Ok(t) => t,
            Err(e) => {
                return Err(ConfigError {
                    problems: vec![format!("config file: {e}")],
                });
            }
        };
        for (key, value) in env {
            let Some(field) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if ENV_NOT_FIELDS.contains(&key.as_str()) {
                continue;
            }
            let path: Vec<String> = field.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                problems.push(format!("{key}: malformed variable name"));
                continue;
            }
            set_path(&mut doc, &path, env_value(value));
        }
        let config: Config = match toml::Value::Table(doc).try_into() {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.to_string().trim().replace('\n', " "));
                return Err(ConfigError { problems });
            }
        };
        Ok((config, problems))
    }

    /// Checks the values; returns every problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.version != CONFIG_VERSION {
            p.push(format!(
                "version: {} is not supported (this build reads {CONFIG_VERSION})",
                self.version
            ));
        }
        if self.node_id == 0 {
            p.push("node_id: must be at least 1".to_string());
        }
        if self.data_dir.as_os_str().is_empty() {
            p.push("data_dir: must not be empty".to_string());
        }
        if self.region.is_empty() {
            p.push("region: must not be empty".to_string());
        }
        if self.zone.is_empty() {
            p.push("zone: must not be empty".to_string());
        }
        for (field, list) in [
            ("trusted_proxies", &self.auth.trusted_proxies),
            ("admin_allow", &self.auth.admin_allow),
        ] {
            for cidr in list {
                if let Err(e) = crate::auth::parse_cidr(cidr) {
                    p.push(format!("auth.{field}: {e}"));
                }
            }
        }
        if self.open_cluster_port_with_auth() && !self.auth.allow_open_cluster_port {
            p.push(format!(
                "auth is on but cluster_listen {} is beyond loopback without [cluster_tls]: \
                 Raft and peer calls there are unauthenticated, so anyone who reaches the port \
                 could change identities; set [cluster_tls] (ADR 018), or \
                 auth.allow_open_cluster_port = true on a private network",
                self.cluster_listen
            ));
        }
        if self.auth.service.is_empty() || self.auth.service.contains('"') {
            p.push("auth.service: must be non-empty and hold no '\"'".to_string());
        }
        if self.auth.token_ttl_secs == 0 || self.auth.refresh_token_ttl_secs == 0 {
            p.push(
                "auth.token_ttl_secs, auth.refresh_token_ttl_secs: must be at least 1".to_string(),
            );
        }
        if self.auth.failed_login_window_secs == 0 {
            p.push("auth.failed_login_window_secs: must be at least 1".to_string());
        }
        if !(1..=MAX_RETENTION_DAYS).contains(&self.audit.retention_days) {
            p.push(format!(
                "audit.retention_days: must be from 1 to {MAX_RETENTION_DAYS}"
            ));
        }
        if self
            .audit
            .export
            .as_deref()
            .is_some_and(|e| e.trim().is_empty())
        {
            p.push("audit.export: must be \"stdout\" or a file path when set".to_string());
        }
        if let Some(url) = &self.advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            p.push(format!(
                "advertise_url: {url:?} must start with http:// or https://"
            ));
        }
        for (field, value) in [
            ("advertise_cluster", &self.advertise_cluster),
            ("join", &self.join),
        ] {
            if let Some(addr) = value
                && !is_host_port(addr)
            {
                p.push(format!("{field}: {addr:?} must be host:port"));
            }
        }
        if self.durability.min_copies == 0 {
            p.push("durability.min_copies: must be at least 1".to_string());
        }
        if self.durability.min_regions == 0 {
            p.push("durability.min_regions: must be at least 1".to_string());
        }
        if let Err(problems) =
            crate::registry::routing::ClientRegions::parse(&self.routing.client_regions)
        {
            p.extend(
                problems
                    .into_iter()
                    .map(|e| format!("routing.client_regions: {e}")),
            );
        }
        if self.limits.max_manifest_bytes < 1024 {
            p.push("limits.max_manifest_bytes: must be at least 1024".to_string());
        }
        if self.uploads.expiry_secs == 0 {
            p.push("uploads.expiry_secs: must be at least 1".to_string());
        }
        if self.webhooks.timeout_secs == 0 {
            p.push("webhooks.timeout_secs: must be at least 1".to_string());
        }
        if self.webhooks.max_backoff_secs == 0 {
            p.push("webhooks.max_backoff_secs: must be at least 1".to_string());
        }
        for (field, v) in [
            ("log_retention_secs", self.webhooks.log_retention_secs),
            ("event_retention_secs", self.webhooks.event_retention_secs),
        ] {
            if v < 3600 {
                p.push(format!("webhooks.{field}: must be at least 3600 (an hour)"));
            }
        }
        if self.gc.max_blobs_per_sec == 0 {
            p.push("gc.max_blobs_per_sec: must be at least 1".to_string());
        }
        if self.limits.max_upload_sessions == 0 || self.limits.max_upload_sessions_per_client == 0 {
            p.push(
                "limits.max_upload_sessions and limits.max_upload_sessions_per_client: must be \
                 at least 1"
                    .to_string(),
            );
        }
        if self.storage.reserve_percent > 50 {
            p.push(format!(
                "storage.reserve_percent: {} is more than 50",
                self.storage.reserve_percent
            ));
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 {
            p.push("raft.heartbeat_ms: must be at least 1".to_string());
        }
        if r.election_timeout_min_ms <= r.heartbeat_ms {
            p.push(
                "raft.election_timeout_min_ms: must be greater than raft.heartbeat_ms".to_string(),
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            p.push(
                "raft.election_timeout_max_ms: must be greater than raft.election_timeout_min_ms"
                    .to_string(),
            );
        }
        if r.snapshot_every_entries == 0 {
            p.push("raft.snapshot_every_entries: must be at least 1".to_string());
        }
        if r.write_timeout_ms == 0 {
            p.push("raft.write_timeout_ms: must be at least 1".to_string());
        }
        if r.preferred_leader_region
            .as_deref()
            .is_some_and(|region| region.trim().is_empty())
        {
            p.push("raft.preferred_leader_region: must not be empty when set".to_string());
        }
        let h = &self.http;
        for (field, secs) in [
            ("header_read_timeout_secs", h.header_read_timeout_secs),
            ("idle_timeout_secs", h.idle_timeout_secs),
            ("body_stall_timeout_secs", h.body_stall_timeout_secs),
            ("write_stall_timeout_secs", h.write_stall_timeout_secs),
            ("drain_timeout_secs", h.drain_timeout_secs),
        ] {
            if secs == 0 {
                p.push(format!("http.{field}: must be at least 1"));
            } else if secs > MAX_TIMEOUT_SECS {
                p.push(format!(
                    "http.{field}: must be at most {MAX_TIMEOUT_SECS} (one day)"
                ));
            }
        }
        if h.max_connections == 0 {
            p.push("http.max_connections: must be at least 1".to_string());
        }
        let t = &self.tls;
        match (&t.cert_file, &t.key_file) {
            (Some(_), None) => p.push("tls.key_file: must be set with tls.cert_file".to_string()),
            (None, Some(_)) => p.push("tls.cert_file: must be set with tls.key_file".to_string()),
            (None, None) if !self.listen.ip().is_loopback() && !t.allow_plaintext => {
                p.push(format!(
                    "listen: {} is not a loopback address and TLS is off: set tls.cert_file and \
                 tls.key_file (--tls-cert, --tls-key), or tls.allow_plaintext = true to serve \
                 plain HTTP on it",
                    self.listen
                ))
            }
            _ => {}
        }
        if t.watch_interval_secs > MAX_TIMEOUT_SECS {
            p.push(format!(
                "tls.watch_interval_secs: must be at most {MAX_TIMEOUT_SECS} (one day)"
            ));
        }
        let ct = &self.cluster_tls;
        let set = [&ct.ca_file, &ct.cert_file, &ct.key_file].map(Option::is_some);
        if set.contains(&true) && set.contains(&false) {
            p.push(
                "cluster_tls: set ca_file, cert_file and key_file together, or none of them"
                    .to_string(),
            );
        }
        let r = &self.replication;
        for (field, v) in [
            ("copies_per_region", r.copies_per_region as u64),
            ("max_parallel", r.max_parallel as u64),
            ("full_pass_secs", r.full_pass_secs),
            ("scrub_bytes_per_sec", r.scrub_bytes_per_sec),
        ] {
            if v == 0 {
                p.push(format!("replication.{field}: must be at least 1"));
            }
        }
        p
    }

    /// The URL this node advertises for its HTTP front.
    pub fn advertised_url(&self) -> String {
        self.advertise_url
            .clone()
            .unwrap_or_else(|| format!("{}://{}", self.scheme(), self.listen))
    }

    /// `https` when the HTTP front serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.files().is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Whether the HTTP front serves plain HTTP on an address other than loopback (allowed by
    /// `tls.allow_plaintext`; worth a warning).
    pub fn plaintext_beyond_loopback(&self) -> bool {
        self.tls.files().is_none() && !self.listen.ip().is_loopback()
    }

    /// The address this node advertises for its cluster endpoint.
    pub fn advertised_cluster(&self) -> String {
        self.advertise_cluster
            .clone()
            .unwrap_or_else(|| self.cluster_listen.to_string())
    }

    /// Raft settings derived from this configuration.
    pub fn raft_settings(&self) -> RaftSettings {
        RaftSettings {
            heartbeat: Duration::from_millis(self.raft.heartbeat_ms),
            election_timeout_min: Duration::from_millis(self.raft.election_timeout_min_ms),
            election_timeout_max: Duration::from_millis(self.raft.election_timeout_max_ms),
            snapshot_every_entries: self.raft.snapshot_every_entries,
            keep_log_entries: self.raft.keep_log_entries,
            write_timeout: Duration::from_millis(self.raft.write_timeout_ms),
            preferred_leader_region: self.raft.preferred_leader_region.clone(),
        }
    }

    /// HTTP server settings derived from this configuration.
    pub fn http_settings(&self) -> crate::server::HttpSettings {
        let h = &self.http;
        crate::server::HttpSettings {
            header_read_timeout: Duration::from_secs(h.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(h.idle_timeout_secs),
            body_stall_timeout: Duration::from_secs(h.body_stall_timeout_secs),
            write_stall_timeout: Duration::from_secs(h.write_stall_timeout_secs),
            max_connections: h.max_connections,
            drain_max_bytes: h.drain_max_bytes,
            drain_timeout: Duration::from_secs(h.drain_timeout_secs),
        }
    }

    /// Replication settings derived from this configuration.
    pub fn replication_settings(&self) -> crate::replication::ReplicationSettings {
        crate::replication::ReplicationSettings {
            copies_per_region: self.replication.copies_per_region,
            max_parallel: self.replication.max_parallel,
            full_pass_every: Duration::from_secs(self.replication.full_pass_secs),
            scrub_every: (self.replication.scrub_interval_secs > 0)
                .then(|| Duration::from_secs(self.replication.scrub_interval_secs)),
            scrub_bytes_per_sec: self.replication.scrub_bytes_per_sec,
        }
    }

    /// Whether auth is on while the cluster port is reachable beyond loopback without mutual
    /// TLS (allowed only with `auth.allow_open_cluster_port`).
    pub fn open_cluster_port_with_auth(&self) -> bool {
        self.auth_enabled()
            && self.cluster_tls.files().is_none()
            && !self.cluster_listen.ip().is_loopback()
    }

    /// Whether the registry port requires credentials.
    pub fn auth_enabled(&self) -> bool {
        self.auth.enabled.unwrap_or(!self.listen.ip().is_loopback())
    }

    /// Auth settings derived from this configuration (the bootstrap password read from its
    /// file when one is named).
    pub fn auth_settings(&self) -> std::io::Result<crate::auth::AuthConfig> {
        let bootstrap = match (
            &self.auth.bootstrap_admin_password,
            &self.auth.bootstrap_admin_password_file,
        ) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            (None, None) => None,
        };
        Ok(crate::auth::AuthConfig {
            enabled: self.auth_enabled(),
            service: self.auth.service.clone(),
            realm: self.auth.realm.clone(),
            scheme: self.scheme(),
            token_ttl: Duration::from_secs(self.auth.token_ttl_secs),
            refresh_ttl: Duration::from_secs(self.auth.refresh_token_ttl_secs),
            bootstrap_admin_password: bootstrap.filter(|p| !p.is_empty()),
            trusted_proxies: cidrs(&self.auth.trusted_proxies),
            admin_allow: cidrs(&self.auth.admin_allow),
            max_failed_logins: self.auth.max_failed_logins,
            failed_login_window: Duration::from_secs(self.auth.failed_login_window_secs),
        })
    }

    /// Audit settings derived from this configuration.
    pub fn audit_settings(&self) -> crate::audit::AuditSettings {
        crate::audit::AuditSettings {
            retention: Duration::from_secs(self.audit.retention_days.saturating_mul(86_400)),
            export: self.audit.export.as_deref().map(|e| match e {
                "stdout" => crate::audit::Export::Stdout,
                path => crate::audit::Export::File(PathBuf::from(path)),
            }),
            queue: crate::audit::QUEUE,
            node: self.node_id,
            region: self.region.clone(),
        }
    }

    /// Webhook delivery settings derived from this configuration.
    pub fn webhook_settings(&self) -> crate::webhooks::WebhookSettings {
        crate::webhooks::WebhookSettings {
            timeout: Duration::from_secs(self.webhooks.timeout_secs),
            max_backoff: Duration::from_secs(self.webhooks.max_backoff_secs),
            log_retention: Duration::from_secs(self.webhooks.log_retention_secs),
            event_retention: Duration::from_secs(self.webhooks.event_retention_secs),
            ca_file: self.webhooks.ca_file.clone(),
            node: self.node_id,
            region: self.region.clone(),
        }
    }

    /// Garbage-collection settings derived from this configuration.
    pub fn gc_settings(&self) -> crate::gc::GcSettings {
        crate::gc::GcSettings {
            grace: Duration::from_secs(self.gc.grace_period_secs),
            interval: (self.gc.interval_secs > 0)
                .then(|| Duration::from_secs(self.gc.interval_secs)),
            max_blobs_per_sec: self.gc.max_blobs_per_sec,
        }
    }

    /// Registry settings derived from this configuration.
    pub fn registry_settings(&self) -> RegistrySettings {
        RegistrySettings {
            max_manifest_bytes: self.limits.max_manifest_bytes,
            min_copies: self.durability.min_copies,
            min_regions: self.durability.min_regions,
            write_timeout: Duration::from_millis(self.raft.write_timeout_ms),
            copy_bytes_per_sec_per_peer: self.replication.max_bytes_per_sec_per_peer,
            copy_bytes_per_sec_while_busy: self.replication.busy_bytes_per_sec,
            routing: crate::registry::routing::Routing {
                // Validated by `Config::validate`; an invalid list routes nothing.
                client_regions: crate::registry::routing::ClientRegions::parse(
                    &self.routing.client_regions,
                )
                .unwrap_or_default(),
                redirect_missing: self.routing.redirect_missing,
            },
            upload_idle_timeout: Duration::from_secs(self.uploads.expiry_secs),
            gc_grace: Duration::from_secs(self.gc.grace_period_secs),
            upload_limits: crate::registry::UploadLimits {
                max_sessions: self.limits.max_upload_sessions,
                max_sessions_per_client: self.limits.max_upload_sessions_per_client,
            },
        }
    }
}

/// The valid CIDRs of a list (`Config::validate` reports the others).
fn cidrs(list: &[String]) -> Vec<crate::auth::IpNet> {
    list.iter()
        .filter_map(|c| crate::auth::parse_cidr(c).ok())
        .collect()
}

/// `config` when there is no problem, else every problem.
fn finish(config: Config, problems: Vec<String>) -> Result<Config, ConfigError> {
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { problems })
    }
}

/// Whether `s` looks like `host:port` (a name or IP, and a port number).
fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

/// An environment value as TOML: integers and booleans typed, everything else a string.
fn env_value(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(v.to_string())
    }
}

fn set_path(doc: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut table = doc;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if !entry.is_table() {
            *entry = toml::Value::Table(Default::default());
        }
        table = entry.as_table_mut().expect("just made a table");
    }
    table.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_config_is_the_documented_default() {
        let c = Config::load("", &env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.data_dir, PathBuf::from("./berth-data"));
        assert_eq!(c.durability.min_copies, 1);
        assert_eq!(c.limits.max_manifest_bytes, 4 * 1024 * 1024);
        assert!(!c.storage.direct_writes);
        assert_eq!(c.storage.reserve_bytes, 1024 * 1024 * 1024);
        assert_eq!(c.storage.reserve_percent, 5);
        let c = Config::load("", &env(&[("BERTH_STORAGE__DIRECT_WRITES", "true")])).unwrap();
        assert!(c.storage.direct_writes);
    }

    #[test]
    fn storage_reserve_is_configurable_and_checked() {
        let c = Config::load(
            "[storage]\nreserve_bytes = 0\n",
            &env(&[("BERTH_STORAGE__RESERVE_PERCENT", "10")]),
        )
        .unwrap();
        assert_eq!(
            c.storage.reserve(),
            crate::space::Reserve {
                bytes: 0,
                percent: 10
            }
        );
        let err = Config::load("[storage]\nreserve_percent = 51\n", &env(&[])).unwrap_err();
        assert!(err.to_string().contains("storage.reserve_percent"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let file = "listen = \"127.0.0.1:6000\"\n[raft]\nheartbeat_ms = 50\n";
        let c = Config::load(
            file,
            &env(&[
                ("BERTH_LISTEN", "0.0.0.0:7001"),
                ("BERTH_TLS__ALLOW_PLAINTEXT", "true"),
                ("BERTH_RAFT__HEARTBEAT_MS", "70"),
                ("BERTH_CONFIG", "x.toml"),
                ("OTHER", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:7001");
        assert_eq!(c.raft.heartbeat_ms, 70);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Config::load("lisen = \"x\"", &env(&[])).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = Config::load("", &env(&[("BERTH_NOPE", "1")])).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let file =
            "version = 2\nnode_id = 0\n[durability]\nmin_copies = 0\n[raft]\nheartbeat_ms = 2000\n";
        let err = Config::load(file, &env(&[])).unwrap_err();
        let text = err.to_string();
        for needle in [
            "version",
            "node_id",
            "min_copies",
            "election_timeout_min_ms",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert_eq!(err.problems.len(), 4, "{text}");
    }

    #[test]
    fn metrics_are_on_by_default_and_switched_off_by_file_or_env() {
        assert!(Config::load("", &env(&[])).unwrap().metrics.enabled);
        let c = Config::load("[metrics]\nenabled = false\n", &env(&[])).unwrap();
        assert!(!c.metrics.enabled);
        let c = Config::load("", &env(&[("BERTH_METRICS__ENABLED", "false")])).unwrap();
        assert!(!c.metrics.enabled);
        let err = Config::load("[metrics]\nenable = false\n", &env(&[])).unwrap_err();
        assert!(err.to_string().contains("enable"), "{err}");
    }

    #[test]
    fn preferred_leader_region_loads_from_env_and_is_checked() {
        assert_eq!(
            Config::load("", &env(&[]))
                .unwrap()
                .raft
                .preferred_leader_region,
            None
        );
        let c = Config::load(
            "",
            &env(&[("BERTH_RAFT__PREFERRED_LEADER_REGION", "eu-west")]),
        )
        .unwrap();
        assert_eq!(c.raft.preferred_leader_region.as_deref(), Some("eu-west"));
        assert_eq!(
            c.raft_settings().preferred_leader_region.as_deref(),
            Some("eu-west")
        );
        let err = Config::load("[raft]\npreferred_leader_region = \" \"\n", &env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("raft.preferred_leader_region"),
            "{err}"
        );
    }

    #[test]
    fn cluster_addresses_are_checked() {
        let c = Config::load("", &env(&[("BERTH_JOIN", "10.0.0.1:7000")])).unwrap();
        assert_eq!(c.join.as_deref(), Some("10.0.0.1:7000"));
        assert_eq!(c.cluster_listen.to_string(), "127.0.0.1:7000");
        let err = Config::load(
            "join = \"http://x\"\nadvertise_cluster = \"node-1\"\n",
            &env(&[]),
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
    }

    #[test]
    fn http_settings_load_from_env_and_are_checked() {
        let c = Config::load(
            "[http]\nidle_timeout_secs = 5\n",
            &env(&[
                ("BERTH_HTTP__HEADER_READ_TIMEOUT_SECS", "2"),
                ("BERTH_HTTP__MAX_CONNECTIONS", "8"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.idle_timeout_secs, 5);
        assert_eq!(c.http.header_read_timeout_secs, 2);
        assert_eq!(c.http.max_connections, 8);
        assert_eq!(c.http.body_stall_timeout_secs, 60);
        assert_eq!(c.http.drain_max_bytes, 8 * 1024 * 1024);
        let err = Config::load(
            "[http]\nwrite_stall_timeout_secs = 0\nmax_connections = 0\ndrain_timeout_secs = 100000\n",
            &env(&[]),
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
    }
    #[test]
    fn durability_routing_and_replication_are_read_and_checked() {
        let c = Config::load("", &env(&[])).unwrap();
        assert_eq!(c.durability.min_regions, 1);
        assert!(c.routing.client_regions.is_empty() && !c.routing.redirect_missing);
        assert_eq!(c.replication.max_bytes_per_sec_per_peer, 0);
        assert_eq!(c.replication.busy_bytes_per_sec, 64 * 1024 * 1024);
        let file = "[durability]\nmin_copies = 2\nmin_regions = 2\n[routing]\n\
                    client_regions = [\"10.0.0.0/8=eu\"]\nredirect_missing = true\n\
                    [replication]\nmax_bytes_per_sec_per_peer = 1000\nbusy_bytes_per_sec = 0\n";
        let c = Config::load(file, &env(&[])).unwrap();
        assert_eq!((c.durability.min_copies, c.durability.min_regions), (2, 2));
        assert_eq!(c.routing.client_regions, vec!["10.0.0.0/8=eu".to_string()]);
        assert!(c.routing.redirect_missing);
        assert_eq!(c.replication.max_bytes_per_sec_per_peer, 1000);
        let settings = c.registry_settings();
        assert_eq!(settings.copy_bytes_per_sec_while_busy, 0);
        assert_eq!(
            settings
                .routing
                .client_regions
                .region_of("10.2.3.4".parse().unwrap()),
            Some("eu")
        );
        // The environment's form: one string, entries separated by commas.
        let c = Config::load(
            "",
            &env(&[(
                "BERTH_ROUTING__CLIENT_REGIONS",
                "127.0.0.1/32=r2, 10.0.0.0/8=r1",
            )]),
        )
        .unwrap();
        assert_eq!(c.routing.client_regions.len(), 2);
        let err = Config::load(
            "[durability]\nmin_regions = 0\n[routing]\nclient_regions = [\"10.0.0.0/40=eu\", \"10.0.0.0/8=\"]\n",
            &env(&[]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("durability.min_regions"), "{text}");
        assert_eq!(text.matches("routing.client_regions").count(), 2, "{text}");
    }

    #[test]
    fn auth_is_on_beyond_loopback_and_its_settings_are_checked() {
        let c = Config::load("", &env(&[])).unwrap();
        assert!(!c.auth_enabled());
        let c = Config::load(
            "[tls]\nallow_plaintext = true\n",
            &env(&[
                ("BERTH_LISTEN", "0.0.0.0:5000"),
                ("BERTH_AUTH__TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
            ]),
        )
        .unwrap();
        assert!(c.auth_enabled());
        let a = c.auth_settings().unwrap();
        assert_eq!(a.trusted_proxies.len(), 2);
        assert_eq!(a.bootstrap_admin_password, None);
        let c = Config::load("", &env(&[("BERTH_AUTH__ENABLED", "true")])).unwrap();
        assert!(c.auth_enabled());
        // Auth with an open cluster port beyond loopback: refused unless allowed.
        let open = [
            ("BERTH_AUTH__ENABLED", "true"),
            ("BERTH_CLUSTER_LISTEN", "0.0.0.0:7000"),
        ];
        let err = Config::load("", &env(&open)).unwrap_err();
        assert!(err.to_string().contains("allow_open_cluster_port"), "{err}");
        let mut allowed = open.to_vec();
        allowed.push(("BERTH_AUTH__ALLOW_OPEN_CLUSTER_PORT", "true"));
        assert!(
            Config::load("", &env(&allowed))
                .unwrap()
                .open_cluster_port_with_auth()
        );
        let err = Config::load(
            "",
            &env(&[
                ("BERTH_AUTH__TRUSTED_PROXIES", "10.0.0.0/33"),
                ("BERTH_AUTH__TOKEN_TTL_SECS", "0"),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-a-file\nignored\n").unwrap();
        let mut c = Config::default();
        c.auth.bootstrap_admin_password_file = Some(f);
        assert_eq!(
            c.auth_settings()
                .unwrap()
                .bootstrap_admin_password
                .as_deref(),
            Some("from-a-file")
        );
    }

    #[test]
    fn plaintext_beyond_loopback_needs_tls_or_allow_plaintext() {
        let c = Config::load("", &env(&[])).unwrap();
        assert!(c.tls.files().is_none() && !c.tls.allow_plaintext);
        assert_eq!(c.tls.watch_interval(), Some(Duration::from_secs(5)));
        assert_eq!(c.advertised_url(), "http://127.0.0.1:5000");
        for listen in ["0.0.0.0:5000", "10.1.2.3:5000", "[::]:5000"] {
            let err = Config::load("", &env(&[("BERTH_LISTEN", listen)])).unwrap_err();
            assert_eq!(err.problems.len(), 1, "{err}");
            assert!(err.to_string().contains("tls.allow_plaintext"), "{err}");
            let c = Config::load(
                "[tls]\nallow_plaintext = true\n",
                &env(&[("BERTH_LISTEN", listen)]),
            )
            .unwrap();
            assert!(c.plaintext_beyond_loopback());
        }
        let c = Config::load("listen = \"[::1]:5000\"\n", &env(&[])).unwrap();
        assert!(!c.plaintext_beyond_loopback());
        let c = Config::load(
            "listen = \"0.0.0.0:5000\"\n",
            &env(&[
                ("BERTH_TLS__CERT_FILE", "/etc/berth/cert.pem"),
                ("BERTH_TLS__KEY_FILE", "/etc/berth/key.pem"),
                ("BERTH_TLS__WATCH_INTERVAL_SECS", "0"),
            ]),
        )
        .unwrap();
        let files = c.tls.files().expect("tls on");
        assert_eq!(files.cert, PathBuf::from("/etc/berth/cert.pem"));
        assert_eq!(files.key, PathBuf::from("/etc/berth/key.pem"));
        assert_eq!(c.tls.watch_interval(), None);
        assert!(!c.plaintext_beyond_loopback());
        assert_eq!(c.advertised_url(), "https://0.0.0.0:5000");
    }

    #[test]
    fn parse_leaves_value_checks_to_validate() {
        let env = env(&[("BERTH_LISTEN", "0.0.0.0:5000")]);
        assert!(Config::load("", &env).is_err());
        let mut c = Config::parse("", &env).unwrap();
        assert!(c.validate().is_err());
        c.tls.cert_file = Some(PathBuf::from("c.pem"));
        c.tls.key_file = Some(PathBuf::from("k.pem"));
        c.validate().unwrap();
        assert!(Config::parse("lisen = 1", &BTreeMap::new()).is_err());
    }

    #[test]
    fn cluster_tls_files_go_together() {
        let c = Config::load("", &env(&[])).unwrap();
        assert!(c.cluster_tls.files().is_none());
        let err = Config::load("[cluster_tls]\nca_file = \"ca.pem\"\n", &env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("cluster_tls: set ca_file"),
            "{err}"
        );
        let c = Config::load(
            "",
            &env(&[
                ("BERTH_CLUSTER_TLS__CA_FILE", "ca.pem"),
                ("BERTH_CLUSTER_TLS__CERT_FILE", "node.pem"),
                ("BERTH_CLUSTER_TLS__KEY_FILE", "node-key.pem"),
            ]),
        )
        .unwrap();
        let files = c.cluster_tls.files().expect("cluster tls on");
        assert_eq!(files.ca, PathBuf::from("ca.pem"));
        assert_eq!(files.cert, PathBuf::from("node.pem"));
        assert_eq!(files.key, PathBuf::from("node-key.pem"));
    }

    #[test]
    fn tls_cert_and_key_go_together() {
        let err = Config::load("[tls]\ncert_file = \"c.pem\"\n", &env(&[])).unwrap_err();
        assert_eq!(
            err.problems,
            vec!["tls.key_file: must be set with tls.cert_file"]
        );
        let err = Config::load("", &env(&[("BERTH_TLS__KEY_FILE", "k.pem")])).unwrap_err();
        assert_eq!(
            err.problems,
            vec!["tls.cert_file: must be set with tls.key_file"]
        );
    }

    #[test]
    fn audit_settings_default_load_from_env_and_are_checked() {
        let c = Config::load("", &env(&[])).unwrap();
        assert_eq!(c.audit.retention_days, 90);
        assert_eq!(c.audit_settings().export, None);
        assert_eq!(
            c.audit_settings().retention,
            Duration::from_secs(90 * 86_400)
        );
        let c = Config::load(
            "[audit]\nexport = \"stdout\"\n",
            &env(&[("BERTH_AUDIT__RETENTION_DAYS", "7")]),
        )
        .unwrap();
        assert_eq!(
            c.audit_settings().retention,
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            c.audit_settings().export,
            Some(crate::audit::Export::Stdout)
        );
        let c = Config::load("", &env(&[("BERTH_AUDIT__EXPORT", "/var/log/berth.jsonl")])).unwrap();
        assert_eq!(
            c.audit_settings().export,
            Some(crate::audit::Export::File("/var/log/berth.jsonl".into()))
        );
        let err =
            Config::load("[audit]\nretention_days = 0\nexport = \"\"\n", &env(&[])).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
    }

    #[test]
    fn replication_settings_default_and_are_checked() {
        let c = Config::load("", &env(&[("BERTH_REPLICATION__MAX_PARALLEL", "2")])).unwrap();
        assert_eq!(c.replication.copies_per_region, 1);
        assert_eq!(c.replication.max_parallel, 2);
        assert_eq!(
            c.replication_settings().full_pass_every,
            Duration::from_secs(300)
        );
        let err = Config::load(
            "[replication]\ncopies_per_region = 0\nfull_pass_secs = 0\n",
            &env(&[]),
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
    }
}
