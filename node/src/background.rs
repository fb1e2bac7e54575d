//! Work no client waits for — the replicator's copies and the scrubber's re-hashing — runs on a
//! tokio runtime of its own whose threads have the lowest CPU priority (nice 19). When client
//! requests (and Raft, on the main runtime) and background work both want the CPU, the kernel
//! gives it to the clients; when the node is otherwise idle, background work runs at full speed
//! (nice only weighs threads against each other when the CPU is short, ADR 016). Its blocking
//! pool — the block writes of a copy, the reads of a scrub — runs at the same priority.
//!
//! A client read that joins a fetch the replicator started waits on that fetch, at its
//! priority; durability copies (a client's manifest PUT waits for them) are asked for over the
//! cluster endpoint and run on the main runtime.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// The nice value of background threads: the lowest priority.
pub const NICE: i32 = 19;
/// Worker threads of the background runtime.
const WORKERS: usize = 2;
/// Most threads its blocking pool may start.
const MAX_BLOCKING: usize = 32;

/// The background runtime; dropping it stops its tasks without waiting for them.
pub struct Background {
    runtime: Option<Runtime>,
    /// Its threads, by Linux thread id (to give them their priority back for the stop).
    threads: Arc<Mutex<Vec<libc::pid_t>>>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background").finish_non_exhaustive()
    }
}

impl Background {
    /// Starts the runtime.
    ///
    /// Errors: the threads could not be started.
    pub fn start() -> io::Result<Background> {
        let threads: Arc<Mutex<Vec<libc::pid_t>>> = Arc::default();
        let (started, stopped) = (threads.clone(), threads.clone());
        let runtime = Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .max_blocking_threads(MAX_BLOCKING)
            .thread_name("berth-background")
            .on_thread_start(move || {
                // SAFETY: gettid takes nothing and touches no memory.
                let tid = unsafe { libc::gettid() };
                set_priority(tid, NICE);
                started.lock().expect("thread list poisoned").push(tid);
            })
            .on_thread_stop(move || {
                // SAFETY: as above.
                let tid = unsafe { libc::gettid() };
                stopped
                    .lock()
                    .expect("thread list poisoned")
                    .retain(|t| *t != tid);
            })
            .enable_all()
            .build()?;
        Ok(Background {
            runtime: Some(runtime),
            threads,
        })
    }

    /// Stops the runtime, waiting at most `bound` for its tasks to be dropped (they hold the
    /// metadata store, which the node closes next). Stopping is not background work: the
    /// threads first get the normal priority back, where the process may raise it (root, or
    /// `RLIMIT_NICE`), so a loaded machine does not make the stop wait on them; elsewhere the
    /// stop may take up to `bound`.
    pub async fn stop(mut self, bound: Duration) {
        for tid in self.threads.lock().expect("thread list poisoned").iter() {
            set_priority(*tid, 0);
        }
        if let Some(runtime) = self.runtime.take() {
            let _ = tokio::task::spawn_blocking(move || runtime.shutdown_timeout(bound)).await;
        }
    }

    /// Runs `task` on the background runtime; the handle may be awaited from any runtime.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime
            .as_ref()
            .expect("the background runtime runs until dropped")
            .spawn(task)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its blocking tasks end, which an async context must
        // not do: stop it without waiting (a copy left half-done is removed at the next start).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Sets the nice value of thread `tid`. On Linux the nice value belongs to each thread, so
/// this leaves the rest of the process as it is. A failure is logged and ignored: lowering the
/// priority cannot fail; raising it back needs the privilege to.
fn set_priority(tid: libc::pid_t, nice: i32) {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            tid,
            nice,
            "failed to set the priority of a background thread"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn my_nice() -> i32 {
        // SAFETY: getpriority and gettid take plain integers and touch no memory of ours.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn background_tasks_and_their_blocking_work_run_at_the_lowest_priority() {
        let before = my_nice();
        let bg = Background::start().unwrap();
        let (task, blocking) = futures::executor::block_on(async {
            bg.spawn(async {
                let task = my_nice();
                let blocking = tokio::task::spawn_blocking(my_nice).await.unwrap();
                (task, blocking)
            })
            .await
            .unwrap()
        });
        assert_eq!((task, blocking), (NICE, NICE));
        assert_eq!(my_nice(), before, "the calling thread keeps its priority");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(bg.stop(Duration::from_secs(5)));
    }
}
