//! Manifest and referrers endpoints.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::error::ApiError;
use super::{empty, json_response, query_param, set_header};
use crate::registry::{self, Registry, RegistryError};
use crate::types::Reference;
use crate::types::manifest::OCI_INDEX;

/// The reference of a GET, HEAD or DELETE. A reference that is neither a valid tag nor a
/// digest names nothing that can exist, so it is [`RegistryError::ManifestUnknown`] (404), as
/// the OCI conformance suite expects of `.INVALID_MANIFEST_NAME`; only a PUT, which would create
/// the name, refuses it as invalid (400).
fn existing_reference(reference: &str) -> Result<Reference, RegistryError> {
    registry::parse_reference(reference)
        .map_err(|_| RegistryError::ManifestUnknown(reference.to_string()))
}

pub(super) async fn get(
    registry: &Registry,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    with_body: bool,
) -> Result<Response, ApiError> {
    let repo = registry::parse_name(name)?;
    let reference = existing_reference(reference)?;
    // `Accept` may come as several headers, each a comma-separated list with parameters.
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .filter(|t| !t.is_empty())
        .collect();
    let m = registry
        .get_manifest_for(&repo, &reference, &accept)
        .await?;
    let len = m.bytes.len();
    let mut resp = if with_body {
        Response::new(Body::from(m.bytes))
    } else {
        empty(StatusCode::OK)
    };
    let h = resp.headers_mut();
    set_header(h, header::CONTENT_TYPE, &m.media_type);
    set_header(h, header::CONTENT_LENGTH, &len.to_string());
    set_header(
        h,
        header::HeaderName::from_static("docker-content-digest"),
        m.digest.as_str(),
    );
    set_header(h, header::ETAG, &format!("\"{}\"", m.digest));
    Ok(resp)
}

pub(super) async fn put(
    registry: &Registry,
    name: &str,
    reference: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let repo = registry::parse_name(name)?;
    let reference = registry::parse_reference(reference)?;
    let limit = registry.max_manifest_bytes();
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(RegistryError::ManifestTooLarge { limit }.into());
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // At most `limit` bytes are read: one more fails the read with a length-limit error (413).
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                RegistryError::ManifestTooLarge { limit }
            } else {
                RegistryError::ManifestInvalid(format!("failed to read the manifest body: {e}"))
            }
        })?;
    let put = registry
        .put_manifest(&repo, &reference, content_type.as_deref(), bytes)
        .await?;
    let mut resp = empty(StatusCode::CREATED);
    let h = resp.headers_mut();
    set_header(
        h,
        header::LOCATION,
        &format!("/v2/{repo}/manifests/{}", put.digest),
    );
    set_header(
        h,
        header::HeaderName::from_static("docker-content-digest"),
        put.digest.as_str(),
    );
    if let Some(subject) = &put.subject {
        set_header(
            h,
            header::HeaderName::from_static("oci-subject"),
            subject.as_str(),
        );
    }
    Ok(resp)
}

pub(super) async fn delete(
    registry: &Registry,
    name: &str,
    reference: &str,
) -> Result<Response, ApiError> {
    let repo = registry::parse_name(name)?;
    let reference = existing_reference(reference)?;
    registry.delete_manifest(&repo, &reference).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

pub(super) async fn referrers(
    registry: &Registry,
    name: &str,
    digest: &str,
    q: &[(String, String)],
) -> Result<Response, ApiError> {
    let repo = registry::parse_name(name)?;
    let subject = registry::parse_digest(digest)?;
    let artifact_type = query_param(q, "artifactType").filter(|t| !t.is_empty());
    let referrers = registry.referrers(&repo, &subject, artifact_type).await?;
    let body = serde_json::to_vec(&registry::referrers_index(&referrers)).expect("json encodes");
    let mut resp = json_response(StatusCode::OK, body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if referrers.filtered {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
