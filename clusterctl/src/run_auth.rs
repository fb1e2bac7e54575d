//! One function per auth command (`users`, `tokens`, `scope-maps`, `roles`, `auth`): call
//! the admin service, render, print. As in [`crate::run`], errors are returned, not printed.
//!
//! `users show|update|delete` and `tokens show|update|delete` first read the identity and
//! refuse one of the other kind ([`Error::WrongKind`]): `users delete ci-bot` never deletes
//! a token. A change prints `ok: …` (in `--json` an object with `"ok": true`); a generated
//! password is printed once, by the command that generated it.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::admin as pb;

use crate::cli_auth::{AuthAction, Expiry, Grant, Kind, Rule, Update};
use crate::client::AdminConn;
use crate::error::Error;
use crate::render_auth as render;
use crate::run::{print, print_change};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn expiry_ms(e: Expiry) -> Result<u64, Error> {
    e.resolve(now_ms()).map_err(Error::Input)
}

fn grants(gs: &[Grant]) -> Vec<pb::RoleGrant> {
    gs.iter()
        .map(|g| pb::RoleGrant {
            role: g.role.clone(),
            pattern: g.pattern.clone(),
        })
        .collect()
}

fn rules(rs: &[Rule]) -> Vec<pb::ScopeRule> {
    rs.iter()
        .map(|r| pb::ScopeRule {
            pattern: r.pattern.clone(),
            actions: r.actions.clone(),
        })
        .collect()
}

/// Reads an identity and checks it is of `kind`.
async fn identity(conn: &mut AdminConn, kind: Kind, name: &str) -> Result<pb::Identity, Error> {
    let what = format!("get {} {name}", kind.name());
    let message = pb::IdentityRef { name: name.into() };
    let i = conn
        .call(&what, false, message, |mut c, r| async move {
            c.get_identity(r).await
        })
        .await?;
    if i.kind != kind.name() {
        return Err(Error::WrongKind {
            name: name.into(),
            actual: if i.kind == "user" { "user" } else { "token" },
            expected: kind.name(),
        });
    }
    Ok(i)
}

async fn update(
    conn: &mut AdminConn,
    what: &str,
    name: &str,
    u: &Update,
    password: Option<String>,
) -> Result<pb::IdentityChanged, Error> {
    let message = pb::UpdateIdentityRequest {
        name: name.into(),
        enabled: u.enabled,
        expiry_ms: u.expiry.map(expiry_ms).transpose()?,
        scope_map: u.scope_map.clone(),
        password,
        regenerate: u.regenerate.unwrap_or(0),
        remove_password: u.remove_password.unwrap_or(0),
        add_roles: grants(&u.add_roles),
        remove_roles: grants(&u.remove_roles),
    };
    conn.call(what, true, message, |mut c, r| async move {
        c.update_identity(r).await
    })
    .await
}

/// Runs an auth command; `password` is the new password read from stdin, for the commands
/// that take one.
pub async fn run(
    conn: &mut AdminConn,
    action: AuthAction,
    password: Option<String>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    match action {
        AuthAction::List(kind) => {
            let what = format!("list the {}s", kind.name());
            let message = pb::ListIdentitiesRequest {
                kind: kind.name().into(),
            };
            let r = conn
                .call(&what, false, message, |mut c, r| async move {
                    c.list_identities(r).await
                })
                .await?;
            let text = render::identities_text(kind, &r.identities);
            print(
                out,
                json,
                render::identities_json(kind, &r.identities),
                &text,
            )
        }
        AuthAction::Show(kind, name) => {
            let i = identity(conn, kind, &name).await?;
            print(
                out,
                json,
                render::identity_json(&i),
                &render::identity_text(&i),
            )
        }
        AuthAction::CreateUser { name, roles } => {
            let what = format!("create user {name}");
            let message = pb::CreateUserRequest {
                name: name.clone(),
                password: password.unwrap_or_default(),
                roles: grants(&roles),
            };
            let i = conn
                .call(&what, true, message, |mut c, r| async move {
                    c.create_user(r).await
                })
                .await?;
            let value = serde_json::json!({ "identity": render::identity_json(&i) });
            print_change(out, json, value, &format!("user {name} created"), "")
        }
        AuthAction::CreateToken {
            name,
            scope_map,
            roles,
            expiry,
            passwords,
        } => {
            let what = format!("create token {name}");
            let message = pb::CreateTokenRequest {
                name: name.clone(),
                scope_map: scope_map.unwrap_or_default(),
                roles: grants(&roles),
                expiry_ms: expiry.map(expiry_ms).transpose()?.unwrap_or(0),
                passwords,
            };
            let c = conn
                .call(&what, true, message, |mut c, r| async move {
                    c.create_token(r).await
                })
                .await?;
            let text = render::changed_text(&format!("token {name} created"), &c);
            print(out, json, render::changed_json(&c), &text)
        }
        AuthAction::Update(kind, name, u) => {
            identity(conn, kind, &name).await?;
            let what = format!("change {} {name}", kind.name());
            let c = update(conn, &what, &name, &u, password).await?;
            let text = render::changed_text(&format!("{} {name} changed", kind.name()), &c);
            print(out, json, render::changed_json(&c), &text)
        }
        AuthAction::Roles(name, u) => {
            let (verb, g) = match (u.add_roles.first(), u.remove_roles.first()) {
                (Some(g), _) => ("assign", g),
                (None, Some(g)) => ("remove", g),
                (None, None) => return Err(Error::Input("no role given".into())),
            };
            let what = format!("{verb} role {}:{} for {name}", g.role, g.pattern);
            let done = match verb {
                "assign" => format!("{name} has role {} on {}", g.role, g.pattern),
                _ => format!("{name} no longer has role {} on {}", g.role, g.pattern),
            };
            let c = update(conn, &what, &name, &u, None).await?;
            print(
                out,
                json,
                render::changed_json(&c),
                &format!("ok: {done}\n"),
            )
        }
        AuthAction::Delete(kind, name) => {
            identity(conn, kind, &name).await?;
            let what = format!("delete {} {name}", kind.name());
            let message = pb::IdentityRef { name: name.clone() };
            conn.call(&what, true, message, |mut c, r| async move {
                c.delete_identity(r).await
            })
            .await?;
            let value = serde_json::json!({ "name": name, "kind": kind.name() });
            print_change(
                out,
                json,
                value,
                &format!("{} {name} deleted", kind.name()),
                "",
            )
        }
        AuthAction::ListScopeMaps => {
            let r = conn
                .call(
                    "list the scope maps",
                    false,
                    pb::ListScopeMapsRequest {},
                    |mut c, r| async move { c.list_scope_maps(r).await },
                )
                .await?;
            let text = render::scope_maps_text(&r.scope_maps);
            print(out, json, render::scope_maps_json(&r.scope_maps), &text)
        }
        AuthAction::ShowScopeMap(name) => {
            let what = format!("get scope map {name}");
            let m = conn
                .call(
                    &what,
                    false,
                    pb::ScopeMapRef { name },
                    |mut c, r| async move { c.get_scope_map(r).await },
                )
                .await?;
            print(
                out,
                json,
                render::scope_map_json(&m),
                &render::scope_map_text(&m),
            )
        }
        AuthAction::PutScopeMap {
            name,
            description,
            rules: rs,
            create,
        } => {
            let verb = if create { "create" } else { "change" };
            let what = format!("{verb} scope map {name}");
            let message = pb::PutScopeMapRequest {
                name: name.clone(),
                description,
                rules: rules(&rs),
                create,
            };
            let m = conn
                .call(&what, true, message, |mut c, r| async move {
                    c.put_scope_map(r).await
                })
                .await?;
            let done = format!("scope map {name} {verb}d");
            let text = render::scope_map_text(&m);
            print_change(out, json, render::scope_map_json(&m), &done, &text)
        }
        AuthAction::DeleteScopeMap(name) => {
            let what = format!("delete scope map {name}");
            let message = pb::ScopeMapRef { name: name.clone() };
            conn.call(&what, true, message, |mut c, r| async move {
                c.delete_scope_map(r).await
            })
            .await?;
            let value = serde_json::json!({ "name": name });
            print_change(out, json, value, &format!("scope map {name} deleted"), "")
        }
        AuthAction::ListRoles => {
            let r = conn
                .call(
                    "list the roles",
                    false,
                    pb::ListRolesRequest {},
                    |mut c, r| async move { c.list_roles(r).await },
                )
                .await?;
            print(out, json, render::roles_json(&r), &render::roles_text(&r))
        }
        AuthAction::Keys => {
            let k = conn
                .call(
                    "list the signing keys",
                    false,
                    pb::ListAuthKeysRequest {},
                    |mut c, r| async move { c.list_auth_keys(r).await },
                )
                .await?;
            print(out, json, render::keys_json(&k), &render::keys_text(&k))
        }
        AuthAction::RotateKey => {
            let k = conn
                .call(
                    "rotate the signing key",
                    true,
                    pb::RotateAuthKeyRequest {},
                    |mut c, r| async move { c.rotate_auth_key(r).await },
                )
                .await?;
            let done = format!("key {} signs new tokens", k.signing_kid);
            print_change(out, json, render::keys_json(&k), &done, "")
        }
        AuthAction::DropKey(kid) => {
            let k = conn
                .call(
                    "drop the signing key",
                    true,
                    pb::AuthKeyRef { kid: kid.clone() },
                    |mut c, r| async move { c.drop_auth_key(r).await },
                )
                .await?;
            let done = format!("key {kid} dropped: the tokens it signed no longer work");
            print_change(out, json, render::keys_json(&k), &done, "")
        }
        AuthAction::ShowSettings => {
            let s = conn
                .call(
                    "get the auth settings",
                    false,
                    pb::GetAuthSettingsRequest {},
                    |mut c, r| async move { c.get_auth_settings(r).await },
                )
                .await?;
            print(
                out,
                json,
                render::settings_json(&s),
                &render::settings_text(&s),
            )
        }
        AuthAction::AnonymousPull(patterns) => {
            let done = if patterns.is_empty() {
                "nobody pulls without credentials".to_owned()
            } else {
                format!("anyone may pull {}", patterns.join(", "))
            };
            let message = pb::SetAnonymousPullRequest { patterns };
            let s = conn
                .call("set anonymous pull", true, message, |mut c, r| async move {
                    c.set_anonymous_pull(r).await
                })
                .await?;
            print_change(out, json, render::settings_json(&s), &done, "")
        }
        AuthAction::Network {
            default_allow,
            allow,
            public_access,
        } => {
            let message = pb::SetNetworkRulesRequest {
                default_allow,
                set_allow: allow.is_some(),
                allow: allow.unwrap_or_default(),
                public_access,
            };
            let s = conn
                .call(
                    "set the network rules",
                    true,
                    message,
                    |mut c, r| async move { c.set_network_rules(r).await },
                )
                .await?;
            let text = render::settings_text(&s);
            print_change(
                out,
                json,
                render::settings_json(&s),
                "network rules set",
                &text,
            )
        }
        AuthAction::RepoNetwork {
            pattern,
            default_allow,
            allow,
        } => {
            let what = format!("set the network rule of {pattern}");
            let message = pb::RepositoryNetworkRule {
                pattern: pattern.clone(),
                default_allow,
                allow,
            };
            let s = conn
                .call(&what, true, message, |mut c, r| async move {
                    c.set_repository_network_rule(r).await
                })
                .await?;
            let done = format!("network rule of {pattern} set");
            let text = render::settings_text(&s);
            print_change(out, json, render::settings_json(&s), &done, &text)
        }
        AuthAction::ClearRepoNetwork(pattern) => {
            let what = format!("clear the network rule of {pattern}");
            let message = pb::RepositoryNetworkRuleRef {
                pattern: pattern.clone(),
            };
            let s = conn
                .call(&what, true, message, |mut c, r| async move {
                    c.clear_repository_network_rule(r).await
                })
                .await?;
            let done = format!("network rule of {pattern} cleared");
            print_change(out, json, render::settings_json(&s), &done, "")
        }
    }
}
