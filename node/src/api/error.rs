//! OCI error responses: the one table from registry errors to wire codes and HTTP statuses.
//!
//! Body shape (distribution-spec): `{"errors":[{"code":"…","message":"…","detail":…}]}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::registry::RegistryError;

/// An OCI error code with its HTTP status and standard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Blob upload invalid.
    BlobUploadInvalid,
    /// Blob upload unknown to registry.
    BlobUploadUnknown,
    /// Provided digest did not match uploaded content.
    DigestInvalid,
    /// Blob unknown to registry (referenced by a manifest).
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to registry.
    NameUnknown,
    /// Provided length did not match content length.
    SizeInvalid,
    /// The operation is unsupported.
    Unsupported,
    /// Requested range not satisfiable (Distribution's `RANGE_INVALID`).
    RangeInvalid,
    /// Invalid number of results requested (Distribution's `PAGINATION_NUMBER_INVALID`).
    PaginationNumberInvalid,
    /// The manifest is too large (413; `MANIFEST_INVALID` code).
    ManifestTooLarge,
    /// Too many requests, or too many open upload sessions (429 `TOOMANYREQUESTS`).
    TooManyRequests,
    /// Authentication required (401 `UNAUTHORIZED`).
    Unauthorized,
    /// Requested access to the resource is denied (403 `DENIED`).
    Denied,
    /// The service is unavailable (Distribution's `UNAVAILABLE`).
    Unavailable,
    /// An internal error (Distribution's `UNKNOWN`).
    Unknown,
}

impl Code {
    /// The wire code, HTTP status and standard message.
    pub fn describe(self) -> (&'static str, StatusCode, &'static str) {
        use Code::*;
        match self {
            BlobUnknown => (
                "BLOB_UNKNOWN",
                StatusCode::NOT_FOUND,
                "blob unknown to registry",
            ),
            BlobUploadInvalid => (
                "BLOB_UPLOAD_INVALID",
                StatusCode::BAD_REQUEST,
                "blob upload invalid",
            ),
            BlobUploadUnknown => (
                "BLOB_UPLOAD_UNKNOWN",
                StatusCode::NOT_FOUND,
                "blob upload unknown to registry",
            ),
            DigestInvalid => (
                "DIGEST_INVALID",
                StatusCode::BAD_REQUEST,
                "provided digest did not match uploaded content",
            ),
            ManifestBlobUnknown => (
                "MANIFEST_BLOB_UNKNOWN",
                StatusCode::BAD_REQUEST,
                "manifest references a manifest or blob unknown to registry",
            ),
            ManifestInvalid => (
                "MANIFEST_INVALID",
                StatusCode::BAD_REQUEST,
                "manifest invalid",
            ),
            ManifestUnknown => (
                "MANIFEST_UNKNOWN",
                StatusCode::NOT_FOUND,
                "manifest unknown to registry",
            ),
            NameInvalid => (
                "NAME_INVALID",
                StatusCode::BAD_REQUEST,
                "invalid repository name",
            ),
            NameUnknown => (
                "NAME_UNKNOWN",
                StatusCode::NOT_FOUND,
                "repository name not known to registry",
            ),
            SizeInvalid => (
                "SIZE_INVALID",
                StatusCode::BAD_REQUEST,
                "provided length did not match content length",
            ),
            Unsupported => (
                "UNSUPPORTED",
                StatusCode::METHOD_NOT_ALLOWED,
                "the operation is unsupported",
            ),
            RangeInvalid => (
                "RANGE_INVALID",
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalid content range",
            ),
            PaginationNumberInvalid => (
                "PAGINATION_NUMBER_INVALID",
                StatusCode::BAD_REQUEST,
                "invalid number of results requested",
            ),
            ManifestTooLarge => (
                "MANIFEST_INVALID",
                StatusCode::PAYLOAD_TOO_LARGE,
                "manifest too large",
            ),
            TooManyRequests => (
                "TOOMANYREQUESTS",
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests",
            ),
            Unauthorized => (
                "UNAUTHORIZED",
                StatusCode::UNAUTHORIZED,
                "authentication required",
            ),
            Denied => (
                "DENIED",
                StatusCode::FORBIDDEN,
                "requested access to the resource is denied",
            ),
            Unavailable => (
                "UNAVAILABLE",
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable",
            ),
            Unknown => (
                "UNKNOWN",
                StatusCode::INTERNAL_SERVER_ERROR,
                "unknown error",
            ),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Item<'a>; 1],
}

#[derive(Serialize)]
struct Item<'a> {
    code: &'static str,
    message: &'a str,
    detail: serde_json::Value,
}

/// An error response of the OCI API.
#[derive(Debug)]
pub struct ApiError {
    code: Code,
    /// Overrides the standard message.
    message: Option<String>,
    detail: serde_json::Value,
    status: Option<StatusCode>,
    headers: Vec<(header::HeaderName, String)>,
}

impl ApiError {
    /// An error with the code's standard message.
    pub fn new(code: Code) -> ApiError {
        ApiError {
            code,
            message: None,
            detail: serde_json::Value::Null,
            status: None,
            headers: Vec::new(),
        }
    }

    /// Sets the message.
    pub fn message(mut self, message: impl Into<String>) -> ApiError {
        self.message = Some(message.into());
        self
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = detail;
        self
    }

    /// Overrides the code's HTTP status.
    pub fn status(mut self, status: StatusCode) -> ApiError {
        self.status = Some(status);
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        use RegistryError as E;
        let msg = e.to_string();
        match e {
            E::NameInvalid(name) => {
                ApiError::new(Code::NameInvalid).detail(serde_json::json!({ "name": name }))
            }
            E::NameUnknown(name) => {
                ApiError::new(Code::NameUnknown).detail(serde_json::json!({ "name": name }))
            }
            E::DigestInvalid(_) => ApiError::new(Code::DigestInvalid).message(msg),
            E::TagInvalid(_) => ApiError::new(Code::ManifestInvalid).message(msg),
            E::BlobUnknown(d) => {
                ApiError::new(Code::BlobUnknown).detail(serde_json::json!({ "digest": d.as_str() }))
            }
            E::BlobUploadUnknown(_) => ApiError::new(Code::BlobUploadUnknown),
            E::BlobUploadInvalid(_) => ApiError::new(Code::BlobUploadInvalid).message(msg),
            E::ChunkOutOfOrder { received } => ApiError::new(Code::RangeInvalid)
                .message(msg)
                .header(header::RANGE, range_header(received)),
            E::RangeNotSatisfiable { size } => ApiError::new(Code::RangeInvalid)
                .message(msg)
                .header(header::CONTENT_RANGE, format!("bytes */{size}")),
            E::SizeInvalid(_) => ApiError::new(Code::SizeInvalid).message(msg),
            E::ManifestInvalid(_) => ApiError::new(Code::ManifestInvalid).message(msg),
            E::ManifestTooLarge { limit } => ApiError::new(Code::ManifestTooLarge)
                .message(msg)
                .detail(serde_json::json!({ "limit": limit })),
            // MANIFEST_INVALID, not MANIFEST_BLOB_UNKNOWN: the content is known, the
            // descriptor is wrong (image-spec: content whose length differs from `size` must
            // not be trusted).
            E::DescriptorSizeInvalid {
                ref digest,
                declared,
                stored,
            } => ApiError::new(Code::ManifestInvalid)
                .message(msg)
                .detail(serde_json::json!({
                    "digest": digest.as_str(),
                    "size": declared,
                    "stored_size": stored,
                })),
            E::ManifestBlobUnknown(d) => ApiError::new(Code::ManifestBlobUnknown)
                .message(msg)
                .detail(serde_json::json!({ "digest": d.as_str() })),
            E::ManifestUnknown(r) => {
                ApiError::new(Code::ManifestUnknown).detail(serde_json::json!({ "reference": r }))
            }
            E::UploadBusy(_) => ApiError::new(Code::BlobUploadInvalid)
                .status(StatusCode::CONFLICT)
                .message(msg),
            E::TooManyUploads(_) => ApiError::new(Code::TooManyRequests)
                .message(msg)
                .header(header::RETRY_AFTER, "10"),
            E::NoQuorum(_) | E::Unavailable(_) => ApiError::new(Code::Unavailable)
                .message(msg)
                .header(header::RETRY_AFTER, "1"),
            // 503, not WebDAV's 507: clients know UNAVAILABLE and retry it (ADR 010).
            E::InsufficientStorage(_) => ApiError::new(Code::Unavailable)
                .message(msg)
                .detail(serde_json::json!({ "reason": "insufficient storage" }))
                .header(header::RETRY_AFTER, "30"),
            E::Denied(_) => ApiError::new(Code::Denied).message(msg),
            E::RateLimited {
                ref namespace,
                retry_after_secs,
                ..
            } => ApiError::new(Code::TooManyRequests)
                .detail(serde_json::json!({ "namespace": namespace }))
                .message(msg)
                .header(header::RETRY_AFTER, retry_after_secs.max(1).to_string()),
            E::Storage(source) => {
                tracing::error!(error = %source, "request failed on a storage error");
                ApiError::new(Code::Unknown)
            }
        }
    }
}

/// The `Range` header of an upload that has received `offset` bytes (`0-0` when none).
pub fn range_header(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status, message) = self.code.describe();
        let status = self.status.unwrap_or(status);
        let body = Body {
            errors: [Item {
                code,
                message: self.message.as_deref().unwrap_or(message),
                detail: self.detail,
            }],
        };
        let json = serde_json::to_vec(&body).expect("error body serialises");
        let mut resp = (status, json).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        resp
    }
}
