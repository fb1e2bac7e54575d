//! `berth.admin.v1.Admin`: cluster status and membership changes for `clusterctl` (and for
//! `berth serve --join`), plus the test-only `Faults` service.
//!
//! Status is gathered from every member with a short deadline each; a member that does not
//! answer is reported unreachable. A membership change that reaches a follower is relayed
//! once to the leader, its progress stream passed through. Replication status and policies
//! are answered by `replication::Replication` (policy changes are Raft writes, forwarded by a
//! follower like every write). Users, tokens, scope maps, keys and auth settings are
//! `admin_auth.rs`'s, and so is the check that every call here passes first ([`AdminGuard`]):
//! relayed calls and the NodeStatus fan-out carry the caller's credentials along.
//!
//! Every change (membership, leadership, policies) is recorded in the audit log of the node
//! the client called, with its outcome, through [`AdminService::audited`] (unary calls) or
//! [`AdminService::operate`] (streams); a call relayed to the leader is not recorded again
//! there. The caller is named by [`AdminCaller::of`]. `Audit` answers from this node's log.
//!
//! Garbage collection (`GcRun`, `GcStatus`) is this node's `gc::Collector` and reaper: the
//! handlers only convert (a pass is run by the node that was called, never relayed).
//! Lifecycle (locks, soft delete, retention, namespaces, purge) is `admin_lifecycle.rs`'s:
//! here each call is only admitted (reads) or audited under its RPC name (changes). Webhooks
//! are `admin_webhooks.rs`'s, the same way (a ping, which sends and logs a delivery, is
//! audited like a change).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::admin as pb;
use berth_proto::admin::admin_client::AdminClient;
use berth_proto::admin::admin_server::Admin;
use berth_proto::admin::{
    AddNodeRequest, AuditField, AuditRequest, AuditResponse, BlobReplication, Member, NodeRef,
    NodeStatusRequest, NodeStatusResponse, Progress, RegionReplication, ReplicationPolicies,
    ReplicationPolicyEntry, ReplicationPolicyRef, ReplicationStatusRequest,
    ReplicationStatusResponse, StatusRequest, StatusResponse, TransferLeaderRequest,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::admin_auth::{AdminGuard, AuthRpc, forward_authorization};
use super::admin_lifecycle::LifecycleRpc;
use super::admin_webhooks::WebhooksRpc;
use super::status::status;
use crate::audit::{Audit, AuditQuery, AuditRecord};
use crate::cluster::{self, Cluster, MembershipError, PeerError};
use crate::gc::reaper::Reaper;
use crate::gc::{Collector, GcReport};
use crate::meta::{NodeId, NodeInfo, ReplicationPolicy};
use crate::replication::{Replication, ReplicationError, ReplicationReport};
use crate::types::ErrorKind;

/// Deadline for one member's NodeStatus during a Status call.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline for a membership change relayed to the leader.
const RELAY_TIMEOUT: Duration = Duration::from_secs(600);
/// Metadata on a call one node relayed to the leader; it is never relayed again.
const RELAYED: &str = "berth-admin-relayed";

type ProgressStream = BoxStream<'static, Result<Progress, Status>>;

/// Records an `Audit` call returns when it asks for none in particular.
const AUDIT_DEFAULT_LIMIT: usize = 1000;
/// Bytes of records an `Audit` answer holds at most (the newest ones), below the 4 MiB a gRPC
/// client decodes by default.
const AUDIT_ANSWER_BYTES: usize = 3 * 1024 * 1024;

/// The admin service of this node.
pub(super) struct AdminService {
    cluster: Cluster,
    replication: Arc<Replication>,
    guard: AdminGuard,
    auth: AuthRpc,
    audit: Audit,
    gc: Arc<Collector>,
    reaper: Arc<Reaper>,
    lifecycle: LifecycleRpc,
    webhooks: WebhooksRpc,
}

impl AdminService {
    // One argument per part of the node the service answers for (as `rpc::serve`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cluster: Cluster,
        replication: Arc<Replication>,
        guard: AdminGuard,
        auth: AuthRpc,
        audit: Audit,
        gc: Arc<Collector>,
        reaper: Arc<Reaper>,
        lifecycle: LifecycleRpc,
        webhooks: WebhooksRpc,
    ) -> AdminService {
        AdminService {
            cluster,
            replication,
            guard,
            auth,
            audit,
            gc,
            reaper,
            lifecycle,
            webhooks,
        }
    }

    /// Checks the caller's credentials, then hands over the message.
    async fn admit<T>(&self, req: Request<T>) -> Result<T, Status> {
        self.guard.check(&req).await?;
        Ok(req.into_inner())
    }
}

/// Who made an admin call, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AdminCaller {
    /// The user of the call's `authorization` metadata (Basic), else the client
    /// certificate (`cert:` and the start of its SHA-256), else `cluster`.
    pub(super) identity: String,
    /// The connection's peer address.
    pub(super) address: Option<IpAddr>,
}

impl AdminCaller {
    /// The caller of `req`; `None` for a call another node relayed (recorded where it was
    /// made).
    pub(super) fn of<T>(req: &Request<T>) -> Option<AdminCaller> {
        // A call another node relayed is recorded where it was made. Only a peer that proved
        // itself (a CA-signed certificate) can relay; from anyone else the marker is ignored,
        // so that a client cannot set it to go unrecorded.
        if req.metadata().contains_key(RELAYED) && req.peer_certs().is_some() {
            return None;
        }
        // The name presented; the guard checks it before the call runs.
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let user = presented.and_then(|v| {
            crate::auth::parse_basic(v)
                .map(|(user, _)| user)
                .or_else(|| crate::auth::jwt::presented_subject(v).map(|s| format!("token:{s}")))
        });
        let cert = || {
            let certs = req.peer_certs()?;
            let leaf = certs.first()?;
            let sum = <sha2::Sha256 as sha2::Digest>::digest(leaf.as_ref());
            Some(format!("cert:{}", &hex::encode(sum)[..16]))
        };
        Some(AdminCaller {
            // A certificate is verified by the handshake; a presented name is checked by the
            // guard only without mutual TLS: the certificate names the caller when there is one.
            identity: cert().or(user).unwrap_or_else(|| "cluster".to_string()),
            address: req.remote_addr().map(|a| a.ip()),
        })
    }
}

/// The outcome of a change as the audit log states it.
fn outcome_of(result: Result<(), &Status>) -> String {
    match result {
        Ok(()) => "ok".to_string(),
        Err(s) => format!("failed ({:?}): {}", s.code(), s.message()),
    }
}

/// Records a streamed change once: when it reports done or fails, or, when the stream is
/// dropped before either, as unfinished.
struct ChangeRecord {
    audit: Audit,
    who: AdminCaller,
    what: &'static str,
    target: String,
    recorded: bool,
}

impl ChangeRecord {
    fn record(&mut self, outcome: &str) {
        if !std::mem::replace(&mut self.recorded, true) {
            let who = &self.who;
            self.audit
                .admin_change(&who.identity, who.address, self.what, &self.target, outcome);
        }
    }
}

impl Drop for ChangeRecord {
    fn drop(&mut self) {
        self.record("unfinished: the stream closed before the change completed");
    }
}

/// About the encoded size of an audit record message (its text plus field overheads).
fn message_bytes(r: &berth_proto::admin::AuditRecord) -> usize {
    let fields: usize = r
        .fields
        .iter()
        .map(|f| f.key.len() + f.value.len() + 8)
        .sum();
    r.region.len() + r.identity.len() + r.address.len() + r.event.len() + fields + 40
}

/// The newest of `records` (oldest first) whose [`message_bytes`] add up to `budget` at most.
fn newest_that_fit(
    mut records: Vec<berth_proto::admin::AuditRecord>,
    budget: usize,
) -> Vec<berth_proto::admin::AuditRecord> {
    let mut bytes = 0;
    let fit = records
        .iter()
        .rev()
        .take_while(|r| {
            bytes += message_bytes(r);
            bytes <= budget
        })
        .count();
    records.split_off(records.len() - fit)
}

/// The wire form of an audit record.
fn audit_message(r: AuditRecord) -> berth_proto::admin::AuditRecord {
    berth_proto::admin::AuditRecord {
        time_ms: r.time_ms,
        node_id: r.node,
        region: r.region,
        identity: r.identity.unwrap_or_default(),
        address: r.address.map(|a| a.to_string()).unwrap_or_default(),
        event: r.event.name().to_string(),
        fields: r
            .event
            .fields()
            .into_iter()
            .map(|(key, value)| AuditField {
                key: key.to_string(),
                value,
            })
            .collect(),
    }
}

fn replication_status(e: ReplicationError) -> Status {
    status(e.kind(), e.to_string())
}

/// The wire form of a list of policies, by pattern.
fn policies_message(policies: Vec<(String, ReplicationPolicy)>) -> ReplicationPolicies {
    ReplicationPolicies {
        policies: policies
            .into_iter()
            .map(|(pattern, p)| policy_message(pattern, p))
            .collect(),
    }
}

fn policy_message(pattern: String, p: ReplicationPolicy) -> ReplicationPolicyEntry {
    ReplicationPolicyEntry {
        pattern,
        policy: Some(berth_proto::admin::ReplicationPolicy {
            regions: p.regions,
            on_demand: p.on_demand,
        }),
    }
}

fn report_message(node_id: NodeId, r: ReplicationReport) -> ReplicationStatusResponse {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ReplicationStatusResponse {
        node_id,
        complete: r.complete(),
        regions: r
            .regions
            .into_iter()
            .map(|g| RegionReplication {
                region: g.region,
                complete: g.complete,
                pending_blobs: g.pending_blobs,
                pending_bytes: g.pending_bytes,
                oldest_pending_age_ms: g.oldest_pending_ms.map_or(0, |t| now.saturating_sub(t)),
            })
            .collect(),
        blobs: r
            .blobs
            .into_iter()
            .map(|b| BlobReplication {
                digest: b.digest.to_string(),
                size: b.size,
                holders: b.holders,
                wanted: b.wanted,
            })
            .collect(),
        manifests: r.manifests,
        stale: r.stale.is_some(),
        stale_reason: r.stale.unwrap_or_default(),
        applied_index: r.applied_index,
    }
}

/// The wire form of a garbage-collection report (`finished_ms` 0 while it runs, `error`
/// empty when none).
fn gc_report_message(r: GcReport) -> pb::GcReport {
    pb::GcReport {
        id: r.id,
        dry_run: r.dry_run,
        started_ms: r.started_ms,
        finished_ms: r.finished_ms.unwrap_or(0),
        candidates: r.candidates,
        blobs: r.blobs,
        bytes: r.bytes,
        per_node: r
            .per_node
            .into_iter()
            .map(|(node_id, (blobs, bytes))| pb::GcNodeFreed {
                node_id,
                blobs,
                bytes,
            })
            .collect(),
        counted: r.counted,
        error: r.error.unwrap_or_default(),
        retention_deleted: r.retention_deleted,
        retention_skipped: r.retention_skipped,
        recycled_purged: r.recycled_purged,
    }
}

fn node_status_message(s: &cluster::NodeStatus) -> NodeStatusResponse {
    NodeStatusResponse {
        node_id: s.node_id,
        term: s.term,
        leader_id: s.leader_id.unwrap_or(0),
        last_log_index: s.last_log_index,
        applied_index: s.applied_index,
        state: s.state.to_string(),
    }
}

fn progress_message(p: cluster::Progress) -> Progress {
    Progress {
        message: p.message,
        done: p.done,
        matched_index: p.matched,
        target_index: p.target,
    }
}

impl AdminService {
    /// Asks one member for its own view, with the caller's credentials (`auth`).
    async fn member_status(
        &self,
        id: NodeId,
        auth: &MetadataMap,
    ) -> Result<NodeStatusResponse, String> {
        if id == self.cluster.node_id() {
            return Ok(node_status_message(&self.cluster.node_status()));
        }
        self.cluster
            .call_member(
                id,
                MEMBER_STATUS_TIMEOUT,
                NodeStatusRequest {},
                |channel, mut req| {
                    forward_authorization(auth, &mut req);
                    async move { AdminClient::new(channel).node_status(req).await }
                },
            )
            .await
            // What the member answered, or why it could not be asked.
            .map_err(|e| {
                e.status()
                    .map_or_else(|| e.to_string(), |s| s.message().to_string())
            })
    }

    /// Runs an admin change (`what`, e.g. `SetReplicationPolicy`, on `target`, e.g. its
    /// pattern) and records it with its outcome in the audit log. Every unary change goes
    /// through this:
    /// `self.audited(req, "What", |r| r.name.clone(), |r| async move { … }).await`.
    pub(super) async fn audited<Req, Resp, Fut>(
        &self,
        req: Request<Req>,
        what: &'static str,
        target: impl FnOnce(&Req) -> String,
        run: impl FnOnce(Req) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Fut: Future<Output = Result<Resp, Status>>,
    {
        let who = AdminCaller::of(&req);
        let target = target(req.get_ref());
        // A refused call is recorded as refused: who tried what is worth keeping.
        let result = match self.guard.check(&req).await {
            Ok(()) => run(req.into_inner()).await,
            Err(refused) => Err(refused),
        };
        if let Some(who) = who {
            let outcome = outcome_of(result.as_ref().map(|_| ()));
            self.audit
                .admin_change(&who.identity, who.address, what, &target, &outcome);
        }
        result.map(Response::new)
    }

    /// What records a streamed change (`what` on `target`) made through `req`; `None` for a
    /// relayed call.
    fn change_record<T>(
        &self,
        req: &Request<T>,
        what: &'static str,
        target: String,
    ) -> Option<ChangeRecord> {
        AdminCaller::of(req).map(|who| ChangeRecord {
            audit: self.audit.clone(),
            who,
            what,
            target,
            recorded: false,
        })
    }

    /// Runs a membership operation here if this node leads, else relays it to the leader.
    async fn operate<Req, Op, Fut, Relay, RFut>(
        &self,
        req: Request<Req>,
        op: Op,
        relay: Relay,
    ) -> Result<Response<ProgressStream>, Status>
    where
        Req: Send + 'static,
        Op: FnOnce(Cluster, Req, mpsc::Sender<cluster::Progress>) -> Fut,
        Fut: Future<Output = Result<(), MembershipError>> + Send + 'static,
        Relay: FnOnce(AdminClient<tonic::transport::Channel>, Request<Req>) -> RFut,
        RFut: Future<Output = Result<Response<tonic::Streaming<Progress>>, Status>>,
    {
        self.guard.check(&req).await?;
        if self.cluster.is_leader() {
            let (ptx, mut prx) = mpsc::channel::<cluster::Progress>(16);
            let (otx, orx) = mpsc::channel::<Result<Progress, Status>>(16);
            let work = op(self.cluster.clone(), req.into_inner(), ptx);
            tokio::spawn(async move {
                let forward = async {
                    while let Some(p) = prx.recv().await {
                        let _ = otx.send(Ok(progress_message(p))).await;
                    }
                };
                let (res, ()) = tokio::join!(work, forward);
                if let Err(e) = res {
                    let _ = otx.send(Err(e.into())).await;
                }
            });
            return Ok(Response::new(
                tokio_stream::wrappers::ReceiverStream::new(orx).boxed(),
            ));
        }
        // Every way the leader is out of reach from here is "unavailable, try again".
        let unavailable = |m: String| status(ErrorKind::Unavailable, m);
        if req.metadata().contains_key(RELAYED) {
            return Err(unavailable(
                "leadership is changing; try again (a relayed call reached a non-leader)".into(),
            ));
        }
        let auth = req.metadata().clone();
        let relayed = self
            .cluster
            .call_leader(RELAY_TIMEOUT, req.into_inner(), |channel, mut req| {
                req.metadata_mut()
                    .insert(RELAYED, "1".parse().expect("valid metadata"));
                forward_authorization(&auth, &mut req);
                relay(AdminClient::new(channel), req)
            })
            .await;
        let stream = match relayed {
            Ok((_, stream)) => stream,
            // What the leader (or the transport) answered passes through as it is.
            Err(PeerError::Call { status, .. }) => return Err(*status),
            Err(PeerError::NotMember(leader)) => {
                return Err(unavailable(format!(
                    "leader {leader} is not in the membership this node knows"
                )));
            }
            Err(e) => return Err(unavailable(e.to_string())),
        };
        Ok(Response::new(stream.boxed()))
    }

    /// A started membership change's stream, recorded by `record` when it reports done or
    /// fails (or as unfinished when dropped first); a change refused at once is recorded now.
    fn recorded(
        mut record: Option<ChangeRecord>,
        started: Result<Response<ProgressStream>, Status>,
    ) -> Result<Response<ProgressStream>, Status> {
        match started {
            Ok(stream) => Ok(stream.map(|s| {
                s.inspect(move |item| {
                    if let Some(r) = record.as_mut() {
                        match item {
                            Ok(p) if p.done => r.record("ok"),
                            Ok(_) => {}
                            Err(s) => r.record(&outcome_of(Err(s))),
                        }
                    }
                })
                .boxed()
            })),
            Err(s) => {
                if let Some(r) = record.as_mut() {
                    r.record(&outcome_of(Err(&s)));
                }
                Err(s)
            }
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.guard.check(&req).await?;
        let auth = req.metadata();
        let me = self.cluster.node_status();
        let members = self.cluster.members();
        let answers =
            futures::future::join_all(members.iter().map(|m| self.member_status(m.id, auth))).await;
        // Lag is measured against the leader's log, as the leader reports it.
        let leader_last = members.iter().zip(&answers).find_map(|(m, a)| match a {
            Ok(s) if s.state == "leader" => Some((m.id, s.last_log_index)),
            _ => None,
        });
        let out = members
            .iter()
            .zip(answers)
            .map(|(m, a)| {
                let mut member = Member {
                    id: m.id,
                    url: m.info.url.clone(),
                    cluster_addr: m.info.cluster_addr.clone(),
                    region: m.info.region.clone(),
                    zone: m.info.zone.clone(),
                    role: m.role.as_str().to_string(),
                    rtt_ms: self
                        .cluster
                        .peer_view(m.id)
                        .filter(|v| v.up)
                        .and_then(|v| v.rtt)
                        .map_or(0.0, |rtt| rtt.as_secs_f64() * 1000.0),
                    ..Member::default()
                };
                match a {
                    Ok(s) => {
                        member.reachable = true;
                        member.term = s.term;
                        member.last_log_index = s.last_log_index;
                        member.applied_index = s.applied_index;
                        member.lag =
                            leader_last.map_or(0, |(_, last)| last.saturating_sub(s.applied_index));
                        if s.state == "leader" {
                            member.role = "leader".to_string();
                        } else if member.role == "leader" {
                            member.role = "voter".to_string();
                        }
                    }
                    Err(e) => member.error = e,
                }
                member
            })
            .collect();
        Ok(Response::new(StatusResponse {
            node_id: me.node_id,
            term: me.term,
            leader_id: me.leader_id.unwrap_or(0),
            last_log_index: me.last_log_index,
            applied_index: me.applied_index,
            members: out,
        }))
    }

    async fn node_status(
        &self,
        req: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        self.admit(req).await?;
        Ok(Response::new(node_status_message(
            &self.cluster.node_status(),
        )))
    }

    type AddNodeStream = ProgressStream;

    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let target = format!(
            "node {} at {}",
            req.get_ref().id,
            req.get_ref().cluster_addr
        );
        let record = self.change_record(&req, "AddNode", target);
        let started = self
            .operate(
                req,
                |c, r, tx| async move {
                    let info = NodeInfo {
                        url: r.url,
                        cluster_addr: r.cluster_addr,
                        region: r.region,
                        zone: r.zone,
                    };
                    c.add_node(r.id, info, tx).await
                },
                |mut client, r| async move { client.add_node(r).await },
            )
            .await;
        Self::recorded(record, started)
    }

    type PromoteNodeStream = ProgressStream;

    async fn promote_node(
        &self,
        req: Request<NodeRef>,
    ) -> Result<Response<ProgressStream>, Status> {
        let target = format!("node {}", req.get_ref().id);
        let record = self.change_record(&req, "PromoteNode", target);
        let started = self
            .operate(
                req,
                |c, r, tx| async move { c.promote(r.id, tx).await },
                |mut client, r| async move { client.promote_node(r).await },
            )
            .await;
        Self::recorded(record, started)
    }

    type DemoteNodeStream = ProgressStream;

    async fn demote_node(&self, req: Request<NodeRef>) -> Result<Response<ProgressStream>, Status> {
        let target = format!("node {}", req.get_ref().id);
        let record = self.change_record(&req, "DemoteNode", target);
        let started = self
            .operate(
                req,
                |c, r, tx| async move { c.demote(r.id, tx).await },
                |mut client, r| async move { client.demote_node(r).await },
            )
            .await;
        Self::recorded(record, started)
    }

    type RemoveNodeStream = ProgressStream;

    async fn remove_node(&self, req: Request<NodeRef>) -> Result<Response<ProgressStream>, Status> {
        let target = format!("node {}", req.get_ref().id);
        let record = self.change_record(&req, "RemoveNode", target);
        let started = self
            .operate(
                req,
                |c, r, tx| async move { c.remove(r.id, tx).await },
                |mut client, r| async move { client.remove_node(r).await },
            )
            .await;
        Self::recorded(record, started)
    }

    async fn replication_status(
        &self,
        req: Request<ReplicationStatusRequest>,
    ) -> Result<Response<ReplicationStatusResponse>, Status> {
        let r = self.admit(req).await?;
        let report = self
            .replication
            .status(&r.reference, r.verbose)
            .await
            .map_err(replication_status)?;
        Ok(Response::new(report_message(
            self.cluster.node_id(),
            report,
        )))
    }

    async fn get_replication_policy(
        &self,
        req: Request<ReplicationPolicyRef>,
    ) -> Result<Response<ReplicationPolicies>, Status> {
        let pattern = self.admit(req).await?.pattern;
        // Read what the cluster committed (a policy just set at another node included); a
        // node cut off from the leader answers from its own state.
        let _ = self.replication.catch_up().await;
        let policies = if pattern.is_empty() {
            self.replication.policies().await
        } else {
            self.replication
                .policy(&pattern)
                .await
                .map(|p| vec![(pattern, p)])
        }
        .map_err(replication_status)?;
        Ok(Response::new(policies_message(policies)))
    }

    async fn set_replication_policy(
        &self,
        req: Request<ReplicationPolicyEntry>,
    ) -> Result<Response<ReplicationPolicyEntry>, Status> {
        self.audited(
            req,
            "SetReplicationPolicy",
            |r| r.pattern.clone(),
            |r| async move {
                let p = r.policy.unwrap_or_default();
                let policy = ReplicationPolicy {
                    regions: p.regions,
                    on_demand: p.on_demand,
                };
                let stored = self
                    .replication
                    .set_policy(&r.pattern, policy)
                    .await
                    .map_err(replication_status)?;
                Ok(policy_message(r.pattern, stored))
            },
        )
        .await
    }

    async fn clear_replication_policy(
        &self,
        req: Request<ReplicationPolicyRef>,
    ) -> Result<Response<ReplicationPolicies>, Status> {
        self.audited(
            req,
            "ClearReplicationPolicy",
            |r| r.pattern.clone(),
            |r| async move {
                self.replication
                    .clear_policy(&r.pattern)
                    .await
                    .map_err(replication_status)?;
                let policies = self
                    .replication
                    .policies()
                    .await
                    .map_err(replication_status)?;
                Ok(policies_message(policies))
            },
        )
        .await
    }

    async fn list_identities(
        &self,
        req: Request<pb::ListIdentitiesRequest>,
    ) -> Result<Response<pb::Identities>, Status> {
        self.auth.list_identities(self.admit(req).await?).await
    }

    async fn get_identity(
        &self,
        req: Request<pb::IdentityRef>,
    ) -> Result<Response<pb::Identity>, Status> {
        self.auth.get_identity(self.admit(req).await?).await
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::Identity>, Status> {
        self.audited(
            req,
            "CreateUser",
            |r| r.name.clone(),
            |r| async move { Ok(self.auth.create_user(r).await?.into_inner()) },
        )
        .await
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::IdentityChanged>, Status> {
        self.audited(
            req,
            "CreateToken",
            |r| r.name.clone(),
            |r| async move { Ok(self.auth.create_token(r).await?.into_inner()) },
        )
        .await
    }

    async fn update_identity(
        &self,
        req: Request<pb::UpdateIdentityRequest>,
    ) -> Result<Response<pb::IdentityChanged>, Status> {
        self.audited(
            req,
            "UpdateIdentity",
            |r| r.name.clone(),
            |r| async move { Ok(self.auth.update_identity(r).await?.into_inner()) },
        )
        .await
    }

    async fn delete_identity(
        &self,
        req: Request<pb::IdentityRef>,
    ) -> Result<Response<pb::Deleted>, Status> {
        self.audited(
            req,
            "DeleteIdentity",
            |r| r.name.clone(),
            |r| async move { Ok(self.auth.delete_identity(r).await?.into_inner()) },
        )
        .await
    }

    async fn list_scope_maps(
        &self,
        req: Request<pb::ListScopeMapsRequest>,
    ) -> Result<Response<pb::ScopeMaps>, Status> {
        self.admit(req).await?;
        self.auth.list_scope_maps().await
    }

    async fn get_scope_map(
        &self,
        req: Request<pb::ScopeMapRef>,
    ) -> Result<Response<pb::ScopeMap>, Status> {
        self.auth.get_scope_map(self.admit(req).await?).await
    }

    async fn put_scope_map(
        &self,
        req: Request<pb::PutScopeMapRequest>,
    ) -> Result<Response<pb::ScopeMap>, Status> {
        self.audited(
            req,
            "PutScopeMap",
            |r| r.name.clone(),
            |r| async move { Ok(self.auth.put_scope_map(r).await?.into_inner()) },
        )
        .await
    }

    async fn delete_scope_map(
        &self,
        req: Request<pb::ScopeMapRef>,
    ) -> Result<Response<pb::Deleted>, Status> {
        self.audited(
            req,
            "DeleteScopeMap",
            |r| r.name.clone(),
            |r| async move { Ok(self.auth.delete_scope_map(r).await?.into_inner()) },
        )
        .await
    }

    async fn list_roles(
        &self,
        req: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::Roles>, Status> {
        self.admit(req).await?;
        Ok(self.auth.list_roles())
    }

    async fn list_auth_keys(
        &self,
        req: Request<pb::ListAuthKeysRequest>,
    ) -> Result<Response<pb::AuthKeys>, Status> {
        self.admit(req).await?;
        self.auth.list_auth_keys().await
    }

    async fn drop_auth_key(
        &self,
        req: Request<pb::AuthKeyRef>,
    ) -> Result<Response<pb::AuthKeys>, Status> {
        self.audited(
            req,
            "DropAuthKey",
            |r| r.kid.clone(),
            |r| async move { Ok(self.auth.drop_auth_key(r).await?.into_inner()) },
        )
        .await
    }

    async fn rotate_auth_key(
        &self,
        req: Request<pb::RotateAuthKeyRequest>,
    ) -> Result<Response<pb::AuthKeys>, Status> {
        self.audited(
            req,
            "RotateAuthKey",
            |_| String::new(),
            |_| async move { Ok(self.auth.rotate_auth_key().await?.into_inner()) },
        )
        .await
    }

    async fn get_auth_settings(
        &self,
        req: Request<pb::GetAuthSettingsRequest>,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        self.admit(req).await?;
        self.auth.get_auth_settings().await
    }

    async fn set_anonymous_pull(
        &self,
        req: Request<pb::SetAnonymousPullRequest>,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        self.audited(
            req,
            "SetAnonymousPull",
            |r| r.patterns.join(","),
            |r| async move { Ok(self.auth.set_anonymous_pull(r).await?.into_inner()) },
        )
        .await
    }

    async fn set_network_rules(
        &self,
        req: Request<pb::SetNetworkRulesRequest>,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        self.audited(
            req,
            "SetNetworkRules",
            |_| "cluster".to_string(),
            |r| async move { Ok(self.auth.set_network_rules(r).await?.into_inner()) },
        )
        .await
    }

    async fn set_repository_network_rule(
        &self,
        req: Request<pb::RepositoryNetworkRule>,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        self.audited(
            req,
            "SetRepositoryNetworkRule",
            |r| r.pattern.clone(),
            |r| async move { Ok(self.auth.set_repository_network_rule(r).await?.into_inner()) },
        )
        .await
    }

    async fn clear_repository_network_rule(
        &self,
        req: Request<pb::RepositoryNetworkRuleRef>,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        self.audited(
            req,
            "ClearRepositoryNetworkRule",
            |r| r.pattern.clone(),
            |r| async move {
                Ok(self
                    .auth
                    .clear_repository_network_rule(r)
                    .await?
                    .into_inner())
            },
        )
        .await
    }

    type TransferLeaderStream = ProgressStream;

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let target = format!("node {}", req.get_ref().to);
        let record = self.change_record(&req, "TransferLeader", target);
        let started = self
            .operate(
                req,
                |c, r, tx| async move { c.transfer_leader(r.to, tx).await },
                |mut client, r| async move { client.transfer_leader(r).await },
            )
            .await;
        Self::recorded(record, started)
    }

    async fn audit(&self, req: Request<AuditRequest>) -> Result<Response<AuditResponse>, Status> {
        // Who logged in from where is for admins only.
        let r = self.admit(req).await?;
        let query = AuditQuery {
            since_ms: r.since_ms,
            identity: Some(r.identity).filter(|i| !i.is_empty()),
            limit: match r.limit {
                0 => AUDIT_DEFAULT_LIMIT,
                n => n as usize,
            },
        };
        let records = self
            .audit
            .query(query)
            .await
            .map_err(|e| status(e.kind(), crate::error_chain(&e)))?;
        let records = newest_that_fit(
            records.into_iter().map(audit_message).collect(),
            AUDIT_ANSWER_BYTES,
        );
        Ok(Response::new(AuditResponse {
            node_id: self.cluster.node_id(),
            records,
            dropped: self.audit.dropped(),
        }))
    }

    async fn gc_run(
        &self,
        req: Request<pb::GcRunRequest>,
    ) -> Result<Response<pb::GcReport>, Status> {
        self.audited(
            req,
            "GcRun",
            |r| if r.dry_run { "dry run" } else { "run" }.to_string(),
            |r| async move {
                let report = if r.wait {
                    self.gc.run(r.dry_run).await?
                } else {
                    let id = self.gc.start(r.dry_run)?;
                    // The report as it stands now. Should this pass have ended and a newer
                    // one begun already, its own report is gone: answer just its id.
                    self.gc
                        .status()
                        .filter(|last| last.id == id)
                        .unwrap_or_else(|| GcReport {
                            id,
                            dry_run: r.dry_run,
                            ..GcReport::default()
                        })
                };
                Ok(gc_report_message(report))
            },
        )
        .await
    }

    async fn gc_status(
        &self,
        req: Request<pb::GcStatusRequest>,
    ) -> Result<Response<pb::GcStatusResponse>, Status> {
        self.admit(req).await?;
        let (files, bytes) = self.reaper.removed();
        Ok(Response::new(pb::GcStatusResponse {
            node_id: self.cluster.node_id(),
            last: self.gc.status().map(gc_report_message),
            reaper_removed_files: files,
            reaper_removed_bytes: bytes,
        }))
    }

    async fn update_attributes(
        &self,
        req: Request<pb::UpdateAttributesRequest>,
    ) -> Result<Response<pb::AttributesEntry>, Status> {
        self.audited(
            req,
            "UpdateAttributes",
            |r| match (r.tag.as_str(), r.digest.as_str()) {
                ("", "") => r.repository.clone(),
                (tag, "") => format!("{}:{tag}", r.repository),
                (_, digest) => format!("{}@{digest}", r.repository),
            },
            |r| self.lifecycle.update_attributes(r),
        )
        .await
    }

    async fn get_attributes(
        &self,
        req: Request<pb::RepositoryRef>,
    ) -> Result<Response<pb::RepositoryAttributes>, Status> {
        let r = self.admit(req).await?;
        self.lifecycle.get_attributes(r).await.map(Response::new)
    }

    async fn list_deleted(
        &self,
        req: Request<pb::RepositoryRef>,
    ) -> Result<Response<pb::DeletedManifests>, Status> {
        let r = self.admit(req).await?;
        self.lifecycle.list_deleted(r).await.map(Response::new)
    }

    async fn restore_manifest(
        &self,
        req: Request<pb::RestoreManifestRequest>,
    ) -> Result<Response<pb::RestoreManifestResponse>, Status> {
        self.audited(
            req,
            "RestoreManifest",
            |r| format!("{}@{}", r.repository, r.digest),
            |r| self.lifecycle.restore_manifest(r),
        )
        .await
    }

    async fn set_soft_delete(
        &self,
        req: Request<pb::SoftDeleteSettings>,
    ) -> Result<Response<pb::SoftDeleteSettings>, Status> {
        self.audited(
            req,
            "SetSoftDelete",
            |r| match r.retention_days {
                0 => "off".to_string(),
                d => format!("{d} days"),
            },
            |r| self.lifecycle.set_soft_delete(r),
        )
        .await
    }

    async fn get_soft_delete(
        &self,
        req: Request<pb::GetSoftDeleteRequest>,
    ) -> Result<Response<pb::SoftDeleteSettings>, Status> {
        self.admit(req).await?;
        self.lifecycle.get_soft_delete().await.map(Response::new)
    }

    async fn set_retention(
        &self,
        req: Request<pb::RetentionPolicyEntry>,
    ) -> Result<Response<pb::RetentionPolicies>, Status> {
        self.audited(
            req,
            "SetRetention",
            |r| r.pattern.clone(),
            |r| self.lifecycle.set_retention(r),
        )
        .await
    }

    async fn clear_retention(
        &self,
        req: Request<pb::RetentionPolicyRef>,
    ) -> Result<Response<pb::RetentionPolicies>, Status> {
        self.audited(
            req,
            "ClearRetention",
            |r| r.pattern.clone(),
            |r| self.lifecycle.clear_retention(r),
        )
        .await
    }

    async fn list_retention(
        &self,
        req: Request<pb::ListRetentionRequest>,
    ) -> Result<Response<pb::RetentionPolicies>, Status> {
        self.admit(req).await?;
        self.lifecycle.list_retention().await.map(Response::new)
    }

    async fn set_namespace(
        &self,
        req: Request<pb::SetNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        self.audited(
            req,
            "SetNamespace",
            |r| r.namespace.clone(),
            |r| self.lifecycle.set_namespace(r),
        )
        .await
    }

    async fn get_namespace(
        &self,
        req: Request<pb::NamespaceRef>,
    ) -> Result<Response<pb::Namespace>, Status> {
        let r = self.admit(req).await?;
        self.lifecycle.get_namespace(r).await.map(Response::new)
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::Namespaces>, Status> {
        self.admit(req).await?;
        self.lifecycle.list_namespaces().await.map(Response::new)
    }

    async fn purge(
        &self,
        req: Request<pb::PurgeRequest>,
    ) -> Result<Response<pb::PurgeReport>, Status> {
        self.audited(
            req,
            "Purge",
            |r| {
                let dry = if r.dry_run { " (dry run)" } else { "" };
                format!("{}{dry}", r.filters.join(" "))
            },
            |r| self.lifecycle.purge(r),
        )
        .await
    }

    async fn create_webhook(
        &self,
        req: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        self.audited(
            req,
            "CreateWebhook",
            |r| r.name.clone(),
            |r| self.webhooks.create(r),
        )
        .await
    }

    async fn update_webhook(
        &self,
        req: Request<pb::UpdateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        self.audited(
            req,
            "UpdateWebhook",
            |r| r.name.clone(),
            |r| self.webhooks.update(r),
        )
        .await
    }

    async fn delete_webhook(
        &self,
        req: Request<pb::WebhookRef>,
    ) -> Result<Response<pb::Deleted>, Status> {
        self.audited(
            req,
            "DeleteWebhook",
            |r| r.name.clone(),
            |r| self.webhooks.delete(r),
        )
        .await
    }

    async fn list_webhooks(
        &self,
        req: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::Webhooks>, Status> {
        self.admit(req).await?;
        self.webhooks.list().await.map(Response::new)
    }

    async fn get_webhook(
        &self,
        req: Request<pb::WebhookRef>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let r = self.admit(req).await?;
        self.webhooks.get(r).await.map(Response::new)
    }

    async fn ping_webhook(
        &self,
        req: Request<pb::WebhookRef>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        self.audited(
            req,
            "PingWebhook",
            |r| r.name.clone(),
            |r| self.webhooks.ping(r),
        )
        .await
    }

    async fn webhook_events(
        &self,
        req: Request<pb::WebhookEventsRequest>,
    ) -> Result<Response<pb::WebhookDeliveries>, Status> {
        let r = self.admit(req).await?;
        self.webhooks.events(r).await.map(Response::new)
    }
}

/// The test-only fault-injection service.
#[cfg(feature = "fault-injection")]
pub(super) struct FaultsService {
    cluster: Cluster,
}

#[cfg(feature = "fault-injection")]
impl FaultsService {
    pub(super) fn new(cluster: Cluster) -> FaultsService {
        FaultsService { cluster }
    }
}

#[cfg(feature = "fault-injection")]
#[tonic::async_trait]
impl berth_proto::admin::faults_server::Faults for FaultsService {
    async fn set_partition(
        &self,
        req: Request<berth_proto::admin::SetPartitionRequest>,
    ) -> Result<Response<berth_proto::admin::SetPartitionResponse>, Status> {
        let blocked = req.into_inner().blocked_node_ids.into_iter().collect();
        self.cluster.peers().faults().set_blocked(blocked);
        Ok(Response::new(berth_proto::admin::SetPartitionResponse {}))
    }

    async fn set_links(
        &self,
        req: Request<berth_proto::admin::SetLinksRequest>,
    ) -> Result<Response<berth_proto::admin::SetLinksResponse>, Status> {
        let links = req
            .into_inner()
            .links
            .into_iter()
            .map(|l| {
                let link = cluster::Link {
                    delay: Duration::from_millis(l.delay_ms),
                    bandwidth: (l.bandwidth_bytes_per_sec > 0).then_some(l.bandwidth_bytes_per_sec),
                };
                (l.peer_id, link)
            })
            .collect();
        self.cluster.peers().faults().set_links(links);
        Ok(Response::new(berth_proto::admin::SetLinksResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::{AuditEvent, AuditSettings};

    #[test]
    fn the_admin_caller_is_the_authorization_user_else_cluster_and_a_client_cannot_pose_as_a_relay()
    {
        let mut req = Request::new(());
        assert_eq!(
            AdminCaller::of(&req),
            Some(AdminCaller {
                identity: "cluster".into(),
                address: None
            })
        );
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ann:secret")
        );
        req.metadata_mut()
            .insert("authorization", basic.parse().unwrap());
        assert_eq!(AdminCaller::of(&req).unwrap().identity, "ann");
        // The relay marker from a caller without a node certificate is ignored: the call is
        // recorded (a client cannot set the marker to go unrecorded).
        req.metadata_mut()
            .insert(RELAYED, "1".parse().expect("valid metadata"));
        assert_eq!(AdminCaller::of(&req).unwrap().identity, "ann");
    }

    #[test]
    fn a_gc_report_converts_field_for_field_with_zero_and_empty_for_none() {
        let running = GcReport {
            id: 4,
            dry_run: true,
            started_ms: 10,
            candidates: 3,
            ..GcReport::default()
        };
        let m = gc_report_message(running);
        assert_eq!((m.id, m.dry_run, m.started_ms), (4, true, 10));
        assert_eq!((m.finished_ms, m.candidates), (0, 3));
        assert_eq!(m.error, "");
        assert!(m.per_node.is_empty());
        let done = GcReport {
            id: 5,
            finished_ms: Some(20),
            blobs: 2,
            bytes: 30,
            per_node: [(2, (1, 10)), (1, (2, 30))].into_iter().collect(),
            counted: true,
            error: Some("no quorum".into()),
            ..GcReport::default()
        };
        let m = gc_report_message(done);
        assert_eq!((m.finished_ms, m.blobs, m.bytes), (20, 2, 30));
        assert!(m.counted);
        assert_eq!(m.error, "no quorum");
        let nodes: Vec<_> = m
            .per_node
            .iter()
            .map(|n| (n.node_id, n.blobs, n.bytes))
            .collect();
        assert_eq!(nodes, [(1, 2, 30), (2, 1, 10)]);
        assert_eq!(
            Status::from(crate::gc::GcError::Running(5)).code(),
            tonic::Code::FailedPrecondition
        );
    }

    /// A streamed change is recorded once: with its outcome, or as unfinished when the
    /// stream is dropped first.
    #[tokio::test]
    async fn a_streamed_change_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, _, store, _) = crate::meta::open_closable(dir.path()).unwrap();
        let audit = Audit::start(
            store,
            AuditSettings {
                retention: Duration::from_secs(86_400),
                export: None,
                queue: 16,
                node: 1,
                region: "r".into(),
            },
        );
        let change = |target: &str| ChangeRecord {
            audit: audit.clone(),
            who: AdminCaller {
                identity: "cluster".into(),
                address: None,
            },
            what: "PromoteNode",
            target: target.into(),
            recorded: false,
        };
        let mut done = change("node 2");
        done.record("ok");
        drop(done);
        drop(change("node 3"));
        let mut got = Vec::new();
        for _ in 0..500 {
            got = audit
                .query(AuditQuery {
                    since_ms: 0,
                    identity: None,
                    limit: 10,
                })
                .await
                .unwrap();
            if got.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let outcomes: Vec<(String, String)> = got
            .iter()
            .map(|r| match &r.event {
                AuditEvent::AdminChange {
                    target, outcome, ..
                } => (target.clone(), outcome.clone()),
                e => panic!("unexpected {e:?}"),
            })
            .collect();
        assert_eq!(outcomes.len(), 2, "{got:?}");
        assert_eq!(outcomes[0], ("node 2".into(), "ok".into()));
        assert_eq!(outcomes[1].0, "node 3");
        assert!(outcomes[1].1.starts_with("unfinished"), "{outcomes:?}");
        let messages: Vec<_> = got.into_iter().map(audit_message).collect();
        let one = message_bytes(&messages[0]).max(message_bytes(&messages[1]));
        assert_eq!(newest_that_fit(messages.clone(), 2 * one).len(), 2);
        let newest = newest_that_fit(messages.clone(), message_bytes(&messages[1]));
        assert_eq!(newest, [messages[1].clone()]);
        assert!(newest_that_fit(messages, 1).is_empty());
        assert_eq!(
            outcome_of(Err(&Status::failed_precondition("not a learner"))),
            "failed (FailedPrecondition): not a learner"
        );
    }
}
