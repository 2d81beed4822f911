//! Work a short-lived process leaves to a forked child that finishes it after the process has
//! exited.
//!
//! Some kernel operations make their caller wait for an RCU grace period (10–40 ms) although
//! their effect is already visible: unregistering a network device, closing a netfilter socket
//! after a deletion. A CNI plugin must not make its runtime wait for that, and a daemon has
//! threads for it; a short-lived process has neither. So it forks: the child keeps only the
//! descriptors it was given, waits until its parent has exited (EOF on a pipe whose write end
//! only the parent holds), then does the slow part, which nobody waits for.
//!
//! Forking, not re-executing this binary: a fork of a small process costs ~0.2 ms, where an
//! exec'd helper cost its parent ~1.5 ms of waiting for the exec plus a whole process start
//! competing for the same two cores. After fork in a multi-threaded process the child may only
//! call async-signal-safe functions: everything it needs (messages, paths) is prepared before
//! the fork, and the child runs raw system calls only.

use std::os::fd::RawFd;

/// What the child does once its parent is gone. Prepared entirely before the fork.
pub(crate) struct Work<'a> {
    /// Descriptors the child keeps (everything else is closed at once: it must not hold the
    /// runtime's stdout pipe or the store's lock files).
    pub keep: &'a [RawFd],
    /// Sent, each as one `send(2)`, on `keep[0]` (a netlink socket) after the parent exited.
    pub requests: &'a [Vec<u8>],
    /// NUL-terminated paths unlinked after the requests.
    pub unlink: &'a [std::ffi::CString],
    /// How long the child waits after the parent exited before it starts.
    pub linger: std::time::Duration,
}

/// Forks the child that does `work` after this process exits. Returns false when it could not
/// (the caller then does the work itself).
pub(crate) fn hand_over(work: &Work<'_>) -> bool {
    let mut pipe = [-1; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return false;
    }
    let [rd, wr] = pipe;
    let mut keep: Vec<RawFd> = work.keep.iter().copied().chain([rd]).collect();
    keep.sort_unstable();
    // SAFETY: the child calls only async-signal-safe functions (close_range, setsid, read,
    // nanosleep, send, unlink, close, _exit) on memory prepared before the fork, as required after fork in
    // a multi-threaded process.
    match unsafe { libc::fork() } {
        0 => unsafe {
            let mut from: libc::c_uint = 0;
            for &k in &keep {
                if k as libc::c_uint > from {
                    libc::syscall(libc::SYS_close_range, from, k as libc::c_uint - 1, 0);
                }
                from = k as libc::c_uint + 1;
            }
            libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0);
            // Its own session: signals for the plugin's process group do not stop the work.
            libc::setsid();
            // EOF once the parent (the only holder of the write end) has exited.
            let mut b = 0u8;
            while libc::read(rd, &mut b as *mut u8 as *mut libc::c_void, 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            let ts = libc::timespec {
                tv_sec: work.linger.as_secs() as libc::time_t,
                tv_nsec: work.linger.subsec_nanos() as libc::c_long,
            };
            if ts.tv_sec > 0 || ts.tv_nsec > 0 {
                libc::nanosleep(&ts, std::ptr::null_mut());
            }
            if let Some(&sock) = work.keep.first() {
                for r in work.requests {
                    // netlink requests to the kernel are handled inside send(2): when it
                    // returns, the deletion is done (its ack is not needed).
                    libc::send(sock, r.as_ptr() as *const libc::c_void, r.len(), 0);
                }
            }
            for p in work.unlink {
                libc::unlink(p.as_ptr());
            }
            for &k in work.keep {
                libc::close(k);
            }
            libc::_exit(0);
        },
        -1 => {
            // SAFETY: our own pipe fds.
            unsafe {
                libc::close(rd);
                libc::close(wr);
            }
            false
        }
        _ => {
            // The write end stays open (leaked on purpose) until this process exits.
            // SAFETY: our own fd.
            unsafe { libc::close(rd) };
            true
        }
    }
}
