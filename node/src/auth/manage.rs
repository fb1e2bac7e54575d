//! Changing the auth records: the use cases behind `clusterctl users|tokens|scope-maps|roles|
//! auth` and the start-up bootstrap (first signing key, admin user). Every change is a Raft
//! command (forwarded to the leader at a follower); a replace carries the generation it read
//! and is retried on a conflict, so concurrent changes never overwrite each other unseen.
//!
//! A change that would leave the cluster without a working admin (an enabled, unexpired
//! identity with a usable password and the admin role on `**`) is refused: without one,
//! and without cluster mTLS, nobody could use the admin service again. Two concurrent
//! changes of two admins may still each pass this check; it is a guard against mistakes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::password::{self, random_id};
use super::{Auth, grants, jwt};
use crate::cluster::{Cluster, ClusterError};
use crate::meta::auth::{
    ADMIN_USER, AuthCommand, AuthSettings, AuthState, IdentityKind, IdentityRecord, RepoAction,
    Role, RoleGrant, ScopeMapRecord, Secret, SigningKeyRecord,
};
use crate::meta::{Command, CommandV1, Rejection, WriteResult, policy};
use crate::types::ErrorKind;
use crate::types::time::now_ms;

/// How often the bootstrap looks again while it cannot finish (no leader yet).
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(1);
/// Attempts of a read-modify-write before a conflict is reported.
const CONFLICT_RETRIES: usize = 5;

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// No such identity or scope map.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken, or the record is in use.
    #[error("{0}")]
    Exists(String),
    /// It could not be committed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl ManageError {
    /// The broad class of the error (for the admin service's status codes).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ManageError::Invalid(_) => ErrorKind::Invalid,
            ManageError::NotFound(_) => ErrorKind::NotFound,
            ManageError::Exists(_) => ErrorKind::Conflict,
            ManageError::Cluster(e) => e.kind(),
        }
    }
}

/// A new signing key record.
pub fn new_signing_key() -> SigningKeyRecord {
    SigningKeyRecord {
        kid: hex::encode(password::random_bytes::<8>()),
        pkcs8: jwt::generate_pkcs8(),
        created_ms: now_ms(),
        retired_ms: None,
    }
}

/// A login name: 1 to 64 of `[a-zA-Z0-9._-]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), ManageError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ManageError::Invalid(format!(
            "invalid name {name:?}: 1 to 64 of a-z, A-Z, 0-9, '.', '_', '-', starting with a \
             letter or digit"
        )))
    }
}

fn validate_pattern(p: &str) -> Result<(), ManageError> {
    policy::validate_pattern(p).map_err(|e| ManageError::Invalid(e.to_string()))
}

/// Parses `ROLE:PATTERN` (e.g. `writer:team/**`).
pub fn parse_role_grant(s: &str) -> Result<RoleGrant, ManageError> {
    let (role, pattern) = s
        .split_once(':')
        .ok_or_else(|| ManageError::Invalid(format!("{s:?}: expected ROLE:PATTERN")))?;
    let role = grants::parse_role(role).ok_or_else(|| {
        ManageError::Invalid(format!(
            "unknown role {role:?} (reader, writer, deleter, admin)"
        ))
    })?;
    validate_pattern(pattern)?;
    Ok(RoleGrant {
        role,
        pattern: pattern.to_string(),
    })
}

/// Parses a scope map rule `PATTERN:ACTION,ACTION` (ACR's actions, e.g.
/// `team/*:content/read,content/write`).
pub fn parse_scope_rule(s: &str) -> Result<(String, BTreeSet<RepoAction>), ManageError> {
    let (pattern, actions) = s
        .rsplit_once(':')
        .ok_or_else(|| ManageError::Invalid(format!("{s:?}: expected PATTERN:ACTION[,ACTION…]")))?;
    validate_pattern(pattern)?;
    let mut set = BTreeSet::new();
    for a in actions.split(',') {
        set.insert(grants::parse_action(a).ok_or_else(|| {
            ManageError::Invalid(format!(
                "unknown action {a:?} (content/read, content/write, content/delete, \
                 metadata/read, metadata/write)"
            ))
        })?);
    }
    Ok((pattern.to_string(), set))
}

/// The auth use cases of a node.
#[derive(Debug, Clone)]
pub struct AuthAdmin {
    auth: Arc<Auth>,
    cluster: Cluster,
}

/// A created or regenerated password, shown once.
#[derive(Debug, Clone)]
pub struct NewPassword {
    /// 1 or 2.
    pub slot: u8,
    /// The password.
    pub password: String,
}

/// A change to an identity (`None`: leave as it is).
#[derive(Debug, Clone, Default)]
pub struct IdentityChange {
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Set the expiry (`Some(None)`: never).
    pub expiry_ms: Option<Option<u64>>,
    /// Bind a token to another scope map.
    pub scope_map: Option<String>,
    /// Set a user's password.
    pub password: Option<String>,
    /// Regenerate a token's password in this slot (1 or 2).
    pub regenerate: Option<u8>,
    /// Remove a token's password in this slot.
    pub remove_password: Option<u8>,
    /// Roles to add.
    pub add_roles: Vec<RoleGrant>,
    /// Roles to remove.
    pub remove_roles: Vec<RoleGrant>,
}

impl AuthAdmin {
    /// The use cases over a node's auth service and cluster.
    pub fn new(auth: Arc<Auth>, cluster: Cluster) -> AuthAdmin {
        AuthAdmin { auth, cluster }
    }

    /// The auth service.
    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    async fn write(&self, cmd: AuthCommand) -> Result<WriteResult, ManageError> {
        Ok(self
            .cluster
            .write(Command::V1(CommandV1::Auth(Box::new(cmd))))
            .await?)
    }

    fn rejected(r: Rejection) -> ManageError {
        match r {
            Rejection::AuthUnknown(what) => ManageError::NotFound(format!("{what} does not exist")),
            Rejection::AuthExists(what) => ManageError::Exists(format!("{what} exists already")),
            other => ManageError::Exists(other.to_string()),
        }
    }

    /// Creates a user with a password and roles.
    pub async fn create_user(
        &self,
        name: &str,
        password: &str,
        roles: Vec<RoleGrant>,
    ) -> Result<IdentityRecord, ManageError> {
        validate_name(name)?;
        if password.len() < 8 {
            return Err(ManageError::Invalid(
                "a password has at least 8 characters".into(),
            ));
        }
        let now = now_ms();
        let record = IdentityRecord {
            kind: IdentityKind::User,
            uid: random_id(),
            generation: 0,
            secrets: vec![user_secret(password).await],
            enabled: true,
            expiry_ms: None,
            scope_map: None,
            roles: dedup(roles),
            created_ms: now,
            updated_ms: now,
        };
        self.put_new(name, record).await
    }

    /// Creates a machine token bound to a scope map (and optionally roles); returns it with
    /// its new password(s), which are not stored anywhere in clear.
    pub async fn create_token(
        &self,
        name: &str,
        scope_map: Option<String>,
        roles: Vec<RoleGrant>,
        expiry_ms: Option<u64>,
        passwords: u8,
    ) -> Result<(IdentityRecord, Vec<NewPassword>), ManageError> {
        validate_name(name)?;
        if scope_map.is_none() && roles.is_empty() {
            return Err(ManageError::Invalid(
                "a token needs a scope map or a role".into(),
            ));
        }
        let now = now_ms();
        let mut secrets = Vec::new();
        let mut shown = Vec::new();
        for slot in 1..=passwords.clamp(1, 2) {
            let (s, p) = token_secret(slot, now);
            secrets.push(s);
            shown.push(NewPassword { slot, password: p });
        }
        let record = IdentityRecord {
            kind: IdentityKind::Token,
            uid: random_id(),
            generation: 0,
            secrets,
            enabled: true,
            expiry_ms,
            scope_map,
            roles: dedup(roles),
            created_ms: now,
            updated_ms: now,
        };
        Ok((self.put_new(name, record).await?, shown))
    }

    async fn put_new(
        &self,
        name: &str,
        record: IdentityRecord,
    ) -> Result<IdentityRecord, ManageError> {
        let cmd = AuthCommand::PutIdentity {
            name: name.to_string(),
            record: record.clone(),
            expect: None,
        };
        match self.write(cmd).await? {
            WriteResult::Rejected(r) => Err(Self::rejected(r)),
            _ => Ok(self.identity(name)?),
        }
    }

    /// An identity as applied on this node.
    pub fn identity(&self, name: &str) -> Result<IdentityRecord, ManageError> {
        self.auth
            .state()
            .identities
            .get(name)
            .cloned()
            .ok_or_else(|| ManageError::NotFound(format!("{name} does not exist")))
    }

    /// Changes an identity; returns it and any password generated (shown once).
    pub async fn update_identity(
        &self,
        name: &str,
        change: IdentityChange,
    ) -> Result<(IdentityRecord, Vec<NewPassword>), ManageError> {
        for g in change.add_roles.iter().chain(&change.remove_roles) {
            validate_pattern(&g.pattern)?;
        }
        let hashed = match &change.password {
            Some(p) if p.len() < 8 => {
                return Err(ManageError::Invalid(
                    "a password has at least 8 characters".into(),
                ));
            }
            Some(p) => Some(user_secret(p).await),
            None => None,
        };
        for _ in 0..CONFLICT_RETRIES {
            let mut record = self.identity(name)?;
            let expect = record.generation;
            let mut shown = Vec::new();
            let now = now_ms();
            if let Some(e) = change.enabled {
                record.enabled = e;
            }
            if let Some(e) = change.expiry_ms {
                record.expiry_ms = e;
            }
            if let Some(m) = &change.scope_map {
                if record.kind != IdentityKind::Token {
                    return Err(ManageError::Invalid("only a token has a scope map".into()));
                }
                record.scope_map = Some(m.clone());
            }
            if let Some(h) = &hashed {
                if record.kind != IdentityKind::User {
                    return Err(ManageError::Invalid(
                        "a token's passwords are generated: regenerate one instead".into(),
                    ));
                }
                record.secrets = vec![h.clone()];
            }
            for slot in [change.regenerate, change.remove_password]
                .into_iter()
                .flatten()
            {
                if record.kind != IdentityKind::Token || !(1..=2).contains(&slot) {
                    return Err(ManageError::Invalid(
                        "password slots 1 and 2 belong to tokens".into(),
                    ));
                }
            }
            if let Some(slot) = change.remove_password {
                record.secrets.retain(|s| s.slot != slot);
            }
            if let Some(slot) = change.regenerate {
                let (s, p) = token_secret(slot, now);
                record.secrets.retain(|s| s.slot != slot);
                record.secrets.push(s);
                record.secrets.sort_by_key(|s| s.slot);
                shown.push(NewPassword { slot, password: p });
            }
            record.roles.retain(|g| !change.remove_roles.contains(g));
            record.roles.extend(change.add_roles.iter().cloned());
            record.roles = dedup(std::mem::take(&mut record.roles));
            record.updated_ms = now;
            if removes_last_admin(&self.auth.state(), name, Some(&record), now) {
                return Err(last_admin(name));
            }
            let cmd = AuthCommand::PutIdentity {
                name: name.to_string(),
                record,
                expect: Some(expect),
            };
            match self.write(cmd).await? {
                WriteResult::Rejected(Rejection::AuthConflict(_)) => continue,
                WriteResult::Rejected(r) => return Err(Self::rejected(r)),
                _ => return Ok((self.identity(name)?, shown)),
            }
        }
        Err(ManageError::Exists(format!(
            "{name} kept changing meanwhile; try again"
        )))
    }

    /// Deletes an identity: its tokens stop working on every node as it applies this.
    /// Refused ([`ManageError::Exists`]) for the last working admin.
    pub async fn delete_identity(&self, name: &str) -> Result<(), ManageError> {
        if removes_last_admin(&self.auth.state(), name, None, now_ms()) {
            return Err(last_admin(name));
        }
        match self
            .write(AuthCommand::DeleteIdentity {
                name: name.to_string(),
            })
            .await?
        {
            WriteResult::Rejected(r) => Err(Self::rejected(r)),
            _ => Ok(()),
        }
    }

    /// Creates (`create`) or replaces a scope map's rules and description.
    pub async fn put_scope_map(
        &self,
        name: &str,
        description: String,
        rules: BTreeMap<String, BTreeSet<RepoAction>>,
        create: bool,
    ) -> Result<ScopeMapRecord, ManageError> {
        validate_name(name)?;
        for p in rules.keys() {
            validate_pattern(p)?;
        }
        for _ in 0..CONFLICT_RETRIES {
            let stored = self.auth.state().scope_maps.get(name).cloned();
            let now = now_ms();
            let (expect, created_ms) = match (&stored, create) {
                (Some(_), true) => {
                    return Err(ManageError::Exists(format!(
                        "scope map {name} exists already"
                    )));
                }
                (None, false) => {
                    return Err(ManageError::NotFound(format!(
                        "scope map {name} does not exist"
                    )));
                }
                (Some(s), false) => (Some(s.generation), s.created_ms),
                (None, true) => (None, now),
            };
            let record = ScopeMapRecord {
                generation: 0,
                description: description.clone(),
                rules: rules.clone(),
                created_ms,
                updated_ms: now,
            };
            let cmd = AuthCommand::PutScopeMap {
                name: name.to_string(),
                record,
                expect,
            };
            match self.write(cmd).await? {
                WriteResult::Rejected(Rejection::AuthConflict(_)) => continue,
                WriteResult::Rejected(r) => return Err(Self::rejected(r)),
                _ => {
                    return self
                        .auth
                        .state()
                        .scope_maps
                        .get(name)
                        .cloned()
                        .ok_or_else(|| {
                            ManageError::NotFound(format!("scope map {name} does not exist"))
                        });
                }
            }
        }
        Err(ManageError::Exists(format!(
            "scope map {name} kept changing meanwhile; try again"
        )))
    }

    /// Deletes a scope map (refused while a token uses it).
    pub async fn delete_scope_map(&self, name: &str) -> Result<(), ManageError> {
        match self
            .write(AuthCommand::DeleteScopeMap {
                name: name.to_string(),
            })
            .await?
        {
            WriteResult::Rejected(Rejection::ScopeMapInUse { map, token }) => Err(
                ManageError::Exists(format!("scope map {map} is used by token {token}")),
            ),
            WriteResult::Rejected(r) => Err(Self::rejected(r)),
            _ => Ok(()),
        }
    }

    /// Makes a new signing key the one that signs; keys retired longer ago than a refresh
    /// token lives are dropped. Returns the new key's `kid`.
    pub async fn rotate_key(&self) -> Result<String, ManageError> {
        let key = new_signing_key();
        let kid = key.kid.clone();
        let keep = self.auth.config().refresh_ttl.as_millis() as u64;
        self.write(AuthCommand::AddSigningKey {
            drop_retired_before_ms: key.created_ms.saturating_sub(keep),
            key,
            only_if_none: false,
        })
        .await?;
        Ok(kid)
    }

    /// Drops a retired signing key at once: every token it signed stops verifying at each
    /// node as it applies this. The key that signs cannot be dropped (rotate first).
    pub async fn drop_key(&self, kid: &str) -> Result<(), ManageError> {
        match self
            .write(AuthCommand::DropSigningKey {
                kid: kid.to_string(),
            })
            .await?
        {
            WriteResult::Rejected(Rejection::AuthConflict(why)) => Err(ManageError::Exists(
                format!("{why} the key that signs cannot be dropped"),
            )),
            WriteResult::Rejected(r) => Err(Self::rejected(r)),
            _ => Ok(()),
        }
    }

    /// Changes the cluster's auth settings with `f` (retried on a conflict).
    pub async fn update_settings(
        &self,
        f: impl Fn(&mut AuthSettings) -> Result<(), ManageError>,
    ) -> Result<AuthSettings, ManageError> {
        for _ in 0..CONFLICT_RETRIES {
            let mut settings = self.auth.state().settings.clone();
            let expect = settings.generation;
            f(&mut settings)?;
            for p in &settings.anonymous_pull {
                validate_pattern(p)?;
            }
            for c in settings.network.allow.iter().chain(
                settings
                    .network
                    .repositories
                    .values()
                    .flat_map(|r| r.allow.iter()),
            ) {
                super::parse_cidr(c).map_err(ManageError::Invalid)?;
            }
            for p in settings.network.repositories.keys() {
                validate_pattern(p)?;
            }
            match self
                .write(AuthCommand::SetSettings { settings, expect })
                .await?
            {
                WriteResult::Rejected(Rejection::AuthConflict(_)) => continue,
                WriteResult::Rejected(r) => return Err(Self::rejected(r)),
                _ => return Ok(self.auth.state().settings.clone()),
            }
        }
        Err(ManageError::Exists(
            "auth settings kept changing meanwhile; try again".into(),
        ))
    }

    /// At start-up with auth on: makes the cluster's first signing key, and the `admin` user
    /// from the bootstrap password when the cluster has no user. Every node does this; the
    /// commands apply only once. Retries until done or `stop`.
    pub async fn bootstrap(self, stop: CancellationToken) {
        if !self.auth.enabled() {
            return;
        }
        let mut tick = tokio::time::interval(BOOTSTRAP_RETRY);
        // Set once the cluster refused the admin (it has users, or made one before): asking
        // again would be refused again.
        let mut admin_settled = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let state = self.auth.state();
            let password = self.auth.config().bootstrap_admin_password.clone();
            let need_key = state.signing_key().is_none();
            let need_admin = password.is_some()
                && !admin_settled
                && !state.settings.bootstrapped
                && !state.has_user();
            if !need_key && !need_admin {
                return;
            }
            if !self.cluster.has_leader() {
                continue;
            }
            if need_key {
                let cmd = AuthCommand::AddSigningKey {
                    key: new_signing_key(),
                    only_if_none: true,
                    drop_retired_before_ms: 0,
                };
                match self.write(cmd).await {
                    Ok(_) => tracing::info!("made the cluster's token signing key"),
                    Err(e) => tracing::warn!(error = %e, "could not make a signing key yet"),
                }
            }
            if let (true, Some(p)) = (need_admin, password) {
                let now = now_ms();
                let record = IdentityRecord {
                    kind: IdentityKind::User,
                    uid: random_id(),
                    generation: 0,
                    secrets: vec![user_secret(&p).await],
                    enabled: true,
                    expiry_ms: None,
                    scope_map: None,
                    roles: vec![RoleGrant {
                        role: Role::Admin,
                        pattern: "**".to_string(),
                    }],
                    created_ms: now,
                    updated_ms: now,
                };
                match self.write(AuthCommand::BootstrapAdmin { record }).await {
                    Ok(WriteResult::Done) => {
                        tracing::info!(user = ADMIN_USER, "created the admin user")
                    }
                    Ok(_) => admin_settled = true,
                    Err(e) => tracing::warn!(error = %e, "could not create the admin user yet"),
                }
            }
        }
    }
}

/// A user's password hashed (argon2, on the blocking pool).
async fn user_secret(password: &str) -> Secret {
    let p = password.to_string();
    let hash = tokio::task::spawn_blocking(move || password::hash_user_password(&p))
        .await
        .expect("hashing does not panic");
    Secret {
        slot: 1,
        hash,
        stamp: random_id(),
        created_ms: now_ms(),
        expiry_ms: None,
    }
}

/// A new token password for `slot`, and its record.
fn token_secret(slot: u8, now: u64) -> (Secret, String) {
    let p = password::generate_token_password();
    (
        Secret {
            slot,
            hash: password::hash_token_password(&p),
            stamp: random_id(),
            created_ms: now,
            expiry_ms: None,
        },
        p,
    )
}

/// Whether replacing identity `name` with `new` (`None`: deleting it) would take away the
/// cluster's last working admin.
fn removes_last_admin(
    state: &AuthState,
    name: &str,
    new: Option<&IdentityRecord>,
    now: u64,
) -> bool {
    let working = |id: &IdentityRecord| grants::is_admin(id) && super::usable(id, 0, now);
    let was = state.identities.get(name).is_some_and(working);
    let stays = new.is_some_and(working);
    was && !stays
        && !state
            .identities
            .iter()
            .any(|(n, id)| n != name && working(id))
}

fn last_admin(name: &str) -> ManageError {
    ManageError::Exists(format!(
        "{name} is the cluster's last working admin (admin role on **): make another admin \
         first"
    ))
}

fn dedup(mut roles: Vec<RoleGrant>) -> Vec<RoleGrant> {
    roles.sort();
    roles.dedup();
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roles_and_rules_are_checked() {
        assert!(validate_name("ci-bot.1").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_role_grant("writer:team/**").unwrap(),
            RoleGrant {
                role: Role::Writer,
                pattern: "team/**".into()
            }
        );
        assert!(parse_role_grant("owner:x").is_err());
        assert!(parse_role_grant("reader").is_err());
        let (p, a) = parse_scope_rule("team/*:content/read,metadata/read").unwrap();
        assert_eq!(p, "team/*");
        assert_eq!(
            a,
            [RepoAction::ContentRead, RepoAction::MetadataRead].into()
        );
        assert!(parse_scope_rule("team/*:pull").is_err());
    }

    #[test]
    fn the_last_working_admin_stays() {
        let admin = |enabled: bool| IdentityRecord {
            kind: IdentityKind::User,
            uid: 1,
            generation: 1,
            secrets: vec![Secret {
                slot: 1,
                hash: String::new(),
                stamp: 1,
                created_ms: 0,
                expiry_ms: None,
            }],
            enabled,
            expiry_ms: None,
            scope_map: None,
            roles: vec![RoleGrant {
                role: Role::Admin,
                pattern: "**".into(),
            }],
            created_ms: 0,
            updated_ms: 0,
        };
        let mut state = AuthState::default();
        state.identities.insert("admin".into(), admin(true));
        let mut reader = admin(true);
        reader.roles[0].role = Role::Reader;
        state.identities.insert("bob".into(), reader.clone());
        let now = 10;
        assert!(removes_last_admin(&state, "admin", None, now));
        assert!(removes_last_admin(
            &state,
            "admin",
            Some(&admin(false)),
            now
        ));
        assert!(removes_last_admin(&state, "admin", Some(&reader), now));
        let mut expired = admin(true);
        expired.expiry_ms = Some(now);
        assert!(removes_last_admin(&state, "admin", Some(&expired), now));
        assert!(!removes_last_admin(
            &state,
            "admin",
            Some(&admin(true)),
            now
        ));
        assert!(!removes_last_admin(&state, "bob", None, now));
        // With a second working admin either may go.
        state.identities.insert("root".into(), admin(true));
        assert!(!removes_last_admin(&state, "admin", None, now));
        // A disabled admin is no admin.
        state.identities.insert("root".into(), admin(false));
        assert!(removes_last_admin(&state, "admin", None, now));
    }
}
