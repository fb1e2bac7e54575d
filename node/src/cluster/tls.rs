//! Mutual TLS between nodes (ADR 018): the cluster endpoint's server configuration and the
//! client configuration of every connection this node dials to a peer, from the
//! `[cluster_tls]` PEM files.
//!
//! Owns: loading and checking the three files once at start-up (the PEM reading of
//! `server::tls`), and turning them into tonic's TLS settings. Knows nothing of the services.
//!
//! Invariants:
//! - The server requires a client certificate that chains to the cluster CA; a connection
//!   without one fails in the handshake, before any call.
//! - A client trusts only the cluster CA (no system roots) and checks that the peer's
//!   certificate names the host it dialled (a DNS or IP subject alternative name).

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::server::tls::{TlsError, TlsFiles, load_key_pair, read, read_certs};

/// The PEM files of `[cluster_tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTlsFiles {
    /// The cluster CA certificate(s) (`cluster_tls.ca_file`).
    pub ca: PathBuf,
    /// This node's certificate chain, leaf first (`cluster_tls.cert_file`).
    pub cert: PathBuf,
    /// Its private key (`cluster_tls.key_file`).
    pub key: PathBuf,
}

/// The loaded cluster CA and this node's identity.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    ca: Certificate,
    identity: Identity,
}

impl ClusterTls {
    /// Reads the files and checks them (PEM that parses, a key that belongs to the
    /// certificate); `Err` names the field and the file.
    pub fn load(files: &ClusterTlsFiles) -> Result<ClusterTls, TlsError> {
        read_certs("cluster_tls.ca_file", &files.ca)?;
        let pair = TlsFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
        };
        load_key_pair(&pair, &["cluster_tls.cert_file", "cluster_tls.key_file"])?;
        Ok(ClusterTls {
            ca: Certificate::from_pem(read("cluster_tls.ca_file", &files.ca)?),
            identity: Identity::from_pem(
                read("cluster_tls.cert_file", &files.cert)?,
                read("cluster_tls.key_file", &files.key)?,
            ),
        })
    }

    /// The cluster endpoint's TLS: this node's certificate, client certificates required and
    /// checked against the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(false)
    }

    /// TLS of a connection to a peer: presents this node's certificate, trusts only the CA.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
    }
}

/// An endpoint for the cluster address `addr` (`host:port`): `https://` with `tls`, plain
/// `http://` without.
pub fn endpoint(addr: &str, tls: Option<&ClusterTls>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint =
        Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| e.to_string())?;
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.client_config())
            .map_err(|e| e.to_string()),
        None => Ok(endpoint),
    }
}
