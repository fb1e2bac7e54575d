//! Upload sessions in progress on this node.
//!
//! A session id names its owner: `<node id in hex>-<32 hex random>`, so that (in a cluster
//! behind a load balancer) any node can tell which node holds the staging file. Sessions live
//! in memory; a restart ends them (their staging files are removed at start-up).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;

use super::RegistryError;
use crate::blobstore::{BlobStore, StagedUpload};
use crate::meta::NodeId;
use crate::types::RepositoryName;

/// Where an upload stands.
#[derive(Debug, Clone)]
pub struct UploadStatus {
    /// The session id.
    pub id: String,
    /// Bytes received so far.
    pub offset: u64,
}

/// A new session id owned by `node`.
pub(super) fn new_id(node: NodeId) -> String {
    format!("{node:x}-{}", uuid::Uuid::new_v4().simple())
}

/// The node that owns a session id, if the id has the shape of one.
pub fn owner_of(id: &str) -> Option<NodeId> {
    if !valid_id(id) {
        return None;
    }
    let (node, _) = id.split_once('-')?;
    NodeId::from_str_radix(node, 16).ok()
}

/// Whether `id` has the shape of a session id (safe as a file name).
fn valid_id(id: &str) -> bool {
    let Some((node, rand)) = id.split_once('-') else {
        return false;
    };
    !node.is_empty()
        && node.len() <= 16
        && rand.len() == 32
        && node
            .bytes()
            .chain(rand.bytes())
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A chunk must start where the upload stands.
fn check_start(staged: &StagedUpload, start: Option<u64>) -> Result<(), RegistryError> {
    match start {
        Some(start) if start != staged.offset() => Err(RegistryError::ChunkOutOfOrder {
            received: staged.offset(),
        }),
        _ => Ok(()),
    }
}

#[derive(Debug)]
struct Session {
    repo: RepositoryName,
    /// `None` once the session was finished or cancelled by a request that raced this one.
    staged: Option<StagedUpload>,
    last_active: Instant,
}

type SessionRef = Arc<tokio::sync::Mutex<Session>>;

/// The sessions of this node.
#[derive(Debug)]
pub(super) struct Uploads {
    node: NodeId,
    sessions: std::sync::Mutex<HashMap<String, SessionRef>>,
}

impl Uploads {
    pub(super) fn new(node: NodeId) -> Uploads {
        Uploads {
            node,
            sessions: Default::default(),
        }
    }

    pub(super) async fn start(
        &self,
        store: &BlobStore,
        repo: &RepositoryName,
    ) -> Result<UploadStatus, RegistryError> {
        let id = new_id(self.node);
        let staged = store.begin_upload(&id);
        let session = Session {
            repo: repo.clone(),
            staged: Some(staged),
            last_active: Instant::now(),
        };
        self.sessions
            .lock()
            .expect("uploads lock")
            .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(session)));
        Ok(UploadStatus { id, offset: 0 })
    }

    /// The session `id` of `repo`, locked.
    async fn lock(
        &self,
        repo: &RepositoryName,
        id: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<Session>, RegistryError> {
        let unknown = || RegistryError::BlobUploadUnknown(id.to_string());
        if !valid_id(id) {
            return Err(unknown());
        }
        let session = self
            .sessions
            .lock()
            .expect("uploads lock")
            .get(id)
            .cloned()
            .ok_or_else(unknown)?;
        let guard = session.lock_owned().await;
        if &guard.repo != repo || guard.staged.is_none() {
            return Err(unknown());
        }
        Ok(guard)
    }

    fn forget(&self, id: &str) {
        self.sessions.lock().expect("uploads lock").remove(id);
    }

    pub(super) async fn status(
        &self,
        repo: &RepositoryName,
        id: &str,
    ) -> Result<UploadStatus, RegistryError> {
        let guard = self.lock(repo, id).await?;
        let offset = guard.staged.as_ref().map_or(0, StagedUpload::offset);
        Ok(UploadStatus {
            id: id.to_string(),
            offset,
        })
    }

    pub(super) async fn append<S, E>(
        &self,
        repo: &RepositoryName,
        id: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<UploadStatus, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut guard = self.lock(repo, id).await?;
        let staged = guard.staged.as_mut().expect("checked by lock");
        check_start(staged, start)?;
        let res = staged.append(body).await;
        guard.last_active = Instant::now();
        let offset = res?;
        Ok(UploadStatus {
            id: id.to_string(),
            offset,
        })
    }

    /// Appends the final chunk and hands the staging file over for verification; the session
    /// ends here whatever happens next.
    pub(super) async fn take_for_finish<S, E>(
        &self,
        repo: &RepositoryName,
        id: &str,
        start: Option<u64>,
        final_chunk: S,
    ) -> Result<StagedUpload, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut guard = self.lock(repo, id).await?;
        let staged = guard.staged.as_mut().expect("checked by lock");
        check_start(staged, start)?;
        staged.append(final_chunk).await?;
        let staged = guard.staged.take().expect("checked by lock");
        self.forget(id);
        Ok(staged)
    }

    pub(super) async fn cancel(
        &self,
        repo: &RepositoryName,
        id: &str,
    ) -> Result<(), RegistryError> {
        let mut guard = self.lock(repo, id).await?;
        let staged = guard.staged.take().expect("checked by lock");
        self.forget(id);
        staged.abort().await;
        Ok(())
    }

    /// Cancels sessions idle for longer than `idle`; a session busy with a request is active.
    pub(super) async fn expire(&self, idle: Duration) -> usize {
        let candidates: Vec<(String, SessionRef)> = self
            .sessions
            .lock()
            .expect("uploads lock")
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        let mut expired = 0;
        for (id, session) in candidates {
            let Ok(mut guard) = session.try_lock() else {
                continue;
            };
            if guard.last_active.elapsed() < idle {
                continue;
            }
            if let Some(staged) = guard.staged.take() {
                staged.abort().await;
                expired += 1;
            }
            self.forget(&id);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_node_and_are_safe() {
        let id = new_id(0x2a);
        assert!(id.starts_with("2a-"), "{id}");
        assert!(valid_id(&id));
        for bad in [
            "",
            "2a",
            "2a-",
            "../x",
            "2a-0123456789abcdef0123456789abcdeg",
            "2A-0123456789abcdef0123456789abcdef",
        ] {
            assert!(!valid_id(bad), "{bad}");
            assert_eq!(owner_of(bad), None, "{bad}");
        }
        assert_eq!(owner_of(&id), Some(0x2a));
        assert_eq!(owner_of(&new_id(u64::MAX)), Some(u64::MAX));
    }
}
