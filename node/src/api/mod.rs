//! The HTTP front: the OCI Distribution API (`/v2/…`), the token endpoint (`/auth/token`),
//! `/healthz`, `/readyz` and `/metrics`. Every `/v2/` request passes [`auth::gate`] first;
//! a successful manifest PUT (push) and manifest or blob DELETE are recorded in the node's
//! audit log with the caller and its address. Pulls and pushes are admitted against their
//! namespace's rates (`Registry::admit`) before they are handled.
//!
//! Every request passes [`telemetry::request_span`] first: its id (`X-Request-Id` on every
//! response), its span and its metrics. `/metrics` is served only while metrics are enabled
//! (`[metrics] enabled`); otherwise it answers 404 like any unknown path.
//!
//! Handlers are adapters: extract from the request → call [`Registry`] → map the answer or the
//! error (one table, [`error`]) to the wire. They never touch storage, RocksDB or openraft.

mod auth;
mod blobs;
pub mod error;
mod manifests;
pub mod path;
pub mod relay;
mod telemetry;

pub use telemetry::{REQUEST_ID_HEADER, Telemetry};

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Router};

use self::error::{ApiError, Code};
use self::path::Route;
use crate::audit::{AuditEvent, DeleteKind};
use crate::auth::{Auth, Caller};
use crate::meta::Page;
use crate::registry::{self, Registry, RequestKind};

/// The header every `/v2/` response carries.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";

/// Builds the HTTP router over a registry, its requests checked by `auth` and recorded by
/// `telemetry` (which also decides whether `/metrics` is served).
pub fn router(registry: Arc<Registry>, auth: Arc<Auth>, telemetry: Telemetry) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/auth/token", get(auth::token_get).post(auth::token_post))
        .route("/readyz", get(readyz));
    if telemetry.metrics().is_some() {
        router = router.route("/metrics", get(metrics));
    }
    router
        .route("/v2", any(v2))
        .route("/v2/", any(v2))
        .route("/v2/{*rest}", any(v2))
        .layer(axum::middleware::from_fn_with_state(
            telemetry,
            telemetry::request_span,
        ))
        .layer(Extension(auth))
        .with_state(registry)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /metrics`: the node's metrics in the Prometheus text format.
async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        registry.metrics().render(),
    )
        .into_response()
}

async fn readyz(State(registry): State<Arc<Registry>>) -> Response {
    if !registry.cluster().is_member() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: this node is not a member of the cluster\n",
        )
            .into_response();
    }
    if !registry.cluster().has_leader() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: raft has no leader\n",
        )
            .into_response();
    }
    if !registry.cluster().hears_from_leader() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no contact with the raft leader\n",
        )
            .into_response();
    }
    // Raft's metrics keep saying "leader" while its log waits for space: ask the disk.
    if let Some(full) = registry.cluster().disk_full() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: disk full ({full})\n"),
        )
            .into_response();
    }
    if let Err(e) = registry.blob_store().check_writable().await {
        tracing::warn!(error = %e, "readiness check failed");
        let why = match registry::RegistryError::from(e) {
            registry::RegistryError::InsufficientStorage(why) => format!("disk full ({why})"),
            _ => "storage is not writable".to_string(),
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// Every `/v2/…` request: route, dispatch by method, add the API version header.
async fn v2(
    State(registry): State<Arc<Registry>>,
    Extension(auth): Extension<Arc<Auth>>,
    mut req: Request,
) -> Response {
    registry.client_request();
    let path = req.uri().path().to_string();
    // Exactly one slash after `/v2`: `/v2//a` names the (invalid) repository `/a`.
    let rest = path
        .strip_prefix("/v2")
        .map(|r| r.strip_prefix('/').unwrap_or(r))
        .unwrap_or("");
    let mut resp = match path::parse(rest) {
        Some(route) => {
            telemetry::record_route(&route);
            match auth::gate(&auth, &route, &mut req).await {
                Ok((caller, addr)) => dispatch(&registry, &auth, &caller, addr, route, req)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                Err(e) => e.into_response(),
            }
        }
        None => ApiError::new(Code::Unsupported)
            .status(StatusCode::NOT_FOUND)
            .message("no such endpoint")
            .into_response(),
    };
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    resp
}

async fn dispatch(
    registry: &Arc<Registry>,
    auth: &Auth,
    caller: &Caller,
    addr: Option<IpAddr>,
    route: Route<'_>,
    req: Request,
) -> Result<Response, ApiError> {
    let record = |event| auth.audit().record(caller.name(), addr, event);
    if let Route::Upload(_, id) = route
        && let Some(owner) = relay::owner_elsewhere(registry, id, &req)
    {
        return relay::relay(registry, owner, id, req).await;
    }
    let method = req.method().clone();
    if let Some((name, kind)) = rate_class(&route, &method)
        && let Ok(repo) = registry::parse_name(name)
    {
        registry.admit(&repo, kind)?;
    }
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => {
            Ok(json_response(StatusCode::OK, b"{}".to_vec()))
        }
        (Route::Catalog, Method::GET) => catalog(registry, auth, caller, &query(&req)).await,
        (Route::Tags(name), Method::GET) => tags(registry, name, &query(&req)).await,
        (Route::Manifest(name, r), Method::GET) => {
            manifests::get(registry, name, r, req.headers(), true).await
        }
        (Route::Manifest(name, r), Method::HEAD) => {
            manifests::get(registry, name, r, req.headers(), false).await
        }
        (Route::Manifest(name, r), Method::PUT) => {
            let resp = manifests::put(registry, name, r, req).await?;
            let digest = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|d| d.to_str().ok())
                .unwrap_or_default();
            record(AuditEvent::Push {
                repository: name.to_string(),
                digest: digest.to_string(),
                tag: is_tag(r).then(|| r.to_string()),
            });
            Ok(resp)
        }
        (Route::Manifest(name, r), Method::DELETE) => {
            let resp = manifests::delete(registry, name, r).await?;
            let kind = if is_tag(r) {
                DeleteKind::Tag
            } else {
                DeleteKind::Manifest
            };
            record(deleted(name, kind, r));
            Ok(resp)
        }
        (Route::Referrers(name, d), Method::GET) => {
            manifests::referrers(registry, name, d, &query(&req)).await
        }
        (Route::Blob(name, d), Method::GET) => {
            blobs::get(registry, name, d, blobs::BlobGet::of(&req), true).await
        }
        (Route::Blob(name, d), Method::HEAD) => {
            blobs::get(registry, name, d, blobs::BlobGet::of(&req), false).await
        }
        (Route::Blob(name, d), Method::DELETE) => {
            let resp = blobs::delete(registry, name, d).await?;
            record(deleted(name, DeleteKind::Blob, d));
            Ok(resp)
        }
        (Route::Uploads(name), Method::POST) => blobs::start_upload(registry, name, req).await,
        (Route::Upload(name, id), Method::GET) => blobs::upload_status(registry, name, id).await,
        (Route::Upload(name, id), Method::PATCH) => {
            blobs::patch_upload(registry, name, id, req).await
        }
        (Route::Upload(name, id), Method::PUT) => {
            blobs::finish_upload(registry, name, id, req).await
        }
        (Route::Upload(name, id), Method::DELETE) => blobs::cancel_upload(registry, name, id).await,
        (route, method) => Err(ApiError::new(Code::Unsupported)
            .message(format!("method {method} is not allowed here"))
            .header(header::ALLOW, allowed_methods(&route))),
    }
}

/// The repository and kind of a request a namespace's rates count (pulls: manifest and blob
/// GET and HEAD; pushes: upload POST, PATCH and PUT, manifest PUT and DELETE).
fn rate_class<'a>(route: &Route<'a>, method: &Method) -> Option<(&'a str, RequestKind)> {
    match (*route, method) {
        (Route::Manifest(name, _) | Route::Blob(name, _), &Method::GET | &Method::HEAD) => {
            Some((name, RequestKind::Pull))
        }
        (Route::Manifest(name, _), &Method::PUT | &Method::DELETE)
        | (Route::Uploads(name), &Method::POST)
        | (Route::Upload(name, _), &Method::PATCH | &Method::PUT) => {
            Some((name, RequestKind::Push))
        }
        _ => None,
    }
}

/// Whether a reference that named something is a tag (a digest always holds a `:`, a tag
/// never does).
fn is_tag(reference: &str) -> bool {
    !reference.contains(':')
}

/// The audit event of a successful delete.
fn deleted(repository: &str, kind: DeleteKind, reference: &str) -> AuditEvent {
    AuditEvent::Delete {
        repository: repository.to_string(),
        kind,
        reference: reference.to_string(),
    }
}

/// The methods an endpoint answers (the `Allow` header of a 405).
fn allowed_methods(route: &Route<'_>) -> &'static str {
    match route {
        Route::Base => "GET, HEAD",
        Route::Catalog | Route::Tags(_) | Route::Referrers(..) => "GET",
        Route::Manifest(..) => "GET, HEAD, PUT, DELETE",
        Route::Blob(..) => "GET, HEAD, DELETE",
        Route::Uploads(_) => "POST",
        Route::Upload(..) => "GET, PATCH, PUT, DELETE",
    }
}

/// A JSON response.
fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The query string's parameters, in order.
fn query(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default()
}

fn query_param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `n` and `last` of a list request.
fn page(q: &[(String, String)]) -> Result<Page, ApiError> {
    let n = match query_param(q, "n") {
        None | Some("") => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            ApiError::new(Code::PaginationNumberInvalid).detail(serde_json::json!({ "n": n }))
        })?),
    };
    let last = query_param(q, "last")
        .filter(|l| !l.is_empty())
        .map(str::to_string);
    Ok(Page { n, last })
}

/// Adds the RFC 5988 `Link` header of the next page when there is one.
fn link_next(resp: &mut Response, path: &str, page: &Page, items: &[String], more: bool) {
    if let (true, Some(last), Some(n)) = (more, items.last(), page.n) {
        let q = serde_urlencoded::to_string([("last", last.as_str()), ("n", &n.to_string())])
            .expect("query encodes");
        if let Ok(v) = HeaderValue::from_str(&format!("<{path}?{q}>; rel=\"next\"")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
}

/// The body of `tags/list` (serialised directly: a list can hold many thousand tags).
#[derive(serde::Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: &'a [String],
}

/// The body of `_catalog`.
#[derive(serde::Serialize)]
struct Catalog<'a> {
    repositories: &'a [String],
}

async fn tags(
    registry: &Registry,
    name: &str,
    q: &[(String, String)],
) -> Result<Response, ApiError> {
    let repo = registry::parse_name(name)?;
    let page = page(q)?;
    let (tags, more) = registry.tags(&repo, page.clone()).await?;
    let body = serde_json::to_vec(&TagList {
        name: repo.as_str(),
        tags: &tags,
    })
    .expect("json encodes");
    let mut resp = json_response(StatusCode::OK, body);
    link_next(
        &mut resp,
        &format!("/v2/{repo}/tags/list"),
        &page,
        &tags,
        more,
    );
    Ok(resp)
}

/// Repositories read per scan step of a filtered catalog.
const CATALOG_SCAN: usize = 1000;

async fn catalog(
    registry: &Registry,
    auth: &Auth,
    caller: &Caller,
    q: &[(String, String)],
) -> Result<Response, ApiError> {
    let page = page(q)?;
    let (repos, more) = if *caller == Caller::Unchecked {
        registry.catalog(page.clone()).await?
    } else {
        visible_catalog(registry, auth, caller, &page).await?
    };
    let body = serde_json::to_vec(&Catalog {
        repositories: &repos,
    })
    .expect("json encodes");
    let mut resp = json_response(StatusCode::OK, body);
    link_next(&mut resp, "/v2/_catalog", &page, &repos, more);
    Ok(resp)
}

/// A catalog page of only the repositories `caller` may list: scans the catalog in steps,
/// keeping what it may see, until the page is full or the catalog ends.
async fn visible_catalog(
    registry: &Registry,
    auth: &Auth,
    caller: &Caller,
    page: &Page,
) -> Result<(Vec<String>, bool), ApiError> {
    let want = page.n.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut last = page.last.clone();
    loop {
        let step = Page {
            n: Some(CATALOG_SCAN),
            last: last.clone(),
        };
        let (repos, more) = registry.catalog(step).await?;
        last = repos.last().cloned();
        for r in repos {
            if auth.may_list(caller, &r) {
                if out.len() == want {
                    return Ok((out, true));
                }
                out.push(r);
            }
        }
        if !more {
            return Ok((out, false));
        }
    }
}

/// Sets a header from a string the registry produced (always valid header text).
fn set_header(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// An empty response with a status.
fn empty(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}
