//! One webhook's delivery, on the node that delivers it.
//!
//! The task reads the event log from the webhook's cursor, a window of events at a time, and
//! turns each event into its parts: the event itself when the webhook subscribes to its action
//! and scope, and a `replicated` part per region when it subscribes to `replicated`. It sends
//! one part at a time and keeps, per repository, the order of the log:
//!
//! - parts form streams: per repository the events' own parts, and per repository and region
//!   the `replicated` parts; a part is sent only after every earlier part of its stream;
//! - a part may wait: a `replicated` part until its region holds the image, a push to a
//!   regional webhook until the image is complete in the webhook's region (or the region is not
//!   one the image is copied to). Other streams go on meanwhile;
//! - a failed attempt (no 2xx answer) is retried after 1 s, doubling up to the configured cap;
//!   nothing else of this webhook is sent meanwhile (its endpoint is failing), and nothing of
//!   other webhooks waits for it (each has its own task).
//!
//! The cursor is the first event with a part not yet done. It is committed through Raft with
//! the delivery log — at most once a second when something was sent, every 10 s when only the
//! cursor moved (over events outside the webhook's scope) — so a node that takes over resumes
//! from it; what was sent after the last commit is sent again then, with the same event ids
//! (at least once).
//!
//! Bounds: at most [`WINDOW`] events are held. A waiting part is looked at again at most once a
//! second. When the window is full of events that wait (a region far behind), the oldest
//! waiting part is given up, logged as not sent, so that the other repositories go on.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::payload::{self, Outgoing};
use super::{WebhookError, Webhooks};
use crate::meta::webhooks::{Action, Delivery, Event, Webhook, WebhookCommand};
use crate::replication::Plan;
use crate::types::time::now_ms;

/// Events read ahead of the cursor at most.
pub(super) const WINDOW: usize = 1024;
/// How often a part that waits is looked at again.
const RECHECK: Duration = Duration::from_secs(1);
/// How often an idle task looks for new events, and re-checks parts that wait.
const TICK: Duration = Duration::from_millis(200);
/// How often progress is committed at most, when deliveries were logged.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How often progress is committed when only the cursor moved.
const COMMIT_CURSOR_EVERY: Duration = Duration::from_secs(10);
/// Log entries kept for a commit that cannot be made (no quorum) at most; older ones go.
const MAX_UNCOMMITTED_LOG: usize = 1024;

/// A part of an event to send.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// The event itself, with its action.
    Own,
    /// `replicated` for a region.
    Replicated(String),
}

/// An event in the window with its parts not yet done.
struct Item {
    seq: u64,
    event: Event,
    parts: Vec<Part>,
    /// A part of it waits: not looked at again before this.
    recheck: Option<Instant>,
}

/// What a waiting part's check found.
enum Check {
    /// Send it now.
    Ready,
    /// Not yet.
    Wait,
    /// Never: done without sending (why, for the log; `None`: nothing worth logging).
    Drop(Option<String>),
}

/// Delivers `name` until `stop`.
pub(super) async fn run(hooks: Arc<Webhooks>, name: String, def: Webhook, stop: CancellationToken) {
    let mut task = Task {
        hooks,
        name,
        def,
        window: Vec::new(),
        loaded_to: 0,
        committed: 0,
        log: Vec::new(),
        last_commit: Instant::now(),
        backoff: None,
    };
    if let Err(e) = task.serve(&stop).await {
        tracing::warn!(webhook = %task.name, error = %e, "webhook delivery stopped");
    }
    // What was done since the last commit, so a successor does not send it again.
    let _ = task.commit().await;
}

struct Task {
    hooks: Arc<Webhooks>,
    name: String,
    def: Webhook,
    window: Vec<Item>,
    /// The seq after the last event read.
    loaded_to: u64,
    /// The cursor last committed.
    committed: u64,
    /// Log entries not yet committed.
    log: Vec<Delivery>,
    last_commit: Instant,
    /// The failing part's attempts so far and when it may be tried again.
    backoff: Option<(u32, Instant)>,
}

impl Task {
    async fn serve(&mut self, stop: &CancellationToken) -> Result<(), WebhookError> {
        let Some((_, cursor)) = self.hooks.meta.webhook(&self.name)? else {
            return Ok(());
        };
        self.loaded_to = cursor;
        self.committed = cursor;
        while !stop.is_cancelled() {
            self.load().await?;
            let sent = self.send_next(stop).await?;
            let due = if self.log.is_empty() {
                COMMIT_CURSOR_EVERY
            } else {
                COMMIT_EVERY
            };
            if self.last_commit.elapsed() >= due {
                self.commit().await?;
            }
            if !sent {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(self.idle_wait()) => {}
                }
            }
        }
        Ok(())
    }

    /// How long to sleep when nothing was sent: a tick, or until the backoff ends.
    fn idle_wait(&self) -> Duration {
        match self.backoff {
            Some((_, at)) => at.saturating_duration_since(Instant::now()).max(TICK),
            None => TICK,
        }
    }

    /// The first event with a part not yet done.
    fn cursor(&self) -> u64 {
        self.window.first().map_or(self.loaded_to, |i| i.seq)
    }

    /// Reads events after the window into it, with their parts.
    async fn load(&mut self) -> Result<(), WebhookError> {
        // The head is a point read: the log is read only when it has grown.
        if self.window.len() >= WINDOW || self.hooks.meta.event_head()?.next <= self.loaded_to {
            return Ok(());
        }
        let events = self
            .hooks
            .meta
            .events(self.loaded_to, WINDOW - self.window.len())
            .await?;
        let Some((first, _)) = events.first() else {
            return Ok(());
        };
        if *first > self.loaded_to {
            // Removed by retention before they were delivered.
            let lost = first - self.loaded_to;
            self.log.push(self.entry_without_event(format!(
                "{lost} event(s) expired (webhooks.event_retention_secs) before they were delivered"
            )));
        }
        let plan = if self.def.actions.contains(&Action::Replicated) {
            Some(self.hooks.replication.plan().await?)
        } else {
            None
        };
        for (seq, event) in events {
            self.loaded_to = seq + 1;
            let parts = self.parts_of(&event, plan.as_ref());
            if !parts.is_empty() {
                self.window.push(Item {
                    seq,
                    event,
                    parts,
                    recheck: None,
                });
            }
        }
        Ok(())
    }

    /// The parts of `event` this webhook is sent.
    fn parts_of(&self, event: &Event, plan: Option<&Plan>) -> Vec<Part> {
        let tag = event.tag.as_ref().map(|t| t.as_str());
        if !payload::in_scope(&self.def.scopes, event.repo.as_str(), tag) {
            return Vec::new();
        }
        let mut parts = Vec::new();
        if self.def.actions.contains(&event.action) {
            parts.push(Part::Own);
        }
        if let Some(plan) = plan
            && matches!(event.action, Action::Push | Action::ChartPush)
        {
            let regions = match &self.def.region {
                Some(r) => vec![r.clone()],
                None => plan.copied_to(&event.repo),
            };
            parts.extend(regions.into_iter().map(Part::Replicated));
        }
        parts
    }

    /// Sends the first part that may go now, if any. Returns whether one was tried (or given
    /// up).
    async fn send_next(&mut self, stop: &CancellationToken) -> Result<bool, WebhookError> {
        if self.backoff.is_some_and(|(_, at)| Instant::now() < at) {
            return Ok(false);
        }
        let now = Instant::now();
        // Streams with an earlier part not done: (repository, region of `replicated`).
        let mut blocked: HashSet<(&str, Option<&str>)> = HashSet::new();
        let mut plan = None;
        let mut choice = None;
        let mut waited = Vec::new();
        'items: for (i, item) in self.window.iter().enumerate() {
            let waiting = item.recheck.is_some_and(|at| now < at);
            for part in &item.parts {
                let stream = (
                    item.event.repo.as_str(),
                    match part {
                        Part::Own => None,
                        Part::Replicated(r) => Some(r.as_str()),
                    },
                );
                if blocked.contains(&stream) {
                    continue;
                }
                let can_wait = matches!(part, Part::Replicated(_))
                    || (self.def.region.is_some()
                        && matches!(item.event.action, Action::Push | Action::ChartPush));
                let check = if waiting && can_wait {
                    Check::Wait
                } else {
                    self.check(i, part, &mut plan).await?
                };
                match check {
                    Check::Wait => {
                        blocked.insert(stream);
                        if !waiting {
                            waited.push(i);
                        }
                    }
                    other => {
                        choice = Some((i, part.clone(), other));
                        break 'items;
                    }
                }
            }
        }
        // What waits is looked at again in a second.
        let at = Instant::now() + RECHECK;
        for i in waited {
            self.window[i].recheck = Some(at);
        }
        let Some((i, part, check)) = choice else {
            // Nothing may go: give up the oldest waiting part when the window is full (other
            // repositories would stop otherwise).
            if self.window.len() >= WINDOW
                && let Some(part) = self.window[0].parts.first().cloned()
            {
                let out = self.outgoing(0, &part);
                let why = format!(
                    "not sent: gave up waiting (for region {}) with {WINDOW} events queued behind it",
                    out.region.as_deref().unwrap_or("?")
                );
                self.log
                    .push(self.entry(&out, None, Some(why), 0, String::new(), 0));
                self.done(0, &part);
                return Ok(true);
            }
            return Ok(false);
        };
        match check {
            Check::Drop(why) => {
                if let Some(why) = why {
                    let out = self.outgoing(i, &part);
                    self.log
                        .push(self.entry(&out, None, Some(why), 0, String::new(), 0));
                }
                self.done(i, &part);
            }
            _ => {
                let out = self.outgoing(i, &part);
                if self.attempt(&out, stop).await {
                    self.done(i, &part);
                }
            }
        }
        Ok(true)
    }

    /// Whether a part may be sent now.
    async fn check(
        &self,
        i: usize,
        part: &Part,
        plan: &mut Option<Plan>,
    ) -> Result<Check, WebhookError> {
        let event = &self.window[i].event;
        let region = match (part, &self.def.region) {
            (Part::Replicated(r), _) => r,
            (Part::Own, Some(r)) if matches!(event.action, Action::Push | Action::ChartPush) => r,
            (Part::Own, _) => return Ok(Check::Ready),
        };
        let Some(digest) = &event.digest else {
            return Ok(Check::Drop(None));
        };
        if plan.is_none() {
            *plan = Some(self.hooks.replication.plan().await?);
        }
        let plan = plan.as_ref().expect("set above");
        let reach = self
            .hooks
            .replication
            .reach(plan, &event.repo, digest)
            .await?;
        Ok(match (reach, part) {
            (None, Part::Own) => Check::Drop(Some(format!(
                "not sent: {}@{digest} was deleted before it reached region {region}",
                event.repo
            ))),
            (None, Part::Replicated(_)) => Check::Drop(None),
            (Some(r), Part::Own) if !r.wanted.contains(region) => Check::Ready,
            (Some(r), Part::Replicated(_)) if !r.wanted.contains(region) => Check::Drop(None),
            (Some(r), _) if r.complete.contains(region) => Check::Ready,
            (Some(_), _) => Check::Wait,
        })
    }

    /// What sending part `part` of the `i`th item sends.
    fn outgoing(&self, i: usize, part: &Part) -> Outgoing {
        let item = &self.window[i];
        let e = &item.event;
        let (action, region, at_ms) = match part {
            Part::Own => (e.action, self.def.region.clone(), e.at_ms),
            Part::Replicated(r) => (Action::Replicated, Some(r.clone()), now_ms()),
        };
        Outgoing {
            id: payload::event_id(item.seq, e.log_index, action, region.as_deref()),
            action,
            event: Some(e.clone()),
            seq: Some(item.seq),
            region,
            at_ms,
        }
    }

    /// Marks a part done; an item with no part left leaves the window.
    fn done(&mut self, i: usize, part: &Part) {
        let item = &mut self.window[i];
        item.parts.retain(|p| p != part);
        if item.parts.is_empty() {
            self.window.remove(i);
        }
    }

    /// One attempt; logs it and sets or clears the backoff. Returns whether it succeeded.
    async fn attempt(&mut self, out: &Outgoing, stop: &CancellationToken) -> bool {
        let attempts = self.backoff.map_or(1, |(n, _)| n + 1);
        let answer = tokio::select! {
            _ = stop.cancelled() => return false,
            a = self.hooks.post(&self.def, out, &self.name) => a,
        };
        let ok = answer.succeeded();
        self.log.push(self.entry(
            out,
            answer.status,
            answer.error,
            answer.latency_ms,
            answer.excerpt,
            attempts,
        ));
        self.backoff = (!ok).then(|| {
            let wait = self.hooks.backoff(attempts);
            (attempts, Instant::now() + wait)
        });
        ok
    }

    fn entry(
        &self,
        out: &Outgoing,
        status: Option<u16>,
        error: Option<String>,
        latency_ms: u64,
        excerpt: String,
        attempts: u32,
    ) -> Delivery {
        Delivery {
            at_ms: now_ms(),
            event_id: out.id.clone(),
            action: out.action,
            seq: out.seq,
            region: out.region.clone(),
            status,
            error,
            latency_ms,
            excerpt,
            attempts,
            node: self.hooks.settings.node,
        }
    }

    fn entry_without_event(&self, why: String) -> Delivery {
        Delivery {
            at_ms: now_ms(),
            event_id: String::new(),
            action: Action::Push,
            seq: None,
            region: None,
            status: None,
            error: Some(why),
            latency_ms: 0,
            excerpt: String::new(),
            attempts: 0,
            node: self.hooks.settings.node,
        }
    }

    /// Commits the cursor and the log through Raft when either changed. A failed commit keeps
    /// them for the next one (the log bounded to its newest entries).
    async fn commit(&mut self) -> Result<(), WebhookError> {
        self.last_commit = Instant::now();
        let cursor = self.cursor();
        if cursor == self.committed && self.log.is_empty() {
            return Ok(());
        }
        let cmd = WebhookCommand::Progress {
            name: self.name.clone(),
            cursor: Some(cursor),
            deliveries: self.log.clone(),
            keep_after_ms: self.hooks.log_cutoff_ms(),
        };
        match self.hooks.write(cmd).await {
            Ok(()) => {
                self.committed = cursor;
                self.log.clear();
                Ok(())
            }
            Err(WebhookError::NotFound(_)) => Err(WebhookError::NotFound(self.name.clone())),
            Err(e) => {
                tracing::debug!(webhook = %self.name, error = %e, "webhook progress not committed yet");
                if self.log.len() > MAX_UNCOMMITTED_LOG {
                    let extra = self.log.len() - MAX_UNCOMMITTED_LOG;
                    self.log.drain(..extra);
                }
                Ok(())
            }
        }
    }
}

/// The answer to one delivery attempt.
#[derive(Debug, Clone, Default)]
pub(super) struct Answer {
    /// The HTTP status, if one came.
    pub status: Option<u16>,
    /// Why it failed without a status (connect error, timeout).
    pub error: Option<String>,
    /// Time to the answer.
    pub latency_ms: u64,
    /// The start of the body.
    pub excerpt: String,
}

impl Answer {
    /// A 2xx answer.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The map from webhook names to running tasks (for the dispatcher).
pub(super) type Running =
    BTreeMap<String, (Webhook, CancellationToken, tokio::task::JoinHandle<()>)>;
