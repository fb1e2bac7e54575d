//! The three-region compose cluster of `deploy/compose` under test: brought up with the
//! operator's own `scripts/compose up` (packaging the `BERTH_BIN` that `scripts/test` built),
//! driven through its published ports with the harness's OCI client, `clusterctl` and the
//! Docker engine's own `docker push` / `docker pull`, and hurt with `docker kill`,
//! `docker network disconnect` of a region and `tc` bandwidth limits entered with `nsenter`.
//!
//! Layout (deploy/compose/docker-compose.yml): node 1 r1 voter, node 2 r2 voter, node 3 r3
//! voter, node 4 r1 learner; each region its own network, every node also on `wan`, the only
//! path between regions.
//!
//! Isolation: every [`Compose`] is its own docker-compose project, named
//! `berthct<pid>` after the test process, on free ports chosen afresh (never 500N/700N), so it
//! cannot collide with a user's `scripts/compose up` or another test. Dropping it runs
//! `scripts/compose down` (containers, networks, volumes) and removes the images the test made
//! in the engine; on a panic it first prints each node's log tail. A project left behind by a
//! test process that was killed (its pid is gone) is taken down by the next [`Compose::up`].
//!
//! The image [`TEST_IMAGE`] stays in the engine between runs: rebuilding it from an unchanged
//! binary is then a cache hit (under a second).
//!
//! Availability: [`ready`] decides whether a test runs, as the node's real-client tests do: it
//! runs when the Docker engine answers; otherwise it prints `SKIPPED …` and passes, unless
//! `BERTH_REQUIRE_CLIENT_TOOLS` names docker (`1`, `all`, or a list with `docker`; `scripts/test`
//! sets it on a machine with an engine), and then it fails.
//!
//! A scenario is a few calls: `let c = Compose::up();` (or `Compose::up_with(&[("BERTH_…",
//! "…")])` for settings on every node), then `let img = c.docker_image("repo", "1", bytes)`,
//! `let digest = c.docker_push(1, &img)`, `c.ctl(1, &["…"], timeout).assert_success()`,
//! `c.kill(1)`, `c.docker_pull_same(2, &img, Some(&digest))`, `c.cut_off_region("r3")`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use berth_testkit::process::{CmdOutput, run_cmd};
use rand::RngCore;

use crate::clusterctl::{self, CtlOutput};
use crate::oci::Client;
use crate::wait::wait_until;

/// The node ids of the compose cluster.
pub const NODES: [u64; 4] = [1, 2, 3, 4];
/// The voters, once `scripts/compose up` has promoted them.
pub const VOTERS: [u64; 3] = [1, 2, 3];
/// Prefix of the test projects' names (`berthct<pid>`).
pub const PROJECT_PREFIX: &str = "berthct";
/// Tag of the image the tests package `BERTH_BIN` as.
pub const TEST_IMAGE: &str = "berth-compose-test:latest";
/// Bound of `scripts/compose up` (image build, start, readiness, promotions).
pub const UP_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound of `scripts/compose down`.
pub const DOWN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of any one docker command (a push or pull of a few MiB included).
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a (re)started node may take to answer `/readyz` 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The environment variable naming the clients that must be available (node/tests' tools).
const REQUIRE_VAR: &str = "BERTH_REQUIRE_CLIENT_TOOLS";

/// The region of a node of the compose cluster.
pub fn region_of(id: u64) -> &'static str {
    match id {
        1 | 4 => "r1",
        2 => "r2",
        3 => "r3",
        _ => panic!("the compose cluster has no node {id}"),
    }
}

/// The nodes of a region.
pub fn nodes_in(region: &str) -> Vec<u64> {
    NODES
        .into_iter()
        .filter(|id| region_of(*id) == region)
        .collect()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cluster-tests sits in the workspace")
        .to_path_buf()
}

/// Whether `REQUIRE_VAR`'s value requires docker: `1`, `all`, or a list naming docker.
fn docker_required(value: Option<&str>) -> bool {
    let value = value.unwrap_or("").trim();
    value == "1" || value == "all" || value.split([',', ' ']).any(|n| n == "docker")
}

/// Whether `test` runs: every probe (`(what, Ok | Err(why unavailable))`) is `Ok`; otherwise
/// prints `SKIPPED <test>: <why>` and returns false, or panics when docker is required.
fn decide(test: &str, probes: &[(&str, Result<(), String>)]) -> bool {
    let failed: Vec<String> = probes
        .iter()
        .filter_map(|(what, p)| p.as_ref().err().map(|why| format!("{what}: {why}")))
        .collect();
    if failed.is_empty() {
        return true;
    }
    let value = std::env::var(REQUIRE_VAR).ok();
    if docker_required(value.as_deref()) {
        panic!(
            "{test}: required by {REQUIRE_VAR}={} but unavailable: {}",
            value.unwrap_or_default(),
            failed.join("; ")
        );
    }
    eprintln!(
        "SKIPPED {test}: {} (set {REQUIRE_VAR}=docker to fail instead)",
        failed.join("; ")
    );
    false
}

fn engine_probe() -> Result<(), String> {
    let out = run_cmd(
        Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("the Docker engine does not answer: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the Docker engine does not answer: `docker info` failed with {}: {}",
            out.status,
            out.stderr_text().trim()
        ))
    }
}

/// Whether a compose test runs (see the module doc): the Docker engine answers.
pub fn ready(test: &str) -> bool {
    decide(test, &[("docker", engine_probe())])
}

/// As [`ready`], for a test that also shapes traffic: it needs root, or passwordless sudo,
/// for `nsenter` into a container and `tc` on the host, and installs `iproute2` with apt-get
/// when `tc` is missing.
pub fn ready_to_shape(test: &str) -> bool {
    let engine = engine_probe();
    let root = privilege_probe();
    let tools = if root.is_ok() {
        ensure_shaping_tools()
    } else {
        Ok(())
    };
    decide(
        test,
        &[("docker", engine), ("root", root), ("tc/nsenter", tools)],
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program` run as root: directly when the test runs as root, else through `sudo -n`.
fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", program]);
        c
    }
}

fn privilege_probe() -> Result<(), String> {
    if is_root() {
        return Ok(());
    }
    match run_cmd(
        Command::new("sudo").args(["-n", "true"]),
        Duration::from_secs(10),
    ) {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("nsenter and tc need root, and `sudo -n true` fails".to_string()),
    }
}

fn ensure_shaping_tools() -> Result<(), String> {
    let has = |p: &str| {
        run_cmd(Command::new(p).arg("-V"), Duration::from_secs(10))
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !has("nsenter") {
        return Err("nsenter (util-linux) is not installed".to_string());
    }
    if has("tc") {
        return Ok(());
    }
    eprintln!("compose: tc is missing; installing iproute2 with apt-get");
    for args in [
        vec!["update", "-qq"],
        vec![
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "iproute2",
        ],
    ] {
        let out = run_cmd(
            privileged("apt-get")
                .args(&args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            Duration::from_secs(300),
        )?;
        if !out.status.success() {
            return Err(format!(
                "apt-get {} failed: {}",
                args.join(" "),
                out.stderr_text()
            ));
        }
    }
    if has("tc") {
        Ok(())
    } else {
        Err("tc is still missing after installing iproute2".to_string())
    }
}

fn run(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    run_cmd(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

fn must(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    berth_testkit::process::must_succeed(cmd, timeout)
}

fn docker(args: &[&str]) -> CmdOutput {
    must(Command::new("docker").args(args), DOCKER_TIMEOUT)
}

/// A local Docker image made by the test (from a random tarball with `docker import`).
#[derive(Debug, Clone)]
pub struct DockerImage {
    /// `repo:tag` the image is pushed and pulled as (at any node's registry).
    pub name: String,
    /// The engine's image id (the config's digest): equal after a pull means the same image.
    pub id: String,
}

/// A `tbf` qdisc the test put on one end of a node's `wan` link.
#[derive(Debug, Clone)]
pub struct Shaper {
    /// The node whose link it shapes.
    pub node: u64,
    /// `true`: on the host's end of the link (traffic into the node); `false`: inside the
    /// node's network namespace (traffic out of it).
    pub inbound: bool,
    /// The interface (in the node's namespace when `!inbound`).
    pub dev: String,
    /// The container's pid, for `nsenter` (used when `!inbound`).
    pid: String,
}

/// A running compose cluster; dropping it takes everything down.
pub struct Compose {
    project: String,
    http_ports: [u16; 4],
    cluster_ports: [u16; 4],
    /// Image ids made or pulled by the test, removed on drop.
    images: Mutex<Vec<String>>,
    tmp: tempfile::TempDir,
}

impl Compose {
    /// Packages `BERTH_BIN` and runs `scripts/compose up` in a project of this test's own on
    /// fresh ports; returns once node 1..3 are voters with a leader and node 4 a learner.
    pub fn up() -> Compose {
        Compose::up_with(&[])
    }

    /// As [`Compose::up`], every node also getting the `BERTH_…` settings `env` (e.g.
    /// `("BERTH_DURABILITY__MIN_COPIES", "2")`), through `COMPOSE_BERTH_ENV_FILE`.
    pub fn up_with(env: &[(&str, &str)]) -> Compose {
        let bin = crate::node::berth_bin();
        let ctl = clusterctl::clusterctl_bin();
        remove_stale_projects();
        let ports = host_ports(8);
        let c = Compose {
            project: format!("{PROJECT_PREFIX}{}", std::process::id()),
            http_ports: [ports[0], ports[1], ports[2], ports[3]],
            cluster_ports: [ports[4], ports[5], ports[6], ports[7]],
            images: Mutex::new(Vec::new()),
            tmp: tempfile::tempdir().expect("failed to create a temporary directory"),
        };
        let env_file = c.tmp.path().join("berth.env");
        let lines: String = env
            .iter()
            .map(|(k, v)| {
                assert!(k.starts_with("BERTH_"), "{k} is not a berth setting");
                format!("{k}={v}\n")
            })
            .collect();
        std::fs::write(&env_file, lines).expect("failed to write the env file");
        let mut cmd = c.script("up");
        cmd.env("COMPOSE_BERTH_BIN", &bin)
            .env("CLUSTERCTL_BIN", &ctl)
            .env("COMPOSE_BERTH_IMAGE", TEST_IMAGE);
        let out = run(&mut cmd, UP_TIMEOUT);
        assert!(
            out.status.success(),
            "`scripts/compose up` (project {}) failed with {}:\n{}\n{}",
            c.project,
            out.status,
            out.stdout_text(),
            out.stderr_text()
        );
        eprintln!(
            "compose: project {} up; registries {:?}, cluster endpoints {:?}",
            c.project, c.http_ports, c.cluster_ports
        );
        c
    }

    /// `scripts/compose <verb>` with this project's name and ports in its environment.
    fn script(&self, verb: &str) -> Command {
        let mut cmd = Command::new(repo_root().join("scripts/compose"));
        cmd.arg(verb)
            .current_dir(repo_root())
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .env("COMPOSE_BERTH_IMAGE", TEST_IMAGE)
            .env("COMPOSE_BERTH_ENV_FILE", self.tmp.path().join("berth.env"));
        for id in NODES {
            cmd.env(
                format!("COMPOSE_BERTH_HTTP_PORT_{id}"),
                self.http_port(id).to_string(),
            )
            .env(
                format!("COMPOSE_BERTH_CLUSTER_PORT_{id}"),
                self.cluster_port(id).to_string(),
            );
        }
        cmd
    }

    /// The docker-compose project's name.
    pub fn project(&self) -> &str {
        &self.project
    }

    fn index(id: u64) -> usize {
        assert!(NODES.contains(&id), "the compose cluster has no node {id}");
        id as usize - 1
    }

    /// Host port of node `id`'s registry.
    pub fn http_port(&self, id: u64) -> u16 {
        self.http_ports[Self::index(id)]
    }

    /// Host port of node `id`'s cluster endpoint.
    pub fn cluster_port(&self, id: u64) -> u16 {
        self.cluster_ports[Self::index(id)]
    }

    /// `127.0.0.1:<port>`: node `id`'s registry as docker names it.
    pub fn registry(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.http_port(id))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self, id: u64) -> String {
        format!("http://{}", self.registry(id))
    }

    /// `127.0.0.1:<port>` of node `id`'s cluster endpoint (for clusterctl).
    pub fn endpoint(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.cluster_port(id))
    }

    /// The harness's OCI client of node `id`'s registry.
    pub fn client(&self, id: u64) -> Client {
        Client::new(&self.base_url(id), &format!("compose node {id}"))
    }

    /// Runs `clusterctl --endpoint <node id> <args…>`, bounded by `timeout`.
    pub fn ctl(&self, id: u64, args: &[&str], timeout: Duration) -> CtlOutput {
        clusterctl::run(&self.endpoint(id), args, timeout)
    }

    /// `clusterctl status --json` through node `id`.
    pub fn status(&self, id: u64) -> Result<serde_json::Value, String> {
        let out = self.ctl(
            id,
            &["--json", "--timeout", "10", "status"],
            Duration::from_secs(20),
        );
        if !out.status.success() {
            return Err(format!(
                "clusterctl status through node {id}: {}",
                out.stderr.trim()
            ));
        }
        serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.stdout))
    }

    /// Waits until node `via` reports a leader among `among` (every member it can reach
    /// agreeing is not required) and returns it.
    pub fn wait_for_leader_among(&self, via: u64, among: &[u64], timeout: Duration) -> u64 {
        wait_until(
            &format!("a leader among {among:?} (asking node {via})"),
            timeout,
            || {
                let s = self.status(via)?;
                let leader = s["leader_id"].as_u64().unwrap_or(0);
                if among.contains(&leader) {
                    Ok(leader)
                } else {
                    Err(format!("leader_id {leader}"))
                }
            },
        )
    }

    /// The current leader, asking node 1 or, when it does not answer, another.
    pub fn leader(&self) -> u64 {
        wait_until("the leader", READY_TIMEOUT, || {
            let mut last = String::new();
            for id in NODES {
                match self.status(id) {
                    Ok(s) if s["leader_id"].as_u64().unwrap_or(0) != 0 => {
                        return Ok(s["leader_id"].as_u64().unwrap_or(0));
                    }
                    Ok(s) => last = format!("node {id}: no leader: {s}"),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
    }

    /// `GET /readyz` at node `id`: `Ok` on 200, else the status and body.
    pub fn try_ready(&self, id: u64) -> Result<(), String> {
        let r = self.client(id).get("/readyz")?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text().trim()))
        }
    }

    /// Waits until node `id` answers `/readyz` 200.
    pub fn wait_ready(&self, id: u64, timeout: Duration) {
        wait_until(&format!("node {id} ready"), timeout, || self.try_ready(id));
    }

    /// Waits until node `id` lists `tag` in `repo` (it has applied the log that far).
    pub fn wait_for_tag(&self, id: u64, repo: &str, tag: &str, timeout: Duration) {
        wait_until(&format!("node {id} to list {repo}:{tag}"), timeout, || {
            let tags = self.client(id).try_tags(repo)?;
            if tags.iter().any(|t| t == tag) {
                Ok(())
            } else {
                Err(format!("tags {tags:?}"))
            }
        });
    }

    /// The container of node `id` (its name).
    pub fn container(&self, id: u64) -> String {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service=node{id}"),
            "--format",
            "{{.Names}}",
        ]);
        let names: Vec<String> = out.stdout_text().lines().map(str::to_string).collect();
        assert_eq!(
            names.len(),
            1,
            "containers of node {id} in project {}: {names:?}",
            self.project
        );
        names[0].clone()
    }

    /// `docker kill` node `id` (SIGKILL: no shutdown, like a crash).
    pub fn kill(&self, id: u64) {
        docker(&["kill", &self.container(id)]);
    }

    /// `docker start` node `id` again (same container, same data volume), without waiting
    /// for it to be ready.
    pub fn start(&self, id: u64) {
        docker(&["start", &self.container(id)]);
    }

    /// The project's network between regions.
    pub fn wan(&self) -> String {
        format!("{}_wan", self.project)
    }

    /// Cuts a region off: disconnects each of its nodes from `wan` (its own network stays).
    pub fn cut_off_region(&self, region: &str) {
        for id in nodes_in(region) {
            docker(&["network", "disconnect", &self.wan(), &self.container(id)]);
        }
    }

    /// Connects a cut-off region's nodes to `wan` again, with the service name as their alias
    /// (the name peers dial), as docker-compose connected them. (Docker 20.10 keeps a
    /// disconnected endpoint's aliases anyway; naming it does not depend on that.)
    pub fn reconnect_region(&self, region: &str) {
        for id in nodes_in(region) {
            docker(&[
                "network",
                "connect",
                "--alias",
                &format!("node{id}"),
                &self.wan(),
                &self.container(id),
            ]);
        }
    }

    /// Limits the region's link to the other regions to `rate` (a `tc` rate such as `16mbit`)
    /// both ways: a `tbf` qdisc on each of its nodes' `wan` interface, entered with
    /// `nsenter -t <pid> -n` (traffic out of the node), and one on the host's end of the same
    /// veth pair (traffic into the node). Undone when the containers go.
    pub fn limit_region_bandwidth(&self, region: &str, rate: &str) -> Vec<Shaper> {
        let mut shapers = Vec::new();
        for id in nodes_in(region) {
            let container = self.container(id);
            let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &container])
                .stdout_text()
                .trim()
                .to_string();
            let mac = docker(&[
                "inspect",
                "-f",
                &format!(
                    "{{{{(index .NetworkSettings.Networks \"{}\").MacAddress}}}}",
                    self.wan()
                ),
                &container,
            ])
            .stdout_text()
            .trim()
            .to_lowercase();
            assert!(!mac.is_empty(), "node {id} is not on {}", self.wan());
            // "67: eth1@if68: <…> … link/ether 02:42:… brd …": the interface and its peer's
            // index on the host.
            let links = must(
                privileged("nsenter").args(["-t", &pid, "-n", "ip", "-o", "link"]),
                DOCKER_TIMEOUT,
            )
            .stdout_text();
            let line = links
                .lines()
                .find(|l| l.to_lowercase().contains(&mac))
                .unwrap_or_else(|| panic!("no interface with MAC {mac} in node {id}:\n{links}"));
            let name = line.split(": ").nth(1).expect("ip -o link: index: name");
            let (inner, peer) = name
                .split_once("@if")
                .unwrap_or_else(|| panic!("{name:?} is not a veth end"));
            let host_links = must(
                Command::new("ip").args(["-o", "link"]),
                Duration::from_secs(30),
            )
            .stdout_text();
            let host_dev = host_links
                .lines()
                .find_map(|l| {
                    let mut parts = l.split(": ");
                    (parts.next() == Some(peer)).then(|| parts.next().map(str::to_string))
                })
                .flatten()
                .and_then(|n| n.split('@').next().map(str::to_string))
                .unwrap_or_else(|| panic!("no host interface with index {peer}"));
            let tbf = [
                "root", "tbf", "rate", rate, "burst", "32kb", "latency", "500ms",
            ];
            must(
                privileged("nsenter")
                    .args(["-t", &pid, "-n", "tc", "qdisc", "replace", "dev", inner])
                    .args(tbf),
                Duration::from_secs(30),
            );
            must(
                privileged("tc")
                    .args(["qdisc", "replace", "dev", &host_dev])
                    .args(tbf),
                Duration::from_secs(30),
            );
            eprintln!(
                "compose: node {id}'s wan link limited to {rate}: {inner} in its namespace, \
                 {host_dev} on the host"
            );
            shapers.push(Shaper {
                node: id,
                inbound: false,
                dev: inner.to_string(),
                pid: pid.clone(),
            });
            shapers.push(Shaper {
                node: id,
                inbound: true,
                dev: host_dev,
                pid,
            });
        }
        shapers
    }

    /// Bytes a shaper's qdisc has sent so far (`tc -s qdisc show`: "Sent N bytes").
    pub fn shaped_bytes(&self, s: &Shaper) -> u64 {
        let mut cmd = if s.inbound {
            let mut c = privileged("tc");
            c.args(["-s", "qdisc", "show", "dev", &s.dev]);
            c
        } else {
            let mut c = privileged("nsenter");
            c.args([
                "-t", &s.pid, "-n", "tc", "-s", "qdisc", "show", "dev", &s.dev,
            ]);
            c
        };
        let text = must(&mut cmd, Duration::from_secs(30)).stdout_text();
        text.split_whitespace()
            .skip_while(|w| *w != "Sent")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no \"Sent N bytes\" in:\n{text}"))
    }

    /// Makes a local image `repo:tag` from a tarball with `layer_bytes` of random content
    /// (`docker import`), so that no other image shares its layer.
    pub fn docker_image(&self, repo: &str, tag: &str, layer_bytes: usize) -> DockerImage {
        let dir = self
            .tmp
            .path()
            .join(format!("rootfs-{repo}-{tag}").replace('/', "_"));
        std::fs::create_dir_all(&dir).expect("failed to create the rootfs directory");
        let mut data = vec![0u8; layer_bytes];
        rand::rng().fill_bytes(&mut data);
        std::fs::write(dir.join("random.bin"), &data).expect("failed to write the rootfs");
        std::fs::write(dir.join("hello.txt"), format!("{repo}:{tag}\n"))
            .expect("failed to write the rootfs");
        let tarball = dir.with_extension("tar");
        must(
            Command::new("tar")
                .arg("-C")
                .arg(&dir)
                .arg("-cf")
                .arg(&tarball)
                .arg("."),
            Duration::from_secs(60),
        );
        let name = format!("{repo}:{tag}");
        let local = format!("{}/{name}", self.registry(1));
        let id = docker(&["import", tarball.to_str().expect("utf-8 path"), &local])
            .stdout_text()
            .trim()
            .to_string();
        assert!(id.starts_with("sha256:"), "docker import printed {id:?}");
        self.images.lock().unwrap().push(id.clone());
        DockerImage { name, id }
    }

    /// `docker push` of the image to node `id`'s registry; returns the manifest digest docker
    /// reported. Tags the local image for that registry first.
    pub fn docker_push(&self, id: u64, image: &DockerImage) -> String {
        let (reference, out) = self.try_docker_push(id, image, DOCKER_TIMEOUT);
        let out = out.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "`docker push {reference}` failed with {}:\n{}\n{}",
            out.status,
            out.stdout_text(),
            out.stderr_text()
        );
        out.stdout_text()
            .split_whitespace()
            .skip_while(|w| *w != "digest:")
            .nth(1)
            .map(str::to_string)
            .unwrap_or_else(|| {
                panic!(
                    "no digest in `docker push {reference}`:\n{}",
                    out.stdout_text()
                )
            })
    }

    /// `docker push` of the image to node `id`'s registry, whatever its outcome, bounded by
    /// `timeout` (docker retries a refused layer several times, with growing pauses): the
    /// reference pushed, and docker's output (`Err` when it overran and was killed). Tags the
    /// local image for that registry first.
    pub fn try_docker_push(
        &self,
        id: u64,
        image: &DockerImage,
        timeout: Duration,
    ) -> (String, Result<CmdOutput, String>) {
        let reference = format!("{}/{}", self.registry(id), image.name);
        docker(&["tag", &image.id, &reference]);
        let out = run_cmd(Command::new("docker").args(["push", &reference]), timeout);
        (reference, out)
    }

    /// Removes the image from the engine (every tag), so that the next pull downloads every
    /// blob.
    pub fn docker_forget(&self, image: &DockerImage) {
        let out = run(
            Command::new("docker").args(["rmi", "--force", &image.id]),
            DOCKER_TIMEOUT,
        );
        let gone = run(
            Command::new("docker").args(["image", "inspect", &image.id]),
            DOCKER_TIMEOUT,
        );
        assert!(
            !gone.status.success(),
            "image {} is still in the engine after `docker rmi`: {}",
            image.id,
            out.stderr_text()
        );
    }

    /// `docker pull` of the image at node `id`'s registry: `Ok` with nothing else to say, or
    /// `Err` with docker's message.
    pub fn try_docker_pull(&self, id: u64, image: &DockerImage) -> Result<(), String> {
        let reference = format!("{}/{}", self.registry(id), image.name);
        let out = run(
            Command::new("docker").args(["pull", &reference]),
            DOCKER_TIMEOUT,
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`docker pull {reference}` failed with {}: {}",
                out.status,
                out.stderr_text().trim()
            ))
        }
    }

    /// Forgets the image, pulls it at node `id`'s registry (so every blob comes from there)
    /// and checks it is the same image: the engine's image id (the config digest, over the
    /// layers' diff ids) and, when given, the manifest digest docker reports.
    pub fn docker_pull_same(&self, id: u64, image: &DockerImage, manifest_digest: Option<&str>) {
        self.docker_forget(image);
        let reference = format!("{}/{}", self.registry(id), image.name);
        if let Err(e) = self.try_docker_pull(id, image) {
            panic!("{e}");
        }
        let inspect = docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}{{range .RepoDigests}} {{.}}{{end}}",
            &reference,
        ])
        .stdout_text();
        let mut words = inspect.split_whitespace();
        let pulled = words.next().unwrap_or_default();
        assert_eq!(
            pulled, image.id,
            "`docker pull {reference}` gave another image id"
        );
        if let Some(digest) = manifest_digest {
            let want = format!("{}/{}@{digest}", self.registry(id), repo_of(&image.name));
            assert!(
                words.any(|w| w == want),
                "the pulled image's repo digests {inspect:?} lack {want}"
            );
        }
    }

    fn dump_logs(&self) {
        for id in NODES {
            let out = run_cmd(
                Command::new("docker").args([
                    "logs",
                    "--tail",
                    "40",
                    &format!("{}_node{id}_1", self.project),
                ]),
                Duration::from_secs(30),
            );
            match out {
                Ok(o) => eprintln!(
                    "---- node {id} log tail ----\n{}{}\n---- end of node {id} ----",
                    o.stdout_text(),
                    o.stderr_text()
                ),
                Err(e) => eprintln!("---- node {id}: no log: {e}"),
            }
        }
    }
}

/// `n` distinct free loopback ports below Linux's ephemeral range (32768–60999), so that no
/// outgoing connection of another test takes one between this check and docker-compose
/// publishing it.
fn host_ports(n: usize) -> Vec<u16> {
    use rand::Rng;
    let mut ports = Vec::new();
    for _ in 0..10_000 {
        if ports.len() == n {
            break;
        }
        let p = rand::rng().random_range(20_000..32_000);
        if !ports.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            ports.push(p);
        }
    }
    assert_eq!(ports.len(), n, "no {n} free ports in 20000..32000");
    ports
}

fn repo_of(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(repo, _)| repo)
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        match run_cmd(&mut self.script("down"), DOWN_TIMEOUT) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "compose: `scripts/compose down` of {} failed with {}: {}",
                self.project,
                o.status,
                o.stderr_text()
            ),
            Err(e) => eprintln!("compose: `scripts/compose down` of {}: {e}", self.project),
        }
        for id in self.images.lock().unwrap().drain(..) {
            let _ = run_cmd(
                Command::new("docker").args(["rmi", "--force", &id]),
                DOCKER_TIMEOUT,
            );
        }
    }
}

/// Takes down test projects whose test process is gone (killed before its drop ran).
fn remove_stale_projects() {
    let out = run(
        Command::new("docker").args([
            "ps",
            "-a",
            "--filter",
            "label=com.docker.compose.project",
            "--format",
            "{{.Label \"com.docker.compose.project\"}}",
        ]),
        DOCKER_TIMEOUT,
    );
    let mut projects: Vec<String> = out
        .stdout_text()
        .lines()
        .filter(|p| p.starts_with(PROJECT_PREFIX))
        .map(str::to_string)
        .collect();
    projects.sort();
    projects.dedup();
    for project in projects {
        let Ok(pid) = project[PROJECT_PREFIX.len()..].parse::<i32>() else {
            continue;
        };
        // Signal 0: does the process exist? (EPERM means it does, under another user.)
        // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if alive {
            continue;
        }
        eprintln!("compose: taking down {project}, left behind by a test process that is gone");
        let _ = run_cmd(
            Command::new("docker-compose")
                .current_dir(repo_root())
                .args([
                    "-p",
                    &project,
                    "-f",
                    "deploy/compose/docker-compose.yml",
                    "down",
                    "--volumes",
                    "--remove-orphans",
                    "--timeout",
                    "5",
                ]),
            DOWN_TIMEOUT,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_of_the_layout() {
        assert_eq!(nodes_in("r1"), vec![1, 4]);
        assert_eq!(nodes_in("r2"), vec![2]);
        assert_eq!(nodes_in("r3"), vec![3]);
        assert!(nodes_in("r4").is_empty());
    }

    #[test]
    fn docker_is_required_by_one_all_or_a_list_naming_it() {
        assert!(docker_required(Some("1")));
        assert!(docker_required(Some("all")));
        assert!(docker_required(Some("skopeo,docker")));
        assert!(docker_required(Some("docker umoci")));
        assert!(!docker_required(Some("skopeo,umoci")));
        assert!(!docker_required(Some("0")));
        assert!(!docker_required(Some("")));
        assert!(!docker_required(None));
    }

    #[test]
    fn host_ports_are_distinct_free_and_below_the_ephemeral_range() {
        let ports = host_ports(8);
        assert_eq!(ports.len(), 8);
        let mut sorted = ports.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 8, "{ports:?}");
        assert!(
            ports.iter().all(|p| (20_000..32_000).contains(p)),
            "{ports:?}"
        );
    }

    #[test]
    fn repo_of_drops_the_tag() {
        assert_eq!(repo_of("c1/app:1"), "c1/app");
        assert_eq!(repo_of("c1/app"), "c1/app");
    }
}
