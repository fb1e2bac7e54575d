//! Tier 4: real clients against a real `berth serve` with `auth.enabled = true` and a
//! bootstrap admin (ADR 019): `docker login` (the OAuth2 POST and refresh-token flow) then
//! push, pull and logout; skopeo with `--dest-creds` / `--creds` / `--src-creds` (the GET
//! token flow with Basic credentials). Without credentials, or with wrong ones, each client
//! fails and nothing is written.
//!
//! Each test skips (printing why) when its client is missing, unless
//! `BERTH_REQUIRE_CLIENT_TOOLS` names it (`scripts/test` does when it is installed).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::images::{Layout, build_image, path_str, tools_present};
use support::{ADMIN_PASSWORD, admin_catalog as catalog, run_cmd, start_with_auth, tools};

/// Bound of any one client command.
const CMD_TIMEOUT: Duration = Duration::from_secs(180);

fn docker_available() -> Result<(), String> {
    tools::succeeds(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]))
        .map_err(|e| format!("the Docker engine does not answer: {e}"))
}

/// `docker --config DIR args…` (a config directory of the test's own: its logins go with it).
fn docker(config: &Path, args: &[&str]) -> support::CmdOutput {
    let mut cmd = Command::new("docker");
    cmd.arg("--config").arg(config).args(args);
    run_cmd(&mut cmd, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn docker_login_push_pull_logout_with_tokens() {
    let test = "docker_login_push_pull_logout_with_tokens";
    if !tools::ready(test, &[("docker", docker_available())]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let root = tmp.path().join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("hello.txt"),
        format!("auth test {:?}\n", Instant::now()),
    )
    .unwrap();
    let tarball = tmp.path().join("rootfs.tar");
    support::must_run(
        "tar",
        &["-C", path_str(&root), "-cf", path_str(&tarball), "."],
        CMD_TIMEOUT,
    );
    let berth = start_with_auth(&tmp.path().join("data"));
    let host = berth.host_port();
    let reference = format!("{host}/auth/img:1");
    let cleanup = support::ImageCleanup(vec![reference.clone()]);
    let out = docker(&config, &["import", path_str(&tarball), &reference]);
    assert!(out.status.success(), "{}", out.stderr_text());

    // Not logged in: the push is refused and nothing is written.
    let out = docker(&config, &["push", &reference]);
    assert!(!out.status.success(), "a push without login succeeded");
    assert!(catalog(&berth).is_empty());
    // A wrong password: login fails.
    let mut login = Command::new("docker");
    login.arg("--config").arg(&config).args([
        "login",
        &host,
        "-u",
        "admin",
        "-p",
        "wrong-password",
    ]);
    let out = run_cmd(&mut login, CMD_TIMEOUT).unwrap();
    assert!(
        !out.status.success(),
        "login with a wrong password succeeded"
    );

    let out = docker(
        &config,
        &["login", &host, "-u", "admin", "-p", ADMIN_PASSWORD],
    );
    assert!(out.status.success(), "login: {}", out.stderr_text());
    // docker keeps the refresh token (identity token), not the password.
    let saved = std::fs::read_to_string(config.join("config.json")).unwrap();
    assert!(saved.contains("identitytoken"), "{saved}");
    let out = docker(&config, &["push", &reference]);
    assert!(out.status.success(), "push: {}", out.stderr_text());
    assert_eq!(catalog(&berth), vec!["auth/img"]);
    let out = docker(&config, &["rmi", &reference]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let out = docker(&config, &["pull", &reference]);
    assert!(out.status.success(), "pull: {}", out.stderr_text());

    let out = docker(&config, &["logout", &host]);
    assert!(out.status.success(), "{}", out.stderr_text());
    docker(&config, &["rmi", &reference]);
    let out = docker(&config, &["pull", &reference]);
    assert!(!out.status.success(), "a pull after logout succeeded");
    drop(cleanup);
}

fn skopeo(args: &[&str]) -> support::CmdOutput {
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy").args(args);
    run_cmd(&mut cmd, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn skopeo_with_creds_copies_and_without_is_refused() {
    let test = "skopeo_with_creds_copies_and_without_is_refused";
    if !tools_present(test, &["skopeo", "umoci"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::at(tmp.path().join("layout"));
    build_image(tmp.path(), &layout, "v1", &[64 * 1024]);
    let berth = start_with_auth(&tmp.path().join("data"));
    let dest = format!("docker://{}/sk/img:v1", berth.host_port());
    let creds = format!("admin:{ADMIN_PASSWORD}");

    let out = skopeo(&["copy", "--dest-tls-verify=false", &layout.oci("v1"), &dest]);
    assert!(
        !out.status.success(),
        "a copy without credentials succeeded"
    );
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "admin:wrong-password",
        &layout.oci("v1"),
        &dest,
    ]);
    assert!(
        !out.status.success(),
        "a copy with a wrong password succeeded"
    );
    assert!(catalog(&berth).is_empty());

    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &layout.oci("v1"),
        &dest,
    ]);
    assert!(out.status.success(), "copy: {}", out.stderr_text());
    let out = skopeo(&["inspect", "--tls-verify=false", "--creds", &creds, &dest]);
    assert!(out.status.success(), "inspect: {}", out.stderr_text());
    let out = skopeo(&["inspect", "--tls-verify=false", &dest]);
    assert!(
        !out.status.success(),
        "inspect without credentials succeeded"
    );
    // Registry to registry, both sides authenticated.
    let second = format!("docker://{}/sk/copy:v1", berth.host_port());
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        &creds,
        "--dest-creds",
        &creds,
        &dest,
        &second,
    ]);
    assert!(out.status.success(), "copy: {}", out.stderr_text());
    assert_eq!(catalog(&berth), vec!["sk/copy", "sk/img"]);
}
