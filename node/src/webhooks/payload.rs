//! What a delivery says: event ids, scope matching and the two payload formats.
//!
//! An event id is derived from the event's place in the log (and, for a `replicated` event,
//! its region), so every node that delivers it — the first time, or again after a failover —
//! sends the same id: a receiver de-duplicates by it.

use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::meta::webhooks::{Action, Event, Format};
use crate::types::time::rfc3339_ms;

/// What one delivery sends: an event of the log, or something made for this delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The event id.
    pub id: String,
    /// The action.
    pub action: Action,
    /// The event (none for a ping).
    pub event: Option<Event>,
    /// Its seq in the log (none for a ping).
    pub seq: Option<u64>,
    /// The region it is about (`replicated`), or that a regional webhook fires from.
    pub region: Option<String>,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// The id of the event at `seq` (from the entry at `log_index`), as delivered with `action`
/// (`replicated` ids also name the region): a UUID (version 8) from a SHA-256.
pub fn event_id(seq: u64, log_index: u64, action: Action, region: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(b"berth-event\0");
    h.update(seq.to_be_bytes());
    h.update(log_index.to_be_bytes());
    if action == Action::Replicated {
        h.update(b"replicated\0");
        h.update(region.unwrap_or("").as_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid().to_string()
}

/// Whether a repository and tag are in one of `scopes` (empty: every repository).
///
/// A scope is `REPO[:TAG]` as Azure Container Registry's: `REPO` is a glob over repository
/// names (`*` within a path component, `**` across, as replication policies); `TAG` is a glob
/// over tags (`*` any run of characters), default `latest`. An event without a tag (a push by
/// digest, a manifest delete) is in a scope whose tag is `*` only.
pub fn in_scope(scopes: &[String], repo: &str, tag: Option<&str>) -> bool {
    scopes.is_empty()
        || scopes.iter().any(|s| {
            let (r, t) = s.split_once(':').unwrap_or((s.as_str(), "latest"));
            crate::meta::policy::matches(r, repo)
                && match tag {
                    Some(tag) => glob(t, tag),
                    None => t == "*",
                }
        })
}

/// Whether `s` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, s: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The payload's `Content-Type`.
pub fn content_type(format: Format) -> &'static str {
    match format {
        Format::Acr => "application/json",
        Format::CloudEvents => "application/cloudevents+json",
    }
}

/// The ACR fields of a delivery: id, timestamp, action, target, request (and berth's
/// `region`).
fn acr(o: &Outgoing) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(o.id));
    m.insert("timestamp".into(), json!(rfc3339_ms(o.at_ms)));
    m.insert("action".into(), json!(o.action.as_str()));
    if let Some(e) = &o.event {
        let mut target = Map::new();
        if let Some(t) = &e.media_type {
            target.insert("mediaType".into(), json!(t));
        }
        if let Some(s) = e.size {
            target.insert("size".into(), json!(s));
        }
        if let Some(d) = &e.digest {
            target.insert("digest".into(), json!(d.as_str()));
        }
        if let Some(s) = e.size {
            target.insert("length".into(), json!(s));
        }
        target.insert("repository".into(), json!(e.repo.as_str()));
        if let Some(t) = &e.tag {
            target.insert("tag".into(), json!(t.as_str()));
        }
        m.insert("target".into(), Value::Object(target));
        if let Some(r) = &e.request {
            m.insert(
                "request".into(),
                json!({
                    "id": r.id,
                    "host": r.host,
                    "method": r.method,
                    "useragent": r.user_agent,
                }),
            );
        }
    }
    if let Some(r) = &o.region {
        m.insert("region".into(), json!(r));
    }
    m
}

/// The CloudEvents `type` of an action.
fn cloudevents_type(a: Action) -> &'static str {
    match a {
        Action::Push => "io.berth.image.pushed",
        Action::Delete => "io.berth.image.deleted",
        Action::TagDelete => "io.berth.tag.deleted",
        Action::ChartPush => "io.berth.chart.pushed",
        Action::ChartDelete => "io.berth.chart.deleted",
        Action::Quarantine => "io.berth.image.quarantined",
        Action::Replicated => "io.berth.image.replicated",
        Action::Ping => "io.berth.ping",
    }
}

/// The body of a delivery in `format`; `source` names the cluster (CloudEvents `source`).
pub fn body(format: Format, o: &Outgoing, source: &str) -> Vec<u8> {
    let data = acr(o);
    let v = match format {
        Format::Acr => Value::Object(data),
        Format::CloudEvents => {
            let mut m = Map::new();
            m.insert("specversion".into(), json!("1.0"));
            m.insert("id".into(), json!(o.id));
            m.insert("source".into(), json!(source));
            m.insert("type".into(), json!(cloudevents_type(o.action)));
            m.insert("time".into(), json!(rfc3339_ms(o.at_ms)));
            if let Some(e) = &o.event {
                let subject = match (&e.tag, &e.digest) {
                    (Some(t), _) => format!("{}:{}", e.repo, t),
                    (None, Some(d)) => format!("{}@{}", e.repo, d),
                    (None, None) => e.repo.to_string(),
                };
                m.insert("subject".into(), json!(subject));
            }
            m.insert("datacontenttype".into(), json!("application/json"));
            m.insert("data".into(), Value::Object(data));
            Value::Object(m)
        }
    };
    serde_json::to_vec(&v).expect("JSON values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Digest, RepositoryName, RequestMeta, Tag};

    fn push() -> Outgoing {
        Outgoing {
            id: event_id(7, 42, Action::Push, None),
            action: Action::Push,
            event: Some(Event {
                action: Action::Push,
                repo: RepositoryName::parse("team/app").unwrap(),
                tag: Some(Tag::parse("v1").unwrap()),
                digest: Some(Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap()),
                media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
                size: Some(524),
                at_ms: 1_700_000_000_123,
                log_index: 42,
                request: Some(RequestMeta {
                    id: "req-1".into(),
                    host: "registry.example".into(),
                    method: "PUT".into(),
                    user_agent: "docker/27".into(),
                }),
            }),
            seq: Some(7),
            region: None,
            at_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn ids_are_stable_and_distinct_per_event_and_region() {
        let a = event_id(1, 10, Action::Push, None);
        assert_eq!(a, event_id(1, 10, Action::Push, None));
        assert_eq!(a.len(), 36);
        assert_ne!(a, event_id(2, 11, Action::Push, None));
        let eu = event_id(1, 10, Action::Replicated, Some("eu"));
        assert_ne!(eu, a);
        assert_ne!(eu, event_id(1, 10, Action::Replicated, Some("us")));
    }

    #[test]
    fn acr_payloads_have_acr_fields() {
        let v: Value = serde_json::from_slice(&body(Format::Acr, &push(), "x")).unwrap();
        assert_eq!(v["action"], "push");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["target"]["repository"], "team/app");
        assert_eq!(v["target"]["tag"], "v1");
        assert_eq!(v["target"]["size"], 524);
        assert_eq!(v["target"]["length"], 524);
        assert_eq!(
            v["target"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(v["request"]["id"], "req-1");
        assert_eq!(v["request"]["useragent"], "docker/27");
        assert!(v.get("region").is_none());
    }

    #[test]
    fn cloudevents_payloads_are_structured_json() {
        let mut o = push();
        o.action = Action::Replicated;
        o.region = Some("eu".into());
        let v: Value = serde_json::from_slice(&body(Format::CloudEvents, &o, "/berth/eu")).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "io.berth.image.replicated");
        assert_eq!(v["source"], "/berth/eu");
        assert_eq!(v["subject"], "team/app:v1");
        assert_eq!(v["id"], o.id);
        assert_eq!(v["data"]["region"], "eu");
        assert_eq!(
            v["data"]["target"]["digest"],
            format!("sha256:{}", "a".repeat(64))
        );
    }

    #[test]
    fn scopes_follow_acr() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(in_scope(&[], "a", None));
        assert!(in_scope(&s(&["team/app:*"]), "team/app", Some("v1")));
        assert!(in_scope(&s(&["team/app:*"]), "team/app", None));
        assert!(in_scope(&s(&["team/app:v*"]), "team/app", Some("v1")));
        assert!(!in_scope(&s(&["team/app:v*"]), "team/app", Some("x1")));
        assert!(!in_scope(&s(&["team/app:v1"]), "team/app", None));
        assert!(in_scope(&s(&["team/app"]), "team/app", Some("latest")));
        assert!(!in_scope(&s(&["team/app"]), "team/app", Some("v1")));
        assert!(in_scope(&s(&["team/*:*"]), "team/app", Some("v1")));
        assert!(!in_scope(&s(&["team/*:*"]), "team/a/b", Some("v1")));
        assert!(in_scope(&s(&["**:*"]), "team/a/b", Some("v1")));
        assert!(in_scope(
            &s(&["x:*", "team/app:v1"]),
            "team/app",
            Some("v1")
        ));
    }

    #[test]
    fn tag_globs() {
        assert!(glob("*", ""));
        assert!(glob("v*-rc*", "v1-rc2"));
        assert!(!glob("v*-rc", "v1-rc2"));
        assert!(glob("a*a", "aa"));
        assert!(!glob("a*a", "a"));
        assert!(glob("exact", "exact"));
    }
}
