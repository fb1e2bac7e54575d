//! Tier-3 tests of berth (see STYLE.md, "Tests — four tiers"): N real `berth serve`
//! processes on loopback ports with temporary data directories, driven over their real
//! interfaces — the OCI HTTP API, the admin and fault-injection gRPC services, `clusterctl` —
//! and killed, stopped, restarted and partitioned by the harness.
//!
//! Modules, each with one job:
//! - [`cluster`]: [`ClusterBuilder`] / [`Cluster`] — start-up, pollers, partitions, links
//!   (delay and bandwidth between nodes: an emulated WAN), `must_*`.
//! - [`node`]: [`NodeHandle`] — one process: flags, ports, stderr files, kill/stop/restart.
//! - [`oci`]: a small blocking OCI client; pushes and byte-for-byte verified pulls.
//! - [`load`]: concurrent pushers that record which pushes were acknowledged.
//! - [`admin`]: blocking Admin / Faults gRPC calls (partitions, links).
//! - [`clusterctl`]: running the CLI, bounded.
//! - [`clients`]: real clients (docker, skopeo, containerd), skipped or required.
//! - [`replication`]: blob files in a node's data directory; `clusterctl replication` runs.
//! - [`prometheus`]: a real Prometheus scraping a cluster, and `promtool`.
//! - [`compose`]: the three-region compose cluster of `deploy/compose` in Docker containers:
//!   `docker push`/`pull`, `docker kill`, region cut-offs, bandwidth limits.
//! - [`wait`]: the deadline pollers every wait goes through.
//!
//! The berth binary comes from env `BERTH_BIN` and must be built with the cargo feature
//! `fault-injection` (the Faults service); `scripts/test` sets it. The harness never links
//! the node crate. It is synchronous: tests are plain `#[test]` functions, clients are std
//! threads, and gRPC calls run on one internal tokio runtime.
//!
//! Invariants: every wait is bounded by a deadline ([`wait`]); every process a test starts is
//! SIGKILLed when its [`Cluster`] (or [`NodeHandle`]) drops; on a failing test each node's
//! stderr tail is printed and the cluster directory is kept.

#![warn(missing_docs)]

pub mod admin;
pub mod clients;
pub mod cluster;
pub mod clusterctl;
pub mod compose;
pub mod load;
pub mod node;
pub mod oci;
pub mod prometheus;
pub mod replication;
pub mod wait;

pub use admin::LinkSpec;
pub use berth_proto::admin::{Member, NodeStatusResponse, StatusResponse};
pub use cluster::{
    CHANGE_TIMEOUT, CONVERGE_TIMEOUT, Cluster, ClusterBuilder, LEADER_TIMEOUT, READY_TIMEOUT,
};
pub use load::{Load, LoadReport, LoadSpec};
pub use node::NodeHandle;
pub use oci::{Client, Image, ImageRef, UploadStyle, random_layer};
pub use wait::{wait_for, wait_until};
