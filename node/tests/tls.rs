//! TLS on the registry port (ADR 017), end to end on real sockets: a node started in-process
//! with [`berth_node::run`] and certificates from a test CA made with rcgen; a client that
//! trusts only that CA speaks HTTP/1.1 and HTTP/2 (ALPN) over tokio-rustls and hyper.
//!
//! Also: plain HTTP to the TLS port fails, `openssl s_client` cannot make a TLS 1.0 or 1.1
//! handshake, the certificate is reloaded on a file change and on SIGHUP while a connection
//! opened before keeps working, and the binary refuses plain HTTP beyond loopback and a
//! certificate without its key. Every wait is bounded in count and time; every node is stopped.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use berth_node::config::Config;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use rustls_pki_types::{CertificateDer, ServerName};
use support::{run_cmd, sha256_digest, tools};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A test certificate authority and the leaf certificates it issues for `localhost`.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate's PEM files' contents and its DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "berth test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// A certificate for `localhost` and 127.0.0.1 with common name `cn`, and the CA after it
    /// in the chain.
    fn issue(&self, cn: &str) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn client_config(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

/// Writes a leaf's certificate and key files (replacing what is there).
fn write_leaf(leaf: &Leaf, cert: &Path, key: &Path) {
    std::fs::write(cert, &leaf.cert_pem).unwrap();
    std::fs::write(key, &leaf.key_pem).unwrap();
}

/// A node serving TLS in this process; stopped by [`TlsNode::stop`].
struct TlsNode {
    addr: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), berth_node::RunError>>,
    _dir: tempfile::TempDir,
}

impl TlsNode {
    /// Starts a node with `leaf` as its certificate and `tls.watch_interval_secs = watch`.
    async fn start(leaf: &Leaf, watch: u64) -> TlsNode {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        write_leaf(leaf, &cert, &key);
        let env: std::collections::BTreeMap<String, String> = [
            (
                "BERTH_DATA_DIR",
                dir.path().join("data").display().to_string(),
            ),
            ("BERTH_LISTEN", "127.0.0.1:0".to_string()),
            ("BERTH_TLS__CERT_FILE", cert.display().to_string()),
            ("BERTH_TLS__KEY_FILE", key.display().to_string()),
            ("BERTH_TLS__WATCH_INTERVAL_SECS", watch.to_string()),
            ("BERTH_HTTP__HEADER_READ_TIMEOUT_SECS", "5".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let config = Config::load("", &env).unwrap();
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let cluster = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(berth_node::run(config, listener, cluster, async {
            let _ = rx.await;
        }));
        TlsNode {
            addr,
            cert,
            key,
            shutdown: Some(tx),
            task,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().expect("running").send(());
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("the node stops within 30 s")
            .expect("the node task does not panic")
            .expect("the node stops without an error");
    }
}

/// A TLS connection to `addr` trusting `ca`, offering `alpn`.
async fn connect(
    ca: &TestCa,
    addr: SocketAddr,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(alpn));
    tokio::time::timeout(
        Duration::from_secs(10),
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// The leaf certificate the server presented on `conn`.
fn server_cert(conn: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    conn.get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .clone()
}

/// An HTTP client over one TLS connection, HTTP/1.1 or HTTP/2 as ALPN chose.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn over(conn: TlsStream<TcpStream>) -> Sender {
        let h2 = conn.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = hyper_util::rt::TokioIo::new(conn);
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(send)
        }
    }

    /// Sends a request; returns its status, `Location` and body.
    async fn send(
        &mut self,
        method: Method,
        uri: &str,
        body: &[u8],
    ) -> (StatusCode, Option<String>, Bytes) {
        let uri = if uri.starts_with('/') {
            format!("https://localhost{uri}")
        } else {
            uri.to_string()
        };
        let mut req = Request::builder().method(method).uri(&uri);
        if matches!(self, Sender::H1(_)) {
            req = req.header(http::header::HOST, "localhost");
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        let fut = async {
            // Waiting for `ready` first: HTTP/1.1 takes the next request only once the previous
            // exchange is done on the connection's task.
            let resp = match self {
                Sender::H1(s) => match s.ready().await {
                    Ok(()) => s.send_request(req).await,
                    Err(e) => Err(e),
                },
                Sender::H2(s) => match s.ready().await {
                    Ok(()) => s.send_request(req).await,
                    Err(e) => Err(e),
                },
            }
            .expect("a response");
            let status = resp.status();
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .map(|v| v.to_str().unwrap().to_string());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, location, body)
        };
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .expect("an answer within 30 s")
    }
}

/// Connects until the node answers `GET /v2/` over TLS (bounded: 120 tries, 250 ms apart).
async fn wait_serving(ca: &TestCa, addr: SocketAddr) {
    for _ in 0..120 {
        if let Ok(conn) = connect(ca, addr, b"http/1.1").await {
            let mut s = Sender::over(conn).await;
            if s.send(Method::GET, "/v2/", b"").await.0 == StatusCode::OK {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the node did not serve GET /v2/ over TLS within 30 s");
}

/// Pushes a blob (POST, then PUT with the digest) and pulls it back.
async fn push_and_pull_blob(s: &mut Sender, repo: &str, blob: &[u8]) {
    let digest = sha256_digest(blob);
    let (status, location, _) = s
        .send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), b"")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let location = location.expect("an upload location");
    let sep = if location.contains('?') { '&' } else { '?' };
    let (status, _, _) = s
        .send(
            Method::PUT,
            &format!("{location}{sep}digest={digest}"),
            blob,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, body) = s
        .send(Method::GET, &format!("/v2/{repo}/blobs/{digest}"), b"")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_h2_with_push_and_pull() {
    let ca = TestCa::new();
    let leaf = ca.issue("berth-1");
    let node = TlsNode::start(&leaf, 5).await;
    wait_serving(&ca, node.addr).await;
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for (alpn, repo) in [(&b"http/1.1"[..], "tls/h1"), (&b"h2"[..], "tls/h2")] {
        let conn = connect(&ca, node.addr, alpn).await.unwrap();
        assert_eq!(conn.get_ref().1.alpn_protocol(), Some(alpn));
        assert_eq!(server_cert(&conn), leaf.der);
        let mut s = Sender::over(conn).await;
        let (status, _, _) = s.send(Method::GET, "/v2/", b"").await;
        assert_eq!(status, StatusCode::OK);
        push_and_pull_blob(&mut s, repo, &blob).await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_the_tls_port_gets_no_http_answer() {
    let ca = TestCa::new();
    let node = TlsNode::start(&ca.issue("berth-1"), 5).await;
    wait_serving(&ca, node.addr).await;
    let mut tcp = TcpStream::connect(node.addr).await.unwrap();
    tcp.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    // The server answers with at most a TLS alert, then closes (bounded by the timeout).
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server closes the connection");
    assert!(
        !got.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_blocks_no_one_and_is_dropped() {
    let ca = TestCa::new();
    let leaf = ca.issue("berth-1");
    let node = TlsNode::start(&leaf, 5).await;
    wait_serving(&ca, node.addr).await;
    // Connections that never send a ClientHello.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(node.addr).await.unwrap());
    }
    // Others are accepted and served meanwhile.
    let conn = connect(&ca, node.addr, b"h2").await.unwrap();
    let mut s = Sender::over(conn).await;
    assert_eq!(s.send(Method::GET, "/v2/", b"").await.0, StatusCode::OK);
    // The silent ones are closed after http.header_read_timeout_secs (5 s here), with no
    // byte sent; 30 s bounds the wait.
    for mut tcp in silent {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "a connection without a handshake was not closed"
        );
        assert!(got.is_empty(), "{got:?}");
    }
    node.stop().await;
}

/// `openssl s_client` with `flag` against `addr`: whether the handshake completed, and output.
fn s_client(addr: SocketAddr, flag: &str) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string(), flag])
        // OpenSSL 3 refuses TLS 1.0/1.1 itself at the default security level; level 0 makes it
        // offer them, so that a refusal is the server's.
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"]);
    let out =
        run_cmd(&mut cmd, Duration::from_secs(20)).expect("openssl s_client ends within 20 s");
    let text = format!("{}\n{}", out.stdout_text(), out.stderr_text());
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_handshakes_are_refused() {
    let probe = tools::succeeds(Command::new("openssl").arg("version"));
    if !tools::ready(
        "tls_1_0_and_1_1_handshakes_are_refused",
        &[("openssl", probe)],
    ) {
        return;
    }
    let ca = TestCa::new();
    let node = TlsNode::start(&ca.issue("berth-1"), 5).await;
    wait_serving(&ca, node.addr).await;
    let addr = node.addr;
    let results = tokio::task::spawn_blocking(move || {
        ["-tls1_2", "-tls1_3", "-tls1", "-tls1_1"].map(|flag| (flag, s_client(addr, flag)))
    })
    .await
    .unwrap();
    for (flag, (ok, text)) in results {
        match flag {
            "-tls1_2" | "-tls1_3" => assert!(ok, "{flag} handshake failed:\n{text}"),
            _ => {
                assert!(!ok, "{flag} handshake succeeded:\n{text}");
                assert!(
                    !text.contains("no protocols available"),
                    "the client, not the server, refused {flag}:\n{text}"
                );
            }
        }
    }
    node.stop().await;
}

/// Opens new connections until one presents `want` (bounded: 60 tries, 250 ms apart).
async fn wait_for_cert(ca: &TestCa, addr: SocketAddr, want: &CertificateDer<'static>) {
    for _ in 0..60 {
        let conn = connect(ca, addr, b"http/1.1").await.unwrap();
        if &server_cert(&conn) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("new connections still see the old certificate after 15 s");
}

/// Replaces the certificate (first with a bad key file, which must change nothing), triggers
/// a reload with `trigger`, and checks that new connections see the new certificate while a
/// connection opened before keeps working.
async fn reload_check(watch: u64, trigger: fn()) {
    let ca = TestCa::new();
    let old = ca.issue("berth-old");
    let node = TlsNode::start(&old, watch).await;
    wait_serving(&ca, node.addr).await;
    let before = connect(&ca, node.addr, b"h2").await.unwrap();
    assert_eq!(server_cert(&before), old.der);
    let mut before = Sender::over(before).await;
    // A request now: bytes the client sends before its first request count against
    // `http.header_read_timeout_secs` (5 s here), which the reload below may outlast.
    assert_eq!(
        before.send(Method::GET, "/v2/", b"").await.0,
        StatusCode::OK
    );

    // A bad key: the reload fails and the old certificate stays.
    std::fs::write(
        &node.key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    trigger();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let conn = connect(&ca, node.addr, b"http/1.1").await.unwrap();
    assert_eq!(
        server_cert(&conn),
        old.der,
        "a failed reload keeps the old certificate"
    );

    let new = ca.issue("berth-new");
    assert_ne!(new.der, old.der);
    write_leaf(&new, &node.cert, &node.key);
    trigger();
    wait_for_cert(&ca, node.addr, &new.der).await;
    let mut s = Sender::over(connect(&ca, node.addr, b"http/1.1").await.unwrap()).await;
    assert_eq!(s.send(Method::GET, "/v2/", b"").await.0, StatusCode::OK);
    assert_eq!(
        before.send(Method::GET, "/v2/", b"").await.0,
        StatusCode::OK,
        "a connection opened before the reload keeps working"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_reloaded_when_its_files_change() {
    reload_check(1, || {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_reloaded_on_sighup() {
    // File watching off: only the signal can reload. The handler is installed before the
    // node serves (`CertStore::watch`), so the signal cannot end this process.
    reload_check(0, || {
        // SAFETY: kill with our own pid and a signal number has no memory effects.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    })
    .await;
}

/// Runs `berth serve` with `args` (a free cluster port, a temp data dir); it must exit within
/// 30 s. Returns whether it succeeded and its stderr.
fn berth_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--cluster-listen", "127.0.0.1:0"])
        .args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BERTH_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_cmd(&mut cmd, Duration::from_secs(30)).expect("berth exits within 30 s");
    (out.status.code(), out.stderr_text())
}

#[test]
fn start_up_refuses_plaintext_beyond_loopback_and_a_cert_without_key() {
    // Refused before anything is bound.
    let (code, stderr) = berth_exit(&["--listen", "0.0.0.0:0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("tls.allow_plaintext"), "{stderr}");

    let (code, stderr) = berth_exit(
        &["--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem"],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("tls.key_file: must be set with tls.cert_file"),
        "{stderr}"
    );

    // Files that cannot be read or parsed: start-up fails naming the file.
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not pem").unwrap();
    let cert = cert.to_str().unwrap();
    let leaf = TestCa::new().issue("berth-1");
    // First the certificate file is not PEM, then (valid) the key file is missing.
    for (cert_pem, want) in [
        (None, format!("failed to parse tls.cert_file {cert} as PEM")),
        (
            Some(&leaf.cert_pem),
            "failed to read tls.key_file /nonexistent-key.pem".to_string(),
        ),
    ] {
        if let Some(pem) = cert_pem {
            std::fs::write(cert, pem).unwrap();
        }
        let (code, stderr) = berth_exit(
            &[
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert,
                "--tls-key",
                "/nonexistent-key.pem",
            ],
            &[],
        );
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(&want), "{want} missing from {stderr}");
    }
    // The environment and the flags together make the pair: checked after both apply.
    let (code, stderr) = berth_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-key",
            "/nonexistent-key.pem",
        ],
        &[("BERTH_TLS__CERT_FILE", cert)],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("failed to read tls.key_file /nonexistent-key.pem"),
        "{stderr}"
    );
}
