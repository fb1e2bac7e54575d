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
        let runtime = Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .max_blocking_threads(MAX_BLOCKING)
            .thread_name("berth-background")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(Background {
            runtime: Some(runtime),
        })
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

/// Gives the calling thread the lowest CPU priority. On Linux the nice value belongs to each
/// thread, so this leaves the rest of the process as it is. A failure is logged and ignored:
/// the work then runs at normal priority.
fn lower_priority() {
    // SAFETY: setpriority and gettid take plain integers and touch no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, NICE) };
    if rc != 0 {
        tracing::warn!(
            error = %io::Error::last_os_error(),
            "failed to lower the priority of a background thread"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn my_nice() -> i32 {
        // SAFETY: as in `lower_priority`.
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
    }
}
