//! The auth records of the state machine: identities (users and machine tokens), scope maps,
//! token-signing keys and the cluster's auth settings; the commands that change them; and
//! [`AuthView`], the in-memory copy of all of them that every request is checked against.
//!
//! Keys (`state` column family, values postcard, versioned like every record):
//!
//! ```text
//! a/i/<name>     IdentityRecord      a user or a machine token (one namespace: a login name)
//! a/m/<name>     ScopeMapRecord      repository patterns and the actions they allow
//! a/k/<kid>      SigningKeyRecord    an ES256 key (PKCS#8) that signs registry tokens
//! a/c            AuthSettings        anonymous pull, network rules
//! ```
//!
//! Interpreting the records (what a role grants, how a token is checked) is `crate::auth`'s
//! job; this module only stores them and applies the commands deterministically. Every
//! replace carries the generation the proposer read (`expect`): a replace based on a stale
//! read is rejected ([`Rejection::AuthConflict`]) and the proposer reads again.
//!
//! After each applied auth command (and after a snapshot is installed) the whole auth state
//! is read back from RocksDB into a new [`AuthState`] and published: it is small (one record
//! per identity, scope map and key), changes rarely, and is read on every request.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rocksdb::{ColumnFamily, DB, WriteBatch};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::command::{Rejection, Stored, WriteResult};
use super::read::scan;
use super::state_machine::{get, put, state_cf};
use super::{MetaError, decode};

/// Prefix of identity keys.
const IDENTITY_PREFIX: &[u8] = b"a/i/";
/// Prefix of scope map keys.
const SCOPE_MAP_PREFIX: &[u8] = b"a/m/";
/// Prefix of signing key keys.
const KEY_PREFIX: &[u8] = b"a/k/";
/// Key of the auth settings.
const SETTINGS_KEY: &[u8] = b"a/c";

fn key(prefix: &[u8], name: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// A change to the auth records (the payload of `CommandV1::Auth`). `BootstrapAdmin` applies
/// at most once in a cluster's life (`AuthSettings::bootstrapped`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Create (`expect: None`: rejected with [`Rejection::AuthExists`] when the name is
    /// taken) or replace (`expect: Some(g)`: rejected unless the stored record has
    /// generation `g`) an identity. The stored generation is set by the apply.
    PutIdentity {
        /// Login name.
        name: String,
        /// The record.
        record: IdentityRecord,
        /// The generation replaced, or `None` to create.
        expect: Option<u64>,
    },
    /// Remove an identity ([`Rejection::AuthUnknown`] when there is none).
    DeleteIdentity {
        /// Login name.
        name: String,
    },
    /// Create or replace a scope map (as [`AuthCommand::PutIdentity`]).
    PutScopeMap {
        /// Its name.
        name: String,
        /// The record.
        record: ScopeMapRecord,
        /// The generation replaced, or `None` to create.
        expect: Option<u64>,
    },
    /// Remove a scope map; rejected with [`Rejection::ScopeMapInUse`] while a token is bound
    /// to it.
    DeleteScopeMap {
        /// Its name.
        name: String,
    },
    /// Make `key` the signing key: the current one is retired (it keeps verifying), and
    /// retired keys that retired before `drop_retired_before_ms` are removed. With
    /// `only_if_none` nothing is done when the cluster already has a key (nodes that start
    /// together each propose a first key; the first applied wins).
    AddSigningKey {
        /// The new key.
        key: SigningKeyRecord,
        /// Only when the cluster has no key yet.
        only_if_none: bool,
        /// Retired keys older than this are dropped (ms since the epoch).
        drop_retired_before_ms: u64,
    },
    /// Remove a retired signing key at once (a key thought stolen): the tokens it signed stop
    /// verifying. Rejected for the key that signs ([`Rejection::AuthConflict`]: rotate
    /// first) and for an unknown `kid`.
    DropSigningKey {
        /// The key.
        kid: String,
    },
    /// Create the admin user, unless the cluster has a user already
    /// ([`Rejection::AuthExists`]).
    BootstrapAdmin {
        /// Its record.
        record: IdentityRecord,
    },
    /// Replace the auth settings (`expect` as for [`AuthCommand::PutIdentity`]; the
    /// settings of a new cluster have generation 0).
    SetSettings {
        /// The settings.
        settings: AuthSettings,
        /// The generation replaced.
        expect: u64,
    },
}

/// The user name of the admin account.
pub const ADMIN_USER: &str = "admin";

/// What kind of identity a login name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdentityKind {
    /// A person, with a password (argon2).
    User,
    /// A machine token: one or two generated passwords, bound to a scope map.
    Token,
}

/// A user or a machine token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// User or token.
    pub kind: IdentityKind,
    /// Chosen at creation: registry tokens name it, so a token issued to a deleted identity
    /// never works for a new one of the same name.
    pub uid: u64,
    /// Bumped by every replace (set by the apply).
    pub generation: u64,
    /// Its passwords (a user has one; a token one or two, for rotation without downtime).
    pub secrets: Vec<Secret>,
    /// A disabled identity can neither log in nor use tokens issued before.
    pub enabled: bool,
    /// After this (ms since the epoch) it can neither log in nor use tokens issued before.
    pub expiry_ms: Option<u64>,
    /// A token's scope map.
    pub scope_map: Option<String>,
    /// Roles per repository pattern.
    pub roles: Vec<RoleGrant>,
    /// Created (ms since the epoch).
    pub created_ms: u64,
    /// Last changed (ms since the epoch).
    pub updated_ms: u64,
}

/// One password of an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    /// 1 or 2 (a token's `password1` and `password2`).
    pub slot: u8,
    /// A PHC string: argon2id for a user's chosen password; `$sha256$…` of a token's
    /// generated one (256 random bits need no slow hash).
    pub hash: String,
    /// Chosen when the password is set: registry tokens name the password they were issued
    /// for, so regenerating it revokes them and only them.
    pub stamp: u64,
    /// Set (ms since the epoch).
    pub created_ms: u64,
    /// After this the password no longer logs in, and tokens issued for it stop working.
    pub expiry_ms: Option<u64>,
}

/// A built-in role, granted on the repositories a pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Pull and list.
    Reader,
    /// Pull, list and push.
    Writer,
    /// Pull, list and delete.
    Deleter,
    /// Everything, including the admin service.
    Admin,
}

/// A role on a repository pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoleGrant {
    /// The role.
    pub role: Role,
    /// The repository pattern (`meta::policy` grammar).
    pub pattern: String,
}

/// ACR's repository actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RepoAction {
    /// `content/read`: pull manifests and blobs.
    ContentRead,
    /// `content/write`: push.
    ContentWrite,
    /// `content/delete`: delete manifests, tags and blobs.
    ContentDelete,
    /// `metadata/read`: list tags (and see the repository in the catalog).
    MetadataRead,
    /// `metadata/write`: reserved for repository attributes (locks).
    MetadataWrite,
}

/// A scope map: which actions a token may take on which repositories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeMapRecord {
    /// Bumped by every replace (set by the apply).
    pub generation: u64,
    /// Free text.
    pub description: String,
    /// Repository pattern → allowed actions.
    pub rules: BTreeMap<String, BTreeSet<RepoAction>>,
    /// Created (ms since the epoch).
    pub created_ms: u64,
    /// Last changed (ms since the epoch).
    pub updated_ms: u64,
}

/// A key that signs registry tokens (ES256).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    /// The JWT `kid`.
    pub kid: String,
    /// The P-256 private key, PKCS#8 DER.
    pub pkcs8: Vec<u8>,
    /// Made (ms since the epoch).
    pub created_ms: u64,
    /// When a newer key replaced it; `None` for the key that signs.
    pub retired_ms: Option<u64>,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("created_ms", &self.created_ms)
            .field("retired_ms", &self.retired_ms)
            .finish_non_exhaustive()
    }
}

/// Cluster-wide auth settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSettings {
    /// Bumped by every replace (set by the apply).
    pub generation: u64,
    /// Repository patterns anyone may pull without credentials.
    pub anonymous_pull: Vec<String>,
    /// Which client addresses may use the registry port.
    pub network: NetworkRules,
    /// The bootstrap admin was made once: it is never made again, even if every user is
    /// deleted later (a restart with an old bootstrap password must not bring it back).
    pub bootstrapped: bool,
}

/// Network rules of the registry port (checked before credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRules {
    /// What an address no rule names gets: allowed (`true`) or denied.
    pub default_allow: bool,
    /// Addresses (CIDR) always allowed.
    pub allow: Vec<String>,
    /// Off: only addresses an allow rule names get in, whatever the default.
    pub public_access: bool,
    /// Per repository pattern: rules that replace the cluster's for those repositories.
    pub repositories: BTreeMap<String, RepoNetworkRule>,
}

impl Default for NetworkRules {
    fn default() -> Self {
        NetworkRules {
            default_allow: true,
            allow: Vec::new(),
            public_access: true,
            repositories: BTreeMap::new(),
        }
    }
}

/// The network rule of the repositories a pattern matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoNetworkRule {
    /// What an address no rule names gets.
    pub default_allow: bool,
    /// Addresses (CIDR) allowed.
    pub allow: Vec<String>,
}

/// Everything above, as applied: what requests are checked against.
#[derive(Debug, Clone, Default)]
pub struct AuthState {
    /// Identities by login name.
    pub identities: BTreeMap<String, IdentityRecord>,
    /// Scope maps by name.
    pub scope_maps: BTreeMap<String, ScopeMapRecord>,
    /// Signing keys, the one that signs ([`SigningKeyRecord::retired_ms`] `None`) among them.
    pub keys: Vec<SigningKeyRecord>,
    /// Settings.
    pub settings: AuthSettings,
}

impl AuthState {
    /// The key that signs new tokens, if the cluster has one.
    pub fn signing_key(&self) -> Option<&SigningKeyRecord> {
        self.keys.iter().find(|k| k.retired_ms.is_none())
    }

    /// A key that verifies tokens, by `kid`.
    pub fn key(&self, kid: &str) -> Option<&SigningKeyRecord> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// Whether the cluster has a user (so a bootstrap admin is not made).
    pub fn has_user(&self) -> bool {
        self.identities
            .values()
            .any(|i| i.kind == IdentityKind::User)
    }

    fn load(db: &DB) -> Result<AuthState, MetaError> {
        let mut s = AuthState::default();
        for item in scan(db, IDENTITY_PREFIX, None) {
            let (k, v) = item?;
            let Stored::V1(r) = decode::<Stored<IdentityRecord>>("identity", &v)?;
            s.identities.insert(suffix(&k, IDENTITY_PREFIX), r);
        }
        for item in scan(db, SCOPE_MAP_PREFIX, None) {
            let (k, v) = item?;
            let Stored::V1(r) = decode::<Stored<ScopeMapRecord>>("scope map", &v)?;
            s.scope_maps.insert(suffix(&k, SCOPE_MAP_PREFIX), r);
        }
        for item in scan(db, KEY_PREFIX, None) {
            let (_, v) = item?;
            let Stored::V1(r) = decode::<Stored<SigningKeyRecord>>("signing key", &v)?;
            s.keys.push(r);
        }
        s.keys.sort_by_key(|k| k.created_ms);
        s.settings = get(db, "auth settings", SETTINGS_KEY)?.unwrap_or_default();
        Ok(s)
    }
}

fn suffix(k: &[u8], prefix: &[u8]) -> String {
    String::from_utf8_lossy(&k[prefix.len()..]).into_owned()
}

/// The applied auth state, as readers see it: the latest published [`AuthState`].
#[derive(Debug, Clone)]
pub struct AuthView {
    rx: watch::Receiver<Arc<AuthState>>,
}

impl AuthView {
    /// The current state (a cheap clone of an `Arc`).
    pub fn current(&self) -> Arc<AuthState> {
        self.rx.borrow().clone()
    }

    /// Waits until the state changes (for tests and background tasks); false once the state
    /// machine is gone.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

/// The state machine's side of [`AuthView`]: reloads and publishes.
#[derive(Debug)]
pub(super) struct AuthPublisher {
    tx: watch::Sender<Arc<AuthState>>,
}

impl AuthPublisher {
    /// Loads the stored state and returns the publisher and a view of it.
    pub(super) fn open(db: &DB) -> Result<(AuthPublisher, AuthView), MetaError> {
        let (tx, rx) = watch::channel(Arc::new(AuthState::load(db)?));
        Ok((AuthPublisher { tx }, AuthView { rx }))
    }

    /// Reads the stored state again and publishes it (after an auth command or a snapshot).
    pub(super) fn reload(&self, db: &DB) -> Result<(), MetaError> {
        let state = AuthState::load(db)?;
        self.tx.send_replace(Arc::new(state));
        Ok(())
    }
}

/// Applies an auth command into `batch` (the caller writes it with the applied log id).
pub(super) fn apply(
    db: &DB,
    batch: &mut WriteBatch,
    cmd: &AuthCommand,
) -> Result<WriteResult, MetaError> {
    let cf = state_cf(db);
    match cmd {
        AuthCommand::PutIdentity {
            name,
            record,
            expect,
        } => {
            let k = key(IDENTITY_PREFIX, name);
            let stored = get::<IdentityRecord>(db, "identity", &k)?;
            let generation = match check_generation(name, stored.map(|s| s.generation), *expect) {
                Ok(g) => g,
                Err(r) => return Ok(WriteResult::Rejected(r)),
            };
            if let Some(map) = &record.scope_map
                && get::<ScopeMapRecord>(db, "scope map", &key(SCOPE_MAP_PREFIX, map))?.is_none()
            {
                return Ok(WriteResult::Rejected(Rejection::AuthUnknown(format!(
                    "scope map {map}"
                ))));
            }
            let mut record = record.clone();
            record.generation = generation;
            put(batch, cf, &k, &record);
            Ok(WriteResult::Done)
        }
        AuthCommand::DeleteIdentity { name } => delete(db, cf, batch, IDENTITY_PREFIX, name),
        AuthCommand::PutScopeMap {
            name,
            record,
            expect,
        } => {
            let k = key(SCOPE_MAP_PREFIX, name);
            let stored = get::<ScopeMapRecord>(db, "scope map", &k)?;
            let generation = match check_generation(name, stored.map(|s| s.generation), *expect) {
                Ok(g) => g,
                Err(r) => return Ok(WriteResult::Rejected(r)),
            };
            let mut record = record.clone();
            record.generation = generation;
            put(batch, cf, &k, &record);
            Ok(WriteResult::Done)
        }
        AuthCommand::DeleteScopeMap { name } => {
            for item in scan(db, IDENTITY_PREFIX, None) {
                let (k, v) = item?;
                let Stored::V1(r) = decode::<Stored<IdentityRecord>>("identity", &v)?;
                if r.scope_map.as_deref() == Some(name.as_str()) {
                    return Ok(WriteResult::Rejected(Rejection::ScopeMapInUse {
                        map: name.clone(),
                        token: suffix(&k, IDENTITY_PREFIX),
                    }));
                }
            }
            delete(db, cf, batch, SCOPE_MAP_PREFIX, name)
        }
        AuthCommand::AddSigningKey {
            key: new,
            only_if_none,
            drop_retired_before_ms,
        } => {
            let mut keys = Vec::new();
            for item in scan(db, KEY_PREFIX, None) {
                let (_, v) = item?;
                let Stored::V1(r) = decode::<Stored<SigningKeyRecord>>("signing key", &v)?;
                keys.push(r);
            }
            if *only_if_none && !keys.is_empty() {
                return Ok(WriteResult::Rejected(Rejection::AuthExists(
                    "signing key".to_string(),
                )));
            }
            for mut old in keys {
                match old.retired_ms {
                    Some(at) if at < *drop_retired_before_ms => {
                        batch.delete_cf(cf, key(KEY_PREFIX, &old.kid));
                    }
                    Some(_) => {}
                    None => {
                        old.retired_ms = Some(new.created_ms);
                        put(batch, cf, &key(KEY_PREFIX, &old.kid), &old);
                    }
                }
            }
            let mut new = new.clone();
            new.retired_ms = None;
            put(batch, cf, &key(KEY_PREFIX, &new.kid), &new);
            Ok(WriteResult::Done)
        }
        AuthCommand::DropSigningKey { kid } => {
            let k = key(KEY_PREFIX, kid);
            match get::<SigningKeyRecord>(db, "signing key", &k)? {
                None => Ok(WriteResult::Rejected(Rejection::AuthUnknown(format!(
                    "signing key {kid}"
                )))),
                Some(r) if r.retired_ms.is_none() => Ok(WriteResult::Rejected(
                    Rejection::AuthConflict(format!("signing key {kid} signs now: rotate first;")),
                )),
                Some(_) => {
                    batch.delete_cf(cf, k);
                    Ok(WriteResult::Done)
                }
            }
        }
        AuthCommand::BootstrapAdmin { record } => {
            let mut settings =
                get::<AuthSettings>(db, "auth settings", SETTINGS_KEY)?.unwrap_or_default();
            if settings.bootstrapped {
                return Ok(WriteResult::Rejected(Rejection::AuthExists(
                    "the bootstrap admin (made once)".to_string(),
                )));
            }
            for item in scan(db, IDENTITY_PREFIX, None) {
                let (_, v) = item?;
                let Stored::V1(r) = decode::<Stored<IdentityRecord>>("identity", &v)?;
                if r.kind == IdentityKind::User {
                    return Ok(WriteResult::Rejected(Rejection::AuthExists(
                        "a user".to_string(),
                    )));
                }
            }
            let k = key(IDENTITY_PREFIX, ADMIN_USER);
            if get::<IdentityRecord>(db, "identity", &k)?.is_some() {
                return Ok(WriteResult::Rejected(Rejection::AuthExists(
                    ADMIN_USER.to_string(),
                )));
            }
            let mut record = record.clone();
            record.generation = 1;
            put(batch, cf, &k, &record);
            settings.bootstrapped = true;
            settings.generation += 1;
            put(batch, cf, SETTINGS_KEY, &settings);
            Ok(WriteResult::Done)
        }
        AuthCommand::SetSettings { settings, expect } => {
            let stored =
                get::<AuthSettings>(db, "auth settings", SETTINGS_KEY)?.unwrap_or_default();
            if stored.generation != *expect {
                return Ok(WriteResult::Rejected(Rejection::AuthConflict(
                    "auth settings".to_string(),
                )));
            }
            let mut settings = settings.clone();
            settings.generation = expect + 1;
            // Made once, never unmade: no settings change clears it.
            settings.bootstrapped |= stored.bootstrapped;
            put(batch, cf, SETTINGS_KEY, &settings);
            Ok(WriteResult::Done)
        }
    }
}

/// The generation a put stores, or why it is rejected.
fn check_generation(
    name: &str,
    stored: Option<u64>,
    expect: Option<u64>,
) -> Result<u64, Rejection> {
    match (stored, expect) {
        (None, None) => Ok(1),
        (Some(_), None) => Err(Rejection::AuthExists(name.to_string())),
        (None, Some(_)) => Err(Rejection::AuthUnknown(name.to_string())),
        (Some(s), Some(e)) if s == e => Ok(s + 1),
        (Some(_), Some(_)) => Err(Rejection::AuthConflict(name.to_string())),
    }
}

fn delete(
    db: &DB,
    cf: &ColumnFamily,
    batch: &mut WriteBatch,
    prefix: &[u8],
    name: &str,
) -> Result<WriteResult, MetaError> {
    let k = key(prefix, name);
    if db
        .get_pinned_cf(cf, &k)
        .map_err(MetaError::db("read state"))?
        .is_none()
    {
        return Ok(WriteResult::Rejected(Rejection::AuthUnknown(
            name.to_string(),
        )));
    }
    batch.delete_cf(cf, k);
    Ok(WriteResult::Done)
}
