//! Shared helpers of the tier-2 API tests: a real node in a temporary directory whose axum
//! router is driven in-process with `tower::ServiceExt::oneshot` (no sockets), and small
//! request, response and manifest helpers.
//!
//! Every request sent through [`Client::send`] also checks two things that hold for every
//! `/v2/…` response: the `Docker-Distribution-API-Version: registry/2.0` header, and (for 4xx
//! and 5xx answers to non-HEAD requests) the OCI error body shape.

#![allow(dead_code)]

use std::ops::Deref;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::Digest as _;
use tower::ServiceExt;

pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
pub const DIGEST_HEADER: &str = "docker-content-digest";
pub const UPLOAD_UUID_HEADER: &str = "docker-upload-uuid";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A digest that no test ever uploads content for.
pub const ABSENT_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A started node with its router; stop it with [`TestNode::stop`].
pub struct TestNode {
    pub client: Client,
    node: berth_node::Node,
    _dir: tempfile::TempDir,
}

/// The configuration of a test node in `data_dir`: defaults, with Raft timings short enough
/// that a one-voter cluster elects itself at once, and a free-space reserve of the default
/// 1 GiB only (not 5 % of the file system: on a large, busy machine 5 % can exceed what is
/// free, and every upload would answer 503; `disk_full.rs` tests the reserve).
pub fn test_config(data_dir: &std::path::Path) -> berth_node::config::Config {
    let mut config = berth_node::config::Config {
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    config.storage.reserve_percent = 0;
    config.raft.heartbeat_ms = 50;
    config.raft.election_timeout_min_ms = 150;
    config.raft.election_timeout_max_ms = 300;
    config
}

impl TestNode {
    /// Starts a single-node cluster in a fresh temporary directory.
    pub async fn start() -> TestNode {
        TestNode::start_with(|_| {}).await
    }

    /// As [`TestNode::start`], with the configuration changed by `change` first.
    pub async fn start_with(change: impl FnOnce(&mut berth_node::config::Config)) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        change(&mut config);
        let node = berth_node::Node::start(&config, Duration::from_secs(10))
            .await
            .unwrap();
        let client = Client { app: node.router() };
        TestNode {
            client,
            node,
            _dir: dir,
        }
    }

    /// Stops Raft and closes the store (the router goes first), then removes the data
    /// directory.
    pub async fn stop(self) {
        let TestNode { client, node, _dir } = self;
        drop(client);
        assert!(node.stop().await, "the metadata store did not close");
    }

    /// The node (its registry, auth service, cluster handle).
    pub fn node(&self) -> &berth_node::Node {
        &self.node
    }

    /// Stops Raft but keeps the node's router and data (to see how the API answers then).
    pub async fn stop_raft(&self) {
        self.node.stop_raft().await;
    }
}

impl Deref for TestNode {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// A buffered response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `METHOD uri`, for failure messages.
    pub what: String,
}

impl Resp {
    /// A header as text; `None` when absent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The body as JSON (panics when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not json ({e}): {:?}",
                self.what,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first error's message of an OCI error body (panics when there is none).
    pub fn error_message(&self) -> String {
        self.json()["errors"][0]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no error message", self.what))
            .to_string()
    }

    /// Asserts the status, with the body in the message.
    #[track_caller]
    pub fn expect(&self, status: StatusCode) -> &Resp {
        assert_eq!(
            self.status,
            status,
            "{}: body {:?}",
            self.what,
            String::from_utf8_lossy(&self.body)
        );
        self
    }
}

/// Checks that `resp` carries an OCI error body and returns the first error's code.
///
/// Shape: `{"errors":[{"code":"…","message":"…","detail":…}, …]}` with at least one error,
/// `code` made of `A-Z` and `_`, `message` a string, and a `detail` member; JSON content type.
#[track_caller]
pub fn error_code(resp: &Resp) -> String {
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{}: error content type",
        resp.what
    );
    let v = resp.json();
    let obj = v.as_object().expect("error body is an object");
    assert_eq!(obj.len(), 1, "{}: only `errors` at the top: {v}", resp.what);
    let errors = obj["errors"].as_array().expect("errors is an array");
    assert!(!errors.is_empty(), "{}: no errors in {v}", resp.what);
    for e in errors {
        let e = e.as_object().expect("each error is an object");
        let code = e["code"].as_str().expect("code is a string");
        assert!(
            !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
            "{}: bad code {code:?}",
            resp.what
        );
        assert!(e["message"].is_string(), "{}: message: {v}", resp.what);
        assert!(
            e.contains_key("detail"),
            "{}: detail missing: {v}",
            resp.what
        );
        assert!(
            e.keys()
                .all(|k| ["code", "message", "detail"].contains(&k.as_str())),
            "{}: unexpected member in {v}",
            resp.what
        );
    }
    errors[0]["code"].as_str().unwrap().to_string()
}

/// Asserts an error response's status and code.
#[track_caller]
pub fn assert_error(resp: &Resp, status: StatusCode, code: &str) {
    resp.expect(status);
    assert_eq!(error_code(resp), code, "{}", resp.what);
}

/// The `sha256:` digest of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A descriptor of content.
pub fn desc(media_type: &str, content: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest_of(content), "size": content.len() })
}

/// JSON bytes of a value.
pub fn bytes_of(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// An OCI image manifest over a config and layers (contents, not descriptors).
pub fn oci_manifest(config: &[u8], layers: &[&[u8]]) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, config),
        "layers": layers.iter().map(|l| desc(OCI_LAYER, l)).collect::<Vec<_>>(),
    })
}

/// The blobs an image manifest references (its config and layers), as from `push_image`.
pub fn image_blobs(manifest: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(manifest).unwrap();
    let mut out = vec![v["config"]["digest"].as_str().unwrap().to_string()];
    for l in v["layers"].as_array().unwrap() {
        out.push(l["digest"].as_str().unwrap().to_string());
    }
    out
}

/// Builds a request; a non-empty body gets a `Content-Length` like a real client sends.
pub fn request(
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
) -> Request<Body> {
    let body = body.into();
    let mut b = Request::builder().method(method).uri(uri);
    let has_len = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if !has_len && !body.is_empty() {
        b = b.header(header::CONTENT_LENGTH, body.len());
    }
    b.body(Body::from(body)).unwrap()
}

/// A body streamed in several frames, with no length known up front.
pub fn streamed(chunks: Vec<Vec<u8>>) -> Body {
    Body::from_stream(futures::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
    ))
}

/// What a list of a repository's state looks like, to compare before and after a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub catalog: Vec<String>,
    pub tags: Vec<(String, Option<Vec<String>>)>,
    pub manifests: Vec<(String, StatusCode, Bytes)>,
}

/// The router, cheap to clone (for concurrent tasks).
#[derive(Clone)]
pub struct Client {
    pub app: Router,
}

impl Client {
    /// Sends a request through the real router and buffers the answer.
    pub async fn send(&self, req: Request<Body>) -> Resp {
        let what = format!("{} {}", req.method(), req.uri());
        let is_v2 = req.uri().path().starts_with("/v2");
        let is_head = req.method() == Method::HEAD;
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let resp = Resp {
            status: parts.status,
            headers: parts.headers,
            body,
            what,
        };
        if is_v2 {
            assert_eq!(
                resp.header(API_VERSION_HEADER),
                Some("registry/2.0"),
                "{}: every /v2 response carries the API version ({})",
                resp.what,
                resp.status
            );
            if !is_head && (resp.status.is_client_error() || resp.status.is_server_error()) {
                error_code(&resp);
            }
        }
        resp
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.send(request(Method::GET, uri, &[], Vec::new())).await
    }

    pub async fn get_with(&self, uri: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(request(Method::GET, uri, headers, Vec::new()))
            .await
    }

    pub async fn head(&self, uri: &str) -> Resp {
        self.send(request(Method::HEAD, uri, &[], Vec::new())).await
    }

    pub async fn delete(&self, uri: &str) -> Resp {
        self.send(request(Method::DELETE, uri, &[], Vec::new()))
            .await
    }

    pub async fn post(&self, uri: &str, body: impl Into<Vec<u8>>) -> Resp {
        self.send(request(Method::POST, uri, &[], body)).await
    }

    pub async fn put(&self, uri: &str, body: impl Into<Vec<u8>>) -> Resp {
        self.send(request(Method::PUT, uri, &[], body)).await
    }

    /// Monolithic upload (`POST ?digest=`); asserts 201 and returns the digest.
    pub async fn push_blob(&self, repo: &str, content: &[u8]) -> String {
        let digest = digest_of(content);
        self.post(
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            content,
        )
        .await
        .expect(StatusCode::CREATED);
        digest
    }

    /// Opens an upload session; asserts 202 and returns its `Location`.
    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .post(&format!("/v2/{repo}/blobs/uploads/"), Vec::new())
            .await;
        r.expect(StatusCode::ACCEPTED);
        r.header("location").expect("upload location").to_string()
    }

    /// PATCHes a chunk, with `Content-Range` when given.
    pub async fn patch(&self, location: &str, content_range: Option<&str>, chunk: &[u8]) -> Resp {
        let mut h = vec![("content-type", "application/octet-stream")];
        if let Some(cr) = content_range {
            h.push(("content-range", cr));
        }
        self.send(request(Method::PATCH, location, &h, chunk)).await
    }

    /// Closes a session with `PUT <location>?digest=`, with an optional final chunk.
    pub async fn finish(&self, location: &str, digest: &str, chunk: &[u8]) -> Resp {
        self.put(&format!("{location}?digest={digest}"), chunk)
            .await
    }

    /// PUTs a manifest with a content type (none when `media_type` is empty).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Resp {
        let h: Vec<(&str, &str)> = if media_type.is_empty() {
            vec![]
        } else {
            vec![("content-type", media_type)]
        };
        self.send(request(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &h,
            body,
        ))
        .await
    }

    /// PUTs a manifest value (content type = its `mediaType`); asserts 201, returns its digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, manifest: &Value) -> String {
        let bytes = bytes_of(manifest);
        let mt = manifest["mediaType"].as_str().unwrap_or("");
        let r = self.put_manifest(repo, reference, mt, &bytes).await;
        r.expect(StatusCode::CREATED);
        let digest = digest_of(&bytes);
        assert_eq!(r.header(DIGEST_HEADER), Some(digest.as_str()));
        digest
    }

    /// Pushes a small OCI image (its own config and layer, from `seed`) and tags it (or pushes
    /// it by digest when `tag` is `None`). Returns the manifest's digest and bytes.
    pub async fn push_image(&self, repo: &str, tag: Option<&str>, seed: &str) -> (String, Vec<u8>) {
        let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
        let layer = format!("layer of {seed}").into_bytes();
        self.push_blob(repo, &config).await;
        self.push_blob(repo, &layer).await;
        let m = oci_manifest(&config, &[&layer]);
        let bytes = bytes_of(&m);
        let digest = digest_of(&bytes);
        let reference = tag.unwrap_or(&digest).to_string();
        self.push_manifest(repo, &reference, &m).await;
        (digest, bytes)
    }

    /// The tags of a repository; `None` when the repository is unknown (404).
    pub async fn tags(&self, repo: &str) -> Option<Vec<String>> {
        let r = self.get(&format!("/v2/{repo}/tags/list")).await;
        if r.status == StatusCode::NOT_FOUND {
            assert_eq!(error_code(&r), "NAME_UNKNOWN");
            return None;
        }
        r.expect(StatusCode::OK);
        let v = r.json();
        assert_eq!(v["name"], repo);
        Some(strings(&v["tags"]))
    }

    /// The whole catalog.
    pub async fn catalog(&self) -> Vec<String> {
        let r = self.get("/v2/_catalog").await;
        r.expect(StatusCode::OK);
        strings(&r.json()["repositories"])
    }

    /// Catalog, tags of `repos`, and GET of `manifests` (`repo`, `reference`) as they stand.
    pub async fn snapshot(&self, repos: &[&str], manifests: &[(&str, &str)]) -> Snapshot {
        let mut tags = Vec::new();
        for repo in repos {
            tags.push((repo.to_string(), self.tags(repo).await));
        }
        let mut ms = Vec::new();
        for (repo, reference) in manifests {
            let r = self.get(&format!("/v2/{repo}/manifests/{reference}")).await;
            ms.push((format!("{repo}:{reference}"), r.status, r.body));
        }
        Snapshot {
            catalog: self.catalog().await,
            tags,
            manifests: ms,
        }
    }
}

/// A JSON array of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}
