//! Authentication and authorisation of the registry port (docs/security.md, ADR 019).
//!
//! - Credentials: `Authorization: Basic` (a user's or a machine token's password) or
//!   `Bearer` (a registry token this cluster signed, [`jwt`]); none is the anonymous caller.
//! - Tokens are issued by every node at `/auth/token` (Docker token auth; `api::token`), signed
//!   with the cluster's current key and checked with any key the cluster still has. Keys,
//!   identities and scope maps are Raft state (`meta::auth`), so a node cut off from the
//!   leader issues and checks tokens with what it last applied.
//! - Every request is checked against the applied state *now*: a token names its identity's
//!   `uid` and the `stamp` of the password it was issued for, and its `access` claim is
//!   intersected with the identity's current grants ([`grants`]). Disabling, deleting or
//!   rotating an identity therefore takes effect on a node as soon as it applies the change.
//! - Network rules (cluster-wide and per repository pattern) are checked before credentials.
//! - Refused credentials, tokens issued and addresses the network rules refuse are recorded
//!   in the node's audit log ([`crate::audit`]); a password login at the token endpoint is
//!   recorded by the endpoint (Basic credentials on every `/v2/` request are not logged one
//!   by one: their failures are, and what they do, a push or a delete).
//! - Failed logins are limited per name and per address ([`limit`]); argon2 runs on the
//!   blocking pool, at most [`HASHING_AT_ONCE`] at a time, and each password verified is
//!   remembered ([`password::Checked`]) so repeated logins cost a SHA-256.

pub mod grants;
pub mod jwt;
pub mod limit;
pub mod manage;
pub mod password;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http::HeaderMap;
pub use ipnet::IpNet;

use self::grants::{Scope, Subject};
use self::jwt::{Access, Claims, JwtError, SigningKey, TokenType};
use crate::audit::{Audit, AuditEvent};
use crate::meta::auth::{AuthState, AuthView, IdentityRecord, NetworkRules, RepoAction};
use crate::meta::policy;
use crate::types::time::now_ms;

/// Argon2 verifications running at once on this node (each takes ~20 ms of a core and
/// 19 MiB): a flood of bad logins cannot take more cores than this.
pub const HASHING_AT_ONCE: usize = 2;
/// Verified tokens remembered (signature checked once per token).
const VERIFIED_MAX: usize = 8192;
/// Tokens longer than this are verified every time, never remembered (the cache stays
/// within `VERIFIED_MAX` × this).
const VERIFIED_TOKEN_MAX_BYTES: usize = 4096;
/// Scopes one token request may ask for; more are ignored (a token's size stays bounded).
pub const MAX_SCOPES: usize = 32;

/// The node's auth settings (`[auth]` of the configuration). Its `Debug` never shows the
/// bootstrap password.
#[derive(Clone)]
pub struct AuthConfig {
    /// Credentials required on the registry port.
    pub enabled: bool,
    /// Service name: the challenge's `service`, the tokens' `iss` and `aud`.
    pub service: String,
    /// The token endpoint URL; `None`: derived from the request's `Host`.
    pub realm: Option<String>,
    /// `http` or `https`, for a derived realm.
    pub scheme: &'static str,
    /// Access token lifetime.
    pub token_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: Duration,
    /// The bootstrap admin password.
    pub bootstrap_admin_password: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Addresses the admin service answers (empty: any).
    pub admin_allow: Vec<IpNet>,
    /// Failed logins allowed per window.
    pub max_failed_logins: u32,
    /// Their window.
    pub failed_login_window: Duration,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("enabled", &self.enabled)
            .field("service", &self.service)
            .field(
                "bootstrap_admin_password",
                &self.bootstrap_admin_password.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// Parses a CIDR (`10.0.0.0/8`) or a single address.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a CIDR block"))
}

/// Why a request or a login is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials where they are needed, or bad ones: 401 with a challenge.
    #[error("authentication required: {0}")]
    Unauthorized(String),
    /// A bearer token without the scope the request needs: 401 with a challenge naming it.
    #[error("the token does not grant this: {0}")]
    InsufficientScope(String),
    /// Authenticated, but not allowed: 403.
    #[error("{0}")]
    Denied(String),
    /// Too many failed logins: 429 with `Retry-After`.
    #[error("too many failed logins; try again in {} s", .0.as_secs().max(1))]
    TooManyRequests(Duration),
    /// The cluster has no signing key yet: 503.
    #[error("{0}")]
    Unavailable(String),
}

/// Who made a request, once its credentials were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Auth is off: everything is allowed.
    Unchecked,
    /// No credentials.
    Anonymous,
    /// A user or token by its password.
    Password {
        /// Login name.
        name: String,
    },
    /// A registry token.
    Bearer {
        /// Login name; empty for an anonymous token.
        name: String,
        /// What the token grants.
        access: Vec<Access>,
    },
}

impl Caller {
    /// The login name, if any (for logs and audit).
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Password { name } | Caller::Bearer { name, .. } if !name.is_empty() => {
                Some(name)
            }
            _ => None,
        }
    }
}

/// What a request needs on a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read manifests and blobs (`pull`, `content/read`).
    Pull,
    /// List tags (`pull`, `metadata/read`).
    ListTags,
    /// Push (`push`, `content/write`).
    Push,
    /// Delete (`delete`, `content/delete`).
    Delete,
}

impl Need {
    fn docker(self) -> &'static str {
        match self {
            Need::Pull | Need::ListTags => "pull",
            Need::Push => "push",
            Need::Delete => "delete",
        }
    }

    fn action(self) -> RepoAction {
        match self {
            Need::Pull => RepoAction::ContentRead,
            Need::ListTags => RepoAction::MetadataRead,
            Need::Push => RepoAction::ContentWrite,
            Need::Delete => RepoAction::ContentDelete,
        }
    }

    /// The actions the challenge's scope asks for (docker asks `pull,push` to push).
    pub fn challenge_actions(self) -> &'static str {
        match self {
            Need::Pull | Need::ListTags => "pull",
            Need::Push => "pull,push",
            Need::Delete => "delete",
        }
    }
}

/// What the token endpoint hands out.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The access token.
    pub token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    /// When it was issued (seconds since the epoch).
    pub issued_at: u64,
    /// A refresh token, when one was asked for.
    pub refresh_token: Option<String>,
    /// What was granted, as a space-separated scope list.
    pub scope: String,
    /// Who it was issued to (empty: anonymous).
    pub subject: String,
}

/// Parsed keys, by `kid`.
type KeyCache = HashMap<String, Arc<SigningKey>>;

/// The auth service of a node.
pub struct Auth {
    config: AuthConfig,
    view: AuthView,
    keys: Mutex<KeyCache>,
    verified: Mutex<HashMap<String, Claims>>,
    checked: password::Checked,
    limiter: limit::LoginLimiter,
    hashing: tokio::sync::Semaphore,
    audit: Audit,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.config.enabled)
            .field("service", &self.config.service)
            .finish_non_exhaustive()
    }
}

/// Whether an identity may be used now through the password of `stamp` (0: any password).
fn usable(id: &IdentityRecord, stamp: u64, now_ms: u64) -> bool {
    id.enabled
        && id.expiry_ms.is_none_or(|e| now_ms < e)
        && id
            .secrets
            .iter()
            .any(|s| (stamp == 0 || s.stamp == stamp) && s.expiry_ms.is_none_or(|e| now_ms < e))
}

impl Auth {
    /// The auth service over the applied state, recording to `audit`.
    pub fn new(config: AuthConfig, view: AuthView, audit: Audit) -> Arc<Auth> {
        let limiter =
            limit::LoginLimiter::new(config.max_failed_logins, config.failed_login_window);
        Arc::new(Auth {
            config,
            view,
            keys: Mutex::default(),
            verified: Mutex::default(),
            checked: password::Checked::default(),
            limiter,
            hashing: tokio::sync::Semaphore::new(HASHING_AT_ONCE),
            audit,
        })
    }

    /// The node's audit log (the HTTP front records pushes and deletes through it).
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Records refused credentials (`identity`: the name given, if any).
    fn refused(&self, identity: Option<&str>, addr: Option<IpAddr>, e: &AuthError) {
        self.audit.record(
            identity,
            addr,
            AuditEvent::LoginFailed {
                reason: e.to_string(),
            },
        );
    }

    /// Whether credentials are required.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The applied auth state.
    pub fn state(&self) -> Arc<AuthState> {
        self.view.current()
    }

    /// The `WWW-Authenticate` value of a 401 (`scope` e.g. `repository:a/b:pull`).
    pub fn challenge(
        &self,
        host: Option<&str>,
        scope: Option<&str>,
        error: Option<&str>,
    ) -> String {
        let realm = match &self.config.realm {
            Some(r) => r.clone(),
            None => format!(
                "{}://{}/auth/token",
                self.config.scheme,
                host.unwrap_or("localhost")
            ),
        };
        let mut v = format!(
            "Bearer realm=\"{realm}\",service=\"{}\"",
            self.config.service
        );
        if let Some(s) = scope {
            v.push_str(&format!(",scope=\"{s}\""));
        }
        if let Some(e) = error {
            v.push_str(&format!(",error=\"{e}\""));
        }
        v
    }

    /// The client's address: the connection's, or the one a trusted proxy forwarded.
    pub fn client_addr(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        // IPv4 clients of a dual-stack listener arrive as `::ffff:a.b.c.d`: rules name them
        // as IPv4.
        let peer = peer?.to_canonical();
        let trusted = |ip: &IpAddr| self.config.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return Some(peer);
        }
        // The rightmost address not a trusted proxy is the client (the ones left of it were
        // written by the client itself and prove nothing). A hop that is not a bare address
        // ends the walk at the last trusted one: what lies left of it cannot be placed.
        let mut client = peer;
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.into_iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
                break;
            };
            client = ip;
            if !trusted(&ip) {
                break;
            }
        }
        Some(client)
    }

    /// Checks the network rules for a client address and (if the request names one) a
    /// repository. Denied: [`AuthError::Denied`].
    pub fn check_network(&self, addr: Option<IpAddr>, repo: Option<&str>) -> Result<(), AuthError> {
        let state = self.view.current();
        let rules = &state.settings.network;
        if rules == &NetworkRules::default() {
            return Ok(());
        }
        let Some(addr) = addr else {
            return Ok(());
        };
        let listed = |allow: &[String]| {
            allow
                .iter()
                .filter_map(|c| parse_cidr(c).ok())
                .any(|n| n.contains(&addr))
        };
        let repo_rule = repo.and_then(|r| {
            let patterns = rules.repositories.keys().map(String::as_str);
            policy::most_specific(patterns, r).map(|p| &rules.repositories[p])
        });
        let allowed = match repo_rule {
            Some(rule) => listed(&rule.allow) || (rules.public_access && rule.default_allow),
            None => listed(&rules.allow) || (rules.public_access && rules.default_allow),
        };
        if allowed {
            Ok(())
        } else {
            self.audit.record(
                None,
                Some(addr),
                AuditEvent::NetworkDenied {
                    repository: repo.map(str::to_string),
                },
            );
            Err(AuthError::Denied(format!(
                "client address {addr} is not allowed by the network rules"
            )))
        }
    }

    /// Checks the request's credentials (none: anonymous). Basic passwords are verified (and
    /// failures counted); bearer tokens are verified and their identity must still be usable.
    pub async fn caller(
        &self,
        headers: &HeaderMap,
        addr: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        if !self.config.enabled {
            return Ok(Caller::Unchecked);
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(Caller::Anonymous);
        };
        let Ok(value) = value.to_str() else {
            let e = AuthError::Unauthorized("malformed Authorization header".into());
            self.refused(None, addr, &e);
            return Err(e);
        };
        if let Some((name, password)) = parse_basic(value) {
            // `login` records a failure itself.
            self.login(&name, &password, addr).await?;
            return Ok(Caller::Password { name });
        }
        if let Some(token) = strip_scheme(value, "Bearer") {
            let claims = self
                .verify(token.trim(), TokenType::Access)
                .inspect_err(|e| self.refused(None, addr, e))?;
            return Ok(Caller::Bearer {
                name: claims.sub,
                access: claims.access,
            });
        }
        let e =
            AuthError::Unauthorized("unsupported Authorization scheme (Basic or Bearer)".into());
        self.refused(None, addr, &e);
        Err(e)
    }

    /// Checks a password; returns the stamp of the password that matched. Counts failures
    /// and refuses while they exceed the limit. A refusal is recorded in the audit log.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        addr: Option<IpAddr>,
    ) -> Result<u64, AuthError> {
        let name_key = format!("u:{name}");
        let ip_key = addr.map(|a| format!("ip:{a}"));
        let mut keys = vec![name_key.as_str()];
        keys.extend(ip_key.as_deref());
        if let Some(wait) = self.limiter.blocked(&keys, Instant::now()) {
            let e = AuthError::TooManyRequests(wait);
            self.refused(Some(name), addr, &e);
            return Err(e);
        }
        let now = now_ms();
        let state = self.view.current();
        let candidates: Vec<(u64, String)> = match state.identities.get(name) {
            Some(id) if usable(id, 0, now) => id
                .secrets
                .iter()
                .filter(|s| s.expiry_ms.is_none_or(|e| now < e))
                .map(|s| (s.stamp, s.hash.clone()))
                .collect(),
            _ => Vec::new(),
        };
        for (stamp, _) in &candidates {
            if self.checked.contains(name, *stamp, password) {
                return Ok(*stamp);
            }
        }
        // Counted before hashing, so that requests arriving meanwhile see it: a burst of
        // concurrent guesses cannot outrun the limit. Forgiven if the password is right.
        self.limiter.failed(&keys, Instant::now());
        let permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| AuthError::Unavailable("the node is stopping".into()))?;
        let p = password.to_string();
        let matched = tokio::task::spawn_blocking(move || {
            if candidates.is_empty() {
                // An unknown or unusable name costs what a known one does: answering at once
                // would tell which names exist.
                password::verify(password::dummy_hash(), &p);
                return None;
            }
            candidates
                .into_iter()
                .find(|(_, hash)| password::verify(hash, &p))
                .map(|(stamp, _)| stamp)
        })
        .await
        .unwrap_or(None);
        drop(permit);
        if let Some(stamp) = matched {
            self.checked.insert(name, stamp, password);
            self.limiter.forgive(&keys);
            self.limiter.succeeded(&name_key);
            return Ok(stamp);
        }
        let e = AuthError::Unauthorized("invalid user name or password".into());
        self.refused(Some(name), addr, &e);
        Err(e)
    }

    fn parsed_key(&self, state: &AuthState, kid: &str) -> Option<Arc<SigningKey>> {
        let mut keys = self.keys.lock().expect("key cache lock");
        if let Some(k) = keys.get(kid) {
            return Some(k.clone());
        }
        let record = state.key(kid)?;
        let k = Arc::new(SigningKey::from_pkcs8(&record.kid, &record.pkcs8)?);
        if keys.len() > 64 {
            keys.clear();
        }
        keys.insert(kid.to_string(), k.clone());
        Some(k)
    }

    /// Verifies a token of type `typ`: signature (once per token), time, audience, and that
    /// its key and identity are still current.
    pub fn verify(&self, token: &str, typ: TokenType) -> Result<Claims, AuthError> {
        let bad = |e: JwtError| AuthError::Unauthorized(e.to_string());
        let state = self.view.current();
        let kid = jwt::header_kid(token).map_err(bad)?;
        // A key dropped from the cluster takes its tokens with it, cached or not.
        if state.key(&kid).is_none() {
            return Err(bad(JwtError::UnknownKey));
        }
        let cached = self
            .verified
            .lock()
            .expect("verified lock")
            .get(token)
            .cloned();
        let claims = match cached {
            Some(c) => c,
            None => {
                let key = self
                    .parsed_key(&state, &kid)
                    .ok_or(bad(JwtError::UnknownKey))?;
                let c = jwt::verify_signature(token, &key.public_key()).map_err(bad)?;
                if token.len() <= VERIFIED_TOKEN_MAX_BYTES {
                    let mut v = self.verified.lock().expect("verified lock");
                    if v.len() >= VERIFIED_MAX {
                        v.clear();
                    }
                    v.insert(token.to_string(), c.clone());
                }
                c
            }
        };
        let now = now_ms();
        jwt::check_claims(&claims, &self.config.service, now / 1000, 0).map_err(bad)?;
        if claims.typ != typ {
            return Err(AuthError::Unauthorized("wrong kind of token".into()));
        }
        // A token living longer than this cluster issues is not one it issued (a stolen key
        // could mint any lifetime).
        let ttl = match typ {
            TokenType::Access => self.config.token_ttl,
            TokenType::Refresh => self.config.refresh_ttl,
        };
        if claims.exp.saturating_sub(claims.iat) > ttl.as_secs() {
            return Err(AuthError::Unauthorized(
                "token lifetime exceeds what this cluster issues".into(),
            ));
        }
        if claims.uid != 0 {
            let ok = state
                .identities
                .get(&claims.sub)
                .is_some_and(|id| id.uid == claims.uid && usable(id, claims.sid, now));
            if !ok {
                return Err(AuthError::Unauthorized(
                    "the token's identity was disabled, deleted or changed its password".into(),
                ));
            }
        }
        Ok(claims)
    }

    /// Checks that `caller` may do `need` on `repo` now.
    pub fn check(&self, caller: &Caller, repo: &str, need: Need) -> Result<(), AuthError> {
        let state = self.view.current();
        let what = format!("repository:{repo}:{}", need.challenge_actions());
        let has = |who: Subject<'_>| grants::actions_on(&state, who, repo).contains(&need.action());
        match caller {
            Caller::Unchecked => Ok(()),
            Caller::Anonymous => {
                if has(Subject::Anonymous) {
                    Ok(())
                } else {
                    Err(AuthError::Unauthorized(what))
                }
            }
            Caller::Password { name } => match state.identities.get(name) {
                Some(id) if has(Subject::Identity(id)) => Ok(()),
                _ => Err(AuthError::Denied(format!(
                    "{name} may not {} {repo}",
                    need.docker()
                ))),
            },
            Caller::Bearer { name, access } => {
                if !grants::access_allows(access, repo, need.docker()) {
                    return Err(AuthError::InsufficientScope(what));
                }
                let who = if name.is_empty() {
                    Some(Subject::Anonymous)
                } else {
                    state.identities.get(name).map(Subject::Identity)
                };
                if who.is_some_and(has) {
                    Ok(())
                } else {
                    Err(AuthError::Denied(format!(
                        "{} may no longer {} {repo}",
                        if name.is_empty() { "anonymous" } else { name },
                        need.docker()
                    )))
                }
            }
        }
    }

    /// Checks `GET /v2/`: any valid credentials (an anonymous token included).
    pub fn check_base(&self, caller: &Caller) -> Result<(), AuthError> {
        match caller {
            Caller::Anonymous => Err(AuthError::Unauthorized("credentials required".into())),
            _ => Ok(()),
        }
    }

    /// Checks `GET /v2/_catalog`: an identity (a bearer token needs `registry:catalog:*`).
    pub fn check_catalog(&self, caller: &Caller) -> Result<(), AuthError> {
        match caller {
            Caller::Unchecked | Caller::Password { .. } => Ok(()),
            Caller::Bearer { name, access } if !name.is_empty() => {
                if grants::access_allows_catalog(access) {
                    Ok(())
                } else {
                    Err(AuthError::InsufficientScope("registry:catalog:*".into()))
                }
            }
            _ => Err(AuthError::Unauthorized("registry:catalog:*".into())),
        }
    }

    /// Whether `caller` may see `repo` in the catalog (it may read its tags or content).
    pub fn may_list(&self, caller: &Caller, repo: &str) -> bool {
        let state = self.view.current();
        let who = match caller {
            Caller::Unchecked => return true,
            Caller::Anonymous => Subject::Anonymous,
            Caller::Password { name } | Caller::Bearer { name, .. } => {
                match state.identities.get(name) {
                    Some(id) => Subject::Identity(id),
                    None => return false,
                }
            }
        };
        let has = grants::actions_on(&state, who, repo);
        has.contains(&RepoAction::MetadataRead) || has.contains(&RepoAction::ContentRead)
    }

    /// Issues an access token for `asked` scopes to a caller that logged in with a password
    /// (`Some((name, stamp))`) or to the anonymous caller (`None`); with `offline`, also a
    /// refresh token (never to the anonymous caller). Recorded in the audit log with the
    /// client's address `addr`.
    pub fn issue(
        &self,
        who: Option<(&str, u64)>,
        asked: &[Scope],
        offline: bool,
        addr: Option<IpAddr>,
    ) -> Result<Issued, AuthError> {
        let state = self.view.current();
        let key = state
            .signing_key()
            .and_then(|k| self.parsed_key(&state, &k.kid))
            .ok_or_else(|| {
                AuthError::Unavailable("the cluster has no token signing key yet".into())
            })?;
        let (sub, uid, sid, subject) = match who {
            Some((name, stamp)) => {
                let id = state
                    .identities
                    .get(name)
                    .filter(|id| usable(id, stamp, now_ms()))
                    .ok_or_else(|| {
                        AuthError::Unauthorized("invalid user name or password".into())
                    })?;
                (name.to_string(), id.uid, stamp, Subject::Identity(id))
            }
            None => (String::new(), 0, 0, Subject::Anonymous),
        };
        let access = grants::grant(&state, subject, asked);
        let now = now_ms() / 1000;
        let claims = |typ, ttl: Duration, access: Vec<Access>| Claims {
            iss: self.config.service.clone(),
            sub: sub.clone(),
            aud: self.config.service.clone(),
            exp: now + ttl.as_secs(),
            nbf: now.saturating_sub(1),
            iat: now,
            jti: hex::encode(password::random_bytes::<12>()),
            access,
            uid,
            sid,
            typ,
        };
        let scope = access
            .iter()
            .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
            .collect::<Vec<_>>()
            .join(" ");
        let token = key.sign(&claims(TokenType::Access, self.config.token_ttl, access));
        let refresh_token = (offline && uid != 0).then(|| {
            key.sign(&claims(
                TokenType::Refresh,
                self.config.refresh_ttl,
                Vec::new(),
            ))
        });
        self.audit.record(
            Some(sub.as_str()).filter(|s| !s.is_empty()),
            addr,
            AuditEvent::TokenIssued {
                scope: scope.clone(),
            },
        );
        Ok(Issued {
            token,
            expires_in: self.config.token_ttl.as_secs(),
            issued_at: now,
            refresh_token,
            scope,
            subject: sub,
        })
    }

    /// Exchanges a refresh token for an access token (a refused one is recorded in the audit
    /// log, with `addr`).
    pub fn refresh(
        &self,
        refresh_token: &str,
        asked: &[Scope],
        addr: Option<IpAddr>,
    ) -> Result<Issued, AuthError> {
        let claims = self
            .verify(refresh_token, TokenType::Refresh)
            .and_then(|c| {
                if c.uid == 0 {
                    Err(AuthError::Unauthorized("not a refresh token".into()))
                } else {
                    Ok(c)
                }
            })
            .inspect_err(|e| self.refused(None, addr, e))?;
        let mut issued = self.issue(Some((&claims.sub, claims.sid)), asked, false, addr)?;
        issued.refresh_token = Some(refresh_token.to_string());
        Ok(issued)
    }
}

/// `Basic base64(user:password)` → (user, password).
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    let b64 = strip_scheme(value, "Basic")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (user, password) = s.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The rest of an `Authorization` value after its scheme (case-insensitive).
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse() {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ann:pa:ss")
        );
        assert_eq!(parse_basic(&v), Some(("ann".into(), "pa:ss".into())));
        assert_eq!(parse_basic("Bearer x"), None);
        assert_eq!(parse_basic("Basic !!"), None);
    }

    #[test]
    fn cidrs_and_bare_addresses_parse() {
        assert!(
            parse_cidr("10.0.0.0/8")
                .unwrap()
                .contains(&"10.1.2.3".parse::<IpAddr>().unwrap())
        );
        assert!(
            parse_cidr("::1")
                .unwrap()
                .contains(&"::1".parse::<IpAddr>().unwrap())
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("x").is_err());
    }
}
