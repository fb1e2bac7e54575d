//! The one OCI test client of the workspace, shared by node's tier-4 tests (`node/tests/`) and
//! the multi-node harness (`cluster-tests/`): it speaks to berth only over the wire and links
//! nothing of the workspace.
//!
//! Modules, each with one job:
//! - [`http`]: a blocking HTTP agent with no proxy, no redirects and a deadline; whole
//!   responses ([`http::Resp`]).
//! - [`oci`]: the OCI Distribution client ([`oci::Client`]): uploads in the three
//!   [`oci::UploadStyle`]s, manifest PUT and GET, tag lists, failures classified as
//!   [`oci::PushError`].
//! - [`process`]: external commands and child processes, always bounded in time.
//! - [`receiver`]: a webhook receiver: records what it is sent, answers a chosen status, can
//!   go down and come back.
//!
//! And at the top: [`free_port`], [`sha256_digest`], and [`CLIENT_TOOLS`].

#![warn(missing_docs)]

pub mod http;
pub mod oci;
pub mod process;
pub mod receiver;

use std::net::TcpListener;

use sha2::Digest as _;

/// Every real client `BERTH_REQUIRE_CLIENT_TOOLS` may name (the node crate's tests and
/// cluster-tests read the same variable, so they share the list).
pub const CLIENT_TOOLS: &[&str] = &[
    "docker",
    "containerd",
    "skopeo",
    "umoci",
    "podman",
    "oras",
    "openssl",
    "prometheus",
];

/// Reserves a free loopback port: binds `127.0.0.1:0`, reads the port, drops the listener.
/// Another process may take it before the caller binds it; callers retry on "failed to bind".
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("failed to bind 127.0.0.1:0");
    l.local_addr()
        .expect("failed to read the local address")
        .port()
}

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_digest_of_empty_input() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the reserved port is free");
    }
}
