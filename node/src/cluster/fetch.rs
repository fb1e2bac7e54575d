//! Streaming a blob from a node that holds it (`berth.peer.v1.Peer/FetchBlob`).
//!
//! The call that opens the stream has a deadline; after that, each chunk must arrive within
//! [`CHUNK_TIMEOUT`], so a stalled peer ends the fetch instead of hanging the client behind
//! it. The caller verifies the digest of what it received and paces copies
//! ([`super::PeerBandwidth`]).

use std::time::Duration;

use berth_proto::peer::FetchBlobRequest;
use berth_proto::peer::peer_client::PeerClient;
use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::Cluster;
use super::peers::{Lane, PeerError, Peers};
use crate::meta::NodeId;
use crate::types::Digest;

/// Deadline for a peer to start answering a fetch.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the next chunk of a fetch.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

/// A blob streaming in from a peer.
pub struct BlobStream {
    /// The size the peer announced.
    pub size: u64,
    /// The bytes, in order.
    pub body: BoxStream<'static, Result<Bytes, PeerError>>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Opens a stream of a blob from `holder`, on the connection of `lane` (`Reads` for a
    /// stream read at full speed, `Copies` for one that may pause for its pace).
    ///
    /// Errors: [`PeerError::NotMember`] when the holder is not a member; else as
    /// [`Peers::call`] (NOT_FOUND in the status when it does not hold the blob).
    pub async fn fetch_blob(
        &self,
        holder: NodeId,
        digest: &Digest,
        lane: Lane,
    ) -> Result<BlobStream, PeerError> {
        let addr = self.reachable_member(holder)?.cluster_addr;
        let message = FetchBlobRequest {
            digest: digest.to_string(),
        };
        let mut stream = self
            .peers
            .call(
                lane,
                holder,
                &addr,
                OPEN_TIMEOUT,
                message,
                |channel, req| async move { PeerClient::new(channel).fetch_blob(req).await },
            )
            .await?;
        let fail = |s| Peers::call_error(holder, &addr, s);
        let first = next_chunk(&mut stream).await.map_err(fail)?;
        let Some(first) = first else {
            return Err(fail(tonic::Status::data_loss("empty blob stream")));
        };
        let size = first.size;
        let head = futures::stream::once(async move { Ok(first.data) });
        let rest = futures::stream::unfold(Some(stream), move |s| {
            let addr = addr.clone();
            async move {
                let mut s = s?;
                match next_chunk(&mut s).await {
                    Ok(Some(c)) => Some((Ok(c.data), Some(s))),
                    Ok(None) => None,
                    Err(status) => Some((Err(Peers::call_error(holder, &addr, status)), None)),
                }
            }
        });
        Ok(BlobStream {
            size,
            body: head.chain(rest).boxed(),
        })
    }
}

async fn next_chunk<S>(s: &mut S) -> Result<Option<berth_proto::peer::BlobChunk>, tonic::Status>
where
    S: Stream<Item = Result<berth_proto::peer::BlobChunk, tonic::Status>> + Unpin,
{
    match tokio::time::timeout(CHUNK_TIMEOUT, s.next()).await {
        Err(_) => Err(tonic::Status::deadline_exceeded("the peer stopped sending")),
        Ok(None) => Ok(None),
        Ok(Some(r)) => r.map(Some),
    }
}
