//! The event stream and webhooks, in the replicated state.
//!
//! Owns: the records of webhook definitions, each webhook's delivery cursor and delivery log,
//! the event log, the [`WebhookCommand`]s that change them, and the derivation of events from
//! applied commands ([`derive`]). Delivery itself (HTTP, retries, who delivers) is
//! `crate::webhooks`.
//!
//! Keys (`state` column family):
//!
//! ```text
//! "e/" seq: u64 BE                  Event (seq: dense, from 0, in apply order)
//! "w/next"                          EventHead (the next seq; the last event time)
//! "w/d/" name                       Webhook (the definition)
//! "w/c/" name                       Position (the cursor: first event not yet done; entries logged)
//! "w/l/" name \0 n: u64 BE           Delivery (the delivery log, in the order committed)
//! ```
//!
//! Invariants:
//! - Events are derived from a command while it applies, from the command and the state
//!   before it: every node records the same events with the same seqs. An event is recorded
//!   only when its command applied (`WriteResult::Done`), in the same write batch.
//! - A cursor never moves back ([`WebhookCommand::Progress`] keeps the larger); a webhook
//!   created, or enabled again, starts at the end of the log (it is not sent the past).
//! - Events below every enabled webhook's cursor, or older than the event retention, are
//!   removed by [`WebhookCommand::PruneEvents`]; the delivery log keeps what is newer than the
//!   log retention the proposer stamps into each `Progress`, and at most [`MAX_LOG`] entries.

use rocksdb::{ColumnFamily, DB, WriteBatch};
use serde::{Deserialize, Serialize};

use super::command::{CommandV1, ManifestRecord, Rejection, TagRecord, WriteResult};
use super::keys;
use super::lifecycle::LifecycleCommand;
use super::read::scan;
use super::state_machine::{get, put};
use super::{MetaError, NodeId, decode};
use crate::types::{Digest, RepositoryName, RequestMeta, Tag};

/// The Helm chart config media type: a manifest with this config is a chart.
pub const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";

const EVENT_PREFIX: &[u8] = b"e/";
const HEAD: &[u8] = b"w/next";
const DEF_PREFIX: &[u8] = b"w/d/";
const CURSOR_PREFIX: &[u8] = b"w/c/";
const LOG_PREFIX: &[u8] = b"w/l/";

/// Delivery log entries kept per webhook at most (the oldest go first).
pub const MAX_LOG: u64 = 10_000;

/// What happened: the `action` of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    /// A manifest was pushed (by tag or digest).
    Push,
    /// A manifest was deleted (with the tags pointing at it).
    Delete,
    /// A tag was deleted.
    TagDelete,
    /// A Helm chart (a manifest with Helm's config media type) was pushed.
    ChartPush,
    /// A Helm chart was deleted.
    ChartDelete,
    /// Reserved (ACR's quarantine); never sent yet.
    Quarantine,
    /// An image is complete in a region: every blob the placement wants there is held there.
    Replicated,
    /// A test delivery (`clusterctl webhooks ping`).
    Ping,
}

impl Action {
    /// Every action, in order.
    pub const ALL: [Action; 8] = [
        Action::Push,
        Action::Delete,
        Action::TagDelete,
        Action::ChartPush,
        Action::ChartDelete,
        Action::Quarantine,
        Action::Replicated,
        Action::Ping,
    ];

    /// Its name on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Delete => "delete",
            Action::TagDelete => "tag_delete",
            Action::ChartPush => "chart_push",
            Action::ChartDelete => "chart_delete",
            Action::Quarantine => "quarantine",
            Action::Replicated => "replicated",
            Action::Ping => "ping",
        }
    }

    /// The action named `s`.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The request that caused an event, if a client's.
pub type EventRequest = RequestMeta;

/// One event of the stream (`e/<seq>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened ([`Action::Push`], `Delete`, `TagDelete`, `ChartPush`, `ChartDelete`).
    pub action: Action,
    /// The repository.
    pub repo: RepositoryName,
    /// The tag pushed or deleted, if any.
    pub tag: Option<Tag>,
    /// The manifest.
    pub digest: Option<Digest>,
    /// The manifest's media type.
    pub media_type: Option<String>,
    /// The manifest's size in bytes.
    pub size: Option<u64>,
    /// When (ms since the epoch, the proposer's clock).
    pub at_ms: u64,
    /// The Raft log index of the command it was derived from.
    pub log_index: u64,
    /// The client request, when a client caused it.
    pub request: Option<EventRequest>,
}

/// The head of the event log (`w/next`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHead {
    /// The seq the next event gets (= events recorded so far).
    pub next: u64,
    /// When the last event happened (times events whose command carries none).
    pub last_at_ms: u64,
}

/// How a webhook's payloads are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    /// Azure Container Registry's JSON.
    Acr,
    /// CloudEvents 1.0, structured JSON.
    CloudEvents,
}

impl Format {
    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Acr => "acr",
            Format::CloudEvents => "cloudevents",
        }
    }

    /// The format named `s`.
    pub fn parse(s: &str) -> Option<Format> {
        [Format::Acr, Format::CloudEvents]
            .into_iter()
            .find(|f| f.as_str() == s)
    }
}

/// A webhook definition (`w/d/<name>`). Validated by the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Where payloads are POSTed (http or https).
    pub uri: String,
    /// Headers sent with every delivery.
    pub headers: Vec<(String, String)>,
    /// The actions it is sent.
    pub actions: Vec<Action>,
    /// Repository scopes (`repo:tag`, `repo:*`, globs); empty: every repository.
    pub scopes: Vec<String>,
    /// Whether it is delivered to.
    pub enabled: bool,
    /// Its region: delivered from that region's nodes once the event is visible there.
    pub region: Option<String>,
    /// The payload format.
    pub format: Format,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    /// When it was last changed.
    pub updated_ms: u64,
}

/// One delivery attempt series, in the webhook's log (`w/l/...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// When it ended (ms since the epoch).
    pub at_ms: u64,
    /// The event id sent.
    pub event_id: String,
    /// The action sent.
    pub action: Action,
    /// The event's seq (`None` for a ping).
    pub seq: Option<u64>,
    /// The region of a `replicated` event.
    pub region: Option<String>,
    /// The last HTTP status, if an answer came.
    pub status: Option<u16>,
    /// Why the last attempt failed, if it did and no status explains it.
    pub error: Option<String>,
    /// The last attempt's time to the answer, in milliseconds.
    pub latency_ms: u64,
    /// The start of the last answer's body.
    pub excerpt: String,
    /// Attempts made.
    pub attempts: u32,
    /// The node that delivered.
    pub node: NodeId,
}

impl Delivery {
    /// Whether it ended with a 2xx answer.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// A change to webhooks or the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookCommand {
    /// Create (`create`: refused when it exists) or replace (refused when it does not, or,
    /// with `expect`, when it was changed since it was read) a webhook. `created_ms` is kept
    /// on a replace.
    Put {
        /// Its name.
        name: String,
        /// The definition.
        webhook: Webhook,
        /// Whether this creates it.
        create: bool,
        /// A replace applies only if the stored definition's `updated_ms` is this.
        expect: Option<u64>,
    },
    /// Remove a webhook, its cursor and its log.
    Delete {
        /// Its name.
        name: String,
    },
    /// The delivering node's progress: the cursor (when it moved) and the deliveries done
    /// since the last progress. Log entries older than `keep_after_ms` go.
    Progress {
        /// The webhook.
        name: String,
        /// The first event not yet done (never moves the cursor back).
        cursor: Option<u64>,
        /// Deliveries to append to the log.
        deliveries: Vec<Delivery>,
        /// Log entries before this time are removed.
        keep_after_ms: u64,
    },
    /// Remove the events before `below`.
    PruneEvents {
        /// The first event kept.
        below: u64,
    },
}

fn def_key(name: &str) -> Vec<u8> {
    [DEF_PREFIX, name.as_bytes()].concat()
}

fn cursor_key(name: &str) -> Vec<u8> {
    [CURSOR_PREFIX, name.as_bytes()].concat()
}

fn log_prefix(name: &str) -> Vec<u8> {
    [LOG_PREFIX, name.as_bytes(), b"\0"].concat()
}

fn log_key(name: &str, n: u64) -> Vec<u8> {
    [log_prefix(name).as_slice(), &n.to_be_bytes()].concat()
}

/// The first log entry to keep of `name`'s log: past the newest [`MAX_LOG`] of `logged`, and
/// none before `keep_after_ms`; with the number of the oldest entry there is, if any.
fn log_cut(
    db: &DB,
    name: &str,
    logged: u64,
    keep_after_ms: u64,
) -> Result<(u64, Option<u64>), MetaError> {
    let prefix = log_prefix(name);
    let mut cut = logged.saturating_sub(MAX_LOG);
    let mut oldest = None;
    for item in scan(db, &prefix, None) {
        let (k, v) = item?;
        let n = keys::log_index(&k[prefix.len()..]);
        oldest.get_or_insert(n);
        let super::command::Stored::V1(d) =
            decode::<super::command::Stored<Delivery>>("delivery", &v)?;
        if n >= cut && d.at_ms >= keep_after_ms {
            break;
        }
        cut = cut.max(n + 1);
    }
    Ok((cut, oldest))
}

fn event_key(seq: u64) -> Vec<u8> {
    [EVENT_PREFIX, &seq.to_be_bytes()].concat()
}

/// The head of the event log.
pub(super) fn head(db: &DB) -> Result<EventHead, MetaError> {
    Ok(get(db, "event head", HEAD)?.unwrap_or_default())
}

/// A webhook's definition.
pub(super) fn webhook(db: &DB, name: &str) -> Result<Option<Webhook>, MetaError> {
    get(db, "webhook", &def_key(name))
}

/// Where a webhook's delivery stands (`w/c/<name>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The first event not yet done.
    pub cursor: u64,
    /// Log entries written so far (numbers the next one).
    pub logged: u64,
}

fn position(db: &DB, name: &str) -> Result<Position, MetaError> {
    Ok(get(db, "webhook position", &cursor_key(name))?.unwrap_or_default())
}

/// A webhook's cursor (0 when it has none).
pub(super) fn cursor(db: &DB, name: &str) -> Result<u64, MetaError> {
    Ok(position(db, name)?.cursor)
}

/// Every webhook with its cursor, by name.
pub(super) fn webhooks(db: &DB) -> Result<Vec<(String, Webhook, u64)>, MetaError> {
    let mut out = Vec::new();
    for item in scan(db, DEF_PREFIX, None) {
        let (k, v) = item?;
        let name = String::from_utf8_lossy(&k[DEF_PREFIX.len()..]).into_owned();
        let super::command::Stored::V1(w) =
            decode::<super::command::Stored<Webhook>>("webhook", &v)?;
        let c = cursor(db, &name)?;
        out.push((name, w, c));
    }
    Ok(out)
}

/// Up to `n` events from `from` on, in order, with their seqs.
pub(super) fn events(db: &DB, from: u64, n: usize) -> Result<Vec<(u64, Event)>, MetaError> {
    let mut out = Vec::new();
    for item in scan(db, EVENT_PREFIX, Some(&event_key(from))) {
        if out.len() == n {
            break;
        }
        let (k, v) = item?;
        let seq = keys::log_index(&k[EVENT_PREFIX.len()..]);
        let super::command::Stored::V1(e) = decode::<super::command::Stored<Event>>("event", &v)?;
        out.push((seq, e));
    }
    Ok(out)
}

/// The seq of the first event that happened at or after `ms` (the head's `next` when none
/// did).
pub(super) fn first_since(db: &DB, ms: u64) -> Result<u64, MetaError> {
    for item in scan(db, EVENT_PREFIX, None) {
        let (k, v) = item?;
        let super::command::Stored::V1(e) = decode::<super::command::Stored<Event>>("event", &v)?;
        if e.at_ms >= ms {
            return Ok(keys::log_index(&k[EVENT_PREFIX.len()..]));
        }
    }
    Ok(head(db)?.next)
}

/// A webhook's log, newest first, at most `n` entries.
pub(super) fn deliveries(db: &DB, name: &str, n: usize) -> Result<Vec<Delivery>, MetaError> {
    let prefix = log_prefix(name);
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(keys::prefix_end(&prefix));
    opts.set_iterate_lower_bound(prefix.clone());
    let mut it = db.raw_iterator_cf_opt(super::state_machine::state_cf(db), opts);
    it.seek_to_last();
    let mut out = Vec::new();
    while let Some(v) = it.value() {
        if out.len() == n {
            break;
        }
        let super::command::Stored::V1(d) =
            decode::<super::command::Stored<Delivery>>("delivery", v)?;
        out.push(d);
        it.prev();
    }
    it.status().map_err(MetaError::db("scan webhook log"))?;
    Ok(out)
}

/// Records `events` (in order) at the end of the log.
pub(super) fn record(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    events: Vec<Event>,
) -> Result<(), MetaError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut h = head(db)?;
    for e in events {
        h.last_at_ms = h.last_at_ms.max(e.at_ms);
        put(batch, cf, &event_key(h.next), &e);
        h.next += 1;
    }
    put(batch, cf, HEAD, &h);
    Ok(())
}

/// Applies a webhook command.
pub(super) fn apply(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    cmd: &WebhookCommand,
) -> Result<WriteResult, MetaError> {
    match cmd {
        WebhookCommand::Put {
            name,
            webhook,
            create,
            expect,
        } => {
            let old = self::webhook(db, name)?;
            let mut w = webhook.clone();
            match (&old, create) {
                (Some(_), true) => {
                    return Ok(WriteResult::Rejected(Rejection::Exists(format!(
                        "webhook {name}"
                    ))));
                }
                (None, false) => {
                    return Ok(WriteResult::Rejected(Rejection::Unknown(format!(
                        "webhook {name}"
                    ))));
                }
                (Some(o), false) if expect.is_some_and(|e| e != o.updated_ms) => {
                    return Ok(WriteResult::Rejected(Rejection::Changed(format!(
                        "webhook {name} was changed meanwhile: read it again"
                    ))));
                }
                (Some(o), false) => w.created_ms = o.created_ms,
                (None, true) => {}
            }
            // Not sent the past: a new webhook, or one enabled again, starts at the end.
            if old.as_ref().is_none_or(|o| !o.enabled) && w.enabled {
                let p = Position {
                    cursor: head(db)?.next,
                    ..position(db, name)?
                };
                put(batch, cf, &cursor_key(name), &p);
            }
            put(batch, cf, &def_key(name), &w);
            Ok(WriteResult::Done)
        }
        WebhookCommand::Delete { name } => {
            if self::webhook(db, name)?.is_none() {
                return Ok(WriteResult::Rejected(Rejection::Unknown(format!(
                    "webhook {name}"
                ))));
            }
            batch.delete_cf(cf, def_key(name));
            batch.delete_cf(cf, cursor_key(name));
            let prefix = log_prefix(name);
            batch.delete_range_cf(cf, &prefix, &keys::prefix_end(&prefix));
            Ok(WriteResult::Done)
        }
        WebhookCommand::Progress {
            name,
            cursor,
            deliveries,
            keep_after_ms,
        } => {
            if self::webhook(db, name)?.is_none() {
                return Ok(WriteResult::Rejected(Rejection::Unknown(format!(
                    "webhook {name}"
                ))));
            }
            let mut p = position(db, name)?;
            p.cursor = p.cursor.max(cursor.unwrap_or(0));
            for d in deliveries {
                put(batch, cf, &log_key(name, p.logged), d);
                p.logged += 1;
            }
            put(batch, cf, &cursor_key(name), &p);
            // A range delete only when something is to go (no tombstone per progress).
            let (cut, oldest) = log_cut(db, name, p.logged, *keep_after_ms)?;
            if oldest.is_some_and(|o| o < cut) {
                batch.delete_range_cf(cf, &log_prefix(name), &log_key(name, cut));
            }
            Ok(WriteResult::Done)
        }
        WebhookCommand::PruneEvents { below } => {
            batch.delete_range_cf(cf, EVENT_PREFIX, &event_key(*below));
            Ok(WriteResult::Done)
        }
    }
}

/// The events a command causes, derived from it and the state before it applies (they are
/// recorded only if it applies). `at_ms` is the proposer's time when the command carries it;
/// `request`, the client request it was proposed for.
pub(super) fn derive(
    db: &DB,
    cmd: &CommandV1,
    log_index: u64,
    at_ms: Option<u64>,
    request: Option<&RequestMeta>,
) -> Result<Vec<Event>, MetaError> {
    let event = |action, repo: &RepositoryName, tag, digest: &Digest, m: Option<(String, u64)>| {
        let (media_type, size) = m.map_or((None, None), |(t, s)| (Some(t), Some(s)));
        Event {
            action,
            repo: repo.clone(),
            tag,
            digest: Some(digest.clone()),
            media_type,
            size,
            at_ms: at_ms.unwrap_or(0),
            log_index,
            request: request.cloned(),
        }
    };
    let mut out = Vec::new();
    match cmd {
        CommandV1::PutManifest(p) => {
            let action = if is_chart(&p.record) {
                Action::ChartPush
            } else {
                Action::Push
            };
            let mut e = event(
                action,
                &p.repo,
                p.tag.clone(),
                &p.digest,
                Some(describe(&p.record)),
            );
            e.at_ms = at_ms.unwrap_or(p.record.created_ms);
            out.push(e);
        }
        CommandV1::DeleteManifest { repo, digest }
        | CommandV1::RemoveManifest { repo, digest, .. } => {
            if let Some(e) = manifest_deleted(db, repo, digest, &event)? {
                out.push(e);
            }
        }
        CommandV1::DeleteTag { repo, tag } => {
            if let Some(e) = tag_deleted(db, repo, tag, &event)? {
                out.push(e);
            }
        }
        CommandV1::Lifecycle(l) => match l.as_ref() {
            LifecycleCommand::RemoveUntagged { repo, digest, .. } => {
                if let Some(e) = manifest_deleted(db, repo, digest, &event)? {
                    out.push(e);
                }
            }
            LifecycleCommand::DeleteTagIf { repo, tag, .. } => {
                if let Some(e) = tag_deleted(db, repo, tag, &event)? {
                    out.push(e);
                }
            }
            _ => {}
        },
        _ => {}
    }
    let own_time = match cmd {
        CommandV1::RemoveManifest { at_ms, .. } => Some(*at_ms),
        CommandV1::Lifecycle(l) => match l.as_ref() {
            LifecycleCommand::RemoveUntagged { at_ms, .. } => Some(*at_ms),
            _ => None,
        },
        _ => None,
    };
    if out.iter().any(|e| e.at_ms == 0) {
        let fallback = own_time.map_or_else(|| head(db).map(|h| h.last_at_ms), Ok)?;
        for e in &mut out {
            if e.at_ms == 0 {
                e.at_ms = fallback;
            }
        }
    }
    Ok(out)
}

type MakeEvent<'a> =
    dyn Fn(Action, &RepositoryName, Option<Tag>, &Digest, Option<(String, u64)>) -> Event + 'a;

fn manifest_deleted(
    db: &DB,
    repo: &RepositoryName,
    digest: &Digest,
    event: &MakeEvent<'_>,
) -> Result<Option<Event>, MetaError> {
    let Some(record) = get::<ManifestRecord>(db, "manifest", &keys::manifest(repo, digest))? else {
        return Ok(None);
    };
    let action = if is_chart(&record) {
        Action::ChartDelete
    } else {
        Action::Delete
    };
    Ok(Some(event(
        action,
        repo,
        None,
        digest,
        Some(describe(&record)),
    )))
}

fn tag_deleted(
    db: &DB,
    repo: &RepositoryName,
    tag: &Tag,
    event: &MakeEvent<'_>,
) -> Result<Option<Event>, MetaError> {
    let Some(t) = get::<TagRecord>(db, "tag", &keys::tag(repo, tag))? else {
        return Ok(None);
    };
    let m = get::<ManifestRecord>(db, "manifest", &keys::manifest(repo, &t.digest))?;
    Ok(Some(event(
        Action::TagDelete,
        repo,
        Some(tag.clone()),
        &t.digest,
        m.as_ref().map(describe),
    )))
}

/// A manifest's media type and size.
fn describe(m: &ManifestRecord) -> (String, u64) {
    (m.media_type.clone(), m.bytes.len() as u64)
}

/// Whether a manifest is a Helm chart: its config has Helm's media type.
pub fn is_chart(m: &ManifestRecord) -> bool {
    #[derive(Deserialize)]
    struct Config<'a> {
        #[serde(borrow, rename = "mediaType")]
        media_type: Option<&'a str>,
    }
    #[derive(Deserialize)]
    struct Manifest<'a> {
        #[serde(borrow)]
        config: Option<Config<'a>>,
    }
    // Cheap test first: most manifests never mention it.
    if !m
        .bytes
        .windows(HELM_CONFIG.len())
        .any(|w| w == HELM_CONFIG.as_bytes())
    {
        return false;
    }
    serde_json::from_slice::<Manifest<'_>>(&m.bytes)
        .ok()
        .and_then(|x| x.config)
        .and_then(|c| c.media_type)
        == Some(HELM_CONFIG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_formats_round_trip_their_names() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("pull"), None);
        assert_eq!(Format::parse("cloudevents"), Some(Format::CloudEvents));
        assert_eq!(Format::parse("xml"), None);
    }

    #[test]
    fn charts_are_told_by_their_config_media_type() {
        let rec = |bytes: &str| ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes: bytes.as_bytes().to_vec(),
            blobs: vec![],
            children: vec![],
            subject: None,
            created_ms: 0,
        };
        assert!(is_chart(&rec(&format!(
            r#"{{"config":{{"mediaType":"{HELM_CONFIG}"}}}}"#
        ))));
        assert!(!is_chart(&rec(r#"{"config":{"mediaType":"x"}}"#)));
        assert!(!is_chart(&rec(&format!(
            r#"{{"config":{{"mediaType":"x"}},"annotations":{{"a":"{HELM_CONFIG}"}}}}"#
        ))));
    }

    #[test]
    fn log_keys_sort_by_number_within_their_webhook() {
        assert!(log_key("a", 255) < log_key("a", 256));
        assert!(log_key("a", u64::MAX).starts_with(&log_prefix("a")));
        assert!(!log_key("ab", 1).starts_with(&log_prefix("a")));
    }
}
