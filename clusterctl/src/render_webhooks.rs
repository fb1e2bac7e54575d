//! Output of `webhooks`: pure functions from the admin proto messages to tables, `key: value`
//! lines and JSON, with the conventions of [`crate::render`] (tables with an upper-case
//! header, `-` for an empty field; JSON field for field with snake_case names; `ok` on the
//! object of a change). Times are RFC 3339 in UTC for humans and ms since the epoch in JSON.
//!
//! Header values never reach the output: a header is shown by its name with `***` whatever
//! the message holds (the server masks them already; this does not rely on it).

use berth_proto::admin::{Webhook, WebhookDeliveries, WebhookDelivery, Webhooks};
use serde_json::{Value, json};

use crate::cli_auth::format_time;
use crate::render::{Align, Table, or_dash};

/// What a header's value is shown as.
pub const MASKED: &str = "***";
/// Characters of a response excerpt (or an error) in the `events` table.
const EXCERPT_CHARS: usize = 60;

/// `enabled` or `disabled`.
fn state(w: &Webhook) -> &'static str {
    if w.enabled { "enabled" } else { "disabled" }
}

/// `*` (every repository) or the scopes, comma-separated.
fn scopes(w: &Webhook) -> String {
    if w.scopes.is_empty() {
        "*".to_owned()
    } else {
        w.scopes.join(",")
    }
}

/// The header names, each with its masked value.
fn header_names(w: &Webhook) -> Vec<String> {
    w.headers
        .iter()
        .map(|h| format!("{}: {MASKED}", h.name))
        .collect()
}

/// `webhooks list` for humans: one row per webhook.
pub fn webhooks_text(w: &Webhooks) -> String {
    if w.webhooks.is_empty() {
        return "no webhooks\n".to_owned();
    }
    Table {
        columns: vec![
            ("NAME", Align::Left),
            ("STATUS", Align::Left),
            ("REGION", Align::Left),
            ("FORMAT", Align::Left),
            ("ACTIONS", Align::Left),
            ("SCOPES", Align::Left),
            ("BACKLOG", Align::Right),
            ("URI", Align::Left),
        ],
        rows: w
            .webhooks
            .iter()
            .map(|w| {
                vec![
                    w.name.clone(),
                    state(w).to_owned(),
                    or_dash(&w.region),
                    w.format.clone(),
                    w.actions.join(","),
                    scopes(w),
                    w.backlog.to_string(),
                    w.uri.clone(),
                ]
            })
            .collect(),
    }
    .render()
}

/// `webhooks show` (and what `create` and `update` leave) for humans: `key: value` lines.
///
/// ```text
/// name: deploy
/// uri: https://hooks.example/x
/// status: enabled
/// actions: push,delete
/// scopes: team/**:*
/// headers: Authorization: ***
/// region: -
/// format: acr
/// created: 2026-11-30T12:00:00Z
/// updated: 2026-11-30T12:00:00Z
/// cursor: 7
/// backlog: 0
/// ```
pub fn webhook_text(w: &Webhook) -> String {
    let headers = header_names(w);
    format!(
        "name: {}\nuri: {}\nstatus: {}\nactions: {}\nscopes: {}\nheaders: {}\nregion: {}\n\
         format: {}\ncreated: {}\nupdated: {}\ncursor: {}\nbacklog: {}\n",
        w.name,
        w.uri,
        state(w),
        w.actions.join(","),
        scopes(w),
        if headers.is_empty() {
            "-".to_owned()
        } else {
            headers.join(", ")
        },
        or_dash(&w.region),
        w.format,
        format_time(w.created_ms),
        format_time(w.updated_ms),
        w.cursor,
        w.backlog,
    )
}

/// `webhooks show|create|update --json`: `Webhook` field for field, header values masked.
pub fn webhook_json(w: &Webhook) -> Value {
    json!({
        "name": w.name,
        "uri": w.uri,
        "headers": w.headers.iter().map(|h| json!({"name": h.name, "value": MASKED}))
            .collect::<Vec<_>>(),
        "actions": w.actions,
        "scopes": w.scopes,
        "enabled": w.enabled,
        "region": w.region,
        "format": w.format,
        "created_ms": w.created_ms,
        "updated_ms": w.updated_ms,
        "cursor": w.cursor,
        "backlog": w.backlog,
    })
}

/// `webhooks list --json`.
pub fn webhooks_json(w: &Webhooks) -> Value {
    json!({"webhooks": w.webhooks.iter().map(webhook_json).collect::<Vec<_>>()})
}

/// The HTTP status, or `-` when no answer came.
fn status(d: &WebhookDelivery) -> String {
    match d.status {
        0 => "-".to_owned(),
        s => s.to_string(),
    }
}

/// Whether the delivery got a 2xx answer.
pub fn succeeded(d: &WebhookDelivery) -> bool {
    (200..300).contains(&d.status)
}

/// What went wrong or came back, for the error of a failed ping: `HTTP 500` or the error.
pub fn outcome(d: &WebhookDelivery) -> String {
    match (d.status, d.error.as_str()) {
        (0, "") => "no answer".to_owned(),
        (0, e) => e.to_owned(),
        (s, _) => format!("HTTP {s}"),
    }
}

/// One line: control characters (a body's newlines) as spaces, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = line.trim();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// `webhooks ping` for humans.
///
/// ```text
/// ping of deploy: HTTP 200 in 12 ms (node 1)
/// event id: 6f1c…
/// response: ok
/// ```
pub fn ping_text(name: &str, d: &WebhookDelivery) -> String {
    let mut out = match d.status {
        0 => format!(
            "ping of {name}: failed after {} ms (node {}): {}\n",
            d.latency_ms,
            d.node,
            or_dash(&d.error)
        ),
        s => format!(
            "ping of {name}: HTTP {s} in {} ms (node {})\n",
            d.latency_ms, d.node
        ),
    };
    out.push_str(&format!("event id: {}\n", d.event_id));
    out.push_str(&format!(
        "response: {}\n",
        or_dash(&one_line(&d.excerpt, 256))
    ));
    out
}

/// A delivery as JSON, field for field (`seq` null without one, `status` null without an
/// answer).
pub fn delivery_json(d: &WebhookDelivery) -> Value {
    json!({
        "at_ms": d.at_ms,
        "event_id": d.event_id,
        "action": d.action,
        "seq": d.has_seq.then_some(d.seq),
        "region": d.region,
        "status": (d.status != 0).then_some(d.status),
        "error": d.error,
        "latency_ms": d.latency_ms,
        "excerpt": d.excerpt,
        "attempts": d.attempts,
        "node": d.node,
    })
}

/// `webhooks ping --json`: the delivery, with `ok` whether it got a 2xx.
pub fn ping_json(d: &WebhookDelivery) -> Value {
    let mut v = delivery_json(d);
    v["ok"] = succeeded(d).into();
    v
}

/// `webhooks events` for humans: newest first.
pub fn deliveries_text(name: &str, d: &WebhookDeliveries) -> String {
    if d.deliveries.is_empty() {
        return format!("no deliveries to {name}\n");
    }
    Table {
        columns: vec![
            ("TIME", Align::Left),
            ("EVENT ID", Align::Left),
            ("ACTION", Align::Left),
            ("REGION", Align::Left),
            ("STATUS", Align::Right),
            ("LATENCY MS", Align::Right),
            ("ATTEMPTS", Align::Right),
            ("NODE", Align::Right),
            ("EXCERPT/ERROR", Align::Left),
        ],
        rows: d
            .deliveries
            .iter()
            .map(|d| {
                let said = if d.error.is_empty() {
                    &d.excerpt
                } else {
                    &d.error
                };
                vec![
                    format_time(d.at_ms),
                    d.event_id.clone(),
                    d.action.clone(),
                    or_dash(&d.region),
                    status(d),
                    d.latency_ms.to_string(),
                    d.attempts.to_string(),
                    d.node.to_string(),
                    or_dash(&one_line(said, EXCERPT_CHARS)),
                ]
            })
            .collect(),
    }
    .render()
}

/// `webhooks events --json`.
pub fn deliveries_json(d: &WebhookDeliveries) -> Value {
    json!({"deliveries": d.deliveries.iter().map(delivery_json).collect::<Vec<_>>()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::admin::WebhookHeader;

    fn webhook() -> Webhook {
        Webhook {
            name: "deploy".into(),
            uri: "https://hooks.example/x".into(),
            // As if a server forgot to mask: the output must not show it anyway.
            headers: vec![WebhookHeader {
                name: "Authorization".into(),
                value: "Bearer s3cret".into(),
            }],
            actions: vec!["push".into(), "delete".into()],
            scopes: vec![],
            enabled: false,
            region: String::new(),
            format: "acr".into(),
            created_ms: 1_764_504_000_000,
            updated_ms: 1_764_504_000_000,
            cursor: 7,
            backlog: 3,
        }
    }

    fn delivery(status: u32, error: &str, excerpt: &str) -> WebhookDelivery {
        WebhookDelivery {
            at_ms: 1_764_504_000_000,
            event_id: "e1".into(),
            action: "ping".into(),
            status,
            error: error.into(),
            latency_ms: 12,
            excerpt: excerpt.into(),
            attempts: 1,
            node: 1,
            ..Default::default()
        }
    }

    #[test]
    fn header_values_are_never_rendered() {
        let w = webhook();
        let text = webhook_text(&w);
        assert!(text.contains("headers: Authorization: ***\n"), "{text}");
        let json = webhook_json(&w).to_string();
        let list = webhooks_text(&Webhooks { webhooks: vec![w] });
        for out in [&text, &json, &list] {
            assert!(!out.contains("s3cret"), "{out}");
        }
    }

    #[test]
    fn the_list_shows_state_scopes_and_backlog() {
        let text = webhooks_text(&Webhooks {
            webhooks: vec![webhook()],
        });
        let expected = "\
NAME    STATUS    REGION  FORMAT  ACTIONS      SCOPES  BACKLOG  URI
deploy  disabled  -       acr     push,delete  *             3  https://hooks.example/x
";
        assert_eq!(text, expected);
        assert_eq!(webhooks_text(&Webhooks::default()), "no webhooks\n");
    }

    #[test]
    fn a_ping_shows_status_latency_and_excerpt_or_the_error() {
        let ok = delivery(200, "", "ok\nthanks");
        assert!(succeeded(&ok));
        assert_eq!(
            ping_text("deploy", &ok),
            "ping of deploy: HTTP 200 in 12 ms (node 1)\nevent id: e1\nresponse: ok thanks\n"
        );
        assert_eq!(ping_json(&ok)["ok"], true);
        assert_eq!(ping_json(&ok)["seq"], Value::Null);

        let refused = delivery(0, "connection refused", "");
        assert!(!succeeded(&refused));
        assert_eq!(outcome(&refused), "connection refused");
        assert!(ping_text("deploy", &refused).starts_with("ping of deploy: failed after 12 ms"));
        assert_eq!(ping_json(&refused)["status"], Value::Null);

        let server_error = delivery(500, "", "boom");
        assert!(!succeeded(&server_error));
        assert_eq!(outcome(&server_error), "HTTP 500");
    }

    #[test]
    fn the_events_table_shows_the_error_else_the_excerpt_on_one_line() {
        let d = WebhookDeliveries {
            deliveries: vec![delivery(200, "", "fine\r\n"), delivery(0, "timed out", "")],
        };
        let text = deliveries_text("deploy", &d);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("TIME"));
        assert!(lines[1].ends_with("fine"), "{text}");
        assert!(lines[2].ends_with("timed out"), "{text}");
        assert!(lines[2].contains("  -  "), "no status: {text}");
        assert_eq!(
            deliveries_text("deploy", &WebhookDeliveries::default()),
            "no deliveries to deploy\n"
        );
    }
}
