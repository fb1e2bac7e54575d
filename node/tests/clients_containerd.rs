//! Tier 4: containerd (through its `ctr` client) pulls from and pushes to real `berth serve`
//! processes over real sockets — the resolver, fetcher and pusher Kubernetes nodes use.
//!
//! An image built offline with umoci is pushed to berth with skopeo; containerd pulls it
//! (and unpacks it into a snapshot), pushes it under another name to the same berth (its pusher
//! mounts the blobs across repositories) and to a second, empty berth (every blob uploaded),
//! and pulls it back by digest. Digests must match throughout.
//!
//! Runs when `ctr` is installed and a containerd daemon answers on one of the usual sockets
//! (the Docker engine's own containerd counts; `BERTH_TEST_CONTAINERD_SOCK` names another);
//! otherwise it prints why and passes, unless `BERTH_REQUIRE_CLIENT_TOOLS` names containerd
//! (then it fails). Everything happens in a containerd namespace of its own, removed at the end.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::images::{Layout, build_image, skopeo};
use support::tools;
use support::{BerthProcess, Client, run_cmd};

/// Bound of any one `ctr` command.
const CTR_TIMEOUT: Duration = Duration::from_secs(120);
/// Sockets tried when `BERTH_TEST_CONTAINERD_SOCK` is not set.
const SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/docker/containerd/containerd.sock",
];

/// `ctr` bound to one daemon and one namespace.
struct Ctr {
    socket: String,
    namespace: String,
}

impl Ctr {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.args(["--address", &self.socket, "--namespace", &self.namespace])
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<support::CmdOutput, String> {
        run_cmd(&mut self.command(args), CTR_TIMEOUT)
    }

    fn must(&self, args: &[&str]) -> String {
        support::must_succeed(&mut self.command(args), CTR_TIMEOUT).stdout_text()
    }

    /// The digest containerd recorded for an image reference.
    fn image_digest(&self, reference: &str) -> String {
        berth_testkit::process::ctr_image_digest(&self.must(&["images", "ls"]), reference)
    }

    fn remove_all_images(&self) {
        if let Ok(out) = self.run(&["images", "ls", "--quiet"]) {
            for r in out.stdout_text().lines().filter(|l| !l.is_empty()) {
                let _ = self.run(&["images", "rm", r]);
            }
        }
    }
}

impl Drop for Ctr {
    /// Removes the test's images and, once containerd's garbage collector has emptied it, the
    /// namespace (bounded; a namespace left behind holds nothing but is reported).
    fn drop(&mut self) {
        self.remove_all_images();
        let deadline = Instant::now() + Duration::from_secs(20);
        for _ in 0..100 {
            let gone = run_cmd(
                Command::new("ctr").args([
                    "--address",
                    &self.socket,
                    "namespaces",
                    "rm",
                    &self.namespace,
                ]),
                CTR_TIMEOUT,
            )
            .is_ok_and(|o| o.status.success());
            if gone || Instant::now() > deadline {
                if !gone {
                    eprintln!(
                        "containerd namespace {} could not be removed",
                        self.namespace
                    );
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The socket of a containerd daemon that answers, or why there is none.
fn containerd_socket() -> Result<String, String> {
    tools::installed("ctr")?;
    let candidates: Vec<String> = match std::env::var("BERTH_TEST_CONTAINERD_SOCK") {
        Ok(s) => vec![s],
        Err(_) => SOCKETS.iter().map(|s| s.to_string()).collect(),
    };
    for socket in &candidates {
        if !std::path::Path::new(socket).exists() {
            continue;
        }
        let answered = run_cmd(
            Command::new("ctr").args(["--address", socket, "--timeout", "5s", "version"]),
            Duration::from_secs(20),
        )
        .is_ok_and(|o| o.status.success() && o.stdout_text().contains("Server:"));
        if answered {
            return Ok(socket.clone());
        }
    }
    Err(format!("no containerd answers on {candidates:?}"))
}

/// The manifest digest berth serves for `repo:reference`.
fn served_digest(client: &Client, repo: &str, reference: &str) -> String {
    let r = client
        .get_manifest(repo, reference)
        .unwrap_or_else(|e| panic!("GET manifest {repo}:{reference}: {e}"));
    assert_eq!(
        r.status,
        200,
        "GET manifest {repo}:{reference}: {}",
        r.text()
    );
    r.header("docker-content-digest")
        .expect("Docker-Content-Digest")
        .to_string()
}

/// Config and layer digests of the image manifest berth serves for `repo@digest`.
fn blob_digests(client: &Client, repo: &str, digest: &str) -> Vec<String> {
    let m = client
        .get_manifest(repo, digest)
        .expect("GET manifest")
        .json();
    let mut all = vec![m["config"]["digest"].as_str().expect("config").to_string()];
    for l in m["layers"].as_array().expect("layers") {
        all.push(l["digest"].as_str().expect("layer digest").to_string());
    }
    all
}

/// Tags the local image `src` as `host/repo:tag`, has containerd push it, and checks that the
/// registry serves the same manifest digest and every blob of it, byte for byte.
fn push_copy(
    ctr: &Ctr,
    src: &str,
    client: &Client,
    host: &str,
    repo: &str,
    tag: &str,
    digest: &str,
) {
    let target = format!("{host}/{repo}:{tag}");
    ctr.must(&["images", "tag", src, &target]);
    ctr.must(&["images", "push", "--plain-http", &target]);
    assert_eq!(served_digest(client, repo, tag), digest, "{target}");
    for d in blob_digests(client, repo, digest) {
        let r = client.get_blob(repo, &d).expect("GET blob");
        assert_eq!(
            r.status, 200,
            "{d} missing in {repo} after containerd's push"
        );
        assert_eq!(support::sha256_digest(&r.body), d, "{d} changed on the way");
    }
}

#[test]
fn containerd_pull_unpack_push_mount_and_upload_pull_by_digest() {
    let test = "containerd_pull_unpack_push_mount_and_upload_pull_by_digest";
    let socket = containerd_socket();
    let probes = [
        ("containerd", socket.clone().map(drop)),
        ("skopeo", tools::installed("skopeo")),
        ("umoci", tools::installed("umoci")),
    ];
    if !tools::ready(test, &probes) {
        return;
    }
    let socket = socket.expect("probed above");
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::at(tmp.path().join("layout"));
    build_image(tmp.path(), &layout, "v1", &[300 * 1024, 64 * 1024]);

    let first = BerthProcess::start(&tmp.path().join("data-1"));
    let second = BerthProcess::start(&tmp.path().join("data-2"));
    let (c1, c2) = (
        Client::new(&first.base_url()),
        Client::new(&second.base_url()),
    );
    let (h1, h2) = (first.host_port(), second.host_port());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &layout.oci("v1"),
        &format!("docker://{h1}/ctr/src:v1"),
    ]);
    let pushed = served_digest(&c1, "ctr/src", "v1");

    let ctr = Ctr {
        socket,
        namespace: format!(
            "berth-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ),
    };

    // Pull by tag, unpacked into a snapshot for this machine's platform.
    let src = format!("{h1}/ctr/src:v1");
    let out = ctr.must(&["images", "pull", "--plain-http", &src]);
    assert!(out.contains("unpacking"), "the pull did not unpack:\n{out}");
    assert_eq!(ctr.image_digest(&src), pushed);
    assert!(
        ctr.must(&["snapshots", "ls"]).contains("Committed"),
        "no committed snapshot after the unpack"
    );

    // Push under another repository of the same registry: the blobs are mounted from ctr/src.
    push_copy(&ctr, &src, &c1, &h1, "ctr/dst", "v2", &pushed);
    // Push to the empty second registry: every blob is uploaded.
    push_copy(&ctr, &src, &c2, &h2, "ctr/far", "v3", &pushed);

    // Forget everything locally and pull by digest from the second registry.
    ctr.remove_all_images();
    let by_digest = format!("{h2}/ctr/far@{pushed}");
    ctr.must(&["images", "pull", "--plain-http", &by_digest]);
    assert_eq!(ctr.image_digest(&by_digest), pushed);

    drop(ctr);
    eprintln!("{test}: ok in {:?}", started.elapsed());
}

/// With auth on (ADR 019): `ctr --user` pulls and pushes through the token flow; without
/// credentials, or with wrong ones, containerd is refused and nothing is written.
#[test]
fn containerd_pulls_and_pushes_with_user_credentials() {
    let test = "containerd_pulls_and_pushes_with_user_credentials";
    let socket = containerd_socket();
    let probes = [
        ("containerd", socket.clone().map(drop)),
        ("skopeo", tools::installed("skopeo")),
        ("umoci", tools::installed("umoci")),
    ];
    if !tools::ready(test, &probes) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let berth = support::auth_registry_with_image(tmp.path(), "ctr/auth");
    let host = berth.host_port();
    let user = format!("admin:{}", support::ADMIN_PASSWORD);
    let ctr = Ctr {
        socket: socket.expect("probed above"),
        namespace: format!(
            "berth-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ),
    };
    let src = format!("{host}/ctr/auth:v1");
    let out = ctr.run(&["images", "pull", "--plain-http", &src]).unwrap();
    assert!(
        !out.status.success(),
        "a pull without credentials succeeded"
    );
    let out = ctr
        .run(&[
            "images",
            "pull",
            "--plain-http",
            "--user",
            "admin:wrong-password",
            &src,
        ])
        .unwrap();
    assert!(
        !out.status.success(),
        "a pull with a wrong password succeeded"
    );
    ctr.must(&["images", "pull", "--plain-http", "--user", &user, &src]);
    let target = format!("{host}/ctr/copy:v1");
    ctr.must(&["images", "tag", &src, &target]);
    let out = ctr
        .run(&["images", "push", "--plain-http", &target])
        .unwrap();
    assert!(
        !out.status.success(),
        "a push without credentials succeeded"
    );
    assert_eq!(support::admin_catalog(&berth), vec!["ctr/auth"]);
    ctr.must(&["images", "push", "--plain-http", "--user", &user, &target]);
    assert_eq!(support::admin_catalog(&berth), vec!["ctr/auth", "ctr/copy"]);
}
