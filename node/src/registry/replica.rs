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
use crate::meta::CommandV1;
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
    /// the blob's push elsewhere); [`RegistryError::NoQuorum`] when it could not catch up; [`RegistryError::Unavailable`] when no holder could provide it;
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
            if !record.holders.contains(&me) {
                // A copy is on disk but its record was lost (a crash between the rename and the
                // commit): record it now, so that placement counts it.
                self.write(CommandV1::BlobCopied {
                    digest: digest.clone(),
                    node: me,
                })
                .await?;
            }
            return Ok(());
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
