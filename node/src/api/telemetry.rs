//! What every HTTP request leaves behind: its id, its span (and so its log lines), and its
//! metrics.
//!
//! [`request_span`] is the outermost middleware of the router, so it sees every request and
//! every response, also 404s of unknown paths and `/metrics` itself:
//! - **Request id.** The client's `X-Request-Id` when it is short and plain, a new UUID
//!   otherwise ([`RequestMeta::id_from`]); every response carries it back in `X-Request-Id`,
//!   and the rest of the request runs inside [`RequestMeta::scope`], so code below (the
//!   registry, a forwarded write) can name the request.
//! - **Span.** `request_id`, `node` and `region` (so every log line of the request carries
//!   them, in both log formats), method, path, then repository, reference, status and
//!   duration. The closing event is `debug` for successes, `info` for client errors and
//!   `error` for server errors, so the default `info` level logs what needs attention without
//!   a line per pull.
//! - **Metrics** (unless `[metrics] enabled = false`): requests by route, method and status,
//!   latency to the response headers, requests in flight, and body bytes. Request bodies are
//!   counted as they are read (frames through a counting body); a response body of known size
//!   (every buffered body: manifests, lists, errors) is counted whole when the response
//!   leaves the handler, and a streamed one (blob GETs, relayed uploads) frame by frame as it
//!   is sent. Empty bodies are not wrapped. Labels are `Copy` words, never the path.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tracing::Instrument;
use tracing::field::Empty;

use super::path::{self, Route};
use crate::metrics::{HttpMethod, HttpMetrics, HttpRoute, Metrics};
use crate::types::request::RequestMeta;

/// The request id header, on requests (the client's, optional) and on every response.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// What the request middleware needs of the node: who it is, and where its metrics go.
#[derive(Debug, Clone)]
pub struct Telemetry {
    inner: Arc<TelemetryInner>,
}

#[derive(Debug)]
struct TelemetryInner {
    node: u64,
    region: String,
    /// `None` when metrics are disabled (`[metrics] enabled = false`).
    metrics: Option<Arc<Metrics>>,
}

impl Telemetry {
    /// The telemetry of node `node` in `region`; `metrics` `None` records no metrics (and the
    /// router then serves no `/metrics`).
    pub fn new(node: u64, region: &str, metrics: Option<Arc<Metrics>>) -> Telemetry {
        Telemetry {
            inner: Arc::new(TelemetryInner {
                node,
                region: region.to_string(),
                metrics,
            }),
        }
    }

    /// The metrics requests are recorded in, when enabled.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.inner.metrics.as_ref()
    }
}

/// The endpoint class of a request path (for the metrics' `route` label).
pub(super) fn classify(path: &str) -> HttpRoute {
    match path {
        "/metrics" => HttpRoute::Metrics,
        "/healthz" | "/readyz" => HttpRoute::Health,
        "/auth/token" => HttpRoute::Token,
        _ => match path.strip_prefix("/v2") {
            Some("" | "/") => HttpRoute::Base,
            // As the `/v2` handler reads it: exactly one slash after `/v2`.
            Some(rest) if rest.starts_with('/') => {
                path::parse(&rest[1..]).map_or(HttpRoute::Other, |r| route_class(&r))
            }
            _ => HttpRoute::Other,
        },
    }
}

fn route_class(route: &Route<'_>) -> HttpRoute {
    match route {
        Route::Base => HttpRoute::Base,
        Route::Catalog => HttpRoute::Catalog,
        Route::Tags(_) => HttpRoute::Tags,
        Route::Manifest(..) => HttpRoute::Manifest,
        Route::Blob(..) => HttpRoute::Blob,
        Route::Uploads(_) | Route::Upload(..) => HttpRoute::Upload,
        Route::Referrers(..) => HttpRoute::Referrers,
    }
}

/// The [`RequestMeta`] of a request: its id and what webhook payloads say of it.
fn request_meta(req: &Request) -> RequestMeta {
    let text = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let host = match text(header::HOST) {
        "" => req.uri().authority().map_or("", |a| a.as_str()),
        h => h,
    };
    RequestMeta {
        id: RequestMeta::id_from(
            req.headers()
                .get(&REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok()),
        ),
        host: RequestMeta::bounded(host),
        method: req.method().as_str().to_string(),
        user_agent: RequestMeta::bounded(text(header::USER_AGENT)),
    }
}

/// Middleware: gives the request its id, runs it inside its span and its [`RequestMeta`]
/// scope, records its metrics and logs its outcome.
pub(super) async fn request_span(
    State(telemetry): State<Telemetry>,
    req: Request,
    next: Next,
) -> Response {
    let t = &*telemetry.inner;
    let meta = request_meta(&req);
    // Valid header text: `id_from` keeps only ASCII letters, digits, `-`, `_` and `.`.
    let id_header = HeaderValue::from_str(&meta.id).expect("request ids are header text");
    let span = tracing::info_span!(
        "request",
        request_id = %meta.id,
        node = t.node,
        region = %t.region,
        method = %req.method(),
        path = %req.uri().path(),
        repository = Empty,
        reference = Empty,
        status = Empty,
        duration_ms = Empty,
    );
    let started = Instant::now();
    let recording = t.metrics.as_deref().map(|m| {
        (
            &*m.http,
            classify(req.uri().path()),
            HttpMethod::of(req.method()),
            m.http.start(),
        )
    });
    let req = match &recording {
        Some((_, route, ..)) if !is_empty(req.body()) => {
            let (http, route) = (t.metrics.as_ref().expect("recording").http.clone(), *route);
            req.map(|b| Body::new(Counted::new(b, http, route, HttpMetrics::received)))
        }
        _ => req,
    };
    let mut resp = meta.scope(next.run(req)).instrument(span.clone()).await;
    let took = started.elapsed();
    resp.headers_mut().insert(REQUEST_ID_HEADER, id_header);
    let status = resp.status().as_u16();
    if let Some((http, route, method, in_flight)) = recording {
        http.done(route, method, status, took);
        match resp.body().size_hint().exact() {
            Some(n) => http.sent(route, n),
            None => {
                let http = t.metrics.as_ref().expect("recording").http.clone();
                resp = resp.map(|b| Body::new(Counted::new(b, http, route, HttpMetrics::sent)));
            }
        }
        drop(in_flight);
    }
    span.record("status", status);
    span.record("duration_ms", took.as_secs_f64() * 1000.0);
    let _entered = span.enter();
    match status {
        500.. => tracing::error!("request failed"),
        404 => tracing::debug!("request found nothing"),
        400..=499 => tracing::info!("request refused"),
        _ => tracing::debug!("request done"),
    }
    resp
}

/// Whether a body is known to be empty (not worth counting).
fn is_empty(body: &Body) -> bool {
    body.size_hint().exact() == Some(0)
}

/// A body that counts the bytes of its data frames as they pass (`count`: received or
/// sent, of `route`).
struct Counted {
    inner: Body,
    http: Arc<HttpMetrics>,
    route: HttpRoute,
    count: fn(&HttpMetrics, HttpRoute, u64),
}

impl Counted {
    fn new(
        inner: Body,
        http: Arc<HttpMetrics>,
        route: HttpRoute,
        count: fn(&HttpMetrics, HttpRoute, u64),
    ) -> Counted {
        Counted {
            inner,
            http,
            route,
            count,
        }
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            (self.count)(&self.http, self.route, data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Records the repository and reference of the routed request on the current span.
pub(super) fn record_route(route: &Route<'_>) {
    let span = tracing::Span::current();
    let (name, reference) = match route {
        Route::Base | Route::Catalog => return,
        Route::Tags(n) | Route::Uploads(n) => (*n, None),
        Route::Manifest(n, r)
        | Route::Blob(n, r)
        | Route::Upload(n, r)
        | Route::Referrers(n, r) => (*n, Some(*r)),
    };
    span.record("repository", name);
    if let Some(r) = reference {
        span.record("reference", r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified_into_fixed_routes() {
        for (path, route) in [
            ("/v2", HttpRoute::Base),
            ("/v2/", HttpRoute::Base),
            ("/v2/_catalog", HttpRoute::Catalog),
            ("/v2/a/b/tags/list", HttpRoute::Tags),
            ("/v2/a/manifests/latest", HttpRoute::Manifest),
            ("/v2/a/blobs/sha256:00", HttpRoute::Blob),
            ("/v2/a/blobs/uploads/", HttpRoute::Upload),
            ("/v2/a/blobs/uploads/1-ff", HttpRoute::Upload),
            ("/v2/a/referrers/sha256:00", HttpRoute::Referrers),
            ("/auth/token", HttpRoute::Token),
            ("/metrics", HttpRoute::Metrics),
            ("/healthz", HttpRoute::Health),
            ("/readyz", HttpRoute::Health),
            ("/", HttpRoute::Other),
            ("/metrics/x", HttpRoute::Other),
            ("/v2x/a/manifests/b", HttpRoute::Other),
            ("/v2/a", HttpRoute::Other),
            ("/v2//a/manifests/b", HttpRoute::Manifest),
        ] {
            assert_eq!(classify(path), route, "{path}");
        }
    }

    #[tokio::test]
    async fn a_counted_body_counts_its_data_frames() {
        use http_body_util::BodyExt;
        let m = Metrics::new(1, "eu", "a");
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let counted = Counted::new(body, m.http.clone(), HttpRoute::Blob, HttpMetrics::sent);
        let all = counted.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"hello world");
        let counted = Counted::new(
            Body::from("abc"),
            m.http.clone(),
            HttpRoute::Upload,
            HttpMetrics::received,
        );
        counted.collect().await.unwrap();
        let text = m.render();
        assert!(
            text.contains("berth_http_sent_bytes_total{route=\"blob\"} 11"),
            "{text}"
        );
        assert!(
            text.contains("berth_http_received_bytes_total{route=\"upload\"} 3"),
            "{text}"
        );
    }
}
