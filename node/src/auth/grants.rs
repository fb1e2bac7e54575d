//! What an identity may do: built-in roles and scope maps (ACR's repository actions), docker
//! scopes (`repository:NAME:pull,push`), and their intersection. Pure.
//!
//! Docker actions map onto ACR's: `pull` needs `content/read`, `push` `content/write`,
//! `delete` `content/delete`; `*` is every action the identity has. Listing tags needs
//! `metadata/read` (with `pull` in a bearer token). Grants are a union: every role and scope
//! rule whose pattern matches the repository adds its actions.

use std::collections::BTreeSet;

use super::jwt::Access;
use crate::meta::auth::{AuthState, IdentityRecord, RepoAction, Role};
use crate::meta::policy;

/// Every repository action.
pub const ALL_ACTIONS: [RepoAction; 5] = [
    RepoAction::ContentRead,
    RepoAction::ContentWrite,
    RepoAction::ContentDelete,
    RepoAction::MetadataRead,
    RepoAction::MetadataWrite,
];

/// The actions a role grants.
pub fn role_actions(role: Role) -> &'static [RepoAction] {
    use RepoAction::*;
    match role {
        Role::Reader => &[ContentRead, MetadataRead],
        Role::Writer => &[ContentRead, MetadataRead, ContentWrite, MetadataWrite],
        Role::Deleter => &[ContentRead, MetadataRead, ContentDelete],
        Role::Admin => &ALL_ACTIONS,
    }
}

/// ACR's name of an action.
pub fn action_name(a: RepoAction) -> &'static str {
    match a {
        RepoAction::ContentRead => "content/read",
        RepoAction::ContentWrite => "content/write",
        RepoAction::ContentDelete => "content/delete",
        RepoAction::MetadataRead => "metadata/read",
        RepoAction::MetadataWrite => "metadata/write",
    }
}

/// Parses ACR's name of an action.
pub fn parse_action(s: &str) -> Option<RepoAction> {
    ALL_ACTIONS.into_iter().find(|a| action_name(*a) == s)
}

/// The name of a role.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Reader => "reader",
        Role::Writer => "writer",
        Role::Deleter => "deleter",
        Role::Admin => "admin",
    }
}

/// Parses the name of a role.
pub fn parse_role(s: &str) -> Option<Role> {
    [Role::Reader, Role::Writer, Role::Deleter, Role::Admin]
        .into_iter()
        .find(|r| role_name(*r) == s)
}

/// Who is asking, for grant decisions.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// No credentials.
    Anonymous,
    /// A user or token (enabled and current: the caller checked).
    Identity(&'a IdentityRecord),
}

/// The actions `who` has on `repo` now.
pub fn actions_on(state: &AuthState, who: Subject<'_>, repo: &str) -> BTreeSet<RepoAction> {
    let mut out = BTreeSet::new();
    match who {
        Subject::Anonymous => {
            if state
                .settings
                .anonymous_pull
                .iter()
                .any(|p| policy::matches(p, repo))
            {
                out.extend([RepoAction::ContentRead, RepoAction::MetadataRead]);
            }
        }
        Subject::Identity(id) => {
            for g in &id.roles {
                if policy::matches(&g.pattern, repo) {
                    out.extend(role_actions(g.role));
                }
            }
            if let Some(map) = id.scope_map.as_ref().and_then(|m| state.scope_maps.get(m)) {
                for (pattern, actions) in &map.rules {
                    if policy::matches(pattern, repo) {
                        out.extend(actions);
                    }
                }
            }
        }
    }
    out
}

/// Whether an identity administers the cluster: the admin role on `**`.
pub fn is_admin(id: &IdentityRecord) -> bool {
    id.roles
        .iter()
        .any(|g| g.role == Role::Admin && g.pattern == "**")
}

/// The ACR action a docker action needs.
pub fn docker_action_needs(action: &str) -> Option<RepoAction> {
    match action {
        "pull" => Some(RepoAction::ContentRead),
        "push" => Some(RepoAction::ContentWrite),
        "delete" => Some(RepoAction::ContentDelete),
        _ => None,
    }
}

/// A docker scope asked of the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `repository` or `registry`.
    pub kind: String,
    /// Repository name or `catalog`.
    pub name: String,
    /// Asked actions.
    pub actions: Vec<String>,
}

/// Parses `type:name:actions` (the name may hold `:` only as a registry host's port, which
/// berth's names never have: the last `:` splits). Unknown forms are skipped by the caller.
pub fn parse_scope(s: &str) -> Option<Scope> {
    let (kind, rest) = s.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    Some(Scope {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// What to grant for the asked scopes: for each, the asked actions `who` has (`*` only when
/// it has all three). Scopes with nothing granted are left out.
pub fn grant(state: &AuthState, who: Subject<'_>, asked: &[Scope]) -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    for s in asked {
        let granted: Vec<String> = match s.kind.as_str() {
            "repository" => {
                if crate::types::RepositoryName::parse(&s.name).is_err() {
                    continue;
                }
                let has = actions_on(state, who, &s.name);
                let mut g: Vec<String> = Vec::new();
                for a in &s.actions {
                    let ok = match a.as_str() {
                        "*" => ["pull", "push", "delete"]
                            .iter()
                            .all(|d| docker_action_needs(d).is_some_and(|n| has.contains(&n))),
                        other => docker_action_needs(other).is_some_and(|n| has.contains(&n)),
                    };
                    if ok && !g.contains(a) {
                        g.push(a.clone());
                    }
                }
                g
            }
            // Listing the catalog: any identity (the list is filtered to what it may read).
            "registry" if s.name == "catalog" && matches!(who, Subject::Identity(_)) => {
                s.actions.iter().filter(|a| *a == "*").cloned().collect()
            }
            // The admin service (`clusterctl --token`): only for cluster admins, and only when
            // asked, so that an admin's pull token is no admin credential.
            "registry"
                if s.name == "admin" && matches!(who, Subject::Identity(id) if is_admin(id)) =>
            {
                s.actions.iter().filter(|a| *a == "*").cloned().collect()
            }
            _ => Vec::new(),
        };
        if granted.is_empty() {
            continue;
        }
        match out
            .iter_mut()
            .find(|a| a.kind == s.kind && a.name == s.name)
        {
            Some(a) => {
                for g in granted {
                    if !a.actions.contains(&g) {
                        a.actions.push(g);
                    }
                }
            }
            None => out.push(Access {
                kind: s.kind.clone(),
                name: s.name.clone(),
                actions: granted,
            }),
        }
    }
    out
}

/// Whether a token's `access` claim covers `action` on repository `repo`.
pub fn access_allows(access: &[Access], repo: &str, action: &str) -> bool {
    access.iter().any(|a| {
        a.kind == "repository"
            && a.name == repo
            && a.actions.iter().any(|x| x == action || x == "*")
    })
}

/// Whether a token's `access` claim covers listing the catalog.
pub fn access_allows_catalog(access: &[Access]) -> bool {
    access_allows_registry(access, "catalog")
}

/// Whether a token's `access` claim covers `registry:NAME:*` (`catalog`, `admin`).
pub fn access_allows_registry(access: &[Access], name: &str) -> bool {
    access
        .iter()
        .any(|a| a.kind == "registry" && a.name == name && a.actions.iter().any(|x| x == "*"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::meta::auth::{IdentityKind, RoleGrant, ScopeMapRecord};

    fn identity(roles: &[(Role, &str)], map: Option<&str>) -> IdentityRecord {
        IdentityRecord {
            kind: IdentityKind::User,
            uid: 1,
            generation: 1,
            secrets: vec![],
            enabled: true,
            expiry_ms: None,
            scope_map: map.map(str::to_string),
            roles: roles
                .iter()
                .map(|(role, p)| RoleGrant {
                    role: *role,
                    pattern: p.to_string(),
                })
                .collect(),
            created_ms: 0,
            updated_ms: 0,
        }
    }

    fn scopes(s: &[&str]) -> Vec<Scope> {
        s.iter().map(|s| parse_scope(s).unwrap()).collect()
    }

    #[test]
    fn a_request_gets_the_intersection_of_asked_and_allowed() {
        let state = AuthState::default();
        let id = identity(
            &[(Role::Reader, "team/**"), (Role::Writer, "team/app")],
            None,
        );
        let got = grant(
            &state,
            Subject::Identity(&id),
            &scopes(&[
                "repository:team/app:pull,push,delete",
                "repository:team/lib:pull,push",
                "repository:other:pull",
                "registry:catalog:*",
            ]),
        );
        let by_name: BTreeMap<_, _> = got.iter().map(|a| (a.name.as_str(), &a.actions)).collect();
        assert_eq!(
            by_name["team/app"],
            &vec!["pull".to_string(), "push".to_string()]
        );
        assert_eq!(by_name["team/lib"], &vec!["pull".to_string()]);
        assert!(!by_name.contains_key("other"));
        assert_eq!(by_name["catalog"], &vec!["*".to_string()]);
        // The admin scope goes to cluster admins only.
        let asked = scopes(&["registry:admin:*"]);
        assert!(grant(&state, Subject::Identity(&id), &asked).is_empty());
        let admin = identity(&[(Role::Admin, "**")], None);
        let got = grant(&state, Subject::Identity(&admin), &asked);
        assert!(access_allows_registry(&got, "admin"));
    }

    #[test]
    fn star_needs_every_action_and_scope_maps_add_to_roles() {
        let mut state = AuthState::default();
        state.scope_maps.insert(
            "ci".into(),
            ScopeMapRecord {
                generation: 1,
                description: String::new(),
                rules: [(
                    "ci/*".to_string(),
                    [RepoAction::ContentRead, RepoAction::ContentWrite].into(),
                )]
                .into(),
                created_ms: 0,
                updated_ms: 0,
            },
        );
        let id = identity(&[(Role::Deleter, "ci/x")], Some("ci"));
        let got = grant(
            &state,
            Subject::Identity(&id),
            &scopes(&["repository:ci/x:*"]),
        );
        assert_eq!(got[0].actions, vec!["*".to_string()]);
        let got = grant(
            &state,
            Subject::Identity(&id),
            &scopes(&["repository:ci/y:*,pull"]),
        );
        assert_eq!(got[0].actions, vec!["pull".to_string()]);
    }

    #[test]
    fn anonymous_pulls_only_what_the_settings_open() {
        let mut state = AuthState::default();
        state.settings.anonymous_pull = vec!["public/**".into()];
        let got = grant(
            &state,
            Subject::Anonymous,
            &scopes(&[
                "repository:public/a:pull,push",
                "repository:private:pull",
                "registry:catalog:*",
            ]),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].actions, vec!["pull".to_string()]);
    }

    #[test]
    fn scopes_parse_and_access_is_matched_exactly() {
        assert_eq!(
            parse_scope("repository:a/b:pull,push").unwrap().actions,
            vec!["pull", "push"]
        );
        assert!(parse_scope("repository:pull").is_none());
        let access = vec![Access {
            kind: "repository".into(),
            name: "a".into(),
            actions: vec!["pull".into()],
        }];
        assert!(access_allows(&access, "a", "pull"));
        assert!(!access_allows(&access, "a", "push"));
        assert!(!access_allows(&access, "a/b", "pull"));
    }
}
