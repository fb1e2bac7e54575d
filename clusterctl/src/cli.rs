//! The command line: clap definitions and client-side argument validation.
//!
//! Every argument is checked here, before anything is contacted: node ids are ≥ 1, URLs
//! start with `http://` or `https://`, cluster addresses are non-empty `host:port`. A bad
//! argument is a usage error, which clap reports with exit status 2. The validators are
//! plain functions (`&str -> Result<T, String>`) so they are tested without clap.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use berth_proto::admin::AddNodeRequest;
use clap::{Args, Parser, Subcommand};

use crate::change::Change;

/// Default `--timeout` for `status` and `nodes list`.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--timeout` for membership changes (adding a node waits for it to catch up).
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `--timeout` for `replication status --wait`.
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

    /// Print JSON instead of tables and lines (JSON lines for progress).
    #[arg(long, global = true)]
    pub json: bool,

    /// Deadline for the whole command, in seconds [default: 10 for status, nodes list and
    /// replication, 300 for membership changes, 600 for `replication status --wait`].
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
    /// Show the audit log (logins, tokens, pushes, deletes, admin changes) of every member,
    /// merged by time; a member that does not answer is reported.
    Audit(crate::audit::AuditArgs),
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
    /// `audit`.
    Audit(crate::audit::AuditArgs),
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
        self.timeout.unwrap_or(match self.command.action() {
            Action::ReplicationStatus { wait: true, .. } => WAIT_TIMEOUT,
            Action::Status
            | Action::ListNodes
            | Action::ReplicationStatus { .. }
            | Action::PolicyGet(_)
            | Action::PolicySet { .. }
            | Action::PolicyClear(_)
            | Action::Certs(_)
            | Action::Audit(_) => READ_TIMEOUT,
            Action::Change(_) => CHANGE_TIMEOUT,
        })
    }
}

impl Command {
    /// What this command does.
    pub fn action(&self) -> Action {
        match self {
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
        assert_eq!(cli.command.action(), Action::ListNodes);
    }

    #[test]
    fn default_timeouts_depend_on_the_command() {
        let status = Cli::try_parse_from(["clusterctl", "status"]).unwrap();
        assert_eq!(status.timeout(), READ_TIMEOUT);
        let promote = Cli::try_parse_from(["clusterctl", "nodes", "promote", "2"]).unwrap();
        assert_eq!(promote.timeout(), CHANGE_TIMEOUT);
        assert_eq!(
            promote.command.action(),
            Action::Change(Change::Promote { id: 2 })
        );
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
            cli.command.action(),
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
            cli.command.action(),
            Action::PolicySet {
                pattern: "eu/**".into(),
                regions: vec!["r1".into(), "r2".into()],
                on_demand: vec!["r2".into()],
            }
        );
        let get = Cli::try_parse_from(["clusterctl", "replication", "policy", "get"]).unwrap();
        assert_eq!(get.command.action(), Action::PolicyGet(String::new()));
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
            cli.command.action(),
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
            cli.command.action(),
            Action::Audit(AuditArgs {
                since: Some(Since::Ago(Duration::from_secs(5400))),
                identity: Some("ci-bot".into()),
                limit: 20
            })
        );
        let cli = Cli::try_parse_from(["clusterctl", "audit", "--since", "2026-11-30T06:00:00Z"])
            .unwrap();
        let Action::Audit(args) = cli.command.action() else {
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
            cli.command.action(),
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
}
