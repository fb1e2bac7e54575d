//! Lifecycle use cases (docs/lifecycle.md): locks on repositories, tags and manifests; soft
//! delete, its recycle bin and restores; retention policies for untagged manifests; namespaces
//! and their limits; purge ([`purge`]); retention and the end of the soft-delete window,
//! which the garbage collector's passes apply ([`retention`]). Each change is validated here
//! and committed through Raft (`meta::lifecycle` holds the records and the checks applied with
//! every command); the admin service (`rpc::admin_lifecycle`), the collector and the tests
//! call these.
//!
//! Must not: decide anything the state machine decides (a lock or a quota is enforced when the
//! command applies, so it holds against concurrent writes at any node).

pub mod purge;
pub mod retention;

use std::sync::Arc;

use crate::cluster::ClusterError;
pub use crate::meta::lifecycle::AttributesUpdate;
use crate::meta::lifecycle::{
    Attributes, DeletedManifest, LifecycleCommand, LockTarget, NamespaceLimits, NamespaceUsage,
    RetentionPolicy,
};
use crate::meta::{Command, CommandV1, MetaError, Rejection, WriteResult};
use crate::registry::Registry;
use crate::types::time::now_ms;
use crate::types::{Digest, ErrorKind, RepositoryName, Tag};

/// Longest recycle window of soft delete, in days (ACR's).
pub const MAX_SOFT_DELETE_DAYS: u16 = 90;

/// Errors of the lifecycle use cases.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// A malformed argument.
    #[error("{0}")]
    Invalid(String),
    /// The repository, tag, manifest, deleted manifest or policy does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A lock or a limit forbids it.
    #[error("{0}")]
    Refused(String),
    /// Reading the state failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The change could not be committed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl LifecycleError {
    /// The broad class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LifecycleError::Invalid(_) => ErrorKind::Invalid,
            LifecycleError::NotFound(_) => ErrorKind::NotFound,
            LifecycleError::Refused(_) => ErrorKind::Conflict,
            LifecycleError::Meta(MetaError::DiskFull(_)) => ErrorKind::Exhausted,
            LifecycleError::Meta(_) => ErrorKind::Internal,
            LifecycleError::Cluster(e) => e.kind(),
        }
    }

    fn of(r: Rejection) -> LifecycleError {
        match r {
            Rejection::Locked(why) | Rejection::QuotaExceeded(why) => LifecycleError::Refused(why),
            Rejection::NameUnknown(repo) => {
                LifecycleError::NotFound(format!("repository {repo} does not exist"))
            }
            other => LifecycleError::NotFound(other.to_string()),
        }
    }
}

/// A soft-deleted manifest, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedEntry {
    /// Its repository.
    pub repo: RepositoryName,
    /// Its digest.
    pub digest: Digest,
    /// What the bin keeps of it.
    pub deleted: DeletedManifest,
}

/// The lifecycle use cases over this node's registry.
#[derive(Clone)]
pub struct Lifecycle {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").finish_non_exhaustive()
    }
}

/// Parses a repository name for an admin call.
pub fn parse_repo(name: &str) -> Result<RepositoryName, LifecycleError> {
    RepositoryName::parse(name)
        .map_err(|e| LifecycleError::Invalid(format!("invalid repository name {name:?}: {e}")))
}

/// Parses what in a repository an admin call names: nothing (the repository), a tag, or a
/// manifest digest.
pub fn parse_target(tag: Option<&str>, digest: Option<&str>) -> Result<LockTarget, LifecycleError> {
    match (tag, digest) {
        (None, None) => Ok(LockTarget::Repository),
        (Some(t), None) => Tag::parse(t)
            .map(LockTarget::Tag)
            .map_err(|e| LifecycleError::Invalid(format!("invalid tag {t:?}: {e}"))),
        (None, Some(d)) => Digest::parse(d)
            .map(LockTarget::Manifest)
            .map_err(|e| LifecycleError::Invalid(format!("invalid digest {d:?}: {e}"))),
        (Some(_), Some(_)) => Err(LifecycleError::Invalid(
            "name a tag or a digest, not both".into(),
        )),
    }
}

/// Checks a namespace name: one repository-name component (no `/`).
pub fn parse_namespace(ns: &str) -> Result<String, LifecycleError> {
    if ns.contains('/') || RepositoryName::parse(ns).is_err() {
        return Err(LifecycleError::Invalid(format!(
            "invalid namespace {ns:?}: it is the first component of repository names \
             ([a-z0-9] separated by '.', '_', '__' or '-', no '/')"
        )));
    }
    Ok(ns.to_string())
}

impl Lifecycle {
    /// The use cases over `registry`.
    pub fn new(registry: Arc<Registry>) -> Lifecycle {
        Lifecycle { registry }
    }

    async fn write(&self, cmd: LifecycleCommand) -> Result<(), LifecycleError> {
        let cmd = Command::V1(CommandV1::Lifecycle(Box::new(cmd)));
        match self.registry.cluster().write(cmd).await? {
            WriteResult::Rejected(r) => Err(LifecycleError::of(r)),
            _ => Ok(()),
        }
    }

    /// Reads what the cluster committed (a change made at another node included); a node cut
    /// off from the leader answers from its own state.
    async fn catch_up(&self) {
        let _ = self.registry.cluster().catch_up_with_leader().await;
    }

    /// Changes the attributes of a repository, tag or manifest; returns them as they are now.
    /// The change is merged when it applies, so changes made at once at other nodes to other
    /// attributes stay.
    ///
    /// Errors: [`LifecycleError::NotFound`] when it does not exist.
    pub async fn update_attributes(
        &self,
        repo: &RepositoryName,
        target: LockTarget,
        update: AttributesUpdate,
    ) -> Result<Attributes, LifecycleError> {
        self.write(LifecycleCommand::UpdateAttributes {
            repo: repo.clone(),
            target: target.clone(),
            update,
        })
        .await?;
        // This node applied the change before the write answered.
        Ok(self.registry.meta().attributes(repo, &target)?)
    }

    /// The attributes of a repository and of everything in it that has some set.
    pub async fn attributes(
        &self,
        repo: &RepositoryName,
    ) -> Result<(Attributes, Vec<(LockTarget, Attributes)>), LifecycleError> {
        self.catch_up().await;
        let meta = self.registry.meta();
        let own = meta.attributes(repo, &LockTarget::Repository)?;
        let all = meta
            .all_attributes(repo)
            .await?
            .into_iter()
            .filter(|(t, _)| *t != LockTarget::Repository)
            .collect();
        Ok((own, all))
    }

    /// Turns soft delete on with a recycle window of `days` (1 to 90), or off (`None`).
    pub async fn set_soft_delete(&self, days: Option<u16>) -> Result<(), LifecycleError> {
        if let Some(d) = days
            && !(1..=MAX_SOFT_DELETE_DAYS).contains(&d)
        {
            return Err(LifecycleError::Invalid(format!(
                "soft_delete.retention_days must be 1 to {MAX_SOFT_DELETE_DAYS}, not {d}"
            )));
        }
        self.write(LifecycleCommand::SetSoftDelete {
            retention_days: days,
        })
        .await
    }

    /// The recycle window of soft delete, in days (`None`: off).
    pub async fn soft_delete(&self) -> Result<Option<u16>, LifecycleError> {
        self.catch_up().await;
        Ok(self
            .registry
            .meta()
            .soft_delete()?
            .map(|s| s.retention_days))
    }

    /// The soft-deleted manifests of a repository (or of every one).
    pub async fn deleted(
        &self,
        repo: Option<&RepositoryName>,
    ) -> Result<Vec<DeletedEntry>, LifecycleError> {
        self.catch_up().await;
        Ok(self
            .registry
            .meta()
            .deleted_manifests(repo)
            .await?
            .into_iter()
            .map(|(repo, digest, deleted)| DeletedEntry {
                repo,
                digest,
                deleted,
            })
            .collect())
    }

    /// Restores a soft-deleted manifest with its old tags (those not taken meanwhile), or
    /// with `tag` only.
    ///
    /// Errors: [`LifecycleError::NotFound`] when it is not in the recycle bin (or a child
    /// manifest of an index is not in the repository: restore it first);
    /// [`LifecycleError::Refused`] when a lock forbids it.
    pub async fn restore(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        tag: Option<Tag>,
    ) -> Result<(), LifecycleError> {
        self.write(LifecycleCommand::Restore {
            repo: repo.clone(),
            digest: digest.clone(),
            tag,
            at_ms: now_ms(),
        })
        .await
        .map_err(|e| match e {
            LifecycleError::NotFound(why) => LifecycleError::NotFound(format!(
                "{repo}@{digest} cannot be restored: {why} (a deleted manifest stays \
                 restorable for the soft-delete window; an index needs its children first)"
            )),
            e => e,
        })
    }

    /// Sets the retention policy of untagged manifests in the repositories `pattern`
    /// matches (`**`: every repository).
    pub async fn set_retention(
        &self,
        pattern: &str,
        untagged_days: u32,
    ) -> Result<(), LifecycleError> {
        crate::meta::policy::validate_pattern(pattern)
            .map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        if untagged_days == 0 {
            return Err(LifecycleError::Invalid(
                "retention.untagged_days must be at least 1".into(),
            ));
        }
        self.write(LifecycleCommand::SetRetention {
            pattern: pattern.to_string(),
            policy: RetentionPolicy { untagged_days },
        })
        .await
    }

    /// Removes the retention policy of `pattern`.
    pub async fn clear_retention(&self, pattern: &str) -> Result<(), LifecycleError> {
        self.write(LifecycleCommand::ClearRetention {
            pattern: pattern.to_string(),
        })
        .await
        .map_err(|e| match e {
            LifecycleError::NotFound(_) => {
                LifecycleError::NotFound(format!("no retention policy for pattern {pattern:?}"))
            }
            e => e,
        })
    }

    /// Every retention policy, by pattern.
    pub async fn retention_policies(
        &self,
    ) -> Result<Vec<(String, RetentionPolicy)>, LifecycleError> {
        self.catch_up().await;
        Ok(self.registry.meta().retention_policies().await?)
    }

    /// Sets (replaces) a namespace's limits. Builds the reference counts first on a database
    /// that has none (usage is maintained with them).
    pub async fn set_namespace(
        &self,
        namespace: &str,
        limits: NamespaceLimits,
    ) -> Result<(), LifecycleError> {
        let namespace = parse_namespace(namespace)?;
        crate::gc::ensure_counted(&self.registry).await?;
        self.write(LifecycleCommand::SetNamespace { namespace, limits })
            .await
    }

    /// A namespace's limits and usage (`None`: no limits and no repositories).
    pub async fn namespace(
        &self,
        namespace: &str,
    ) -> Result<Option<(NamespaceLimits, NamespaceUsage)>, LifecycleError> {
        let namespace = parse_namespace(namespace)?;
        self.catch_up().await;
        Ok(self.registry.meta().namespace(&namespace)?)
    }

    /// Every namespace with limits or repositories.
    pub async fn namespaces(
        &self,
    ) -> Result<Vec<(String, NamespaceLimits, NamespaceUsage)>, LifecycleError> {
        self.catch_up().await;
        Ok(self.registry.meta().namespaces().await?)
    }
}
