//! OCI images for the real-client tests: built offline as OCI layouts with umoci, moved with
//! skopeo. Tests that need the tools call [`tools_present`] first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use serde_json::Value;

use super::{must_run, sha256_digest};

/// Bound of any one skopeo or umoci command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(180);

/// Whether `tools` are installed; prints why the test is skipped when not, and panics when
/// `BERTH_REQUIRE_CLIENT_TOOLS` requires a missing one (see [`super::tools`]).
pub fn tools_present(test: &str, tools: &[&str]) -> bool {
    let probes: Vec<(&str, Result<(), String>)> = tools
        .iter()
        .map(|t| (*t, super::tools::installed(t)))
        .collect();
    super::tools::ready(test, &probes)
}

pub fn skopeo(args: &[&str]) -> super::CmdOutput {
    let mut all = vec!["--insecure-policy"];
    all.extend_from_slice(args);
    must_run("skopeo", &all, CMD_TIMEOUT)
}

pub fn umoci(args: &[&str]) {
    must_run("umoci", args, CMD_TIMEOUT);
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// An OCI image layout on disk.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn at(dir: PathBuf) -> Layout {
        Layout { dir }
    }

    pub fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", path_str(&self.dir))
    }

    pub fn oci(&self, tag: &str) -> String {
        format!("oci:{}", self.image(tag))
    }

    pub fn index(&self) -> Value {
        let bytes = std::fs::read(self.dir.join("index.json")).expect("read index.json");
        serde_json::from_slice(&bytes).expect("index.json is JSON")
    }

    /// The descriptor `index.json` holds for a tag.
    pub fn descriptor(&self, tag: &str) -> Value {
        let index = self.index();
        let found: Vec<&Value> = index["manifests"]
            .as_array()
            .expect("index.json has manifests")
            .iter()
            .filter(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .collect();
        assert_eq!(found.len(), 1, "tag {tag} in {index}");
        found[0].clone()
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir.join("blobs").join("sha256").join(hex)
    }

    /// A blob's bytes; asserts they hash to the digest.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("blob {digest} missing in {}: {e}", self.dir.display()));
        assert_eq!(
            sha256_digest(&bytes),
            digest,
            "blob file {}",
            path.display()
        );
        bytes
    }

    /// (digest, bytes) of the manifest or index a tag names.
    pub fn tagged(&self, tag: &str) -> (String, Vec<u8>) {
        let d = self.descriptor(tag);
        let digest = d["digest"].as_str().expect("digest").to_string();
        let bytes = self.blob(&digest);
        assert_eq!(
            d["size"].as_u64(),
            Some(bytes.len() as u64),
            "size of {digest}"
        );
        (digest, bytes)
    }

    /// Every blob file of the layout hashes to its name.
    pub fn verify_all_blobs(&self) -> usize {
        let mut n = 0;
        for p in super::dir_entries(&self.dir.join("blobs").join("sha256")) {
            let bytes = std::fs::read(&p).expect("read blob");
            let name = p.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                sha256_digest(&bytes),
                format!("sha256:{name}"),
                "{}",
                p.display()
            );
            n += 1;
        }
        n
    }
}

/// Builds `layout:tag` with umoci: one layer per entry of `layer_sizes`, each holding a file of
/// that many random bytes, a small text file and a nested directory.
pub fn build_image(work: &Path, layout: &Layout, tag: &str, layer_sizes: &[usize]) {
    if !layout.dir.join("index.json").exists() {
        umoci(&["init", "--layout", path_str(&layout.dir)]);
    }
    umoci(&["new", "--image", &layout.image(tag)]);
    let mut rng = rand::rng();
    for (i, size) in layer_sizes.iter().enumerate() {
        let bundle = work.join(format!("bundle-{tag}-{i}"));
        umoci(&[
            "unpack",
            "--rootless",
            "--image",
            &layout.image(tag),
            path_str(&bundle),
        ]);
        let rootfs = bundle.join("rootfs");
        let mut data = vec![0u8; *size];
        rng.fill_bytes(&mut data);
        std::fs::write(rootfs.join(format!("random-{i}.bin")), &data).unwrap();
        std::fs::write(
            rootfs.join(format!("layer-{i}.txt")),
            format!("layer {i} of {tag}\n"),
        )
        .unwrap();
        let nested = rootfs.join("etc").join(format!("conf-{i}"));
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(nested.join("settings"), format!("value = {i}\n")).unwrap();
        umoci(&["repack", "--image", &layout.image(tag), path_str(&bundle)]);
        // The bundle is no longer needed; drop it to keep the temp dir small.
        let _ = std::fs::remove_dir_all(&bundle);
    }
}
