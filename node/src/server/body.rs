//! Request and response bodies as the connection's service hands them to the router and
//! back to hyper.
//!
//! - [`RequestBody`] fails with [`BodyError::Stalled`] when the client sends nothing for
//!   `body_stall_timeout` while the handler waits for it (the handler sees a body error; an
//!   upload keeps what arrived before).
//! - [`BodyWatch`] keeps hold of the request body after the handler dropped it. When the
//!   handler answered without reading the whole body (a 413, a 404), [`BodyWatch::settle`]
//!   reads and discards the rest, within bounds, before the answer goes out: a client that
//!   writes its whole body before reading then gets the answer instead of a reset (a socket
//!   closed with unread data answers the peer with RST). Past the bounds the answer says
//!   `Connection: close`.
//! - [`ResponseBody`] ends the request in the connection's state when hyper drops it.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::io::InFlight;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection failed or the client broke the framing.
    #[error("failed to read the request body")]
    Read(#[source] hyper::Error),
    /// The client sent nothing for too long.
    #[error("failed to read the request body: the client sent nothing for {secs} s")]
    Stalled {
        /// The stall timeout, seconds.
        secs: u64,
    },
}

/// Where a request body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// More may come.
    Open,
    /// Read to its end.
    Done,
    /// Failed (stalled or broken); the connection cannot be reused.
    Failed,
}

#[derive(Debug)]
struct Shared {
    incoming: Incoming,
    stall: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    progress: Progress,
    /// Whether anyone asked for body data (hyper sends `100 Continue` then).
    polled: bool,
}

impl Shared {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.progress != Progress::Open {
            return Poll::Ready(None);
        }
        self.polled = true;
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.timer = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.timer = None;
                self.progress = Progress::Failed;
                Poll::Ready(Some(Err(BodyError::Read(e))))
            }
            Poll::Ready(None) => {
                self.timer = None;
                self.progress = Progress::Done;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let stall = self.stall;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.timer = None;
                    self.progress = Progress::Failed;
                    return Poll::Ready(Some(Err(BodyError::Stalled {
                        secs: stall.as_secs(),
                    })));
                }
                Poll::Pending
            }
        }
    }
}

/// The request body the router sees.
#[derive(Debug)]
pub(super) struct RequestBody(Arc<Mutex<Shared>>);

/// The service's own hold on a request body.
#[derive(Debug)]
pub(super) struct BodyWatch(Arc<Mutex<Shared>>);

/// Locks a body's state; a panic while it was held left nothing half-done that matters here.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RequestBody {
    /// Wraps hyper's body; `stall` bounds each wait for data.
    pub(super) fn new(incoming: Incoming, stall: Duration) -> (RequestBody, BodyWatch) {
        let shared = Arc::new(Mutex::new(Shared {
            incoming,
            stall,
            timer: None,
            progress: Progress::Open,
            polled: false,
        }));
        (RequestBody(shared.clone()), BodyWatch(shared))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        lock(&self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.0);
        s.progress != Progress::Open || s.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.0).incoming.size_hint()
    }
}

/// Bounds of the discarding of an unread request body.
#[derive(Debug, Clone, Copy)]
pub(super) struct DrainLimits {
    /// Most bytes read and discarded; 0: none.
    pub max_bytes: u64,
    /// Longest wait for them.
    pub timeout: Duration,
}

impl BodyWatch {
    /// Called once the handler has answered: reads and discards what is left of the request
    /// body, within `limits`. Returns whether the connection can carry another request.
    ///
    /// Not drained: a body still held by someone else (they go on reading it), a body the
    /// client was told to hold back (`Expect: 100-continue` and nobody asked for it), and a
    /// declared remainder longer than `limits.max_bytes`.
    pub(super) async fn settle(self, limits: DrainLimits, expects_continue: bool) -> bool {
        if Arc::strong_count(&self.0) > 1 {
            return true;
        }
        {
            let s = lock(&self.0);
            match s.progress {
                Progress::Done => return true,
                Progress::Failed => return false,
                Progress::Open if s.incoming.is_end_stream() => return true,
                Progress::Open => {}
            }
            if expects_continue && !s.polled {
                return false;
            }
            let declared = s.incoming.size_hint().upper();
            if limits.max_bytes == 0 || declared.is_some_and(|n| n > limits.max_bytes) {
                return false;
            }
        }
        let drain = async {
            let mut discarded = 0u64;
            loop {
                let next = std::future::poll_fn(|cx| lock(&self.0).poll_frame(cx)).await;
                match next {
                    None => return true,
                    Some(Err(_)) => return false,
                    Some(Ok(frame)) => {
                        discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
                        if discarded > limits.max_bytes {
                            return false;
                        }
                    }
                }
            }
        };
        tokio::time::timeout(limits.timeout, drain)
            .await
            .unwrap_or(false)
    }
}

/// A response body that ends its request (in the connection's state) when dropped.
pub(super) struct ResponseBody {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl ResponseBody {
    pub(super) fn new(inner: axum::body::Body, in_flight: InFlight) -> ResponseBody {
        ResponseBody {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
