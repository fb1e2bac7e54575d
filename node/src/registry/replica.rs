//! Copies of blobs made for placement and durability rather than for a client's read: the
//! replicator and the synchronous copies of a manifest PUT ask for one here. The bytes come
//! through the same fetch as a read-through (nearest holder first, verified, stored through the
//! crash-safe path, recorded with `BlobCopied`), so a copy in progress for either purpose is
//! shared with the other. A fetch made for a copy only is paced by the per-peer bandwidth cap
//! (`replication.max_bytes_per_sec_per_peer`), until a client's read joins it.

use super::{Registry, RegistryError};
use crate::meta::CommandV1;
use crate::types::Digest;

impl Registry {
    /// Makes sure this node holds a verified copy of a blob the cluster knows, fetching it from
    /// the nearest holder if needed and recording this node as a holder. Joins a fetch of the
    /// same blob already running.
    ///
    /// Errors: [`RegistryError::BlobUnknown`] when the cluster has no record of it (this node
    /// caught up with the leader before saying so: a durability copy is asked for right after
    /// the blob's push elsewhere); [`RegistryError::NoQuorum`] when it could not catch up; [`RegistryError::Unavailable`] when no holder could provide it;
    /// a storage error when there is no room for it.
    pub async fn ensure_local_copy(&self, digest: &Digest) -> Result<(), RegistryError> {
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
                super::fetch::Purpose::Copy,
            )
            .await
            .map_err(|why| {
                RegistryError::Unavailable(format!(
                    "no node holding blob {digest} could provide it ({why})"
                ))
            })
    }
}
