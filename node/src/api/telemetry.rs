//! One tracing span per request: method, path, repository, reference, status, duration.
//!
//! The closing event is `debug` for successes, `info` for client errors and `error` for server
//! errors, so the default `info` level logs what needs attention without a line per pull.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing::field::Empty;

use super::path::Route;

/// Middleware: runs the request inside its span and logs its outcome.
pub(super) async fn request_span(req: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        repository = Empty,
        reference = Empty,
        status = Empty,
        duration_ms = Empty,
    );
    let started = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("status", status);
    span.record("duration_ms", started.elapsed().as_secs_f64() * 1000.0);
    let _entered = span.enter();
    match status {
        500.. => tracing::error!("request failed"),
        404 => tracing::debug!("request found nothing"),
        400..=499 => tracing::info!("request refused"),
        _ => tracing::debug!("request done"),
    }
    resp
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
