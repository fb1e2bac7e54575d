//! The auth adapter of the HTTP front: the check in front of every `/v2/` request (network
//! rules, credentials, the grant the endpoint needs) and the token endpoint `/auth/token`
//! (Docker token auth: GET with Basic credentials, and the OAuth2 POST form with the
//! `password` and `refresh_token` grants). The decisions are `crate::auth`'s, and so is the
//! audit of refusals and tokens; a password login at the token endpoint is recorded here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Extension;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Code};
use super::path::Route;
use super::{json_response, query, query_param};
use crate::audit::AuditEvent;
use crate::auth::grants::{self, Scope};
use crate::auth::{Auth, AuthError, Caller, Need};

/// Largest token request body read (a form with a few scopes and a refresh token).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The connection's peer address, when the server recorded it.
pub(super) fn peer_ip(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok())
}

/// The response of a refused request: 401 with a challenge naming `scope`, 403, 429 or 503.
pub(super) fn refusal(
    auth: &Auth,
    headers: &HeaderMap,
    e: AuthError,
    scope: Option<&str>,
) -> ApiError {
    let challenge = |error: Option<&str>| auth.challenge(host(headers), scope, error);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
    match e {
        AuthError::Unauthorized(msg) => ApiError::new(Code::Unauthorized).message(msg).header(
            header::WWW_AUTHENTICATE,
            challenge(bearer.then_some("invalid_token")),
        ),
        AuthError::InsufficientScope(msg) => ApiError::new(Code::Unauthorized)
            .message(format!("the token does not grant {msg}"))
            .header(
                header::WWW_AUTHENTICATE,
                challenge(Some("insufficient_scope")),
            ),
        AuthError::Denied(msg) => ApiError::new(Code::Denied).message(msg),
        AuthError::TooManyRequests(wait) => ApiError::new(Code::TooManyRequests)
            .message(AuthError::TooManyRequests(wait).to_string())
            .header(header::RETRY_AFTER, wait.as_secs().max(1).to_string()),
        AuthError::Unavailable(msg) => ApiError::new(Code::Unavailable).message(msg),
    }
}

/// What a `/v2/` endpoint needs on which repository; `None` for the base and the catalog
/// (checked on their own) and for methods the endpoint does not answer (a 405 follows).
fn needs<'a>(route: &Route<'a>, method: &Method) -> Option<(&'a str, Need)> {
    let read = matches!(*method, Method::GET | Method::HEAD);
    match route {
        Route::Base | Route::Catalog => None,
        Route::Tags(name) if read => Some((name, Need::ListTags)),
        Route::Manifest(name, _) | Route::Blob(name, _) if read => Some((name, Need::Pull)),
        Route::Referrers(name, _) if read => Some((name, Need::Pull)),
        Route::Manifest(name, _) if *method == Method::PUT => Some((name, Need::Push)),
        Route::Manifest(name, _) | Route::Blob(name, _) if *method == Method::DELETE => {
            Some((name, Need::Delete))
        }
        Route::Uploads(name) | Route::Upload(name, _) => Some((name, Need::Push)),
        _ => None,
    }
}

/// The check in front of a `/v2/` request: returns who is asking and from which address, or
/// the refusal. A cross-repository mount whose source the caller may not read becomes a plain
/// upload (as in Distribution): the `mount` and `from` parameters are dropped from the request.
pub(super) async fn gate(
    auth: &Auth,
    route: &Route<'_>,
    req: &mut Request,
) -> Result<(Caller, Option<IpAddr>), ApiError> {
    let addr = auth.client_addr(req.headers(), peer_ip(req));
    let method = req.method().clone();
    let caller = check(auth, route, &method, req.headers(), addr).await?;
    if let Route::Uploads(_) = route
        && *req.method() == Method::POST
    {
        let q = query(req);
        if let Some(from) = query_param(&q, "from")
            && query_param(&q, "mount").is_some()
            && (auth.check(&caller, from, Need::Pull).is_err()
                || auth.check_network(addr, Some(from)).is_err())
        {
            let kept: Vec<&(String, String)> = q
                .iter()
                .filter(|(k, _)| k != "mount" && k != "from")
                .collect();
            let mut uri = req.uri().path().to_string();
            if !kept.is_empty() {
                uri.push('?');
                uri.push_str(&serde_urlencoded::to_string(&kept).expect("query encodes"));
            }
            if let Ok(u) = uri.parse() {
                *req.uri_mut() = u;
            }
        }
    }
    Ok((caller, addr))
}

/// Network rules, credentials and the grant `route` needs, for a client at `addr`.
async fn check(
    auth: &Auth,
    route: &Route<'_>,
    method: &Method,
    headers: &HeaderMap,
    addr: Option<IpAddr>,
) -> Result<Caller, ApiError> {
    let target = needs(route, method);
    // A name that is no repository name is refused before it reaches a challenge header.
    if let Some((name, _)) = target {
        crate::registry::parse_name(name)?;
    }
    let scope = match (route, &target) {
        (Route::Catalog, _) => Some("registry:catalog:*".to_string()),
        (_, Some((name, need))) => Some(format!("repository:{name}:{}", need.challenge_actions())),
        _ => None,
    };
    let refuse = |e| refusal(auth, headers, e, scope.as_deref());
    auth.check_network(addr, target.map(|(n, _)| n))
        .map_err(refuse)?;
    let caller = auth.caller(headers, addr).await.map_err(refuse)?;
    let checked = match (route, target) {
        (Route::Base, _) => auth.check_base(&caller),
        (Route::Catalog, _) => auth.check_catalog(&caller),
        (_, Some((name, need))) => auth.check(&caller, name, need),
        _ => Ok(()),
    };
    checked.map_err(refuse)?;
    Ok(caller)
}

/// `GET /auth/token`: Basic credentials (or none: an anonymous token), `service`, `scope`
/// (repeatable), `offline_token`, `account`.
pub(super) async fn token_get(Extension(auth): Extension<Arc<Auth>>, req: Request) -> Response {
    let q = query(&req);
    let addr = auth.client_addr(req.headers(), peer_ip(&req));
    let headers = req.headers().clone();
    let scopes = scopes(
        q.iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    );
    let offline = query_param(&q, "offline_token") == Some("true");
    let result = async {
        auth.check_network(addr, None)?;
        let who = match headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(crate::auth::parse_basic)
        {
            None => None,
            Some(None) => {
                return Err(AuthError::Unauthorized(
                    "the token endpoint takes Basic credentials".into(),
                ));
            }
            Some(Some((name, password))) => {
                if let Some(account) = query_param(&q, "account")
                    && account != name
                {
                    return Err(AuthError::Unauthorized(
                        "account does not match the credentials".into(),
                    ));
                }
                let stamp = auth.login(&name, &password, addr).await?;
                auth.audit()
                    .record(Some(&name), addr, AuditEvent::LoginSucceeded);
                Some((name, stamp))
            }
        };
        auth.issue(
            who.as_ref().map(|(n, s)| (n.as_str(), *s)),
            &scopes,
            offline,
            addr,
        )
    }
    .await;
    token_response(&auth, &headers, result, false)
}

/// `POST /auth/token`: the OAuth2 form (`grant_type` `password` with `username` and
/// `password`, or `refresh_token` with `refresh_token`; `scope` space-separated;
/// `access_type=offline` asks for a refresh token).
pub(super) async fn token_post(Extension(auth): Extension<Arc<Auth>>, req: Request) -> Response {
    let addr = auth.client_addr(req.headers(), peer_ip(&req));
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(Code::Unsupported)
                .status(StatusCode::BAD_REQUEST)
                .message("token request form too large or unreadable")
                .into_response();
        }
    };
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let field = |k: &str| query_param(&form, k);
    let scopes = scopes(
        form.iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    );
    let result = async {
        auth.check_network(addr, None)?;
        match field("grant_type") {
            Some("password") => {
                let (Some(name), Some(password)) = (field("username"), field("password")) else {
                    return Err(AuthError::Unauthorized(
                        "username and password required".into(),
                    ));
                };
                let stamp = auth.login(name, password, addr).await?;
                auth.audit()
                    .record(Some(name), addr, AuditEvent::LoginSucceeded);
                let offline = field("access_type") == Some("offline");
                auth.issue(Some((name, stamp)), &scopes, offline, addr)
            }
            Some("refresh_token") => {
                let token = field("refresh_token").unwrap_or_default();
                auth.refresh(token, &scopes, addr)
            }
            other => Err(AuthError::Unauthorized(format!(
                "unsupported grant_type {:?} (password or refresh_token)",
                other.unwrap_or("")
            ))),
        }
    }
    .await;
    token_response(&auth, &headers, result, true)
}

/// Scopes from `scope` values (each may hold several, space-separated); bad ones are skipped.
fn scopes<'a>(values: impl Iterator<Item = &'a str>) -> Vec<Scope> {
    values
        .flat_map(|v| v.split(' '))
        .filter_map(grants::parse_scope)
        .take(crate::auth::MAX_SCOPES)
        .collect()
}

fn token_response(
    auth: &Auth,
    headers: &HeaderMap,
    result: Result<crate::auth::Issued, AuthError>,
    oauth: bool,
) -> Response {
    match result {
        Ok(t) => {
            let mut body = serde_json::json!({
                "token": t.token,
                "access_token": t.token,
                "expires_in": t.expires_in,
                "issued_at": crate::types::time::rfc3339(t.issued_at),
            });
            if oauth {
                body["scope"] = t.scope.into();
            }
            if let Some(r) = t.refresh_token {
                body["refresh_token"] = r.into();
            }
            json_response(
                StatusCode::OK,
                serde_json::to_vec(&body).expect("json encodes"),
            )
        }
        Err(e) => refusal(auth, headers, e, None).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_repository_endpoint_needs_a_grant() {
        let cases = [
            (Route::Tags("a"), Method::GET, Some(Need::ListTags)),
            (Route::Manifest("a", "t"), Method::HEAD, Some(Need::Pull)),
            (Route::Manifest("a", "t"), Method::PUT, Some(Need::Push)),
            (
                Route::Manifest("a", "t"),
                Method::DELETE,
                Some(Need::Delete),
            ),
            (Route::Blob("a", "d"), Method::GET, Some(Need::Pull)),
            (Route::Blob("a", "d"), Method::DELETE, Some(Need::Delete)),
            (Route::Uploads("a"), Method::POST, Some(Need::Push)),
            (Route::Upload("a", "u"), Method::PATCH, Some(Need::Push)),
            (Route::Upload("a", "u"), Method::GET, Some(Need::Push)),
            (Route::Referrers("a", "d"), Method::GET, Some(Need::Pull)),
            (Route::Blob("a", "d"), Method::PUT, None),
        ];
        for (route, method, want) in cases {
            assert_eq!(
                needs(&route, &method).map(|(_, n)| n),
                want,
                "{route:?} {method}"
            );
        }
    }
}
