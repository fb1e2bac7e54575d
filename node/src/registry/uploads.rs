//! Upload sessions in progress on this node.
//!
//! A session id names its owner: `<node id in hex>-<32 hex random>`, so that (in a cluster
//! behind a load balancer) any node can tell which node holds the staging file. Sessions live
//! in memory; a restart ends them (their staging files are removed at start-up).
//!
//! One request at a time writes to a session: it takes the staging file out of the session (a
//! [`Lease`]) and puts it back when it is done. Meanwhile the session answers at once: a status
//! request gets the offset as of the last completed request, a cancel ends the session and stops
//! the writing request (which then removes the staging file), and a competing write is refused
//! with [`RegistryError::UploadBusy`]. The registry runs each writing request in a task of its
//! own, so a client that hangs up cannot cut a write off half-way: the session always agrees
//! with its staging file.
//!
//! Sessions are bounded: at most `max_sessions` on the node and `max_sessions_per_client` per
//! client address; past either, a new session is refused with
//! [`RegistryError::TooManyUploads`]. An idle session holds no thread and at most a small
//! partial block in memory (see `blobstore::StagedUpload::park`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

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

/// Bounds on upload sessions.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Sessions open on this node at once.
    pub max_sessions: usize,
    /// Sessions open at once per client address.
    pub max_sessions_per_client: usize,
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

/// A body that is longer or shorter than the length its chunk declared.
#[derive(Debug, thiserror::Error)]
#[error("the chunk declared {declared} bytes but its body {received}")]
pub(super) struct LengthMismatch {
    declared: u64,
    received: String,
}

/// The body of a chunk that declared `len` bytes: what arrives up to the declared end passes,
/// a frame past it or an early end fails the body with [`LengthMismatch`] (whatever the
/// transfer encoding). A declared length of 1 also admits an empty body (`0-0` on an empty
/// chunk). Without a declared length the body passes as it is.
pub(super) fn declared<S, E>(
    body: S,
    len: Option<u64>,
) -> impl Stream<Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> + Unpin + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    struct State<S> {
        body: S,
        declared: Option<u64>,
        seen: u64,
        /// Reported after the frame that reached the declared end.
        then_fail: Option<BoxError>,
        done: bool,
    }
    let state = State {
        body,
        declared: len,
        seen: 0,
        then_fail: None,
        done: false,
    };
    let mismatch = |declared, received: String| -> BoxError {
        Box::new(LengthMismatch { declared, received })
    };
    Box::pin(futures::stream::unfold(state, move |mut st| async move {
        if let Some(e) = st.then_fail.take() {
            st.done = true;
            return Some((Err(e), st));
        }
        if st.done {
            return None;
        }
        match st.body.next().await {
            Some(Ok(mut frame)) => {
                if let Some(declared) = st.declared {
                    let room = declared - st.seen;
                    if frame.len() as u64 > room {
                        let over = st.seen + frame.len() as u64;
                        frame.truncate(room as usize);
                        st.seen = declared;
                        st.then_fail = Some(mismatch(declared, format!("carried at least {over}")));
                        return Some((Ok(frame), st));
                    }
                }
                st.seen += frame.len() as u64;
                Some((Ok(frame), st))
            }
            Some(Err(e)) => {
                st.done = true;
                Some((Err(e.into()), st))
            }
            None => {
                st.done = true;
                match st.declared {
                    Some(declared) if st.seen != declared && !(declared == 1 && st.seen == 0) => {
                        Some((Err(mismatch(declared, format!("carried {}", st.seen))), st))
                    }
                    _ => None,
                }
            }
        }
    }))
}

#[derive(Debug)]
struct Session {
    repo: RepositoryName,
    client: Option<IpAddr>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    slot: Slot,
    /// Bytes received as of the last completed request.
    offset: u64,
    last_active: Instant,
}

#[derive(Debug)]
enum Slot {
    /// No request is writing; the staging file waits here.
    Idle(Box<StagedUpload>),
    /// A request holds the staging file; cancelling the token ends the session.
    Busy(CancellationToken),
    /// Finished or cancelled.
    Ended,
}

/// The sessions of this node.
#[derive(Debug)]
pub(super) struct Uploads {
    node: NodeId,
    limits: UploadLimits,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    sessions: HashMap<String, Arc<Session>>,
    per_client: HashMap<IpAddr, usize>,
}

impl Inner {
    fn remove(&mut self, id: &str) {
        if let Some(s) = self.sessions.remove(id)
            && let Some(ip) = s.client
            && let Some(n) = self.per_client.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&ip);
            }
        }
    }
}

/// A session's staging file, taken by the one request writing to it. Dropped without
/// [`Lease::release`] or [`Lease::take`] (the request failed before writing), it puts the
/// staging file back untouched.
#[derive(Debug)]
pub(super) struct Lease {
    id: String,
    session: Arc<Session>,
    sessions: Arc<Mutex<Inner>>,
    staged: Option<StagedUpload>,
    cancel: CancellationToken,
}

impl Lease {
    /// Bytes received so far.
    pub(super) fn offset(&self) -> u64 {
        self.staged.as_ref().map_or(0, StagedUpload::offset)
    }

    /// A chunk must start where the upload stands.
    pub(super) fn check_start(&self, start: Option<u64>) -> Result<(), RegistryError> {
        match start {
            Some(start) if start != self.offset() => Err(RegistryError::ChunkOutOfOrder {
                received: self.offset(),
            }),
            _ => Ok(()),
        }
    }

    /// The staging file.
    pub(super) fn staged(&mut self) -> &mut StagedUpload {
        self.staged.as_mut().expect("held until released")
    }

    /// Resolves when the session was cancelled while this request writes.
    pub(super) fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.cancel.clone().cancelled_owned()
    }

    /// Ends the request and returns the session's status: the staging file goes back to the
    /// session, or is removed if the session was cancelled meanwhile or the upload broke (a
    /// write failed), which ends the session.
    pub(super) async fn release(mut self) -> Result<UploadStatus, RegistryError> {
        let staged = self.staged.take().expect("held until released");
        if staged.is_broken() {
            self.end();
        } else {
            // Under the session's lock, as `Uploads::cancel` decides: either not cancelled
            // (the session takes the file back) or cancelled and ended.
            let mut state = self.session.state.lock().expect("session lock");
            if !self.cancel.is_cancelled() {
                let offset = staged.offset();
                state.offset = offset;
                state.last_active = Instant::now();
                state.slot = Slot::Idle(Box::new(staged));
                return Ok(UploadStatus {
                    id: self.id.clone(),
                    offset,
                });
            }
        }
        staged.abort().await;
        Err(RegistryError::BlobUploadUnknown(self.id.clone()))
    }

    /// Ends the session and hands its staging file over (to be finished).
    ///
    /// Errors: [`RegistryError::BlobUploadUnknown`] when the session was cancelled meanwhile
    /// (the staging file is then removed).
    pub(super) fn take(mut self) -> Result<StagedUpload, RegistryError> {
        {
            let mut state = self.session.state.lock().expect("session lock");
            if self.cancel.is_cancelled() {
                drop(state);
                // Dropping the lease drops the upload, which removes its staging file.
                return Err(RegistryError::BlobUploadUnknown(self.id.clone()));
            }
            state.slot = Slot::Ended;
        }
        self.end();
        Ok(self.staged.take().expect("held until released"))
    }

    /// Ends the session: it is forgotten, and later requests find it unknown.
    fn end(&self) {
        self.session.state.lock().expect("session lock").slot = Slot::Ended;
        self.sessions.lock().expect("uploads lock").remove(&self.id);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(staged) = self.staged.take() else {
            return;
        };
        if staged.is_broken() {
            // Dropping it removes its staging file.
            self.end();
            return;
        }
        let mut state = self.session.state.lock().expect("session lock");
        if !self.cancel.is_cancelled() {
            state.slot = Slot::Idle(Box::new(staged));
        }
    }
}

impl Uploads {
    pub(super) fn new(node: NodeId, limits: UploadLimits) -> Uploads {
        Uploads {
            node,
            limits,
            inner: Default::default(),
        }
    }

    /// Sessions open on this node now.
    pub(super) fn open_sessions(&self) -> usize {
        self.inner.lock().expect("uploads lock").sessions.len()
    }

    /// Opens a session for `client` (when known).
    ///
    /// Errors: [`RegistryError::TooManyUploads`] past the node's or the client's bound.
    pub(super) fn start(
        &self,
        store: &BlobStore,
        repo: &RepositoryName,
        client: Option<IpAddr>,
    ) -> Result<UploadStatus, RegistryError> {
        let mut inner = self.inner.lock().expect("uploads lock");
        if inner.sessions.len() >= self.limits.max_sessions {
            return Err(RegistryError::TooManyUploads(format!(
                "this node has {} upload sessions open, its limit",
                inner.sessions.len()
            )));
        }
        if let Some(ip) = client {
            let open = inner.per_client.get(&ip).copied().unwrap_or(0);
            if open >= self.limits.max_sessions_per_client {
                return Err(RegistryError::TooManyUploads(format!(
                    "{ip} has {open} upload sessions open, the limit per client"
                )));
            }
            *inner.per_client.entry(ip).or_default() += 1;
        }
        let id = new_id(self.node);
        let session = Session {
            repo: repo.clone(),
            client,
            state: Mutex::new(State {
                slot: Slot::Idle(Box::new(store.begin_upload(&id))),
                offset: 0,
                last_active: Instant::now(),
            }),
        };
        inner.sessions.insert(id.clone(), Arc::new(session));
        Ok(UploadStatus { id, offset: 0 })
    }

    /// The session `id` of `repo`.
    fn session(&self, repo: &RepositoryName, id: &str) -> Result<Arc<Session>, RegistryError> {
        let unknown = || RegistryError::BlobUploadUnknown(id.to_string());
        if !valid_id(id) {
            return Err(unknown());
        }
        let session = self
            .inner
            .lock()
            .expect("uploads lock")
            .sessions
            .get(id)
            .cloned()
            .ok_or_else(unknown)?;
        if &session.repo != repo {
            return Err(unknown());
        }
        Ok(session)
    }

    /// Takes the staging file of session `id` for one writing request.
    ///
    /// Errors: [`RegistryError::BlobUploadUnknown`]; [`RegistryError::UploadBusy`] while
    /// another request writes to the session.
    pub(super) fn lease(&self, repo: &RepositoryName, id: &str) -> Result<Lease, RegistryError> {
        let session = self.session(repo, id)?;
        let cancel = CancellationToken::new();
        let staged = {
            let mut state = session.state.lock().expect("session lock");
            match std::mem::replace(&mut state.slot, Slot::Busy(cancel.clone())) {
                Slot::Idle(staged) => *staged,
                other => {
                    let busy = matches!(other, Slot::Busy(_));
                    state.slot = other;
                    return Err(if busy {
                        RegistryError::UploadBusy(id.to_string())
                    } else {
                        RegistryError::BlobUploadUnknown(id.to_string())
                    });
                }
            }
        };
        Ok(Lease {
            id: id.to_string(),
            session,
            sessions: self.inner.clone(),
            staged: Some(staged),
            cancel,
        })
    }

    fn forget(&self, id: &str) {
        self.inner.lock().expect("uploads lock").remove(id);
    }

    /// Where the session stands: at once, also while a request writes to it (then as of the
    /// last completed request).
    pub(super) fn status(
        &self,
        repo: &RepositoryName,
        id: &str,
    ) -> Result<UploadStatus, RegistryError> {
        let session = self.session(repo, id)?;
        let state = session.state.lock().expect("session lock");
        if matches!(state.slot, Slot::Ended) {
            return Err(RegistryError::BlobUploadUnknown(id.to_string()));
        }
        Ok(UploadStatus {
            id: id.to_string(),
            offset: state.offset,
        })
    }

    /// Ends the session at once; a request writing to it is stopped and removes the staging
    /// file.
    pub(super) async fn cancel(
        &self,
        repo: &RepositoryName,
        id: &str,
    ) -> Result<(), RegistryError> {
        let session = self.session(repo, id)?;
        let slot = {
            // Under the session's lock: a writer releasing at the same moment sees either its
            // session busy and not cancelled (and the cancel then finds it idle), or cancelled
            // and ended; and no new writer can lease an ended session.
            let mut state = session.state.lock().expect("session lock");
            if let Slot::Busy(cancel) = &state.slot {
                cancel.cancel();
            }
            std::mem::replace(&mut state.slot, Slot::Ended)
        };
        self.forget(id);
        match slot {
            Slot::Idle(staged) => staged.abort().await,
            Slot::Busy(_) => {}
            Slot::Ended => return Err(RegistryError::BlobUploadUnknown(id.to_string())),
        }
        Ok(())
    }

    /// Cancels sessions idle for longer than `idle`; a session busy with a request is active.
    pub(super) async fn expire(&self, idle: Duration) -> usize {
        let candidates: Vec<(String, Arc<Session>)> = self
            .inner
            .lock()
            .expect("uploads lock")
            .sessions
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        let mut expired = 0;
        for (id, session) in candidates {
            let staged = {
                let mut state = session.state.lock().expect("session lock");
                if state.last_active.elapsed() < idle || matches!(state.slot, Slot::Busy(_)) {
                    continue;
                }
                std::mem::replace(&mut state.slot, Slot::Ended)
            };
            self.forget(&id);
            if let Slot::Idle(staged) = staged {
                staged.abort().await;
                expired += 1;
            }
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
