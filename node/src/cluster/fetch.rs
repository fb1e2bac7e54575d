//! Streaming a blob from a node that holds it (`berth.peer.v1.Peer/FetchBlob`).
//!
//! The call that opens the stream has a deadline; after that, each chunk must arrive within
//! [`CHUNK_TIMEOUT`], so a stalled peer ends the fetch instead of hanging the client behind
//! it. The caller verifies the digest of what it received. [`PeerBandwidth`] paces the fetches
//! a caller wants capped (replication and durability copies), one token bucket per peer.

use std::time::Duration;

use berth_proto::peer::FetchBlobRequest;
use berth_proto::peer::peer_client::PeerClient;
use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::Cluster;
use super::peers::{PeerError, Peers};
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
    /// Opens a stream of a blob from `holder`.
    ///
    /// Errors: [`PeerError::NotMember`] when the holder is not a member; else as
    /// [`Peers::call`] (NOT_FOUND in the status when it does not hold the blob).
    pub async fn fetch_blob(
        &self,
        holder: NodeId,
        digest: &Digest,
    ) -> Result<BlobStream, PeerError> {
        let addr = self.reachable_member(holder)?.cluster_addr;
        let message = FetchBlobRequest {
            digest: digest.to_string(),
        };
        let mut stream = self
            .peers
            .call(
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

/// A cap on the bytes per second fetched from each peer: one token bucket per peer, shared by
/// every fetch this node makes from that peer while the cap applies to it. Fetches made for
/// replication and durability copies are capped; a client's read-through is not (see
/// `registry::fetch`). The bucket holds at most one second of bytes, so a peer idle for a
/// while gets a burst of one second's worth, no more.
#[derive(Debug)]
pub struct PeerBandwidth {
    /// Bytes per second per peer; 0: no cap.
    rate: u64,
    buckets: std::sync::Mutex<std::collections::HashMap<NodeId, Bucket>>,
}

/// One peer's bucket: tokens (bytes) available at `at`; negative when fetches reserved more
/// than there was (they wait until it is paid back).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    /// Refills the bucket up to `now` (at most one second's worth), takes `n` bytes from it,
    /// and returns how long the taker must wait for the bucket to have paid them back.
    fn reserve(&mut self, now: tokio::time::Instant, n: u64, rate: u64) -> Duration {
        let rate = rate as f64;
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(rate) - n as f64;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

impl PeerBandwidth {
    /// A cap of `bytes_per_sec` per peer (0: unlimited).
    pub fn new(bytes_per_sec: u64) -> PeerBandwidth {
        PeerBandwidth {
            rate: bytes_per_sec,
            buckets: std::sync::Mutex::default(),
        }
    }

    /// Whether a cap is set.
    pub fn is_capped(&self) -> bool {
        self.rate > 0
    }

    /// Takes `n` bytes from `peer`'s bucket, waiting until the bucket has paid them back when
    /// it runs short. Returns at once when no cap is set.
    pub async fn take(&self, peer: NodeId, n: u64) {
        if self.rate == 0 || n == 0 {
            return;
        }
        let wait = {
            let mut buckets = self.buckets.lock().expect("bandwidth buckets poisoned");
            let now = tokio::time::Instant::now();
            let b = buckets.entry(peer).or_insert(Bucket {
                tokens: self.rate as f64,
                at: now,
            });
            b.reserve(now, n, self.rate)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full bucket gives one second's worth at once; past it each byte waits its share; an
    /// idle while refills it, never beyond one second's worth.
    #[test]
    fn a_bucket_paces_at_its_rate() {
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let mut b = Bucket {
            tokens: 1000.0,
            at: t0,
        };
        assert_eq!(b.reserve(t0, 1000, 1000), Duration::ZERO);
        assert_eq!(b.reserve(t0, 500, 1000), ms(500));
        // Three seconds later: paid back, then refilled to one second's worth only.
        assert_eq!(b.reserve(t0 + ms(3000), 1000, 1000), Duration::ZERO);
        assert_eq!(b.reserve(t0 + ms(3000), 2000, 1000), ms(2000));
        // Half a second later, half a second of that debt is paid.
        assert_eq!(b.reserve(t0 + ms(3500), 0, 1000), ms(1500));
    }

    /// No cap: no wait, whatever the size; peers have buckets of their own.
    #[tokio::test]
    async fn no_cap_never_waits_and_peers_are_apart() {
        let free = PeerBandwidth::new(0);
        assert!(!free.is_capped());
        tokio::time::timeout(Duration::from_secs(5), free.take(7, u64::MAX / 2))
            .await
            .expect("no wait without a cap");
        let capped = PeerBandwidth::new(1_000_000);
        assert!(capped.is_capped());
        capped.take(7, 1_000_000).await;
        // Peer 8's bucket is full: its first second's worth goes at once.
        tokio::time::timeout(Duration::from_secs(5), capped.take(8, 1_000_000))
            .await
            .expect("a peer of its own");
        let buckets = capped.buckets.lock().unwrap();
        assert_eq!(buckets.len(), 2);
    }
}
