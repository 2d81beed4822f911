//! The threads that run engine work for the async side.
//!
//! engine-core's netlink client refuses to run on any thread with a tokio runtime context, so
//! plugin requests cannot use `spawn_blocking`. A fresh OS thread per request worked but cost
//! every request a thread start (stack mapping, a new malloc arena to fault in) and a wait for
//! the scheduler to place a thread it has never run; under load that was the larger part of a
//! short request. These workers stay: the most recently idle one is handed the next job, a
//! new one starts only when every worker is busy (so concurrency is never capped: a request
//! waiting for a network lock cannot hold up requests for other networks), and workers beyond
//! [`KEEP`] leave after [`IDLE_EXIT`] without work.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Workers that wait for work for as long as the daemon runs (Docker's connect is three
/// sequential requests; a few containers starting at once need a few more).
const KEEP: usize = 4;

/// How long a worker beyond [`KEEP`] waits for a job before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Where an idle worker waits for its next job.
#[derive(Default)]
struct Slot {
    job: Mutex<Option<Job>>,
    wake: Condvar,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Job>> {
        self.job.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct State {
    /// Idle workers, the most recently idle last: a job goes to the worker that ran the
    /// previous one, so a sequential stream of requests keeps one thread's stack and malloc
    /// arena warm instead of touching (and keeping resident) every worker's.
    idle: Vec<Arc<Slot>>,
    /// Workers alive.
    threads: usize,
}

/// A pool of reusable OS threads without a runtime context.
pub struct Workers {
    state: Mutex<State>,
    keep: usize,
    idle_exit: Duration,
}

impl Workers {
    const fn new(keep: usize, idle_exit: Duration) -> Self {
        Workers {
            state: Mutex::new(State {
                idle: Vec::new(),
                threads: 0,
            }),
            keep,
            idle_exit,
        }
    }

    /// The daemon's pool.
    pub fn global() -> &'static Workers {
        static POOL: OnceLock<Workers> = OnceLock::new();
        POOL.get_or_init(|| Workers::new(KEEP, IDLE_EXIT))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so a panicking job cannot poison it half-way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `job` to the most recently idle worker, or starts a worker when none is idle.
    pub fn submit(&'static self, job: Job) -> std::io::Result<()> {
        let mut st = self.lock();
        if let Some(slot) = st.idle.pop() {
            drop(st);
            *slot.lock() = Some(job);
            slot.wake.notify_one();
            return Ok(());
        }
        st.threads += 1;
        drop(st);
        let started = std::thread::Builder::new()
            .name("netloomd-op".into())
            .spawn(move || self.work(job));
        if let Err(e) = started {
            self.lock().threads -= 1;
            return Err(e);
        }
        Ok(())
    }

    fn work(&self, first: Job) {
        let slot = Arc::new(Slot::default());
        let mut job = first;
        loop {
            // A panicking job drops its answer channel (its caller sees the failure); the
            // worker stays. (Release builds abort on panic anyway.)
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            release_freed_memory();
            self.lock().idle.push(slot.clone());
            let mut next = slot.lock();
            job = loop {
                if let Some(j) = next.take() {
                    break j;
                }
                let (guard, waited) = slot
                    .wake
                    .wait_timeout(next, self.idle_exit)
                    .unwrap_or_else(|p| p.into_inner());
                next = guard;
                if waited.timed_out() && next.is_none() {
                    let mut st = self.lock();
                    // Still listed as idle: nobody is about to hand us a job, we may leave.
                    if let Some(i) = st.idle.iter().position(|s| Arc::ptr_eq(s, &slot)) {
                        if st.threads > self.keep {
                            st.idle.remove(i);
                            st.threads -= 1;
                            return;
                        }
                    }
                }
            };
        }
    }

    /// Workers alive and idle (tests).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.threads, st.idle.len())
    }
}

/// Hands the memory a finished job freed back to the kernel. A thread that exits gets its
/// stack released by glibc, but a worker that stays keeps what its malloc arena holds: after
/// a 1000-port publication (a large request, a large firewall batch) that was 1-4 MB of
/// resident memory per worker. Runs after the job's answer was handed over.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers; it only walks glibc's own arenas.
        unsafe {
            libc::malloc_trim(0);
        }
        release_stack_below_here();
    }
}

/// Discards the pages of this thread's stack well below the current frame: what glibc does
/// for the stack of a thread that exits. Called from the worker loop, a shallow frame; the
/// margin leaves this function's own callees untouched.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_stack_below_here() {
    const MARGIN: usize = 256 * 1024;
    const PAGE: usize = 4096;
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    // SAFETY: pthread_getattr_np fills a zeroed attr for the calling thread, which is
    // destroyed again below; the range given to madvise lies inside this thread's stack
    // mapping, between its lowest pages (guard side, skipped) and MARGIN below the live
    // frames, where nothing is in use once the job has returned.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        let low = addr as usize;
        if !got || here <= low || here > low + size {
            return;
        }
        let start = (low + 16 * PAGE + PAGE - 1) & !(PAGE - 1);
        let end = here.saturating_sub(MARGIN) & !(PAGE - 1);
        if end > start {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
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

    #[test]
    fn after_a_burst_sequential_jobs_stay_on_one_worker() {
        let p = pool(4, Duration::from_secs(30));
        let barrier = Arc::new(Barrier::new(3));
        let (tx, rx) = mpsc::channel();
        for _ in 0..3 {
            let (b, tx) = (barrier.clone(), tx.clone());
            p.submit(Box::new(move || {
                b.wait();
                tx.send(std::thread::current().id()).unwrap();
            }))
            .unwrap();
        }
        for _ in 0..3 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        while p.counts().1 < 3 {
            std::thread::yield_now();
        }
        let mut ids = Vec::new();
        for _ in 0..10 {
            let tx = tx.clone();
            p.submit(Box::new(move || {
                tx.send(std::thread::current().id()).unwrap();
            }))
            .unwrap();
            ids.push(rx.recv().unwrap());
            while p.counts().1 < 3 {
                std::thread::yield_now();
            }
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "the most recently idle worker takes each job");
        assert_eq!(p.counts().0, 3);
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
