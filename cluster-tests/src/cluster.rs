//! A cluster of real `berth` processes: [`ClusterBuilder`] starts it, [`Cluster`] owns the
//! nodes and offers the pollers, the admin and fault calls, and the `must_*` OCI helpers that
//! name the node.
//!
//! Start-up follows the operator's path: node 1 initialises a one-voter cluster; nodes
//! 2..N start with `--join <node 1>` (which adds them as learners) and are then promoted to
//! voters through `Admin.PromoteNode`; the build returns once `Admin.Status` shows every
//! member reachable with one leader and the others voters, and all applied the same log.
//!
//! Partitions and links (delay, bandwidth per pair of nodes: an emulated WAN) are tracked
//! here (which node blocks which, which node has which link to which peer) so that
//! [`Cluster::heal`] undoes partitions and a node gets its partition and links when it
//! (re)starts, before it talks to anyone but the node it joins through. Dropping a cluster SIGKILLs every node;
//! when the test is panicking it first prints every node's stderr tail and keeps the
//! temporary directory (data and logs) for a look.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth_proto::admin::{NodeStatusResponse, Progress, StatusResponse};

use crate::admin::{self, Change, LinkSpec};
use crate::node::{NodeHandle, NodeSpec};
use crate::oci::{Client, ImageRef};
use crate::wait::wait_until;

/// How long a node may take to answer `/readyz` 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an election may take.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long nodes may take to apply the same log.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a membership change the harness makes.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Threads that verify pulls in parallel.
const PULL_THREADS: usize = 4;

/// Starts a [`Cluster`]: `ClusterBuilder::new().nodes(3).build()`.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    /// Heartbeat, election timeout min and max (ms); `None`: berth's defaults.
    timing: Option<(u64, u64, u64)>,
    regions: Vec<String>,
    /// A link between every two nodes of different regions, from the start.
    region_links: Option<LinkSpec>,
    env: Vec<(String, String)>,
}

impl Default for ClusterBuilder {
    fn default() -> ClusterBuilder {
        ClusterBuilder::new()
    }
}

impl ClusterBuilder {
    /// Three nodes; Raft heartbeat 50 ms, election timeout 150–300 ms (quick tests).
    pub fn new() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 3,
            timing: Some((50, 150, 300)),
            regions: Vec::new(),
            region_links: None,
            env: Vec::new(),
        }
    }

    /// Number of nodes (all voters), at least 1.
    pub fn nodes(mut self, n: usize) -> ClusterBuilder {
        assert!(n >= 1, "a cluster has at least one node");
        self.nodes = n;
        self
    }

    /// Raft heartbeat interval and election timeout range, in milliseconds.
    pub fn raft_timing(
        mut self,
        heartbeat_ms: u64,
        election_min_ms: u64,
        election_max_ms: u64,
    ) -> ClusterBuilder {
        self.timing = Some((heartbeat_ms, election_min_ms, election_max_ms));
        self
    }

    /// berth's default Raft timings (the ones that hold across regions, ADR 012) instead of
    /// the harness's quick ones.
    pub fn default_raft_timing(mut self) -> ClusterBuilder {
        self.timing = None;
        self
    }

    /// Links every two nodes of different regions (see [`ClusterBuilder::regions`]) with
    /// `delay` each way and a `bandwidth` cap, from the moment each node starts: an emulated
    /// WAN between regions (see [`Cluster::set_link`]).
    pub fn region_links(mut self, delay: Duration, bandwidth: Option<u64>) -> ClusterBuilder {
        self.region_links = Some(LinkSpec { delay, bandwidth });
        self
    }

    /// Snapshot after `every_entries` entries, keeping `keep_log_entries` behind it.
    pub fn snapshots(self, every_entries: u64, keep_log_entries: u64) -> ClusterBuilder {
        self.env(
            "BERTH_RAFT__SNAPSHOT_EVERY_ENTRIES",
            &every_entries.to_string(),
        )
        .env(
            "BERTH_RAFT__KEEP_LOG_ENTRIES",
            &keep_log_entries.to_string(),
        )
    }

    /// How long a write waits for its commit before answering 503, in milliseconds.
    pub fn write_timeout_ms(self, ms: u64) -> ClusterBuilder {
        self.env("BERTH_RAFT__WRITE_TIMEOUT_MS", &ms.to_string())
    }

    /// Regions, assigned to nodes round-robin (node 1 the first); default: berth's default.
    pub fn regions(mut self, regions: &[&str]) -> ClusterBuilder {
        self.regions = regions.iter().map(|r| r.to_string()).collect();
        self
    }

    /// Mutual TLS on the cluster port (ADR 018): every node uses `ca.pem`, `node.pem` and
    /// `node-key.pem` in `dir` (`clusterctl certs issue --name node --host 127.0.0.1`), and
    /// the harness's admin and fault calls present the same certificate (process-wide, see
    /// [`admin::use_client_tls`]).
    pub fn cluster_tls(self, dir: &std::path::Path) -> ClusterBuilder {
        admin::use_client_tls(dir);
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        self.env("BERTH_CLUSTER_TLS__CA_FILE", &file("ca.pem"))
            .env("BERTH_CLUSTER_TLS__CERT_FILE", &file("node.pem"))
            .env("BERTH_CLUSTER_TLS__KEY_FILE", &file("node-key.pem"))
    }

    /// Auth on at every node, with `admin_password` as the bootstrap admin password (the
    /// nodes make the `admin` user; joining nodes log in with it), and the harness's Admin
    /// calls made as that admin (process-wide, see [`admin::use_client_authorization`]).
    pub fn auth(self, admin_password: &str) -> ClusterBuilder {
        admin::use_client_authorization(&admin::basic_auth("admin", admin_password));
        self.env("BERTH_AUTH__ENABLED", "true")
            .env("BERTH_AUTH__BOOTSTRAP_ADMIN_PASSWORD", admin_password)
    }

    /// An environment variable for every node (e.g. a `BERTH_…` setting); later wins.
    pub fn env(mut self, key: &str, value: &str) -> ClusterBuilder {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    fn node_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some((heartbeat, min, max)) = self.timing {
            env.push((
                "BERTH_RAFT__HEARTBEAT_MS".to_string(),
                heartbeat.to_string(),
            ));
            env.push((
                "BERTH_RAFT__ELECTION_TIMEOUT_MIN_MS".to_string(),
                min.to_string(),
            ));
            env.push((
                "BERTH_RAFT__ELECTION_TIMEOUT_MAX_MS".to_string(),
                max.to_string(),
            ));
        }
        for (k, v) in &self.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Starts the nodes and returns once all are voters, reachable, with one leader.
    pub fn build(self) -> Cluster {
        // Fail on a missing binary before anything is created.
        crate::node::berth_bin();
        let root = tempfile::Builder::new()
            .prefix("berth-cluster-")
            .tempdir()
            .expect("failed to create the cluster directory");
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            root: Some(root),
            env: self.node_env(),
            regions: self.regions.clone(),
            blocked: Mutex::new(BTreeMap::new()),
            links: Mutex::new(BTreeMap::new()),
        };
        if let Some(link) = self.region_links {
            let ids = 1..=self.nodes as u64;
            for a in ids.clone() {
                for b in ids.clone() {
                    if a < b && cluster.region_of(a) != cluster.region_of(b) {
                        cluster.record_link(a, b, link);
                    }
                }
            }
        }
        cluster.start_node(None);
        cluster.wait_for_ready(1, READY_TIMEOUT);
        for _ in 2..=self.nodes {
            cluster.add_node(1);
        }
        for id in 2..=self.nodes as u64 {
            cluster.promote(id);
        }
        cluster.wait_for_voters(READY_TIMEOUT);
        cluster.wait_for_applied_converged(CONVERGE_TIMEOUT);
        cluster
    }
}

/// Running nodes, their temporary directory, and the partitions in force.
pub struct Cluster {
    nodes: BTreeMap<u64, NodeHandle>,
    root: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
    regions: Vec<String>,
    /// node id → the peers it blocks.
    blocked: Mutex<BTreeMap<u64, BTreeSet<u64>>>,
    /// node id → its links to peers.
    links: Mutex<BTreeMap<u64, BTreeMap<u64, LinkSpec>>>,
}

impl Cluster {
    fn root(&self) -> &std::path::Path {
        self.root.as_ref().expect("cluster directory").path()
    }

    /// Starts node `max id + 1` (joining through `join`'s cluster address when given) and
    /// returns its id, without waiting for readiness.
    fn start_node(&mut self, join: Option<u64>) -> u64 {
        self.start_node_with_env(join, &[])
    }

    /// As [`Cluster::add_node`] with `extra` environment variables over the cluster's (e.g. a
    /// node with other certificates), without waiting for anything but its listeners.
    pub fn start_node_with_env(&mut self, join: Option<u64>, extra: &[(&str, &str)]) -> u64 {
        let id = self.nodes.keys().max().map_or(1, |m| m + 1);
        let mut env = self.env.clone();
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let dir = self.root().join(format!("node-{id}"));
        let region = self.region_of(id);
        let spec = NodeSpec {
            id,
            data_dir: dir.join("data"),
            log_dir: dir.join("logs"),
            join: join.map(|j| self.node(j).cluster_addr()),
            region,
            zone: "default".to_string(),
            env,
        };
        self.nodes.insert(id, NodeHandle::start(spec));
        self.push_links(id);
        id
    }

    /// The region node `id` is (or will be) started in: [`ClusterBuilder::regions`]
    /// round-robin.
    pub fn region_of(&self, id: u64) -> String {
        if self.regions.is_empty() {
            "default".to_string()
        } else {
            self.regions[(id as usize - 1) % self.regions.len()].clone()
        }
    }

    /// Starts a new node with `--join <node join_via>` and waits until it is ready (it was
    /// added as a learner and knows the leader). It stays a learner; returns its id.
    pub fn add_node(&mut self, join_via: u64) -> u64 {
        let id = self.start_node(Some(join_via));
        self.wait_for_ready(id, READY_TIMEOUT);
        id
    }

    /// Promotes learner `id` to voter through the leader (`Admin.PromoteNode`), retrying
    /// while the leader has not heard from it yet.
    pub fn promote(&self, id: u64) {
        wait_until(&format!("node {id} to be promoted"), CHANGE_TIMEOUT, || {
            let leader = self.leader();
            let addr = self.node(leader).cluster_addr();
            match admin::change(&addr, Change::Promote(id), CHANGE_TIMEOUT) {
                Ok(_) => Ok(()),
                Err(e) if e.message.contains("already a voter") => Ok(()),
                // Not heard from it yet, or leadership moved meanwhile: try again.
                Err(e)
                    if e.code == Some(tonic::Code::FailedPrecondition)
                        || e.code == Some(tonic::Code::Unavailable) =>
                {
                    Err(format!("at node {leader}: {e}"))
                }
                Err(e) => panic!("promoting node {id} at node {leader} failed: {e}"),
            }
        });
    }

    /// Runs a membership change at node `at` and panics with the progress and error when it
    /// does not finish with `done`.
    pub fn must_change(&self, at: u64, op: Change) -> Vec<Progress> {
        admin::change(&self.node(at).cluster_addr(), op.clone(), CHANGE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{op:?} at node {at} failed: {e}"))
    }

    /// The node with this id. Panics when there is none.
    pub fn node(&self, id: u64) -> &NodeHandle {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// The node with this id, to kill, stop or restart it.
    pub fn node_mut(&mut self, id: u64) -> &mut NodeHandle {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// Every node id, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes whose process runs.
    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.is_running())
            .map(NodeHandle::id)
            .collect()
    }

    /// HTTP base URLs of these nodes.
    pub fn urls(&self, ids: &[u64]) -> Vec<String> {
        ids.iter().map(|id| self.node(*id).url()).collect()
    }

    /// An OCI client of node `id`.
    pub fn client(&self, id: u64) -> Client {
        self.node(id).client()
    }

    /// A registry token from node `id`'s `/auth/token` for `scope`, logging in as
    /// `name:password` (GET with Basic credentials, as docker's GET flow).
    pub fn registry_token(
        &self,
        id: u64,
        name: &str,
        password: &str,
        scope: &str,
    ) -> Result<String, String> {
        let path = format!("/auth/token?service=berth&scope={scope}");
        let auth = admin::basic_auth(name, password);
        let r = self
            .client(id)
            .request("GET", &path, &[("Authorization", &auth)], None)?;
        if r.status != 200 {
            return Err(format!(
                "node {id}: /auth/token answered {}: {}",
                r.status,
                r.excerpt()
            ));
        }
        let token = r.json()["token"].as_str().unwrap_or_default().to_string();
        if token.is_empty() {
            return Err(format!("node {id}: no token in {}", r.excerpt()));
        }
        Ok(token)
    }

    /// SIGKILLs node `id` (`kill -9`).
    pub fn kill(&mut self, id: u64) {
        self.node_mut(id).kill();
    }

    /// Restarts node `id` over its data directory and ports, reapplies the partition it had,
    /// and returns without waiting for readiness.
    pub fn restart(&mut self, id: u64) {
        self.node_mut(id).restart();
        let blocked: Vec<u64> = self
            .blocked
            .lock()
            .expect("partition lock")
            .get(&id)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        if !blocked.is_empty() {
            self.must_set_partition(id, blocked);
        }
        self.push_links(id);
    }

    // ---- pollers -------------------------------------------------------------------------

    /// Waits until node `id` answers `/readyz` 200 (it knows a leader, storage is writable).
    /// Panics with its stderr when it exits or the time runs out.
    pub fn wait_for_ready(&self, id: u64, timeout: Duration) {
        let node = self.node(id);
        let client = node.client();
        let r = crate::wait::try_wait_until(timeout, || {
            if !node.is_running() {
                return Ok(Err("the process exited".to_string()));
            }
            match client.get("/readyz") {
                Ok(r) if r.status == 200 => Ok(Ok(())),
                Ok(r) => Err(format!("/readyz {}: {}", r.status, r.text().trim())),
                Err(e) => Err(e),
            }
        });
        let err = match r {
            Ok(Ok(())) => return,
            Ok(Err(e)) | Err(e) => e,
        };
        panic!(
            "node {id} did not become ready within {timeout:?}: {err}; stderr ({}):\n{}",
            node.stderr_path().display(),
            node.stderr_tail(60)
        );
    }

    /// `Admin.NodeStatus` of node `id`.
    pub fn node_status(&self, id: u64) -> Result<NodeStatusResponse, String> {
        admin::node_status(&self.node(id).cluster_addr())
    }

    /// `Admin.Status` at node `id`; panics on failure.
    pub fn status(&self, id: u64) -> StatusResponse {
        admin::status(&self.node(id).cluster_addr())
            .unwrap_or_else(|e| panic!("Status at node {id} failed: {e}"))
    }

    /// Waits until the running nodes agree on one leader that is running and leads; returns
    /// its id.
    pub fn wait_for_leader(&self, timeout: Duration) -> u64 {
        self.wait_for_leader_among(&self.running_ids(), timeout)
    }

    /// As [`Cluster::wait_for_leader`], over the given nodes only (e.g. a majority side).
    pub fn wait_for_leader_among(&self, ids: &[u64], timeout: Duration) -> u64 {
        wait_until(
            &format!("nodes {ids:?} to agree on a leader"),
            timeout,
            || {
                let mut leader = None;
                for id in ids {
                    let s = self.node_status(*id)?;
                    if s.leader_id == 0 {
                        return Err(format!("node {id} knows no leader"));
                    }
                    match leader {
                        None => leader = Some(s.leader_id),
                        Some(l) if l != s.leader_id => {
                            return Err(format!(
                                "node {id} says {}, another says {l}",
                                s.leader_id
                            ));
                        }
                        Some(_) => {}
                    }
                }
                let l = leader.ok_or("no nodes")?;
                if !ids.contains(&l) {
                    return Err(format!("the leader they name, {l}, is not among them"));
                }
                let s = self.node_status(l)?;
                if s.state != "leader" {
                    return Err(format!("node {l} is named leader but is {}", s.state));
                }
                Ok(l)
            },
        )
    }

    /// The current leader (waits up to [`LEADER_TIMEOUT`] for the running nodes to agree).
    pub fn leader(&self) -> u64 {
        self.wait_for_leader(LEADER_TIMEOUT)
    }

    /// Running nodes other than the leader.
    pub fn followers(&self) -> Vec<u64> {
        let leader = self.leader();
        self.running_ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect()
    }

    /// Waits until every running node applied the same log: all agree on the leader and each
    /// one's applied index equals the highest last log index among them. Returns that index.
    /// Meant for quiet moments (no writes in flight).
    pub fn wait_for_applied_converged(&self, timeout: Duration) -> u64 {
        self.wait_for_applied_converged_among(&self.running_ids(), timeout)
    }

    /// As [`Cluster::wait_for_applied_converged`], over the given nodes only.
    pub fn wait_for_applied_converged_among(&self, ids: &[u64], timeout: Duration) -> u64 {
        wait_until(
            &format!("nodes {ids:?} to apply the same log"),
            timeout,
            || {
                let statuses: Vec<NodeStatusResponse> = ids
                    .iter()
                    .map(|id| self.node_status(*id))
                    .collect::<Result<_, _>>()?;
                let view = || {
                    statuses
                        .iter()
                        .map(|s| {
                            format!(
                                "node {}: {} leader {} last {} applied {}",
                                s.node_id, s.state, s.leader_id, s.last_log_index, s.applied_index
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                let leaders: BTreeSet<u64> = statuses.iter().map(|s| s.leader_id).collect();
                if leaders.len() != 1 || leaders.contains(&0) {
                    return Err(view());
                }
                let last = statuses.iter().map(|s| s.last_log_index).max().unwrap_or(0);
                if statuses.iter().all(|s| s.applied_index == last) {
                    Ok(last)
                } else {
                    Err(view())
                }
            },
        )
    }

    /// Waits until `Admin.Status` at the leader lists every running node as a reachable
    /// voter (or the leader).
    pub fn wait_for_voters(&self, timeout: Duration) {
        let want: BTreeSet<u64> = self.running_ids().into_iter().collect();
        wait_until("every node to be a reachable voter", timeout, || {
            let leader = self.leader();
            let s = admin::status(&self.node(leader).cluster_addr())?;
            let ok: BTreeSet<u64> = s
                .members
                .iter()
                .filter(|m| m.reachable && (m.role == "voter" || m.role == "leader"))
                .map(|m| m.id)
                .collect();
            if ok == want {
                Ok(())
            } else {
                Err(format!("{:?}", s.members))
            }
        });
    }

    // ---- faults --------------------------------------------------------------------------

    fn must_set_partition(&self, id: u64, blocked: Vec<u64>) {
        admin::set_partition(&self.node(id).cluster_addr(), blocked.clone())
            .unwrap_or_else(|e| panic!("SetPartition({blocked:?}) at node {id} failed: {e}"));
    }

    /// Cuts every node of `a` off from every node of `b` (both directions), on top of the
    /// partitions already in force.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        let mut blocked = self.blocked.lock().expect("partition lock");
        for (side, other) in [(a, b), (b, a)] {
            for id in side {
                blocked
                    .entry(*id)
                    .or_default()
                    .extend(other.iter().copied());
            }
        }
        for id in a.iter().chain(b) {
            self.must_set_partition(*id, blocked[id].iter().copied().collect());
        }
    }

    /// Records a link between `a` and `b` in both directions, without telling the nodes.
    fn record_link(&self, a: u64, b: u64, link: LinkSpec) {
        let mut links = self.links.lock().expect("links lock");
        links.entry(a).or_default().insert(b, link);
        links.entry(b).or_default().insert(a, link);
    }

    /// Sends node `id` the links recorded for it, when it runs and has any.
    fn push_links(&self, id: u64) {
        let mine = self
            .links
            .lock()
            .expect("links lock")
            .get(&id)
            .cloned()
            .unwrap_or_default();
        if mine.is_empty() || !self.nodes.get(&id).is_some_and(NodeHandle::is_running) {
            return;
        }
        admin::set_links(&self.node(id).cluster_addr(), &mine)
            .unwrap_or_else(|e| panic!("SetLinks({mine:?}) at node {id} failed: {e}"));
    }

    /// Links nodes `a` and `b` with `delay` added to each direction (a round trip between
    /// them gains twice `delay`) and a `bandwidth` cap in bytes/s (`None`: unlimited), both
    /// ways: each node's own link shapes the connections it dials. Applies at once to open
    /// connections. A node not started yet gets the link when it starts.
    pub fn set_link(&self, a: u64, b: u64, delay: Duration, bandwidth: Option<u64>) {
        self.record_link(a, b, LinkSpec { delay, bandwidth });
        self.push_links(a);
        self.push_links(b);
    }

    /// [`Cluster::set_link`] between every node of region `r1` and every node of region
    /// `r2` (nodes started so far).
    pub fn set_region_links(&self, r1: &str, r2: &str, delay: Duration, bandwidth: Option<u64>) {
        let in_region = |r: &str| -> Vec<u64> {
            self.ids()
                .into_iter()
                .filter(|id| self.node(*id).spec().region == r)
                .collect()
        };
        for a in in_region(r1) {
            for b in in_region(r2) {
                if a != b {
                    self.record_link(a, b, LinkSpec { delay, bandwidth });
                }
            }
        }
        for id in self.ids() {
            self.push_links(id);
        }
    }

    /// Removes every link (on every running node): the nodes talk at loopback speed again.
    pub fn clear_links(&self) {
        self.links.lock().expect("links lock").clear();
        for id in self.running_ids() {
            admin::set_links(&self.node(id).cluster_addr(), &BTreeMap::new())
                .unwrap_or_else(|e| panic!("SetLinks([]) at node {id} failed: {e}"));
        }
    }

    /// Lifts every partition (on every running node).
    pub fn heal(&self) {
        let mut blocked = self.blocked.lock().expect("partition lock");
        blocked.clear();
        for id in self.running_ids() {
            self.must_set_partition(id, Vec::new());
        }
    }

    // ---- OCI -----------------------------------------------------------------------------

    /// Pushes `repo:tag` over `layers` at node `id` (see [`Client::must_push_image`]).
    pub fn must_push_image(&self, id: u64, repo: &str, tag: &str, layers: &[Vec<u8>]) -> ImageRef {
        self.client(id).must_push_image(repo, tag, layers)
    }

    /// Pulls `repo:tag` at node `id` and compares manifest and blobs with `expected`.
    pub fn must_pull_image(&self, id: u64, repo: &str, tag: &str, expected: &ImageRef) {
        self.client(id).must_pull_image(repo, tag, expected)
    }

    /// Every tag of `repo` at node `id`, sorted.
    pub fn must_tags(&self, id: u64, repo: &str) -> Vec<String> {
        self.client(id).must_tags(repo)
    }

    /// Waits until node `id` serves `image`'s tag with its manifest (the node may lag the
    /// leader by the replication lag).
    pub fn wait_for_image(&self, id: u64, image: &ImageRef, timeout: Duration) {
        let client = self.client(id);
        wait_until(
            &format!("node {id} to serve {}:{}", image.repo, image.tag),
            timeout,
            || {
                let r = client.get_manifest(&image.repo, &image.tag)?;
                match r.header("docker-content-digest") {
                    Some(d) if r.status == 200 && d == image.manifest_digest => Ok(()),
                    _ => Err(format!("{}: {}", r.status, r.text())),
                }
            },
        );
    }

    /// Pulls every image at every node in `ids` (in parallel) and panics listing the first
    /// failures.
    pub fn must_pull_everywhere(&self, ids: &[u64], images: &[ImageRef]) {
        let jobs: Vec<(u64, &ImageRef)> = ids
            .iter()
            .flat_map(|id| images.iter().map(move |i| (*id, i)))
            .collect();
        let next = AtomicUsize::new(0);
        let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..PULL_THREADS {
                s.spawn(|| {
                    let clients: BTreeMap<u64, Client> =
                        ids.iter().map(|id| (*id, self.client(*id))).collect();
                    loop {
                        let k = next.fetch_add(1, Ordering::SeqCst);
                        let Some((id, image)) = jobs.get(k) else {
                            return;
                        };
                        if let Err(e) = clients[id].try_pull_image(&image.repo, &image.tag, image) {
                            failures.lock().expect("failures lock").push(e);
                        }
                    }
                });
            }
        });
        let failures = failures.into_inner().expect("failures lock");
        assert!(
            failures.is_empty(),
            "{} of {} pulls failed; first ones:\n{}",
            failures.len(),
            jobs.len(),
            failures
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// Waits until every node in `ids` lists the same tags for `repo`; returns them.
    pub fn wait_for_same_tags(&self, ids: &[u64], repo: &str, timeout: Duration) -> Vec<String> {
        wait_until(
            &format!("nodes {ids:?} to list the same tags of {repo}"),
            timeout,
            || {
                let lists: Vec<(u64, Vec<String>)> = ids
                    .iter()
                    .map(|id| self.client(*id).try_tags(repo).map(|t| (*id, t)))
                    .collect::<Result<_, _>>()?;
                if lists.windows(2).all(|w| w[0].1 == w[1].1) {
                    Ok(lists[0].1.clone())
                } else {
                    Err(lists
                        .iter()
                        .map(|(id, t)| format!("node {id}: {} tags", t.len()))
                        .collect::<Vec<_>>()
                        .join(", "))
                }
            },
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in self.nodes.values() {
                eprintln!(
                    "---- node {} stderr, last start ({}) ----\n{}\n---- end of node {} ----",
                    node.id(),
                    node.stderr_path().display(),
                    node.stderr_tail(40),
                    node.id()
                );
            }
            if let Some(root) = self.root.take() {
                eprintln!("cluster directory kept at {}", root.keep().display());
            }
        }
        // Kill every process before the directory goes.
        self.nodes.clear();
    }
}
