//! A small blocking OCI Distribution client (ureq, plain HTTP) for one node's HTTP front:
//! blob uploads in the three styles, manifest PUT, pulls verified byte for byte, tag lists.
//!
//! Two layers: `try_*` / `push_*` functions return `Result` and classify failures
//! ([`PushError`]: unavailable, transport, unexpected) for the load generators, which retry;
//! `must_*` functions panic with the node, URL, status and body. Pushes only ever succeed on
//! the statuses the spec gives (201 for a finished upload and a manifest PUT). The client
//! never follows redirects and never uses a proxy.

use std::time::Duration;

use rand::RngCore;
use sha2::Digest as _;

use crate::wait::try_wait_until;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI (uncompressed) layer media type.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// `Accept` of a manifest GET.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";
/// Deadline of one HTTP request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `must_push_image` keeps retrying steps answered 503 (no leader for a moment, e.g.
/// an election on a loaded machine), as a registry client would.
pub const MUST_PUSH_UNAVAILABLE_BUDGET: Duration = Duration::from_secs(20);
/// Largest response body read.
const BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// `len` random bytes (a layer whose digest no other test shares).
pub fn random_layer(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    v
}

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: ureq::http::HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// A header as text, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) UTF-8, cut at 2000 characters for messages.
    pub fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        t.chars().take(2000).collect()
    }

    /// The OCI error codes of an error body (`{"errors":[{"code":…}]}`); empty when the body
    /// is not one.
    pub fn error_codes(&self) -> Vec<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| {
                v["errors"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|e| e["code"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default()
    }
}

/// Why a push step failed.
#[derive(Debug, Clone)]
pub enum PushError {
    /// The node answered 503 (no leader or quorum right now): retry later.
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
            body: r.text(),
        }),
        Ok(r) => Err(PushError::Unexpected {
            step: step.to_string(),
            status: r.status,
            body: r.text(),
        }),
    }
}

/// A blob as a manifest references it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:…`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl BlobRef {
    /// The reference of these bytes.
    pub fn of(data: &[u8]) -> BlobRef {
        BlobRef {
            digest: sha256_digest(data),
            size: data.len() as u64,
        }
    }
}

/// A pushed image: what a pull must give back.
#[derive(Debug, Clone)]
pub struct ImageRef {
    /// Repository name.
    pub repo: String,
    /// Tag.
    pub tag: String,
    /// The manifest bytes as pushed.
    pub manifest: Vec<u8>,
    /// Digest of the manifest bytes.
    pub manifest_digest: String,
    /// The config blob.
    pub config: BlobRef,
    /// The layer blobs, in manifest order.
    pub layers: Vec<BlobRef>,
}

impl ImageRef {
    /// Config and layers.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
}

/// The parts of an image to push: config bytes, layer bytes and the manifest over them.
#[derive(Debug, Clone)]
pub struct Image {
    /// Repository name.
    pub repo: String,
    /// Tag.
    pub tag: String,
    /// Config blob bytes (unique per repo and tag).
    pub config: Vec<u8>,
    /// Layer blob bytes.
    pub layers: Vec<Vec<u8>>,
    /// Manifest bytes.
    pub manifest: Vec<u8>,
}

impl Image {
    /// An OCI image manifest over a config naming `repo:tag` and the given layers.
    pub fn new(repo: &str, tag: &str, layers: &[Vec<u8>]) -> Image {
        Image::with_annotation(repo, tag, layers, None)
    }

    /// As [`Image::new`], with an `annotations` entry in the manifest (so that manifests over
    /// the same blobs still differ).
    pub fn with_annotation(
        repo: &str,
        tag: &str,
        layers: &[Vec<u8>],
        annotation: Option<(&str, &str)>,
    ) -> Image {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Labels": { "berth.test.image": format!("{repo}:{tag}") } },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| sha256_digest(l)).collect::<Vec<_>>(),
            },
        }))
        .expect("json encodes");
        Image::from_config(repo, tag, config, layers, annotation)
    }

    /// An image over an explicit config blob.
    pub fn from_config(
        repo: &str,
        tag: &str,
        config: Vec<u8>,
        layers: &[Vec<u8>],
        annotation: Option<(&str, &str)>,
    ) -> Image {
        let desc = |media_type: &str, data: &[u8]| {
            serde_json::json!({
                "mediaType": media_type,
                "digest": sha256_digest(data),
                "size": data.len(),
            })
        };
        let mut m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| desc(OCI_LAYER, l)).collect::<Vec<_>>(),
        });
        if let Some((k, v)) = annotation {
            m["annotations"] = serde_json::json!({ k: v });
        }
        Image {
            repo: repo.to_string(),
            tag: tag.to_string(),
            manifest: serde_json::to_vec(&m).expect("json encodes"),
            config,
            layers: layers.to_vec(),
        }
    }

    /// What a pull must give back.
    pub fn image_ref(&self) -> ImageRef {
        ImageRef {
            repo: self.repo.clone(),
            tag: self.tag.clone(),
            manifest: self.manifest.clone(),
            manifest_digest: sha256_digest(&self.manifest),
            config: BlobRef::of(&self.config),
            layers: self.layers.iter().map(|l| BlobRef::of(l)).collect(),
        }
    }
}

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

fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// A blocking OCI client of one node's HTTP front.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    label: String,
}

impl Client {
    /// A client of the registry at `base` (`http://host:port`); `label` names it in messages.
    pub fn new(base: &str, label: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        Client {
            agent,
            base: base.trim_end_matches('/').to_string(),
            label: label.to_string(),
        }
    }

    /// Base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// What messages call this node.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, location_path(path))
    }

    /// Sends one request to `path` (a path, or a URL whose path is used) at this node.
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
        let mut resp = result.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_vec()
            .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Resp, String> {
        self.request("GET", path, &[], None)
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting image manifests and indexes.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<Resp, String> {
        self.request(
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", MANIFEST_ACCEPT)],
            None,
        )
    }

    /// `PUT /v2/<repo>/manifests/<reference>`.
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

    /// Uploads a blob in one of the [`UploadStyle`]s; `Ok` on 201.
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

    /// `PUT` a manifest; `Ok(response)` on 201 with the right `Docker-Content-Digest`.
    pub fn push_manifest(&self, image: &Image) -> Result<Resp, PushError> {
        let step = format!("{}: PUT manifest {}:{}", self.label, image.repo, image.tag);
        let r = expect(
            &step,
            self.put_manifest(&image.repo, &image.tag, OCI_MANIFEST, &image.manifest),
            201,
        )?;
        check_digest_header(&step, &r, &sha256_digest(&image.manifest))?;
        Ok(r)
    }

    /// Pushes an image: config and layers (`style`), then the manifest. `Ok` only when the
    /// manifest PUT answered 201: the push is acknowledged.
    pub fn try_push_image(&self, image: &Image, style: UploadStyle) -> Result<ImageRef, PushError> {
        self.push_blob(&image.repo, &image.config, style)?;
        for layer in &image.layers {
            self.push_blob(&image.repo, layer, style)?;
        }
        self.push_manifest(image)?;
        Ok(image.image_ref())
    }

    /// Pushes `repo:tag` over `layers` (config and layers with `POST ?digest=`, then the
    /// manifest); retries a step answered 503 for up to [`MUST_PUSH_UNAVAILABLE_BUDGET`];
    /// panics on anything else.
    pub fn must_push_image(&self, repo: &str, tag: &str, layers: &[Vec<u8>]) -> ImageRef {
        self.must_push(&Image::new(repo, tag, layers))
    }

    /// As [`Client::must_push_image`] for a prepared [`Image`].
    pub fn must_push(&self, image: &Image) -> ImageRef {
        let what = format!("push of {}:{}", image.repo, image.tag);
        self.retry_unavailable(&what, || {
            self.try_push_image(image, UploadStyle::Monolithic)
        })
    }

    /// PUTs the manifest of `image` (its blobs must be in the cluster already), retrying a
    /// 503 for up to [`MUST_PUSH_UNAVAILABLE_BUDGET`]; panics on anything else.
    pub fn must_push_manifest(&self, image: &Image) -> ImageRef {
        let what = format!("manifest PUT of {}:{}", image.repo, image.tag);
        self.retry_unavailable(&what, || {
            self.push_manifest(image).map(|_| image.image_ref())
        })
    }

    /// Runs `f` until it does not answer 503, for up to [`MUST_PUSH_UNAVAILABLE_BUDGET`];
    /// panics on any other failure or when the budget runs out.
    fn retry_unavailable<T>(&self, what: &str, mut f: impl FnMut() -> Result<T, PushError>) -> T {
        let r = try_wait_until(MUST_PUSH_UNAVAILABLE_BUDGET, || match f() {
            Ok(v) => Ok(Ok(v)),
            Err(e @ PushError::Unavailable { .. }) => Err(e.to_string()),
            Err(e) => Ok(Err(e)),
        });
        match r {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("{what} at {} failed: {e}", self.base),
            Err(last) => panic!(
                "{what} at {} answered 503 for {MUST_PUSH_UNAVAILABLE_BUDGET:?}: {last}",
                self.base
            ),
        }
    }

    /// Pulls `repo:tag` and compares it with `expected`: the manifest by tag (bytes and
    /// `Docker-Content-Digest`), then every blob (status, size, sha256 of the bytes).
    pub fn try_pull_image(&self, repo: &str, tag: &str, expected: &ImageRef) -> Result<(), String> {
        let ctx = format!("{} ({}): pull {repo}:{tag}", self.label, self.base);
        let r = self
            .get_manifest(repo, tag)
            .map_err(|e| format!("{ctx}: manifest GET: {e}"))?;
        if r.status != 200 {
            return Err(format!(
                "{ctx}: manifest GET answered {}: {}",
                r.status,
                r.text()
            ));
        }
        if r.body != expected.manifest {
            return Err(format!(
                "{ctx}: manifest bytes differ: got {} ({}), want {}",
                sha256_digest(&r.body),
                r.text(),
                expected.manifest_digest
            ));
        }
        match r.header("docker-content-digest") {
            Some(d) if d == expected.manifest_digest => {}
            other => {
                return Err(format!(
                    "{ctx}: Docker-Content-Digest {other:?}, want {}",
                    expected.manifest_digest
                ));
            }
        }
        for blob in expected.blobs() {
            let path = format!("/v2/{repo}/blobs/{}", blob.digest);
            let r = self
                .get(&path)
                .map_err(|e| format!("{ctx}: blob GET {}: {e}", blob.digest))?;
            if r.status != 200 {
                return Err(format!(
                    "{ctx}: blob GET {} answered {}: {}",
                    blob.digest,
                    r.status,
                    r.text()
                ));
            }
            let got = sha256_digest(&r.body);
            if got != blob.digest || r.body.len() as u64 != blob.size {
                return Err(format!(
                    "{ctx}: blob {} came back as {} bytes with digest {got}, want {} bytes",
                    blob.digest,
                    r.body.len(),
                    blob.size
                ));
            }
        }
        Ok(())
    }

    /// As [`Client::try_pull_image`], panicking with the details.
    pub fn must_pull_image(&self, repo: &str, tag: &str, expected: &ImageRef) {
        if let Err(e) = self.try_pull_image(repo, tag, expected) {
            panic!("{e}");
        }
    }

    /// Every tag of `repo` (`Err` on a transport error or a status other than 200).
    pub fn try_tags(&self, repo: &str) -> Result<Vec<String>, String> {
        let r = self.get(&format!("/v2/{repo}/tags/list"))?;
        if r.status != 200 {
            return Err(format!(
                "{}: tags list of {repo} answered {}: {}",
                self.label,
                r.status,
                r.text()
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("{}: tags list is not JSON ({e}): {}", self.label, r.text()))?;
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
}

fn location_of(step: &str, r: &Resp) -> Result<String, PushError> {
    match r.header("location") {
        Some(l) => Ok(location_path(l).to_string()),
        None => Err(PushError::Unexpected {
            step: format!("{step}: no Location header"),
            status: r.status,
            body: r.text(),
        }),
    }
}

fn check_digest_header(step: &str, r: &Resp, digest: &str) -> Result<(), PushError> {
    match r.header("docker-content-digest") {
        Some(d) if d == digest => Ok(()),
        other => Err(PushError::Unexpected {
            step: format!("{step}: Docker-Content-Digest {other:?}, want {digest}"),
            status: r.status,
            body: r.text(),
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
    fn images_with_the_same_layers_differ_by_tag_and_annotation() {
        let layers = vec![b"layer".to_vec()];
        let a = Image::new("r", "a", &layers);
        let b = Image::new("r", "b", &layers);
        assert_ne!(a.config, b.config);
        let c = Image::with_annotation("r", "a", &layers, Some(("n", "1")));
        assert_ne!(a.manifest, c.manifest);
        assert_eq!(a.image_ref().layers, vec![BlobRef::of(b"layer")]);
    }

    #[test]
    fn error_codes_of_an_oci_error_body() {
        let r = Resp {
            status: 503,
            headers: Default::default(),
            body: br#"{"errors":[{"code":"UNAVAILABLE","message":"m"}]}"#.to_vec(),
        };
        assert_eq!(r.error_codes(), vec!["UNAVAILABLE".to_string()]);
    }
}
