//! `clusterctl certs init|issue`: a development cluster CA and the certificates it signs, for
//! mutual TLS between nodes and for `clusterctl` itself (ADR 018). Local files only; no
//! connection to a node.
//!
//! Every key is ECDSA P-256 (rcgen with ring). A CA directory holds `ca.pem` and
//! `ca-key.pem`; an issued certificate is `NAME.pem` and `NAME-key.pem` in the output
//! directory, with the CA's certificate copied beside them as `ca.pem`, so one directory is
//! what a node's `[cluster_tls]` (or `clusterctl --ca --cert --key`) names. Issued
//! certificates serve both as server and as client certificates (a node is both). Private keys
//! are written with mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::cli::CertsCommand;
use crate::error::Error;

/// The CA certificate's file name in a CA or certificate directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in a CA directory.
pub const CA_KEY: &str = "ca-key.pem";

/// Runs `certs init` or `certs issue`, printing the files written.
pub fn run(command: &CertsCommand, out: &mut dyn Write) -> Result<(), Error> {
    let written = match command {
        CertsCommand::Init { out } => init(out)?,
        CertsCommand::Issue {
            ca,
            name,
            hosts,
            out,
        } => issue(ca, name, hosts, out)?,
    };
    for path in written {
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}

fn failed(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.into();
    move |e| Error::Certs(format!("{what}: {e}"))
}

/// Makes a new CA in `dir` (created if missing; existing CA files are not overwritten).
pub fn init(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let key = KeyPair::generate().map_err(failed("failed to generate the CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(failed("failed to build the CA certificate"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "berth");
    dn.push(DnType::CommonName, "berth cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params
        .self_signed(&key)
        .map_err(failed("failed to sign the CA certificate"))?;
    std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(Error::Certs(format!(
                "{} exists; not overwriting a CA",
                p.display()
            )));
        }
    }
    write_file(&key_path, &key.serialize_pem(), true)?;
    write_file(&cert_path, &cert.pem(), false)?;
    Ok(vec![cert_path, key_path])
}

/// Issues `NAME.pem`/`NAME-key.pem` in `out`, signed by the CA in `ca_dir`, naming `hosts`
/// (DNS names or IP addresses) as subject alternative names.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    hosts: &[String],
    out: &Path,
) -> Result<Vec<PathBuf>, Error> {
    if name.contains('/') || name.starts_with('.') {
        return Err(Error::Certs(format!(
            "--name {name}: must not contain '/' or start with '.' (it names the files)"
        )));
    }
    let ca_cert = read_file(&ca_dir.join(CA_CERT))?;
    let ca_key = KeyPair::from_pem(&read_file(&ca_dir.join(CA_KEY))?).map_err(failed(format!(
        "failed to read the CA key in {}",
        ca_dir.display()
    )))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(failed(format!(
        "failed to read the CA certificate in {}",
        ca_dir.display()
    )))?;
    let key = KeyPair::generate().map_err(failed("failed to generate the key"))?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(failed(
        "failed to build the certificate (a --host is not a DNS name or IP)",
    ))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "berth");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(failed("failed to sign the certificate"))?;
    std::fs::create_dir_all(out).map_err(|e| io_error("create", out, e))?;
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}-key.pem"));
    write_file(&key_path, &key.serialize_pem(), true)?;
    write_file(&cert_path, &cert.pem(), false)?;
    let mut written = vec![cert_path, key_path];
    let ca_copy = out.join(CA_CERT);
    if ca_copy != ca_dir.join(CA_CERT) {
        write_file(&ca_copy, &ca_cert, false)?;
        written.push(ca_copy);
    }
    Ok(written)
}

fn io_error(verb: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Certs(format!("failed to {verb} {}: {e}", path.display()))
}

pub(crate) fn read_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| io_error("read", path, e))
}

fn write_file(path: &Path, text: &str, private: bool) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| io_error("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_hosts_and_copy_the_ca() {
        let dir = std::env::temp_dir().join(format!("clusterctl-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = dir.join("ca");
        init(&ca).unwrap();
        assert!(matches!(init(&ca), Err(Error::Certs(m)) if m.contains("not overwriting")));
        let out = dir.join("node");
        let written = issue(&ca, "node1", &["127.0.0.1".into(), "node1".into()], &out).unwrap();
        assert_eq!(written.len(), 3);
        let pem = std::fs::read_to_string(out.join("node1.pem")).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(
            std::fs::read_to_string(out.join(CA_CERT)).unwrap(),
            std::fs::read_to_string(ca.join(CA_CERT)).unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("node1-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(issue(&dir.join("missing"), "x", &[], &out).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
