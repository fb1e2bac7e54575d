//! Upload sessions behind a load balancer: a request for a session another node owns (the
//! session id names its owner) is relayed over HTTP to that node, body and answer streamed.
//!
//! A finished upload (201 from the owner) is answered only once this node has caught up with
//! what the cluster committed, so the client reads its blob here, where it wrote it.
//!
//! A relayed request carries [`RELAYED_HEADER`]; a node never relays such a request again,
//! so a disagreement about ownership ends in an error, not a loop. The owner must start
//! answering within [`RELAY_TIMEOUT`] of the request (body included), so a dead owner costs
//! a bounded wait.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Uri};
use axum::response::Response;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::error::ApiError;
use crate::cluster::PeerError;
use crate::meta::NodeId;
use crate::registry::{Registry, RegistryError};

/// Marks a request one node relayed to another.
pub const RELAYED_HEADER: &str = "berth-relayed-from";
/// How long the owner may take to answer a relayed request.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting to the owner may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

fn client() -> &'static Client<HttpConnector, Body> {
    static CLIENT: OnceLock<Client<HttpConnector, Body>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(connector)
    })
}

/// The node a request for upload session `id` must go to, when it is not this one.
pub fn owner_elsewhere(registry: &Registry, id: &str, req: &Request) -> Option<NodeId> {
    let owner = crate::registry::owner_of(id)?;
    let me = registry.cluster().node_id();
    (owner != me && !req.headers().contains_key(RELAYED_HEADER)).then_some(owner)
}

/// Relays the request to the owner of its upload session and streams the answer back.
pub async fn relay(
    registry: &Registry,
    owner: NodeId,
    id: &str,
    mut req: Request,
) -> Result<Response, ApiError> {
    let cluster = registry.cluster();
    let unavailable = |why: String| -> ApiError {
        RegistryError::Unavailable(format!(
            "node {owner}, which holds this upload, cannot be reached: {why}"
        ))
        .into()
    };
    let member = match cluster.reachable_member(owner) {
        Ok(member) => member,
        // No such node in the cluster: nobody holds this session.
        Err(PeerError::NotMember(_)) => {
            return Err(RegistryError::BlobUploadUnknown(id.to_string()).into());
        }
        Err(PeerError::Partitioned(_)) => {
            return Err(unavailable("cut off by a test partition".into()));
        }
        Err(e) => return Err(unavailable(e.to_string())),
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let uri: Uri = format!("{}{path}", member.url.trim_end_matches('/'))
        .parse()
        .map_err(|e| unavailable(format!("bad URL {:?}: {e}", member.url)))?;
    *req.uri_mut() = uri;
    let me = cluster.node_id().to_string();
    req.headers_mut().insert(
        RELAYED_HEADER,
        HeaderValue::from_str(&me).expect("digits are a valid header value"),
    );
    // Hop-by-hop headers describe this connection, not the next one; `Expect` was already
    // answered here (the body is being received).
    for h in [
        axum::http::header::HOST,
        axum::http::header::CONNECTION,
        axum::http::header::EXPECT,
        axum::http::header::TE,
        axum::http::header::UPGRADE,
        axum::http::header::PROXY_AUTHORIZATION,
    ] {
        req.headers_mut().remove(h);
    }
    req.headers_mut().remove("keep-alive");
    // The owner logs the request under the same id (one this node made up, too).
    if let Some(id) =
        crate::types::RequestMeta::current().and_then(|m| HeaderValue::from_str(&m.id).ok())
    {
        req.headers_mut().insert(crate::api::REQUEST_ID_HEADER, id);
    }
    let finishing = req.method() == axum::http::Method::PUT;
    let resp = tokio::time::timeout(RELAY_TIMEOUT, client().request(req))
        .await
        .map_err(|_| unavailable(format!("no answer within {} s", RELAY_TIMEOUT.as_secs())))?
        .map_err(|e| unavailable(e.to_string()))?;
    tracing::debug!(owner, status = %resp.status(), "relayed an upload request");
    if finishing && resp.status() == axum::http::StatusCode::CREATED {
        // The owner applied the blob's registration before answering; the client wrote here,
        // so it must read its write here too.
        if let Err(e) = cluster.catch_up_with_leader().await {
            tracing::warn!(owner, error = %e, "failed to catch up after a relayed upload finished");
        }
    }
    Ok(resp.map(Body::new))
}
