//! Tier 4: podman (Debian's package, rootful) pushes to and pulls from a real `berth serve`
//! over a real socket, in both manifest formats it writes: Docker's v2 schema 2 and OCI.
//!
//! An image built offline with umoci (two layers) is loaded (`podman load` of an OCI archive)
//! into a podman store of the test's own (`--root`/`--runroot`/`--tmpdir` in a temp dir, the
//! `vfs` driver, no events, no cgroups needed: nothing runs a container), pushed with
//! `--format v2s2` and `--format oci`, removed, and pulled back by tag and by digest. The
//! digests podman reports must be the ones berth serves, with the media type of the format
//! asked for, and every blob must be there. What podman still writes outside the temp dir is
//! containers/image's blob-info cache (`/var/lib/containers/cache` for root), which these
//! flags do not move.
//!
//! Skipped (with the reason) when podman or umoci is missing or podman cannot start, unless
//! `BERTH_REQUIRE_CLIENT_TOOLS` names them (`scripts/test` does when they are installed): then
//! it fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::images::{Layout, build_image, path_str};
use support::{BerthProcess, Client, CmdOutput, sha256_digest, tools};

/// Bound of any one podman command.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(180);
const DOCKER_V2S2: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Podman over a store of its own in `dir`; the store goes with the temp dir.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        for sub in ["root", "run", "tmp", "var-tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create podman dirs");
        }
        Podman {
            dir: dir.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .args(args)
            // Large blobs are staged under TMPDIR (/var/tmp by default).
            .env("TMPDIR", self.dir.join("var-tmp"));
        cmd
    }

    fn must(&self, args: &[&str]) -> CmdOutput {
        support::must_succeed(&mut self.command(args), PODMAN_TIMEOUT)
    }

    /// Whether podman starts over this store (`Err`: why not).
    fn probe(&self) -> Result<(), String> {
        tools::installed("podman")?;
        tools::succeeds(&mut self.command(&["info", "--format", "{{.Store.GraphDriverName}}"]))
    }

    /// `podman image inspect` of one image, as JSON.
    fn inspect(&self, reference: &str) -> Value {
        let out = self.must(&["image", "inspect", reference]);
        let v: Value = serde_json::from_slice(&out.stdout).expect("inspect prints JSON");
        v[0].clone()
    }

    /// Pushes `src` to `dest` in `format`; returns the manifest digest podman reports.
    fn push(&self, src: &str, dest: &str, format: &str) -> String {
        let digest_file = self.dir.join(format!("digest-{format}"));
        self.must(&[
            "push",
            "--tls-verify=false",
            "--format",
            format,
            "--digestfile",
            path_str(&digest_file),
            src,
            &format!("docker://{dest}"),
        ]);
        std::fs::read_to_string(&digest_file)
            .expect("podman wrote the digest file")
            .trim()
            .to_string()
    }
}

/// Checks that berth serves `repo:tag` with `digest` and `media_type`, and every blob of it;
/// returns the manifest.
fn check_served(client: &Client, repo: &str, tag: &str, digest: &str, media_type: &str) -> Value {
    let r = client.get_manifest(repo, tag).expect("GET manifest");
    assert_eq!(r.status, 200, "{repo}:{tag}: {}", r.text());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest),
        "{repo}:{tag}"
    );
    assert_eq!(sha256_digest(&r.body), digest, "{repo}:{tag} bytes");
    assert_eq!(r.header("content-type"), Some(media_type), "{repo}:{tag}");
    let m = r.json();
    // podman leaves the (optional) `mediaType` out of OCI manifests: berth took the type from
    // the PUT's Content-Type.
    assert!(
        m["mediaType"].is_null() || m["mediaType"] == media_type,
        "{repo}:{tag}: {m}"
    );
    let mut blobs = vec![&m["config"]];
    blobs.extend(m["layers"].as_array().expect("layers"));
    assert_eq!(blobs.len(), 3, "config and two layers: {m}");
    for d in blobs {
        let digest = d["digest"].as_str().expect("digest");
        let b = client.get_blob(repo, digest).expect("GET blob");
        assert_eq!(b.status, 200, "{repo}: blob {digest}");
        assert_eq!(sha256_digest(&b.body), digest, "{repo}: blob {digest}");
        assert_eq!(d["size"].as_u64(), Some(b.body.len() as u64), "{digest}");
    }
    m
}

#[test]
fn podman_push_v2s2_and_oci_rmi_pull_by_tag_and_digest() {
    let test = "podman_push_v2s2_and_oci_rmi_pull_by_tag_and_digest";
    let tmp = tempfile::tempdir().unwrap();
    let podman = Podman::new(&tmp.path().join("podman"));
    if !tools::ready(
        test,
        &[
            ("podman", podman.probe()),
            ("umoci", tools::installed("umoci")),
        ],
    ) {
        return;
    }
    let started = Instant::now();
    let layout = Layout::at(tmp.path().join("layout"));
    build_image(tmp.path(), &layout, "v1", &[256 * 1024, 64 * 1024]);

    // Into podman's store: `podman load` of the layout as an OCI archive.
    let archive = tmp.path().join("image.tar");
    support::must_run(
        "tar",
        &["-C", path_str(&layout.dir), "-cf", path_str(&archive), "."],
        Duration::from_secs(60),
    );
    let out = podman.must(&["load", "--input", path_str(&archive)]);
    let loaded = out
        .stdout_text()
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: ").map(str::to_string))
        .unwrap_or_else(|| panic!("podman load named no image:\n{}", out.stdout_text()));
    let id = podman.inspect(&loaded)["Id"]
        .as_str()
        .expect("Id")
        .to_string();
    let local = podman.inspect(&id);
    assert_eq!(local["RootFS"]["Layers"].as_array().map(Vec::len), Some(2));

    let berth = BerthProcess::start(&tmp.path().join("data"));
    let client = Client::new(&berth.base_url());
    let host = berth.host_port();

    let docker_ref = format!("{host}/pod/docker:v1");
    let oci_ref = format!("{host}/pod/oci:v1");
    let docker_digest = podman.push(&id, &docker_ref, "v2s2");
    let oci_digest = podman.push(&id, &oci_ref, "oci");
    assert_ne!(docker_digest, oci_digest, "two formats, two manifests");
    let docker_m = check_served(&client, "pod/docker", "v1", &docker_digest, DOCKER_V2S2);
    let oci_m = check_served(&client, "pod/oci", "v1", &oci_digest, support::OCI_MANIFEST);

    // Forget everything locally, then pull back: by tag (v2s2) and by digest (OCI).
    podman.must(&["rmi", "--all", "--force"]);
    let listed = podman.must(&["images", "--quiet"]).stdout_text();
    assert!(listed.trim().is_empty(), "images left: {listed}");

    podman.must(&["pull", "--tls-verify=false", &docker_ref]);
    let pulled = podman.inspect(&docker_ref);
    assert_eq!(pulled["Digest"], docker_digest.as_str(), "{pulled}");
    assert_eq!(
        format!("sha256:{}", pulled["Id"].as_str().expect("Id")),
        docker_m["config"]["digest"]
            .as_str()
            .expect("config digest"),
        "the image id is the config digest berth served"
    );

    // Both formats carry the same config, so the OCI pull would find this image already
    // there: remove it first.
    podman.must(&["rmi", "--all", "--force"]);
    let by_digest = format!("{host}/pod/oci@{oci_digest}");
    podman.must(&["pull", "--tls-verify=false", &by_digest]);
    let pulled = podman.inspect(&by_digest);
    assert_eq!(pulled["Digest"], oci_digest.as_str(), "{pulled}");
    assert_eq!(
        format!("sha256:{}", pulled["Id"].as_str().expect("Id")),
        oci_m["config"]["digest"].as_str().expect("config digest"),
    );
    assert_eq!(
        pulled["RootFS"]["Layers"], local["RootFS"]["Layers"],
        "the layers' contents (diff ids) survived the round trip"
    );

    podman.must(&["rmi", "--all", "--force"]);
    eprintln!("{test}: ok in {:?}", started.elapsed());
}

/// With auth on (ADR 019): `podman login` (into an auth file of the test's own), pull and
/// push through the token flow, `podman logout`; without credentials podman is refused and
/// nothing is written.
#[test]
fn podman_login_pull_push_logout_with_credentials() {
    let test = "podman_login_pull_push_logout_with_credentials";
    let tmp = tempfile::tempdir().unwrap();
    let podman = Podman::new(&tmp.path().join("podman"));
    if !tools::ready(
        test,
        &[
            ("podman", podman.probe()),
            ("skopeo", tools::installed("skopeo")),
            ("umoci", tools::installed("umoci")),
        ],
    ) {
        return;
    }
    let berth = support::auth_registry_with_image(tmp.path(), "pod/auth");
    let host = berth.host_port();
    let authfile = tmp.path().join("auth.json");
    let authfile = path_str(&authfile);
    let src = format!("{host}/pod/auth:v1");
    let refused = |args: &[&str]| {
        let out = support::run_cmd(&mut podman.command(args), PODMAN_TIMEOUT).unwrap();
        assert!(!out.status.success(), "podman {args:?} succeeded");
    };
    refused(&["pull", "--tls-verify=false", "--authfile", authfile, &src]);
    refused(&[
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "-u",
        "admin",
        "-p",
        "wrong-password",
        &host,
    ]);
    podman.must(&[
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "-u",
        "admin",
        "-p",
        support::ADMIN_PASSWORD,
        &host,
    ]);
    podman.must(&["pull", "--tls-verify=false", "--authfile", authfile, &src]);
    let dest = format!("{host}/pod/copy:v1");
    podman.must(&[
        "push",
        "--tls-verify=false",
        "--authfile",
        authfile,
        &src,
        &format!("docker://{dest}"),
    ]);
    assert_eq!(support::admin_catalog(&berth), vec!["pod/auth", "pod/copy"]);
    podman.must(&["logout", "--authfile", authfile, &host]);
    refused(&[
        "push",
        "--tls-verify=false",
        "--authfile",
        authfile,
        &src,
        &format!("docker://{host}/pod/third:v1"),
    ]);
    assert_eq!(support::admin_catalog(&berth), vec!["pod/auth", "pod/copy"]);
}
