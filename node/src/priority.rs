//! Thread priorities. Bulk work (hashing, encoding and writing a migration's pages, compiling)
//! runs as batch work; with `--realtime PRIORITY` the request path (the HTTP and mesh
//! runtimes' threads and each component's thread) runs at real-time priority (SCHED_RR).
//! Tokio's blocking threads start on the request path too: they do short file work only, the
//! long work (checkpoints, decoding, compiling) goes to the bulk pool.
//!
//! Why real time: on a busy host the kernel may leave a thread that wakes for a request
//! queued behind a running batch thread until its next tick (4 ms at HZ=250 without kernel
//! preemption), whatever the batch thread's nice value, so a migration's bulk work alone
//! tripled the p99 of the requests served meanwhile. A real-time thread preempts any normal
//! one at once (BENCHMARKS.md, 2026-12-08). The kernel keeps 5 % of each second for normal
//! threads (`kernel.sched_rt_runtime_us`), and a component that spins is stopped at its
//! deadline as always: the clock behind deadlines runs one priority above the request path.

use std::sync::atomic::{AtomicI32, Ordering};

/// The request path's SCHED_RR priority, 0 when off.
static REALTIME: AtomicI32 = AtomicI32::new(0);

/// Run the request path at `priority` (1..=98) from now on, starting with this thread; fails,
/// saying why, where the kernel refuses (not root, no CAP_SYS_NICE, `ulimit -r` too low).
pub fn realtime(priority: u8) -> std::io::Result<()> {
    set(Policy::RoundRobin(i32::from(priority))).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "--realtime {priority}: the kernel refused real-time priority ({e}); it needs \
                 root, CAP_SYS_NICE or `ulimit -r` of at least {priority}"
            ),
        )
    })?;
    REALTIME.store(i32::from(priority), Ordering::Relaxed);
    Ok(())
}

/// The priority of the request path, if `--realtime` set one.
pub fn realtime_priority() -> Option<u8> {
    u8::try_from(REALTIME.load(Ordering::Relaxed))
        .ok()
        .filter(|&p| p > 0)
}

/// Put this thread on the request path: real-time if `--realtime` is on, else left as is.
pub fn request_path() {
    if let Some(p) = realtime_priority() {
        let _ = set(Policy::RoundRobin(i32::from(p)));
    }
}

/// The thread that ends overlong calls: above the request path, so a component that spins at
/// real-time priority is still stopped at its deadline.
pub fn clock() {
    if let Some(p) = realtime_priority() {
        let _ = set(Policy::RoundRobin(i32::from(p) + 1));
    }
}

/// Lower this thread to bulk work: SCHED_BATCH at nice 5 (bulk.rs says why). Explicit, since a
/// thread started from a real-time one inherits its policy.
pub fn bulk() {
    let _ = set(Policy::Batch { nice: 5 });
}

enum Policy {
    RoundRobin(i32),
    Batch { nice: i32 },
}

#[cfg(target_os = "linux")]
fn set(policy: Policy) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // Zeroed: musl's struct has more fields than glibc's; priority 0 is what batch needs.
    // SAFETY: plain system calls on this thread's own id (Linux keeps the policy and the nice
    // value per thread), with a live struct of the declared layout.
    unsafe {
        let mut param: libc::sched_param = std::mem::zeroed();
        match policy {
            Policy::RoundRobin(p) => {
                param.sched_priority = p;
                check(libc::sched_setscheduler(0, libc::SCHED_RR, &param))
            }
            Policy::Batch { nice } => {
                check(libc::sched_setscheduler(0, libc::SCHED_BATCH, &param))?;
                // The raw system call: glibc's gettid() wrapper is newer (2.30) than the 2.28
                // the release builds for glibc hosts link against.
                let tid = libc::syscall(libc::SYS_gettid);
                check(libc::setpriority(libc::PRIO_PROCESS as _, tid as _, nice))
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn set(_: Policy) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "thread priorities are set on Linux only",
    ))
}
