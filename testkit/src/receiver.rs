//! A webhook receiver for tests: a small HTTP/1.1 server on loopback that records every
//! request it is sent and answers with a status the test chooses; it can go down (stop
//! listening: connections are refused) and come back on the same port.
//!
//! One thread accepts; each connection is read and answered on that thread (`Connection:
//! close`), with a 5 s read deadline, so a test's receiver never hangs a test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A request the receiver was sent.
#[derive(Debug, Clone)]
pub struct Received {
    /// The method.
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Decides, per request, something to do before answering (e.g. check a node's disk).
pub type Check = Box<dyn Fn(&Received) + Send + Sync>;

struct Shared {
    received: Mutex<Vec<Received>>,
    status: AtomicU16,
    check: Mutex<Option<Check>>,
}

/// A running receiver. Stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    serving: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port, answering 200.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("failed to bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            status: AtomicU16::new(200),
            check: Mutex::new(None),
        });
        let mut r = Receiver {
            addr,
            shared,
            serving: None,
        };
        r.serve(listener);
        r
    }

    /// Its URL (`http://127.0.0.1:PORT/hook`).
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers every next request with `status`.
    pub fn answer(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Runs `check` on every next request before answering it.
    pub fn check(&self, check: Check) {
        *self.shared.check.lock().unwrap() = Some(check);
    }

    /// Stops listening: connections are refused until [`Receiver::up`].
    pub fn down(&mut self) {
        if let Some((stop, handle)) = self.serving.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
    }

    /// Listens again on the same port (retrying the bind for up to 10 s).
    pub fn up(&mut self) {
        if self.serving.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("failed to bind {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits (up to `bound`) until `done` holds of what was received; returns it either way.
    pub fn wait_for(&self, bound: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + bound;
        loop {
            let r = self.received();
            if done(&r) || Instant::now() >= deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn serve(&mut self, listener: TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let shared = self.shared.clone();
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => handle(conn, &shared),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        self.serving = Some((stop, handle));
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

/// Reads one request from `conn`, records it and answers it.
fn handle(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len.min(16 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let status = shared.status.load(Ordering::SeqCst);
    let r = Received {
        method,
        path,
        headers,
        body,
        status,
    };
    if let Some(check) = shared.check.lock().unwrap().as_ref() {
        check(&r);
    }
    let text = if (200..300).contains(&status) {
        "received"
    } else {
        "receiver refuses"
    };
    let mut conn = conn;
    let answer = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    if conn.write_all(answer.as_bytes()).is_ok() {
        shared.received.lock().unwrap().push(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal client: one POST over a plain TCP connection.
    fn post(url: &str, body: &str) -> Result<u16, String> {
        let addr = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let mut c = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
        write!(
            c,
            "POST /hook HTTP/1.1\r\nHost: {addr}\r\nX-Token: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut s = String::new();
        c.read_to_string(&mut s).map_err(|e| e.to_string())?;
        s.split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .ok_or(s)
    }

    #[test]
    fn records_answers_and_goes_down_and_up() {
        let mut r = Receiver::start();
        assert_eq!(post(&r.url(), "{\"a\":1}"), Ok(200));
        r.answer(503);
        assert_eq!(post(&r.url(), "x"), Ok(503));
        let got = r.received();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].json()["a"], 1);
        assert_eq!(got[0].header("x-token"), Some("t"));
        assert_eq!(got[1].status, 503);
        r.down();
        assert!(post(&r.url(), "x").is_err());
        r.up();
        r.answer(200);
        assert_eq!(post(&r.url(), "y"), Ok(200));
        assert_eq!(r.received().len(), 3);
    }
}
