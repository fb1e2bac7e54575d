//! One function per lifecycle command (`repos`, `soft-delete`, `retention`, `namespaces`,
//! `purge`): call the admin service, render, print. As in [`crate::run`], errors are
//! returned, not printed. A change prints `ok: …` (in `--json` an object with `"ok": true`).

use std::io::Write;

use berth_proto::admin as pb;

use crate::cli_lifecycle::LifecycleAction;
use crate::client::AdminConn;
use crate::error::Error;
use crate::render_lifecycle as render;
use crate::run::{print, print_change};

/// Runs one lifecycle command.
pub async fn run(
    conn: &mut AdminConn,
    action: LifecycleAction,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    match action {
        LifecycleAction::UpdateAttributes(r) => {
            let what = format!(
                "update the attributes of {}",
                render::reference(&r.repository, &r.tag, &r.digest)
            );
            let e = conn
                .call(&what, true, r, |mut c, r| async move {
                    c.update_attributes(r).await
                })
                .await?;
            print(
                out,
                json,
                render::attributes_entry_json(&e),
                &render::attributes_updated_text(&e),
            )
        }
        LifecycleAction::ShowAttributes(repository) => {
            let what = format!("get the attributes of {repository}");
            let r = conn
                .call(
                    &what,
                    false,
                    pb::RepositoryRef { repository },
                    |mut c, r| async move { c.get_attributes(r).await },
                )
                .await?;
            print(
                out,
                json,
                render::repository_attributes_json(&r),
                &render::repository_attributes_text(&r),
            )
        }
        LifecycleAction::Deleted(repository) => {
            let what = format!("list the soft-deleted manifests of {repository}");
            let message = pb::RepositoryRef {
                repository: repository.clone(),
            };
            let d = conn
                .call(&what, false, message, |mut c, r| async move {
                    c.list_deleted(r).await
                })
                .await?;
            print(
                out,
                json,
                render::deleted_json(&d),
                &render::deleted_text(&repository, &d),
            )
        }
        LifecycleAction::Restore(r) => {
            let what = format!("restore {}@{}", r.repository, r.digest);
            let done = conn
                .call(&what, true, r, |mut c, r| async move {
                    c.restore_manifest(r).await
                })
                .await?;
            print(
                out,
                json,
                render::restored_json(&done),
                &render::restored_text(&done),
            )
        }
        LifecycleAction::SetSoftDelete(days) => {
            let what = if days == 0 {
                "turn soft delete off"
            } else {
                "turn soft delete on"
            };
            let message = pb::SoftDeleteSettings {
                retention_days: days,
            };
            let s = conn
                .call(what, true, message, |mut c, r| async move {
                    c.set_soft_delete(r).await
                })
                .await?;
            let done = if days == 0 {
                "soft delete turned off"
            } else {
                "soft delete turned on"
            };
            print_change(
                out,
                json,
                render::soft_delete_json(&s),
                done,
                &render::soft_delete_text(&s),
            )
        }
        LifecycleAction::ShowSoftDelete => {
            let s = conn
                .call(
                    "get the soft delete settings",
                    false,
                    pb::GetSoftDeleteRequest {},
                    |mut c, r| async move { c.get_soft_delete(r).await },
                )
                .await?;
            print(
                out,
                json,
                render::soft_delete_json(&s),
                &render::soft_delete_text(&s),
            )
        }
        LifecycleAction::SetRetention(e) => {
            let what = format!("set the retention policy of {}", e.pattern);
            let pattern = e.pattern.clone();
            let p = conn
                .call(&what, true, e, |mut c, r| async move {
                    c.set_retention(r).await
                })
                .await?;
            print_change(
                out,
                json,
                render::retention_json(&p),
                &format!("retention policy of {pattern} set"),
                &render::retention_text(&p),
            )
        }
        LifecycleAction::ClearRetention(pattern) => {
            let what = format!("clear the retention policy of {pattern}");
            let message = pb::RetentionPolicyRef {
                pattern: pattern.clone(),
            };
            let p = conn
                .call(&what, true, message, |mut c, r| async move {
                    c.clear_retention(r).await
                })
                .await?;
            print_change(
                out,
                json,
                render::retention_json(&p),
                &format!("retention policy of {pattern} cleared"),
                &render::retention_text(&p),
            )
        }
        LifecycleAction::ListRetention => {
            let p = conn
                .call(
                    "list the retention policies",
                    false,
                    pb::ListRetentionRequest {},
                    |mut c, r| async move { c.list_retention(r).await },
                )
                .await?;
            print(
                out,
                json,
                render::retention_json(&p),
                &render::retention_text(&p),
            )
        }
        LifecycleAction::SetNamespace(r) => {
            let what = format!("set the limits of namespace {}", r.namespace);
            let n = conn
                .call(&what, true, r, |mut c, r| async move {
                    c.set_namespace(r).await
                })
                .await?;
            print_change(
                out,
                json,
                render::namespace_json(&n),
                &format!("limits of namespace {} set", n.namespace),
                &render::namespace_text(&n),
            )
        }
        LifecycleAction::GetNamespace(namespace) => {
            let what = format!("get namespace {namespace}");
            let n = conn
                .call(
                    &what,
                    false,
                    pb::NamespaceRef { namespace },
                    |mut c, r| async move { c.get_namespace(r).await },
                )
                .await?;
            print(
                out,
                json,
                render::namespace_json(&n),
                &render::namespace_text(&n),
            )
        }
        LifecycleAction::ListNamespaces => {
            let n = conn
                .call(
                    "list the namespaces",
                    false,
                    pb::ListNamespacesRequest {},
                    |mut c, r| async move { c.list_namespaces(r).await },
                )
                .await?;
            print(
                out,
                json,
                render::namespaces_json(&n),
                &render::namespaces_text(&n),
            )
        }
        LifecycleAction::Purge(r) => {
            let what = if r.dry_run {
                "run a dry purge"
            } else {
                "purge"
            };
            let report = conn
                .call(
                    what,
                    !r.dry_run,
                    r,
                    |mut c, r| async move { c.purge(r).await },
                )
                .await?;
            print(
                out,
                json,
                render::purge_json(&report),
                &render::purge_text(&report),
            )
        }
    }
}
