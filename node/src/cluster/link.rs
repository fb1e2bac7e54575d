//! The in-process delay proxy of the fault layer (`fault-injection` builds only): the
//! connector of every channel this node dials to a peer, and the pump that carries the
//! connection's bytes through the peer's [`Link`].
//!
//! The connector opens the real TCP connection (and, for a peer with a delay, waits one
//! emulated round trip, as a TCP handshake over that path would), then hands tonic one end of
//! an in-memory pipe; a task pumps bytes between the other end and the socket, in both
//! directions. Each direction emulates a link: a chunk read at time `t` leaves the bottleneck
//! when the chunks before it have (at `bandwidth` bytes/s), and is delivered `delay` later.
//! Order is kept, and reading goes on while earlier chunks are in flight, so throughput is
//! not divided by the delay (up to [`PIPE_LIMIT`] bytes in flight per direction). The queue
//! in front of the bottleneck holds at most [`QUEUE_TIME`] of traffic, as a router's buffer
//! would; beyond it the pump stops reading and the sender is held back.
//!
//! The bottleneck of each direction is shared by every connection to the peer (this node has
//! one per [`super::Lane`]): the emulated path is one queue, as a real one is.
//!
//! The link is read again for every chunk, so a change applies to open connections. When the
//! peer gets blocked (a test partition) the pump closes both ends at once: every stream on
//! the connection ends, as with a network that drops everything.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

use super::faults::{Faults, Link};
use super::peers::CONNECT_TIMEOUT;
use crate::meta::NodeId;

/// Bytes delivered but not yet released, per direction of a connection.
pub const PIPE_LIMIT: usize = 8 * 1024 * 1024;
/// Most traffic queued in front of a capped link, in time at its bandwidth.
pub const QUEUE_TIME: Duration = Duration::from_millis(50);
/// Buffer of the in-memory pipe between tonic and the pump.
const APP_BUFFER: usize = 64 * 1024;
/// Largest chunk read at once.
const MAX_CHUNK: usize = 64 * 1024;

/// The connector of a channel to `node`: TCP through the node's link (see the module docs).
pub fn connector(
    node: NodeId,
    faults: Arc<Faults>,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<DuplexStream>,
    Error = std::io::Error,
    Future = BoxFuture<'static, std::io::Result<TokioIo<DuplexStream>>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: http::Uri| {
        let faults = faults.clone();
        let fut: BoxFuture<'static, std::io::Result<TokioIo<DuplexStream>>> =
            Box::pin(async move {
                if faults.is_blocked(node) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        format!("node {node} is cut off by a test partition"),
                    ));
                }
                let addr = uri
                    .authority()
                    .map(|a| a.as_str().to_string())
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("no host:port in {uri}"),
                        )
                    })?;
                let tcp =
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
                        .await
                        .map_err(|_| {
                            std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("no connection to {addr} within {CONNECT_TIMEOUT:?}"),
                            )
                        })??;
                tcp.set_nodelay(true)?;
                if let Some(link) = faults.link(node) {
                    // The handshake's round trip over the emulated path.
                    tokio::time::sleep(link.delay * 2).await;
                }
                Ok(TokioIo::new(splice(tcp, node, faults)))
            });
        fut
    })
}

/// Pumps `tcp` through the link to `node`; returns the end tonic uses.
fn splice(tcp: tokio::net::TcpStream, node: NodeId, faults: Arc<Faults>) -> DuplexStream {
    let (app, proxy) = tokio::io::duplex(APP_BUFFER);
    let (proxy_r, proxy_w) = tokio::io::split(proxy);
    let (tcp_r, tcp_w) = tcp.into_split();
    let out = tokio::spawn(pump(proxy_r, tcp_w, node, faults.clone(), true));
    let back = tokio::spawn(pump(tcp_r, proxy_w, node, faults.clone(), false));
    let blocked = faults.blocked(node);
    tokio::spawn(async move {
        let (out_abort, back_abort) = (out.abort_handle(), back.abort_handle());
        tokio::select! {
            () = blocked => {
                tracing::debug!(peer = node, "test partition: closing a connection to the peer");
                out_abort.abort();
                back_abort.abort();
            }
            _ = async { let _ = out.await; let _ = back.await; } => {}
        }
    });
    app
}

/// One chunk on its way.
struct InFlight {
    /// When it reaches the other end.
    arrival: Instant,
    bytes: Bytes,
}

/// The bottleneck of one direction of a link, shared by the connections over it.
pub type SharedBottleneck = Arc<std::sync::Mutex<Bottleneck>>;

/// When the bottleneck of one direction is free again, and what it implies for each chunk.
#[derive(Debug)]
pub struct Bottleneck {
    free_at: Instant,
    last_arrival: Instant,
}

impl Default for Bottleneck {
    fn default() -> Bottleneck {
        Bottleneck::new(Instant::now())
    }
}

impl Bottleneck {
    fn new(now: Instant) -> Bottleneck {
        Bottleneck {
            free_at: now,
            last_arrival: now,
        }
    }

    /// The arrival time of `len` bytes read at `now` over `link` (order kept).
    fn schedule(&mut self, now: Instant, len: usize, link: Link) -> Instant {
        let start = self.free_at.max(now);
        let serialise = match link.bandwidth {
            Some(bw) if bw > 0 => Duration::from_secs_f64(len as f64 / bw as f64),
            _ => Duration::ZERO,
        };
        self.free_at = start + serialise;
        let arrival = (self.free_at + link.delay).max(self.last_arrival);
        self.last_arrival = arrival;
        arrival
    }

    /// When reading may go on: once the queue in front of the bottleneck is under
    /// [`QUEUE_TIME`].
    fn readable_at(&self) -> Instant {
        self.free_at.checked_sub(QUEUE_TIME).unwrap_or(self.free_at)
    }
}

/// Bytes to read at once over `link`: about 10 ms of a capped link, so the bottleneck is
/// shared finely between the streams of the connection.
fn chunk_size(link: Link) -> usize {
    match link.bandwidth {
        Some(bw) if bw > 0 => ((bw / 100) as usize).clamp(1024, MAX_CHUNK),
        _ => MAX_CHUNK,
    }
}

/// Carries one direction's bytes (`outbound`: from this node) from `src` to `dst` through the
/// link to `node`, until `src` ends (then `dst` is shut down after the last byte) or either side
/// fails.
async fn pump<R, W>(mut src: R, mut dst: W, node: NodeId, faults: Arc<Faults>, outbound: bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut queue: VecDeque<InFlight> = VecDeque::new();
    let mut queued = 0usize;
    let bottleneck = faults.bottleneck(node, outbound);
    let mut eof = false;
    let mut buf = BytesMut::new();
    loop {
        if eof && queue.is_empty() {
            let _ = dst.shutdown().await;
            return;
        }
        let link = faults.link(node).unwrap_or_default();
        let room = !eof && queued < PIPE_LIMIT;
        let readable_at = bottleneck
            .lock()
            .expect("bottleneck poisoned")
            .readable_at();
        let now = Instant::now();
        let head = queue.front().map(|c| c.arrival);
        tokio::select! {
            biased;
            () = sleep_until_opt(head) => {
                let chunk = queue.pop_front().expect("a head to release");
                queued -= chunk.bytes.len();
                if dst.write_all(&chunk.bytes).await.is_err() {
                    return;
                }
            }
            read = async {
                buf.reserve(chunk_size(link));
                let want = chunk_size(link);
                let mut limited = (&mut src).take(want as u64);
                limited.read_buf(&mut buf).await
            }, if room && readable_at <= now => {
                match read {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        let bytes = buf.split_to(n).freeze();
                        let arrival = bottleneck
                            .lock()
                            .expect("bottleneck poisoned")
                            .schedule(Instant::now(), n, link);
                        queued += n;
                        queue.push_back(InFlight { arrival, bytes });
                    }
                    Err(_) => return,
                }
            }
            () = tokio::time::sleep_until(readable_at), if room && readable_at > now => {}
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Delay only: every chunk arrives `delay` after it was read, however many are in flight.
    #[test]
    fn delay_alone_keeps_throughput() {
        let t0 = Instant::now();
        let mut b = Bottleneck::new(t0);
        let link = Link {
            delay: 100 * MS,
            bandwidth: None,
        };
        assert_eq!(b.schedule(t0, 1000, link), t0 + 100 * MS);
        assert_eq!(b.schedule(t0 + MS, 1000, link), t0 + 101 * MS);
        assert!(b.readable_at() <= t0);
    }

    /// A capped link serialises chunks one after another, then adds the delay; reading stops
    /// while more than QUEUE_TIME waits in front of it.
    #[test]
    fn bandwidth_serialises_and_bounds_the_queue() {
        let t0 = Instant::now();
        let mut b = Bottleneck::new(t0);
        let link = Link {
            delay: 10 * MS,
            bandwidth: Some(1_000_000),
        };
        // 10 kB at 1 MB/s: 10 ms on the wire.
        assert_eq!(b.schedule(t0, 10_000, link), t0 + 20 * MS);
        assert_eq!(b.schedule(t0, 10_000, link), t0 + 30 * MS);
        assert!(b.readable_at() <= t0);
        for _ in 0..8 {
            b.schedule(t0, 10_000, link);
        }
        // 100 ms queued: read again once it is down to 50 ms.
        assert_eq!(b.readable_at(), t0 + 50 * MS);
    }

    /// A shorter delay set while chunks are in flight does not reorder them.
    #[test]
    fn a_shorter_delay_keeps_order() {
        let t0 = Instant::now();
        let mut b = Bottleneck::new(t0);
        let slow = Link {
            delay: 100 * MS,
            bandwidth: None,
        };
        let fast = Link::default();
        let first = b.schedule(t0, 10, slow);
        let second = b.schedule(t0 + MS, 10, fast);
        assert!(second >= first);
    }

    async fn echo_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn dial(
        faults: &Arc<Faults>,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<DuplexStream> {
        let mut c = connector(2, faults.clone());
        let uri: http::Uri = format!("http://{addr}").parse().unwrap();
        tower::Service::call(&mut c, uri)
            .await
            .map(TokioIo::into_inner)
    }

    /// A round trip through a link of 40 ms each way takes at least 80 ms, and the bytes come
    /// back intact and in order.
    #[tokio::test]
    async fn a_round_trip_pays_the_delay_twice() {
        let addr = echo_server().await;
        let faults = Arc::new(Faults::new());
        faults.set_links(
            [(
                2,
                Link {
                    delay: 40 * MS,
                    bandwidth: None,
                },
            )]
            .into(),
        );
        let mut conn = dial(&faults, addr).await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let started = Instant::now();
        let (mut r, mut w) = tokio::io::split(&mut conn);
        let send = async {
            w.write_all(&data).await.unwrap();
        };
        let mut back = vec![0u8; data.len()];
        let recv = async {
            r.read_exact(&mut back).await.unwrap();
        };
        tokio::join!(send, recv);
        assert!(started.elapsed() >= 80 * MS, "{:?}", started.elapsed());
        assert_eq!(back, data);
    }

    /// Blocking the peer closes an open connection and refuses new ones.
    #[tokio::test]
    async fn blocking_the_peer_closes_its_connections() {
        let addr = echo_server().await;
        let faults = Arc::new(Faults::new());
        let mut conn = dial(&faults, addr).await.unwrap();
        conn.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        conn.read_exact(&mut four).await.unwrap();
        faults.set_blocked([2].into());
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
            .await
            .expect("the connection was not closed");
        assert!(read.is_err() || rest.is_empty(), "{read:?}");
        let err = dial(&faults, addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
