//! The scrubber of this node: every `scrub_every` it re-hashes every blob the cluster records
//! this node as holding (paced to `scrub_bytes_per_sec`), and a copy that is corrupt or
//! missing is removed and fetched again from another holder through
//! `Registry::ensure_local_copy` (nearest holder, verified, crash-safe). Each check and each
//! repair is counted (`berth_scrub_checked_total`, `berth_scrub_repairs_total`) and every
//! finding is logged.
//!
//! A corrupt file is removed even when no other node can provide the blob: its bytes can never
//! be served (every client verifies the digest), and without the file a read here fetches the
//! blob from a holder once one exists again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::blobstore::Verified;
use crate::meta::MetaReader;
use crate::registry::{CopyFor, Registry};
use crate::types::Digest;

/// Blob records read per page of a scrub.
const PAGE: usize = 256;

/// The scrubber of this node.
pub struct ScrubWorker {
    registry: Arc<Registry>,
    meta: MetaReader,
    every: Duration,
    bytes_per_sec: u64,
}

/// What one scrub found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScrubReport {
    /// Copies re-hashed (or found missing).
    pub checked: u64,
    /// Corrupt or missing copies replaced from a peer.
    pub repaired: u64,
    /// Corrupt or missing copies that could not be replaced now.
    pub unrepaired: u64,
}

impl ScrubWorker {
    /// The scrubber of the node `registry` serves.
    pub fn new(
        registry: Arc<Registry>,
        meta: MetaReader,
        every: Duration,
        bytes_per_sec: u64,
    ) -> ScrubWorker {
        ScrubWorker {
            registry,
            meta,
            every,
            bytes_per_sec,
        }
    }

    /// Scrubs every `every` (the first time one interval after start) until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.every) => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                r = self.scrub() => match r {
                    Ok(report) => tracing::info!(
                        checked = report.checked,
                        repaired = report.repaired,
                        unrepaired = report.unrepaired,
                        "scrubbed local blob copies"
                    ),
                    Err(e) => tracing::warn!(error = %e, "failed to scrub local blob copies"),
                },
            }
        }
    }

    /// One scrub of every blob recorded as held by this node.
    pub async fn scrub(&self) -> Result<ScrubReport, crate::meta::MetaError> {
        let me = self.registry.cluster().node_id();
        let metrics = self.registry.metrics().clone();
        let mut report = ScrubReport::default();
        let mut after: Option<Digest> = None;
        loop {
            let page = self.meta.blob_page(after.take(), PAGE).await?;
            let Some((last, _)) = page.last() else {
                return Ok(report);
            };
            after = Some(last.clone());
            for (digest, record) in page {
                if !record.holders.contains(&me) {
                    continue;
                }
                let blobs = self.registry.blob_store();
                let found = match blobs.verify(&digest, self.bytes_per_sec).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(%digest, error = %e, "failed to scrub a blob copy");
                        continue;
                    }
                };
                report.checked += 1;
                metrics.scrub_checked.inc();
                match found {
                    Verified::Intact => continue,
                    Verified::Corrupt(actual) => {
                        tracing::error!(%digest, %actual, "a local blob copy is corrupt; replacing it from a peer");
                        if let Err(e) = blobs.delete(&digest).await {
                            tracing::warn!(%digest, error = %e, "failed to remove a corrupt blob copy");
                            report.unrepaired += 1;
                            continue;
                        }
                    }
                    Verified::Missing => {
                        tracing::error!(%digest, "a local blob copy is missing; fetching it from a peer");
                    }
                }
                match self
                    .registry
                    .ensure_local_copy(&digest, CopyFor::Placement)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(%digest, "repaired a local blob copy from a peer");
                        report.repaired += 1;
                        metrics.scrub_repairs.inc();
                    }
                    Err(e) => {
                        tracing::error!(%digest, error = %e, "failed to repair a local blob copy");
                        report.unrepaired += 1;
                    }
                }
            }
        }
    }
}
