//! Copies of blobs made for placement and durability rather than for a client's read: the
//! replicator and the synchronous copies of a manifest PUT ask for one here. The bytes come
//! through the same fetch as a read-through (nearest holder first, verified, stored through the
//! crash-safe path, recorded with `BlobCopied`), so a copy in progress for either purpose is
//! shared with the other. A copy for placement is paced by the per-peer bandwidth cap
//! (`replication.max_bytes_per_sec_per_peer`) and, while this node serves clients, by
//! `replication.busy_bytes_per_sec`; a durability copy only by the per-peer cap, ahead of
//! placement copies; a client's read that joins either lifts the pacing (`registry::fetch`).

use super::fetch::Purpose;
use super::{Registry, RegistryError};
use crate::meta::{CommandV1, Rejection, WriteResult};
use crate::types::Digest;

/// What a copy is for: it sets the copy's pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFor {
    /// Placement (the replicator) or a scrub's repair: background work.
    Placement,
    /// A manifest PUT waits for it (`durability.min_copies`, `min_regions`).
    Durability,
}

impl Registry {
    /// Makes sure this node holds a verified copy of a blob the cluster knows, fetching it from
    /// the nearest holder if needed and recording this node as a holder. Joins a fetch of the
    /// same blob already running. `purpose` sets its pace.
    ///
    /// Errors: [`RegistryError::BlobUnknown`] when the cluster has no record of it (this node
    /// caught up with the leader before saying so: a durability copy is asked for right after
    /// the blob's push elsewhere), or it was collected before this node's copy was recorded
    /// (the copy is removed); [`RegistryError::NoQuorum`] when it could not catch up; [`RegistryError::Unavailable`] when no holder could provide it;
    /// a storage error when there is no room for it.
    pub async fn ensure_local_copy(
        &self,
        digest: &Digest,
        purpose: CopyFor,
    ) -> Result<(), RegistryError> {
        let mut caught_up = false;
        let record = self
            .look_up(&mut caught_up, || self.meta.blob(digest))
            .await?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))?;
        let me = self.cluster.node_id();
        if self.blobs.holds(digest) {
            if record.holders.contains(&me) {
                return Ok(());
            }
            // A copy is on disk but its record was lost (a crash between the rename and the
            // commit): record it now, so that placement counts it. Under the digest's lock, as
            // every path that records a file it placed: the reaper holds it from its "no
            // record" check to the unlink, so the file is either gone before the check below
            // (then it is fetched again) or stays until the record is written.
            let _placing = self.blobs.lock_digest(digest).await;
            if self.blobs.holds(digest) {
                let cmd = CommandV1::BlobCopied {
                    digest: digest.clone(),
                    node: me,
                };
                if let WriteResult::Rejected(Rejection::BlobUnknown(_)) = self.write(cmd).await? {
                    // Collected since the record was read: the file goes too (the digest is
                    // still locked, so no new record can name it meanwhile).
                    tracing::info!(%digest, "a blob was collected before its copy was recorded; removing the copy");
                    if let Err(e) = self.blobs.delete(digest).await {
                        tracing::warn!(%digest, error = %e, "failed to remove a collected blob's copy");
                    }
                    return Err(RegistryError::BlobUnknown(digest.clone()));
                }
                return Ok(());
            }
        }
        self.blobs.check_space(record.size)?;
        let wanted = super::fetch::Wanted {
            digest: digest.clone(),
            size: record.size,
            holders: self.other_holders_nearest(record.holders),
        };
        self.fetcher
            .ensure(
                &self.cluster,
                &self.blobs,
                wanted,
                match purpose {
                    CopyFor::Placement => Purpose::Copy,
                    CopyFor::Durability => Purpose::Durability,
                },
            )
            .await
            .map_err(|why| {
                RegistryError::Unavailable(format!(
                    "no node holding blob {digest} could provide it ({why})"
                ))
            })
    }
}
