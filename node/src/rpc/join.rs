//! `berth serve --join ADDR`: a node on an empty data directory asks a member to add it as a
//! learner (Admin.AddNode, relayed to the leader), retrying while the member cannot be reached.

use std::time::Duration;

use berth_proto::admin::AddNodeRequest;
use berth_proto::admin::admin_client::AdminClient;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::meta::NodeInfo;

/// Attempts before giving up (one per [`RETRY_EVERY`]).
const ATTEMPTS: u32 = 300;
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Deadline of one attempt (adding includes catching up with the log).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);

/// Asks the member at `addr` to add this node; returns whether it was added.
pub async fn join(cluster: Cluster, addr: String, me: NodeInfo, stop: CancellationToken) -> bool {
    let id = cluster.node_id();
    for attempt in 1..=ATTEMPTS {
        if stop.is_cancelled() {
            return false;
        }
        match try_join(&cluster, &addr, &me).await {
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

async fn try_join(cluster: &Cluster, addr: &str, me: &NodeInfo) -> Result<(), String> {
    let endpoint = cluster
        .peers()
        .endpoint(addr)?
        .connect_timeout(crate::cluster::CONNECT_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let req = cluster.peers().request(
        AddNodeRequest {
            id: cluster.node_id(),
            cluster_addr: me.cluster_addr.clone(),
            url: me.url.clone(),
            region: me.region.clone(),
            zone: me.zone.clone(),
        },
        ATTEMPT_TIMEOUT,
    );
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
