//! Copies of blobs this node lacks: fetched from a node that holds one, verified, kept, and
//! recorded (`BlobCopied`) so the cluster knows this node holds it too.
//!
//! Concurrent misses for the same blob share one fetch. A fetch tries the holders in turn;
//! every call to a peer has a deadline (see `cluster::fetch`), so a dead holder costs the time
//! of one failed call, not a hung request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, TryStreamExt};

use crate::blobstore::BlobStore;
use crate::cluster::Cluster;
use crate::meta::{Command, CommandV1, NodeId};
use crate::types::Digest;

type Fetch = Shared<BoxFuture<'static, Result<(), Arc<String>>>>;

/// The fetches in flight on this node.
#[derive(Debug, Default)]
pub(super) struct BlobFetcher {
    in_flight: Arc<Mutex<HashMap<Digest, Fetch>>>,
}

impl BlobFetcher {
    /// Another handle on the same set of fetches (for a background task).
    pub(super) fn clone_handle(&self) -> BlobFetcher {
        BlobFetcher {
            in_flight: self.in_flight.clone(),
        }
    }

    /// Makes sure this node holds `digest`, fetching it from one of `holders` if needed. Joins
    /// a fetch of the same blob already running. Errors: why no holder could provide it.
    pub(super) async fn ensure(
        &self,
        cluster: &Cluster,
        blobs: &Arc<BlobStore>,
        digest: &Digest,
        holders: Vec<NodeId>,
    ) -> Result<(), Arc<String>> {
        let fetch = {
            let mut map = self.in_flight.lock().expect("fetch map poisoned");
            match map.get(digest) {
                Some(f) => f.clone(),
                None => {
                    let in_flight = self.in_flight.clone();
                    let (cluster, blobs, d) = (cluster.clone(), blobs.clone(), digest.clone());
                    let f = async move {
                        let res = fetch(&cluster, &blobs, &d, holders).await;
                        in_flight.lock().expect("fetch map poisoned").remove(&d);
                        res.map_err(Arc::new)
                    }
                    .boxed()
                    .shared();
                    map.insert(digest.clone(), f.clone());
                    // Run it on its own task: a client that hangs up must not cancel a fetch
                    // that others share.
                    tokio::spawn(f.clone());
                    f
                }
            }
        };
        fetch.await
    }
}

async fn fetch(
    cluster: &Cluster,
    blobs: &Arc<BlobStore>,
    digest: &Digest,
    holders: Vec<NodeId>,
) -> Result<(), String> {
    let me = cluster.node_id();
    if blobs
        .stat(digest)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let mut why = "no other node holds it".to_string();
    for holder in holders.into_iter().filter(|h| *h != me) {
        match copy_from(cluster, blobs, digest, holder).await {
            Ok(size) => {
                tracing::info!(%digest, holder, size, "fetched a copy of a blob from a peer");
                let cmd = CommandV1::BlobCopied {
                    digest: digest.clone(),
                    node: me,
                };
                if let Err(e) = cluster.write(Command::V1(cmd)).await {
                    // The copy is verified and kept; only the holder record is missing.
                    tracing::warn!(%digest, error = %e, "failed to record a fetched blob copy");
                }
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(%digest, holder, error = %e, "failed to fetch blob from a peer");
                why = format!("node {holder}: {e}");
            }
        }
    }
    Err(why)
}

async fn copy_from(
    cluster: &Cluster,
    blobs: &Arc<BlobStore>,
    digest: &Digest,
    holder: NodeId,
) -> Result<u64, String> {
    let stream = cluster
        .fetch_blob(holder, digest)
        .await
        .map_err(|e| e.to_string())?;
    let mut staged = blobs.begin_upload(&super::uploads::new_id(cluster.node_id()));
    let received = match staged
        .append(stream.body.map_err(std::io::Error::other))
        .await
    {
        Ok(n) => n,
        Err(e) => {
            staged.abort().await;
            return Err(e.to_string());
        }
    };
    if received != stream.size {
        staged.abort().await;
        return Err(format!(
            "received {received} bytes of a {}-byte blob",
            stream.size
        ));
    }
    // Verifies the digest, makes the copy durable and moves it into place.
    staged
        .finish(blobs, digest)
        .await
        .map(|info| info.size)
        .map_err(|e| e.to_string())
}
