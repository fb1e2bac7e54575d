//! Blob and upload endpoints.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use http_body::{Frame, SizeHint};

use super::error::{ApiError, range_header};
use super::{empty, query, query_param, set_header};
use crate::blobstore::BlobBody;
use crate::registry::{self, Chunk, PushCheck, Registry, RegistryError, UploadStatus};
use crate::types::{ContentRange, Digest, RepositoryName};

const DIGEST_HEADER: &str = "docker-content-digest";
const UPLOAD_UUID_HEADER: &str = "docker-upload-uuid";

/// A blob body whose exact length is known, so it is sent with `Content-Length`.
struct SizedBody(BlobBody);

impl http_body::Body for SizedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.len())
    }
}

fn blob_headers(h: &mut HeaderMap, digest: &Digest) {
    set_header(h, header::CONTENT_TYPE, "application/octet-stream");
    set_header(h, header::ACCEPT_RANGES, "bytes");
    set_header(
        h,
        header::HeaderName::from_static(DIGEST_HEADER),
        digest.as_str(),
    );
}

/// What a blob GET or HEAD uses of its request.
pub(super) struct BlobGet {
    client: Option<std::net::IpAddr>,
    /// Path and query, for a redirect.
    path: String,
    range: Option<String>,
}

impl BlobGet {
    /// Taken from the request before any wait (a request is not `Sync`).
    pub(super) fn of(req: &Request) -> BlobGet {
        BlobGet {
            client: client_ip(req),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string()),
            range: req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }
}

/// GET or HEAD of a blob; GET honours a single `Range`. Where the blob is for this node is
/// answered once (`Registry::locate_blob`); a GET may then be redirected (307) to another
/// node's public URL, with the same path and query, per the `[routing]` settings; a HEAD is
/// answered from the record (and warms this node's copy), never redirected.
pub(super) async fn get(
    registry: &Registry,
    name: &str,
    digest: &str,
    read: BlobGet,
    with_body: bool,
) -> Result<Response, ApiError> {
    let BlobGet {
        client,
        path,
        range,
    } = read;
    let repo = registry::parse_name(name)?;
    let digest = registry::parse_digest(digest)?;
    let location = registry.locate_blob(&repo, &digest).await?;
    if !with_body {
        let size = registry.stat_blob(&location);
        let mut resp = empty(StatusCode::OK);
        blob_headers(resp.headers_mut(), &digest);
        set_header(
            resp.headers_mut(),
            header::CONTENT_LENGTH,
            &size.to_string(),
        );
        return Ok(resp);
    }
    if let Some(base) = registry.redirect_blob_get(client, &location) {
        let mut resp = empty(StatusCode::TEMPORARY_REDIRECT);
        set_header(
            resp.headers_mut(),
            header::LOCATION,
            &format!("{}{path}", base.trim_end_matches('/')),
        );
        blob_headers(resp.headers_mut(), &digest);
        resp.headers_mut().remove(header::CONTENT_TYPE);
        return Ok(resp);
    }
    let read = registry.read_blob(&location, range.as_deref()).await?;
    let len = read.body.len();
    let mut resp = Response::new(Body::new(SizedBody(read.body)));
    if let Some((start, end)) = read.range {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        set_header(
            resp.headers_mut(),
            header::CONTENT_RANGE,
            &format!("bytes {start}-{end}/{}", read.size),
        );
    }
    blob_headers(resp.headers_mut(), &digest);
    set_header(resp.headers_mut(), header::CONTENT_LENGTH, &len.to_string());
    Ok(resp)
}

pub(super) async fn delete(
    registry: &Registry,
    name: &str,
    digest: &str,
) -> Result<Response, ApiError> {
    let repo = registry::parse_name(name)?;
    let digest = registry::parse_digest(digest)?;
    registry.delete_blob(&repo, &digest).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

/// 201 for a blob now in the repository.
fn blob_created(repo: &RepositoryName, digest: &Digest) -> Response {
    let mut resp = empty(StatusCode::CREATED);
    let h = resp.headers_mut();
    set_header(h, header::LOCATION, &format!("/v2/{repo}/blobs/{digest}"));
    set_header(
        h,
        header::HeaderName::from_static(DIGEST_HEADER),
        digest.as_str(),
    );
    resp
}

/// An upload session's location and progress.
fn upload_response(status: StatusCode, repo: &RepositoryName, upload: &UploadStatus) -> Response {
    let mut resp = empty(status);
    let h = resp.headers_mut();
    set_header(
        h,
        header::LOCATION,
        &format!("/v2/{repo}/blobs/uploads/{}", upload.id),
    );
    set_header(h, header::RANGE, &range_header(upload.offset));
    set_header(
        h,
        header::HeaderName::from_static(UPLOAD_UUID_HEADER),
        &upload.id,
    );
    resp
}

/// The client's address, when the server recorded it (`ConnectInfo`). Forwarding headers are
/// not trusted: any client could set them.
fn client_ip(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The request's `Content-Length`, when it has a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Refuses an upload request while the disk is below the reserve (ADR 010). `opens`: the
/// request starts an upload (checked even without a body); else an empty body is let through
/// (it finishes what is already stored).
fn check_space(registry: &Registry, headers: &HeaderMap, opens: bool) -> Result<(), ApiError> {
    let declared = content_length(headers);
    if opens || declared != Some(0) {
        registry.check_upload_space(declared.unwrap_or(0))?;
    }
    Ok(())
}

/// Refuses a chunk (a PATCH, or a PUT with a body) of a push its namespace's quota or a lock
/// would refuse; an empty body is let through (it finishes what is already stored).
async fn check_chunk(
    registry: &Registry,
    repo: &RepositoryName,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if content_length(headers) != Some(0) {
        registry.check_push(repo, PushCheck::Chunk).await?;
    }
    Ok(())
}

/// POST: mount (`?mount=&from=`), single-request upload (`?digest=`), or open a session.
pub(super) async fn start_upload(
    registry: &Arc<Registry>,
    name: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let repo = registry::parse_name(name)?;
    let q = query(&req);
    if let Some(mount) = query_param(&q, "mount") {
        let digest = registry::parse_digest(mount)?;
        // Without `from` (OCI 1.1 lets a registry look elsewhere) or when `from` lacks it, the
        // client gets a session and uploads.
        if let Some(from) = query_param(&q, "from") {
            let from = registry::parse_name(from)?;
            registry.check_push(&repo, PushCheck::Mount).await?;
            if registry.mount_blob(&repo, &from, &digest).await? {
                return Ok(blob_created(&repo, &digest));
            }
        }
    } else if let Some(digest) = query_param(&q, "digest") {
        let digest = registry::parse_digest(digest)?;
        check_space(registry, req.headers(), true)?;
        let len = content_length(req.headers());
        registry
            .check_push(
                &repo,
                PushCheck::Blob {
                    digest: &digest,
                    len,
                },
            )
            .await?;
        registry
            .upload_blob(&repo, &digest, req.into_body().into_data_stream())
            .await?;
        return Ok(blob_created(&repo, &digest));
    }
    check_space(registry, req.headers(), true)?;
    registry.check_push(&repo, PushCheck::Open).await?;
    let upload = registry.start_upload(&repo, client_ip(&req)).await?;
    Ok(upload_response(StatusCode::ACCEPTED, &repo, &upload))
}

pub(super) async fn upload_status(
    registry: &Registry,
    name: &str,
    id: &str,
) -> Result<Response, ApiError> {
    let repo = registry::parse_name(name)?;
    let upload = registry.upload_status(&repo, id).await?;
    Ok(upload_response(StatusCode::NO_CONTENT, &repo, &upload))
}

/// Where a chunk says it belongs, from `Content-Range`; checks it against `Content-Length`
/// (an empty body may declare `N-N`, as some clients send `0-0` with nothing).
fn chunk(headers: &HeaderMap) -> Result<Chunk, ApiError> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(Chunk::default());
    };
    let text = v.to_str().unwrap_or("");
    let range = ContentRange::parse(text)
        .map_err(|e| ApiError::from(RegistryError::BlobUploadInvalid(e.to_string())))?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len != range.len()
        && !(len == 0 && range.len() == 1)
    {
        return Err(RegistryError::SizeInvalid(format!(
            "Content-Range {text} covers {} bytes but Content-Length is {len}",
            range.len()
        ))
        .into());
    }
    Ok(Chunk {
        start: Some(range.start),
        len: Some(range.len()),
    })
}

pub(super) async fn patch_upload(
    registry: &Arc<Registry>,
    name: &str,
    id: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let repo = registry::parse_name(name)?;
    let chunk = chunk(req.headers())?;
    check_space(registry, req.headers(), false)?;
    check_chunk(registry, &repo, req.headers()).await?;
    let body = req.into_body().into_data_stream();
    let upload = registry.append_upload(&repo, id, chunk, body).await?;
    Ok(upload_response(StatusCode::ACCEPTED, &repo, &upload))
}

pub(super) async fn finish_upload(
    registry: &Arc<Registry>,
    name: &str,
    id: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let repo = registry::parse_name(name)?;
    let q = query(&req);
    let Some(digest) = query_param(&q, "digest") else {
        return Err(
            RegistryError::DigestInvalid("the digest parameter is missing".to_string()).into(),
        );
    };
    let digest = registry::parse_digest(digest)?;
    let chunk = chunk(req.headers())?;
    check_space(registry, req.headers(), false)?;
    check_chunk(registry, &repo, req.headers()).await?;
    let body = req.into_body().into_data_stream();
    registry
        .finish_upload(&repo, id, &digest, chunk, body)
        .await?;
    Ok(blob_created(&repo, &digest))
}

pub(super) async fn cancel_upload(
    registry: &Registry,
    name: &str,
    id: &str,
) -> Result<Response, ApiError> {
    let repo = registry::parse_name(name)?;
    registry.cancel_upload(&repo, id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
