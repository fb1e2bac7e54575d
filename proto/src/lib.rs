//! berth's gRPC contracts, generated from `proto/*.proto`.
//!
//! This crate depends on nothing in the workspace: `node` serves these services and
//! `clusterctl` calls them.

/// The admin service (`berth.admin.v1`) that `clusterctl` talks to.
pub mod admin {
    tonic::include_proto!("berth.admin.v1");
}
