//! The harness's OCI client: the workspace's one test client (`berth-testkit`'s
//! [`berth_testkit::oci::Client`], which it derefs to) plus what only the cluster scenarios
//! need — images ([`Image`], [`ImageRef`]), pushes retried while a node answers 503, and pulls
//! verified byte for byte.
//!
//! Two layers: `try_*` / `push_*` functions return `Result` and classify failures
//! ([`PushError`]: unavailable, transport, unexpected) for the load generators, which retry;
//! `must_*` functions panic with the node, URL, status and body. Pushes only ever succeed on
//! the statuses the spec gives (201 for a finished upload and a manifest PUT). The client
//! never follows redirects and never uses a proxy.

use std::ops::Deref;
use std::time::Duration;

use rand::RngCore;

use crate::wait::try_wait_until;

pub use berth_testkit::http::Resp;
pub use berth_testkit::oci::{
    MANIFEST_ACCEPT, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, PushError, UploadStyle, location_path,
};
pub use berth_testkit::sha256_digest;

/// Deadline of one HTTP request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `must_push_image` keeps retrying steps answered 503 (no leader for a moment, e.g.
/// an election on a loaded machine), as a registry client would.
pub const MUST_PUSH_UNAVAILABLE_BUDGET: Duration = Duration::from_secs(20);

/// `len` random bytes (a layer whose digest no other test shares).
pub fn random_layer(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    v
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

/// A blocking OCI client of one node's HTTP front: the test kit's client, with image pushes
/// and verified pulls.
#[derive(Clone)]
pub struct Client(berth_testkit::oci::Client);

impl Deref for Client {
    type Target = berth_testkit::oci::Client;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Client {
    /// A client of the registry at `base` (`http://host:port`) with a [`REQUEST_TIMEOUT`] per
    /// request; `label` names it in messages.
    pub fn new(base: &str, label: &str) -> Client {
        let agent = berth_testkit::http::agent_with_timeout(REQUEST_TIMEOUT);
        Client(berth_testkit::oci::Client::with_agent(agent, base).with_label(label))
    }

    /// The same client, sending `Authorization: value` with every request.
    pub fn with_authorization(self, value: &str) -> Client {
        Client(self.0.with_authorization(value))
    }

    /// `PUT` a manifest; `Ok(response)` on 201 with the right `Docker-Content-Digest`.
    pub fn push_manifest(&self, image: &Image) -> Result<Resp, PushError> {
        self.push_manifest_bytes(&image.repo, &image.tag, OCI_MANIFEST, &image.manifest)
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
            Ok(Err(e)) => panic!("{what} at {} failed: {e}", self.base()),
            Err(last) => panic!(
                "{what} at {} answered 503 for {MUST_PUSH_UNAVAILABLE_BUDGET:?}: {last}",
                self.base()
            ),
        }
    }

    /// Pulls `repo:tag` and compares it with `expected`: the manifest by tag (bytes and
    /// `Docker-Content-Digest`), then every blob (status, size, sha256 of the bytes).
    pub fn try_pull_image(&self, repo: &str, tag: &str, expected: &ImageRef) -> Result<(), String> {
        let ctx = format!("{} ({}): pull {repo}:{tag}", self.label(), self.base());
        let r = self
            .get_manifest(repo, tag)
            .map_err(|e| format!("{ctx}: manifest GET: {e}"))?;
        if r.status != 200 {
            return Err(format!(
                "{ctx}: manifest GET answered {}: {}",
                r.status,
                r.excerpt()
            ));
        }
        if r.body != expected.manifest {
            return Err(format!(
                "{ctx}: manifest bytes differ: got {} ({}), want {}",
                sha256_digest(&r.body),
                r.excerpt(),
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
                    r.excerpt()
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
