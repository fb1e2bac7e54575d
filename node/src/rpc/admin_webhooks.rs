//! The webhook side of `berth.admin.v1.Admin`: the RPCs behind `clusterctl webhooks`
//! ([`WebhooksRpc`]).
//!
//! Adapters over `webhooks::Webhooks` (definitions are Raft commands, validated there):
//! decode, call, encode. The caller was admitted, and a change or a ping is recorded in the
//! audit log, by `admin.rs` before these run. Errors become a `Status` through
//! `WebhookError::kind()` and `status.rs`'s table.
//!
//! Invariant: header values are secrets and never leave the node through this service —
//! every `Webhook` answer carries each header's name with the value [`MASKED`]; so are a
//! URI's user name, password and query, masked the same way.

use std::sync::Arc;

use berth_proto::admin as pb;
use tonic::Status;

use crate::meta::webhooks::Delivery;
use crate::webhooks::{WebhookSpec, WebhookUpdate, WebhookView, Webhooks};

/// What an answer shows for a header's value.
pub(super) const MASKED: &str = "***";
/// Deliveries `WebhookEvents` answers when the request asks for no number.
const DEFAULT_EVENTS: usize = 100;

/// The webhook RPCs of this node.
pub(super) struct WebhooksRpc {
    webhooks: Arc<Webhooks>,
}

/// Header pairs from the wire.
fn headers_of(h: Vec<pb::WebhookHeader>) -> Vec<(String, String)> {
    h.into_iter().map(|h| (h.name, h.value)).collect()
}

/// A URI as answers show it: a user name, password and query (where endpoints such as chat
/// services carry their tokens) masked.
fn masked_uri(uri: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(uri) else {
        return MASKED.to_string();
    };
    if !url.username().is_empty() {
        let _ = url.set_username(MASKED);
    }
    if url.password().is_some() {
        let _ = url.set_password(Some(MASKED));
    }
    if url.query().is_some() {
        url.set_query(Some(MASKED));
    }
    url.to_string()
}

/// The wire form of a webhook, its header values and the secrets of its URI masked.
fn webhook_message(v: WebhookView) -> pb::Webhook {
    let w = v.webhook;
    pb::Webhook {
        name: v.name,
        uri: masked_uri(&w.uri),
        headers: w
            .headers
            .into_iter()
            .map(|(name, _secret)| pb::WebhookHeader {
                name,
                value: MASKED.to_string(),
            })
            .collect(),
        actions: w.actions.iter().map(|a| a.as_str().to_string()).collect(),
        scopes: w.scopes,
        enabled: w.enabled,
        region: w.region.unwrap_or_default(),
        format: w.format.as_str().to_string(),
        created_ms: w.created_ms,
        updated_ms: w.updated_ms,
        cursor: v.cursor,
        backlog: v.head.saturating_sub(v.cursor),
    }
}

/// The wire form of a delivery.
fn delivery_message(d: Delivery) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        at_ms: d.at_ms,
        event_id: d.event_id,
        action: d.action.as_str().to_string(),
        seq: d.seq.unwrap_or(0),
        has_seq: d.seq.is_some(),
        region: d.region.unwrap_or_default(),
        status: d.status.map_or(0, u32::from),
        error: d.error.unwrap_or_default(),
        latency_ms: d.latency_ms,
        excerpt: d.excerpt,
        attempts: d.attempts,
        node: d.node,
    }
}

/// The change an `UpdateWebhookRequest` asks for (the `set_*` flags say which lists it sets;
/// an empty region clears it).
fn update_of(r: pb::UpdateWebhookRequest) -> WebhookUpdate {
    WebhookUpdate {
        uri: r.uri,
        headers: r.set_headers.then(|| headers_of(r.headers)),
        actions: r.set_actions.then_some(r.actions),
        scopes: r.set_scopes.then_some(r.scopes),
        enabled: r.enabled,
        region: r.region.map(|s| (!s.is_empty()).then_some(s)),
        format: r.format,
    }
}

impl WebhooksRpc {
    /// The RPCs over `webhooks`.
    pub(super) fn new(webhooks: Arc<Webhooks>) -> WebhooksRpc {
        WebhooksRpc { webhooks }
    }

    /// `Admin.CreateWebhook`: the webhook as created.
    pub(super) async fn create(&self, r: pb::CreateWebhookRequest) -> Result<pb::Webhook, Status> {
        let spec = WebhookSpec {
            uri: r.uri,
            headers: headers_of(r.headers),
            actions: r.actions,
            scopes: r.scopes,
            disabled: r.disabled,
            region: Some(r.region),
            format: r.format,
        };
        self.webhooks.create(&r.name, spec).await?;
        self.get(pb::WebhookRef { name: r.name }).await
    }

    /// `Admin.UpdateWebhook`: the webhook as it is now.
    pub(super) async fn update(&self, r: pb::UpdateWebhookRequest) -> Result<pb::Webhook, Status> {
        let name = r.name.clone();
        self.webhooks.update(&name, update_of(r)).await?;
        self.get(pb::WebhookRef { name }).await
    }

    /// `Admin.DeleteWebhook`.
    pub(super) async fn delete(&self, r: pb::WebhookRef) -> Result<pb::Deleted, Status> {
        self.webhooks.delete(&r.name).await?;
        Ok(pb::Deleted { name: r.name })
    }

    /// `Admin.ListWebhooks`.
    pub(super) async fn list(&self) -> Result<pb::Webhooks, Status> {
        Ok(pb::Webhooks {
            webhooks: self
                .webhooks
                .list()
                .await?
                .into_iter()
                .map(webhook_message)
                .collect(),
        })
    }

    /// `Admin.GetWebhook`.
    pub(super) async fn get(&self, r: pb::WebhookRef) -> Result<pb::Webhook, Status> {
        Ok(webhook_message(self.webhooks.get(&r.name)?))
    }

    /// `Admin.PingWebhook`.
    pub(super) async fn ping(&self, r: pb::WebhookRef) -> Result<pb::WebhookDelivery, Status> {
        Ok(delivery_message(self.webhooks.ping(&r.name).await?))
    }

    /// `Admin.WebhookEvents`.
    pub(super) async fn events(
        &self,
        r: pb::WebhookEventsRequest,
    ) -> Result<pb::WebhookDeliveries, Status> {
        let n = match r.limit {
            0 => DEFAULT_EVENTS,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        Ok(pb::WebhookDeliveries {
            deliveries: self
                .webhooks
                .events(&r.name, n)
                .await?
                .into_iter()
                .map(delivery_message)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::webhooks::{Action, Format, Webhook};

    fn view() -> WebhookView {
        WebhookView {
            name: "deploy".into(),
            webhook: Webhook {
                uri: "https://hooks.example/x".into(),
                headers: vec![
                    ("Authorization".into(), "Bearer s3cret".into()),
                    ("X-Key".into(), "k3y".into()),
                ],
                actions: vec![Action::Push, Action::Delete],
                scopes: vec!["team/**:*".into()],
                enabled: true,
                region: Some("eu-west".into()),
                format: Format::CloudEvents,
                created_ms: 10,
                updated_ms: 20,
            },
            cursor: 7,
            head: 12,
        }
    }

    #[test]
    fn a_webhook_answer_masks_every_header_value_and_counts_the_backlog() {
        let m = webhook_message(view());
        assert_eq!(
            m.headers,
            vec![
                pb::WebhookHeader {
                    name: "Authorization".into(),
                    value: MASKED.into()
                },
                pb::WebhookHeader {
                    name: "X-Key".into(),
                    value: MASKED.into()
                },
            ]
        );
        assert!(!format!("{m:?}").contains("s3cret"));
        assert!(!format!("{m:?}").contains("k3y"));
        assert_eq!(m.actions, ["push", "delete"]);
        assert_eq!(m.region, "eu-west");
        assert_eq!(m.format, "cloudevents");
        assert_eq!((m.cursor, m.backlog), (7, 5));
    }

    #[test]
    fn an_update_sets_only_what_it_names_and_can_clear_lists_and_the_region() {
        let nothing = update_of(pb::UpdateWebhookRequest {
            name: "deploy".into(),
            // Ignored without their set_ flags.
            scopes: vec!["a".into()],
            headers: vec![pb::WebhookHeader::default()],
            ..Default::default()
        });
        assert!(nothing.scopes.is_none() && nothing.headers.is_none());
        assert!(nothing.actions.is_none() && nothing.region.is_none());
        assert!(nothing.uri.is_none() && nothing.enabled.is_none() && nothing.format.is_none());

        let clear = update_of(pb::UpdateWebhookRequest {
            name: "deploy".into(),
            set_scopes: true,
            set_headers: true,
            region: Some(String::new()),
            enabled: Some(false),
            ..Default::default()
        });
        assert_eq!(clear.scopes, Some(vec![]));
        assert_eq!(clear.headers, Some(vec![]));
        assert_eq!(clear.region, Some(None));
        assert_eq!(clear.enabled, Some(false));

        let set = update_of(pb::UpdateWebhookRequest {
            name: "deploy".into(),
            set_actions: true,
            actions: vec!["push".into()],
            region: Some("us".into()),
            ..Default::default()
        });
        assert_eq!(set.actions, Some(vec!["push".to_string()]));
        assert_eq!(set.region, Some(Some("us".to_string())));
    }

    #[test]
    fn a_ping_has_no_seq_and_no_status_is_zero() {
        let m = delivery_message(Delivery {
            at_ms: 5,
            event_id: "id".into(),
            action: Action::Ping,
            seq: None,
            region: None,
            status: None,
            error: Some("connection refused".into()),
            latency_ms: 3,
            excerpt: String::new(),
            attempts: 1,
            node: 2,
        });
        assert_eq!((m.seq, m.has_seq, m.status), (0, false, 0));
        assert_eq!(m.action, "ping");
        assert_eq!(m.error, "connection refused");
        let m = delivery_message(Delivery {
            seq: Some(0),
            status: Some(204),
            error: None,
            ..Delivery {
                at_ms: 5,
                event_id: "id".into(),
                action: Action::Push,
                seq: None,
                region: None,
                status: None,
                error: None,
                latency_ms: 3,
                excerpt: String::new(),
                attempts: 2,
                node: 2,
            }
        });
        assert_eq!((m.seq, m.has_seq, m.status), (0, true, 204));
    }

    #[test]
    fn uri_secrets_are_masked() {
        assert_eq!(
            masked_uri("https://u:p@hooks.example/services/T0/B1?token=abc"),
            "https://***:***@hooks.example/services/T0/B1?***"
        );
        assert_eq!(
            masked_uri("http://127.0.0.1:9/hook"),
            "http://127.0.0.1:9/hook"
        );
    }
}
