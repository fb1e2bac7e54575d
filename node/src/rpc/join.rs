//! `berth serve --join ADDR`: a node on an empty data directory asks a member to add it as a
//! learner (Admin.AddNode, relayed to the leader), retrying while the member cannot be reached.
//!
//! The admin service wants credentials when auth is on and the cluster port has no mutual
//! TLS (`admin_auth.rs`): the joining node then logs in as the `admin` user with its own
//! bootstrap admin password (`auth.bootstrap_admin_password`), which must therefore match the
//! admin's password in the cluster. With `[cluster_tls]` its certificate is the credential.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use berth_proto::admin::AddNodeRequest;
use berth_proto::admin::admin_client::AdminClient;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::admin_auth::AUTHORIZATION;
use crate::auth::Auth;
use crate::cluster::Cluster;
use crate::meta::NodeInfo;
use crate::meta::auth::ADMIN_USER;

/// Attempts before giving up (one per [`RETRY_EVERY`]).
const ATTEMPTS: u32 = 300;
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Deadline of one attempt (adding includes catching up with the log).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);

/// The `authorization` a joining node sends: the admin's Basic credentials from the
/// bootstrap admin password, when auth is on without cluster mutual TLS.
fn credentials(cluster: &Cluster, auth: &Auth) -> Option<String> {
    if !auth.enabled() || cluster.peers().tls().is_some() {
        return None;
    }
    let Some(password) = auth.config().bootstrap_admin_password.as_deref() else {
        tracing::warn!(
            "auth is on and the cluster port has no mutual TLS: joining needs the admin's \
             password in auth.bootstrap_admin_password (or [cluster_tls])"
        );
        return None;
    };
    let pair = format!("{ADMIN_USER}:{password}");
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

/// Asks the member at `addr` to add this node; returns whether it was added.
pub async fn join(
    cluster: Cluster,
    addr: String,
    me: NodeInfo,
    auth: Arc<Auth>,
    stop: CancellationToken,
) -> bool {
    let authorization = credentials(&cluster, &auth);
    drop(auth);
    let id = cluster.node_id();
    for attempt in 1..=ATTEMPTS {
        if stop.is_cancelled() {
            return false;
        }
        match try_join(&cluster, &addr, &me, authorization.as_deref()).await {
            Ok(()) => {
                tracing::info!(node_id = id, member = %addr, "joined the cluster as a learner");
                return true;
            }
            Err(e) => {
                tracing::warn!(node_id = id, member = %addr, attempt, error = %e, "failed to join the cluster; retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(RETRY_EVERY) => {}
        }
    }
    tracing::error!(node_id = id, member = %addr, "gave up joining the cluster; restart the node to try again");
    false
}

async fn try_join(
    cluster: &Cluster,
    addr: &str,
    me: &NodeInfo,
    authorization: Option<&str>,
) -> Result<(), String> {
    let endpoint = cluster
        .peers()
        .endpoint(addr)?
        .connect_timeout(crate::cluster::CONNECT_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let mut req = cluster.peers().request(
        AddNodeRequest {
            id: cluster.node_id(),
            cluster_addr: me.cluster_addr.clone(),
            url: me.url.clone(),
            region: me.region.clone(),
            zone: me.zone.clone(),
        },
        ATTEMPT_TIMEOUT,
    );
    if let Some(a) = authorization {
        let value = a
            .parse()
            .map_err(|_| "the bootstrap admin password cannot be sent as metadata".to_string())?;
        req.metadata_mut().insert(AUTHORIZATION, value);
    }
    let mut stream = AdminClient::new(channel)
        .add_node(req)
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    while let Some(p) = stream.next().await {
        let p = p.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        tracing::info!(progress = %p.message, matched = p.matched_index, target = p.target_index, "join");
        if p.done {
            return Ok(());
        }
    }
    Err("the member ended the stream without an outcome".to_string())
}
