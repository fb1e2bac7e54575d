//! `clusterctl purge`, as ACR's `acr purge`: deletes the tags that match a filter and are
//! older than a duration (keeping the newest N of each repository), and with `--untagged` the
//! manifests left without tags; through the same Raft commands as the API's deletes (so soft
//! delete, locks and garbage collection apply as for any delete). Also the selection of
//! untagged manifests that retention uses.

use std::collections::BTreeSet;
use std::time::Duration;

use regex::Regex;

use super::{Lifecycle, LifecycleError};
use crate::meta::lifecycle::{LifecycleCommand, LockTarget};
use crate::meta::{Command, CommandV1, ManifestSummary, Rejection, TagRecord, WriteResult};
use crate::types::time::now_ms;
use crate::types::{Digest, RepositoryName, Tag};

/// Most filters one purge takes.
pub const MAX_FILTERS: usize = 32;

/// One `REPO_REGEX:TAG_REGEX` filter. Both are regular expressions matched anywhere in the
/// name (as ACR's, which are Go's `MatchString`): anchor them with `^…$` to match whole names.
#[derive(Debug, Clone)]
pub struct PurgeFilter {
    repo: Regex,
    tag: Regex,
}

impl PurgeFilter {
    /// Parses `REPO_REGEX:TAG_REGEX` (split at the first `:`).
    pub fn parse(filter: &str) -> Result<PurgeFilter, LifecycleError> {
        let bad =
            |why: String| LifecycleError::Invalid(format!("invalid filter {filter:?}: {why}"));
        let (repo, tag) = filter
            .split_once(':')
            .ok_or_else(|| bad("it must be REPO_REGEX:TAG_REGEX".into()))?;
        if repo.is_empty() || tag.is_empty() {
            return Err(bad("both regular expressions must be non-empty".into()));
        }
        let compile = |re: &str| {
            regex::RegexBuilder::new(re)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| bad(e.to_string()))
        };
        Ok(PurgeFilter {
            repo: compile(repo)?,
            tag: compile(tag)?,
        })
    }
}

/// Parses a duration as ACR's `--ago`: a sequence of numbers with units `d`, `h`, `m`, `s`
/// (`2d`, `1d12h`, `90m`); `0` is now.
pub fn parse_ago(s: &str) -> Result<Duration, LifecycleError> {
    let bad = || {
        LifecycleError::Invalid(format!(
            "invalid duration {s:?}: use numbers with d, h, m or s, as 2d, 1d12h or 30m"
        ))
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let unit = match c {
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// What to purge.
#[derive(Debug, Clone)]
pub struct PurgeRequest {
    /// At least one filter; a tag is purged when a filter matches both its repository and it.
    pub filters: Vec<PurgeFilter>,
    /// Only tags last set (and, with `untagged`, manifests pushed) longer ago than this.
    pub ago: Duration,
    /// Also delete the manifests of the matched repositories that have no tag left (not the
    /// children of an index, nor referrers: they go with what they belong to).
    pub untagged: bool,
    /// Per repository, keep the newest this many of the tags that would be purged.
    pub keep: usize,
    /// Only report what would be deleted.
    pub dry_run: bool,
}

/// Something purge left, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `repo:tag`, `repo@digest` or `repo`.
    pub what: String,
    /// Why (a lock, or a delete that failed).
    pub why: String,
}

/// Items of each kind a [`PurgeReport`] lists at most (it counts them all): the report of a
/// large purge stays small enough for one answer.
pub const MAX_LISTED: usize = 1000;

/// What a purge deleted (or, dry, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Whether it only looked.
    pub dry_run: bool,
    /// The first [`MAX_LISTED`] tags deleted: repository, tag, the manifest it pointed at.
    pub tags: Vec<(RepositoryName, Tag, Digest)>,
    /// The first [`MAX_LISTED`] untagged manifests deleted.
    pub manifests: Vec<(RepositoryName, Digest)>,
    /// The first [`MAX_LISTED`] items it left.
    pub skipped: Vec<Skipped>,
    /// How many tags it deleted.
    pub tags_total: u64,
    /// How many manifests it deleted.
    pub manifests_total: u64,
    /// How many items it left.
    pub skipped_total: u64,
}

impl PurgeReport {
    fn tag(&mut self, repo: &RepositoryName, tag: Tag, digest: Digest) {
        self.tags_total += 1;
        if self.tags.len() < MAX_LISTED {
            self.tags.push((repo.clone(), tag, digest));
        }
    }

    fn manifest(&mut self, repo: &RepositoryName, digest: &Digest) {
        self.manifests_total += 1;
        if self.manifests.len() < MAX_LISTED {
            self.manifests.push((repo.clone(), digest.clone()));
        }
    }

    fn skip(&mut self, s: Skipped) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_LISTED {
            self.skipped.push(s);
        }
    }
}

/// The manifests of a repository that no tag in `tags` points at, that are not a child of an
/// index of the repository nor a referrer, pushed at or before `pushed_by_ms`: what retention
/// and `purge --untagged` delete.
pub fn untagged<'a>(
    manifests: &'a [ManifestSummary],
    tags: &[(Tag, TagRecord)],
    pushed_by_ms: u64,
) -> Vec<&'a ManifestSummary> {
    let tagged: BTreeSet<&Digest> = tags.iter().map(|(_, t)| &t.digest).collect();
    let children: BTreeSet<&Digest> = manifests.iter().flat_map(|m| &m.children).collect();
    manifests
        .iter()
        .filter(|m| {
            !tagged.contains(&m.digest)
                && !children.contains(&m.digest)
                && m.subject.is_none()
                && m.created_ms <= pushed_by_ms
        })
        .collect()
}

impl Lifecycle {
    /// Runs a purge (see the module documentation), walking the repositories a page at a
    /// time. Locked items are skipped and reported; so is a tag set again, or a manifest
    /// tagged again, since the purge read it (the state machine checks both when the delete
    /// applies); a delete another writer made first is not an error.
    pub async fn purge(&self, req: PurgeRequest) -> Result<PurgeReport, LifecycleError> {
        if req.filters.is_empty() || req.filters.len() > MAX_FILTERS {
            return Err(LifecycleError::Invalid(format!(
                "give 1 to {MAX_FILTERS} filters"
            )));
        }
        self.catch_up().await;
        let cutoff = now_ms().saturating_sub(req.ago.as_millis() as u64);
        let meta = self.registry.meta();
        let mut report = PurgeReport {
            dry_run: req.dry_run,
            ..PurgeReport::default()
        };
        let mut walk = super::retention::RepositoryWalk::default();
        while let Some(page) = walk.next_page(meta).await? {
            for repo in page {
                let filters: Vec<&PurgeFilter> = req
                    .filters
                    .iter()
                    .filter(|f| f.repo.is_match(repo.as_str()))
                    .collect();
                if !filters.is_empty() {
                    self.purge_repository(&repo, &filters, &req, cutoff, &mut report)
                        .await?;
                }
            }
        }
        Ok(report)
    }

    async fn purge_repository(
        &self,
        repo: &RepositoryName,
        filters: &[&PurgeFilter],
        req: &PurgeRequest,
        cutoff: u64,
        report: &mut PurgeReport,
    ) -> Result<(), LifecycleError> {
        let meta = self.registry.meta();
        if !meta.attributes(repo, &LockTarget::Repository)?.deletable() {
            report.skip(Skipped {
                what: repo.to_string(),
                why: "the repository is locked for deletes".into(),
            });
            return Ok(());
        }
        let mut tags = meta.tag_records(repo).await?;
        let mut matched: Vec<(Tag, TagRecord)> = tags
            .iter()
            .filter(|(t, r)| {
                r.updated_ms <= cutoff && filters.iter().any(|f| f.tag.is_match(t.as_str()))
            })
            .cloned()
            .collect();
        // Newest first; the first `keep` stay.
        matched.sort_by(|a, b| b.1.updated_ms.cmp(&a.1.updated_ms).then(a.0.cmp(&b.0)));
        for (tag, record) in matched.into_iter().skip(req.keep) {
            let what = format!("{repo}:{tag}");
            if !meta
                .attributes(repo, &LockTarget::Tag(tag.clone()))?
                .deletable()
            {
                report.skip(Skipped {
                    what,
                    why: "the tag is locked".into(),
                });
                continue;
            }
            if !req.dry_run {
                let cmd = LifecycleCommand::DeleteTagIf {
                    repo: repo.clone(),
                    tag: tag.clone(),
                    digest: record.digest.clone(),
                    updated_ms: record.updated_ms,
                };
                let cmd = Command::V1(CommandV1::Lifecycle(Box::new(cmd)));
                match self.registry.cluster().write(cmd).await? {
                    WriteResult::Rejected(Rejection::TagUnknown(_)) => continue,
                    WriteResult::Rejected(r) => {
                        report.skip(Skipped {
                            what,
                            why: r.to_string(),
                        });
                        continue;
                    }
                    _ => {}
                }
            }
            tags.retain(|(t, _)| t != &tag);
            report.tag(repo, tag, record.digest);
        }
        if req.untagged {
            let manifests = meta.manifest_summaries(repo).await?;
            for m in untagged(&manifests, &tags, cutoff) {
                match self
                    .delete_manifest(repo, &m.digest, cutoff, req.dry_run)
                    .await?
                {
                    Some(s) => report.skip(s),
                    None => report.manifest(repo, &m.digest),
                }
            }
        }
        Ok(())
    }

    /// Deletes an untagged manifest pushed at or before `pushed_by_ms` as the API's DELETE
    /// does (soft when soft delete is on), on the condition that it is still untagged when
    /// the delete applies (`RemoveUntagged`); `Some` when it was left (locked, or tagged or
    /// named by an index since it was read). A manifest deleted meanwhile counts as deleted.
    pub(crate) async fn delete_manifest(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        pushed_by_ms: u64,
        dry_run: bool,
    ) -> Result<Option<Skipped>, LifecycleError> {
        let what = format!("{repo}@{digest}");
        let meta = self.registry.meta();
        if !meta
            .attributes(repo, &LockTarget::Manifest(digest.clone()))?
            .deletable()
        {
            return Ok(Some(Skipped {
                what,
                why: "the manifest is locked".into(),
            }));
        }
        if dry_run {
            return Ok(None);
        }
        let cmd = LifecycleCommand::RemoveUntagged {
            repo: repo.clone(),
            digest: digest.clone(),
            pushed_by_ms,
            at_ms: now_ms(),
        };
        let cmd = Command::V1(CommandV1::Lifecycle(Box::new(cmd)));
        match self.registry.cluster().write(cmd).await? {
            WriteResult::Rejected(Rejection::ManifestUnknown(_)) | WriteResult::Done => Ok(None),
            WriteResult::Rejected(r) => Ok(Some(Skipped {
                what,
                why: r.to_string(),
            })),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ago_reads_days_hours_minutes_seconds() {
        assert_eq!(parse_ago("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_ago("2d").unwrap(), Duration::from_secs(2 * 86_400));
        assert_eq!(
            parse_ago("1d12h30m5s").unwrap(),
            Duration::from_secs(131_405)
        );
        for bad in ["", "2", "d", "2x", "1.5h", "-1d", "99999999999999999999d"] {
            assert!(parse_ago(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_split_at_the_first_colon_and_match_anywhere() {
        let f = PurgeFilter::parse("team/.*:^v1\\.").unwrap();
        assert!(f.repo.is_match("team/app") && f.repo.is_match("my-team/app"));
        assert!(f.tag.is_match("v1.2") && !f.tag.is_match("xv1.2"));
        for bad in ["nocolon", ":tag", "repo:", "(:x"] {
            assert!(PurgeFilter::parse(bad).is_err(), "{bad}");
        }
    }

    fn summary(
        i: u8,
        created_ms: u64,
        children: Vec<Digest>,
        subject: Option<Digest>,
    ) -> ManifestSummary {
        ManifestSummary {
            digest: Digest::sha256_of(&[i]),
            created_ms,
            children,
            subject,
        }
    }

    /// Untagged means: no tag, not an index's child, not a referrer, old enough.
    #[test]
    fn untagged_leaves_tagged_children_referrers_and_recent_manifests() {
        let d = |i: u8| Digest::sha256_of(&[i]);
        let manifests = vec![
            summary(1, 10, vec![], None),       // tagged
            summary(2, 10, vec![d(3)], None),   // untagged index
            summary(3, 10, vec![], None),       // its child
            summary(4, 10, vec![], Some(d(1))), // a referrer
            summary(5, 10, vec![], None),       // untagged
            summary(6, 100, vec![], None),      // untagged, too recent
        ];
        let tags = vec![(
            Tag::parse("v1").unwrap(),
            TagRecord {
                digest: d(1),
                updated_ms: 10,
            },
        )];
        let got: Vec<Digest> = untagged(&manifests, &tags, 50)
            .into_iter()
            .map(|m| m.digest.clone())
            .collect();
        assert_eq!(got, vec![d(2), d(5)]);
    }
}
