//! Tier 4: the Docker engine pushes to and pulls from a real `berth serve` over a real socket.
//!
//! Runs only when `docker info` succeeds; otherwise it prints why and passes, unless
//! `BERTH_REQUIRE_CLIENT_TOOLS` names docker (`scripts/test` does on a machine with an
//! engine), which turns the unavailable engine into a failure. The engine treats
//! 127.0.0.0/8 registries as insecure, so plain HTTP on loopback works without configuration.
//! The image is made offline with `docker import` from a tarball the test writes.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use rand::RngCore;
use support::{BerthProcess, Client, run_cmd};

/// Bound of any one docker command.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(180);

fn docker(args: &[&str]) -> support::CmdOutput {
    support::must_run("docker", args, DOCKER_TIMEOUT)
}

/// Whether the Docker engine answers (`Err`: why not).
fn docker_available() -> Result<(), String> {
    support::tools::succeeds(Command::new("docker").args([
        "info",
        "--format",
        "{{.ServerVersion}}",
    ]))
    .map_err(|e| format!("the Docker engine does not answer: {e}"))
}

/// The engine's image id of a reference, `None` when it has no such image.
fn image_id(reference: &str) -> Option<String> {
    let out = run_cmd(
        Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", reference]),
        DOCKER_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    out.status
        .success()
        .then(|| out.stdout_text().trim().to_string())
}

#[test]
fn docker_import_push_rmi_pull_same_image_id() {
    let test = "docker_import_push_rmi_pull_same_image_id";
    if !support::tools::ready(test, &[("docker", docker_available())]) {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();

    // A tarball with a couple of files; random content so that the engine has no such layer.
    let root = tmp.path().join("rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("hello.txt"), b"hello from berth\n").unwrap();
    std::fs::write(root.join("etc").join("app.conf"), b"answer = 42\n").unwrap();
    let mut random = vec![0u8; 256 * 1024];
    rand::rng().fill_bytes(&mut random);
    std::fs::write(root.join("random.bin"), &random).unwrap();
    let tarball = tmp.path().join("rootfs.tar");
    support::must_run(
        "tar",
        &[
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tarball.to_str().unwrap(),
            ".",
        ],
        Duration::from_secs(60),
    );

    let berth = BerthProcess::start(&tmp.path().join("data"));
    let reference = format!("{}/dock/img:1", berth.host_port());
    let _cleanup = support::ImageCleanup(vec![reference.clone()]);

    docker(&["import", tarball.to_str().unwrap(), &reference]);
    let imported = image_id(&reference).expect("the imported image exists");

    let push = docker(&["push", &reference]);
    let pushed_digest = push
        .stdout_text()
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .map(str::to_string);

    // The registry has the tag, and serves the manifest docker reported.
    let client = Client::new(&berth.base_url());
    assert_eq!(client.must_tags("dock/img"), vec!["1".to_string()]);
    let m = client.get_manifest("dock/img", "1").unwrap();
    assert_eq!(m.status, 200, "{}", m.text());
    let pushed_digest = pushed_digest.unwrap_or_else(|| {
        panic!(
            "no digest in the output of docker push:\n{}",
            push.stdout_text()
        )
    });
    assert_eq!(
        m.header("docker-content-digest"),
        Some(pushed_digest.as_str())
    );
    assert_eq!(support::sha256_digest(&m.body), pushed_digest);

    docker(&["rmi", &reference]);
    assert_eq!(
        image_id(&reference),
        None,
        "the image is still in the engine"
    );

    docker(&["pull", &reference]);
    let pulled = image_id(&reference).expect("the pulled image exists");
    assert_eq!(
        pulled, imported,
        "the pulled image id differs from the pushed one"
    );

    eprintln!("{test}: ok in {:?}", started.elapsed());
}
