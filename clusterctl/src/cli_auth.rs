//! The command line of `users`, `tokens`, `scope-maps`, `roles` and `auth`: clap
//! definitions, their validation, and [`AuthAction`], what each command does.
//!
//! As in [`crate::cli`], every argument is checked before anything is contacted (a bad one is
//! a usage error, exit status 2): login names, role grants `ROLE:PATTERN`, scope rules
//! `PATTERN:ACTION[,ACTION]`, expiries (a duration such as `90d`, or an RFC 3339 time), CIDR
//! blocks (only their shape; the server parses them). The server checks everything again.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::cli::parse_pattern;

/// The built-in roles.
pub const ROLES: [&str; 4] = ["reader", "writer", "deleter", "admin"];
/// ACR's repository actions, as scope rules name them.
pub const ACTIONS: [&str; 5] = [
    "content/read",
    "content/write",
    "content/delete",
    "metadata/read",
    "metadata/write",
];

/// `clusterctl users …`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; its password is read from stdin (--password-stdin).
    Create {
        /// The login name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// A role on a repository pattern, `ROLE:PATTERN` (e.g. `writer:team/**`; `admin:**`
        /// may use this admin service); repeat for several.
        #[arg(long = "role", value_name = "ROLE:PATTERN", value_parser = parse_grant)]
        roles: Vec<Grant>,
    },
    /// List the users.
    List,
    /// Show a user.
    Show {
        /// The login name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Change a user (what is given changes; a new password is read from stdin with
    /// --password-stdin).
    Update(UserUpdateArgs),
    /// Delete a user: its registry tokens stop working at every node.
    Delete {
        /// The login name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
}

/// `clusterctl users update …`.
#[derive(Debug, Args)]
pub struct UserUpdateArgs {
    /// The login name.
    #[arg(value_parser = parse_name)]
    pub name: String,
    #[command(flatten)]
    pub common: UpdateArgs,
}

/// What `users update` and `tokens update` share.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Enable it.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable it: it can no longer log in, and registry tokens issued before stop working.
    #[arg(long)]
    pub disable: bool,
    /// Add a role, `ROLE:PATTERN`; repeat for several.
    #[arg(long = "add-role", value_name = "ROLE:PATTERN", value_parser = parse_grant)]
    pub add_roles: Vec<Grant>,
    /// Remove a role, `ROLE:PATTERN`; repeat for several.
    #[arg(long = "remove-role", value_name = "ROLE:PATTERN", value_parser = parse_grant)]
    pub remove_roles: Vec<Grant>,
    /// Expire at this time: a duration from now (`30m`, `12h`, `90d`, `2w`) or an RFC 3339
    /// time (`2027-01-31T00:00:00Z`).
    #[arg(long, value_name = "WHEN", value_parser = parse_expiry, conflicts_with = "no_expiry")]
    pub expiry: Option<Expiry>,
    /// Never expire.
    #[arg(long = "no-expiry")]
    pub no_expiry: bool,
}

/// `clusterctl tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a machine token bound to a scope map (and/or roles); prints its generated
    /// password(s) once.
    Create(TokenCreateArgs),
    /// List the tokens.
    List,
    /// Show a token (never its passwords).
    Show {
        /// The token's name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Change a token (what is given changes); a regenerated password is printed once.
    Update(TokenUpdateArgs),
    /// Delete a token: its registry tokens stop working at every node.
    Delete {
        /// The token's name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
}

/// `clusterctl tokens create …`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// The token's name (its login name).
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// The scope map it is bound to.
    #[arg(long = "scope-map", value_name = "MAP", value_parser = parse_name)]
    pub scope_map: Option<String>,
    /// A role on a repository pattern, `ROLE:PATTERN`; repeat for several.
    #[arg(long = "role", value_name = "ROLE:PATTERN", value_parser = parse_grant)]
    pub roles: Vec<Grant>,
    /// Expire at this time: a duration from now (`90d`) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = parse_expiry)]
    pub expiry: Option<Expiry>,
    /// How many passwords to generate (two allow rotation without downtime).
    #[arg(long, default_value = "1", value_parser = parse_slot)]
    pub passwords: u32,
}

/// `clusterctl tokens update …`.
#[derive(Debug, Args)]
pub struct TokenUpdateArgs {
    /// The token's name.
    #[arg(value_parser = parse_name)]
    pub name: String,
    #[command(flatten)]
    pub common: UpdateArgs,
    /// Bind it to another scope map.
    #[arg(long = "scope-map", value_name = "MAP", value_parser = parse_name)]
    pub scope_map: Option<String>,
    /// Generate a new password in this slot (1 or 2), printed once; registry tokens issued
    /// for the old one stop working.
    #[arg(long, value_name = "SLOT", value_parser = parse_slot)]
    pub regenerate: Option<u32>,
    /// Remove the password in this slot (1 or 2).
    #[arg(long = "remove-password", value_name = "SLOT", value_parser = parse_slot)]
    pub remove_password: Option<u32>,
}

/// `clusterctl scope-maps …`.
#[derive(Debug, Subcommand)]
pub enum ScopeMapsCommand {
    /// Create a scope map: which actions its tokens may take on which repositories.
    Create {
        /// Its name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// `PATTERN:ACTION[,ACTION]`, e.g. `team/*:content/read,content/write`; repeat for
        /// several. Actions: content/read, content/write, content/delete, metadata/read,
        /// metadata/write.
        #[arg(long = "rule", value_name = "PATTERN:ACTIONS", value_parser = parse_rule, required = true)]
        rules: Vec<Rule>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List the scope maps.
    List,
    /// Show a scope map and the tokens bound to it.
    Show {
        /// Its name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Change a scope map: the rules given replace all of its rules.
    Update {
        /// Its name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// `PATTERN:ACTION[,ACTION]`; repeat for several; none: keep the rules.
        #[arg(long = "rule", value_name = "PATTERN:ACTIONS", value_parser = parse_rule)]
        rules: Vec<Rule>,
        /// Free text; none: keep it.
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a scope map (refused while a token is bound to it).
    Delete {
        /// Its name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
}

/// `clusterctl roles …`.
#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// List the built-in roles and the repository actions each grants.
    List,
    /// Give a user or token a role on a repository pattern.
    Assign(RoleArgs),
    /// Take a role on a repository pattern from a user or token.
    Remove(RoleArgs),
}

/// `clusterctl roles assign|remove …`.
#[derive(Debug, Args)]
pub struct RoleArgs {
    /// The user or token.
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub identity: String,
    /// The role.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ROLES))]
    pub role: String,
    /// The repository pattern (`*` within a path component, `**` across).
    #[arg(long, value_parser = parse_pattern)]
    pub pattern: String,
}

/// `clusterctl auth …`.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Make a new token-signing key the one that signs (the old one keeps verifying).
    RotateKey,
    /// Drop a retired token-signing key at once (one thought stolen): the tokens it signed
    /// stop working. The key that signs cannot be dropped: rotate first.
    DropKey {
        /// The key's kid (`clusterctl auth keys`).
        kid: String,
    },
    /// List the token-signing keys (never the private keys).
    Keys,
    /// Repositories anyone may pull without credentials.
    #[command(subcommand)]
    AnonymousPull(AnonymousPullCommand),
    /// Which client addresses may use the registry port.
    #[command(subcommand)]
    Network(NetworkCommand),
}

/// `clusterctl auth anonymous-pull …`.
#[derive(Debug, Subcommand)]
pub enum AnonymousPullCommand {
    /// Replace the patterns anyone may pull without credentials.
    Set {
        /// Repository patterns.
        #[arg(value_parser = parse_pattern, required = true)]
        patterns: Vec<String>,
    },
    /// Nobody pulls without credentials.
    Clear,
}

/// `clusterctl auth network …`.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Show the auth settings: anonymous pull, network rules cluster-wide and per repository.
    Show,
    /// Change the cluster-wide network rules (what is given changes).
    Set(NetworkSetArgs),
    /// Network rules per repository pattern (they replace the cluster-wide ones for the
    /// repositories they are the most specific match of).
    #[command(subcommand)]
    Repo(RepoNetworkCommand),
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Verdict {
    /// Let it in.
    Allow,
    /// Keep it out.
    Deny,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// `clusterctl auth network set …`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true)
    .args(["default", "allow", "clear_allow", "public"])))]
pub struct NetworkSetArgs {
    /// What an address no allow rule names gets.
    #[arg(long, value_enum)]
    pub default: Option<Verdict>,
    /// Replace the list of addresses always allowed (a CIDR block or one address); repeat
    /// for several.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub allow: Vec<String>,
    /// Empty the list of addresses always allowed.
    #[arg(long = "clear-allow", conflicts_with = "allow")]
    pub clear_allow: bool,
    /// Off: only addresses an allow rule names get in, whatever the defaults.
    #[arg(long, value_enum)]
    pub public: Option<Switch>,
}

/// `clusterctl auth network repo …`.
#[derive(Debug, Subcommand)]
pub enum RepoNetworkCommand {
    /// Set the rule of a repository pattern (replacing the one it had).
    Set {
        /// The repository pattern.
        #[arg(value_parser = parse_pattern)]
        pattern: String,
        /// What an address no allow rule names gets.
        #[arg(long, value_enum, default_value = "deny")]
        default: Verdict,
        /// An address allowed (a CIDR block or one address); repeat for several.
        #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
        allow: Vec<String>,
    },
    /// Remove the rule of a repository pattern.
    Clear {
        /// The repository pattern.
        #[arg(value_parser = parse_pattern)]
        pattern: String,
    },
}

/// Users or tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A person with a chosen password.
    User,
    /// A machine token with generated passwords.
    Token,
}

impl Kind {
    /// Its name on the wire and in messages: `user`, `token`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Token => "token",
        }
    }
}

/// A role on a pattern, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// One of [`ROLES`].
    pub role: String,
    /// A repository pattern.
    pub pattern: String,
}

/// A scope rule, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// A repository pattern.
    pub pattern: String,
    /// Some of [`ACTIONS`].
    pub actions: Vec<String>,
}

/// When something expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// This long after the command runs.
    In(Duration),
    /// At this time (ms since the epoch).
    At(u64),
    /// Never.
    Never,
}

impl Expiry {
    /// Milliseconds since the epoch given `now_ms` (0: never); `Err` for a time not in the
    /// future.
    pub fn resolve(self, now_ms: u64) -> Result<u64, String> {
        match self {
            Expiry::Never => Ok(0),
            Expiry::In(d) => Ok(now_ms.saturating_add(d.as_millis() as u64)),
            Expiry::At(t) if t > now_ms => Ok(t),
            Expiry::At(t) => Err(format!(
                "the expiry {} is not in the future",
                format_time(t)
            )),
        }
    }
}

/// A change to a user or token, as the command line gave it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// Enable (`Some(true)`) or disable.
    pub enabled: Option<bool>,
    /// New expiry.
    pub expiry: Option<Expiry>,
    /// Bind to this scope map.
    pub scope_map: Option<String>,
    /// A new password is read from stdin.
    pub new_password: bool,
    /// Regenerate the password in this slot.
    pub regenerate: Option<u32>,
    /// Remove the password in this slot.
    pub remove_password: Option<u32>,
    /// Roles to add.
    pub add_roles: Vec<Grant>,
    /// Roles to remove.
    pub remove_roles: Vec<Grant>,
}

/// What an auth command does, independent of how it was spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthAction {
    /// `users list`, `tokens list`.
    List(Kind),
    /// `users show`, `tokens show`.
    Show(Kind, String),
    /// `users create` (the password from stdin).
    CreateUser {
        /// Login name.
        name: String,
        /// Roles.
        roles: Vec<Grant>,
    },
    /// `tokens create`.
    CreateToken {
        /// Login name.
        name: String,
        /// Scope map.
        scope_map: Option<String>,
        /// Roles.
        roles: Vec<Grant>,
        /// Expiry.
        expiry: Option<Expiry>,
        /// 1 or 2.
        passwords: u32,
    },
    /// `users update`, `tokens update`, `roles assign|remove`.
    Update(Kind, String, Update),
    /// `roles assign|remove`: an update of an identity of either kind.
    Roles(String, Update),
    /// `users delete`, `tokens delete`.
    Delete(Kind, String),
    /// `scope-maps list`.
    ListScopeMaps,
    /// `scope-maps show`.
    ShowScopeMap(String),
    /// `scope-maps create|update`.
    PutScopeMap {
        /// Its name.
        name: String,
        /// Description (`None` on update: keep).
        description: Option<String>,
        /// Rules (empty on update: keep).
        rules: Vec<Rule>,
        /// Create rather than change.
        create: bool,
    },
    /// `scope-maps delete`.
    DeleteScopeMap(String),
    /// `roles list`.
    ListRoles,
    /// `auth keys`.
    Keys,
    /// `auth rotate-key`.
    RotateKey,
    /// `auth drop-key KID`.
    DropKey(String),
    /// `auth network show`.
    ShowSettings,
    /// `auth anonymous-pull set|clear` (empty: clear).
    AnonymousPull(Vec<String>),
    /// `auth network set`.
    Network {
        /// `--default`.
        default_allow: Option<bool>,
        /// `--allow` or `--clear-allow`: the new list.
        allow: Option<Vec<String>>,
        /// `--public`.
        public_access: Option<bool>,
    },
    /// `auth network repo set`.
    RepoNetwork {
        /// The pattern.
        pattern: String,
        /// `--default`.
        default_allow: bool,
        /// `--allow`.
        allow: Vec<String>,
    },
    /// `auth network repo clear`.
    ClearRepoNetwork(String),
}

impl AuthAction {
    /// Whether the command reads a new password from stdin (`--password-stdin`).
    pub fn takes_password(&self) -> bool {
        match self {
            AuthAction::CreateUser { .. } => true,
            AuthAction::Update(_, _, u) => u.new_password,
            _ => false,
        }
    }
}

impl UpdateArgs {
    fn update(&self) -> Update {
        Update {
            enabled: match (self.enable, self.disable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            expiry: if self.no_expiry {
                Some(Expiry::Never)
            } else {
                self.expiry
            },
            add_roles: self.add_roles.clone(),
            remove_roles: self.remove_roles.clone(),
            ..Update::default()
        }
    }
}

impl UsersCommand {
    /// What it does; `password_stdin` is the global `--password-stdin`.
    pub fn action(&self, password_stdin: bool) -> AuthAction {
        match self {
            UsersCommand::Create { name, roles } => AuthAction::CreateUser {
                name: name.clone(),
                roles: roles.clone(),
            },
            UsersCommand::List => AuthAction::List(Kind::User),
            UsersCommand::Show { name } => AuthAction::Show(Kind::User, name.clone()),
            UsersCommand::Update(a) => {
                let mut u = a.common.update();
                u.new_password = password_stdin;
                AuthAction::Update(Kind::User, a.name.clone(), u)
            }
            UsersCommand::Delete { name } => AuthAction::Delete(Kind::User, name.clone()),
        }
    }
}

impl TokensCommand {
    /// What it does.
    pub fn action(&self) -> AuthAction {
        match self {
            TokensCommand::Create(a) => AuthAction::CreateToken {
                name: a.name.clone(),
                scope_map: a.scope_map.clone(),
                roles: a.roles.clone(),
                expiry: a.expiry,
                passwords: a.passwords,
            },
            TokensCommand::List => AuthAction::List(Kind::Token),
            TokensCommand::Show { name } => AuthAction::Show(Kind::Token, name.clone()),
            TokensCommand::Update(a) => {
                let mut u = a.common.update();
                u.scope_map = a.scope_map.clone();
                u.regenerate = a.regenerate;
                u.remove_password = a.remove_password;
                AuthAction::Update(Kind::Token, a.name.clone(), u)
            }
            TokensCommand::Delete { name } => AuthAction::Delete(Kind::Token, name.clone()),
        }
    }
}

impl ScopeMapsCommand {
    /// What it does.
    pub fn action(&self) -> AuthAction {
        match self {
            ScopeMapsCommand::Create {
                name,
                rules,
                description,
            } => AuthAction::PutScopeMap {
                name: name.clone(),
                description: Some(description.clone().unwrap_or_default()),
                rules: rules.clone(),
                create: true,
            },
            ScopeMapsCommand::List => AuthAction::ListScopeMaps,
            ScopeMapsCommand::Show { name } => AuthAction::ShowScopeMap(name.clone()),
            ScopeMapsCommand::Update {
                name,
                rules,
                description,
            } => AuthAction::PutScopeMap {
                name: name.clone(),
                description: description.clone(),
                rules: rules.clone(),
                create: false,
            },
            ScopeMapsCommand::Delete { name } => AuthAction::DeleteScopeMap(name.clone()),
        }
    }
}

impl RolesCommand {
    /// What it does.
    pub fn action(&self) -> AuthAction {
        let grant = |a: &RoleArgs| Grant {
            role: a.role.clone(),
            pattern: a.pattern.clone(),
        };
        match self {
            RolesCommand::List => AuthAction::ListRoles,
            RolesCommand::Assign(a) => AuthAction::Roles(
                a.identity.clone(),
                Update {
                    add_roles: vec![grant(a)],
                    ..Update::default()
                },
            ),
            RolesCommand::Remove(a) => AuthAction::Roles(
                a.identity.clone(),
                Update {
                    remove_roles: vec![grant(a)],
                    ..Update::default()
                },
            ),
        }
    }
}

impl AuthCommand {
    /// What it does.
    pub fn action(&self) -> AuthAction {
        match self {
            AuthCommand::RotateKey => AuthAction::RotateKey,
            AuthCommand::DropKey { kid } => AuthAction::DropKey(kid.clone()),
            AuthCommand::Keys => AuthAction::Keys,
            AuthCommand::AnonymousPull(AnonymousPullCommand::Set { patterns }) => {
                AuthAction::AnonymousPull(patterns.clone())
            }
            AuthCommand::AnonymousPull(AnonymousPullCommand::Clear) => {
                AuthAction::AnonymousPull(Vec::new())
            }
            AuthCommand::Network(NetworkCommand::Show) => AuthAction::ShowSettings,
            AuthCommand::Network(NetworkCommand::Set(a)) => AuthAction::Network {
                default_allow: a.default.map(|d| d == Verdict::Allow),
                allow: if a.clear_allow {
                    Some(Vec::new())
                } else {
                    Some(a.allow.clone()).filter(|v| !v.is_empty())
                },
                public_access: a.public.map(|p| p == Switch::On),
            },
            AuthCommand::Network(NetworkCommand::Repo(RepoNetworkCommand::Set {
                pattern,
                default,
                allow,
            })) => AuthAction::RepoNetwork {
                pattern: pattern.clone(),
                default_allow: *default == Verdict::Allow,
                allow: allow.clone(),
            },
            AuthCommand::Network(NetworkCommand::Repo(RepoNetworkCommand::Clear { pattern })) => {
                AuthAction::ClearRepoNetwork(pattern.clone())
            }
        }
    }
}

/// Parses a login name (user, token, scope map): 1 to 64 of `a-z A-Z 0-9 . _ -`, starting
/// with a letter or digit.
pub fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(
            "expected 1 to 64 of a-z, A-Z, 0-9, '.', '_', '-', starting with a letter or digit"
                .into(),
        )
    }
}

/// Parses `ROLE:PATTERN` (e.g. `writer:team/**`).
pub fn parse_grant(s: &str) -> Result<Grant, String> {
    let (role, pattern) = s
        .split_once(':')
        .ok_or("expected ROLE:PATTERN, e.g. writer:team/**")?;
    if !ROLES.contains(&role) {
        return Err(format!("unknown role {role:?} ({})", ROLES.join(", ")));
    }
    Ok(Grant {
        role: role.to_owned(),
        pattern: parse_pattern(pattern)?,
    })
}

/// Parses a scope rule `PATTERN:ACTION[,ACTION]` (e.g. `team/*:content/read,content/write`).
pub fn parse_rule(s: &str) -> Result<Rule, String> {
    let (pattern, actions) = s
        .rsplit_once(':')
        .ok_or("expected PATTERN:ACTION[,ACTION], e.g. team/*:content/read")?;
    let pattern = parse_pattern(pattern)?;
    let mut out: Vec<String> = Vec::new();
    for a in actions.split(',') {
        if !ACTIONS.contains(&a) {
            return Err(format!("unknown action {a:?} ({})", ACTIONS.join(", ")));
        }
        if !out.iter().any(|o| o == a) {
            out.push(a.to_owned());
        }
    }
    Ok(Rule {
        pattern,
        actions: out,
    })
}

/// Parses a password slot: 1 or 2.
pub fn parse_slot(s: &str) -> Result<u32, String> {
    match s.trim() {
        "1" => Ok(1),
        "2" => Ok(2),
        _ => Err("expected 1 or 2".into()),
    }
}

/// Parses the shape of a CIDR block or an address (the server parses it properly).
pub fn parse_cidr(s: &str) -> Result<String, String> {
    let s = s.trim();
    let shape = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() || ".:/".contains(c));
    if shape && s.matches('/').count() <= 1 {
        Ok(s.to_owned())
    } else {
        Err("expected an address or a CIDR block, e.g. 10.0.0.0/8".into())
    }
}

/// Parses an expiry: a duration from now (`45s`, `30m`, `12h`, `90d`, `2w`) or an RFC 3339
/// time (`2027-01-31T00:00:00Z`, an offset such as `+02:00` allowed).
pub fn parse_expiry(s: &str) -> Result<Expiry, String> {
    let s = s.trim();
    if let Some(d) = parse_duration(s) {
        return if d.is_zero() {
            Err("the duration must be more than 0".into())
        } else {
            Ok(Expiry::In(d))
        };
    }
    parse_time(s).map(Expiry::At).ok_or_else(|| {
        "expected a duration (30m, 12h, 90d, 2w) or an RFC 3339 time (2027-01-31T00:00:00Z)".into()
    })
}

fn parse_duration(s: &str) -> Option<Duration> {
    let unit = s.chars().last()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    let n: u64 = s[..s.len() - 1].parse().ok()?;
    Some(Duration::from_secs(n.checked_mul(secs)?))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Parses an RFC 3339 time (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) to ms since the epoch.
pub fn parse_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let o = rest.get(1..)?;
            if o.len() != 5 || o.as_bytes()[2] != b':' {
                return None;
            }
            let (oh, om): (i64, i64) = (o[..2].parse().ok()?, o[3..].parse().ok()?);
            sign * (oh * 60 + om)
        }
    };
    let days = days_from_civil(y, mo, d);
    if civil_from_days(days) != (y, mo, d) {
        // E.g. 31 April.
        return None;
    }
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + millis).ok()
}

/// A time (ms since the epoch) as RFC 3339 in UTC, to the second: `2027-01-31T00:00:00Z`.
pub fn format_time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(parse_name("ci-bot.1"), Ok("ci-bot.1".into()));
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grants_are_role_colon_pattern() {
        assert_eq!(
            parse_grant("writer:team/**"),
            Ok(Grant {
                role: "writer".into(),
                pattern: "team/**".into()
            })
        );
        for bad in ["owner:a", "reader", "reader:", "reader:A"] {
            assert!(parse_grant(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rules_are_pattern_colon_actions() {
        assert_eq!(
            parse_rule("team/*:content/read,content/write,content/read"),
            Ok(Rule {
                pattern: "team/*".into(),
                actions: vec!["content/read".into(), "content/write".into()],
            })
        );
        for bad in ["team/*", "team/*:pull", ":content/read", "team/*:"] {
            assert!(parse_rule(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn slots_and_cidrs() {
        assert_eq!(parse_slot("2"), Ok(2));
        assert!(parse_slot("3").is_err());
        assert!(parse_slot("0").is_err());
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("::1").is_ok());
        assert!(parse_cidr("fd00::/8").is_ok());
        for bad in ["", "ten", "10.0.0.0/8/8", "10.0.0.0 /8"] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn expiries_are_durations_or_rfc3339_times() {
        assert_eq!(
            parse_expiry("90d"),
            Ok(Expiry::In(Duration::from_secs(90 * 86_400)))
        );
        assert_eq!(
            parse_expiry("30m"),
            Ok(Expiry::In(Duration::from_secs(1800)))
        );
        assert_eq!(
            parse_expiry("2027-01-31T00:00:00Z"),
            Ok(Expiry::At(1_801_353_600_000))
        );
        assert_eq!(
            parse_expiry("2027-01-31T02:00:00.5+02:00"),
            Ok(Expiry::At(1_801_353_600_500))
        );
        for bad in [
            "0d",
            "soon",
            "90",
            "2027-01-31",
            "2027-13-01T00:00:00Z",
            "2027-04-31T00:00:00Z",
            "d",
        ] {
            assert!(parse_expiry(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Expiry::In(Duration::from_secs(1)).resolve(5), Ok(1005));
        assert_eq!(Expiry::Never.resolve(5), Ok(0));
        assert!(Expiry::At(5).resolve(5).is_err());
    }

    #[test]
    fn times_format_and_parse_back() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_801_353_600_000), "2027-01-31T00:00:00Z");
        // A leap day.
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00Z");
        for ms in [0u64, 951_782_400_000, 1_801_353_600_000, 4_102_444_799_000] {
            assert_eq!(parse_time(&format_time(ms)), Some(ms));
        }
    }
}
