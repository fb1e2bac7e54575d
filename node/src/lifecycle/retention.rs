//! What the garbage collector's passes apply besides collecting blobs (docs/lifecycle.md):
//! retention of untagged manifests (ACR's retention policy) and the end of the soft-delete
//! window (the recycle bin's entries whose window ended are purged).
//!
//! Retention: for every repository whose most specific matching retention pattern
//! (`meta::policy::most_specific`) sets `untagged_days = N`, the manifests [`untagged`]
//! selects (no tag, not a child of an index stored in the repository, not a referrer) that
//! were pushed N days or more before `now_ms` are deleted through
//! `Lifecycle::delete_manifest`, so soft delete applies as to any delete. A repository locked
//! for deletes and a locked manifest are skipped and reported.
//!
//! Both walk the repositories a page at a time and read one repository's tags, manifests and
//! recycle bin at a time: never every manifest of the registry at once.
//!
//! Must not: decide what the state machine re-checks (a lock, the end of a window): a
//! proposal it refuses is skipped, not an error. `now_ms` is the caller's clock (the
//! collector's), so that tests can run a pass days ahead.

use super::purge::{Skipped, untagged};
use super::{Lifecycle, LifecycleError};
use crate::meta::lifecycle::{DAY_MS, LifecycleCommand, LockTarget, RetentionPolicy};
use crate::meta::policy::most_specific;
use crate::meta::{Command, CommandV1, MetaError, MetaReader, Page, WriteResult};
use crate::types::{Digest, RepositoryName};

/// Repository names read at a time.
const REPO_PAGE: usize = 256;

/// Deleted and skipped manifests a [`RetentionReport`] lists at most (it counts them all).
pub const MAX_LISTED: usize = 100;

/// What retention deleted (or, dry, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Whether it only looked.
    pub dry_run: bool,
    /// Untagged manifests deleted.
    pub deleted: u64,
    /// Untagged manifests past their retention left because of a lock (or a delete the state
    /// machine refused).
    pub skipped: u64,
    /// The first [`MAX_LISTED`] manifests deleted.
    pub first_deleted: Vec<(RepositoryName, Digest)>,
    /// The first [`MAX_LISTED`] manifests skipped, and why.
    pub first_skipped: Vec<Skipped>,
}

impl RetentionReport {
    fn deleted(&mut self, repo: &RepositoryName, digest: &Digest) {
        self.deleted += 1;
        if self.first_deleted.len() < MAX_LISTED {
            self.first_deleted.push((repo.clone(), digest.clone()));
        }
    }

    fn skipped(&mut self, s: Skipped) {
        tracing::info!(what = %s.what, why = %s.why, "retention skipped a manifest");
        self.skipped += 1;
        if self.first_skipped.len() < MAX_LISTED {
            self.first_skipped.push(s);
        }
    }
}

impl Lifecycle {
    /// Applies the retention policies at `now_ms` (see the module documentation): deletes the
    /// untagged manifests past their repository's retention, or with `dry_run` only counts
    /// them.
    ///
    /// Errors: [`LifecycleError::Meta`] when the state cannot be read,
    /// [`LifecycleError::Cluster`] when a delete cannot be committed (the pass stops there;
    /// what was deleted stays deleted).
    pub async fn apply_retention(
        &self,
        now_ms: u64,
        dry_run: bool,
    ) -> Result<RetentionReport, LifecycleError> {
        let mut report = RetentionReport {
            dry_run,
            ..RetentionReport::default()
        };
        self.catch_up().await;
        let meta = self.registry.meta();
        let policies = meta.retention_policies().await?;
        if policies.is_empty() {
            return Ok(report);
        }
        let mut walk = RepositoryWalk::default();
        while let Some(page) = walk.next_page(meta).await? {
            for repo in page {
                let Some(policy) = policy_of(&policies, repo.as_str()) else {
                    continue;
                };
                let pushed_by_ms = now_ms.saturating_sub(u64::from(policy.untagged_days) * DAY_MS);
                self.retain(&repo, pushed_by_ms, dry_run, &mut report)
                    .await?;
            }
        }
        Ok(report)
    }

    /// Deletes the untagged manifests of one repository pushed at or before `pushed_by_ms`.
    async fn retain(
        &self,
        repo: &RepositoryName,
        pushed_by_ms: u64,
        dry_run: bool,
        report: &mut RetentionReport,
    ) -> Result<(), LifecycleError> {
        let meta = self.registry.meta();
        let tags = meta.tag_records(repo).await?;
        let manifests = meta.manifest_summaries(repo).await?;
        let expired = untagged(&manifests, &tags, pushed_by_ms);
        if expired.is_empty() {
            return Ok(());
        }
        if !meta.attributes(repo, &LockTarget::Repository)?.deletable() {
            for m in expired {
                report.skipped(Skipped {
                    what: format!("{repo}@{}", m.digest),
                    why: "the repository is locked for deletes".into(),
                });
            }
            return Ok(());
        }
        for m in expired {
            match self
                .delete_manifest(repo, &m.digest, pushed_by_ms, dry_run)
                .await?
            {
                Some(s) => report.skipped(s),
                None => report.deleted(repo, &m.digest),
            }
        }
        Ok(())
    }

    /// Ends the recycle window of the soft-deleted manifests whose window ended by `now_ms`:
    /// proposes `PurgeDeleted` for each (the state machine re-checks the window; a manifest
    /// restored meanwhile is left), after which their blobs are collectable. Returns how many
    /// were purged (dry: how many would be).
    ///
    /// Errors: [`LifecycleError::Meta`] when the state cannot be read,
    /// [`LifecycleError::Cluster`] when a purge cannot be committed.
    pub async fn end_recycle_windows(
        &self,
        now_ms: u64,
        dry_run: bool,
    ) -> Result<u64, LifecycleError> {
        self.catch_up().await;
        let meta = self.registry.meta();
        let mut purged = 0u64;
        let mut walk = RepositoryWalk::default();
        while let Some(page) = walk.next_page(meta).await? {
            for repo in page {
                for (repo, digest, deleted) in meta.deleted_manifests(Some(&repo)).await? {
                    if deleted.expires_ms > now_ms {
                        continue;
                    }
                    if dry_run {
                        purged += 1;
                        continue;
                    }
                    let cmd = LifecycleCommand::PurgeDeleted {
                        repo: repo.clone(),
                        digest: digest.clone(),
                        at_ms: now_ms,
                    };
                    let cmd = Command::V1(CommandV1::Lifecycle(Box::new(cmd)));
                    match self.registry.cluster().write(cmd).await? {
                        WriteResult::Rejected(r) => {
                            tracing::debug!(repo = %repo, %digest, reason = %r,
                                "left a soft-deleted manifest in the recycle bin");
                        }
                        _ => purged += 1,
                    }
                }
            }
        }
        Ok(purged)
    }
}

/// Walks the repositories, [`REPO_PAGE`] names at a time, in name order.
#[derive(Default)]
pub(super) struct RepositoryWalk {
    /// The last name read.
    last: Option<String>,
    done: bool,
}

impl RepositoryWalk {
    /// The next page of repositories (`None`: the walk is over).
    pub(super) async fn next_page(
        &mut self,
        meta: &MetaReader,
    ) -> Result<Option<Vec<RepositoryName>>, MetaError> {
        if self.done {
            return Ok(None);
        }
        let page = Page {
            n: Some(REPO_PAGE),
            last: self.last.take(),
        };
        let (names, more) = meta.repositories(page).await?;
        self.done = !more || names.is_empty();
        self.last = names.last().cloned();
        Ok(Some(
            names
                .iter()
                .filter_map(|n| RepositoryName::parse(n).ok())
                .collect(),
        ))
    }
}

/// The retention policy of `repo`: that of the most specific matching pattern.
fn policy_of(policies: &[(String, RetentionPolicy)], repo: &str) -> Option<RetentionPolicy> {
    let best = most_specific(policies.iter().map(|(p, _)| p.as_str()), repo)?;
    policies.iter().find(|(p, _)| p == best).map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_pattern_sets_the_retention() {
        let policies = vec![
            ("**".to_string(), RetentionPolicy { untagged_days: 7 }),
            ("team/*".to_string(), RetentionPolicy { untagged_days: 1 }),
            (
                "team/keep".to_string(),
                RetentionPolicy { untagged_days: 30 },
            ),
        ];
        let days = |repo: &str| policy_of(&policies, repo).map(|p| p.untagged_days);
        assert_eq!(days("other"), Some(7));
        assert_eq!(days("team/app"), Some(1));
        assert_eq!(days("team/keep"), Some(30));
        assert_eq!(days("team/a/b"), Some(7));
        assert_eq!(policy_of(&policies[1..], "other"), None);
    }
}
