//! The lifecycle side of `berth.admin.v1.Admin`: the RPCs behind `clusterctl repos`,
//! `soft-delete`, `retention`, `namespaces` and `purge` ([`LifecycleRpc`]).
//!
//! Adapters over `lifecycle::Lifecycle` (every change a Raft command, every check made when
//! it applies): decode, call, encode. The caller was admitted, and a change is recorded in
//! the audit log, by `admin.rs` before these run. Errors become a `Status` through
//! `LifecycleError::kind()` (`status.rs`).

use berth_proto::admin as pb;
use tonic::Status;

use crate::lifecycle::purge::{PurgeFilter, PurgeReport, PurgeRequest, parse_ago};
use crate::lifecycle::{
    AttributesUpdate, DeletedEntry, Lifecycle, LifecycleError, parse_repo, parse_target,
};
use crate::meta::lifecycle::{Attributes, LockTarget, NamespaceLimits, NamespaceUsage};
use crate::types::{Digest, Tag};

/// The lifecycle RPCs of this node.
pub(super) struct LifecycleRpc {
    lifecycle: Lifecycle,
}

/// An empty string as `None`.
fn given(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The wire form of attributes.
fn attributes_message(a: Attributes) -> pb::Attributes {
    pb::Attributes {
        write_enabled: a.write_enabled,
        delete_enabled: a.delete_enabled,
        read_enabled: a.read_enabled,
        list_enabled: a.list_enabled,
    }
}

/// The wire form of what attributes are set on, in `repository`.
fn entry_message(repository: &str, target: LockTarget, a: Attributes) -> pb::AttributesEntry {
    let (tag, digest) = match target {
        LockTarget::Repository => (String::new(), String::new()),
        LockTarget::Tag(t) => (t.to_string(), String::new()),
        LockTarget::Manifest(d) => (String::new(), d.to_string()),
    };
    pb::AttributesEntry {
        repository: repository.to_string(),
        tag,
        digest,
        attributes: Some(attributes_message(a)),
    }
}

fn deleted_message(e: DeletedEntry) -> pb::DeletedManifest {
    pb::DeletedManifest {
        repository: e.repo.to_string(),
        digest: e.digest.to_string(),
        tags: e.deleted.tags.iter().map(ToString::to_string).collect(),
        deleted_ms: e.deleted.deleted_ms,
        expires_ms: e.deleted.expires_ms,
    }
}

fn retention_message(
    policies: Vec<(String, crate::meta::lifecycle::RetentionPolicy)>,
) -> pb::RetentionPolicies {
    pb::RetentionPolicies {
        policies: policies
            .into_iter()
            .map(|(pattern, p)| pb::RetentionPolicyEntry {
                pattern,
                untagged_days: p.untagged_days,
            })
            .collect(),
    }
}

/// The wire form of a namespace (a limit that is not set is 0).
fn namespace_message(name: String, l: NamespaceLimits, u: NamespaceUsage) -> pb::Namespace {
    pb::Namespace {
        namespace: name,
        quota_bytes: l.quota_bytes.unwrap_or(0),
        max_repositories: l.max_repositories.unwrap_or(0),
        pulls_per_sec: l.pulls_per_sec.unwrap_or(0),
        pushes_per_sec: l.pushes_per_sec.unwrap_or(0),
        used_bytes: u.bytes,
        repositories: u.repositories,
    }
}

/// `limits` changed by what `req` sets (0: no limit).
fn merged_limits(mut limits: NamespaceLimits, req: &pb::SetNamespaceRequest) -> NamespaceLimits {
    fn set<T: PartialEq + Default + Copy>(field: &mut Option<T>, v: Option<T>) {
        if let Some(v) = v {
            *field = (v != T::default()).then_some(v);
        }
    }
    set(&mut limits.quota_bytes, req.quota_bytes);
    set(&mut limits.max_repositories, req.max_repositories);
    set(&mut limits.pulls_per_sec, req.pulls_per_sec);
    set(&mut limits.pushes_per_sec, req.pushes_per_sec);
    limits
}

fn purge_message(r: PurgeReport) -> pb::PurgeReport {
    pb::PurgeReport {
        dry_run: r.dry_run,
        tags_total: r.tags_total,
        manifests_total: r.manifests_total,
        skipped_total: r.skipped_total,
        tags: r
            .tags
            .into_iter()
            .map(|(repo, tag, digest)| pb::PurgedTag {
                repository: repo.to_string(),
                tag: tag.to_string(),
                digest: digest.to_string(),
            })
            .collect(),
        manifests: r
            .manifests
            .into_iter()
            .map(|(repo, digest)| pb::PurgedManifest {
                repository: repo.to_string(),
                digest: digest.to_string(),
            })
            .collect(),
        skipped: r
            .skipped
            .into_iter()
            .map(|s| pb::PurgeSkipped {
                what: s.what,
                why: s.why,
            })
            .collect(),
    }
}

/// Tags first, then manifests, each in name order.
fn target_order(t: &LockTarget) -> (u8, String) {
    match t {
        LockTarget::Repository => (0, String::new()),
        LockTarget::Tag(t) => (1, t.to_string()),
        LockTarget::Manifest(d) => (2, d.to_string()),
    }
}

impl LifecycleRpc {
    /// The RPCs over `lifecycle`.
    pub(super) fn new(lifecycle: Lifecycle) -> LifecycleRpc {
        LifecycleRpc { lifecycle }
    }

    /// `Admin.UpdateAttributes`.
    pub(super) async fn update_attributes(
        &self,
        r: pb::UpdateAttributesRequest,
    ) -> Result<pb::AttributesEntry, Status> {
        let repo = parse_repo(&r.repository)?;
        let target = parse_target(given(&r.tag), given(&r.digest))?;
        let update = AttributesUpdate {
            write_enabled: r.write_enabled,
            delete_enabled: r.delete_enabled,
            read_enabled: r.read_enabled,
            list_enabled: r.list_enabled,
        };
        let now = self
            .lifecycle
            .update_attributes(&repo, target.clone(), update)
            .await?;
        Ok(entry_message(&r.repository, target, now))
    }

    /// `Admin.GetAttributes`.
    pub(super) async fn get_attributes(
        &self,
        r: pb::RepositoryRef,
    ) -> Result<pb::RepositoryAttributes, Status> {
        let repo = parse_repo(&r.repository)?;
        let (own, mut entries) = self.lifecycle.attributes(&repo).await?;
        entries.sort_by_key(|(t, _)| target_order(t));
        Ok(pb::RepositoryAttributes {
            attributes: Some(attributes_message(own)),
            entries: entries
                .into_iter()
                .map(|(t, a)| entry_message(&r.repository, t, a))
                .collect(),
            repository: r.repository,
        })
    }

    /// `Admin.ListDeleted`.
    pub(super) async fn list_deleted(
        &self,
        r: pb::RepositoryRef,
    ) -> Result<pb::DeletedManifests, Status> {
        let repo = given(&r.repository).map(parse_repo).transpose()?;
        let deleted = self.lifecycle.deleted(repo.as_ref()).await?;
        Ok(pb::DeletedManifests {
            manifests: deleted.into_iter().map(deleted_message).collect(),
        })
    }

    /// `Admin.RestoreManifest`.
    pub(super) async fn restore_manifest(
        &self,
        r: pb::RestoreManifestRequest,
    ) -> Result<pb::RestoreManifestResponse, Status> {
        let repo = parse_repo(&r.repository)?;
        let digest = Digest::parse(&r.digest)
            .map_err(|e| LifecycleError::Invalid(format!("invalid digest {:?}: {e}", r.digest)))?;
        let tag = given(&r.tag)
            .map(|t| {
                Tag::parse(t)
                    .map_err(|e| LifecycleError::Invalid(format!("invalid tag {t:?}: {e}")))
            })
            .transpose()?;
        self.lifecycle.restore(&repo, &digest, tag).await?;
        Ok(pb::RestoreManifestResponse {
            repository: r.repository,
            digest: r.digest,
            tag: r.tag,
        })
    }

    /// `Admin.SetSoftDelete` (0: off).
    pub(super) async fn set_soft_delete(
        &self,
        r: pb::SoftDeleteSettings,
    ) -> Result<pb::SoftDeleteSettings, Status> {
        let days = match r.retention_days {
            0 => None,
            d => Some(u16::try_from(d).map_err(|_| {
                LifecycleError::Invalid(format!(
                    "soft_delete.retention_days must be 1 to {}, not {d}",
                    crate::lifecycle::MAX_SOFT_DELETE_DAYS
                ))
            })?),
        };
        self.lifecycle.set_soft_delete(days).await?;
        Ok(r)
    }

    /// `Admin.GetSoftDelete`.
    pub(super) async fn get_soft_delete(&self) -> Result<pb::SoftDeleteSettings, Status> {
        let days = self.lifecycle.soft_delete().await?;
        Ok(pb::SoftDeleteSettings {
            retention_days: days.map_or(0, u32::from),
        })
    }

    /// `Admin.SetRetention`: every policy after the change.
    pub(super) async fn set_retention(
        &self,
        r: pb::RetentionPolicyEntry,
    ) -> Result<pb::RetentionPolicies, Status> {
        self.lifecycle
            .set_retention(&r.pattern, r.untagged_days)
            .await?;
        self.list_retention().await
    }

    /// `Admin.ClearRetention`: the policies left.
    pub(super) async fn clear_retention(
        &self,
        r: pb::RetentionPolicyRef,
    ) -> Result<pb::RetentionPolicies, Status> {
        self.lifecycle.clear_retention(&r.pattern).await?;
        self.list_retention().await
    }

    /// `Admin.ListRetention`.
    pub(super) async fn list_retention(&self) -> Result<pb::RetentionPolicies, Status> {
        Ok(retention_message(
            self.lifecycle.retention_policies().await?,
        ))
    }

    /// `Admin.SetNamespace`: changes what the request sets, keeps the other limits.
    pub(super) async fn set_namespace(
        &self,
        r: pb::SetNamespaceRequest,
    ) -> Result<pb::Namespace, Status> {
        let current = self
            .lifecycle
            .namespace(&r.namespace)
            .await?
            .map(|(limits, _)| limits)
            .unwrap_or_default();
        let limits = merged_limits(current, &r);
        self.lifecycle.set_namespace(&r.namespace, limits).await?;
        self.get_namespace(pb::NamespaceRef {
            namespace: r.namespace,
        })
        .await
    }

    /// `Admin.GetNamespace`.
    pub(super) async fn get_namespace(&self, r: pb::NamespaceRef) -> Result<pb::Namespace, Status> {
        let (limits, usage) = self
            .lifecycle
            .namespace(&r.namespace)
            .await?
            .unwrap_or_default();
        Ok(namespace_message(r.namespace, limits, usage))
    }

    /// `Admin.ListNamespaces`.
    pub(super) async fn list_namespaces(&self) -> Result<pb::Namespaces, Status> {
        Ok(pb::Namespaces {
            namespaces: self
                .lifecycle
                .namespaces()
                .await?
                .into_iter()
                .map(|(name, l, u)| namespace_message(name, l, u))
                .collect(),
        })
    }

    /// `Admin.Purge`.
    pub(super) async fn purge(&self, r: pb::PurgeRequest) -> Result<pb::PurgeReport, Status> {
        let filters = r
            .filters
            .iter()
            .map(|f| PurgeFilter::parse(f))
            .collect::<Result<Vec<_>, _>>()?;
        let ago = match r.ago.as_str() {
            "" => std::time::Duration::ZERO,
            s => parse_ago(s)?,
        };
        let report = self
            .lifecycle
            .purge(PurgeRequest {
                filters,
                ago,
                untagged: r.untagged,
                keep: r.keep as usize,
                dry_run: r.dry_run,
            })
            .await?;
        Ok(purge_message(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_names_its_target_in_tag_or_digest() {
        let locked = Attributes {
            write_enabled: false,
            ..Attributes::default()
        };
        let e = entry_message("app", LockTarget::Tag(Tag::parse("v1").unwrap()), locked);
        assert_eq!((e.tag.as_str(), e.digest.as_str()), ("v1", ""));
        assert!(!e.attributes.unwrap().write_enabled);
        let d = Digest::sha256_of(b"x");
        let e = entry_message("app", LockTarget::Manifest(d.clone()), locked);
        assert_eq!((e.tag, e.digest), (String::new(), d.to_string()));
        let e = entry_message("app", LockTarget::Repository, Attributes::default());
        assert!(e.tag.is_empty() && e.digest.is_empty());
        assert!(e.attributes.unwrap().delete_enabled);
    }

    #[test]
    fn a_namespace_update_changes_what_it_sets_and_zero_clears() {
        let before = NamespaceLimits {
            quota_bytes: Some(10),
            max_repositories: Some(3),
            pulls_per_sec: Some(5),
            pushes_per_sec: None,
        };
        let req = pb::SetNamespaceRequest {
            namespace: "team".into(),
            quota_bytes: Some(0),
            max_repositories: None,
            pulls_per_sec: Some(7),
            pushes_per_sec: Some(2),
        };
        assert_eq!(
            merged_limits(before, &req),
            NamespaceLimits {
                quota_bytes: None,
                max_repositories: Some(3),
                pulls_per_sec: Some(7),
                pushes_per_sec: Some(2),
            }
        );
        let m = namespace_message(
            "team".into(),
            merged_limits(before, &req),
            NamespaceUsage {
                bytes: 4,
                repositories: 1,
            },
        );
        assert_eq!((m.quota_bytes, m.max_repositories, m.used_bytes), (0, 3, 4));
    }

    #[test]
    fn tags_come_before_manifests() {
        let d = Digest::sha256_of(b"x");
        let mut ts = [
            LockTarget::Manifest(d),
            LockTarget::Tag(Tag::parse("b").unwrap()),
            LockTarget::Tag(Tag::parse("a").unwrap()),
        ];
        ts.sort_by_key(target_order);
        assert!(matches!(&ts[0], LockTarget::Tag(t) if t.as_str() == "a"));
        assert!(matches!(&ts[2], LockTarget::Manifest(_)));
    }
}
