//! Named crash points for the crash-safety tests, compiled only into debug builds.
//!
//! With `RECURRENTD_FAILPOINT=<name>` (or `<name>:<n>` for the n-th time it is reached) the
//! process kills itself with SIGKILL at that point of the charge path: no destructor runs, no
//! buffer is flushed, exactly as if the power went. Release builds contain no trace of it.

/// The named steps of the charge path.
pub const INTENT_COMMITTED: &str = "intent_committed";
pub const REPLY_RECEIVED: &str = "reply_received";
pub const STATUS_RECEIVED: &str = "status_received";
pub const OUTCOME_COMMITTED: &str = "outcome_committed";

#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HITS: AtomicU32 = AtomicU32::new(0);
    let Ok(spec) = std::env::var("RECURRENTD_FAILPOINT") else {
        return;
    };
    let (want, nth) = match spec.split_once(':') {
        Some((want, nth)) => (want, nth.parse::<u32>().unwrap_or(1)),
        None => (spec.as_str(), 1),
    };
    if want != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 >= nth {
        eprintln!("recurrentd: failpoint {name}: killing this process with SIGKILL");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}
