//! The auth side of `berth.admin.v1.Admin`: who may call the admin service ([`AdminGuard`]),
//! and the RPCs behind `clusterctl users|tokens|scope-maps|roles|auth` ([`AuthRpc`]).
//!
//! Who may call: with `[cluster_tls]` tonic admits only connections that present a
//! certificate the cluster CA signed, and that certificate is the credential. Without it, a
//! node whose auth is on wants, on every Admin call, metadata `authorization` with Basic
//! credentials (checked by `Auth::login`, failures counted) or a bearer registry token
//! (`Auth::verify`) of an identity that administers the cluster (`grants::is_admin`). A node
//! that relays a call passes the caller's `authorization` along ([`forward_authorization`]),
//! and the node it reaches checks it again. The Peer and Raft services are not guarded here:
//! without mutual TLS the cluster port belongs on a private network.
//!
//! The RPCs are adapters over `auth::manage::AuthAdmin` (every change a Raft command): decode,
//! call, encode. What they never return: password hashes, private keys; a generated password
//! leaves only in the answer of the call that generated it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::admin as pb;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::auth::manage::{self, AuthAdmin, IdentityChange, ManageError, NewPassword};
use crate::auth::{Auth, AuthError, Caller, grants};
use crate::cluster::Cluster;
use crate::meta::auth::{
    AuthState, IdentityKind, IdentityRecord, RepoAction, RepoNetworkRule, Role, RoleGrant,
    ScopeMapRecord,
};

/// The metadata key of the caller's credentials (as HTTP's `Authorization`).
pub(super) const AUTHORIZATION: &str = "authorization";
/// How long a read waits to catch up with the leader before it answers from this node's
/// applied state.
const READ_CATCH_UP: Duration = Duration::from_secs(2);

/// Copies the caller's `authorization` metadata onto a call this node makes on its behalf.
pub(super) fn forward_authorization<T>(from: &MetadataMap, to: &mut Request<T>) {
    if let Some(v) = from.get(AUTHORIZATION) {
        to.metadata_mut().insert(AUTHORIZATION, v.clone());
    }
}

/// Decides whether an Admin call may run.
#[derive(Debug, Clone)]
pub(super) struct AdminGuard {
    auth: Arc<Auth>,
    /// The cluster endpoint serves mutual TLS: the client certificate is the credential.
    mutual_tls: bool,
}

impl AdminGuard {
    /// The guard of a node with `auth`; `mutual_tls` when `[cluster_tls]` is on.
    pub(super) fn new(auth: Arc<Auth>, mutual_tls: bool) -> AdminGuard {
        AdminGuard { auth, mutual_tls }
    }

    /// Checks the call's credentials. Errors: UNAUTHENTICATED without or with bad
    /// credentials; PERMISSION_DENIED for an identity that is not an admin;
    /// RESOURCE_EXHAUSTED after too many failed logins.
    /// PERMISSION_DENIED also for a client address outside `auth.admin_allow`, whatever
    /// the credentials.
    pub(super) async fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let allow = &self.auth.config().admin_allow;
        if !allow.is_empty() {
            let addr = req.remote_addr().map(|a| a.ip());
            if !addr.is_some_and(|a| allow.iter().any(|n| n.contains(&a))) {
                return Err(AuthError::Denied(format!(
                    "client address {} may not use the admin service (auth.admin_allow)",
                    addr.map_or("unknown".to_string(), |a| a.to_string())
                ))
                .into());
            }
        }
        if self.mutual_tls || !self.auth.enabled() {
            return Ok(());
        }
        if !req.metadata().contains_key(AUTHORIZATION) {
            return Err(AuthError::Unauthorized(
                "the admin service needs credentials: clusterctl --user NAME (with \
                 --password-stdin or CLUSTERCTL_PASSWORD) or --token"
                    .into(),
            )
            .into());
        }
        let addr: Option<IpAddr> = req.remote_addr().map(|a| a.ip());
        let headers = req.metadata().clone().into_headers();
        let name = match self.auth.caller(&headers, addr).await? {
            Caller::Password { name } => name,
            // A registry token is an admin credential only when it was issued for the admin
            // service (`registry:admin:*`): an admin's pull token is not one.
            Caller::Bearer { name, access } if grants::access_allows_registry(&access, "admin") => {
                name
            }
            Caller::Bearer { .. } => {
                return Err(AuthError::Denied(
                    "a registry token needs the scope registry:admin:* for the admin service"
                        .into(),
                )
                .into());
            }
            Caller::Anonymous | Caller::Unchecked => String::new(),
        };
        let state = self.auth.state();
        match state.identities.get(&name) {
            Some(id) if grants::is_admin(id) => Ok(()),
            _ => {
                tracing::info!(target: "berth::audit", identity = %name, client = ?addr, "admin call refused: not an admin");
                Err(AuthError::Denied(format!(
                    "{} may not use the admin service (it needs the admin role on **)",
                    if name.is_empty() { "anonymous" } else { &name }
                ))
                .into())
            }
        }
    }
}

/// The auth RPCs of the admin service.
#[derive(Debug, Clone)]
pub(super) struct AuthRpc {
    admin: AuthAdmin,
    cluster: Cluster,
}

fn invalid(m: impl Into<String>) -> Status {
    ManageError::Invalid(m.into()).into()
}

fn kind_name(k: IdentityKind) -> &'static str {
    match k {
        IdentityKind::User => "user",
        IdentityKind::Token => "token",
    }
}

fn grant_message(g: &RoleGrant) -> pb::RoleGrant {
    pb::RoleGrant {
        role: grants::role_name(g.role).to_string(),
        pattern: g.pattern.clone(),
    }
}

/// A role grant of the wire, checked as `ROLE:PATTERN` is on the command line.
fn role_grant(g: &pb::RoleGrant) -> Result<RoleGrant, ManageError> {
    manage::parse_role_grant(&format!("{}:{}", g.role, g.pattern))
}

fn role_grants(gs: &[pb::RoleGrant]) -> Result<Vec<RoleGrant>, Status> {
    Ok(gs.iter().map(role_grant).collect::<Result<_, _>>()?)
}

/// A slot number of the wire (0: none).
fn slot(n: u32) -> Result<Option<u8>, Status> {
    match n {
        0 => Ok(None),
        1 | 2 => Ok(Some(n as u8)),
        _ => Err(invalid(format!("password slot {n}: slots are 1 and 2"))),
    }
}

fn identity_message(name: &str, id: &IdentityRecord) -> pb::Identity {
    pb::Identity {
        name: name.to_string(),
        kind: kind_name(id.kind).to_string(),
        enabled: id.enabled,
        expiry_ms: id.expiry_ms.unwrap_or(0),
        scope_map: id.scope_map.clone().unwrap_or_default(),
        roles: id.roles.iter().map(grant_message).collect(),
        // When each password was set; never the hash.
        passwords: id
            .secrets
            .iter()
            .map(|s| pb::PasswordInfo {
                slot: u32::from(s.slot),
                created_ms: s.created_ms,
                expiry_ms: s.expiry_ms.unwrap_or(0),
            })
            .collect(),
        created_ms: id.created_ms,
        updated_ms: id.updated_ms,
        admin: grants::is_admin(id),
    }
}

fn changed_message(name: &str, id: &IdentityRecord, new: Vec<NewPassword>) -> pb::IdentityChanged {
    pb::IdentityChanged {
        identity: Some(identity_message(name, id)),
        passwords: new
            .into_iter()
            .map(|p| pb::NewPassword {
                slot: u32::from(p.slot),
                password: p.password,
            })
            .collect(),
    }
}

fn scope_map_message(state: &AuthState, name: &str, m: &ScopeMapRecord) -> pb::ScopeMap {
    pb::ScopeMap {
        name: name.to_string(),
        description: m.description.clone(),
        rules: m
            .rules
            .iter()
            .map(|(pattern, actions)| pb::ScopeRule {
                pattern: pattern.clone(),
                actions: actions
                    .iter()
                    .map(|a| grants::action_name(*a).to_string())
                    .collect(),
            })
            .collect(),
        created_ms: m.created_ms,
        updated_ms: m.updated_ms,
        tokens: state
            .identities
            .iter()
            .filter(|(_, id)| id.scope_map.as_deref() == Some(name))
            .map(|(n, _)| n.clone())
            .collect(),
    }
}

/// Scope rules of the wire, checked as `PATTERN:ACTION,…` is on the command line.
fn scope_rules(rules: &[pb::ScopeRule]) -> Result<BTreeMap<String, BTreeSet<RepoAction>>, Status> {
    let mut out: BTreeMap<String, BTreeSet<RepoAction>> = BTreeMap::new();
    for r in rules {
        if r.actions.is_empty() {
            return Err(invalid(format!("rule {}: no action", r.pattern)));
        }
        let (pattern, actions) =
            manage::parse_scope_rule(&format!("{}:{}", r.pattern, r.actions.join(",")))?;
        out.entry(pattern).or_default().extend(actions);
    }
    Ok(out)
}

fn keys_message(state: &AuthState, signing_kid: String) -> pb::AuthKeys {
    pb::AuthKeys {
        // Never the private key.
        keys: state
            .keys
            .iter()
            .map(|k| pb::AuthKey {
                kid: k.kid.clone(),
                created_ms: k.created_ms,
                retired_ms: k.retired_ms.unwrap_or(0),
            })
            .collect(),
        signing_kid,
    }
}

fn role_description(r: Role) -> &'static str {
    match r {
        Role::Reader => "pull and list",
        Role::Writer => "pull, list and push",
        Role::Deleter => "pull, list and delete",
        Role::Admin => "everything; on ** also the admin service",
    }
}

fn rule_message(pattern: &str, r: &RepoNetworkRule) -> pb::RepositoryNetworkRule {
    pb::RepositoryNetworkRule {
        pattern: pattern.to_string(),
        default_allow: r.default_allow,
        allow: r.allow.clone(),
    }
}

impl AuthRpc {
    /// The RPCs over a node's auth use cases.
    pub(super) fn new(admin: AuthAdmin, cluster: Cluster) -> AuthRpc {
        AuthRpc { admin, cluster }
    }

    /// The applied state after catching up with the leader (a change just made at another
    /// node included); a node cut off from the leader answers from its own state.
    async fn read(&self) -> Arc<AuthState> {
        let _ = tokio::time::timeout(READ_CATCH_UP, self.cluster.catch_up_with_leader()).await;
        self.admin.auth().state()
    }

    fn settings_message(&self) -> pb::AuthSettings {
        let s = self.admin.auth().state().settings.clone();
        pb::AuthSettings {
            enabled: self.admin.auth().enabled(),
            anonymous_pull: s.anonymous_pull,
            network: Some(pb::NetworkRules {
                default_allow: s.network.default_allow,
                allow: s.network.allow,
                public_access: s.network.public_access,
                repositories: s
                    .network
                    .repositories
                    .iter()
                    .map(|(p, r)| rule_message(p, r))
                    .collect(),
            }),
        }
    }

    /// `Admin.ListIdentities` (the caller was admitted).
    pub(super) async fn list_identities(
        &self,
        req: pb::ListIdentitiesRequest,
    ) -> Result<Response<pb::Identities>, Status> {
        let kind = match req.kind.as_str() {
            "" => None,
            "user" => Some(IdentityKind::User),
            "token" => Some(IdentityKind::Token),
            other => return Err(invalid(format!("kind {other:?}: user, token or empty"))),
        };
        let state = self.read().await;
        let identities = state
            .identities
            .iter()
            .filter(|(_, id)| kind.is_none_or(|k| id.kind == k))
            .map(|(n, id)| identity_message(n, id))
            .collect();
        Ok(Response::new(pb::Identities { identities }))
    }

    /// `Admin.GetIdentity` (the caller was admitted).
    pub(super) async fn get_identity(
        &self,
        req: pb::IdentityRef,
    ) -> Result<Response<pb::Identity>, Status> {
        self.read().await;
        let id = self.admin.identity(&req.name)?;
        Ok(Response::new(identity_message(&req.name, &id)))
    }

    /// `Admin.CreateUser` (the caller was admitted).
    pub(super) async fn create_user(
        &self,
        req: pb::CreateUserRequest,
    ) -> Result<Response<pb::Identity>, Status> {
        let roles = role_grants(&req.roles)?;
        let id = self
            .admin
            .create_user(&req.name, &req.password, roles)
            .await?;
        tracing::info!(target: "berth::audit", identity = %req.name, "user created");
        Ok(Response::new(identity_message(&req.name, &id)))
    }

    /// `Admin.CreateToken` (the caller was admitted).
    pub(super) async fn create_token(
        &self,
        req: pb::CreateTokenRequest,
    ) -> Result<Response<pb::IdentityChanged>, Status> {
        let roles = role_grants(&req.roles)?;
        let passwords = match req.passwords {
            0 | 1 => 1,
            2 => 2,
            n => return Err(invalid(format!("{n} passwords: a token has 1 or 2"))),
        };
        let scope_map = Some(req.scope_map).filter(|m| !m.is_empty());
        let expiry = Some(req.expiry_ms).filter(|e| *e != 0);
        let (id, new) = self
            .admin
            .create_token(&req.name, scope_map, roles, expiry, passwords)
            .await?;
        tracing::info!(target: "berth::audit", identity = %req.name, "token created");
        Ok(Response::new(changed_message(&req.name, &id, new)))
    }

    /// `Admin.UpdateIdentity` (the caller was admitted).
    pub(super) async fn update_identity(
        &self,
        req: pb::UpdateIdentityRequest,
    ) -> Result<Response<pb::IdentityChanged>, Status> {
        let change = IdentityChange {
            enabled: req.enabled,
            expiry_ms: req.expiry_ms.map(|e| Some(e).filter(|e| *e != 0)),
            scope_map: req.scope_map,
            password: req.password,
            regenerate: slot(req.regenerate)?,
            remove_password: slot(req.remove_password)?,
            add_roles: role_grants(&req.add_roles)?,
            remove_roles: role_grants(&req.remove_roles)?,
        };
        let (id, new) = self.admin.update_identity(&req.name, change).await?;
        tracing::info!(target: "berth::audit", identity = %req.name, "identity changed");
        Ok(Response::new(changed_message(&req.name, &id, new)))
    }

    /// `Admin.DeleteIdentity` (the caller was admitted).
    pub(super) async fn delete_identity(
        &self,
        req: pb::IdentityRef,
    ) -> Result<Response<pb::Deleted>, Status> {
        self.admin.delete_identity(&req.name).await?;
        tracing::info!(target: "berth::audit", identity = %req.name, "identity deleted");
        Ok(Response::new(pb::Deleted { name: req.name }))
    }

    /// `Admin.ListScopeMaps` (the caller was admitted).
    pub(super) async fn list_scope_maps(&self) -> Result<Response<pb::ScopeMaps>, Status> {
        let state = self.read().await;
        let scope_maps = state
            .scope_maps
            .iter()
            .map(|(n, m)| scope_map_message(&state, n, m))
            .collect();
        Ok(Response::new(pb::ScopeMaps { scope_maps }))
    }

    /// `Admin.GetScopeMap` (the caller was admitted).
    pub(super) async fn get_scope_map(
        &self,
        req: pb::ScopeMapRef,
    ) -> Result<Response<pb::ScopeMap>, Status> {
        let state = self.read().await;
        let m = state.scope_maps.get(&req.name).ok_or_else(|| {
            Status::from(ManageError::NotFound(format!(
                "scope map {} does not exist",
                req.name
            )))
        })?;
        Ok(Response::new(scope_map_message(&state, &req.name, m)))
    }

    /// `Admin.PutScopeMap` (the caller was admitted).
    pub(super) async fn put_scope_map(
        &self,
        req: pb::PutScopeMapRequest,
    ) -> Result<Response<pb::ScopeMap>, Status> {
        let mut rules = scope_rules(&req.rules)?;
        let mut description = req.description.clone().unwrap_or_default();
        if !req.create {
            // What the change leaves unset stays as it is.
            let state = self.read().await;
            if let Some(old) = state.scope_maps.get(&req.name) {
                if req.rules.is_empty() {
                    rules = old.rules.clone();
                }
                if req.description.is_none() {
                    description = old.description.clone();
                }
            }
        }
        let m = self
            .admin
            .put_scope_map(&req.name, description, rules, req.create)
            .await?;
        tracing::info!(target: "berth::audit", scope_map = %req.name, "scope map set");
        let state = self.admin.auth().state();
        Ok(Response::new(scope_map_message(&state, &req.name, &m)))
    }

    /// `Admin.DeleteScopeMap` (the caller was admitted).
    pub(super) async fn delete_scope_map(
        &self,
        req: pb::ScopeMapRef,
    ) -> Result<Response<pb::Deleted>, Status> {
        self.admin.delete_scope_map(&req.name).await?;
        tracing::info!(target: "berth::audit", scope_map = %req.name, "scope map deleted");
        Ok(Response::new(pb::Deleted { name: req.name }))
    }

    /// `Admin.ListRoles` (the caller was admitted).
    pub(super) fn list_roles(&self) -> Response<pb::Roles> {
        let roles = [Role::Reader, Role::Writer, Role::Deleter, Role::Admin]
            .into_iter()
            .map(|r| pb::RoleInfo {
                name: grants::role_name(r).to_string(),
                actions: grants::role_actions(r)
                    .iter()
                    .map(|a| grants::action_name(*a).to_string())
                    .collect(),
                description: role_description(r).to_string(),
            })
            .collect();
        Response::new(pb::Roles { roles })
    }

    /// `Admin.ListAuthKeys` (the caller was admitted).
    pub(super) async fn list_auth_keys(&self) -> Result<Response<pb::AuthKeys>, Status> {
        let state = self.read().await;
        let signing = state
            .signing_key()
            .map(|k| k.kid.clone())
            .unwrap_or_default();
        Ok(Response::new(keys_message(&state, signing)))
    }

    /// `Admin.RotateAuthKey` (the caller was admitted).
    pub(super) async fn rotate_auth_key(&self) -> Result<Response<pb::AuthKeys>, Status> {
        let kid = self.admin.rotate_key().await?;
        tracing::info!(target: "berth::audit", kid = %kid, "signing key rotated");
        Ok(Response::new(keys_message(&self.admin.auth().state(), kid)))
    }

    /// `Admin.DropAuthKey` (the caller was admitted).
    pub(super) async fn drop_auth_key(
        &self,
        r: pb::AuthKeyRef,
    ) -> Result<Response<pb::AuthKeys>, Status> {
        self.admin.drop_key(&r.kid).await?;
        let state = self.admin.auth().state();
        let signing = state
            .signing_key()
            .map(|k| k.kid.clone())
            .unwrap_or_default();
        Ok(Response::new(keys_message(&state, signing)))
    }

    /// `Admin.GetAuthSettings` (the caller was admitted).
    pub(super) async fn get_auth_settings(&self) -> Result<Response<pb::AuthSettings>, Status> {
        self.read().await;
        Ok(Response::new(self.settings_message()))
    }

    /// `Admin.SetAnonymousPull` (the caller was admitted).
    pub(super) async fn set_anonymous_pull(
        &self,
        req: pb::SetAnonymousPullRequest,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        let mut patterns = req.patterns;
        patterns.sort();
        patterns.dedup();
        self.admin
            .update_settings(|s| {
                s.anonymous_pull = patterns.clone();
                Ok(())
            })
            .await?;
        tracing::info!(target: "berth::audit", patterns = ?patterns, "anonymous pull set");
        Ok(Response::new(self.settings_message()))
    }

    /// `Admin.SetNetworkRules` (the caller was admitted).
    pub(super) async fn set_network_rules(
        &self,
        req: pb::SetNetworkRulesRequest,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        self.admin
            .update_settings(|s| {
                if let Some(d) = req.default_allow {
                    s.network.default_allow = d;
                }
                if req.set_allow {
                    s.network.allow = req.allow.clone();
                }
                if let Some(p) = req.public_access {
                    s.network.public_access = p;
                }
                Ok(())
            })
            .await?;
        tracing::info!(target: "berth::audit", "network rules set");
        Ok(Response::new(self.settings_message()))
    }

    /// `Admin.SetRepositoryNetworkRule` (the caller was admitted).
    pub(super) async fn set_repository_network_rule(
        &self,
        req: pb::RepositoryNetworkRule,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        self.admin
            .update_settings(|s| {
                let rule = RepoNetworkRule {
                    default_allow: req.default_allow,
                    allow: req.allow.clone(),
                };
                s.network.repositories.insert(req.pattern.clone(), rule);
                Ok(())
            })
            .await?;
        tracing::info!(target: "berth::audit", pattern = %req.pattern, "repository network rule set");
        Ok(Response::new(self.settings_message()))
    }

    /// `Admin.ClearRepositoryNetworkRule` (the caller was admitted).
    pub(super) async fn clear_repository_network_rule(
        &self,
        req: pb::RepositoryNetworkRuleRef,
    ) -> Result<Response<pb::AuthSettings>, Status> {
        self.admin
            .update_settings(|s| match s.network.repositories.remove(&req.pattern) {
                Some(_) => Ok(()),
                None => Err(ManageError::NotFound(format!(
                    "{} has no network rule",
                    req.pattern
                ))),
            })
            .await?;
        tracing::info!(target: "berth::audit", pattern = %req.pattern, "repository network rule cleared");
        Ok(Response::new(self.settings_message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_admin_service_answers_only_the_allowed_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, _sm, reader) = crate::meta::open(dir.path()).unwrap();
        // The defaults of a loopback node: auth off.
        let mut config = crate::config::Config::default().auth_settings().unwrap();
        config.admin_allow = vec![crate::auth::parse_cidr("10.0.0.0/8").unwrap()];
        // mTLS on: only the address rule stands between a caller and the service.
        let auth = Auth::new(
            config,
            reader.auth().clone(),
            crate::audit::Audit::discard(),
        );
        let guard = AdminGuard::new(auth, true);
        let from = |ip: &str| {
            let mut r = Request::new(());
            r.extensions_mut()
                .insert(tonic::transport::server::TcpConnectInfo {
                    local_addr: None,
                    remote_addr: Some(format!("{ip}:4000").parse().unwrap()),
                });
            r
        };
        assert!(guard.check(&from("10.1.2.3")).await.is_ok());
        for req in [from("192.0.2.1"), Request::new(())] {
            let e = guard.check(&req).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        }
    }

    #[test]
    fn wire_grants_and_rules_are_checked() {
        let g = role_grant(&pb::RoleGrant {
            role: "writer".into(),
            pattern: "team/**".into(),
        })
        .unwrap();
        assert_eq!(g.role, Role::Writer);
        assert_eq!(grant_message(&g).role, "writer");
        for (role, pattern) in [("owner", "a"), ("reader", ""), ("reader", "A/b")] {
            let bad = pb::RoleGrant {
                role: role.into(),
                pattern: pattern.into(),
            };
            assert!(role_grant(&bad).is_err(), "{role}:{pattern}");
        }
        let rules = scope_rules(&[
            pb::ScopeRule {
                pattern: "team/*".into(),
                actions: vec!["content/read".into()],
            },
            pb::ScopeRule {
                pattern: "team/*".into(),
                actions: vec!["content/write".into()],
            },
        ])
        .unwrap();
        assert_eq!(
            rules["team/*"],
            [RepoAction::ContentRead, RepoAction::ContentWrite].into()
        );
        let no_action = pb::ScopeRule {
            pattern: "a".into(),
            actions: vec![],
        };
        assert_eq!(
            scope_rules(&[no_action]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(slot(0).unwrap(), None);
        assert_eq!(slot(2).unwrap(), Some(2));
        assert!(slot(3).is_err());
    }

    /// The wire form of an identity carries when its passwords were set, never their hashes.
    #[test]
    fn identities_never_carry_password_hashes() {
        let id = IdentityRecord {
            kind: IdentityKind::Token,
            uid: 7,
            generation: 3,
            secrets: vec![crate::meta::auth::Secret {
                slot: 2,
                hash: "$sha256$secret-hash".into(),
                stamp: 9,
                created_ms: 1000,
                expiry_ms: None,
            }],
            enabled: true,
            expiry_ms: Some(5000),
            scope_map: Some("ci".into()),
            roles: vec![RoleGrant {
                role: Role::Admin,
                pattern: "**".into(),
            }],
            created_ms: 1,
            updated_ms: 2,
        };
        let m = identity_message("bot", &id);
        assert_eq!(m.kind, "token");
        assert_eq!(m.expiry_ms, 5000);
        assert_eq!(m.scope_map, "ci");
        assert!(m.admin);
        assert_eq!(m.passwords.len(), 1);
        assert_eq!(m.passwords[0].slot, 2);
        assert!(!format!("{m:?}").contains("secret-hash"));
    }
}
