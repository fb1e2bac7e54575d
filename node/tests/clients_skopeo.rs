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
use std::time::Instant;

use serde_json::Value;
use support::images::{CMD_TIMEOUT, Layout, build_image, skopeo, tools_present, umoci};
use support::{BerthProcess, Client, OCI_INDEX, run_cmd, sha256_digest};

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

#[test]
fn skopeo_push_pull_roundtrip_inspect_list_tags_delete() {
    let test = "skopeo_push_pull_roundtrip_inspect_list_tags_delete";
    if !tools_present(test, &["skopeo", "umoci"]) {
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
    assert!(client.must_catalog().contains(&"ns/app".to_string()));

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
    if !tools_present(test, &["skopeo", "umoci"]) {
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
