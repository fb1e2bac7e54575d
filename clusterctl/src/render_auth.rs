//! Output of the auth commands: pure functions from the admin proto messages to tables,
//! `key: value` lines and JSON, with the conventions of [`crate::render`] (tables with an
//! upper-case header, `-` for an empty field; JSON field for field with snake_case names;
//! `ok` on the object of a change). Times are RFC 3339 in UTC for humans and ms since the
//! epoch in JSON (0: none).
//!
//! A generated password is printed once, by the command that generated it: on its own line
//! `passwordN: …` followed by a reminder that it is not shown again (in `--json`, in
//! `passwords`). Nothing here ever sees a password hash or a private key: the server never
//! sends them.

use berth_proto::admin::{
    AuthKeys, AuthSettings, Identity, IdentityChanged, NewPassword, RoleGrant, Roles, ScopeMap,
};
use serde_json::{Value, json};

use crate::cli_auth::{Kind, format_time};
use crate::render::{Align, Table, or_dash, yes_no};

/// A time for humans; `-` for 0, or `never` when 0 means that.
fn time(ms: u64, zero: &str) -> String {
    if ms == 0 {
        zero.to_owned()
    } else {
        format_time(ms)
    }
}

fn grants_text(roles: &[RoleGrant]) -> String {
    let all: Vec<String> = roles
        .iter()
        .map(|g| format!("{}:{}", g.role, g.pattern))
        .collect();
    or_dash(&all.join(","))
}

fn slots_text(i: &Identity) -> String {
    let slots: Vec<String> = i.passwords.iter().map(|p| p.slot.to_string()).collect();
    or_dash(&slots.join(","))
}

/// `users list` / `tokens list` for humans: one row per identity, in the server's (name)
/// order.
pub fn identities_text(kind: Kind, identities: &[Identity]) -> String {
    if identities.is_empty() {
        return format!("no {}s\n", kind.name());
    }
    let mut columns = vec![("NAME", Align::Left), ("ENABLED", Align::Left)];
    if kind == Kind::Token {
        columns.push(("SCOPE MAP", Align::Left));
        columns.push(("PASSWORDS", Align::Left));
    }
    columns.extend([
        ("ROLES", Align::Left),
        ("EXPIRES", Align::Left),
        ("CREATED", Align::Left),
    ]);
    let rows = identities
        .iter()
        .map(|i| {
            let mut row = vec![i.name.clone(), yes_no(i.enabled)];
            if kind == Kind::Token {
                row.push(or_dash(&i.scope_map));
                row.push(slots_text(i));
            }
            row.extend([
                grants_text(&i.roles),
                time(i.expiry_ms, "never"),
                time(i.created_ms, "-"),
            ]);
            row
        })
        .collect();
    Table { columns, rows }.render()
}

/// `users show` / `tokens show` for humans: `key: value` lines.
pub fn identity_text(i: &Identity) -> String {
    let mut out = format!(
        "name: {}\nkind: {}\nenabled: {}\nadmin: {}\n",
        i.name,
        i.kind,
        yes_no(i.enabled),
        yes_no(i.admin)
    );
    if i.kind == "token" {
        out.push_str(&format!("scope map: {}\n", or_dash(&i.scope_map)));
    }
    out.push_str(&format!("roles: {}\n", grants_text(&i.roles)));
    out.push_str(&format!("expires: {}\n", time(i.expiry_ms, "never")));
    for p in &i.passwords {
        out.push_str(&format!(
            "password{}: set {}, expires {}\n",
            p.slot,
            time(p.created_ms, "-"),
            time(p.expiry_ms, "never")
        ));
    }
    out.push_str(&format!(
        "created: {}\nupdated: {}\n",
        time(i.created_ms, "-"),
        time(i.updated_ms, "-")
    ));
    out
}

/// One identity as JSON, field for field.
pub fn identity_json(i: &Identity) -> Value {
    json!({
        "name": i.name,
        "kind": i.kind,
        "enabled": i.enabled,
        "admin": i.admin,
        "expiry_ms": i.expiry_ms,
        "scope_map": i.scope_map,
        "roles": i.roles.iter().map(|g| json!({"role": g.role, "pattern": g.pattern})).collect::<Vec<_>>(),
        "passwords": i.passwords.iter().map(|p| json!({
            "slot": p.slot, "created_ms": p.created_ms, "expiry_ms": p.expiry_ms,
        })).collect::<Vec<_>>(),
        "created_ms": i.created_ms,
        "updated_ms": i.updated_ms,
    })
}

/// `users list --json` / `tokens list --json`: `{"users": […]}` or `{"tokens": […]}`.
pub fn identities_json(kind: Kind, identities: &[Identity]) -> Value {
    let key = format!("{}s", kind.name());
    json!({ key: identities.iter().map(identity_json).collect::<Vec<_>>() })
}

/// The lines of generated passwords, and the reminder (nothing when there is none).
pub fn passwords_text(passwords: &[NewPassword]) -> String {
    if passwords.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    for p in passwords {
        out.push_str(&format!("password{}: {}\n", p.slot, p.password));
    }
    out.push_str("Save the password now: it is not shown again.\n");
    out
}

/// After a change of a user or token: `ok: <what>` and any generated password.
pub fn changed_text(what: &str, c: &IdentityChanged) -> String {
    format!("ok: {what}\n{}", passwords_text(&c.passwords))
}

/// After a change of a user or token, as JSON: `{"ok":true,"identity":{…},"passwords":[…]}`.
pub fn changed_json(c: &IdentityChanged) -> Value {
    json!({
        "ok": true,
        "identity": c.identity.as_ref().map(identity_json),
        "passwords": c.passwords.iter().map(|p| json!({"slot": p.slot, "password": p.password})).collect::<Vec<_>>(),
    })
}

fn rules_text(m: &ScopeMap) -> Vec<String> {
    m.rules
        .iter()
        .map(|r| format!("{}:{}", r.pattern, r.actions.join(",")))
        .collect()
}

/// `scope-maps list` for humans.
pub fn scope_maps_text(maps: &[ScopeMap]) -> String {
    if maps.is_empty() {
        return "no scope maps\n".to_owned();
    }
    Table {
        columns: vec![
            ("NAME", Align::Left),
            ("RULES", Align::Left),
            ("TOKENS", Align::Left),
            ("DESCRIPTION", Align::Left),
        ],
        rows: maps
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    or_dash(&rules_text(m).join(" ")),
                    or_dash(&m.tokens.join(",")),
                    or_dash(&m.description),
                ]
            })
            .collect(),
    }
    .render()
}

/// `scope-maps show` for humans: `key: value` lines, one `rule:` line per rule.
pub fn scope_map_text(m: &ScopeMap) -> String {
    let mut out = format!(
        "name: {}\ndescription: {}\n",
        m.name,
        or_dash(&m.description)
    );
    for r in rules_text(m) {
        out.push_str(&format!("rule: {r}\n"));
    }
    out.push_str(&format!(
        "tokens: {}\ncreated: {}\nupdated: {}\n",
        or_dash(&m.tokens.join(",")),
        time(m.created_ms, "-"),
        time(m.updated_ms, "-")
    ));
    out
}

/// One scope map as JSON, field for field.
pub fn scope_map_json(m: &ScopeMap) -> Value {
    json!({
        "name": m.name,
        "description": m.description,
        "rules": m.rules.iter().map(|r| json!({"pattern": r.pattern, "actions": r.actions})).collect::<Vec<_>>(),
        "tokens": m.tokens,
        "created_ms": m.created_ms,
        "updated_ms": m.updated_ms,
    })
}

/// `scope-maps list --json`: `{"scope_maps": […]}`.
pub fn scope_maps_json(maps: &[ScopeMap]) -> Value {
    json!({ "scope_maps": maps.iter().map(scope_map_json).collect::<Vec<_>>() })
}

/// `roles list` for humans.
pub fn roles_text(r: &Roles) -> String {
    Table {
        columns: vec![
            ("ROLE", Align::Left),
            ("ACTIONS", Align::Left),
            ("DESCRIPTION", Align::Left),
        ],
        rows: r
            .roles
            .iter()
            .map(|r| vec![r.name.clone(), r.actions.join(","), r.description.clone()])
            .collect(),
    }
    .render()
}

/// `roles list --json`: `{"roles":[{"name","actions","description"}]}`.
pub fn roles_json(r: &Roles) -> Value {
    json!({ "roles": r.roles.iter().map(|r| json!({
        "name": r.name, "actions": r.actions, "description": r.description,
    })).collect::<Vec<_>>() })
}

/// `auth keys` for humans: one row per key, the one that signs marked.
pub fn keys_text(k: &AuthKeys) -> String {
    if k.keys.is_empty() {
        return "no signing keys yet\n".to_owned();
    }
    Table {
        columns: vec![
            ("KID", Align::Left),
            ("CREATED", Align::Left),
            ("RETIRED", Align::Left),
            ("SIGNS", Align::Left),
        ],
        rows: k
            .keys
            .iter()
            .map(|key| {
                vec![
                    key.kid.clone(),
                    time(key.created_ms, "-"),
                    time(key.retired_ms, "-"),
                    yes_no(key.retired_ms == 0),
                ]
            })
            .collect(),
    }
    .render()
}

/// `auth keys --json`: `{"keys":[{"kid","created_ms","retired_ms"}],"signing_kid"}`.
pub fn keys_json(k: &AuthKeys) -> Value {
    json!({
        "keys": k.keys.iter().map(|key| json!({
            "kid": key.kid, "created_ms": key.created_ms, "retired_ms": key.retired_ms,
        })).collect::<Vec<_>>(),
        "signing_kid": k.signing_kid,
    })
}

fn allow_text(allow: &[String]) -> String {
    or_dash(&allow.join(","))
}

/// `auth network show` (and the answer of every settings change) for humans.
pub fn settings_text(s: &AuthSettings) -> String {
    let n = s.network.clone().unwrap_or_default();
    let verdict = |allow: bool| if allow { "allow" } else { "deny" };
    let mut out = format!(
        "auth on this node: {}\nanonymous pull: {}\nnetwork default: {}\nnetwork allow: {}\n\
         public access: {}\n",
        if s.enabled { "on" } else { "off" },
        or_dash(&s.anonymous_pull.join(",")),
        verdict(n.default_allow),
        allow_text(&n.allow),
        if n.public_access { "on" } else { "off" },
    );
    if !n.repositories.is_empty() {
        out.push_str(
            &Table {
                columns: vec![
                    ("PATTERN", Align::Left),
                    ("DEFAULT", Align::Left),
                    ("ALLOW", Align::Left),
                ],
                rows: n
                    .repositories
                    .iter()
                    .map(|r| {
                        vec![
                            r.pattern.clone(),
                            verdict(r.default_allow).to_owned(),
                            allow_text(&r.allow),
                        ]
                    })
                    .collect(),
            }
            .render(),
        );
    }
    out
}

/// The settings as JSON, field for field.
pub fn settings_json(s: &AuthSettings) -> Value {
    let n = s.network.clone().unwrap_or_default();
    json!({
        "enabled": s.enabled,
        "anonymous_pull": s.anonymous_pull,
        "network": {
            "default_allow": n.default_allow,
            "allow": n.allow,
            "public_access": n.public_access,
            "repositories": n.repositories.iter().map(|r| json!({
                "pattern": r.pattern, "default_allow": r.default_allow, "allow": r.allow,
            })).collect::<Vec<_>>(),
        },
    })
}

#[cfg(test)]
mod tests {
    use berth_proto::admin::{
        AuthKey, NetworkRules, PasswordInfo, RepositoryNetworkRule, RoleInfo, ScopeRule,
    };

    use super::*;

    fn token() -> Identity {
        Identity {
            name: "ci-push".into(),
            kind: "token".into(),
            enabled: true,
            expiry_ms: 0,
            scope_map: "ci".into(),
            roles: vec![],
            passwords: vec![
                PasswordInfo {
                    slot: 1,
                    created_ms: 1_801_353_600_000,
                    expiry_ms: 0,
                },
                PasswordInfo {
                    slot: 2,
                    created_ms: 1_801_353_600_000,
                    expiry_ms: 0,
                },
            ],
            created_ms: 1_801_353_600_000,
            updated_ms: 1_801_353_600_000,
            admin: false,
        }
    }

    #[test]
    fn token_table_and_details() {
        assert_eq!(
            identities_text(Kind::Token, &[token()]),
            "\
NAME     ENABLED  SCOPE MAP  PASSWORDS  ROLES  EXPIRES  CREATED
ci-push  yes      ci         1,2        -      never    2027-01-31T00:00:00Z
"
        );
        assert_eq!(identities_text(Kind::User, &[]), "no users\n");
        let text = identity_text(&token());
        assert!(text.contains("scope map: ci\n"), "{text}");
        assert!(text.contains("password2: set 2027-01-31T00:00:00Z, expires never\n"));
        let v = identities_json(Kind::Token, &[token()]);
        assert_eq!(v["tokens"][0]["scope_map"], "ci");
        assert_eq!(v["tokens"][0]["passwords"][1]["slot"], 2);
    }

    #[test]
    fn a_new_password_is_shown_with_a_reminder() {
        let c = IdentityChanged {
            identity: Some(token()),
            passwords: vec![NewPassword {
                slot: 1,
                password: "s3cret".into(),
            }],
        };
        assert_eq!(
            changed_text("token ci-push created", &c),
            "ok: token ci-push created\npassword1: s3cret\nSave the password now: it is not \
             shown again.\n"
        );
        let v = changed_json(&c);
        assert_eq!(v["ok"], true);
        assert_eq!(v["passwords"], json!([{"slot": 1, "password": "s3cret"}]));
        assert_eq!(v["identity"]["name"], "ci-push");
        let none = IdentityChanged {
            identity: Some(token()),
            passwords: vec![],
        };
        assert_eq!(
            changed_text("token ci-push changed", &none),
            "ok: token ci-push changed\n"
        );
    }

    #[test]
    fn scope_maps_roles_keys_and_settings() {
        let m = ScopeMap {
            name: "ci".into(),
            description: String::new(),
            rules: vec![ScopeRule {
                pattern: "team/*".into(),
                actions: vec!["content/read".into(), "content/write".into()],
            }],
            created_ms: 0,
            updated_ms: 0,
            tokens: vec!["ci-push".into()],
        };
        assert_eq!(
            scope_maps_text(std::slice::from_ref(&m)),
            "\
NAME  RULES                              TOKENS   DESCRIPTION
ci    team/*:content/read,content/write  ci-push  -
"
        );
        assert!(scope_map_text(&m).contains("rule: team/*:content/read,content/write\n"));
        assert_eq!(
            scope_maps_json(&[m])["scope_maps"][0]["tokens"][0],
            "ci-push"
        );
        let roles = Roles {
            roles: vec![RoleInfo {
                name: "reader".into(),
                actions: vec!["content/read".into(), "metadata/read".into()],
                description: "pull and list".into(),
            }],
        };
        assert!(roles_text(&roles).contains("reader  content/read,metadata/read  pull and list"));
        assert_eq!(roles_json(&roles)["roles"][0]["name"], "reader");
        let keys = AuthKeys {
            keys: vec![
                AuthKey {
                    kid: "aa".into(),
                    created_ms: 1_801_353_600_000,
                    retired_ms: 1_801_353_601_000,
                },
                AuthKey {
                    kid: "bb".into(),
                    created_ms: 1_801_353_601_000,
                    retired_ms: 0,
                },
            ],
            signing_kid: "bb".into(),
        };
        let text = keys_text(&keys);
        assert_eq!(
            text.lines()
                .nth(2)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["bb", "2027-01-31T00:00:01Z", "-", "yes"]
        );
        assert_eq!(keys_json(&keys)["signing_kid"], "bb");
        let s = AuthSettings {
            enabled: true,
            anonymous_pull: vec!["public/**".into()],
            network: Some(NetworkRules {
                default_allow: false,
                allow: vec!["10.0.0.0/8".into()],
                public_access: true,
                repositories: vec![RepositoryNetworkRule {
                    pattern: "secret/**".into(),
                    default_allow: false,
                    allow: vec![],
                }],
            }),
        };
        let text = settings_text(&s);
        assert!(text.starts_with(
            "auth on this node: on\nanonymous pull: public/**\nnetwork default: deny\nnetwork \
             allow: 10.0.0.0/8\npublic access: on\n"
        ));
        assert!(text.contains("secret/**  deny     -"), "{text}");
        assert_eq!(
            settings_json(&s)["network"]["repositories"][0]["pattern"],
            "secret/**"
        );
    }
}
