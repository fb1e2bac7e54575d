//! A small blocking OCI Distribution client (plain HTTP) of one registry's HTTP front: blob
//! uploads in the three styles, manifest PUT and GET, tag lists and the catalog.
//!
//! Two layers: the request functions return `Result` — an answer of any status, or the
//! transport error — and the push steps classify failures ([`PushError`]: unavailable,
//! transport, unexpected) so that load generators can retry; `must_*` functions panic with the
//! registry, the step, the status and the body. Pushes only ever succeed on the statuses the
//! spec gives (202 for an open session or a chunk, 201 for a finished upload) and with the
//! right `Docker-Content-Digest`. A `Location` is followed by its path and query only, against
//! this client's base, so that a session opened on one node can be continued on another.

use std::time::Duration;

use crate::http::{Resp, agent_with_timeout};
use crate::sha256_digest;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI (uncompressed) layer media type.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The `Accept` of a manifest GET: any manifest kind the tests push.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// Deadline of one request of a client made by [`Client::new`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How a blob is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStyle {
    /// `POST …/uploads/?digest=` with the whole body.
    Monolithic,
    /// `POST` a session, then `PUT ?digest=` with the whole body.
    PostPut,
    /// `POST` a session, `PATCH` in two chunks, then an empty `PUT ?digest=`.
    Chunked,
}

/// Why a push step failed.
#[derive(Debug, Clone)]
pub enum PushError {
    /// The registry answered 503 (no leader or quorum right now): retry later.
    Unavailable {
        /// The step (e.g. "manifest PUT").
        step: String,
        /// The response body.
        body: String,
    },
    /// No HTTP answer: connection refused or reset, timeout.
    Transport {
        /// The step.
        step: String,
        /// The transport error.
        error: String,
    },
    /// An answer the protocol does not allow here.
    Unexpected {
        /// The step.
        step: String,
        /// Status code.
        status: u16,
        /// Body.
        body: String,
    },
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Unavailable { step, body } => write!(f, "{step}: 503: {body}"),
            PushError::Transport { step, error } => write!(f, "{step}: transport error: {error}"),
            PushError::Unexpected { step, status, body } => {
                write!(f, "{step}: unexpected status {status}: {body}")
            }
        }
    }
}

impl std::error::Error for PushError {}

/// So that tests whose steps return `Result<_, String>` can use `?` on a push.
impl From<PushError> for String {
    fn from(e: PushError) -> String {
        e.to_string()
    }
}

/// Checks a step's answer: `want` is success, 503 is [`PushError::Unavailable`], anything
/// else is [`PushError::Unexpected`].
fn expect(step: &str, r: Result<Resp, String>, want: u16) -> Result<Resp, PushError> {
    match r {
        Err(error) => Err(PushError::Transport {
            step: step.to_string(),
            error,
        }),
        Ok(r) if r.status == want => Ok(r),
        Ok(r) if r.status == 503 => Err(PushError::Unavailable {
            step: step.to_string(),
            body: r.excerpt(),
        }),
        Ok(r) => Err(PushError::Unexpected {
            step: step.to_string(),
            status: r.status,
            body: r.excerpt(),
        }),
    }
}

/// The path and query of a `Location` (absolute URL or absolute path), so that it can be sent
/// to any node.
pub fn location_path(location: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = location.strip_prefix(scheme) {
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    location
}

/// Appends a query parameter to a URL or path that may already have a query.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// A JSON array of strings (`null`: empty); panics on anything else.
pub fn string_list(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().expect("string item").to_string())
            .collect(),
        other => panic!("expected an array of strings, got {other}"),
    }
}

/// A blocking OCI client of one registry (one node's HTTP front).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    label: String,
    /// `Authorization` sent with every request that does not set its own.
    authorization: Option<String>,
}

impl Client {
    /// A client of the registry at `base` (`http://host:port`) whose requests each give up
    /// after [`DEFAULT_TIMEOUT`]; messages call it by its base URL.
    pub fn new(base: &str) -> Client {
        Client::with_agent(agent_with_timeout(DEFAULT_TIMEOUT), base)
    }

    /// A client over a prepared agent (e.g. [`agent_with_timeout`] with another deadline).
    pub fn with_agent(agent: ureq::Agent, base: &str) -> Client {
        let base = base.trim_end_matches('/').to_string();
        Client {
            agent,
            label: base.clone(),
            base,
            authorization: None,
        }
    }

    /// The same client, sending `Authorization: value` (e.g. `Basic …`, `Bearer …`) with
    /// every request that does not set its own.
    pub fn with_authorization(mut self, value: &str) -> Client {
        self.authorization = Some(value.to_string());
        self
    }

    /// The same client, called `label` in messages (e.g. "node 2").
    pub fn with_label(mut self, label: &str) -> Client {
        self.label = label.to_string();
        self
    }

    /// The agent, for requests this client does not make.
    pub fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// Base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// What messages call this registry.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, location_path(path))
    }

    /// Sends one request to `path` (a path, or a URL whose path is used) at this registry.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Resp, String> {
        let url = self.url(path);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if let Some(a) = &self.authorization
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            builder = builder.header("authorization", a);
        }
        let result = match body {
            Some(b) => {
                let req = builder.body(b.to_vec()).map_err(|e| e.to_string())?;
                self.agent.run(req)
            }
            None => {
                let req = builder.body(()).map_err(|e| e.to_string())?;
                self.agent.run(req)
            }
        };
        crate::http::read_resp(result).map_err(|e| format!("{method} {url}: {e}"))
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Resp, String> {
        self.request("GET", path, &[], None)
    }

    /// `HEAD path`.
    pub fn head(&self, path: &str) -> Result<Resp, String> {
        self.request("HEAD", path, &[], None)
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting every manifest kind
    /// ([`MANIFEST_ACCEPT`]).
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<Resp, String> {
        self.request(
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", MANIFEST_ACCEPT)],
            None,
        )
    }

    /// `GET /v2/<repo>/blobs/<digest>`.
    pub fn get_blob(&self, repo: &str, digest: &str) -> Result<Resp, String> {
        self.get(&format!("/v2/{repo}/blobs/{digest}"))
    }

    /// `PUT /v2/<repo>/manifests/<reference>`; the answer as it is (callers expect 201).
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Resp, String> {
        self.request(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            Some(bytes),
        )
    }

    /// `PUT` a manifest; `Ok(response)` on 201 with the manifest's `Docker-Content-Digest`.
    pub fn push_manifest_bytes(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Resp, PushError> {
        let step = format!("{}: PUT manifest {repo}:{reference}", self.label);
        let r = expect(
            &step,
            self.put_manifest(repo, reference, media_type, bytes),
            201,
        )?;
        check_digest_header(&step, &r, &sha256_digest(bytes))?;
        Ok(r)
    }

    /// `POST /v2/<repo>/blobs/uploads/`: opens a session; returns its `Location` path.
    pub fn open_upload(&self, repo: &str) -> Result<String, PushError> {
        let step = format!("{}: POST upload session", self.label);
        let r = expect(
            &step,
            self.request(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Some(&[]),
            ),
            202,
        )?;
        location_of(&step, &r)
    }

    /// `PATCH` a chunk at `offset` to a session (`location` from any node); returns the new
    /// `Location` path.
    pub fn patch_upload(
        &self,
        location: &str,
        offset: u64,
        chunk: &[u8],
    ) -> Result<String, PushError> {
        let step = format!("{}: PATCH upload chunk at {offset}", self.label);
        let range = format!("{offset}-{}", offset + chunk.len() as u64 - 1);
        let r = expect(
            &step,
            self.request(
                "PATCH",
                location,
                &[
                    ("Content-Type", "application/octet-stream"),
                    ("Content-Range", &range),
                ],
                Some(chunk),
            ),
            202,
        )?;
        location_of(&step, &r)
    }

    /// `PUT <location>?digest=` with the final bytes (possibly none): finishes a session.
    pub fn finish_upload(
        &self,
        location: &str,
        digest: &str,
        last: &[u8],
    ) -> Result<(), PushError> {
        let step = format!("{}: PUT upload ?digest=", self.label);
        let r = expect(
            &step,
            self.request(
                "PUT",
                &with_query(location, "digest", digest),
                &[("Content-Type", "application/octet-stream")],
                Some(last),
            ),
            201,
        )?;
        check_digest_header(&step, &r, digest)
    }

    /// Uploads a blob in one of the [`UploadStyle`]s; `Ok` on 201 with the blob's digest.
    pub fn push_blob(&self, repo: &str, data: &[u8], style: UploadStyle) -> Result<(), PushError> {
        let digest = sha256_digest(data);
        match style {
            UploadStyle::Monolithic => {
                let step = format!("{}: POST blob ?digest=", self.label);
                let r = expect(
                    &step,
                    self.request(
                        "POST",
                        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                        &[("Content-Type", "application/octet-stream")],
                        Some(data),
                    ),
                    201,
                )?;
                check_digest_header(&step, &r, &digest)
            }
            UploadStyle::PostPut => {
                let location = self.open_upload(repo)?;
                self.finish_upload(&location, &digest, data)
            }
            UploadStyle::Chunked => {
                let mut location = self.open_upload(repo)?;
                let mid = data.len() / 2;
                let mut offset = 0u64;
                for chunk in [&data[..mid], &data[mid..]] {
                    if !chunk.is_empty() {
                        location = self.patch_upload(&location, offset, chunk)?;
                        offset += chunk.len() as u64;
                    }
                }
                self.finish_upload(&location, &digest, &[])
            }
        }
    }

    /// Opens an upload session and sends part of a blob, never finishing it (leaves a staging
    /// file on the server). Returns the session's `Location` path.
    pub fn abandon_upload(&self, repo: &str, partial: &[u8]) -> Result<String, PushError> {
        let location = self.open_upload(repo)?;
        let step = format!("{}: PATCH abandoned upload", self.label);
        let r = expect(
            &step,
            self.request(
                "PATCH",
                &location,
                &[("Content-Type", "application/octet-stream")],
                Some(partial),
            ),
            202,
        )?;
        location_of(&step, &r)
    }

    /// Every tag of `repo`, sorted (`Err` on a transport error or a status other than 200).
    pub fn try_tags(&self, repo: &str) -> Result<Vec<String>, String> {
        let r = self.get(&format!("/v2/{repo}/tags/list"))?;
        if r.status != 200 {
            return Err(format!(
                "{}: tags list of {repo} answered {}: {}",
                self.label,
                r.status,
                r.excerpt()
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| {
            format!(
                "{}: tags list is not JSON ({e}): {}",
                self.label,
                r.excerpt()
            )
        })?;
        let mut tags: Vec<String> = match &v["tags"] {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
            other => return Err(format!("{}: tags is not a list: {other}", self.label)),
        };
        tags.sort();
        Ok(tags)
    }

    /// Every tag of `repo`, sorted; panics on anything but a 200 with a tag list.
    pub fn must_tags(&self, repo: &str) -> Vec<String> {
        self.try_tags(repo).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every repository of the catalog (one unpaginated request); panics on anything but a
    /// 200 with a list.
    pub fn must_catalog(&self) -> Vec<String> {
        let r = self
            .get("/v2/_catalog")
            .unwrap_or_else(|e| panic!("{}: catalog: {e}", self.label));
        assert_eq!(r.status, 200, "{}: catalog: {}", self.label, r.excerpt());
        string_list(&r.json()["repositories"])
    }
}

fn location_of(step: &str, r: &Resp) -> Result<String, PushError> {
    match r.header("location") {
        Some(l) => Ok(location_path(l).to_string()),
        None => Err(PushError::Unexpected {
            step: format!("{step}: no Location header"),
            status: r.status,
            body: r.excerpt(),
        }),
    }
}

fn check_digest_header(step: &str, r: &Resp, digest: &str) -> Result<(), PushError> {
    match r.header("docker-content-digest") {
        Some(d) if d == digest => Ok(()),
        other => Err(PushError::Unexpected {
            step: format!("{step}: Docker-Content-Digest {other:?}, want {digest}"),
            status: r.status,
            body: r.excerpt(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_path_strips_scheme_and_authority() {
        assert_eq!(
            location_path("http://127.0.0.1:5000/v2/a/blobs/uploads/x?y=1"),
            "/v2/a/blobs/uploads/x?y=1"
        );
        assert_eq!(
            location_path("/v2/a/blobs/uploads/x"),
            "/v2/a/blobs/uploads/x"
        );
        assert_eq!(location_path("http://h"), "/");
    }

    #[test]
    fn with_query_appends() {
        assert_eq!(with_query("/a", "digest", "d"), "/a?digest=d");
        assert_eq!(with_query("/a?x=1", "digest", "d"), "/a?x=1&digest=d");
    }

    #[test]
    fn a_push_error_reads_as_a_message() {
        let e = PushError::Unexpected {
            step: "PUT".into(),
            status: 400,
            body: "bad".into(),
        };
        assert_eq!(String::from(e), "PUT: unexpected status 400: bad");
    }

    #[test]
    fn client_trims_the_base_and_labels() {
        let c = Client::new("http://127.0.0.1:1/").with_label("node 1");
        assert_eq!(c.base(), "http://127.0.0.1:1");
        assert_eq!(c.label(), "node 1");
        assert_eq!(
            c.url("http://other:2/v2/x?y=1"),
            "http://127.0.0.1:1/v2/x?y=1"
        );
    }
}
