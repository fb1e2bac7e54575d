//! Tier 4: skopeo (with images built by umoci) against a real `berth serve` over a real socket.
//!
//! Images are built offline as OCI layouts with umoci; skopeo pushes them to berth and pulls
//! them back into fresh layouts, and every manifest, index and blob digest must survive the
//! round trip unchanged.
//!
//! Skipped (with a message) when skopeo or umoci is not installed, unless
//! `BERTH_REQUIRE_CLIENT_TOOLS=1`, which turns a missing tool into a failure.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde_json::Value;
use support::{BerthProcess, Client, OCI_INDEX, must_run, run_cmd, sha256_digest};

/// Bound of any one skopeo or umoci command.
const CMD_TIMEOUT: Duration = Duration::from_secs(180);

/// Whether skopeo and umoci are here; prints why the test is skipped when not.
fn tools_present(test: &str) -> bool {
    let missing: Vec<&str> = ["skopeo", "umoci"]
        .into_iter()
        .filter(|t| !support::tool_available(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("BERTH_REQUIRE_CLIENT_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{test}: required tools are missing: {missing:?}");
    }
    eprintln!(
        "SKIPPED {test}: {missing:?} not installed (set BERTH_REQUIRE_CLIENT_TOOLS=1 to fail)"
    );
    false
}

fn skopeo(args: &[&str]) -> support::CmdOutput {
    let mut all = vec!["--insecure-policy"];
    all.extend_from_slice(args);
    must_run("skopeo", &all, CMD_TIMEOUT)
}

fn umoci(args: &[&str]) {
    must_run("umoci", args, CMD_TIMEOUT);
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// An OCI image layout on disk.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn at(dir: PathBuf) -> Layout {
        Layout { dir }
    }

    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", path_str(&self.dir))
    }

    fn oci(&self, tag: &str) -> String {
        format!("oci:{}", self.image(tag))
    }

    fn index(&self) -> Value {
        let bytes = std::fs::read(self.dir.join("index.json")).expect("read index.json");
        serde_json::from_slice(&bytes).expect("index.json is JSON")
    }

    /// The descriptor `index.json` holds for a tag.
    fn descriptor(&self, tag: &str) -> Value {
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

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir.join("blobs").join("sha256").join(hex)
    }

    /// A blob's bytes; asserts they hash to the digest.
    fn blob(&self, digest: &str) -> Vec<u8> {
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
    fn tagged(&self, tag: &str) -> (String, Vec<u8>) {
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
    fn verify_all_blobs(&self) -> usize {
        let mut n = 0;
        for p in support::dir_entries(&self.dir.join("blobs").join("sha256")) {
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

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON document")
}

/// Config digest and layer digests of an image manifest.
fn manifest_blobs(manifest: &Value) -> (String, Vec<String>) {
    let config = manifest["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_string();
    let layers = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("layer digest").to_string())
        .collect();
    (config, layers)
}

/// Builds `layout:tag` with umoci: one layer per entry of `layer_sizes`, each holding a file of
/// that many random bytes, a small text file and a nested directory.
fn build_image(work: &Path, layout: &Layout, tag: &str, layer_sizes: &[usize]) {
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

#[test]
fn skopeo_push_pull_roundtrip_inspect_list_tags_delete() {
    let test = "skopeo_push_pull_roundtrip_inspect_list_tags_delete";
    if !tools_present(test) {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::at(tmp.path().join("src"));
    // Three layers, a few MiB of random (incompressible) data in all.
    build_image(tmp.path(), &src, "v1", &[2 << 20, 1 << 20, 512 << 10]);
    // A second, different manifest over the same layers: another config.
    umoci(&[
        "config",
        "--image",
        &src.image("v1"),
        "--tag",
        "other",
        "--config.label",
        "berth.test=other",
    ]);
    let (src_digest, src_bytes) = src.tagged("v1");
    let src_manifest = json(&src_bytes);
    let (src_config, src_layers) = manifest_blobs(&src_manifest);
    assert_eq!(src_layers.len(), 3, "umoci built 3 layers: {src_manifest}");
    let (other_digest, _) = src.tagged("other");
    assert_ne!(other_digest, src_digest);

    let berth = BerthProcess::start(&tmp.path().join("data"));
    let reg = |tag: &str| format!("docker://{}/ns/app:{tag}", berth.host_port());

    // Push.
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src.oci("v1"),
        &reg("v1"),
    ]);

    // Pull back into a fresh layout; everything must be identical.
    let out = Layout::at(tmp.path().join("out"));
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &reg("v1"),
        &out.oci("v1"),
    ]);
    let (out_digest, out_bytes) = out.tagged("v1");
    assert_eq!(
        out_digest, src_digest,
        "manifest digest changed in the round trip"
    );
    assert_eq!(
        out_bytes, src_bytes,
        "manifest bytes changed in the round trip"
    );
    let (out_config, out_layers) = manifest_blobs(&json(&out_bytes));
    assert_eq!(out_config, src_config);
    assert_eq!(out_layers, src_layers);
    for d in std::iter::once(&src_config).chain(&src_layers) {
        assert_eq!(
            out.blob(d),
            src.blob(d),
            "blob {d} differs after the round trip"
        );
    }
    assert!(out.verify_all_blobs() >= 5, "manifest, config and 3 layers");

    // inspect --raw: the exact bytes pushed.
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &reg("v1")]);
    assert_eq!(raw.stdout, src_bytes, "skopeo inspect --raw bytes differ");

    // The registry serves the same bytes and digest over plain HTTP too.
    let client = Client::new(&berth.base_url());
    let m = client.get_manifest("ns/app", "v1").unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(m.body, src_bytes);
    assert_eq!(m.header("docker-content-digest"), Some(src_digest.as_str()));

    // inspect: digest, layers and platform.
    let info = json(&skopeo(&["inspect", "--tls-verify=false", &reg("v1")]).stdout);
    assert_eq!(info["Digest"], src_digest.as_str(), "{info}");
    let layers: Vec<String> = support::string_list(&info["Layers"]);
    assert_eq!(layers, src_layers, "{info}");
    assert_eq!(info["Architecture"], "amd64", "{info}");
    assert_eq!(info["Os"], "linux", "{info}");
    assert!(
        support::string_list(&info["RepoTags"]).contains(&"v1".to_string()),
        "{info}"
    );

    // Several tags: v2 is the same manifest as v1, v3 a different one.
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src.oci("v1"),
        &reg("v2"),
    ]);
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src.oci("other"),
        &reg("v3"),
    ]);
    let repo = format!("docker://{}/ns/app", berth.host_port());
    let listed = json(&skopeo(&["list-tags", "--tls-verify=false", &repo]).stdout);
    let tags: BTreeSet<String> = support::string_list(&listed["Tags"]).into_iter().collect();
    assert_eq!(
        tags,
        ["v1", "v2", "v3"].map(String::from).into(),
        "{listed}"
    );
    assert!(client.catalog().contains(&"ns/app".to_string()));

    // Delete v3 (skopeo deletes by digest): v3 and its manifest are gone, v1/v2 stay.
    skopeo(&["delete", "--tls-verify=false", &reg("v3")]);
    let listed = json(&skopeo(&["list-tags", "--tls-verify=false", &repo]).stdout);
    let tags: BTreeSet<String> = support::string_list(&listed["Tags"]).into_iter().collect();
    assert_eq!(tags, ["v1", "v2"].map(String::from).into(), "{listed}");
    assert_eq!(client.get_manifest("ns/app", "v3").unwrap().status, 404);
    assert_eq!(
        client.get_manifest("ns/app", &other_digest).unwrap().status,
        404,
        "the deleted manifest is still served by digest"
    );
    let insp = run_cmd(
        std::process::Command::new("skopeo").args([
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=false",
            &reg("v3"),
        ]),
        CMD_TIMEOUT,
    )
    .unwrap();
    assert!(
        !insp.status.success(),
        "skopeo inspect of a deleted tag succeeded: {}",
        insp.stdout_text()
    );
    let v1 = client.get_manifest("ns/app", "v1").unwrap();
    assert_eq!(v1.status, 200);
    assert_eq!(v1.body, src_bytes);
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &reg("v2")]);
    assert_eq!(raw.stdout, src_bytes);

    eprintln!("{test}: ok in {:?}", started.elapsed());
}

#[test]
fn skopeo_copy_all_multi_arch_index() {
    let test = "skopeo_copy_all_multi_arch_index";
    if !tools_present(test) {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::at(tmp.path().join("src"));
    // Two images with their own layers, one per architecture.
    build_image(tmp.path(), &src, "base-amd", &[1 << 20, 256 << 10]);
    build_image(tmp.path(), &src, "base-arm", &[1 << 20, 256 << 10]);
    for (base, tag, arch) in [("base-amd", "amd", "amd64"), ("base-arm", "arm", "arm64")] {
        umoci(&[
            "config",
            "--image",
            &src.image(base),
            "--tag",
            tag,
            "--os",
            "linux",
            "--architecture",
            arch,
        ]);
    }
    // Assemble the index by hand: a blob in the layout, referenced from index.json.
    let children: Vec<(String, Vec<u8>, &str)> = [("amd", "amd64"), ("arm", "arm64")]
        .into_iter()
        .map(|(tag, arch)| {
            let (d, b) = src.tagged(tag);
            (d, b, arch)
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children.iter().map(|(d, b, arch)| serde_json::json!({
            "mediaType": support::OCI_MANIFEST,
            "digest": d,
            "size": b.len(),
            "platform": { "os": "linux", "architecture": arch },
        })).collect::<Vec<_>>(),
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let index_digest = sha256_digest(&index_bytes);
    std::fs::write(src.blob_path(&index_digest), &index_bytes).unwrap();
    let mut top = src.index();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": OCI_INDEX,
            "digest": index_digest,
            "size": index_bytes.len(),
            "annotations": { "org.opencontainers.image.ref.name": "multi" },
        }));
    std::fs::write(
        src.dir.join("index.json"),
        serde_json::to_vec(&top).unwrap(),
    )
    .unwrap();

    let berth = BerthProcess::start(&tmp.path().join("data"));
    let reg = format!("docker://{}/ns/multi:v1", berth.host_port());
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src.oci("multi"),
        &reg,
    ]);

    // The registry holds the index and each child under its digest.
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &reg]);
    assert_eq!(raw.stdout, index_bytes, "index bytes differ");
    let client = Client::new(&berth.base_url());
    let got = client.get_manifest("ns/multi", "v1").unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.body, index_bytes);
    assert_eq!(
        got.header("docker-content-digest"),
        Some(index_digest.as_str())
    );
    for (d, b, _) in &children {
        let child_ref = format!("docker://{}/ns/multi@{d}", berth.host_port());
        let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &child_ref]);
        assert_eq!(&raw.stdout, b, "child {d} bytes differ");
    }

    // Pull everything back into a fresh layout.
    let out = Layout::at(tmp.path().join("out"));
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        &reg,
        &out.oci("v1"),
    ]);
    let (out_digest, out_bytes) = out.tagged("v1");
    assert_eq!(
        out_digest, index_digest,
        "index digest changed in the round trip"
    );
    assert_eq!(out_bytes, index_bytes);
    let out_index = json(&out_bytes);
    let out_children: Vec<String> = out_index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect();
    let src_children: Vec<String> = children.iter().map(|(d, _, _)| d.clone()).collect();
    assert_eq!(out_children, src_children);
    for (d, b, arch) in &children {
        let child = out.blob(d);
        assert_eq!(&child, b, "child manifest {d} differs");
        let (config, layers) = manifest_blobs(&json(&child));
        let config_bytes = out.blob(&config);
        assert_eq!(config_bytes, src.blob(&config));
        assert_eq!(json(&config_bytes)["architecture"], *arch);
        for l in &layers {
            assert_eq!(out.blob(l), src.blob(l), "layer {l} of {arch} differs");
        }
    }
    out.verify_all_blobs();

    eprintln!("{test}: ok in {:?}", started.elapsed());
}
