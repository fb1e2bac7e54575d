//! TLS on the registry port: the server's rustls configuration and its certificate, reloaded
//! from the PEM files without dropping a connection (ADR 017).
//!
//! Owns: reading the certificate chain and private key ([`load_certified_key`]), the rustls
//! [`ServerConfig`] (ring provider, TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`), and the
//! [`CertStore`] that every handshake reads its certificate from. [`CertStore::watch`] reloads
//! the files on SIGHUP and when their modification time or size changes. Knows nothing of HTTP.
//!
//! Invariants:
//! - A handshake always gets a certificate: the store starts with one that loaded and a failed
//!   reload (unreadable file, bad PEM, key not matching the certificate) keeps it and logs an
//!   error.
//! - A reload changes only new handshakes; established connections keep their session.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

/// ALPN protocols the registry port offers, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("failed to read {field} {}", path.display())]
    Read {
        /// The config field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid PEM of the expected kind.
    #[error("failed to parse {field} {} as PEM: {detail}", path.display())]
    Pem {
        /// The config field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The key is not usable with the certificate (unsupported type, or not the certificate's).
    #[error("failed to use {} {} with {} {}", fields[1], key.display(), fields[0], cert.display())]
    Key {
        /// The config fields naming the certificate and the key.
        fields: &'static [&'static str; 2],
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// The rustls configuration could not be built.
    #[error("failed to build the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The PEM files of the registry port's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`tls.cert_file`).
    pub cert: PathBuf,
    /// The private key, PKCS#8, PKCS#1 or SEC1 (`tls.key_file`).
    pub key: PathBuf,
}

/// The crypto provider of every TLS configuration of the node: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The bytes of the file `field` names.
pub(crate) fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(field: &'static str, path: &Path, detail: String) -> TlsError {
    TlsError::Pem {
        field,
        path: path.to_path_buf(),
        detail,
    }
}

/// The certificates (at least one) in the PEM file `field` names.
pub(crate) fn read_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(field, path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(field, path, "no CERTIFICATE block".to_string()));
    }
    Ok(certs)
}

/// Reads and checks the certificate chain and key named by `files`.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    load_key_pair(files, &["tls.cert_file", "tls.key_file"])
}

/// As [`load_certified_key`], naming the files by the config `fields` (certificate, key) in
/// errors.
pub(crate) fn load_key_pair(
    files: &TlsFiles,
    fields: &'static [&'static str; 2],
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(fields[0], &files.cert)?;
    let key_pem = read(fields[1], &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(fields[1], &files.key, e.to_string()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsError::Key {
        fields,
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

/// The certificate handshakes use now; replaced whole by a reload.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads the files; `Err` when they cannot be used (start-up fails on it).
    pub fn open(files: TlsFiles) -> Result<Arc<CertStore>, TlsError> {
        let key = load_certified_key(&files)?;
        Ok(Arc::new(CertStore {
            files,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// The rustls server configuration over this store: TLS 1.2 and 1.3, ALPN [`ALPN`].
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Reads the files again and, when they load, uses them for new handshakes; on an error
    /// keeps the current certificate.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    fn reload_logged(&self, why: &'static str) {
        match self.reload() {
            Ok(()) => tracing::info!(
                reason = why,
                cert_file = %self.files.cert.display(),
                "reloaded the TLS certificate"
            ),
            Err(e) => tracing::error!(
                reason = why,
                error = %crate::error_chain(&e),
                "failed to reload the TLS certificate; keeping the current one"
            ),
        }
    }

    /// Reloads on SIGHUP and, when `poll` is set, whenever a file's modification time or size
    /// changes (checked every `poll`), until `stop`. The SIGHUP handler is in place when this
    /// returns (call it within the runtime); the returned future does the reloading.
    pub fn watch(
        self: Arc<Self>,
        poll: Option<Duration>,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        use tokio::signal::unix::{SignalKind, signal};
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "failed to install the SIGHUP handler; TLS reload on SIGHUP is off");
                None
            }
        };
        self.reload_on(hangup, poll, stop)
    }

    async fn reload_on(
        self: Arc<Self>,
        mut hangup: Option<tokio::signal::unix::Signal>,
        poll: Option<Duration>,
        stop: CancellationToken,
    ) {
        let mut seen = self.stamps();
        let mut tick = poll.map(|p| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                Some(()) = async { hangup.as_mut()?.recv().await } => {
                    seen = self.stamps();
                    self.reload_logged("SIGHUP");
                }
                _ = async { tick.as_mut().expect("guarded").tick().await }, if tick.is_some() => {
                    let now = self.stamps();
                    if now != seen {
                        seen = now;
                        self.reload_logged("file changed");
                    }
                }
            }
        }
    }

    /// Modification time and size of both files (`None` for one that cannot be read).
    fn stamps(&self) -> [Option<(SystemTime, u64)>; 2] {
        [&self.files.cert, &self.files.key].map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}
