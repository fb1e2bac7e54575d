//! Blocking calls to a node's gRPC services (`berth.admin.v1`: Admin and Faults).
//!
//! The harness and the tests are synchronous (plain `#[test]` functions and std threads); gRPC
//! calls run on one process-wide tokio runtime through [`block_on`]. Each call opens its own
//! connection and is bounded by a deadline, so a dead or partitioned node costs at most that
//! deadline. Errors come back as `Err(String)` with the gRPC code and message; the `must`
//! wrappers live on [`crate::Cluster`].

use std::future::Future;
use std::path::Path;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use berth_proto::admin::admin_client::AdminClient;
use berth_proto::admin::faults_client::FaultsClient;
use berth_proto::admin::{
    AddNodeRequest, Link, NodeRef, NodeStatusRequest, NodeStatusResponse, Progress,
    SetLinksRequest, SetPartitionRequest, StatusRequest, StatusResponse, TransferLeaderRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long connecting to a node's cluster address may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of a `NodeStatus` call (one node's own view).
pub const NODE_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of a `Status` call (the answering node asks every member).
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a `SetPartition` or `SetLinks` call.
pub const FAULT_TIMEOUT: Duration = Duration::from_secs(5);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cluster-tests-grpc")
            .enable_all()
            .build()
            .expect("failed to build the harness tokio runtime")
    })
}

/// Runs a future to completion on the harness runtime (from any non-async thread).
pub fn block_on<F: Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// The mutual TLS of every call, once a test set it.
static CLIENT_TLS: RwLock<Option<ClientTlsConfig>> = RwLock::new(None);

/// The `authorization` metadata of every Admin call, once a test set it.
static CLIENT_AUTHORIZATION: RwLock<Option<String>> = RwLock::new(None);

/// From now on, every Admin call of this process carries metadata `authorization` with
/// `value` (e.g. `Basic …` of the admin user: for a cluster with auth on and no mutual TLS).
/// Process-wide, as [`use_client_tls`].
pub fn use_client_authorization(value: &str) {
    *CLIENT_AUTHORIZATION
        .write()
        .unwrap_or_else(|e| e.into_inner()) = Some(value.to_string());
}

/// The value of an `Authorization` header (or `authorization` metadata) with Basic
/// credentials.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// `message` as a request with the credentials [`use_client_authorization`] set, if any.
fn request<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    let auth = CLIENT_AUTHORIZATION
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(value) = auth {
        let value = value.parse().expect("credentials are valid metadata");
        req.metadata_mut().insert("authorization", value);
    }
    req
}

/// From now on, every call of this process dials with mutual TLS: `ca.pem`, `node.pem` and
/// `node-key.pem` in `dir`. Process-wide (nextest runs each test in its own process); panics
/// when a file cannot be read.
pub fn use_client_tls(dir: &Path) {
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("failed to read {}: {e}", dir.join(name).display()))
    };
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("node.pem"), read("node-key.pem")));
    *CLIENT_TLS.write().unwrap_or_else(|e| e.into_inner()) = Some(config);
}

async fn channel(addr: &str) -> Result<Channel, String> {
    let tls = CLIENT_TLS.read().unwrap_or_else(|e| e.into_inner()).clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("bad cluster address {addr}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("bad TLS settings for {addr}: {e}"))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("failed to connect to {addr}: {e}"))
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

async fn bounded<T>(
    addr: &str,
    what: &str,
    timeout: Duration,
    f: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(|e| format!("{what} at {addr}: {e}")),
        Err(_) => Err(format!("{what} at {addr}: no answer within {timeout:?}")),
    }
}

/// `Admin.NodeStatus` at `addr`: that node's own Raft view.
pub fn node_status(addr: &str) -> Result<NodeStatusResponse, String> {
    block_on(bounded(addr, "NodeStatus", NODE_STATUS_TIMEOUT, async {
        let mut c = AdminClient::new(channel(addr).await?);
        c.node_status(request(NodeStatusRequest {}))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| status_text(&s))
    }))
}

/// `Admin.Status` at `addr`: the whole cluster as that node sees it.
pub fn status(addr: &str) -> Result<StatusResponse, String> {
    block_on(bounded(addr, "Status", STATUS_TIMEOUT, async {
        let mut c = AdminClient::new(channel(addr).await?);
        c.status(request(StatusRequest {}))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| status_text(&s))
    }))
}

/// A membership operation of the admin service.
#[derive(Debug, Clone)]
pub enum Change {
    /// `AddNode`: add as a learner and wait until it caught up.
    Add(AddNodeRequest),
    /// `PromoteNode`: learner → voter.
    Promote(u64),
    /// `DemoteNode`: voter → learner.
    Demote(u64),
    /// `RemoveNode`.
    Remove(u64),
    /// `TransferLeader` to this voter.
    TransferLeader(u64),
}

/// Why a membership operation did not complete.
#[derive(Debug, Clone)]
pub struct ChangeError {
    /// The gRPC code the stream (or the call) ended with; `None` for a transport problem or a
    /// stream that ended without `done`.
    pub code: Option<tonic::Code>,
    /// What happened, with the progress seen so far.
    pub message: String,
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(c) => write!(f, "{c:?}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Runs a membership operation at `addr` and consumes its `Progress` stream until the message
/// with `done = true`. Returns every progress message; `Err` when the call or the stream ends
/// with an error status, the stream ends without `done`, or `timeout` passes.
pub fn change(addr: &str, op: Change, timeout: Duration) -> Result<Vec<Progress>, ChangeError> {
    block_on(async {
        let run = async {
            let mut seen: Vec<Progress> = Vec::new();
            let ch = channel(addr).await.map_err(|message| ChangeError {
                code: None,
                message,
            })?;
            let mut c = AdminClient::new(ch);
            let started = match op.clone() {
                Change::Add(req) => c.add_node(request(req)).await,
                Change::Promote(id) => c.promote_node(request(NodeRef { id })).await,
                Change::Demote(id) => c.demote_node(request(NodeRef { id })).await,
                Change::Remove(id) => c.remove_node(request(NodeRef { id })).await,
                Change::TransferLeader(to) => {
                    c.transfer_leader(request(TransferLeaderRequest { to }))
                        .await
                }
            };
            let mut stream = started
                .map_err(|s| ChangeError {
                    code: Some(s.code()),
                    message: s.message().to_string(),
                })?
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(p)) => {
                        let done = p.done;
                        seen.push(p);
                        if done {
                            return Ok(seen);
                        }
                    }
                    Ok(None) => {
                        return Err(ChangeError {
                            code: None,
                            message: format!(
                                "the stream ended without done; progress: {:?}",
                                messages(&seen)
                            ),
                        });
                    }
                    Err(s) => {
                        return Err(ChangeError {
                            code: Some(s.code()),
                            message: format!(
                                "{}; progress before: {:?}",
                                s.message(),
                                messages(&seen)
                            ),
                        });
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(ChangeError {
                code: None,
                message: format!("{op:?} at {addr}: not done within {timeout:?}"),
            }),
        }
    })
}

fn messages(p: &[Progress]) -> Vec<&str> {
    p.iter().map(|p| p.message.as_str()).collect()
}

/// `Faults.SetPartition` at `addr`: the node refuses calls from, and fails calls to, the
/// `blocked` peers (empty: heals). Needs a berth built with `--features fault-injection`.
pub fn set_partition(addr: &str, blocked: Vec<u64>) -> Result<(), String> {
    block_on(bounded(addr, "SetPartition", FAULT_TIMEOUT, async {
        let mut c = FaultsClient::new(channel(addr).await?);
        c.set_partition(SetPartitionRequest {
            blocked_node_ids: blocked,
        })
        .await
        .map(|_| ())
        .map_err(|s| {
            let hint = if s.code() == tonic::Code::Unimplemented {
                " (is BERTH_BIN built with `--features fault-injection`?)"
            } else {
                ""
            };
            format!("{}{hint}", status_text(&s))
        })
    }))
}

/// A link to one peer: the delay added to each direction and a bandwidth cap (bytes/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// Added to each direction (a round trip gains twice this).
    pub delay: Duration,
    /// Bytes per second in each direction; `None`: unlimited.
    pub bandwidth: Option<u64>,
}

/// `Faults.SetLinks` at `addr`: replaces the node's links to its peers, by peer id (empty:
/// clears them). Needs a berth built with `--features fault-injection`.
pub fn set_links(
    addr: &str,
    links: &std::collections::BTreeMap<u64, LinkSpec>,
) -> Result<(), String> {
    let links: Vec<Link> = links
        .iter()
        .map(|(peer, l)| Link {
            peer_id: *peer,
            delay_ms: l.delay.as_millis() as u64,
            bandwidth_bytes_per_sec: l.bandwidth.unwrap_or(0),
        })
        .collect();
    block_on(bounded(addr, "SetLinks", FAULT_TIMEOUT, async {
        let mut c = FaultsClient::new(channel(addr).await?);
        c.set_links(SetLinksRequest { links })
            .await
            .map(|_| ())
            .map_err(|s| status_text(&s))
    }))
}
