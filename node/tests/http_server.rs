//! The HTTP server's connection handling, probed black-box on the real binary as a hostile or
//! careless client would: raw TCP, half-sent requests, stalled bodies, unread downloads, too
//! many connections, bodies written in full before the answer is read, and the open-file limit.
//!
//! Each test starts its own `berth serve` with short `[http]` timeouts (environment), and
//! every wait is bounded: socket read timeouts, deadlines, and loops with a fixed count.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{BerthProcess, Client, UploadStyle, sha256_digest};

/// What a test allows beyond a configured timeout before the server must have acted
/// (process scheduling on a busy 2-core machine).
const SLACK: Duration = Duration::from_secs(4);

/// Starts berth with `[http]` settings as `(FIELD, value)` pairs.
fn start(settings: &[(&str, &str)]) -> (BerthProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("create data dir");
    let env: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (format!("BERTH_HTTP__{k}"), v.to_string()))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    (BerthProcess::start_with_env(dir.path(), &env), dir)
}

fn connect(p: &BerthProcess, read_timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", p.port())).expect("connect");
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// How a read that waits for the server to close ended.
#[derive(Debug, PartialEq, Eq)]
enum Closed {
    /// EOF or reset: the server closed the connection.
    Yes,
    /// The socket's read timeout passed with the connection open.
    No,
}

/// Reads (and discards) until the server closes the connection or the read timeout passes.
fn wait_closed(s: &mut TcpStream) -> Closed {
    let mut buf = [0u8; 4096];
    // Bounded: each read either returns data (at most what the server sent) or ends the loop.
    for _ in 0..100_000 {
        match s.read(&mut buf) {
            Ok(0) => return Closed::Yes,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Closed::No;
            }
            Err(_) => return Closed::Yes,
        }
    }
    panic!("the server kept sending");
}

/// Asserts the server closes `s` about `timeout` from now: not before (less a little for
/// timer granularity), nor after the socket's read timeout.
fn must_close_after(s: &mut TcpStream, timeout: Duration, what: &str) {
    let t = Instant::now();
    assert_eq!(wait_closed(s), Closed::Yes, "{what} held the connection");
    let took = t.elapsed();
    assert!(
        took + Duration::from_millis(100) >= timeout,
        "{what} was closed after {took:?}, before the {timeout:?} timeout"
    );
}

/// A response read off a raw socket (`Content-Length` bodies only).
#[derive(Debug)]
struct RawResp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response; `Err` when the connection ended or timed out first.
fn read_response(s: &mut TcpStream) -> Result<RawResp, String> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => return Err(format!("closed after {} bytes of head", raw.len())),
            Ok(_) => raw.push(byte[0]),
            Err(e) => return Err(format!("failed to read the head: {e}")),
        }
        if raw.len() > 64 * 1024 {
            return Err("head longer than 64 KiB".to_string());
        }
    }
    let head = String::from_utf8(raw).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut resp = RawResp {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 100 {
        return Ok(resp);
    }
    let len: usize = resp
        .header("content-length")
        .map(|v| v.parse().expect("numeric content-length"))
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    resp.body = vec![0; len];
    s.read_exact(&mut resp.body)
        .map_err(|e| format!("failed to read a {len}-byte body: {e}"))?;
    Ok(resp)
}

fn get_v2(s: &mut TcpStream) -> Result<RawResp, String> {
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n")
        .map_err(|e| format!("failed to write: {e}"))?;
    read_response(s)
}

#[test]
fn half_a_request_head_is_closed_at_the_header_timeout() {
    let (p, _dir) = start(&[
        ("HEADER_READ_TIMEOUT_SECS", "1"),
        ("IDLE_TIMEOUT_SECS", "60"),
    ]);

    // Half a head, then silence.
    let mut s = connect(&p, Duration::from_secs(1) + SLACK);
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n")
        .unwrap();
    must_close_after(&mut s, Duration::from_secs(1), "half a head");

    // A head dripped a byte at a time does not reset the timer.
    let mut s = connect(&p, Duration::from_millis(50));
    let head = b"GET /v2/ HTTP/1.1\r\nHost: berth\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let t = Instant::now();
    let mut closed = false;
    for b in head {
        if s.write_all(&[*b]).is_err() || wait_closed(&mut s) == Closed::Yes {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed,
        "a dripped head was still open after {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(1) + SLACK,
        "a dripped head was closed only after {:?}",
        t.elapsed()
    );
}

#[test]
fn idle_connections_are_closed_at_the_idle_timeout() {
    let (p, _dir) = start(&[
        ("IDLE_TIMEOUT_SECS", "2"),
        ("HEADER_READ_TIMEOUT_SECS", "60"),
    ]);

    // Kept alive after a request.
    let mut s = connect(&p, Duration::from_secs(2) + SLACK);
    let r = get_v2(&mut s).unwrap();
    assert_eq!(r.status, 200);
    must_close_after(
        &mut s,
        Duration::from_secs(2),
        "an idle kept-alive connection",
    );

    // Never sent anything.
    let mut s = connect(&p, Duration::from_secs(2) + SLACK);
    assert_eq!(
        wait_closed(&mut s),
        Closed::Yes,
        "a silent connection stayed open"
    );

    // A connection in use is not idle: requests 0.5 s apart keep it for longer than the 2 s
    // idle timeout (1.5 s of slack for a loaded machine).
    let mut s = connect(&p, Duration::from_secs(5));
    for i in 0..6 {
        let r = get_v2(&mut s).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_stalled_upload_body_fails_and_the_session_stays_usable() {
    let (p, _dir) = start(&[("BODY_STALL_TIMEOUT_SECS", "1")]);
    let client = Client::new(&p.base_url());
    let path = client.open_upload("stall").expect("open a session");

    // Declares 2 MiB, sends 1 MiB, then nothing.
    let mut s = connect(&p, Duration::from_secs(1) + 2 * SLACK);
    write!(
        s,
        "PATCH {path} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        2 << 20
    )
    .unwrap();
    s.write_all(&vec![7u8; 1 << 20]).unwrap();
    let t = Instant::now();
    match read_response(&mut s) {
        // The handler saw the body error and answered; the connection is not reused.
        Ok(r) => {
            assert!(r.status >= 400, "a stalled PATCH answered {}", r.status);
            assert_eq!(r.header("connection"), Some("close"), "{r:?}");
            assert_eq!(wait_closed(&mut s), Closed::Yes);
        }
        // Or the connection just ended; either way within the bound below (a read timeout
        // would take longer).
        Err(e) => eprintln!("the stalled PATCH ended without an answer: {e}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(1) + SLACK,
        "a stalled PATCH held the connection for {:?}",
        t.elapsed()
    );

    // The session answers, and keeps the bytes that arrived before the stall (a write still
    // finishing in the background may take a moment to show).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.get(&path).unwrap();
        assert_eq!(
            status.status,
            204,
            "upload status after the stall: {}",
            status.text()
        );
        if status.header("range") == Some("0-1048575") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session does not hold the 1 MiB received: {:?}",
            status.header("range")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_download_the_client_stops_reading_is_dropped() {
    let (p, _dir) = start(&[("WRITE_STALL_TIMEOUT_SECS", "1")]);
    let client = Client::new(&p.base_url());
    // Far more than the socket buffers on both sides hold (4 MiB send, ~128 KiB receive
    // while the client does not read).
    let blob: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
    client
        .push_blob("unread", &blob, UploadStyle::Monolithic)
        .unwrap();
    let digest = sha256_digest(&blob);

    let mut s = connect(&p, Duration::from_secs(10));
    write!(
        s,
        "GET /v2/unread/blobs/{digest} HTTP/1.1\r\nHost: berth\r\n\r\n"
    )
    .unwrap();
    // The client reads nothing for longer than the write-stall timeout: that is the scenario
    // itself, not a wait for a condition.
    std::thread::sleep(Duration::from_secs(1) + Duration::from_secs(2));
    let t = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match s.read(&mut buf) {
            Ok(0) => break "eof",
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break "read timeout";
            }
            Err(_) => break "reset",
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "still reading after 60 s"
        );
    };
    assert_ne!(
        ended, "read timeout",
        "the connection stayed open ({got} bytes read)"
    );
    assert!(
        got < blob.len(),
        "the whole blob arrived ({got} bytes): the unread download was not dropped"
    );
}

#[test]
fn connections_past_the_cap_wait_until_one_closes() {
    let (p, _dir) = start(&[("MAX_CONNECTIONS", "8"), ("IDLE_TIMEOUT_SECS", "60")]);
    // Each of 8 connections is served once, so all 8 are accepted and open.
    let mut open = Vec::new();
    for i in 0..8 {
        let mut s = connect(&p, Duration::from_secs(10));
        let r = get_v2(&mut s).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(r.status, 200);
        open.push(s);
    }
    // The 9th is not served while 8 are open.
    let mut ninth = connect(&p, Duration::from_secs(1));
    ninth
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n")
        .unwrap();
    let early = read_response(&mut ninth);
    assert!(
        early.is_err(),
        "the 9th connection was served at once: {early:?}"
    );
    // One closes: the 9th is served.
    drop(open.pop());
    ninth.set_read_timeout(Some(SLACK)).unwrap();
    let r = read_response(&mut ninth).expect("the 9th connection was not served after one closed");
    assert_eq!(r.status, 200);
    // The cap was logged once, not once per waiting connection.
    let log = p.stderr();
    assert_eq!(
        log.matches("connection limit reached").count(),
        1,
        "log:\n{}",
        p.stderr_tail(30)
    );
    assert!(
        log.contains("max_connections=8"),
        "log:\n{}",
        p.stderr_tail(30)
    );
}

#[test]
fn an_early_answer_reaches_a_client_that_writes_its_whole_body_first() {
    let (p, _dir) = start(&[]);
    let manifest = vec![b' '; 5 << 20];
    let head = |extra: &str| {
        format!(
            "PUT /v2/r/manifests/t HTTP/1.1\r\nHost: berth\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
             Content-Length: {}\r\n{extra}\r\n",
            manifest.len()
        )
    };

    // Whole body first, then read: the 413 and its OCI error arrive, and the connection
    // still serves the next request.
    let mut s = connect(&p, Duration::from_secs(30));
    s.write_all(head("").as_bytes()).unwrap();
    s.write_all(&manifest)
        .expect("the server broke the pipe while the body was being sent");
    let r = read_response(&mut s).expect("no answer after the whole body was sent");
    assert_eq!(r.status, 413, "{:?}", String::from_utf8_lossy(&r.body));
    let err: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(err["errors"][0]["code"], "MANIFEST_INVALID", "{err}");
    assert_eq!(r.header("connection"), None, "{r:?}");
    assert_eq!(get_v2(&mut s).unwrap().status, 200);

    // A client that asked to be told first (`Expect: 100-continue`) is answered at once,
    // without being asked for the body, and the connection ends.
    let mut s = connect(&p, Duration::from_secs(10));
    s.write_all(head("Expect: 100-continue\r\n").as_bytes())
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
}

#[test]
fn a_declared_body_past_the_drain_bound_is_answered_with_connection_close() {
    let (p, _dir) = start(&[("DRAIN_MAX_BYTES", "1048576")]);
    let mut s = connect(&p, Duration::from_secs(10));
    // The head only: the server answers without the body, and does not wait for 5 MiB.
    write!(
        s,
        "PUT /v2/r/manifests/t HTTP/1.1\r\nHost: berth\r\n\
         Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
        5 << 20
    )
    .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert_eq!(wait_closed(&mut s), Closed::Yes);
}

/// A berth process started with given open-file limits (set in the child before exec), which
/// `BerthProcess` cannot do. Killed when dropped.
struct LimitedBerth {
    child: std::process::Child,
    log_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl LimitedBerth {
    /// Spawns berth on port 0 and waits (bounded) for `berth is serving`.
    fn start(soft: u64, hard: u64) -> LimitedBerth {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("stderr.log");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--cluster-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap());
        for (k, _) in std::env::vars() {
            if k.starts_with("BERTH_") {
                cmd.env_remove(k);
            }
        }
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit is async-signal-safe; `lim` is a plain struct moved into the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut b = LimitedBerth {
            child: cmd.spawn().expect("spawn berth"),
            log_path,
            _dir: dir,
        };
        let deadline = Instant::now() + support::READY_TIMEOUT;
        while !b.log().contains("berth is serving") {
            assert!(
                Instant::now() < deadline,
                "berth did not start:\n{}",
                b.log()
            );
            assert!(
                b.child.try_wait().unwrap().is_none(),
                "berth exited:\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The HTTP port, from the `berth is serving listen=127.0.0.1:PORT` line.
    fn port(&self) -> u16 {
        let log = self.log();
        let at = log
            .find("listen=127.0.0.1:")
            .expect("listen address logged")
            + 17;
        let digits: String = log[at..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).unwrap()
    }

    /// User plus system CPU time so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = self.proc_file("stat");
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

impl Drop for LimitedBerth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- berth stderr ----\n{}", self.log());
        }
    }
}

#[test]
fn the_open_file_limit_is_raised_and_bounds_the_connection_cap() {
    let (_, hard) = berth_node::server::fd_limit().unwrap();
    assert!(
        hard >= 600,
        "this test needs a hard open-file limit of 600 or more"
    );
    let b = LimitedBerth::start(256, 600);
    let log = b.log();
    assert!(
        log.contains("open-file limit soft=600 hard=600 soft_at_start=256"),
        "log:\n{log}"
    );
    let limits = b.proc_file("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/<pid>/limits");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["600", "600"], "{line}");
    // 600 files: half kept in reserve, 300 for connections.
    assert!(
        log.contains("http.max_connections lowered to fit the open-file limit")
            && log.contains("max_connections=300"),
        "log:\n{log}"
    );
}

#[test]
fn running_out_of_files_neither_spins_the_accept_loop_nor_stops_serving() {
    // 40 files: about 23 in use when idle, a cap of 20 connections; the files run out first.
    let b = LimitedBerth::start(40, 40);
    let port = b.port();
    let mut open = Vec::new();
    for _ in 0..30 {
        open.push(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    }
    // The kernel queued all 30; berth accepts until `accept` fails with EMFILE, then backs
    // off. Watch it for 2 s: a loop retrying at once would burn a core.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.log().contains("failed to accept a connection") {
        assert!(Instant::now() < deadline, "no accept failure was logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = b.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = b.cpu_ticks() - before;
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used < per_sec / 2,
        "berth used {used} CPU ticks in 2 s with accept failing (spinning)"
    );
    assert_eq!(
        b.log().matches("failed to accept a connection").count(),
        1,
        "accept failures are logged once a minute"
    );
    // Files come back: berth serves again.
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        match get_v2(&mut s) {
            Ok(r) if r.status == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "GET /v2/ never worked again: {other:?}"
            ),
        }
    }
}
