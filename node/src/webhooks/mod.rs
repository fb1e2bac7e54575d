//! Webhooks (docs/observability.md): definitions managed through Raft, and the delivery of the
//! event stream to each of them, at least once, in order per repository.
//!
//! Owns: validation of webhook definitions and their changes (committed through Raft as
//! `meta::webhooks::WebhookCommand`s), the HTTP client that delivers, pings, the choice of the
//! node that delivers each webhook, the per-webhook delivery tasks ([`deliver`]), and the
//! pruning of the event log (by the leader).
//!
//! Who delivers: a webhook without a region, the Raft leader; a regional webhook, the member of
//! its region with the smallest id among those this node sees up (itself included). Two nodes
//! may both believe they deliver for a moment (a leader change, a partition): receivers
//! de-duplicate by event id. Must not: block a client request or another webhook — every
//! delivery runs on its webhook's own task, with a timeout.

mod deliver;
pub mod payload;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, ClusterError};
use crate::meta::webhooks::{Action, Delivery, Format, Webhook, WebhookCommand};
use crate::meta::{Command, CommandV1, MetaError, MetaReader, NodeId, Rejection, WriteResult};
use crate::metrics::{Metrics, Outcome, WebhookLabels, WebhookOutcomeLabels};
use crate::replication::{Replication, ReplicationError};
use crate::types::ErrorKind;
use crate::types::time::now_ms;

use self::deliver::{Answer, Running};
use self::payload::Outgoing;

/// How often the dispatcher looks at the definitions and the leadership.
const DISPATCH_EVERY: Duration = Duration::from_millis(500);
/// How long the delivery tasks get to commit their progress when the node stops.
const STOP: Duration = Duration::from_millis(800);
/// How often the leader prunes the event log.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a change waits to catch up with the leader before it reads the definition.
const CATCH_UP: Duration = Duration::from_secs(3);
/// Bytes of an answer's body kept in the delivery log.
const EXCERPT: usize = 256;
/// Most delivery log entries one query returns.
pub const MAX_LOG_QUERY: usize = 1000;

/// How this node delivers (`[webhooks]`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// One attempt's timeout.
    pub timeout: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// Delivery log entries older than this go.
    pub log_retention: Duration,
    /// Events older than this go, delivered or not.
    pub event_retention: Duration,
    /// Extra CA certificates for `https` URIs (PEM).
    pub ca_file: Option<std::path::PathBuf>,
    /// This node.
    pub node: NodeId,
    /// Its region.
    pub region: String,
}

/// Errors of the webhook use cases.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A malformed definition or argument.
    #[error("{0}")]
    Invalid(String),
    /// No webhook of that name.
    #[error("webhook {0} does not exist")]
    NotFound(String),
    /// A webhook of that name exists.
    #[error("webhook {0} exists already")]
    Exists(String),
    /// The webhook was changed since it was read (by a change at another node).
    #[error("{0}")]
    Changed(String),
    /// Reading the state failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The change could not be committed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Evaluating where an image is failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
}

impl WebhookError {
    /// The broad class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            WebhookError::Invalid(_) => ErrorKind::Invalid,
            WebhookError::NotFound(_) => ErrorKind::NotFound,
            WebhookError::Exists(_) | WebhookError::Changed(_) => ErrorKind::Conflict,
            WebhookError::Meta(MetaError::DiskFull(_)) => ErrorKind::Exhausted,
            WebhookError::Meta(_) => ErrorKind::Internal,
            WebhookError::Cluster(e) => e.kind(),
            WebhookError::Replication(e) => e.kind(),
        }
    }
}

/// A webhook as asked for (create), before validation.
#[derive(Debug, Clone, Default)]
pub struct WebhookSpec {
    /// Where to POST.
    pub uri: String,
    /// Headers to send (`K`, `V`).
    pub headers: Vec<(String, String)>,
    /// Action names.
    pub actions: Vec<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Whether it starts disabled.
    pub disabled: bool,
    /// Its region.
    pub region: Option<String>,
    /// Format name (`acr` when empty).
    pub format: String,
}

/// A change to a webhook: each field set replaces the current value.
#[derive(Debug, Clone, Default)]
pub struct WebhookUpdate {
    /// New URI.
    pub uri: Option<String>,
    /// New headers (replacing all).
    pub headers: Option<Vec<(String, String)>>,
    /// New actions.
    pub actions: Option<Vec<String>>,
    /// New scopes (empty: every repository).
    pub scopes: Option<Vec<String>>,
    /// Enabled or not.
    pub enabled: Option<bool>,
    /// New region (`Some(None)`: none).
    pub region: Option<Option<String>>,
    /// New format.
    pub format: Option<String>,
}

/// A webhook as listed.
#[derive(Debug, Clone)]
pub struct WebhookView {
    /// Its name.
    pub name: String,
    /// Its definition.
    pub webhook: Webhook,
    /// Its cursor: the first event not yet done.
    pub cursor: u64,
    /// Events recorded so far (the cursor's distance to it is the backlog, at most).
    pub head: u64,
}

/// The webhook service of a node.
#[derive(Debug)]
pub struct Webhooks {
    meta: MetaReader,
    cluster: Cluster,
    replication: Arc<Replication>,
    settings: WebhookSettings,
    client: std::sync::OnceLock<reqwest::Client>,
    extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// The service; fails when the CA file cannot be read.
    pub fn new(
        meta: MetaReader,
        cluster: Cluster,
        replication: Arc<Replication>,
        settings: WebhookSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Webhooks>, WebhookError> {
        // The CA file is read now, so a bad one stops the start; the client (and the system's
        // CA certificates it reads) is made at the first delivery.
        let extra_roots = read_ca_file(settings.ca_file.as_deref())?;
        Ok(Arc::new(Webhooks {
            meta,
            cluster,
            replication,
            settings,
            client: std::sync::OnceLock::new(),
            extra_roots,
            metrics,
        }))
    }

    /// The delivery client, made at first use: the system's CA certificates (none in a `FROM
    /// scratch` image) and those of `webhooks.ca_file`. With none at all `http` webhooks
    /// still work, and an `https` one fails with its reason in the delivery log.
    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            // The process-wide TLS provider (ring, as everywhere in berth; `main` installs it
            // first — this is for a node started in-process). Installed: nothing to do.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            for cert in &self.extra_roots {
                let _ = roots.add(cert.clone());
            }
            if roots.is_empty() {
                tracing::warn!(
                    "no CA certificates found for webhook deliveries: https webhooks fail until webhooks.ca_file names some"
                );
            }
            let tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            reqwest::Client::builder()
                .timeout(self.settings.timeout)
                .connect_timeout(self.settings.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("berth-webhooks/", env!("CARGO_PKG_VERSION")))
                .tls_backend_preconfigured(tls)
                .build()
                .expect("a client with a preconfigured TLS backend and no proxy builds")
        })
    }

    // ---- definitions -------------------------------------------------------------------

    /// Creates a webhook. Errors: [`WebhookError::Invalid`], [`WebhookError::Exists`].
    pub async fn create(&self, name: &str, spec: WebhookSpec) -> Result<(), WebhookError> {
        validate_name(name)?;
        let now = now_ms();
        let webhook = Webhook {
            uri: validate_uri(&spec.uri)?,
            headers: validate_headers(spec.headers)?,
            actions: validate_actions(&spec.actions)?,
            scopes: validate_scopes(spec.scopes)?,
            enabled: !spec.disabled,
            region: validate_region(spec.region)?,
            format: validate_format(&spec.format)?,
            created_ms: now,
            updated_ms: now,
        };
        self.write(WebhookCommand::Put {
            name: name.to_string(),
            webhook,
            create: true,
            expect: None,
        })
        .await
    }

    /// Changes a webhook. Errors: [`WebhookError::Invalid`], [`WebhookError::NotFound`].
    pub async fn update(&self, name: &str, u: WebhookUpdate) -> Result<(), WebhookError> {
        // Read what the leader has committed (a change just made at another node too); from
        // this node's own state when the leader cannot be reached in time.
        let _ = tokio::time::timeout(CATCH_UP, self.cluster.catch_up_with_leader()).await;
        let (mut w, _) = self
            .meta
            .webhook(name)?
            .ok_or_else(|| WebhookError::NotFound(name.to_string()))?;
        if let Some(uri) = u.uri {
            w.uri = validate_uri(&uri)?;
        }
        if let Some(h) = u.headers {
            w.headers = validate_headers(h)?;
        }
        if let Some(a) = u.actions {
            w.actions = validate_actions(&a)?;
        }
        if let Some(s) = u.scopes {
            w.scopes = validate_scopes(s)?;
        }
        if let Some(e) = u.enabled {
            w.enabled = e;
        }
        if let Some(r) = u.region {
            w.region = validate_region(r)?;
        }
        if let Some(f) = u.format {
            w.format = validate_format(&f)?;
        }
        // Applies only to the definition read here: a change made meanwhile elsewhere is
        // not overwritten (the caller reads again).
        let read = w.updated_ms;
        w.updated_ms = now_ms().max(read + 1);
        self.write(WebhookCommand::Put {
            name: name.to_string(),
            webhook: w,
            create: false,
            expect: Some(read),
        })
        .await
    }

    /// Deletes a webhook with its log. Errors: [`WebhookError::NotFound`].
    pub async fn delete(&self, name: &str) -> Result<(), WebhookError> {
        self.write(WebhookCommand::Delete {
            name: name.to_string(),
        })
        .await
    }

    /// Every webhook, by name.
    pub async fn list(&self) -> Result<Vec<WebhookView>, WebhookError> {
        let head = self.meta.event_head()?.next;
        Ok(self
            .meta
            .webhooks()
            .await?
            .into_iter()
            .map(|(name, webhook, cursor)| WebhookView {
                name,
                webhook,
                cursor,
                head,
            })
            .collect())
    }

    /// One webhook. Errors: [`WebhookError::NotFound`].
    pub fn get(&self, name: &str) -> Result<WebhookView, WebhookError> {
        let (webhook, cursor) = self
            .meta
            .webhook(name)?
            .ok_or_else(|| WebhookError::NotFound(name.to_string()))?;
        Ok(WebhookView {
            name: name.to_string(),
            webhook,
            cursor,
            head: self.meta.event_head()?.next,
        })
    }

    /// A webhook's delivery log, newest first (at most `n`, at most [`MAX_LOG_QUERY`]).
    pub async fn events(&self, name: &str, n: usize) -> Result<Vec<Delivery>, WebhookError> {
        self.get(name)?;
        Ok(self
            .meta
            .deliveries(name, n.clamp(1, MAX_LOG_QUERY))
            .await?)
    }

    /// Sends a `ping` to a webhook now, from this node, and logs it. Answers the delivery.
    pub async fn ping(&self, name: &str) -> Result<Delivery, WebhookError> {
        let view = self.get(name)?;
        let at_ms = now_ms();
        let out = Outgoing {
            id: uuid::Uuid::new_v4().to_string(),
            action: Action::Ping,
            event: None,
            seq: None,
            region: view.webhook.region.clone(),
            at_ms,
        };
        let a = self.post(&view.webhook, &out, name).await;
        let d = Delivery {
            at_ms: now_ms(),
            event_id: out.id,
            action: Action::Ping,
            seq: None,
            region: out.region,
            status: a.status,
            error: a.error,
            latency_ms: a.latency_ms,
            excerpt: a.excerpt,
            attempts: 1,
            node: self.settings.node,
        };
        self.write(WebhookCommand::Progress {
            name: name.to_string(),
            cursor: None,
            deliveries: vec![d.clone()],
            keep_after_ms: self.log_cutoff_ms(),
        })
        .await?;
        Ok(d)
    }

    // ---- delivery ----------------------------------------------------------------------

    /// Runs the dispatcher until `stop`: starts and stops the delivery task of each webhook
    /// this node delivers, and (on the leader) prunes the event log.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut running: Running = Running::new();
        let mut last_prune = tokio::time::Instant::now();
        loop {
            if let Err(e) = self.dispatch(&mut running, &stop).await {
                tracing::warn!(error = %e, "webhook dispatch failed; trying again");
            }
            if self.cluster.is_leader() && last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                if let Err(e) = self.prune().await {
                    tracing::warn!(error = %e, "pruning the event log failed");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(DISPATCH_EVERY) => {}
            }
        }
        // Every task commits what it did, all at once, within the node's stop margin.
        let handles: Vec<_> = running
            .into_values()
            .map(|(_, token, handle)| {
                token.cancel();
                handle
            })
            .collect();
        let _ = tokio::time::timeout(STOP, futures::future::join_all(handles)).await;
    }

    /// One look: which webhooks this node delivers now.
    async fn dispatch(
        self: &Arc<Self>,
        running: &mut Running,
        stop: &CancellationToken,
    ) -> Result<(), WebhookError> {
        let defs = self.meta.webhooks().await?;
        self.report_backlog(&defs);
        for name in running.keys() {
            if !defs.iter().any(|(n, _, _)| n == name) {
                self.forget_metrics(name);
            }
        }
        running.retain(|name, (def, token, handle)| {
            let keep = !handle.is_finished()
                && defs
                    .iter()
                    .any(|(n, d, _)| n == name && d == def && self.delivers(d));
            if !keep {
                token.cancel();
            }
            keep
        });
        for (name, def, _) in defs {
            if running.contains_key(&name) || !self.delivers(&def) {
                continue;
            }
            let token = stop.child_token();
            let handle = tokio::spawn(deliver::run(
                self.clone(),
                name.clone(),
                def.clone(),
                token.clone(),
            ));
            tracing::info!(webhook = %name, "delivering webhook from this node");
            running.insert(name, (def, token, handle));
        }
        Ok(())
    }

    /// Whether this node delivers `w` now.
    fn delivers(&self, w: &Webhook) -> bool {
        if !w.enabled || !self.cluster.is_member() {
            return false;
        }
        let Some(region) = &w.region else {
            return self.cluster.is_leader();
        };
        let me = self.settings.node;
        let mut members: Vec<NodeId> = self
            .cluster
            .members()
            .into_iter()
            .filter(|m| &m.info.region == region)
            .map(|m| m.id)
            .collect();
        members.sort_unstable();
        members
            .into_iter()
            .find(|id| {
                *id == me
                    || self
                        .cluster
                        .peer_view(*id)
                        .is_some_and(|v| v.up && v.backoff.is_none())
            })
            .is_some_and(|id| id == me)
    }

    /// Removes the events every enabled webhook is past, and those older than the retention.
    async fn prune(&self) -> Result<(), WebhookError> {
        let head = self.meta.event_head()?.next;
        let Some((first, _)) = self.meta.events(0, 1).await?.into_iter().next() else {
            return Ok(());
        };
        let needed = self
            .meta
            .webhooks()
            .await?
            .into_iter()
            .filter(|(_, w, _)| w.enabled)
            .map(|(_, _, c)| c)
            .min()
            .unwrap_or(head);
        let cutoff = now_ms().saturating_sub(self.settings.event_retention.as_millis() as u64);
        let expired = self.meta.first_event_since(cutoff).await?;
        let below = needed.max(expired).min(head);
        if below > first {
            self.write(WebhookCommand::PruneEvents { below }).await?;
        }
        Ok(())
    }

    /// POSTs one delivery; never fails (the answer says how it went) and records metrics.
    async fn post(&self, w: &Webhook, out: &Outgoing, name: &str) -> Answer {
        let source = format!("/berth/{}", self.settings.region);
        let body = payload::body(w.format, out, &source);
        let mut req = self.client().post(&w.uri).header(
            reqwest::header::CONTENT_TYPE,
            payload::content_type(w.format),
        );
        for (k, v) in &w.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let started = std::time::Instant::now();
        let answer = match req.body(body).send().await {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let mut excerpt = Vec::new();
                while excerpt.len() < EXCERPT {
                    match resp.chunk().await {
                        Ok(Some(c)) => excerpt.extend_from_slice(&c),
                        _ => break,
                    }
                }
                excerpt.truncate(EXCERPT);
                Answer {
                    status: Some(status),
                    error: None,
                    latency_ms: started.elapsed().as_millis() as u64,
                    excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
                }
            }
            Err(e) => Answer {
                status: None,
                // Without the URL: it may carry a token, and the log is shown to admins.
                error: Some(crate::error_chain(&e.without_url())),
                latency_ms: started.elapsed().as_millis() as u64,
                excerpt: String::new(),
            },
        };
        let labels = WebhookLabels {
            webhook: name.to_string(),
        };
        self.metrics
            .webhook_delivery_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .webhook_deliveries
            .get_or_create(&WebhookOutcomeLabels {
                webhook: name.to_string(),
                outcome: if answer.succeeded() {
                    Outcome::Success
                } else {
                    Outcome::Failure
                },
            })
            .inc();
        answer
    }

    /// The wait before attempt `attempts + 1`: 1 s doubling, capped.
    fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        Duration::from_secs(1u64 << exp).min(self.settings.max_backoff)
    }

    /// Log entries before this time are removed.
    fn log_cutoff_ms(&self) -> u64 {
        now_ms().saturating_sub(self.settings.log_retention.as_millis() as u64)
    }

    /// Sets the backlog gauge of every enabled webhook on the leader (events recorded past
    /// its committed cursor), so it is there whichever node delivers, or none; other nodes
    /// report none.
    fn report_backlog(&self, defs: &[(String, Webhook, u64)]) {
        let gauge = &self.metrics.webhook_backlog;
        gauge.clear();
        if !self.cluster.is_leader() {
            return;
        }
        let Ok(head) = self.meta.event_head() else {
            return;
        };
        for (name, _, cursor) in defs.iter().filter(|(_, w, _)| w.enabled) {
            gauge
                .get_or_create(&WebhookLabels {
                    webhook: name.clone(),
                })
                .set(head.next.saturating_sub(*cursor) as i64);
        }
    }

    /// Removes a deleted webhook's series.
    fn forget_metrics(&self, name: &str) {
        let labels = WebhookLabels {
            webhook: name.to_string(),
        };
        self.metrics.webhook_backlog.remove(&labels);
        self.metrics.webhook_delivery_duration.remove(&labels);
        for outcome in [Outcome::Success, Outcome::Failure] {
            self.metrics
                .webhook_deliveries
                .remove(&WebhookOutcomeLabels {
                    webhook: name.to_string(),
                    outcome,
                });
        }
    }

    /// Commits a webhook command; a rejection becomes the matching error.
    async fn write(&self, cmd: WebhookCommand) -> Result<(), WebhookError> {
        let cmd = Command::V1(CommandV1::Webhooks(Box::new(cmd)));
        match self.cluster.write(cmd).await? {
            WriteResult::Rejected(Rejection::Exists(what)) => Err(WebhookError::Exists(
                what.trim_start_matches("webhook ").to_string(),
            )),
            WriteResult::Rejected(Rejection::Unknown(what)) => Err(WebhookError::NotFound(
                what.trim_start_matches("webhook ").to_string(),
            )),
            WriteResult::Rejected(Rejection::Changed(why)) => Err(WebhookError::Changed(why)),
            WriteResult::Rejected(r) => Err(WebhookError::Invalid(r.to_string())),
            _ => Ok(()),
        }
    }
}

/// The CA certificates of `webhooks.ca_file` (none without one; at least one with one).
fn read_ca_file(
    ca_file: Option<&std::path::Path>,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, WebhookError> {
    let Some(path) = ca_file else {
        return Ok(Vec::new());
    };
    crate::server::tls::read_certs("webhooks.ca_file", path)
        .map_err(|e| WebhookError::Invalid(crate::error_chain(&e)))
}

// ---- validation ----------------------------------------------------------------------------

/// Names: 1 to 50 ASCII letters, digits, `-` and `_`, starting with a letter or digit.
fn validate_name(name: &str) -> Result<(), WebhookError> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(WebhookError::Invalid(format!(
            "invalid webhook name {name:?}: 1 to 50 letters, digits, '-' or '_', starting with a letter or digit"
        )))
    }
}

fn validate_uri(uri: &str) -> Result<String, WebhookError> {
    let url = reqwest::Url::parse(uri)
        .map_err(|e| WebhookError::Invalid(format!("invalid webhook URI {uri:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(WebhookError::Invalid(format!(
            "invalid webhook URI {uri:?}: an http or https URL with a host is required"
        )));
    }
    Ok(uri.to_string())
}

fn validate_headers(h: Vec<(String, String)>) -> Result<Vec<(String, String)>, WebhookError> {
    for (k, v) in &h {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(WebhookError::Invalid(format!("invalid header name {k:?}")));
        }
        if http::HeaderValue::from_str(v).is_err() {
            return Err(WebhookError::Invalid(format!(
                "invalid value for header {k}"
            )));
        }
        if k.eq_ignore_ascii_case("content-type")
            || k.eq_ignore_ascii_case("content-length")
            || k.eq_ignore_ascii_case("host")
        {
            return Err(WebhookError::Invalid(format!(
                "header {k} is set by berth and cannot be given"
            )));
        }
    }
    Ok(h)
}

fn validate_actions(names: &[String]) -> Result<Vec<Action>, WebhookError> {
    let mut out = Vec::new();
    for n in names {
        let a = Action::parse(n.trim()).ok_or_else(|| {
            WebhookError::Invalid(format!(
                "unknown action {n:?} (one of: {})",
                Action::ALL.map(Action::as_str).join(", ")
            ))
        })?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(WebhookError::Invalid(
            "a webhook needs at least one action".to_string(),
        ));
    }
    out.sort();
    Ok(out)
}

fn validate_scopes(scopes: Vec<String>) -> Result<Vec<String>, WebhookError> {
    for s in &scopes {
        let (repo, tag) = s.split_once(':').unwrap_or((s.as_str(), "latest"));
        crate::meta::policy::validate_pattern(repo)
            .map_err(|e| WebhookError::Invalid(format!("invalid scope {s:?}: {e}")))?;
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*'));
        if !tag_ok {
            return Err(WebhookError::Invalid(format!(
                "invalid scope {s:?}: the tag part may hold letters, digits, '_', '.', '-' and '*'"
            )));
        }
    }
    Ok(scopes)
}

fn validate_region(r: Option<String>) -> Result<Option<String>, WebhookError> {
    match r {
        Some(r) if r.is_empty() => Ok(None),
        Some(r)
            if r.len() <= 63
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
        {
            Ok(Some(r))
        }
        Some(r) => Err(WebhookError::Invalid(format!("invalid region {r:?}"))),
        None => Ok(None),
    }
}

fn validate_format(f: &str) -> Result<Format, WebhookError> {
    if f.is_empty() {
        return Ok(Format::Acr);
    }
    Format::parse(f)
        .ok_or_else(|| WebhookError::Invalid(format!("unknown format {f:?} (acr or cloudevents)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_validated() {
        assert!(validate_name("deploy-hook_1").is_ok());
        for bad in ["", "-x", "a b", &"a".repeat(51)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_uri("https://hooks.example/x?y=1").is_ok());
        assert!(validate_uri("ftp://x/").is_err());
        assert!(validate_uri("not a uri").is_err());
        assert!(validate_headers(vec![("X-Token".into(), "abc".into())]).is_ok());
        assert!(validate_headers(vec![("Bad Name".into(), "v".into())]).is_err());
        assert!(validate_headers(vec![("Content-Type".into(), "x".into())]).is_err());
        assert_eq!(
            validate_actions(&["push".into(), "delete".into(), "push".into()]).unwrap(),
            vec![Action::Push, Action::Delete]
        );
        assert!(validate_actions(&[]).is_err());
        assert!(validate_actions(&["pull".into()]).is_err());
        assert!(validate_scopes(vec!["team/*:v*".into(), "app".into()]).is_ok());
        assert!(validate_scopes(vec!["team/app:".into()]).is_err());
        assert!(validate_scopes(vec!["Bad/Name:x".into()]).is_err());
        assert_eq!(validate_format("").unwrap(), Format::Acr);
        assert!(validate_format("xml").is_err());
        assert_eq!(validate_region(Some(String::new())).unwrap(), None);
        assert!(validate_region(Some("eu west".into())).is_err());
    }
}
