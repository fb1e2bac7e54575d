//! The socket of one HTTP connection, wrapped so that waiting on the network is bounded.
//!
//! A read or write that returns `Pending` arms a timer whose length depends on what the
//! connection is doing ([`ConnState`], kept by the connection's service):
//!
//! - no request in flight, nothing of a new one received: `idle_timeout`, from the first wait;
//! - no request in flight, part of a request head received: `header_read_timeout`, from the
//!   head's first byte (a total, so a client sending one byte a second does not reset it);
//! - a request in flight: no read timer here (the request body has its own stall timer, see
//!   `body.rs`, and a handler may legitimately take long before it answers);
//! - a write that cannot proceed (the client does not read): `write_stall_timeout`, from the
//!   first wait, reset by every byte written.
//!
//! When a timer fires the read or write fails with `TimedOut`, and hyper closes the connection.
//! Invariant: a timer is only ever polled from `poll_read` / `poll_write` (no task of its own),
//! so an idle connection costs one socket and one timer entry.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What a connection is doing, shared by its socket wrapper and its service.
#[derive(Debug, Default)]
pub(super) struct ConnState {
    /// Requests whose response body has not been dropped yet.
    in_flight: AtomicUsize,
    /// Requests started on this connection (a new one ends the current head's timer).
    started: AtomicU64,
    /// The task waiting to read: woken when the last request in flight ends, so that the idle
    /// timer starts even when hyper would not read again until the client sends.
    reader: AtomicWaker,
}

impl ConnState {
    /// Marks a request as started; the returned guard ends it when dropped.
    pub(super) fn request_started(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// A request in flight; dropping it (with the response body) ends the request.
#[derive(Debug)]
pub(super) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// The timeouts a [`TimedIo`] applies.
#[derive(Debug, Clone, Copy)]
pub(super) struct IoTimeouts {
    /// Between requests.
    pub idle: Duration,
    /// From the first byte of a request head to its end.
    pub header: Duration,
    /// A write that makes no progress.
    pub write_stall: Duration,
}

/// Why a read is waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadWait {
    /// Between requests.
    Idle,
    /// Inside a request head.
    Head,
}

impl ReadWait {
    fn error(self) -> io::Error {
        let what = match self {
            ReadWait::Idle => "connection idle for longer than http.idle_timeout_secs",
            ReadWait::Head => "request head not received within http.header_read_timeout_secs",
        };
        io::Error::new(io::ErrorKind::TimedOut, what)
    }
}

/// A socket whose reads and writes fail with `TimedOut` after waiting too long.
pub(super) struct TimedIo<S> {
    io: S,
    conn: Arc<ConnState>,
    limits: IoTimeouts,
    /// `conn.started` when the current head began (or when last seen).
    seen_started: u64,
    /// Deadline of the request head being received, if one began.
    head_deadline: Option<Instant>,
    read_timer: Option<(ReadWait, Pin<Box<Sleep>>)>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<S> TimedIo<S> {
    pub(super) fn new(io: S, conn: Arc<ConnState>, limits: IoTimeouts) -> TimedIo<S> {
        TimedIo {
            io,
            conn,
            limits,
            seen_started: 0,
            head_deadline: None,
            read_timer: None,
            write_timer: None,
        }
    }

    /// After a read returned `Pending`: arms (or polls) the timer the connection's state calls
    /// for; `Err` once it has fired.
    fn wait_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.reader.register(cx.waker());
        // Read after registering: a request that ends now wakes this task again.
        if !self.conn.idle() {
            self.read_timer = None;
            return Poll::Pending;
        }
        let (wait, deadline) = match self.head_deadline {
            Some(d) => (ReadWait::Head, d),
            None => (ReadWait::Idle, Instant::now() + self.limits.idle),
        };
        let rearm = match &self.read_timer {
            Some((w, timer)) => {
                *w != wait || (wait == ReadWait::Head && timer.deadline() != deadline)
            }
            None => true,
        };
        if rearm {
            self.read_timer = Some((wait, Box::pin(tokio::time::sleep_until(deadline))));
        }
        let (_, timer) = self.read_timer.as_mut().expect("armed above");
        if timer.as_mut().poll(cx).is_ready() {
            self.read_timer = None;
            return Poll::Ready(Err(wait.error()));
        }
        Poll::Pending
    }

    /// Passes a write's outcome through, arming the stall timer while it waits.
    fn on_write<T>(
        &mut self,
        res: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if res.is_ready() {
            self.write_timer = None;
            return res;
        }
        let stall = self.limits.write_stall;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if timer.as_mut().poll(cx).is_ready() {
            self.write_timer = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client read nothing for longer than http.write_stall_timeout_secs",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let started = this.conn.started.load(Ordering::Acquire);
        if started != this.seen_started {
            // A request began since the last read: its head is complete.
            this.seen_started = started;
            this.head_deadline = None;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.wait_read(cx),
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    if matches!(this.read_timer, Some((ReadWait::Idle, _))) {
                        this.read_timer = None;
                    }
                    if this.head_deadline.is_none() && this.conn.idle() {
                        this.head_deadline = Some(Instant::now() + this.limits.header);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write(cx, buf);
        self.on_write(res, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.on_write(res, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.io).poll_flush(cx);
        self.on_write(res, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.io).poll_shutdown(cx);
        self.on_write(res, cx)
    }
}
