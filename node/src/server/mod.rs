//! The registry's HTTP server: accepts connections on the bound listener and serves the axum
//! router on each with hyper, within bounds a hostile or careless client cannot stretch.
//!
//! Owns: the accept loop, the connection cap, per-connection timeouts (`io.rs`), request
//! body stall and early-answer draining (`body.rs`), TLS (`tls.rs`: the handshake runs in the
//! connection's task, bounded by `header_read_timeout`), graceful stop, and the process's
//! open-file limit. Knows nothing of the registry: it serves any [`axum::Router`].
//!
//! Plain TCP serves HTTP/1.1 only. TLS serves what ALPN chose: HTTP/2 for `h2`, else
//! HTTP/1.1.
//!
//! Invariants:
//! - At most `max_connections` connections are open (lowered at start to fit the open-file
//!   limit, see [`connection_cap`]); at the cap nothing is accepted until one closes, and one
//!   warning says so (at most one a minute).
//! - Accept errors never spin the loop: a failed accept (e.g. `EMFILE`) waits
//!   [`ACCEPT_BACKOFF`] before the next one.
//! - A connection in its TLS handshake holds its slot like any other, and no longer than
//!   `header_read_timeout`; the accept loop never waits for a handshake.
//! - No connection outlives [`serve`]: after `stop`, connections finish the requests in
//!   flight (idle ones close at once) for at most the grace, then are dropped.

mod body;
mod io;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use http::header::{CONNECTION, EXPECT};
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use body::BodyError;

use body::{BodyWatch, DrainLimits, RequestBody, ResponseBody};
use io::{ConnState, IoTimeouts, TimedIo};

/// How long the accept loop waits after an accept error other than a connection's own.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);
/// Least time between two warnings of the same kind from the accept loop.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Open files kept out of the connection budget (RocksDB keeps up to 256, plus blob and
/// staging files, peer connections, listeners); at most half of a small limit.
pub const FD_RESERVE: u64 = 1024;

/// Settings of the HTTP server (from `[http]` in the configuration).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// From the first byte of a request head to its end.
    pub header_read_timeout: Duration,
    /// Between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    /// A request body that sends nothing while the handler waits for it.
    pub body_stall_timeout: Duration,
    /// A response the client does not read.
    pub write_stall_timeout: Duration,
    /// Connections served at once (before [`connection_cap`]).
    pub max_connections: usize,
    /// Most bytes of an unread request body discarded after an early answer.
    pub drain_max_bytes: u64,
    /// Longest wait for that discarding.
    pub drain_timeout: Duration,
}

/// The process's open-file limit, as `(soft, hard)`.
pub fn fd_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft open-file limit to the hard one. Returns `(soft before, soft now, hard)`.
pub fn raise_fd_limit() -> std::io::Result<(u64, u64, u64)> {
    let (soft, hard) = fd_limit()?;
    if soft >= hard {
        return Ok((soft, soft, hard));
    }
    let lim = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((soft, hard, hard))
}

/// The connection cap for `configured` under a soft open-file limit: never more than the
/// limit less [`FD_RESERVE`] (or less half the limit, when that is smaller), never 0.
pub fn connection_cap(configured: usize, soft_limit: u64) -> usize {
    let reserve = FD_RESERVE.min(soft_limit / 2);
    let budget = usize::try_from(soft_limit - reserve).unwrap_or(usize::MAX);
    configured.min(budget).max(1)
}

/// Serves `router` on `listener` until `stop` is cancelled; then stops accepting, lets
/// connections finish their requests for at most `grace`, and drops the rest. With `tls`,
/// every connection is HTTPS (a client that does not complete its handshake within
/// `header_read_timeout` is dropped).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: HttpSettings,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
    grace: Duration,
) {
    let cap = match fd_limit() {
        Ok((soft, _)) => {
            let cap = connection_cap(settings.max_connections, soft);
            if cap < settings.max_connections {
                tracing::warn!(
                    configured = settings.max_connections,
                    max_connections = cap,
                    fd_soft_limit = soft,
                    "http.max_connections lowered to fit the open-file limit"
                );
            }
            cap
        }
        Err(e) => {
            tracing::warn!(error = %e, "failed to read the open-file limit");
            settings.max_connections
        }
    };
    tracing::info!(max_connections = cap, "accepting connections");
    let slots = Arc::new(Semaphore::new(cap));
    let conn = Arc::new(ConnSettings::new(&settings, router, tls));
    let mut conns = JoinSet::new();
    let mut full_warning = Every::new(WARN_EVERY);
    let mut accept_warning = Every::new(WARN_EVERY);
    loop {
        while conns.try_join_next().is_some() {}
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(suppressed) = full_warning.tick() {
                    tracing::warn!(
                        max_connections = cap,
                        times_since_last_warning = suppressed,
                        "connection limit reached: not accepting until a connection closes"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    () = stop.cancelled() => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                conns.spawn(serve_connection(
                    stream,
                    peer,
                    conn.clone(),
                    stop.clone(),
                    slot,
                ));
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                if let Some(suppressed) = accept_warning.tick() {
                    tracing::warn!(
                        error = %e,
                        times_since_last_warning = suppressed,
                        backoff_ms = ACCEPT_BACKOFF.as_millis() as u64,
                        "failed to accept a connection"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    () = stop.cancelled() => break,
                }
            }
        }
    }
    drop(listener);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = conns.join_next() => if next.is_none() { return },
            () = &mut deadline => break,
        }
    }
    tracing::warn!(
        connections = conns.len(),
        grace_secs = grace.as_secs(),
        "requests still in flight after the grace period; closing them"
    );
    conns.shutdown().await;
}

/// Errors of one connection that say nothing about the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Says yes at most once per period, counting the noes in between.
struct Every {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Every {
    fn new(period: Duration) -> Every {
        Every {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(noes since the last yes)` when the period has passed.
    fn tick(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// What every connection shares.
struct ConnSettings {
    /// HTTP/1.1 only: plain TCP, and TLS without ALPN `h2`.
    http1: auto::Builder<TokioExecutor>,
    /// HTTP/2 only: TLS with ALPN `h2`.
    http2: auto::Builder<TokioExecutor>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Longest TLS handshake (`header_read_timeout`).
    handshake_timeout: Duration,
    router: Router,
    io: IoTimeouts,
    body_stall: Duration,
    drain: DrainLimits,
}

impl ConnSettings {
    fn new(
        s: &HttpSettings,
        router: Router,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> ConnSettings {
        // HTTP/1 only over plain TCP: every registry client speaks HTTP/1.1 there, and h2c
        // would add a second protocol to bound for no client.
        let mut http1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        // hyper's own header timer also starts when a connection goes idle (hyper 1.x), so it
        // cannot tell idle from slow; `TimedIo` applies both. hyper's is set past both as a
        // backstop (it also makes hyper read again as soon as a response is done).
        http1
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(s.idle_timeout + s.header_read_timeout);
        // HTTP/2 over TLS (ALPN `h2`). Over HTTP/2 a client that stops granting flow-control
        // window leaves the server with nothing to write, so the write-stall timer never
        // starts; keep-alive pings close a connection whose client stopped answering, and a
        // stream's body stall still applies (ADR 017).
        let mut http2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        http2
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(s.write_stall_timeout))
            .keep_alive_timeout(s.write_stall_timeout);
        ConnSettings {
            http1,
            http2,
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            handshake_timeout: s.header_read_timeout,
            router,
            io: IoTimeouts {
                idle: s.idle_timeout,
                header: s.header_read_timeout,
                write_stall: s.write_stall_timeout,
            },
            body_stall: s.body_stall_timeout,
            drain: DrainLimits {
                max_bytes: s.drain_max_bytes,
                timeout: s.drain_timeout,
            },
        }
    }
}

/// Serves one connection until it closes (after its TLS handshake, when TLS is on); on
/// `stop`, finishes the requests in flight first.
async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    settings: Arc<ConnSettings>,
    stop: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let Some(acceptor) = &settings.tls else {
        serve_http(stream, &settings.http1, peer, &settings, stop).await;
        return;
    };
    let handshake = tokio::select! {
        done = tokio::time::timeout(settings.handshake_timeout, acceptor.accept(stream)) => done,
        () = stop.cancelled() => return,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not done within http.header_read_timeout_secs");
            return;
        }
    };
    let builder = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        &settings.http2
    } else {
        &settings.http1
    };
    serve_http(stream, builder, peer, &settings, stop).await;
}

/// Serves HTTP on an established connection (plain or TLS) with `builder`.
async fn serve_http<S>(
    stream: S,
    builder: &auto::Builder<TokioExecutor>,
    peer: std::net::SocketAddr,
    settings: &Arc<ConnSettings>,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::default());
    let io = TokioIo::new(TimedIo::new(stream, state.clone(), settings.io));
    let service = ConnService {
        settings: settings.clone(),
        state,
        peer,
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The service of one connection: tracks requests in flight, times request bodies, and
/// settles unread bodies before an answer goes out. Each request carries the client's address
/// as axum's `ConnectInfo` (per-client limits use it).
#[derive(Clone)]
struct ConnService {
    settings: Arc<ConnSettings>,
    state: Arc<ConnState>,
    peer: std::net::SocketAddr,
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> ServiceFuture {
        let in_flight = self.state.request_started();
        let settings = self.settings.clone();
        let peer = self.peer;
        Box::pin(async move {
            let (mut parts, incoming) = req.into_parts();
            parts.extensions.insert(axum::extract::ConnectInfo(peer));
            let expects_continue = parts
                .headers
                .get(EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            let http1 = parts.version < Version::HTTP_2;
            let (body, watch): (RequestBody, BodyWatch) =
                RequestBody::new(incoming, settings.body_stall);
            let req = Request::from_parts(parts, axum::body::Body::new(body));
            let resp = settings
                .router
                .clone()
                .oneshot(req)
                .await
                .unwrap_or_else(|never| match never {});
            let reusable = watch.settle(settings.drain, expects_continue).await;
            let (mut parts, body) = resp.into_parts();
            if !reusable && http1 {
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(Response::from_parts(
                parts,
                ResponseBody::new(body, in_flight),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cap_keeps_a_reserve_of_open_files() {
        assert_eq!(connection_cap(10_000, 1_048_576), 10_000);
        assert_eq!(connection_cap(10_000, 4096), 4096 - FD_RESERVE as usize);
        assert_eq!(connection_cap(10_000, 1024), 512);
        assert_eq!(connection_cap(10_000, 256), 128);
        assert_eq!(connection_cap(8, 256), 8);
        assert_eq!(connection_cap(10, 1), 1);
    }

    #[test]
    fn every_says_yes_once_per_period() {
        let mut e = Every::new(Duration::from_secs(3600));
        assert_eq!(e.tick(), Some(0));
        assert_eq!(e.tick(), None);
        assert_eq!(e.tick(), None);
        e.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(e.tick(), Some(2));
    }
}
