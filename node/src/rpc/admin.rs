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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::admin as pb;
use berth_proto::admin::admin_client::AdminClient;
use berth_proto::admin::admin_server::Admin;
use berth_proto::admin::{
    AddNodeRequest, BlobReplication, Member, NodeRef, NodeStatusRequest, NodeStatusResponse,
    Progress, RegionReplication, ReplicationPolicies, ReplicationPolicyEntry, ReplicationPolicyRef,
    ReplicationStatusRequest, ReplicationStatusResponse, StatusRequest, StatusResponse,
    TransferLeaderRequest,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::admin_auth::{AdminGuard, AuthRpc, forward_authorization};
use super::status::status;
use crate::cluster::{self, Cluster, MembershipError, PeerError};
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

/// The admin service of this node.
pub(super) struct AdminService {
    cluster: Cluster,
    replication: Arc<Replication>,
    guard: AdminGuard,
    auth: AuthRpc,
}

impl AdminService {
    pub(super) fn new(
        cluster: Cluster,
        replication: Arc<Replication>,
        guard: AdminGuard,
        auth: AuthRpc,
    ) -> AdminService {
        AdminService {
            cluster,
            replication,
            guard,
            auth,
        }
    }

    /// Checks the caller's credentials, then hands over the message.
    async fn admit<T>(&self, req: Request<T>) -> Result<T, Status> {
        self.guard.check(&req).await?;
        Ok(req.into_inner())
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
        self.operate(
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
        .await
    }

    type PromoteNodeStream = ProgressStream;

    async fn promote_node(
        &self,
        req: Request<NodeRef>,
    ) -> Result<Response<ProgressStream>, Status> {
        self.operate(
            req,
            |c, r, tx| async move { c.promote(r.id, tx).await },
            |mut client, r| async move { client.promote_node(r).await },
        )
        .await
    }

    type DemoteNodeStream = ProgressStream;

    async fn demote_node(&self, req: Request<NodeRef>) -> Result<Response<ProgressStream>, Status> {
        self.operate(
            req,
            |c, r, tx| async move { c.demote(r.id, tx).await },
            |mut client, r| async move { client.demote_node(r).await },
        )
        .await
    }

    type RemoveNodeStream = ProgressStream;

    async fn remove_node(&self, req: Request<NodeRef>) -> Result<Response<ProgressStream>, Status> {
        self.operate(
            req,
            |c, r, tx| async move { c.remove(r.id, tx).await },
            |mut client, r| async move { client.remove_node(r).await },
        )
        .await
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
        let r = self.admit(req).await?;
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
        Ok(Response::new(policy_message(r.pattern, stored)))
    }

    async fn clear_replication_policy(
        &self,
        req: Request<ReplicationPolicyRef>,
    ) -> Result<Response<ReplicationPolicies>, Status> {
        let pattern = self.admit(req).await?.pattern;
        self.replication
            .clear_policy(&pattern)
            .await
            .map_err(replication_status)?;
        let policies = self
            .replication
            .policies()
            .await
            .map_err(replication_status)?;
        Ok(Response::new(policies_message(policies)))
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
        self.auth.create_user(self.admit(req).await?).await
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::IdentityChanged>, Status> {
        self.auth.create_token(self.admit(req).await?).await
    }

    async fn update_identity(
        &self,
        req: Request<pb::UpdateIdentityRequest>,
    ) -> Result<Response<pb::IdentityChanged>, Status> {
        self.auth.update_identity(self.admit(req).await?).await
    }

    async fn delete_identity(
        &self,
        req: Request<pb::IdentityRef>,
    ) -> Result<Response<pb::Deleted>, Status> {
        self.auth.delete_identity(self.admit(req).await?).await
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
        self.auth.put_scope_map(self.admit(req).await?).await
    }

    async fn delete_scope_map(
        &self,
        req: Request<pb::ScopeMapRef>,
    ) -> Result<Response<pb::Deleted>, Status> {
        self.auth.delete_scope_map(self.admit(req).await?).await
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

    async fn rotate_auth_key(
        &self,
        req: Request<pb::RotateAuthKeyRequest>,
    ) -> Result<Response<pb::AuthKeys>, Status> {
        self.admit(req).await?;
        self.auth.rotate_auth_key().await
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
        self.auth.set_anonymous_pull(self.admit(req).await?).await
    }

    async fn set_network_rules(
        &self,
        req: Request<pb::SetNetworkRulesRequest>,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        self.auth.set_network_rules(self.admit(req).await?).await
    }

    async fn set_repository_network_rule(
        &self,
        req: Request<pb::RepositoryNetworkRule>,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        self.auth
            .set_repository_network_rule(self.admit(req).await?)
            .await
    }

    async fn clear_repository_network_rule(
        &self,
        req: Request<pb::RepositoryNetworkRuleRef>,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        self.auth
            .clear_repository_network_rule(self.admit(req).await?)
            .await
    }

    type TransferLeaderStream = ProgressStream;

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        self.operate(
            req,
            |c, r, tx| async move { c.transfer_leader(r.to, tx).await },
            |mut client, r| async move { client.transfer_leader(r).await },
        )
        .await
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
