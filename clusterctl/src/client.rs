//! The gRPC calls to one member's Admin service, all under one deadline.
//!
//! [`AdminConn::connect`] fixes the deadline of the whole command (`--timeout`); every later
//! call sends what is left of it as the gRPC timeout (so the server knows it) and is also
//! wrapped in a tokio timeout (so a silent server cannot hold the CLI). Nothing is printed
//! here: progress goes to the caller's callback. Which error comes when:
//!
//! - no connection → [`Error::Connect`] / [`Error::ConnectTimedOut`] (`cannot reach …`);
//! - an error status from the server, or mid-stream → [`Error::Rpc`] with the server's code;
//! - the deadline passes first → [`Error::TimedOut`];
//! - a membership stream ends without `done = true` → [`Error::Incomplete`].
//!
//! Every call carries the command's credentials, when it has any, as metadata
//! `authorization` (`Basic` for `--user`, `Bearer` for `--token`).

use std::future::Future;
use std::time::Duration;

use base64::Engine;

use berth_proto::admin::admin_client::AdminClient;
use berth_proto::admin::{
    GcReport, GcRunRequest, GcStatusRequest, GcStatusResponse, NodeRef, Progress,
    ReplicationPolicies, ReplicationPolicyEntry, ReplicationPolicyRef, ReplicationStatusRequest,
    ReplicationStatusResponse, StatusRequest, StatusResponse, TransferLeaderRequest,
};
use tokio::time::{Instant, timeout_at};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::change::Change;
use crate::cli::{Endpoint, TlsFiles};
use crate::error::Error;

/// What `status` and `nodes list` are called in error messages.
const STATUS_WHAT: &str = "get the cluster status";

/// A connection to one member's Admin service with the command's deadline.
#[derive(Debug)]
pub struct AdminConn {
    client: AdminClient<Channel>,
    deadline: Instant,
    timeout: Duration,
    authorization: Option<AsciiMetadataValue>,
}

/// The credentials of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user or token and its password.
    Basic {
        /// The login name.
        user: String,
        /// Its password.
        password: String,
    },
    /// A registry token.
    Bearer(String),
}

impl Credentials {
    /// The `authorization` metadata value; [`Error::Input`] when it cannot be metadata (a
    /// token with characters outside visible ASCII).
    pub fn metadata(&self) -> Result<AsciiMetadataValue, Error> {
        let value = match self {
            Credentials::Basic { user, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            Credentials::Bearer(token) => format!("Bearer {token}"),
        };
        value
            .parse()
            .map_err(|_| Error::Input("the token holds characters that cannot be sent".into()))
    }
}

impl AdminConn {
    /// Connects to `endpoint`; `timeout` is the deadline of the whole command, counted from
    /// now. Fails with [`Error::Connect`] or [`Error::ConnectTimedOut`].
    /// With `tls` it presents the client certificate and verifies the member's against the CA.
    /// `credentials` go with every call.
    pub async fn connect(
        endpoint: &Endpoint,
        tls: Option<&TlsFiles>,
        credentials: Option<&Credentials>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let deadline = Instant::now() + timeout;
        let authorization = credentials.map(Credentials::metadata).transpose()?;
        let connect_error = |source| Error::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        let mut target = tonic::transport::Endpoint::from_shared(endpoint.uri(tls.is_some()))
            .map_err(connect_error)?
            .connect_timeout(timeout);
        if let Some(files) = tls {
            let read = crate::certs::read_file;
            let config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(&files.ca)?))
                .identity(tonic::transport::Identity::from_pem(
                    read(&files.cert)?,
                    read(&files.key)?,
                ));
            target = target.tls_config(config).map_err(connect_error)?;
        }
        let channel = match timeout_at(deadline, target.connect()).await {
            Ok(connected) => connected.map_err(connect_error)?,
            Err(_) => {
                return Err(Error::ConnectTimedOut {
                    endpoint: endpoint.to_string(),
                    after: timeout,
                });
            }
        };
        Ok(Self {
            client: AdminClient::new(channel),
            deadline,
            timeout,
            authorization,
        })
    }

    /// One unary call: `call` gets a client and `message` wrapped with the credentials and
    /// what is left of the deadline. `what` names it in errors (`failed to <what>`);
    /// `may_complete` says a timed-out call may still take effect (a change).
    pub async fn call<M, T, F, Fut>(
        &mut self,
        what: &str,
        may_complete: bool,
        message: M,
        call: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(AdminClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let request = request(message, self.deadline, self.authorization.as_ref());
        match timeout_at(self.deadline, call(self.client.clone(), request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.rpc_error(what, status, may_complete)),
            Err(_) => Err(self.timed_out(what, may_complete)),
        }
    }

    /// `Admin.Status`: the whole cluster as the answering member sees it.
    pub async fn status(&mut self) -> Result<StatusResponse, Error> {
        self.call(
            STATUS_WHAT,
            false,
            StatusRequest {},
            |mut c, r| async move { c.status(r).await },
        )
        .await
    }

    /// `Admin.ReplicationStatus` of `reference` (empty: everything).
    pub async fn replication_status(
        &mut self,
        reference: &str,
        verbose: bool,
    ) -> Result<ReplicationStatusResponse, Error> {
        let what = replication_what(reference);
        let message = ReplicationStatusRequest {
            reference: reference.to_owned(),
            verbose,
        };
        self.call(&what, false, message, |mut c, r| async move {
            c.replication_status(r).await
        })
        .await
    }

    /// `Admin.GetReplicationPolicy` (empty pattern: every policy).
    pub async fn get_policy(&mut self, pattern: &str) -> Result<ReplicationPolicies, Error> {
        let what = match pattern {
            "" => "get the replication policies".to_owned(),
            p => format!("get the replication policy of {p}"),
        };
        let message = ReplicationPolicyRef {
            pattern: pattern.to_owned(),
        };
        self.call(&what, false, message, |mut c, r| async move {
            c.get_replication_policy(r).await
        })
        .await
    }

    /// `Admin.SetReplicationPolicy`: returns the policy as stored.
    pub async fn set_policy(
        &mut self,
        entry: ReplicationPolicyEntry,
    ) -> Result<ReplicationPolicyEntry, Error> {
        let what = format!("set the replication policy of {}", entry.pattern);
        self.call(&what, true, entry, |mut c, r| async move {
            c.set_replication_policy(r).await
        })
        .await
    }

    /// `Admin.ClearReplicationPolicy`: returns the policies left.
    pub async fn clear_policy(&mut self, pattern: &str) -> Result<ReplicationPolicies, Error> {
        let what = format!("clear the replication policy of {pattern}");
        let message = ReplicationPolicyRef {
            pattern: pattern.to_owned(),
        };
        self.call(&what, true, message, |mut c, r| async move {
            c.clear_replication_policy(r).await
        })
        .await
    }

    /// `Admin.Audit`: this member's own audit records.
    pub async fn audit(
        &mut self,
        message: berth_proto::admin::AuditRequest,
    ) -> Result<berth_proto::admin::AuditResponse, Error> {
        const WHAT: &str = "read the audit log";
        let request = request(message, self.deadline, self.authorization.as_ref());
        match timeout_at(self.deadline, self.client.audit(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.rpc_error(WHAT, status, false)),
            Err(_) => Err(self.timed_out(WHAT, false)),
        }
    }

    /// `Admin.GcRun` on the answering node: with `wait` its report when it ends, else right
    /// after it started. A pass already running there is [`Error::Rpc`] with
    /// FAILED_PRECONDITION.
    pub async fn gc_run(&mut self, dry_run: bool, wait: bool) -> Result<GcReport, Error> {
        let what = if dry_run {
            "run a dry garbage collection pass"
        } else {
            "run a garbage collection pass"
        };
        let message = GcRunRequest { dry_run, wait };
        // Not `may_complete`: its hint sends the user to `clusterctl status`, which does not
        // show passes (a pass that started anyway shows in `gc status`).
        self.call(
            what,
            false,
            message,
            |mut c, r| async move { c.gc_run(r).await },
        )
        .await
    }

    /// `Admin.GcStatus`: the answering node's current or last pass and its reaper's work.
    pub async fn gc_status(&mut self) -> Result<GcStatusResponse, Error> {
        self.call(
            "get the garbage collection status",
            false,
            GcStatusRequest {},
            |mut c, r| async move { c.gc_status(r).await },
        )
        .await
    }

    /// The command's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The command's whole timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one membership change, calling `on_progress` with every `Progress` message as
    /// it arrives (the final `done` one included), and returns the final message. An error
    /// from `on_progress` stops the stream and is returned as is.
    pub async fn apply(
        &mut self,
        change: &Change,
        mut on_progress: impl FnMut(&Progress) -> Result<(), Error>,
    ) -> Result<Progress, Error> {
        let what = change.what();
        let deadline = self.deadline;
        let auth = self.authorization.clone();
        let auth = auth.as_ref();
        let client = &mut self.client;
        let run = async {
            let response = match change {
                Change::Add(req) => client.add_node(request(req.clone(), deadline, auth)).await,
                Change::Promote { id } => {
                    let node = NodeRef { id: *id };
                    client.promote_node(request(node, deadline, auth)).await
                }
                Change::Demote { id } => {
                    let node = NodeRef { id: *id };
                    client.demote_node(request(node, deadline, auth)).await
                }
                Change::Remove { id } => {
                    let node = NodeRef { id: *id };
                    client.remove_node(request(node, deadline, auth)).await
                }
                Change::TransferLeader { to } => {
                    let to = TransferLeaderRequest { to: *to };
                    client.transfer_leader(request(to, deadline, auth)).await
                }
            };
            let mut stream = response.map_err(Failure::Status)?.into_inner();
            while let Some(progress) = stream.message().await.map_err(Failure::Status)? {
                on_progress(&progress).map_err(Failure::Local)?;
                if progress.done {
                    return Ok(progress);
                }
            }
            Err(Failure::Local(Error::Incomplete { what: what.clone() }))
        };
        match timeout_at(deadline, run).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(Failure::Status(status))) => Err(self.rpc_error(&what, status, true)),
            Ok(Err(Failure::Local(err))) => Err(err),
            Err(_) => Err(self.timed_out(&what, true)),
        }
    }

    /// Maps an error status. tonic reports its own client-side expiry of the gRPC timeout
    /// as `CANCELLED "Timeout expired"`; once the deadline has passed that is our timeout.
    fn rpc_error(&self, what: &str, status: tonic::Status, may_complete: bool) -> Error {
        if status.code() == tonic::Code::Cancelled && Instant::now() >= self.deadline {
            return self.timed_out(what, may_complete);
        }
        Error::Rpc {
            what: what.to_owned(),
            status,
        }
    }

    fn timed_out(&self, what: &str, may_complete: bool) -> Error {
        Error::TimedOut {
            what: what.to_owned(),
            after: self.timeout,
            may_complete,
        }
    }
}

/// How messages name a replication status request.
pub fn replication_what(reference: &str) -> String {
    match reference {
        "" => "get the replication status".to_owned(),
        r => format!("get the replication status of {r}"),
    }
}

/// Why a membership stream stopped early: the server's status, or our own error.
enum Failure {
    Status(tonic::Status),
    Local(Error),
}

/// A request carrying what is left until `deadline` as its gRPC timeout, and the
/// credentials.
fn request<T>(
    message: T,
    deadline: Instant,
    authorization: Option<&AsciiMetadataValue>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    if let Some(a) = authorization {
        request.metadata_mut().insert("authorization", a.clone());
    }
    request
}
