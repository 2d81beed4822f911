//! The threads that run engine work for the async side.
//!
//! engine-core's netlink client refuses to run on any thread with a tokio runtime context, so
//! plugin requests cannot use `spawn_blocking`. A fresh OS thread per request worked but cost
//! every request a thread start (stack mapping, a new malloc arena to fault in) and a wait for
//! the scheduler to place a thread it has never run; under load that was the larger part of a
//! short request. These workers stay: an idle one is woken for the next job, a new one starts
//! only when every worker is busy (so concurrency is never capped: a request waiting for a
//! network lock cannot hold up requests for other networks), and workers beyond [`KEEP`]
//! leave after [`IDLE_EXIT`] without work.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Workers that wait for work for as long as the daemon runs (Docker's connect is three
/// sequential requests; a few containers starting at once need a few more).
const KEEP: usize = 4;

/// How long a worker beyond [`KEEP`] waits for a job before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers waiting on the condvar.
    idle: usize,
    /// Workers alive.
    threads: usize,
}

/// A pool of reusable OS threads without a runtime context.
pub struct Workers {
    queue: Mutex<Queue>,
    wake: Condvar,
    keep: usize,
    idle_exit: Duration,
}

impl Workers {
    const fn new(keep: usize, idle_exit: Duration) -> Self {
        Workers {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
                threads: 0,
            }),
            wake: Condvar::new(),
            keep,
            idle_exit,
        }
    }

    /// The daemon's pool.
    pub fn global() -> &'static Workers {
        static POOL: OnceLock<Workers> = OnceLock::new();
        POOL.get_or_init(|| Workers::new(KEEP, IDLE_EXIT))
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Jobs run outside the lock, so a panicking job cannot poison it half-way.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`; wakes an idle worker, or starts one when none is waiting for work.
    pub fn submit(&'static self, job: Job) -> std::io::Result<()> {
        let mut q = self.lock();
        q.jobs.push_back(job);
        if q.jobs.len() <= q.idle {
            drop(q);
            self.wake.notify_one();
            return Ok(());
        }
        q.threads += 1;
        drop(q);
        let started = std::thread::Builder::new()
            .name("netloomd-op".into())
            .spawn(move || self.work());
        if let Err(e) = started {
            let mut q = self.lock();
            q.threads -= 1;
            // Nobody will run it; the caller reports the failure instead.
            q.jobs.pop_back();
            return Err(e);
        }
        Ok(())
    }

    fn work(&self) {
        let mut q = self.lock();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                drop(q);
                // A panicking job drops its answer channel (its caller sees the failure); the
                // worker stays. (Release builds abort on panic anyway.)
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                q = self.lock();
                continue;
            }
            q.idle += 1;
            let (guard, waited) = self
                .wake
                .wait_timeout(q, self.idle_exit)
                .unwrap_or_else(|p| p.into_inner());
            q = guard;
            q.idle -= 1;
            if waited.timed_out() && q.jobs.is_empty() && q.threads > self.keep {
                q.threads -= 1;
                return;
            }
        }
    }

    /// Workers alive and idle (tests).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let q = self.lock();
        (q.threads, q.idle)
    }
}

/// Runs blocking engine work on a worker thread and waits for it without blocking the runtime.
pub async fn run<T, F>(f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    Workers::global()
        .submit(Box::new(move || {
            let _ = tx.send(f());
        }))
        .map_err(|e| format!("start a worker thread: {e}"))?;
    rx.await
        .map_err(|_| "the worker thread panicked".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc, Barrier};

    fn pool(keep: usize, idle_exit: Duration) -> &'static Workers {
        Box::leak(Box::new(Workers::new(keep, idle_exit)))
    }

    #[test]
    fn sequential_jobs_reuse_one_thread() {
        let p = pool(2, Duration::from_secs(30));
        let (tx, rx) = mpsc::channel();
        let mut ids = Vec::new();
        for _ in 0..20 {
            let tx = tx.clone();
            p.submit(Box::new(move || {
                tx.send(std::thread::current().id()).unwrap();
            }))
            .unwrap();
            ids.push(rx.recv().unwrap());
            // Let the worker go back to waiting before the next job.
            while p.counts().1 == 0 {
                std::thread::yield_now();
            }
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "one worker served every job");
        assert_eq!(p.counts().0, 1);
    }

    #[test]
    fn blocked_workers_never_hold_up_new_jobs() {
        // Eight jobs that only finish together: a capped pool would deadlock here.
        let p = pool(2, Duration::from_millis(50));
        let barrier = Arc::new(Barrier::new(8));
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        for _ in 0..8 {
            let (b, d, tx) = (barrier.clone(), done.clone(), tx.clone());
            p.submit(Box::new(move || {
                b.wait();
                d.fetch_add(1, Ordering::SeqCst);
                tx.send(()).unwrap();
            }))
            .unwrap();
        }
        for _ in 0..8 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 8);
        // The extra workers leave once idle; `keep` stay.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while p.counts().0 > 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(p.counts().0, 2);
    }

    #[tokio::test]
    async fn run_returns_the_value_and_leaves_the_runtime() {
        let in_runtime = run(|| tokio::runtime::Handle::try_current().is_ok())
            .await
            .unwrap();
        assert!(
            !in_runtime,
            "workers must have no runtime context (netlink)"
        );
        let e = run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(e.contains("panicked"));
        // The pool survives a panicking job.
        assert_eq!(run(|| 7).await.unwrap(), 7);
    }
}
