//! Test-only fault injection: `NETLOOMD_FAULT=<point>` makes netloomd kill itself with SIGKILL
//! when it reaches that point, so tests can stop it between two steps of an operation (where a
//! real kill -9 would need luck) and check that the restart rolls the half-done work back.
//!
//! The points are fixed names in the code; the variable is read once. It has no effect unless
//! set, and nothing in a normal deployment sets it.

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| {
            std::env::var("NETLOOMD_FAULT")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .as_deref()
}

/// Dies here, as kill -9 would, if this point is armed.
pub fn point(name: &str) {
    if armed() == Some(name) {
        tracing::warn!(point = name, "NETLOOMD_FAULT: killing myself");
        // SIGKILL, not exit: no destructor, no flush, exactly like an outside kill -9.
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // raise(SIGKILL) does not return; abort in case a sandbox refused the signal.
        std::process::abort();
    }
}
