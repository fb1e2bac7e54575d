//! One function per `webhooks` command: call the admin service, render, print. As in
//! [`crate::run`], errors are returned, not printed. A change prints `ok: …` (in `--json` an
//! object with `"ok": true`); a ping that did not get a 2xx prints its delivery and then
//! fails with [`Error::PingFailed`].

use std::io::Write;

use berth_proto::admin as pb;

use crate::cli_webhooks::WebhooksAction;
use crate::client::AdminConn;
use crate::error::Error;
use crate::render_webhooks as render;
use crate::run::{print, print_change};

/// Prints a webhook a change (`done`: `created`, `updated`) answered.
fn print_webhook_change(
    out: &mut dyn Write,
    json: bool,
    w: &pb::Webhook,
    done: &str,
) -> Result<(), Error> {
    print_change(
        out,
        json,
        render::webhook_json(w),
        &format!("webhook {} {done}", w.name),
        &render::webhook_text(w),
    )
}

/// Runs one `webhooks` command.
pub async fn run(
    conn: &mut AdminConn,
    action: WebhooksAction,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    match action {
        WebhooksAction::Create(r) => {
            let what = format!("create webhook {}", r.name);
            let w = conn
                .call(&what, true, r, |mut c, r| async move {
                    c.create_webhook(r).await
                })
                .await?;
            print_webhook_change(out, json, &w, "created")
        }
        WebhooksAction::Update(r) => {
            let what = format!("update webhook {}", r.name);
            let w = conn
                .call(&what, true, r, |mut c, r| async move {
                    c.update_webhook(r).await
                })
                .await?;
            print_webhook_change(out, json, &w, "updated")
        }
        WebhooksAction::Delete(name) => {
            let what = format!("delete webhook {name}");
            let d = conn
                .call(
                    &what,
                    true,
                    pb::WebhookRef { name },
                    |mut c, r| async move { c.delete_webhook(r).await },
                )
                .await?;
            print_change(
                out,
                json,
                serde_json::json!({"name": d.name}),
                &format!("webhook {} deleted", d.name),
                "",
            )
        }
        WebhooksAction::List => {
            let w = conn
                .call(
                    "list the webhooks",
                    false,
                    pb::ListWebhooksRequest {},
                    |mut c, r| async move { c.list_webhooks(r).await },
                )
                .await?;
            print(
                out,
                json,
                render::webhooks_json(&w),
                &render::webhooks_text(&w),
            )
        }
        WebhooksAction::Show(name) => {
            let what = format!("get webhook {name}");
            let w = conn
                .call(
                    &what,
                    false,
                    pb::WebhookRef { name },
                    |mut c, r| async move { c.get_webhook(r).await },
                )
                .await?;
            print(
                out,
                json,
                render::webhook_json(&w),
                &render::webhook_text(&w),
            )
        }
        WebhooksAction::Ping(name) => {
            let what = format!("ping webhook {name}");
            let message = pb::WebhookRef { name: name.clone() };
            let d = conn
                .call(&what, true, message, |mut c, r| async move {
                    c.ping_webhook(r).await
                })
                .await?;
            print(
                out,
                json,
                render::ping_json(&d),
                &render::ping_text(&name, &d),
            )?;
            if render::succeeded(&d) {
                Ok(())
            } else {
                Err(Error::PingFailed {
                    name,
                    outcome: render::outcome(&d),
                })
            }
        }
        WebhooksAction::Events(r) => {
            let name = r.name.clone();
            let what = format!("get the delivery log of webhook {name}");
            let d = conn
                .call(&what, false, r, |mut c, r| async move {
                    c.webhook_events(r).await
                })
                .await?;
            print(
                out,
                json,
                render::deliveries_json(&d),
                &render::deliveries_text(&name, &d),
            )
        }
    }
}
