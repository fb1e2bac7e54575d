//! The command line: clap definitions and client-side argument validation.
//!
//! Every argument is checked here, before anything is contacted: node ids are ≥ 1, URLs
//! start with `http://` or `https://`, cluster addresses are non-empty `host:port`. A bad
//! argument is a usage error, which clap reports with exit status 2. The validators are
//! plain functions (`&str -> Result<T, String>`) so they are tested without clap. The auth
//! commands (`users`, `tokens`, `scope-maps`, `roles`, `auth`) are defined in
//! [`crate::cli_auth`].
//!
//! Credentials for the admin service (needed when the cluster has auth on and no mutual
//! TLS): `--user NAME` with its password from `CLUSTERCTL_PASSWORD` or `--password-stdin`,
//! or `--token` (a bearer registry token). A command that itself takes a new password
//! (`users create`, `users update --password-stdin`) reads it from stdin too: after the
//! caller's password when that also comes from stdin (two lines).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use berth_proto::admin::AddNodeRequest;
use clap::{Args, Parser, Subcommand};

use crate::change::Change;
use crate::cli_auth::{
    AuthAction, AuthCommand, RolesCommand, ScopeMapsCommand, TokensCommand, UsersCommand,
};
use crate::cli_lifecycle::{
    LifecycleAction, NamespacesCommand, PurgeArgs, ReposCommand, RetentionCommand,
    SoftDeleteCommand,
};
use crate::cli_webhooks::{WebhooksAction, WebhooksCommand};

/// Default `--timeout` for `status` and `nodes list`.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--timeout` for membership changes (adding a node waits for it to catch up) and
/// `purge`.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `--timeout` for `replication status --wait` and `gc run --wait`.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Operate a berth cluster through any member's admin service.
#[derive(Debug, Parser)]
#[command(name = "clusterctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Cluster address (gRPC) of any member, `host:port` with or without `http://`.
    #[arg(
        long,
        global = true,
        env = "CLUSTERCTL_ENDPOINT",
        default_value = "127.0.0.1:7000",
        value_name = "ADDR",
        value_parser = parse_endpoint
    )]
    pub endpoint: Endpoint,

    /// PEM file of the cluster CA: connect with mutual TLS, verifying the member's
    /// certificate against it (with --cert and --key).
    #[arg(long, global = true, env = "CLUSTERCTL_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// PEM file of this client's certificate, signed by the cluster CA (with --ca, --key).
    #[arg(long, global = true, env = "CLUSTERCTL_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// PEM file of that certificate's private key (with --ca, --cert).
    #[arg(long, global = true, env = "CLUSTERCTL_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Log in to the admin service as this user or token (an admin: the admin role on
    /// `**`); its password comes from CLUSTERCTL_PASSWORD or --password-stdin. Needed when
    /// the cluster has auth on and no mutual TLS.
    #[arg(long, global = true, env = "CLUSTERCTL_USER", value_name = "NAME", value_parser = crate::cli_auth::parse_name)]
    pub user: Option<String>,

    /// Read passwords from stdin, one per line: the --user password (unless
    /// CLUSTERCTL_PASSWORD is set), then the new password of `users create|update`.
    #[arg(long = "password-stdin", global = true)]
    pub password_stdin: bool,

    /// A registry token (from /auth/token) of an admin, issued with the scope
    /// `registry:admin:*`, sent as a bearer token instead of --user; prefer the
    /// CLUSTERCTL_TOKEN environment variable.
    #[arg(
        long,
        global = true,
        env = "CLUSTERCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        conflicts_with = "user"
    )]
    pub token: Option<String>,

    /// The --user password, from the environment variable CLUSTERCTL_PASSWORD only.
    #[arg(skip = std::env::var("CLUSTERCTL_PASSWORD").ok().filter(|p| !p.is_empty()))]
    pub password_env: Option<String>,

    /// Print JSON instead of tables and lines (JSON lines for progress).
    #[arg(long, global = true)]
    pub json: bool,

    /// Deadline for the whole command, in seconds [default: 10 for status, nodes list,
    /// replication, gc, the auth and lifecycle commands, 300 for membership changes and
    /// purge, 600 for
    /// `replication status --wait` and `gc run --wait`, 30 for `webhooks ping`].
    #[arg(long, global = true, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show every member's role, Raft position and reachability.
    Status,
    /// List and change the members.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Move leadership.
    #[command(subcommand)]
    Leader(LeaderCommand),
    /// See where images are replicated, and set where they may be.
    #[command(subcommand)]
    Replication(ReplicationCommand),
    /// Make a development cluster CA and the node and client certificates it signs (local
    /// files; contacts no node).
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Users: people who log in with a password, with roles on repository patterns.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Machine tokens: generated passwords, bound to a scope map (and/or roles).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Scope maps: which actions a token may take on which repositories.
    #[command(subcommand)]
    ScopeMaps(ScopeMapsCommand),
    /// The built-in roles, and roles of users and tokens on repository patterns.
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Token-signing keys, anonymous pull and network rules of the registry port.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Show the audit log (logins, tokens, pushes, deletes, admin changes) of every member,
    /// merged by time; a member that does not answer is reported.
    Audit(crate::audit::AuditArgs),
    /// Garbage collection of blobs: run a pass on the answering node, see its last one.
    #[command(subcommand)]
    Gc(GcCommand),
    /// Lock repositories, tags and manifests; list and restore soft-deleted manifests.
    #[command(subcommand)]
    Repos(ReposCommand),
    /// Soft delete: keep deleted manifests restorable for a number of days.
    #[command(subcommand, name = "soft-delete")]
    SoftDelete(SoftDeleteCommand),
    /// Retention of untagged manifests, by repository pattern.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Namespaces (the first component of repository names): quotas and limits, usage.
    #[command(subcommand)]
    Namespaces(NamespacesCommand),
    /// Delete the tags that match filters and are older than --ago (as `acr purge`), and with
    /// --untagged the manifests left without tags; locked ones are skipped and reported.
    Purge(PurgeArgs),
    /// Webhooks: registry events POSTed to HTTP endpoints; their delivery logs.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
}

/// `clusterctl gc …`.
#[derive(Debug, Subcommand)]
pub enum GcCommand {
    /// Start a pass on the answering node: it collects the blobs no manifest refers to whose
    /// grace period has ended (each node then removes its copies).
    Run {
        /// Only count what the pass would free; remove nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
        /// Follow the pass (a progress line per change) and print its report; exit 1 if it
        /// stops with an error or `--timeout` passes first (the pass goes on).
        #[arg(long)]
        wait: bool,
    },
    /// Show the answering node's current or last pass, and what its reaper removed.
    Status,
}

/// `clusterctl certs …`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum CertsCommand {
    /// Make a new CA: `ca.pem` and `ca-key.pem` in DIR (never overwritten).
    Init {
        /// The directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue a node or client certificate signed by the CA: `NAME.pem`, `NAME-key.pem` and
    /// a copy of `ca.pem` in DIR.
    Issue {
        /// The CA directory `certs init` made.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The certificate's common name and file name.
        #[arg(long, value_parser = parse_label)]
        name: String,
        /// A DNS name or IP address the certificate names (repeat for several); a node's
        /// certificate must name the host of its advertised cluster address.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// The directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `clusterctl replication …`.
#[derive(Debug, Subcommand)]
pub enum ReplicationCommand {
    /// Per region: whether every blob the placement wants there is held there, and what is
    /// pending. Exits 0 when complete, 1 when not.
    Status(ReplicationStatusArgs),
    /// Per-repository replication policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

/// `clusterctl replication status …`.
#[derive(Debug, Args)]
pub struct ReplicationStatusArgs {
    /// `repo`, `repo:tag` or `repo@digest`; none: every image (a summary per region).
    #[arg(value_parser = parse_reference)]
    pub reference: Option<String>,
    /// Poll (showing progress) until complete; exit 1 if `--timeout` passes first.
    #[arg(long)]
    pub wait: bool,
    /// Also list every blob with the nodes holding it and the nodes it is placed on.
    #[arg(long)]
    pub verbose: bool,
}

/// `clusterctl replication policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show the policy of a pattern, or every policy.
    Get {
        /// The repository pattern (`*` within a path component, `**` across); none: all.
        #[arg(value_parser = parse_pattern)]
        pattern: Option<String>,
    },
    /// Set the policy of a repository pattern (replacing the one it had).
    Set {
        /// The repository pattern (`*` within a path component, `**` across).
        #[arg(value_parser = parse_pattern)]
        pattern: String,
        /// Only these regions may hold copies (data residency); default: every region.
        #[arg(long, value_delimiter = ',', value_parser = parse_label, value_name = "REGION,..")]
        regions: Vec<String>,
        /// These regions keep only what was pulled there (no replication to them).
        #[arg(long = "on-demand", value_delimiter = ',', value_parser = parse_label, value_name = "REGION,..")]
        on_demand: Vec<String>,
    },
    /// Remove the policy of a pattern (its repositories fall back to a less specific one).
    Clear {
        /// The repository pattern.
        #[arg(value_parser = parse_pattern)]
        pattern: String,
    },
}

/// `clusterctl nodes …`.
#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List the members.
    List,
    /// Add a node as a learner and wait until it has caught up with the leader.
    Add(AddArgs),
    /// Make a learner a voter.
    Promote {
        /// The node's id.
        #[arg(value_parser = parse_node_id)]
        id: u64,
    },
    /// Make a voter a learner.
    Demote {
        /// The node's id.
        #[arg(value_parser = parse_node_id)]
        id: u64,
    },
    /// Remove a node (voter or learner) from the cluster.
    Remove {
        /// The node's id.
        #[arg(value_parser = parse_node_id)]
        id: u64,
    },
}

/// `clusterctl nodes add …`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The new node's id (≥ 1, never reused).
    #[arg(value_parser = parse_node_id)]
    pub id: u64,
    /// The new node's cluster address (gRPC), `host:port`.
    #[arg(long = "cluster", value_name = "ADDR", value_parser = parse_cluster_addr)]
    pub cluster_addr: String,
    /// The new node's registry URL, `http://…` or `https://…`.
    #[arg(long, value_parser = parse_url)]
    pub url: String,
    /// The new node's region.
    #[arg(long, default_value = "default", value_parser = parse_label)]
    pub region: String,
    /// The new node's zone.
    #[arg(long, default_value = "default", value_parser = parse_label)]
    pub zone: String,
}

/// `clusterctl leader …`.
#[derive(Debug, Subcommand)]
pub enum LeaderCommand {
    /// Hand leadership to another voter and wait until it leads.
    Transfer {
        /// The voter that should lead.
        #[arg(long, value_parser = parse_node_id)]
        to: u64,
    },
}

/// What a command does, independent of how it was spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `status`.
    Status,
    /// `nodes list`.
    ListNodes,
    /// A membership change (`nodes add|promote|demote|remove`, `leader transfer`).
    Change(Change),
    /// `replication status`.
    ReplicationStatus {
        /// The reference (empty: everything).
        reference: String,
        /// Poll until complete.
        wait: bool,
        /// List every blob.
        verbose: bool,
    },
    /// `replication policy get` (empty pattern: all).
    PolicyGet(String),
    /// `replication policy set`.
    PolicySet {
        /// The pattern.
        pattern: String,
        /// Allowed regions (empty: all).
        regions: Vec<String>,
        /// On-demand regions.
        on_demand: Vec<String>,
    },
    /// `replication policy clear`.
    PolicyClear(String),
    /// `certs init|issue` (no connection).
    Certs(CertsCommand),
    /// `users`, `tokens`, `scope-maps`, `roles`, `auth`.
    Auth(AuthAction),
    /// `audit`.
    Audit(crate::audit::AuditArgs),
    /// `gc run`.
    GcRun {
        /// Count only.
        dry_run: bool,
        /// Follow the pass to its end.
        wait: bool,
    },
    /// `gc status`.
    GcStatus,
    /// `repos`, `soft-delete`, `retention`, `namespaces`, `purge`.
    Lifecycle(LifecycleAction),
    /// `webhooks`.
    Webhooks(WebhooksAction),
}

/// How clusterctl proves who it is to the admin service (besides a client certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// No credentials (mutual TLS, or a cluster without auth).
    None,
    /// `--user` with a password; `None`: the first line of stdin.
    User {
        /// The login name.
        name: String,
        /// From CLUSTERCTL_PASSWORD, or `None` when it is read from stdin.
        password: Option<String>,
    },
    /// `--token`.
    Token(String),
}

/// The files of `--ca`, `--cert` and `--key`: connect with mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA.
    pub ca: PathBuf,
    /// This client's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl Cli {
    /// The mutual TLS files, when all three flags are given; `Err` when only some are.
    pub fn tls(&self) -> Result<Option<TlsFiles>, String> {
        match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None, None) => Ok(None),
            _ => Err("give --ca, --cert and --key together (or CLUSTERCTL_CA, _CERT, _KEY)".into()),
        }
    }

    /// The deadline of the whole command: `--timeout`, or the command's default.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(match self.action() {
            Action::ReplicationStatus { wait: true, .. } | Action::GcRun { wait: true, .. } => {
                WAIT_TIMEOUT
            }
            Action::Status
            | Action::ListNodes
            | Action::ReplicationStatus { .. }
            | Action::PolicyGet(_)
            | Action::PolicySet { .. }
            | Action::PolicyClear(_)
            | Action::Certs(_)
            | Action::Auth(_) => READ_TIMEOUT,
            Action::Audit(_) | Action::GcRun { .. } | Action::GcStatus => READ_TIMEOUT,
            Action::Lifecycle(LifecycleAction::Purge(_)) => CHANGE_TIMEOUT,
            Action::Lifecycle(_) => READ_TIMEOUT,
            Action::Webhooks(a) => a.timeout(),
            Action::Change(_) => CHANGE_TIMEOUT,
        })
    }

    /// What this command does (the global `--password-stdin` included).
    pub fn action(&self) -> Action {
        match &self.command {
            Command::Users(c) => Action::Auth(c.action(self.password_stdin)),
            Command::Tokens(c) => Action::Auth(c.action()),
            Command::ScopeMaps(c) => Action::Auth(c.action()),
            Command::Roles(c) => Action::Auth(c.action()),
            Command::Auth(c) => Action::Auth(c.action()),
            Command::Status => Action::Status,
            Command::Nodes(NodesCommand::List) => Action::ListNodes,
            Command::Nodes(NodesCommand::Add(args)) => {
                Action::Change(Change::Add(AddNodeRequest {
                    id: args.id,
                    cluster_addr: args.cluster_addr.clone(),
                    url: args.url.clone(),
                    region: args.region.clone(),
                    zone: args.zone.clone(),
                }))
            }
            Command::Nodes(NodesCommand::Promote { id }) => {
                Action::Change(Change::Promote { id: *id })
            }
            Command::Nodes(NodesCommand::Demote { id }) => {
                Action::Change(Change::Demote { id: *id })
            }
            Command::Nodes(NodesCommand::Remove { id }) => {
                Action::Change(Change::Remove { id: *id })
            }
            Command::Leader(LeaderCommand::Transfer { to }) => {
                Action::Change(Change::TransferLeader { to: *to })
            }
            Command::Certs(c) => Action::Certs(c.clone()),
            Command::Audit(a) => Action::Audit(a.clone()),
            Command::Gc(GcCommand::Run { dry_run, wait }) => Action::GcRun {
                dry_run: *dry_run,
                wait: *wait,
            },
            Command::Gc(GcCommand::Status) => Action::GcStatus,
            Command::Repos(c) => Action::Lifecycle(c.action()),
            Command::SoftDelete(c) => Action::Lifecycle(c.action()),
            Command::Retention(c) => Action::Lifecycle(c.action()),
            Command::Namespaces(c) => Action::Lifecycle(c.action()),
            Command::Purge(a) => Action::Lifecycle(a.action()),
            Command::Webhooks(c) => Action::Webhooks(c.action()),
            Command::Replication(ReplicationCommand::Status(a)) => Action::ReplicationStatus {
                reference: a.reference.clone().unwrap_or_default(),
                wait: a.wait,
                verbose: a.verbose,
            },
            Command::Replication(ReplicationCommand::Policy(p)) => match p {
                PolicyCommand::Get { pattern } => {
                    Action::PolicyGet(pattern.clone().unwrap_or_default())
                }
                PolicyCommand::Set {
                    pattern,
                    regions,
                    on_demand,
                } => Action::PolicySet {
                    pattern: pattern.clone(),
                    regions: regions.clone(),
                    on_demand: on_demand.clone(),
                },
                PolicyCommand::Clear { pattern } => Action::PolicyClear(pattern.clone()),
            },
        }
    }

    /// The credentials to send. Errors (usage errors: exit status 2): `--user` without a
    /// password from CLUSTERCTL_PASSWORD or `--password-stdin`; `--password-stdin` with
    /// nothing to read a password for; `users create` without `--password-stdin`.
    pub fn login(&self) -> Result<Login, String> {
        if matches!(self.command, Command::Certs(_)) {
            // Local files only: no call to make, nothing to log in to.
            return Ok(Login::None);
        }
        let takes_password = matches!(self.action(), Action::Auth(a) if a.takes_password());
        if matches!(self.command, Command::Users(UsersCommand::Create { .. }))
            && !self.password_stdin
        {
            return Err("users create: give the new user's password on stdin with \
                        --password-stdin"
                .into());
        }
        let login = match (&self.user, &self.token) {
            (Some(name), _) => {
                let password = self.password_env.clone();
                if password.is_none() && !self.password_stdin {
                    return Err(format!(
                        "--user {name}: give its password with --password-stdin or \
                         CLUSTERCTL_PASSWORD"
                    ));
                }
                Login::User {
                    name: name.clone(),
                    password,
                }
            }
            (None, Some(token)) => Login::Token(token.trim().to_owned()),
            (None, None) => Login::None,
        };
        let reads_login = matches!(login, Login::User { password: None, .. });
        if self.password_stdin && !reads_login && !takes_password {
            return Err(
                "--password-stdin: there is no password to read (give --user, or a \
                        command that takes a new password)"
                    .into(),
            );
        }
        Ok(login)
    }
}

/// A member's cluster address to connect to; shown as `host:port`, dialled as
/// `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    addr: String,
}

impl Endpoint {
    /// `host:port`, as the user gave it without the scheme.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The URI tonic dials: `http://host:port`, or `https://host:port` with TLS.
    pub fn uri(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// Parses `--endpoint`: `host:port` or `http://host:port` (a trailing `/` is dropped).
/// `https://` is refused: TLS is chosen by `--ca`, `--cert` and `--key`.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let s = s.trim();
    if s.starts_with("https://") {
        return Err("give host:port; TLS is on with --ca, --cert and --key".into());
    }
    let addr = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    if addr.contains("://") {
        return Err("expected host:port, optionally prefixed with http://".into());
    }
    check_host_port(addr)?;
    Ok(Endpoint {
        addr: addr.to_owned(),
    })
}

/// Parses a node id: a whole number ≥ 1.
pub fn parse_node_id(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("node ids start at 1".into()),
        Ok(id) => Ok(id),
        Err(_) => Err("expected a node id (a whole number ≥ 1)".into()),
    }
}

/// Parses a cluster address: a non-empty `host:port`, without a scheme.
pub fn parse_cluster_addr(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.contains("://") {
        return Err("expected host:port without a scheme".into());
    }
    check_host_port(s)?;
    Ok(s.to_owned())
}

/// Parses a registry URL: `http://` or `https://` followed by a host.
pub fn parse_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or("expected a URL starting with http:// or https://")?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || rest.chars().any(char::is_whitespace) {
        return Err("expected a URL like http://host:port".into());
    }
    Ok(s.to_owned())
}

/// Parses a region or zone name: non-empty, no whitespace.
pub fn parse_label(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err("expected a non-empty name without spaces".into());
    }
    Ok(s.to_owned())
}

/// Parses an image reference: `repo`, `repo:tag` or `repo@digest` (the server checks the
/// grammar; here only that it is one word).
pub fn parse_reference(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err("expected repo, repo:tag or repo@digest".into());
    }
    Ok(s.to_owned())
}

/// Parses a repository pattern: lowercase letters, digits, `.`, `_`, `-`, `/` and `*`.
pub fn parse_pattern(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-*".contains(&b))
    {
        return Err("expected a repository pattern of a-z, 0-9, '.', '_', '-', '/' and '*'".into());
    }
    Ok(s.to_owned())
}

/// Parses `--timeout`: seconds, > 0, fractions allowed.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds")?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("the timeout must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| "the timeout is too large".into())
}

/// Checks `host:port`: a non-empty host (IPv6 in brackets) and a port from 1 to 65535.
fn check_host_port(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("expected host:port, got nothing".into());
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or("expected host:port (the port is missing)")?;
    if host.is_empty() || host == "[]" {
        return Err("expected host:port (the host is missing)".into());
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !bracketed {
        return Err("an IPv6 address needs brackets, e.g. [::1]:7000".into());
    }
    if host.contains(['/', '@', '?', '#']) || host.chars().any(char::is_whitespace) {
        return Err("expected host:port".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("the port must be a number from 1 to 65535".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_start_at_one() {
        assert_eq!(parse_node_id("1"), Ok(1));
        assert_eq!(parse_node_id("42"), Ok(42));
        assert!(parse_node_id("0").unwrap_err().contains("start at 1"));
        assert!(parse_node_id("-1").is_err());
        assert!(parse_node_id("four").is_err());
        assert!(parse_node_id("").is_err());
    }

    #[test]
    fn urls_need_an_http_scheme_and_a_host() {
        assert_eq!(
            parse_url("http://10.0.0.4:5000"),
            Ok("http://10.0.0.4:5000".into())
        );
        assert!(parse_url("https://registry.example/").is_ok());
        assert!(parse_url("10.0.0.4:5000").is_err());
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://").is_err());
        assert!(parse_url("http:///path").is_err());
        assert!(parse_url("http://a b").is_err());
    }

    #[test]
    fn cluster_addrs_are_host_port() {
        assert_eq!(
            parse_cluster_addr("10.0.0.4:7000"),
            Ok("10.0.0.4:7000".into())
        );
        assert!(parse_cluster_addr("node-4.internal:7000").is_ok());
        assert!(parse_cluster_addr("[::1]:7000").is_ok());
        for bad in [
            "",
            "10.0.0.4",
            ":7000",
            "10.0.0.4:",
            "10.0.0.4:0",
            "10.0.0.4:70000",
            "::1:7000",
            "http://10.0.0.4:7000",
            "a/b:7000",
        ] {
            assert!(
                parse_cluster_addr(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn endpoints_accept_an_optional_http_scheme() {
        let plain = parse_endpoint("127.0.0.1:7000").unwrap();
        assert_eq!(plain.addr(), "127.0.0.1:7000");
        assert_eq!(plain.uri(false), "http://127.0.0.1:7000");
        assert_eq!(parse_endpoint("http://127.0.0.1:7000/"), Ok(plain));
        assert!(parse_endpoint("https://127.0.0.1:7000").is_err());
        assert!(parse_endpoint("grpc://127.0.0.1:7000").is_err());
        assert!(parse_endpoint("127.0.0.1").is_err());
    }

    #[test]
    fn timeouts_are_positive_seconds() {
        assert_eq!(parse_timeout("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-3").is_err());
        assert!(parse_timeout("NaN").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn labels_are_non_empty_words() {
        assert_eq!(parse_label("eu-west"), Ok("eu-west".into()));
        assert!(parse_label("").is_err());
        assert!(parse_label("eu west").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "clusterctl",
            "nodes",
            "list",
            "--json",
            "--endpoint",
            "http://10.0.0.1:7000",
            "--timeout",
            "3",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.endpoint.addr(), "10.0.0.1:7000");
        assert_eq!(cli.timeout(), Duration::from_secs(3));
        assert_eq!(cli.action(), Action::ListNodes);
    }

    #[test]
    fn default_timeouts_depend_on_the_command() {
        let status = Cli::try_parse_from(["clusterctl", "status"]).unwrap();
        assert_eq!(status.timeout(), READ_TIMEOUT);
        let promote = Cli::try_parse_from(["clusterctl", "nodes", "promote", "2"]).unwrap();
        assert_eq!(promote.timeout(), CHANGE_TIMEOUT);
        assert_eq!(promote.action(), Action::Change(Change::Promote { id: 2 }));
    }

    #[test]
    fn replication_commands_parse() {
        let cli = Cli::try_parse_from([
            "clusterctl",
            "replication",
            "status",
            "library/nginx:1",
            "--wait",
        ])
        .unwrap();
        assert_eq!(
            cli.action(),
            Action::ReplicationStatus {
                reference: "library/nginx:1".into(),
                wait: true,
                verbose: false
            }
        );
        assert_eq!(cli.timeout(), WAIT_TIMEOUT);
        let cli = Cli::try_parse_from(["clusterctl", "replication", "status"]).unwrap();
        assert_eq!(cli.timeout(), READ_TIMEOUT);
        let cli = Cli::try_parse_from([
            "clusterctl",
            "replication",
            "policy",
            "set",
            "eu/**",
            "--regions",
            "r1,r2",
            "--on-demand",
            "r2",
        ])
        .unwrap();
        assert_eq!(
            cli.action(),
            Action::PolicySet {
                pattern: "eu/**".into(),
                regions: vec!["r1".into(), "r2".into()],
                on_demand: vec!["r2".into()],
            }
        );
        let get = Cli::try_parse_from(["clusterctl", "replication", "policy", "get"]).unwrap();
        assert_eq!(get.action(), Action::PolicyGet(String::new()));
        for bad in [
            &["clusterctl", "replication", "policy", "set", "EU"][..],
            &["clusterctl", "replication", "policy", "clear", ""],
            &[
                "clusterctl",
                "replication",
                "policy",
                "set",
                "a",
                "--regions",
                "",
            ],
        ] {
            assert_eq!(
                Cli::try_parse_from(bad).unwrap_err().exit_code(),
                2,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn audit_arguments_parse() {
        use crate::audit::{AuditArgs, DEFAULT_LIMIT, Since};
        let cli = Cli::try_parse_from(["clusterctl", "audit"]).unwrap();
        assert_eq!(
            cli.action(),
            Action::Audit(AuditArgs {
                since: None,
                identity: None,
                limit: DEFAULT_LIMIT
            })
        );
        assert_eq!(cli.timeout(), READ_TIMEOUT);
        let cli = Cli::try_parse_from([
            "clusterctl",
            "audit",
            "--since",
            "1h30m",
            "--identity",
            "ci-bot",
            "--limit",
            "20",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(
            cli.action(),
            Action::Audit(AuditArgs {
                since: Some(Since::Ago(Duration::from_secs(5400))),
                identity: Some("ci-bot".into()),
                limit: 20
            })
        );
        let cli = Cli::try_parse_from(["clusterctl", "audit", "--since", "2026-11-30T06:00:00Z"])
            .unwrap();
        let Action::Audit(args) = cli.action() else {
            panic!("not audit")
        };
        assert_eq!(args.since, Some(Since::At(1_796_018_400_000)));
        for bad in [
            &["clusterctl", "audit", "--since", "soon"][..],
            &["clusterctl", "audit", "--limit", "0"],
            &["clusterctl", "audit", "--identity", ""],
        ] {
            assert_eq!(
                Cli::try_parse_from(bad).unwrap_err().exit_code(),
                2,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn gc_arguments_parse() {
        let cli = Cli::try_parse_from(["clusterctl", "gc", "run"]).unwrap();
        assert_eq!(
            cli.action(),
            Action::GcRun {
                dry_run: false,
                wait: false
            }
        );
        assert_eq!(cli.timeout(), READ_TIMEOUT);
        let cli = Cli::try_parse_from(["clusterctl", "gc", "run", "--dry-run", "--wait"]).unwrap();
        assert_eq!(
            cli.action(),
            Action::GcRun {
                dry_run: true,
                wait: true
            }
        );
        assert_eq!(cli.timeout(), WAIT_TIMEOUT);
        let cli =
            Cli::try_parse_from(["clusterctl", "gc", "run", "--wait", "--timeout", "30"]).unwrap();
        assert_eq!(cli.timeout(), Duration::from_secs(30));
        let cli = Cli::try_parse_from(["clusterctl", "gc", "status", "--json"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.action(), Action::GcStatus);
        assert_eq!(cli.timeout(), READ_TIMEOUT);
        for bad in [
            &["clusterctl", "gc"][..],
            &["clusterctl", "gc", "run", "--dry"],
            &["clusterctl", "gc", "status", "--wait"],
            &["clusterctl", "gc", "run", "now"],
        ] {
            assert_eq!(
                Cli::try_parse_from(bad).unwrap_err().exit_code(),
                2,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn add_defaults_region_and_zone() {
        let cli = Cli::try_parse_from([
            "clusterctl",
            "nodes",
            "add",
            "4",
            "--cluster",
            "10.0.0.4:7000",
            "--url",
            "http://10.0.0.4:5000",
        ])
        .unwrap();
        assert_eq!(
            cli.action(),
            Action::Change(Change::Add(AddNodeRequest {
                id: 4,
                cluster_addr: "10.0.0.4:7000".into(),
                url: "http://10.0.0.4:5000".into(),
                region: "default".into(),
                zone: "default".into(),
            }))
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["clusterctl", "nodes", "promote", "0"][..],
            &["clusterctl", "leader", "transfer", "--to", "0"],
            &[
                "clusterctl",
                "nodes",
                "add",
                "4",
                "--cluster",
                "x",
                "--url",
                "http://a",
            ],
            &[
                "clusterctl",
                "nodes",
                "add",
                "4",
                "--cluster",
                "a:1",
                "--url",
                "a:5000",
            ],
            &["clusterctl", "nodes", "add", "4", "--url", "http://a:5000"],
            &["clusterctl", "--endpoint", "nowhere", "status"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    fn parse(args: &[&str]) -> Cli {
        let mut all = vec!["clusterctl"];
        all.extend_from_slice(args);
        let mut cli = Cli::try_parse_from(all).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        cli.password_env = None;
        cli
    }

    #[test]
    fn auth_commands_parse_into_actions() {
        use crate::cli_auth::{AuthAction, Expiry, Grant, Kind, Rule, Update};
        let grant = |role: &str, pattern: &str| Grant {
            role: role.into(),
            pattern: pattern.into(),
        };
        let cli = parse(&[
            "tokens",
            "create",
            "ci",
            "--scope-map",
            "ci-map",
            "--role",
            "reader:pub/**",
            "--expiry",
            "2h",
            "--passwords",
            "2",
        ]);
        assert_eq!(
            cli.action(),
            Action::Auth(AuthAction::CreateToken {
                name: "ci".into(),
                scope_map: Some("ci-map".into()),
                roles: vec![grant("reader", "pub/**")],
                expiry: Some(Expiry::In(Duration::from_secs(7200))),
                passwords: 2,
            })
        );
        assert_eq!(cli.timeout(), READ_TIMEOUT);
        let cli = parse(&[
            "tokens",
            "update",
            "ci",
            "--disable",
            "--regenerate",
            "1",
            "--no-expiry",
        ]);
        assert_eq!(
            cli.action(),
            Action::Auth(AuthAction::Update(
                Kind::Token,
                "ci".into(),
                Update {
                    enabled: Some(false),
                    expiry: Some(Expiry::Never),
                    regenerate: Some(1),
                    ..Update::default()
                }
            ))
        );
        let cli = parse(&[
            "--user",
            "admin",
            "--password-stdin",
            "users",
            "update",
            "bob",
            "--add-role",
            "writer:team/**",
        ]);
        assert!(matches!(
            cli.action(),
            Action::Auth(AuthAction::Update(
                Kind::User,
                _,
                Update {
                    new_password: true,
                    ..
                }
            ))
        ));
        assert_eq!(
            parse(&[
                "roles",
                "remove",
                "--identity",
                "bob",
                "--role",
                "writer",
                "--pattern",
                "t/*"
            ])
            .action(),
            Action::Auth(AuthAction::Roles(
                "bob".into(),
                Update {
                    remove_roles: vec![grant("writer", "t/*")],
                    ..Update::default()
                }
            ))
        );
        assert_eq!(
            parse(&["scope-maps", "update", "m", "--rule", "a/**:metadata/read"]).action(),
            Action::Auth(AuthAction::PutScopeMap {
                name: "m".into(),
                description: None,
                rules: vec![Rule {
                    pattern: "a/**".into(),
                    actions: vec!["metadata/read".into()],
                }],
                create: false,
            })
        );
        assert_eq!(
            parse(&["auth", "network", "set", "--clear-allow", "--public", "on"]).action(),
            Action::Auth(AuthAction::Network {
                default_allow: None,
                allow: Some(vec![]),
                public_access: Some(true),
            })
        );
        assert_eq!(
            parse(&[
                "auth",
                "network",
                "repo",
                "set",
                "s/**",
                "--allow",
                "10.0.0.0/8"
            ])
            .action(),
            Action::Auth(AuthAction::RepoNetwork {
                pattern: "s/**".into(),
                default_allow: false,
                allow: vec!["10.0.0.0/8".into()],
            })
        );
        assert_eq!(
            parse(&["auth", "anonymous-pull", "clear"]).action(),
            Action::Auth(AuthAction::AnonymousPull(vec![]))
        );
        for bad in [
            &["users", "create", "-bad"][..],
            &["users", "update", "bob", "--enable", "--disable"],
            &["users", "update", "bob", "--expiry", "1d", "--no-expiry"],
            &["tokens", "update", "t", "--regenerate", "0"],
            &["tokens", "create", "t", "--role", "writer"],
            &[
                "auth",
                "network",
                "set",
                "--allow",
                "10.0.0.0/8",
                "--clear-allow",
            ],
            &["auth", "network", "set", "--default", "maybe"],
            &["auth", "anonymous-pull", "set"],
            &["--user", "a", "--token", "t", "status"],
        ] {
            let mut all = vec!["clusterctl"];
            all.extend_from_slice(bad);
            assert_eq!(
                Cli::try_parse_from(all).unwrap_err().exit_code(),
                2,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn credentials_come_from_flags_env_and_stdin() {
        assert_eq!(parse(&["status"]).login(), Ok(Login::None));
        let mut cli = parse(&["--user", "admin", "status"]);
        assert!(cli.login().unwrap_err().contains("CLUSTERCTL_PASSWORD"));
        cli.password_env = Some("pw".into());
        assert_eq!(
            cli.login(),
            Ok(Login::User {
                name: "admin".into(),
                password: Some("pw".into())
            })
        );
        assert_eq!(
            parse(&["--user", "admin", "--password-stdin", "status"]).login(),
            Ok(Login::User {
                name: "admin".into(),
                password: None
            })
        );
        assert_eq!(
            parse(&["--token", " tok ", "status"]).login(),
            Ok(Login::Token("tok".into()))
        );
        assert!(parse(&["--password-stdin", "status"]).login().is_err());
        let certs = parse(&["--user", "admin", "certs", "init", "--out", "d"]);
        assert_eq!(certs.login(), Ok(Login::None));
        assert!(parse(&["users", "create", "bob"]).login().is_err());
        assert_eq!(
            parse(&["--password-stdin", "users", "create", "bob"]).login(),
            Ok(Login::None)
        );
    }
}
