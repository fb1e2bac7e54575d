//! Errors of the registry's use cases, in the OCI vocabulary but free of HTTP.

use crate::blobstore::BlobStoreError;
use crate::cluster::ClusterError;
use crate::meta::{MetaError, Rejection};
use crate::types::Digest;
pub use crate::types::ErrorKind;

/// Why a registry operation failed. Every variant leaves the registry unchanged.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The repository name is not valid.
    #[error("invalid repository name {0:?}")]
    NameInvalid(String),
    /// The repository does not exist.
    #[error("repository {0} is not known")]
    NameUnknown(String),
    /// The digest is malformed, unsupported, or does not match the content.
    #[error("{0}")]
    DigestInvalid(String),
    /// The tag or reference is malformed.
    #[error("{0}")]
    TagInvalid(String),
    /// The blob is not in the repository.
    #[error("blob {0} is not in the repository")]
    BlobUnknown(Digest),
    /// No upload with this id is in progress in the repository.
    #[error("upload {0} is not in progress")]
    BlobUploadUnknown(String),
    /// The upload request is invalid.
    #[error("{0}")]
    BlobUploadInvalid(String),
    /// A chunk did not start where the upload stands; `received` bytes are stored so far.
    #[error("chunk does not start at offset {received}")]
    ChunkOutOfOrder {
        /// Bytes received so far.
        received: u64,
    },
    /// A byte range cannot be served from a blob of this size.
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable {
        /// The blob's size.
        size: u64,
    },
    /// A length given does not match the content.
    #[error("{0}")]
    SizeInvalid(String),
    /// The manifest is malformed or of an unsupported type.
    #[error("{0}")]
    ManifestInvalid(String),
    /// The manifest is larger than the limit.
    #[error("manifest is larger than the limit of {limit} bytes")]
    ManifestTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A blob the manifest references is not in the repository.
    #[error("manifest references blob {0} which is not in the repository")]
    ManifestBlobUnknown(Digest),
    /// A descriptor in the manifest gives a size other than that of the content its digest
    /// names (a stored blob, or a child manifest's bytes).
    #[error("manifest describes {digest} as {declared} bytes, but it is {stored} bytes")]
    DescriptorSizeInvalid {
        /// The described content.
        digest: Digest,
        /// The size the descriptor gives.
        declared: u64,
        /// The size of the stored content.
        stored: u64,
    },
    /// The manifest (or tag) is not in the repository.
    #[error("manifest {0} is not in the repository")]
    ManifestUnknown(String),
    /// Another request is writing to the upload session now.
    #[error("upload {0} is busy: another request is writing to it; retry once it ended")]
    UploadBusy(String),
    /// Too many upload sessions are open (on the node, or for this client).
    #[error("too many upload sessions: {0}")]
    TooManyUploads(String),
    /// The cluster cannot commit writes now (no quorum, no leader, too slow).
    #[error("the cluster has no quorum for writes: {0}")]
    NoQuorum(String),
    /// Something this request needs is out of reach now (the node holding an upload or the
    /// only copies of a blob, or too few copies for the durability policy).
    #[error("{0}")]
    Unavailable(String),
    /// This node's disk is too full for the write: below the upload reserve, or too full for
    /// metadata, or the file system refused bytes (`ENOSPC`). Retry later or elsewhere.
    #[error("{0}")]
    InsufficientStorage(String),
    /// A lock (attributes of the repository, a tag or a manifest) or a namespace limit (its
    /// storage quota, its repository limit) forbids it; the text names which.
    #[error("{0}")]
    Denied(String),
    /// The namespace's request rate (pulls or pushes per second on this node) is used up.
    #[error("namespace {namespace} is over its limit of {per_sec} {what} per second on this node")]
    RateLimited {
        /// The namespace.
        namespace: String,
        /// `pulls` or `pushes`.
        what: &'static str,
        /// Its limit.
        per_sec: u32,
        /// Seconds until a request would be admitted (at least 1).
        retry_after_secs: u64,
    },
    /// Local storage failed.
    #[error("storage failure")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl RegistryError {
    /// The broad class of the error.
    pub fn kind(&self) -> ErrorKind {
        use RegistryError::*;
        match self {
            NameUnknown(_) | BlobUnknown(_) | BlobUploadUnknown(_) | ManifestUnknown(_) => {
                ErrorKind::NotFound
            }
            NameInvalid(_)
            | DigestInvalid(_)
            | TagInvalid(_)
            | BlobUploadInvalid(_)
            | SizeInvalid(_)
            | ManifestInvalid(_)
            | DescriptorSizeInvalid { .. }
            | ManifestTooLarge { .. } => ErrorKind::Invalid,
            ChunkOutOfOrder { .. }
            | RangeNotSatisfiable { .. }
            | ManifestBlobUnknown(_)
            | UploadBusy(_)
            | Denied(_) => ErrorKind::Conflict,
            NoQuorum(_) | Unavailable(_) => ErrorKind::Unavailable,
            TooManyUploads(_) | InsufficientStorage(_) | RateLimited { .. } => ErrorKind::Exhausted,
            Storage(_) => ErrorKind::Internal,
        }
    }
}

impl RegistryError {
    /// The refusal of a lock or a namespace limit, when the rejection is one
    /// ([`RegistryError::Denied`]).
    pub(super) fn refused(r: &Rejection) -> Option<RegistryError> {
        match r {
            Rejection::Locked(why) | Rejection::QuotaExceeded(why) => {
                Some(RegistryError::Denied(why.clone()))
            }
            _ => None,
        }
    }
}

impl From<MetaError> for RegistryError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::DiskFull(full) => RegistryError::InsufficientStorage(full.to_string()),
            other => RegistryError::Storage(Box::new(other)),
        }
    }
}

/// Whether a file system error means the disk (or the user's quota) is full.
fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

impl From<BlobStoreError> for RegistryError {
    fn from(e: BlobStoreError) -> Self {
        match e {
            BlobStoreError::DigestMismatch { expected, actual } => RegistryError::DigestInvalid(
                format!("uploaded content has digest {actual}, not {expected}"),
            ),
            BlobStoreError::Body(e) => {
                match e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<super::uploads::LengthMismatch>())
                {
                    Some(mismatch) => RegistryError::SizeInvalid(mismatch.to_string()),
                    None => {
                        RegistryError::BlobUploadInvalid(format!("failed to receive the body: {e}"))
                    }
                }
            }
            e @ BlobStoreError::NoSpace { .. } => RegistryError::InsufficientStorage(e.to_string()),
            BlobStoreError::Io { op, path, source } if is_out_of_space(&source) => {
                RegistryError::InsufficientStorage(format!(
                    "failed to {op} {}: the disk is full ({source})",
                    path.display()
                ))
            }
            other => RegistryError::Storage(Box::new(other)),
        }
    }
}

impl From<ClusterError> for RegistryError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::NoQuorum { reason } => RegistryError::NoQuorum(reason),
            ClusterError::DiskFull(full) => RegistryError::InsufficientStorage(format!(
                "this node cannot write metadata now: {full}"
            )),
            other => RegistryError::Storage(Box::new(other)),
        }
    }
}
