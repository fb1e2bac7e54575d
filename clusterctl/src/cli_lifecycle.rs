//! The command line of `repos`, `soft-delete`, `retention`, `namespaces` and `purge`: clap
//! definitions, their validation, and [`LifecycleAction`], what each command does (the
//! request it sends).
//!
//! As in [`crate::cli`], every argument is checked before anything is contacted (a bad one is
//! a usage error, exit status 2): repository names and `REPO[:TAG|@DIGEST]` references,
//! namespaces, days (soft delete 1 to 90), sizes (`10GiB`, `500MB`, bytes; `0` or `none`
//! removes the limit), purge filters `REPO_REGEX:TAG_REGEX` (their shape; the server compiles
//! the expressions) and `--ago` durations. The server checks everything again.

use berth_proto::admin as pb;
use clap::{ArgGroup, Args, Subcommand};

use crate::cli::parse_pattern;

/// Longest recycle window of soft delete, in days.
pub const MAX_SOFT_DELETE_DAYS: u32 = 90;

/// `clusterctl repos …`.
#[derive(Debug, Subcommand)]
pub enum ReposCommand {
    /// Lock or unlock a repository, a tag or a manifest: change what it allows (what is given
    /// changes); prints its attributes as they are now. A lock holds at every node.
    Update(ReposUpdateArgs),
    /// Show a repository's attributes and every tag and manifest in it with attributes set.
    Show {
        /// The repository.
        #[arg(value_parser = parse_repository)]
        repository: String,
    },
    /// List a repository's soft-deleted manifests: the tags each had, when it was deleted and
    /// until when it can be restored.
    Deleted {
        /// The repository.
        #[arg(value_parser = parse_repository)]
        repository: String,
    },
    /// Restore a soft-deleted manifest, with the tags it had (those not taken meanwhile) or
    /// with --tag only.
    Restore {
        /// `REPO@DIGEST`.
        #[arg(value_name = "REPO@DIGEST", value_parser = parse_manifest_ref)]
        manifest: ManifestRef,
        /// Restore it with this tag only.
        #[arg(long, value_parser = parse_tag)]
        tag: Option<String>,
    },
}

/// `clusterctl repos update …`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["write_enabled", "delete_enabled", "read_enabled", "list_enabled"])
))]
pub struct ReposUpdateArgs {
    /// `REPO` (the repository), `REPO:TAG` or `REPO@DIGEST`.
    #[arg(value_name = "REPO[:TAG|@DIGEST]", value_parser = parse_lock_ref)]
    pub target: LockRef,
    /// Pushes, tag moves and overwrites (false: locked against writes, deletes too).
    #[arg(long = "write-enabled", value_name = "BOOL")]
    pub write_enabled: Option<bool>,
    /// Deletes.
    #[arg(long = "delete-enabled", value_name = "BOOL")]
    pub delete_enabled: Option<bool>,
    /// Pulls.
    #[arg(long = "read-enabled", value_name = "BOOL")]
    pub read_enabled: Option<bool>,
    /// Listing (`_catalog`, `tags/list`).
    #[arg(long = "list-enabled", value_name = "BOOL")]
    pub list_enabled: Option<bool>,
}

/// `clusterctl soft-delete …`.
#[derive(Debug, Subcommand)]
pub enum SoftDeleteCommand {
    /// Turn soft delete on: a deleted manifest stays restorable (and its blobs stay) for N
    /// days.
    Set {
        /// The recycle window, 1 to 90 days.
        #[arg(long, value_name = "N", value_parser = parse_soft_delete_days)]
        days: u32,
    },
    /// Turn soft delete off: later deletes are final (what is in the recycle bin stays until
    /// its window ends).
    Off,
    /// Show whether soft delete is on, and its window.
    Show,
}

/// `clusterctl retention …`.
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Delete the untagged manifests of the repositories PATTERN matches once they are N days
    /// old.
    ///
    /// PATTERN: `*` matches within a path component, `**` across components (`**` alone: the
    /// whole cluster; `team/**`: every repository under team/); the most specific matching
    /// pattern applies.
    Set {
        /// A repository pattern (`**`: every repository).
        #[arg(value_parser = parse_pattern)]
        pattern: String,
        /// Days after its push an untagged manifest is kept (at least 1).
        #[arg(long = "untagged-days", value_name = "N", value_parser = parse_positive)]
        untagged_days: u32,
    },
    /// Remove the retention policy of PATTERN.
    Clear {
        /// The pattern, as it was set.
        #[arg(value_parser = parse_pattern)]
        pattern: String,
    },
    /// List the retention policies.
    List,
}

/// `clusterctl namespaces …`.
#[derive(Debug, Subcommand)]
pub enum NamespacesCommand {
    /// Set a namespace's limits (the first component of repository names: `team` of
    /// `team/app`); what is given changes, `0` or `none` removes a limit.
    Set(NamespaceSetArgs),
    /// Show a namespace's limits and usage.
    Get {
        /// The namespace.
        #[arg(value_parser = parse_namespace)]
        namespace: String,
    },
    /// List the namespaces with limits or repositories, with their usage.
    List,
}

/// `clusterctl namespaces set …`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("limit")
        .required(true)
        .multiple(true)
        .args(["quota", "max_repositories", "pulls_per_sec", "pushes_per_sec"])
))]
pub struct NamespaceSetArgs {
    /// The namespace.
    #[arg(value_parser = parse_namespace)]
    pub namespace: String,
    /// Bytes of distinct blobs its manifests may reference: bytes or with a unit (`500MB`,
    /// `10GiB`); a push past it is refused.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub quota: Option<u64>,
    /// Repositories it may have.
    #[arg(long = "max-repositories", value_name = "N", value_parser = parse_limit)]
    pub max_repositories: Option<u64>,
    /// Pull requests per second, per node.
    #[arg(long = "pulls-per-sec", value_name = "N", value_parser = parse_rate)]
    pub pulls_per_sec: Option<u32>,
    /// Push requests per second, per node.
    #[arg(long = "pushes-per-sec", value_name = "N", value_parser = parse_rate)]
    pub pushes_per_sec: Option<u32>,
}

/// `clusterctl purge …`.
#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    /// `REPO_REGEX:TAG_REGEX` (split at the first `:`): purge the tags the second matches in
    /// the repositories the first matches (anywhere in the name: anchor with `^…$`); repeat
    /// for several.
    #[arg(long = "filter", value_name = "REPO_REGEX:TAG_REGEX", required = true, value_parser = parse_filter)]
    pub filters: Vec<String>,
    /// Only tags set (and, with --untagged, manifests pushed) longer ago than this: numbers
    /// with d, h, m or s (`2d`, `1d12h`, `30m`); 0: now.
    #[arg(long, default_value = "0", value_parser = parse_ago)]
    pub ago: String,
    /// Also delete the manifests of the matched repositories left without tags.
    #[arg(long)]
    pub untagged: bool,
    /// Per repository, keep the newest N of the tags that would be purged.
    #[arg(long, value_name = "N", default_value = "0")]
    pub keep: u32,
    /// Only show what would be deleted.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
}

/// What `repos update` names: a repository, a tag or a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRef {
    /// The repository.
    pub repository: String,
    /// The tag; empty: none.
    pub tag: String,
    /// The manifest digest; empty: none.
    pub digest: String,
}

/// `REPO@DIGEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRef {
    /// The repository.
    pub repository: String,
    /// The digest.
    pub digest: String,
}

/// What a lifecycle command does: the request it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleAction {
    /// `repos update`.
    UpdateAttributes(pb::UpdateAttributesRequest),
    /// `repos show`.
    ShowAttributes(String),
    /// `repos deleted`.
    Deleted(String),
    /// `repos restore`.
    Restore(pb::RestoreManifestRequest),
    /// `soft-delete set` (days) and `soft-delete off` (0).
    SetSoftDelete(u32),
    /// `soft-delete show`.
    ShowSoftDelete,
    /// `retention set`.
    SetRetention(pb::RetentionPolicyEntry),
    /// `retention clear`.
    ClearRetention(String),
    /// `retention list`.
    ListRetention,
    /// `namespaces set`.
    SetNamespace(pb::SetNamespaceRequest),
    /// `namespaces get`.
    GetNamespace(String),
    /// `namespaces list`.
    ListNamespaces,
    /// `purge`.
    Purge(pb::PurgeRequest),
}

impl ReposCommand {
    /// What it does.
    pub fn action(&self) -> LifecycleAction {
        match self {
            ReposCommand::Update(a) => {
                LifecycleAction::UpdateAttributes(pb::UpdateAttributesRequest {
                    repository: a.target.repository.clone(),
                    tag: a.target.tag.clone(),
                    digest: a.target.digest.clone(),
                    write_enabled: a.write_enabled,
                    delete_enabled: a.delete_enabled,
                    read_enabled: a.read_enabled,
                    list_enabled: a.list_enabled,
                })
            }
            ReposCommand::Show { repository } => {
                LifecycleAction::ShowAttributes(repository.clone())
            }
            ReposCommand::Deleted { repository } => LifecycleAction::Deleted(repository.clone()),
            ReposCommand::Restore { manifest, tag } => {
                LifecycleAction::Restore(pb::RestoreManifestRequest {
                    repository: manifest.repository.clone(),
                    digest: manifest.digest.clone(),
                    tag: tag.clone().unwrap_or_default(),
                })
            }
        }
    }
}

impl SoftDeleteCommand {
    /// What it does.
    pub fn action(&self) -> LifecycleAction {
        match self {
            SoftDeleteCommand::Set { days } => LifecycleAction::SetSoftDelete(*days),
            SoftDeleteCommand::Off => LifecycleAction::SetSoftDelete(0),
            SoftDeleteCommand::Show => LifecycleAction::ShowSoftDelete,
        }
    }
}

impl RetentionCommand {
    /// What it does.
    pub fn action(&self) -> LifecycleAction {
        match self {
            RetentionCommand::Set {
                pattern,
                untagged_days,
            } => LifecycleAction::SetRetention(pb::RetentionPolicyEntry {
                pattern: pattern.clone(),
                untagged_days: *untagged_days,
            }),
            RetentionCommand::Clear { pattern } => LifecycleAction::ClearRetention(pattern.clone()),
            RetentionCommand::List => LifecycleAction::ListRetention,
        }
    }
}

impl NamespacesCommand {
    /// What it does.
    pub fn action(&self) -> LifecycleAction {
        match self {
            NamespacesCommand::Set(a) => LifecycleAction::SetNamespace(pb::SetNamespaceRequest {
                namespace: a.namespace.clone(),
                quota_bytes: a.quota,
                max_repositories: a.max_repositories,
                pulls_per_sec: a.pulls_per_sec,
                pushes_per_sec: a.pushes_per_sec,
            }),
            NamespacesCommand::Get { namespace } => {
                LifecycleAction::GetNamespace(namespace.clone())
            }
            NamespacesCommand::List => LifecycleAction::ListNamespaces,
        }
    }
}

impl PurgeArgs {
    /// What it does.
    pub fn action(&self) -> LifecycleAction {
        LifecycleAction::Purge(pb::PurgeRequest {
            filters: self.filters.clone(),
            ago: self.ago.clone(),
            untagged: self.untagged,
            keep: self.keep,
            dry_run: self.dry_run,
        })
    }
}

/// Whether `c` is a path component of an OCI repository name: `[a-z0-9]+` separated by `.`,
/// `_`, `__` or any number of `-`.
fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let sep = if b[i] == b'-' {
            b[i..].iter().take_while(|&&x| x == b'-').count()
        } else if b[i..].starts_with(b"__") {
            2
        } else if b[i] == b'.' || b[i] == b'_' {
            1
        } else {
            return false;
        };
        i += sep;
        if i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// Parses a repository name (OCI grammar: lowercase components separated by `/`, at most
/// 255 characters).
pub fn parse_repository(s: &str) -> Result<String, String> {
    if s.len() > 255 || !s.split('/').all(is_component) {
        return Err(format!(
            "invalid repository name {s:?}: lowercase [a-z0-9] components separated by '/' \
             (and '.', '_', '__' or '-' inside a component)"
        ));
    }
    Ok(s.to_owned())
}

/// Parses a namespace: one repository-name component (no `/`).
pub fn parse_namespace(s: &str) -> Result<String, String> {
    if !is_component(s) {
        return Err(format!(
            "invalid namespace {s:?}: the first component of repository names ([a-z0-9] \
             separated by '.', '_', '__' or '-', no '/')"
        ));
    }
    Ok(s.to_owned())
}

/// Parses a tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn parse_tag(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if !ok {
        return Err(format!(
            "invalid tag {s:?}: [A-Za-z0-9_] then up to 127 of [A-Za-z0-9._-]"
        ));
    }
    Ok(s.to_owned())
}

/// Checks a digest's shape, `ALGORITHM:HEX` (the server checks the rest).
fn check_digest(s: &str) -> Result<(), String> {
    match s.split_once(':') {
        Some((algo, hex))
            if !algo.is_empty()
                && algo.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b)
                })
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "invalid digest {s:?}: expected ALGORITHM:HEX, as sha256:<64 hex digits>"
        )),
    }
}

/// Parses `REPO`, `REPO:TAG` or `REPO@DIGEST`.
pub fn parse_lock_ref(s: &str) -> Result<LockRef, String> {
    if let Some((repo, digest)) = s.split_once('@') {
        check_digest(digest)?;
        return Ok(LockRef {
            repository: parse_repository(repo)?,
            tag: String::new(),
            digest: digest.to_owned(),
        });
    }
    // A tag follows the last `:` after the last `/` (a repository name has no `:`).
    match s.rsplit_once(':') {
        Some((repo, tag)) => Ok(LockRef {
            repository: parse_repository(repo)?,
            tag: parse_tag(tag)?,
            digest: String::new(),
        }),
        None => Ok(LockRef {
            repository: parse_repository(s)?,
            tag: String::new(),
            digest: String::new(),
        }),
    }
}

/// Parses `REPO@DIGEST`.
pub fn parse_manifest_ref(s: &str) -> Result<ManifestRef, String> {
    let (repo, digest) = s
        .split_once('@')
        .ok_or_else(|| format!("expected REPO@DIGEST, not {s:?}"))?;
    check_digest(digest)?;
    Ok(ManifestRef {
        repository: parse_repository(repo)?,
        digest: digest.to_owned(),
    })
}

/// Parses soft delete's window: 1 to 90 days.
pub fn parse_soft_delete_days(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(d) if (1..=MAX_SOFT_DELETE_DAYS).contains(&d) => Ok(d),
        _ => Err(format!(
            "expected a number of days from 1 to {MAX_SOFT_DELETE_DAYS}"
        )),
    }
}

/// Parses a positive whole number.
pub fn parse_positive(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

/// Parses a count limit: a whole number; `0` or `none`: no limit (0).
pub fn parse_limit(s: &str) -> Result<u64, String> {
    match s.trim() {
        "none" => Ok(0),
        n => n
            .parse()
            .map_err(|_| "expected a whole number, or 0 or none for no limit".into()),
    }
}

/// Parses a rate limit (requests per second): as [`parse_limit`], at most 2^32 - 1.
pub fn parse_rate(s: &str) -> Result<u32, String> {
    u32::try_from(parse_limit(s)?).map_err(|_| "the rate is too large".into())
}

/// Parses a size: bytes, or a number with a unit `B`, `KB`, `MB`, `GB`, `TB` (powers of
/// 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024), case-insensitive; `0` or `none`: no
/// limit (0).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size {s:?}: bytes, or a number with B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
        )
    };
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(0);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// Checks a purge filter's shape: `REPO_REGEX:TAG_REGEX`, both non-empty.
pub fn parse_filter(s: &str) -> Result<String, String> {
    match s.split_once(':') {
        Some((repo, tag)) if !repo.is_empty() && !tag.is_empty() => Ok(s.to_owned()),
        _ => Err(format!(
            "invalid filter {s:?}: expected REPO_REGEX:TAG_REGEX, both non-empty"
        )),
    }
}

/// Checks an `--ago` duration: `0`, or numbers each followed by `d`, `h`, `m` or `s`.
pub fn parse_ago(s: &str) -> Result<String, String> {
    let bad =
        || format!("invalid duration {s:?}: use numbers with d, h, m or s, as 2d, 1d12h or 30m");
    if s == "0" {
        return Ok(s.to_owned());
    }
    let mut digits = 0;
    for c in s.chars() {
        match c {
            '0'..='9' => digits += 1,
            'd' | 'h' | 'm' | 's' if digits > 0 => digits = 0,
            _ => return Err(bad()),
        }
    }
    if s.is_empty() || digits > 0 {
        return Err(bad());
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Action, CHANGE_TIMEOUT, Cli, READ_TIMEOUT};
    use clap::Parser;

    fn action(args: &[&str]) -> Action {
        let mut all = vec!["clusterctl"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().action()
    }

    fn refused(args: &[&str]) -> bool {
        let mut all = vec!["clusterctl"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).is_err()
    }

    #[test]
    fn repos_commands_parse_into_requests() {
        assert_eq!(
            action(&[
                "repos",
                "update",
                "app:v1",
                "--write-enabled",
                "false",
                "--list-enabled",
                "true"
            ]),
            Action::Lifecycle(LifecycleAction::UpdateAttributes(
                pb::UpdateAttributesRequest {
                    repository: "app".into(),
                    tag: "v1".into(),
                    digest: String::new(),
                    write_enabled: Some(false),
                    delete_enabled: None,
                    read_enabled: None,
                    list_enabled: Some(true),
                }
            ))
        );
        assert_eq!(
            action(&["repos", "show", "team/app"]),
            Action::Lifecycle(LifecycleAction::ShowAttributes("team/app".into()))
        );
        assert_eq!(
            action(&["repos", "deleted", "app"]),
            Action::Lifecycle(LifecycleAction::Deleted("app".into()))
        );
        let d = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            action(&["repos", "restore", &format!("app@{d}"), "--tag", "v9"]),
            Action::Lifecycle(LifecycleAction::Restore(pb::RestoreManifestRequest {
                repository: "app".into(),
                digest: d.clone(),
                tag: "v9".into(),
            }))
        );
        for bad in [
            &["repos", "update", "app:v1"][..],
            &["repos", "update", "app:v1", "--write-enabled", "maybe"],
            &["repos", "update", "App", "--write-enabled", "false"],
            &["repos", "restore", "app:v1"],
            &["repos", "restore", &format!("app@{d}"), "--tag", "-x"],
            &["repos", "deleted"],
        ] {
            assert!(refused(bad), "{bad:?}");
        }
    }

    #[test]
    fn soft_delete_retention_and_namespaces_parse() {
        assert_eq!(
            action(&["soft-delete", "set", "--days", "7"]),
            Action::Lifecycle(LifecycleAction::SetSoftDelete(7))
        );
        assert_eq!(
            action(&["soft-delete", "off"]),
            Action::Lifecycle(LifecycleAction::SetSoftDelete(0))
        );
        assert_eq!(
            action(&["soft-delete", "show"]),
            Action::Lifecycle(LifecycleAction::ShowSoftDelete)
        );
        assert_eq!(
            action(&["retention", "set", "**", "--untagged-days", "30"]),
            Action::Lifecycle(LifecycleAction::SetRetention(pb::RetentionPolicyEntry {
                pattern: "**".into(),
                untagged_days: 30,
            }))
        );
        assert_eq!(
            action(&["retention", "clear", "team/**"]),
            Action::Lifecycle(LifecycleAction::ClearRetention("team/**".into()))
        );
        assert_eq!(
            action(&["retention", "list"]),
            Action::Lifecycle(LifecycleAction::ListRetention)
        );
        assert_eq!(
            action(&[
                "namespaces",
                "set",
                "team",
                "--quota",
                "10GiB",
                "--pulls-per-sec",
                "none"
            ]),
            Action::Lifecycle(LifecycleAction::SetNamespace(pb::SetNamespaceRequest {
                namespace: "team".into(),
                quota_bytes: Some(10 << 30),
                max_repositories: None,
                pulls_per_sec: Some(0),
                pushes_per_sec: None,
            }))
        );
        assert_eq!(
            action(&["namespaces", "get", "team"]),
            Action::Lifecycle(LifecycleAction::GetNamespace("team".into()))
        );
        assert_eq!(
            action(&["namespaces", "list"]),
            Action::Lifecycle(LifecycleAction::ListNamespaces)
        );
        for bad in [
            &["soft-delete", "set", "--days", "91"][..],
            &["soft-delete", "set"],
            &["retention", "set", "**"],
            &["retention", "set", "**", "--untagged-days", "0"],
            &["retention", "set", "Team", "--untagged-days", "1"],
            &["namespaces", "set", "team"],
            &["namespaces", "set", "team/a", "--quota", "1"],
            &["namespaces", "set", "team", "--quota", "1.5GB"],
        ] {
            assert!(refused(bad), "{bad:?}");
        }
    }

    #[test]
    fn purge_parses_and_gets_the_change_timeout() {
        let cli = Cli::try_parse_from([
            "clusterctl",
            "purge",
            "--filter",
            "app:.*",
            "--filter",
            "team/.*:^v1",
            "--ago",
            "2d",
            "--untagged",
            "--keep",
            "3",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(
            cli.action(),
            Action::Lifecycle(LifecycleAction::Purge(pb::PurgeRequest {
                filters: vec!["app:.*".into(), "team/.*:^v1".into()],
                ago: "2d".into(),
                untagged: true,
                keep: 3,
                dry_run: true,
            }))
        );
        assert_eq!(cli.timeout(), CHANGE_TIMEOUT);
        let Action::Lifecycle(LifecycleAction::Purge(p)) = action(&["purge", "--filter", "a:b"])
        else {
            panic!("not a purge");
        };
        assert_eq!(
            (p.ago.as_str(), p.untagged, p.keep, p.dry_run),
            ("0", false, 0, false)
        );
        let show = Cli::try_parse_from(["clusterctl", "repos", "show", "app"]).unwrap();
        assert_eq!(show.timeout(), READ_TIMEOUT);
        for bad in [
            &["purge"][..],
            &["purge", "--filter", "app"],
            &["purge", "--filter", "a:b", "--ago", "2"],
            &["purge", "--filter", "a:b", "--keep", "-1"],
        ] {
            assert!(refused(bad), "{bad:?}");
        }
    }

    #[test]
    fn repository_names_follow_the_oci_grammar() {
        for ok in ["app", "team/app", "a.b/c_d/e__f/g--h", "x0"] {
            assert!(parse_repository(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "App",
            "team//app",
            "/app",
            "app/",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a:b",
        ] {
            assert!(parse_repository(bad).is_err(), "{bad}");
        }
        assert!(parse_namespace("team").is_ok());
        assert!(parse_namespace("team/a").is_err());
    }

    #[test]
    fn lock_refs_name_a_repository_a_tag_or_a_manifest() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse_lock_ref("team/app").unwrap(),
            LockRef {
                repository: "team/app".into(),
                tag: String::new(),
                digest: String::new()
            }
        );
        let t = parse_lock_ref("team/app:v1.2").unwrap();
        assert_eq!(
            (t.repository.as_str(), t.tag.as_str()),
            ("team/app", "v1.2")
        );
        let m = parse_lock_ref(&format!("app@{d}")).unwrap();
        assert_eq!(
            (m.repository.as_str(), m.digest.as_str(), m.tag.as_str()),
            ("app", d.as_str(), "")
        );
        for bad in ["app:", "app:-x", "app@sha256:xyz", "App:v1", "app@"] {
            assert!(parse_lock_ref(bad).is_err(), "{bad}");
        }
        assert!(parse_manifest_ref(&format!("app@{d}")).is_ok());
        assert!(parse_manifest_ref("app:v1").is_err());
    }

    #[test]
    fn sizes_take_decimal_and_binary_units_and_none() {
        assert_eq!(parse_size("100000").unwrap(), 100_000);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("2 kib").unwrap(), 2048);
        assert_eq!(parse_size("none").unwrap(), 0);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in ["", "GiB", "1.5GiB", "10XB", "-1", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_limit("none").unwrap(), 0);
        assert!(parse_limit("-1").is_err());
        assert!(parse_rate("5000000000").is_err());
    }

    #[test]
    fn days_filters_and_durations_are_checked() {
        assert_eq!(parse_soft_delete_days("7").unwrap(), 7);
        for bad in ["0", "91", "x", "-1"] {
            assert!(parse_soft_delete_days(bad).is_err(), "{bad}");
        }
        assert!(parse_positive("0").is_err());
        assert!(parse_filter("app:.*").is_ok());
        assert!(parse_filter("team/.*:^v1\\.:x").is_ok());
        for bad in ["app", ":v1", "app:"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
        for ok in ["0", "2d", "1d12h30m5s", "90m"] {
            assert!(parse_ago(ok).is_ok(), "{ok}");
        }
        for bad in ["", "2", "d", "2x", "1.5h", "-1d"] {
            assert!(parse_ago(bad).is_err(), "{bad}");
        }
    }
}
