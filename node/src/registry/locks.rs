//! Locks, namespace quotas and namespace rates as the registry's use cases see them
//! (docs/lifecycle.md, "Locks, quotas and rate limits at the API").
//!
//! Owns: the checks on the read path (a read- or list-disabled repository, tag or manifest),
//! the pre-checks of a push before its bytes arrive (a repository locked for writes, a
//! namespace at its storage quota or its repository limit), and the admission of requests
//! against a namespace's rates. Must not: decide a write. The state machine is the authority
//! for every write (it refuses with `Rejection::Locked` or `Rejection::QuotaExceeded` when the
//! command applies, against concurrent writes at any node); the pre-checks here only spare a
//! client sending bytes that would be refused, and read this node's applied state, which may
//! lag.
//!
//! Cost: a read checks one point read per lock target it names (the repository; a tag and the
//! manifest it points at); a blob read checks the repository only. A tag list scans the
//! repository's attributes (a prefix with no key when nothing is locked); a catalog page reads
//! each repository's attributes. Rates are read per namespace at most once a second
//! (`rates`).

use std::collections::BTreeSet;
use std::time::Instant;

use super::rates::{Rates, RequestKind};
use super::{Registry, RegistryError};
use crate::meta::Page;
use crate::meta::lifecycle::{Attributes, LockTarget, namespace_of};
use crate::types::{Digest, RepositoryName, Tag};

/// Items read per step of a filtered list (tags or repositories).
const LIST_SCAN: usize = 1000;

/// What a push is about to send ([`Registry::check_push`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushCheck<'a> {
    /// Opening an upload session.
    Open,
    /// A whole blob in one request, with its `Content-Length` when given.
    Blob {
        /// The blob.
        digest: &'a Digest,
        /// Its length.
        len: Option<u64>,
    },
    /// A chunk of an open upload session (a PATCH, or a PUT with a final chunk).
    Chunk,
    /// Mounting a blob from another repository.
    Mount,
}

impl Registry {
    fn attributes(
        &self,
        repo: &RepositoryName,
        target: &LockTarget,
    ) -> Result<Attributes, RegistryError> {
        Ok(self.meta.attributes(repo, target)?)
    }

    /// Refuses a read of the repository when it is locked for reads.
    ///
    /// Errors: [`RegistryError::Denied`].
    pub(super) fn check_repository_readable(
        &self,
        repo: &RepositoryName,
    ) -> Result<(), RegistryError> {
        if !self.attributes(repo, &LockTarget::Repository)?.read_enabled {
            return Err(RegistryError::Denied(format!(
                "repository {repo} is locked: reads are disabled"
            )));
        }
        Ok(())
    }

    /// Refuses a read of a manifest (by `tag`, when read by tag) that is locked for reads, or
    /// whose tag is. The repository is checked apart
    /// ([`Registry::check_repository_readable`]).
    ///
    /// Errors: [`RegistryError::Denied`].
    pub(super) fn check_manifest_readable(
        &self,
        repo: &RepositoryName,
        tag: Option<&Tag>,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        if let Some(tag) = tag
            && !self
                .attributes(repo, &LockTarget::Tag(tag.clone()))?
                .read_enabled
        {
            return Err(RegistryError::Denied(format!(
                "tag {repo}:{tag} is locked: reads are disabled"
            )));
        }
        if !self
            .attributes(repo, &LockTarget::Manifest(digest.clone()))?
            .read_enabled
        {
            return Err(RegistryError::Denied(format!(
                "manifest {repo}@{digest} is locked: reads are disabled"
            )));
        }
        Ok(())
    }

    /// Refuses a push before its bytes are read: the repository is locked for writes; or, for
    /// anything but a mount, its namespace uses its whole storage quota already; or a whole
    /// blob of known length would take the namespace past it (unless the namespace holds that
    /// blob already); or, opening an upload or sending a whole blob, the repository is new and
    /// its namespace is at its repository limit. The authoritative checks are made when the
    /// commands apply; these read this node's state.
    ///
    /// Errors: [`RegistryError::Denied`].
    pub async fn check_push(
        &self,
        repo: &RepositoryName,
        push: PushCheck<'_>,
    ) -> Result<(), RegistryError> {
        if !self
            .attributes(repo, &LockTarget::Repository)?
            .write_enabled
        {
            return Err(RegistryError::Denied(format!(
                "repository {repo} is locked: writes are disabled"
            )));
        }
        if push == PushCheck::Mount {
            return Ok(());
        }
        let ns = namespace_of(repo);
        let Some((limits, usage)) = self.meta.namespace(ns)? else {
            return Ok(());
        };
        if let Some(quota) = limits.quota_bytes {
            if usage.bytes >= quota {
                return Err(RegistryError::Denied(format!(
                    "namespace {ns} uses {} of its {quota}-byte storage quota",
                    usage.bytes
                )));
            }
            if let PushCheck::Blob {
                digest,
                len: Some(len),
            } = push
                && usage.bytes.saturating_add(len) > quota
                && !self.meta.namespace_holds(ns, digest)?
            {
                return Err(RegistryError::Denied(format!(
                    "namespace {ns} uses {} of its {quota}-byte storage quota; this blob adds \
                     {len}",
                    usage.bytes
                )));
            }
        }
        if let (Some(max), PushCheck::Open | PushCheck::Blob { .. }) =
            (limits.max_repositories, push)
            && usage.repositories >= max
            && !self.repository_exists(repo).await?
        {
            return Err(RegistryError::Denied(format!(
                "namespace {ns} has {} repositories, its limit: repository {repo} cannot be \
                 created",
                usage.repositories
            )));
        }
        Ok(())
    }

    /// Whether the repository exists on this node's state.
    async fn repository_exists(&self, repo: &RepositoryName) -> Result<bool, RegistryError> {
        let probe = Page {
            n: Some(0),
            last: None,
        };
        Ok(self.meta.tags(repo, probe).await?.is_some())
    }

    /// Admits a request of `kind` to the repository's namespace, or refuses it when the
    /// namespace's rate on this node is used up. A namespace without limits costs one look at
    /// an in-memory set; one with limits has them read at most once a second.
    ///
    /// Errors: [`RegistryError::RateLimited`].
    pub fn admit(&self, repo: &RepositoryName, kind: RequestKind) -> Result<(), RegistryError> {
        let ns = namespace_of(repo);
        if !self.meta.has_namespace_limits(ns) {
            // Nearly every request: no limits, so no rates (an in-memory set, no read).
            return Ok(());
        }
        let now = Instant::now();
        let fresh = match self.rates.cached(ns, now) {
            Some(_) => None,
            None => {
                let limits = self.meta.namespace(ns)?.map(|(l, _)| l).unwrap_or_default();
                Some(Rates {
                    pulls_per_sec: limits.pulls_per_sec,
                    pushes_per_sec: limits.pushes_per_sec,
                })
            }
        };
        self.rates
            .admit(ns, kind, fresh, now)
            .map_err(|r| RegistryError::RateLimited {
                namespace: ns.to_string(),
                what: kind.plural(),
                per_sec: r.per_sec,
                retry_after_secs: r.retry_after_secs,
            })
    }

    /// What hides tags of the repository from its tag list: the tags locked for listing and
    /// the manifests locked for listing (their tags are hidden). `None`: no lock hides any
    /// (the list stands as it is).
    pub(super) async fn listable_tags(
        &self,
        repo: &RepositoryName,
    ) -> Result<Option<ListFilter>, RegistryError> {
        let mut filter = ListFilter::default();
        for (target, a) in self.meta.all_attributes(repo).await? {
            if a.list_enabled {
                continue;
            }
            match target {
                LockTarget::Tag(t) => {
                    filter.tags.insert(t.as_str().to_string());
                }
                LockTarget::Manifest(d) => {
                    filter.manifests.insert(d);
                }
                LockTarget::Repository => {}
            }
        }
        Ok((!filter.tags.is_empty() || !filter.manifests.is_empty()).then_some(filter))
    }

    /// Keeps the tags of `tags` that `filter` lets through.
    pub(super) async fn filter_tags(
        &self,
        repo: &RepositoryName,
        tags: Vec<String>,
        filter: &ListFilter,
    ) -> Result<Vec<String>, RegistryError> {
        let mut out = Vec::with_capacity(tags.len());
        for t in tags {
            if filter.tags.contains(&t) {
                continue;
            }
            if !filter.manifests.is_empty()
                && let Ok(tag) = Tag::parse(&t)
                && let Some((digest, _)) = self.meta.manifest_by_tag(repo, &tag).await?
                && filter.manifests.contains(&digest)
            {
                continue;
            }
            out.push(t);
        }
        Ok(out)
    }

    /// Repository names in lexical order, without those locked for listing, a page at a
    /// time; the flag says whether more (listable ones) follow.
    pub(super) async fn listable_repositories(
        &self,
        page: Page,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        filtered_page(
            page,
            |step| async move { Ok(self.meta.repositories(step).await?) },
            |repos| self.listable_of(repos),
        )
        .await
    }

    /// The repositories of `repos` not locked for listing: a point read each, on the blocking
    /// pool.
    async fn listable_of(&self, repos: Vec<String>) -> Result<Vec<String>, RegistryError> {
        let meta = self.meta.clone();
        let kept = tokio::task::spawn_blocking(move || {
            let mut kept = Vec::with_capacity(repos.len());
            for r in repos {
                let shown = match RepositoryName::parse(&r) {
                    Ok(name) => {
                        meta.attributes(&name, &LockTarget::Repository)?
                            .list_enabled
                    }
                    Err(_) => true,
                };
                if shown {
                    kept.push(r);
                }
            }
            Ok::<_, crate::meta::MetaError>(kept)
        })
        .await
        .map_err(|e| RegistryError::Storage(Box::new(e)))??;
        Ok(kept)
    }
}

/// One page of a sorted list of which `keep` hides some: reads the list a step at a time
/// (`read`, a page of the whole list) and keeps what `keep` lets through, until the page is
/// full or the list ends. The flag says whether more (kept) items follow; `last` and `n`
/// count kept items only, as if the hidden ones were not there.
pub(super) async fn filtered_page<R, RF, K, KF>(
    page: Page,
    mut read: R,
    mut keep: K,
) -> Result<(Vec<String>, bool), RegistryError>
where
    R: FnMut(Page) -> RF,
    RF: Future<Output = Result<(Vec<String>, bool), RegistryError>>,
    K: FnMut(Vec<String>) -> KF,
    KF: Future<Output = Result<Vec<String>, RegistryError>>,
{
    let want = page.n.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut last = page.last;
    loop {
        let step = Page {
            n: Some(LIST_SCAN),
            last: last.clone(),
        };
        let (items, more) = read(step).await?;
        last = items.last().cloned();
        for item in keep(items).await? {
            if out.len() == want {
                return Ok((out, true));
            }
            out.push(item);
        }
        if !more {
            return Ok((out, false));
        }
    }
}

/// What hides tags from a tag list.
#[derive(Debug, Default)]
pub(super) struct ListFilter {
    tags: BTreeSet<String>,
    manifests: BTreeSet<Digest>,
}
