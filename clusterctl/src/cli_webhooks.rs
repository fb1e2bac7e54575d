//! The command line of `webhooks`: clap definitions, their validation, and
//! [`WebhooksAction`], what each command does (the request it sends).
//!
//! As in [`crate::cli`], arguments are checked before anything is contacted (a bad one is a
//! usage error, exit status 2): webhook names, the URI's shape (`http://` or `https://` and a
//! host), action names, `--header K=V` (a header name, then `=`), formats, regions and the
//! `--limit` of `events`. Scopes are only checked to be one word here: their grammar is the
//! server's. The server checks everything again.
//!
//! Header values are secrets: they are sent, never printed (the server answers them masked).

use std::time::Duration;

use berth_proto::admin as pb;
use clap::{ArgGroup, Args, Subcommand};

use crate::cli::{READ_TIMEOUT, parse_label, parse_url};

/// The actions a webhook can be sent, as the server names them.
pub const ACTIONS: [&str; 8] = [
    "push",
    "delete",
    "tag_delete",
    "chart_push",
    "chart_delete",
    "quarantine",
    "replicated",
    "ping",
];
/// Most delivery log entries `events` asks for.
pub const MAX_EVENTS: u32 = 1000;
/// Deadline of `webhooks ping` by default: the node's attempt (`[webhooks] timeout_secs`, 10
/// by default) and the write of its log entry must fit.
pub const PING_TIMEOUT: Duration = Duration::from_secs(30);

/// `clusterctl webhooks …`.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Create a webhook: registry events (pushes, deletes, …) of the repositories its scopes
    /// match are POSTed to URI, at least once, in order per repository.
    Create(WebhookCreateArgs),
    /// Change a webhook (what is given changes); prints it as it is now.
    Update(WebhookUpdateArgs),
    /// Delete a webhook and its delivery log.
    Delete {
        /// The webhook.
        #[arg(value_parser = parse_webhook_name)]
        name: String,
    },
    /// List the webhooks: status, region, format, actions, scopes, backlog and URI.
    List,
    /// Show every field of a webhook (header values masked).
    Show {
        /// The webhook.
        #[arg(value_parser = parse_webhook_name)]
        name: String,
    },
    /// Send a `ping` event to the webhook now and print the answer (status, latency, the
    /// start of the body); exit 1 unless it answered 2xx.
    Ping {
        /// The webhook.
        #[arg(value_parser = parse_webhook_name)]
        name: String,
    },
    /// Show the webhook's delivery log, newest first: time, event, HTTP status, latency,
    /// attempts, the node that delivered, and the answer's start or the error.
    Events {
        /// The webhook.
        #[arg(value_parser = parse_webhook_name)]
        name: String,
        /// The newest N deliveries (1 to 1000).
        #[arg(long, value_name = "N", default_value = "20", value_parser = parse_limit)]
        limit: u32,
    },
}

/// `clusterctl webhooks create …`.
#[derive(Debug, Args)]
pub struct WebhookCreateArgs {
    /// 1 to 50 letters, digits, '-' or '_', starting with a letter or digit.
    #[arg(value_parser = parse_webhook_name)]
    pub name: String,
    /// Where events are POSTed: an http:// or https:// URL.
    #[arg(long, value_parser = parse_url)]
    pub uri: String,
    /// Comma-separated: push, delete, tag_delete, chart_push, chart_delete, quarantine,
    /// replicated, ping.
    #[arg(long, value_name = "ACTION,…", required = true, value_delimiter = ',', value_parser = parse_action)]
    pub actions: Vec<String>,
    /// A repository scope (`repo:tag`, `repo:*`, `team/**:*`; without a tag `:latest`);
    /// repeat for several; none: every repository.
    #[arg(long = "scope", value_name = "PATTERN", value_parser = parse_scope)]
    pub scopes: Vec<String>,
    /// A header sent with every delivery, `NAME=VALUE`; repeat for several. Values are kept
    /// secret: never shown again.
    #[arg(long = "header", value_name = "K=V", value_parser = parse_header)]
    pub headers: Vec<Header>,
    /// Deliver from this region's nodes, once an event's image is complete there.
    #[arg(long, value_parser = parse_label)]
    pub region: Option<String>,
    /// The payload format.
    #[arg(long, value_parser = ["acr", "cloudevents"], default_value = "acr")]
    pub format: String,
    /// Create it disabled (nothing is delivered until `update --enable`).
    #[arg(long)]
    pub disabled: bool,
}

/// `clusterctl webhooks update …`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["uri", "actions", "scopes", "clear_scopes", "headers", "clear_headers",
               "region", "no_region", "format", "enable", "disable"])
))]
pub struct WebhookUpdateArgs {
    /// The webhook.
    #[arg(value_parser = parse_webhook_name)]
    pub name: String,
    /// A new URI.
    #[arg(long, value_parser = parse_url)]
    pub uri: Option<String>,
    /// New actions, comma-separated (replacing them all).
    #[arg(long, value_name = "ACTION,…", value_delimiter = ',', value_parser = parse_action)]
    pub actions: Option<Vec<String>>,
    /// New scopes (repeat; replacing them all).
    #[arg(long = "scope", value_name = "PATTERN", value_parser = parse_scope, conflicts_with = "clear_scopes")]
    pub scopes: Vec<String>,
    /// Remove every scope: every repository.
    #[arg(long = "clear-scopes")]
    pub clear_scopes: bool,
    /// New headers, `NAME=VALUE` (repeat; replacing them all).
    #[arg(long = "header", value_name = "K=V", value_parser = parse_header, conflicts_with = "clear_headers")]
    pub headers: Vec<Header>,
    /// Remove every header.
    #[arg(long = "clear-headers")]
    pub clear_headers: bool,
    /// A new region.
    #[arg(long, value_parser = parse_label, conflicts_with = "no_region")]
    pub region: Option<String>,
    /// Remove the region: delivered by the leader as soon as an event happens.
    #[arg(long = "no-region")]
    pub no_region: bool,
    /// A new payload format.
    #[arg(long, value_parser = ["acr", "cloudevents"])]
    pub format: Option<String>,
    /// Deliver to it.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Stop delivering to it (enabled again, it starts with the next event: what happened
    /// meanwhile is not sent).
    #[arg(long)]
    pub disable: bool,
}

/// `--header NAME=VALUE`.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// The header's name.
    pub name: String,
    /// Its value (a secret).
    pub value: String,
}

/// The value stays out of debug output (clap and panics print arguments with it).
impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Header({}=***)", self.name)
    }
}

/// What a `webhooks` command does: the request it sends.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhooksAction {
    /// `webhooks create`.
    Create(pb::CreateWebhookRequest),
    /// `webhooks update`.
    Update(pb::UpdateWebhookRequest),
    /// `webhooks delete`.
    Delete(String),
    /// `webhooks list`.
    List,
    /// `webhooks show`.
    Show(String),
    /// `webhooks ping`.
    Ping(String),
    /// `webhooks events`.
    Events(pb::WebhookEventsRequest),
}

// prost derives `Eq` only for messages of scalar fields; these hold strings, booleans,
// integers and `WebhookHeader`s (two strings), no float: their equality is total.
impl Eq for WebhooksAction {}

impl WebhooksAction {
    /// The command's default deadline.
    pub fn timeout(&self) -> Duration {
        match self {
            WebhooksAction::Ping(_) => PING_TIMEOUT,
            _ => READ_TIMEOUT,
        }
    }
}

fn headers_message(h: &[Header]) -> Vec<pb::WebhookHeader> {
    h.iter()
        .map(|h| pb::WebhookHeader {
            name: h.name.clone(),
            value: h.value.clone(),
        })
        .collect()
}

impl WebhooksCommand {
    /// What it does.
    pub fn action(&self) -> WebhooksAction {
        match self {
            WebhooksCommand::Create(a) => WebhooksAction::Create(pb::CreateWebhookRequest {
                name: a.name.clone(),
                uri: a.uri.clone(),
                headers: headers_message(&a.headers),
                actions: a.actions.clone(),
                scopes: a.scopes.clone(),
                disabled: a.disabled,
                region: a.region.clone().unwrap_or_default(),
                format: a.format.clone(),
            }),
            WebhooksCommand::Update(a) => WebhooksAction::Update(pb::UpdateWebhookRequest {
                name: a.name.clone(),
                uri: a.uri.clone(),
                set_headers: !a.headers.is_empty() || a.clear_headers,
                headers: headers_message(&a.headers),
                set_actions: a.actions.is_some(),
                actions: a.actions.clone().unwrap_or_default(),
                set_scopes: !a.scopes.is_empty() || a.clear_scopes,
                scopes: a.scopes.clone(),
                enabled: match (a.enable, a.disable) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                region: match (&a.region, a.no_region) {
                    (Some(r), _) => Some(r.clone()),
                    (None, true) => Some(String::new()),
                    (None, false) => None,
                },
                format: a.format.clone(),
            }),
            WebhooksCommand::Delete { name } => WebhooksAction::Delete(name.clone()),
            WebhooksCommand::List => WebhooksAction::List,
            WebhooksCommand::Show { name } => WebhooksAction::Show(name.clone()),
            WebhooksCommand::Ping { name } => WebhooksAction::Ping(name.clone()),
            WebhooksCommand::Events { name, limit } => {
                WebhooksAction::Events(pb::WebhookEventsRequest {
                    name: name.clone(),
                    limit: *limit,
                })
            }
        }
    }
}

/// Parses a webhook name: 1 to 50 ASCII letters, digits, `-` and `_`, starting with a letter
/// or digit.
pub fn parse_webhook_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 50
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("expected 1 to 50 of a-z, A-Z, 0-9, '-', '_', starting with a letter or digit".into())
    }
}

/// Parses one action name (one item of `--actions`).
pub fn parse_action(s: &str) -> Result<String, String> {
    let s = s.trim();
    if ACTIONS.contains(&s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "unknown action {s:?} (one of: {})",
            ACTIONS.join(", ")
        ))
    }
}

/// Parses a scope: one non-empty word (the server checks the pattern).
pub fn parse_scope(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err("expected a scope such as repo:tag, repo:* or team/**:*".into());
    }
    Ok(s.to_owned())
}

/// Parses `--header NAME=VALUE` (split at the first `=`; the value may be empty).
pub fn parse_header(s: &str) -> Result<Header, String> {
    let (name, value) = s
        .split_once('=')
        .ok_or("expected NAME=VALUE (the '=' is missing)")?;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("invalid header name {name:?}"));
    }
    Ok(Header {
        name: name.to_owned(),
        value: value.to_owned(),
    })
}

/// Parses `events --limit`: 1 to [`MAX_EVENTS`].
pub fn parse_limit(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_EVENTS).contains(&n) => Ok(n),
        _ => Err(format!("expected a number from 1 to {MAX_EVENTS}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Action, Cli};

    fn action(args: &[&str]) -> WebhooksAction {
        let cli = Cli::try_parse_from([&["clusterctl", "webhooks"], args].concat())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.action() {
            Action::Webhooks(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn usage_error(args: &[&str]) -> String {
        let e = Cli::try_parse_from([&["clusterctl", "webhooks"], args].concat())
            .expect_err("a usage error");
        assert_eq!(e.exit_code(), 2, "{args:?}");
        e.to_string()
    }

    #[test]
    fn create_sends_every_field_given() {
        let a = action(&[
            "create",
            "deploy",
            "--uri",
            "https://hooks.example/x",
            "--actions",
            "push,delete",
            "--scope",
            "team/**:*",
            "--scope",
            "app:v1",
            "--header",
            "Authorization=Bearer a=b",
            "--region",
            "eu-west",
            "--format",
            "cloudevents",
            "--disabled",
        ]);
        assert_eq!(
            a,
            WebhooksAction::Create(pb::CreateWebhookRequest {
                name: "deploy".into(),
                uri: "https://hooks.example/x".into(),
                headers: vec![pb::WebhookHeader {
                    name: "Authorization".into(),
                    value: "Bearer a=b".into(),
                }],
                actions: vec!["push".into(), "delete".into()],
                scopes: vec!["team/**:*".into(), "app:v1".into()],
                disabled: true,
                region: "eu-west".into(),
                format: "cloudevents".into(),
            })
        );
        assert_eq!(a.timeout(), READ_TIMEOUT);
        let WebhooksAction::Create(minimal) =
            action(&["create", "d", "--uri", "http://h:1/", "--actions", "ping"])
        else {
            panic!()
        };
        assert_eq!(minimal.format, "acr");
        assert_eq!(minimal.region, "");
        assert!(minimal.scopes.is_empty() && minimal.headers.is_empty() && !minimal.disabled);
    }

    #[test]
    fn update_sets_only_what_is_given_and_clears_on_request() {
        let WebhooksAction::Update(u) = action(&["update", "deploy", "--disable"]) else {
            panic!()
        };
        assert_eq!(
            u,
            pb::UpdateWebhookRequest {
                name: "deploy".into(),
                enabled: Some(false),
                ..Default::default()
            }
        );
        let WebhooksAction::Update(u) = action(&[
            "update",
            "deploy",
            "--clear-scopes",
            "--clear-headers",
            "--no-region",
            "--enable",
        ]) else {
            panic!()
        };
        assert!(u.set_scopes && u.scopes.is_empty());
        assert!(u.set_headers && u.headers.is_empty());
        assert_eq!(u.region.as_deref(), Some(""));
        assert_eq!(u.enabled, Some(true));
        assert!(!u.set_actions && u.uri.is_none() && u.format.is_none());
        let WebhooksAction::Update(u) = action(&[
            "update",
            "deploy",
            "--uri",
            "http://other:8080/h",
            "--actions",
            "replicated",
            "--scope",
            "a:*",
            "--header",
            "X-Key=k",
            "--region",
            "us",
            "--format",
            "acr",
        ]) else {
            panic!()
        };
        assert_eq!(u.uri.as_deref(), Some("http://other:8080/h"));
        assert!(u.set_actions && u.actions == ["replicated"]);
        assert!(u.set_scopes && u.scopes == ["a:*"]);
        assert!(u.set_headers && u.headers[0].name == "X-Key" && u.headers[0].value == "k");
        assert_eq!(u.region.as_deref(), Some("us"));
        assert_eq!(u.format.as_deref(), Some("acr"));
        assert_eq!(u.enabled, None);
    }

    #[test]
    fn the_other_commands_name_the_webhook() {
        assert_eq!(action(&["list"]), WebhooksAction::List);
        assert_eq!(action(&["show", "d"]), WebhooksAction::Show("d".into()));
        assert_eq!(action(&["delete", "d"]), WebhooksAction::Delete("d".into()));
        let ping = action(&["ping", "d"]);
        assert_eq!(ping, WebhooksAction::Ping("d".into()));
        assert_eq!(ping.timeout(), PING_TIMEOUT);
        assert_eq!(
            action(&["events", "d"]),
            WebhooksAction::Events(pb::WebhookEventsRequest {
                name: "d".into(),
                limit: 20
            })
        );
        assert_eq!(
            action(&["events", "d", "--limit", "1000"]),
            WebhooksAction::Events(pb::WebhookEventsRequest {
                name: "d".into(),
                limit: 1000
            })
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let create = |extra: &[&str]| {
            let mut args = vec!["create", "d", "--uri", "http://h/", "--actions", "push"];
            args.extend_from_slice(extra);
            usage_error(&args)
        };
        assert!(
            usage_error(&["create", "d", "--uri", "ftp://h/", "--actions", "push"])
                .contains("http://")
        );
        assert!(
            usage_error(&[
                "create",
                "d",
                "--uri",
                "http://h/",
                "--actions",
                "push,pull"
            ])
            .contains("unknown action \"pull\"")
        );
        assert!(usage_error(&["create", "d", "--uri", "http://h/"]).contains("--actions"));
        assert!(
            usage_error(&[
                "create",
                "bad.name",
                "--uri",
                "http://h/",
                "--actions",
                "push"
            ])
            .contains("1 to 50")
        );
        assert!(create(&["--header", "NoEquals"]).contains("NAME=VALUE"));
        assert!(create(&["--header", "Bad Name=v"]).contains("invalid header name"));
        assert!(create(&["--format", "json"]).contains("cloudevents"));
        assert!(create(&["--scope", ""]).contains("scope"));
        usage_error(&["update", "d"]);
        usage_error(&["update", "d", "--enable", "--disable"]);
        usage_error(&["update", "d", "--scope", "a", "--clear-scopes"]);
        usage_error(&["update", "d", "--header", "a=b", "--clear-headers"]);
        usage_error(&["update", "d", "--region", "r", "--no-region"]);
        usage_error(&["events", "d", "--limit", "0"]);
        usage_error(&["events", "d", "--limit", "1001"]);
    }

    #[test]
    fn a_header_value_stays_out_of_debug_output() {
        let h = parse_header("Authorization=Bearer s3cret").unwrap();
        assert_eq!(h.value, "Bearer s3cret");
        assert_eq!(format!("{h:?}"), "Header(Authorization=***)");
        assert_eq!(parse_header("X-Empty=").unwrap().value, "");
    }
}
