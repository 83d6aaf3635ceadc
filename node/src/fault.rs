//! Fault injection for the tests: a node built with the `fault-injection` feature dies, or
//! fails a write, where `CONTINUUM_FAULT` says. A release build has none of it: without the
//! feature every check is `false` and compiles away.

/// Whether `CONTINUUM_FAULT` names `point`.
pub fn faulty(point: &str) -> bool {
    cfg!(feature = "fault-injection") && std::env::var("CONTINUUM_FAULT").is_ok_and(|f| f == point)
}

/// Whether `CONTINUUM_FAULT` is `point:PATH` and PATH exists now: a fault a test turns on and
/// off while the node runs (a full disk, then freed).
pub fn faulty_file(point: &str) -> bool {
    cfg!(feature = "fault-injection")
        && std::env::var("CONTINUUM_FAULT").is_ok_and(|f| {
            f.strip_prefix(point)
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|path| std::path::Path::new(path).exists())
        })
}

/// Die at `point` (SIGKILL, as a crash would) if `CONTINUUM_FAULT` names it.
pub fn fault(point: &str) {
    if faulty(point) {
        tracing::error!("fault injection: dying at {point}");
        // SAFETY: kill(2) on our own pid.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
