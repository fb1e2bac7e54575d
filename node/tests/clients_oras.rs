//! Tier 4: oras-py (PyPI's `oras`, the Python ORAS client) pushes a Helm chart artifact to a
//! real `berth serve` over plain HTTP and pulls it back; then the HTTP API is checked for the
//! manifest oras wrote: Helm's config and chart media types, digests and sizes, the file name.
//!
//! The Python side is `support/oras_helm.py`, run with the interpreter of the venv that
//! `scripts/deps` fills: `$BERTH_TEST_VENV/bin/python3` (`scripts/test` sets the variable; the
//! default is `${XDG_CACHE_HOME:-$HOME/.cache}/berth-test-venv`, where `scripts/deps` puts it).
//! Two pushes, each with its own chart: blobs by POST + PUT, and blobs in 8 KiB PATCHes.
//!
//! Skipped (with the reason) when that venv has no `oras`, unless `BERTH_REQUIRE_CLIENT_TOOLS`
//! names oras (`scripts/test` does when the venv has it): then it fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde_json::Value;
use support::images::path_str;
use support::{BerthProcess, Client, OCI_MANIFEST, sha256_digest, tools};

const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
const HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
/// Bound of one run of the Python script (a push and a pull).
const ORAS_TIMEOUT: Duration = Duration::from_secs(120);

/// The venv's interpreter: `$BERTH_TEST_VENV/bin/python3`, or under the default venv path.
fn venv_python() -> PathBuf {
    let venv = match std::env::var_os("BERTH_TEST_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            cache.join("berth-test-venv")
        }
    };
    venv.join("bin").join("python3")
}

/// Whether `python` imports oras (`Err`: why not).
fn oras_probe(python: &Path) -> Result<(), String> {
    if !python.exists() {
        return Err(format!(
            "{} does not exist (scripts/deps makes the venv; BERTH_TEST_VENV names another)",
            python.display()
        ));
    }
    tools::succeeds(Command::new(python).args(["-c", "import oras.client"]))
}

/// A Helm-like chart archive `<name>-0.1.0.tgz` (Chart.yaml, values.yaml and 40 KiB of random
/// bytes, so that the chunked push needs several PATCHes) and its config JSON.
fn make_chart(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let src = dir.join(format!("src-{name}")).join(name);
    std::fs::create_dir_all(src.join("templates")).unwrap();
    std::fs::write(
        src.join("Chart.yaml"),
        format!("apiVersion: v2\nname: {name}\nversion: 0.1.0\n"),
    )
    .unwrap();
    std::fs::write(src.join("values.yaml"), b"replicas: 1\n").unwrap();
    let mut random = vec![0u8; 40 * 1024];
    rand::rng().fill_bytes(&mut random);
    std::fs::write(src.join("templates").join("random.bin"), &random).unwrap();
    let chart = dir.join(format!("{name}-0.1.0.tgz"));
    support::must_run(
        "tar",
        &[
            "-C",
            path_str(src.parent().unwrap()),
            "-czf",
            path_str(&chart),
            name,
        ],
        Duration::from_secs(60),
    );
    let config = dir.join(format!("{name}-config.json"));
    std::fs::write(
        &config,
        format!(r#"{{"name":"{name}","version":"0.1.0","apiVersion":"v2"}}"#),
    )
    .unwrap();
    (chart, config)
}

/// Pushes and pulls one chart with oras-py, then checks what berth serves.
fn roundtrip(python: &Path, berth: &BerthProcess, work: &Path, repo: &str, mode: &str) {
    let name = repo.rsplit('/').next().unwrap();
    let (chart, config) = make_chart(work, name);
    let chart_bytes = std::fs::read(&chart).unwrap();
    let config_bytes = std::fs::read(&config).unwrap();
    let outdir = work.join(format!("pulled-{name}"));
    std::fs::create_dir_all(&outdir).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/oras_helm.py");

    let out = support::must_succeed(
        Command::new(python).arg(&script).args([
            &berth.host_port(),
            repo,
            "0.1.0",
            path_str(&chart),
            path_str(&config),
            path_str(&outdir),
            mode,
        ]),
        ORAS_TIMEOUT,
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "oras_helm.py printed no JSON ({e}):\n{}\nstderr:\n{}",
            out.stdout_text(),
            out.stderr_text()
        )
    });

    // The pull gave back the chart, byte for byte.
    let pulled: Vec<PathBuf> = report["pulled"]
        .as_array()
        .expect("pulled files")
        .iter()
        .map(|p| PathBuf::from(p.as_str().expect("path")))
        .collect();
    assert_eq!(pulled.len(), 1, "{report}");
    assert_eq!(
        pulled[0].file_name(),
        chart.file_name(),
        "the pull names the file as pushed"
    );
    assert!(
        std::fs::read(&pulled[0]).unwrap() == chart_bytes,
        "{repo}: the pulled chart differs from the pushed one"
    );

    // berth serves the manifest oras pushed, with Helm's media types.
    let client = Client::new(&berth.base_url());
    let r = client.get_manifest(repo, "0.1.0").expect("GET manifest");
    assert_eq!(r.status, 200, "{repo}: {}", r.text());
    assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    let digest = sha256_digest(&r.body);
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        report["pushed_digest"], digest,
        "the digest berth answered to oras's PUT"
    );
    assert_eq!(report["status"], 201);
    let m = r.json();
    assert_eq!(m, report["manifest"], "oras read back what berth serves");
    assert_eq!(m["config"]["mediaType"], HELM_CONFIG, "{m}");
    assert_eq!(m["config"]["digest"], sha256_digest(&config_bytes), "{m}");
    assert_eq!(m["config"]["size"], config_bytes.len(), "{m}");
    let layers = m["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{m}");
    assert_eq!(layers[0]["mediaType"], HELM_CHART, "{m}");
    assert_eq!(layers[0]["digest"], sha256_digest(&chart_bytes), "{m}");
    assert_eq!(layers[0]["size"], chart_bytes.len(), "{m}");
    assert_eq!(
        layers[0]["annotations"]["org.opencontainers.image.title"],
        chart.file_name().unwrap().to_str().unwrap(),
        "{m}"
    );
    for (digest, bytes) in [
        (sha256_digest(&chart_bytes), &chart_bytes),
        (sha256_digest(&config_bytes), &config_bytes),
    ] {
        let b = client.get_blob(repo, &digest).expect("GET blob");
        assert_eq!(b.status, 200, "{repo}: blob {digest}");
        assert!(&b.body == bytes, "{repo}: blob {digest} differs");
    }
    assert_eq!(client.must_tags(repo), vec!["0.1.0".to_string()]);
}

#[test]
fn oras_py_pushes_and_pulls_a_helm_chart_monolithic_and_chunked() {
    let test = "oras_py_pushes_and_pulls_a_helm_chart_monolithic_and_chunked";
    let python = venv_python();
    if !tools::ready(test, &[("oras", oras_probe(&python))]) {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let berth = BerthProcess::start(&tmp.path().join("data"));
    roundtrip(&python, &berth, tmp.path(), "charts/demo", "monolithic");
    roundtrip(&python, &berth, tmp.path(), "charts/chunky", "chunked");
    eprintln!("{test}: ok in {:?}", started.elapsed());
}
