//! The commands of the Raft log and the records of the state machine.
//!
//! Every persisted shape carries a version: commands are `Command::V1(..)`, stored values are
//! `Stored::V1(..)`. A later version adds a variant and upgrades the old ones when decoding;
//! an old variant is never changed in place.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::NodeId;
use super::auth::AuthCommand;
use crate::types::{Digest, RepositoryName, Tag};

/// A change to the metadata, as written to the Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Version 1 of the command set.
    V1(CommandV1),
}

/// Version 1 of the command set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandV1 {
    /// `node` stored a verified blob that was uploaded to `repo`: record the blob (adding the
    /// node as a holder), create the repository if new, and link the blob into it.
    BlobStored {
        /// Repository the blob was uploaded to.
        repo: RepositoryName,
        /// The blob.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
        /// The node that holds the file.
        node: NodeId,
        /// When, in milliseconds since the Unix epoch (stamped by the proposer).
        at_ms: u64,
    },
    /// Link a blob that `from` may serve into `to` (cross-repository mount). Answers
    /// [`WriteResult::Mounted`] with whether it was done.
    MountBlob {
        /// Source repository.
        from: RepositoryName,
        /// Target repository.
        to: RepositoryName,
        /// The blob.
        digest: Digest,
        /// When (ms since the epoch).
        at_ms: u64,
    },
    /// Remove a blob's link from a repository (the blob DELETE of the API). The blob record
    /// and file stay until garbage collection.
    UnlinkBlob {
        /// Repository.
        repo: RepositoryName,
        /// The blob.
        digest: Digest,
    },
    /// Store a manifest (and optionally point a tag at it). Rejected when a referenced blob is
    /// not linked into the repository or a child manifest is not in it.
    PutManifest(Box<PutManifest>),
    /// Remove a tag.
    DeleteTag {
        /// Repository.
        repo: RepositoryName,
        /// The tag.
        tag: Tag,
    },
    /// Remove a manifest, every tag that points at it, and its referrer entry.
    DeleteManifest {
        /// Repository.
        repo: RepositoryName,
        /// The manifest.
        digest: Digest,
    },
    /// `node` now holds a verified copy of a blob the cluster already knows (it fetched the
    /// bytes from a peer). Adds the holder; links nothing. Answers [`WriteResult::Done`], or
    /// [`Rejection::BlobUnknown`] when the cluster has no record of the blob.
    BlobCopied {
        /// The blob.
        digest: Digest,
        /// The node that now holds it.
        node: NodeId,
    },
    /// Set (or replace) the replication policy of the repositories `pattern` matches (see
    /// `meta::policy` for the pattern grammar and which pattern wins).
    SetReplicationPolicy {
        /// The repository pattern (validated by the proposer).
        pattern: String,
        /// The policy.
        policy: ReplicationPolicy,
    },
    /// Remove the replication policy of `pattern`. Answers [`WriteResult::Done`], or
    /// [`Rejection::PolicyUnknown`] when no policy has that pattern.
    ClearReplicationPolicy {
        /// The repository pattern.
        pattern: String,
    },
    /// A change to identities, scope maps, signing keys or auth settings (`meta::auth`).
    Auth(Box<AuthCommand>),
    /// Count every blob's references from the stored manifests and maintain the counts from
    /// now on (`meta::gc`; proposed once by the collector on a database that has none).
    CountReferences {
        /// When (ms since the epoch): blobs found unreferenced start their grace here.
        at_ms: u64,
    },
    /// Clients were told these blobs exist (a HEAD or GET): each unreferenced one starts its
    /// grace period again at `at_ms`.
    TouchBlobs {
        /// The blobs.
        digests: Vec<Digest>,
        /// When (ms since the epoch).
        at_ms: u64,
    },
    /// Garbage-collect each blob of `digests` that no manifest references and that was last
    /// touched at or before `cutoff_ms`: its record and every link to it go, and every node
    /// then removes its copy. Answers [`WriteResult::Collected`] with those it removed.
    CollectBlobs {
        /// The candidates.
        digests: Vec<Digest>,
        /// Now minus the grace period, on the proposer's clock.
        cutoff_ms: u64,
    },
    /// [`CommandV1::DeleteManifest`] with a time: the blobs it leaves unreferenced start
    /// their grace period at `at_ms`; with soft delete on, it goes to the recycle bin.
    RemoveManifest {
        /// Repository.
        repo: RepositoryName,
        /// The manifest.
        digest: Digest,
        /// When (ms since the epoch).
        at_ms: u64,
    },
    /// A change to locks, soft delete, retention or namespaces (`meta::lifecycle`).
    Lifecycle(Box<super::lifecycle::LifecycleCommand>),
    /// A change to webhooks or the event log (`meta::webhooks`).
    Webhooks(Box<super::webhooks::WebhookCommand>),
    /// A command proposed for a client request: applied as `command` is; the events derived
    /// from it name the request and carry `at_ms`.
    Traced(Box<Traced>),
}

/// The payload of [`CommandV1::Traced`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Traced {
    /// The client request.
    pub request: crate::types::RequestMeta,
    /// When the proposer took it (ms since the epoch).
    pub at_ms: u64,
    /// The command (never itself `Traced`).
    pub command: CommandV1,
}

impl CommandV1 {
    /// The command to apply, and the request it was proposed for, if any.
    pub fn untraced(&self) -> (&CommandV1, Option<&Traced>) {
        match self {
            CommandV1::Traced(t) => (&t.command, Some(t)),
            c => (c, None),
        }
    }
}

/// Where copies of the blobs of the repositories a pattern matches are kept (stored as
/// `p/<pattern>`). Region names are validated and sorted by the proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationPolicy {
    /// The regions that may hold copies (data residency); empty: every region.
    pub regions: Vec<String>,
    /// Regions (among those allowed) that keep only what was pulled there: the replicator
    /// copies nothing to them.
    pub on_demand: Vec<String>,
}

/// The payload of [`CommandV1::PutManifest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutManifest {
    /// Repository.
    pub repo: RepositoryName,
    /// Digest of `record.bytes`.
    pub digest: Digest,
    /// Tag to point at the manifest, if it was pushed by tag.
    pub tag: Option<Tag>,
    /// The manifest itself.
    pub record: ManifestRecord,
    /// Set when the manifest has a `subject`: its entry in the subject's referrers list.
    pub referrer: Option<ReferrerRecord>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::V1(c) => match c {
                CommandV1::BlobStored {
                    repo, digest, node, ..
                } => {
                    write!(f, "blob-stored {repo} {digest} at node {node}")
                }
                CommandV1::MountBlob {
                    from, to, digest, ..
                } => {
                    write!(f, "mount-blob {digest} from {from} to {to}")
                }
                CommandV1::UnlinkBlob { repo, digest } => write!(f, "unlink-blob {repo} {digest}"),
                CommandV1::PutManifest(p) => write!(f, "put-manifest {} {}", p.repo, p.digest),
                CommandV1::DeleteTag { repo, tag } => write!(f, "delete-tag {repo}:{tag}"),
                CommandV1::DeleteManifest { repo, digest } => {
                    write!(f, "delete-manifest {repo} {digest}")
                }
                CommandV1::BlobCopied { digest, node } => {
                    write!(f, "blob-copied {digest} to node {node}")
                }
                CommandV1::SetReplicationPolicy { pattern, .. } => {
                    write!(f, "set-replication-policy {pattern}")
                }
                CommandV1::ClearReplicationPolicy { pattern } => {
                    write!(f, "clear-replication-policy {pattern}")
                }
                CommandV1::Auth(a) => write!(f, "auth {}", auth_verb(a)),
                CommandV1::CountReferences { .. } => f.write_str("count-references"),
                CommandV1::TouchBlobs { digests, .. } => {
                    write!(f, "touch-blobs ({} blobs)", digests.len())
                }
                CommandV1::CollectBlobs { digests, .. } => {
                    write!(f, "collect-blobs ({} candidates)", digests.len())
                }
                CommandV1::RemoveManifest { repo, digest, .. } => {
                    write!(f, "remove-manifest {repo} {digest}")
                }
                CommandV1::Lifecycle(l) => write!(f, "lifecycle {}", lifecycle_verb(l)),
                CommandV1::Webhooks(w) => write!(f, "webhooks {}", webhook_verb(w)),
                CommandV1::Traced(t) => write!(
                    f,
                    "{} (request {})",
                    Command::V1(t.command.clone()),
                    t.request.id
                ),
            },
        }
    }
}

/// What a lifecycle command does, for logs.
fn lifecycle_verb(l: &super::lifecycle::LifecycleCommand) -> String {
    use super::lifecycle::{LifecycleCommand as L, LockTarget};
    match l {
        L::SetSoftDelete { retention_days } => format!("set-soft-delete {retention_days:?}"),
        L::SetRetention { pattern, .. } => format!("set-retention {pattern}"),
        L::ClearRetention { pattern } => format!("clear-retention {pattern}"),
        L::UpdateAttributes { repo, target, .. } => match target {
            LockTarget::Repository => format!("set-attributes {repo}"),
            LockTarget::Tag(t) => format!("set-attributes {repo}:{t}"),
            LockTarget::Manifest(d) => format!("set-attributes {repo}@{d}"),
        },
        L::Restore { repo, digest, .. } => format!("restore {repo}@{digest}"),
        L::PurgeDeleted { repo, digest, .. } => format!("purge-deleted {repo}@{digest}"),
        L::SetNamespace { namespace, .. } => format!("set-namespace {namespace}"),
        L::RemoveUntagged { repo, digest, .. } => format!("remove-untagged {repo}@{digest}"),
        L::DeleteTagIf { repo, tag, .. } => format!("delete-tag-if {repo}:{tag}"),
    }
}

/// What a webhook command does, for logs (never a header value).
fn webhook_verb(w: &super::webhooks::WebhookCommand) -> String {
    use super::webhooks::WebhookCommand as W;
    match w {
        W::Put { name, create, .. } => match create {
            true => format!("create {name}"),
            false => format!("update {name}"),
        },
        W::Delete { name } => format!("delete {name}"),
        W::Progress {
            name,
            cursor,
            deliveries,
            ..
        } => format!(
            "progress {name} cursor {cursor:?} ({} deliveries)",
            deliveries.len()
        ),
        W::PruneEvents { below } => format!("prune-events below {below}"),
    }
}

/// What an auth command does, for logs (never a secret).
fn auth_verb(a: &AuthCommand) -> String {
    match a {
        AuthCommand::PutIdentity { name, expect, .. } => match expect {
            None => format!("create-identity {name}"),
            Some(_) => format!("update-identity {name}"),
        },
        AuthCommand::DeleteIdentity { name } => format!("delete-identity {name}"),
        AuthCommand::PutScopeMap { name, .. } => format!("put-scope-map {name}"),
        AuthCommand::DeleteScopeMap { name } => format!("delete-scope-map {name}"),
        AuthCommand::AddSigningKey { key, .. } => format!("add-signing-key {}", key.kid),
        AuthCommand::DropSigningKey { kid } => format!("drop-signing-key {kid}"),
        AuthCommand::BootstrapAdmin { .. } => "bootstrap-admin".to_string(),
        AuthCommand::SetSettings { .. } => "set-settings".to_string(),
    }
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    /// Applied.
    Done,
    /// Answer to [`CommandV1::MountBlob`]: whether the blob was linked.
    Mounted(bool),
    /// Answer to [`CommandV1::CollectBlobs`]: the blobs removed.
    Collected(Vec<super::gc::CollectedBlob>),
    /// Not applied: the state did not allow it. Nothing changed.
    Rejected(Rejection),
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// A blob the manifest references is not in the repository.
    #[error("blob {0} is not in the repository")]
    BlobUnknown(Digest),
    /// A manifest the index references is not in the repository, or the manifest to delete.
    #[error("manifest {0} is not in the repository")]
    ManifestUnknown(Digest),
    /// The tag to delete does not exist.
    #[error("tag {0} does not exist")]
    TagUnknown(Tag),
    /// The repository does not exist.
    #[error("repository {0} does not exist")]
    NameUnknown(RepositoryName),
    /// No replication policy has this pattern.
    #[error("no replication policy for pattern {0:?}")]
    PolicyUnknown(String),
    /// An identity, scope map or key of that name exists already.
    #[error("{0} exists already")]
    AuthExists(String),
    /// No identity or scope map has that name.
    #[error("{0} does not exist")]
    AuthUnknown(String),
    /// The record changed since the proposer read it.
    #[error("{0} was changed meanwhile")]
    AuthConflict(String),
    /// A lock (attributes) forbids it; the text says which.
    #[error("{0}")]
    Locked(String),
    /// A namespace limit forbids it; the text says which.
    #[error("{0}")]
    QuotaExceeded(String),
    /// What a conditional command expected no longer holds; the text says what changed.
    #[error("{0}")]
    Changed(String),
    /// A scope map cannot be deleted while a token uses it.
    #[error("scope map {map} is used by token {token}")]
    ScopeMapInUse {
        /// The scope map.
        map: String,
        /// A token bound to it.
        token: String,
    },
    /// What is to be created exists already; the text names it.
    #[error("{0} exists already")]
    Exists(String),
    /// What is to be changed does not exist; the text names it.
    #[error("{0} does not exist")]
    Unknown(String),
}

/// A stored manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// Its media type (what `Content-Type` answers).
    pub media_type: String,
    /// The exact bytes that were pushed.
    pub bytes: Vec<u8>,
    /// Blobs it references that must exist (config and non-foreign layers).
    pub blobs: Vec<Digest>,
    /// Manifests it references (an index's children).
    pub children: Vec<Digest>,
    /// Its `subject`, if any.
    pub subject: Option<Digest>,
    /// When it was pushed (ms since the epoch).
    pub created_ms: u64,
}

/// What the cluster knows of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    /// Size in bytes.
    pub size: u64,
    /// Nodes holding a verified copy.
    pub holders: BTreeSet<NodeId>,
    /// When the cluster first saw it (ms since the epoch).
    pub first_seen_ms: u64,
}

/// A referrer's entry in its subject's referrers list: the descriptor the API returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferrerRecord {
    /// The referrer manifest's media type.
    pub media_type: String,
    /// The referrer manifest's size.
    pub size: u64,
    /// Its artifact type (top-level `artifactType`, else its config media type).
    pub artifact_type: Option<String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

/// A repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryRecord {
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
}

/// A tag: which manifest it points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest.
    pub digest: Digest,
    /// When it was last set (ms since the epoch).
    pub updated_ms: u64,
}

/// A blob's link into a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLinkRecord {
    /// When it was linked (ms since the epoch).
    pub linked_ms: u64,
}

/// The versioned envelope of every value in the `state` column family.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Stored<T> {
    /// Version 1.
    V1(T),
}
