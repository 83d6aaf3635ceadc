//! Bulk work: hashing, encoding, decoding and writing the pages a migration moves, the page
//! hashing of checkpoints, checkpoints and restores through the API, and compiling modules
//! (Wasmtime compiles in parallel on this pool).
//! It runs on rayon's pool, whose threads this node starts as batch work at a slightly lower
//! priority (SCHED_BATCH, nice 5): they never preempt a thread that wakes to serve a request,
//! and they yield a share of a busy machine to those threads, without starving (at nice 10 a
//! loaded machine gave them a tenth of a core, and a 64 MiB migration ran past its step
//! timeout). There is one thread fewer than cores (one at least): a batch thread is not
//! preempted when a request's thread wakes, so with all cores busy with bulk work (compiling a
//! migrated module on both cores of a 2-core host) a request waited for the kernel's next tick;
//! with one core left it has that core (BENCHMARKS.md, 2026-12-07).

/// Start the pool; once per process (later calls keep the first pool).
pub fn init() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(cores.saturating_sub(1).max(1))
        .thread_name(|i| format!("bulk-{i}"))
        .start_handler(|_| crate::priority::bulk())
        .panic_handler(|_| tracing::error!("bulk work panicked"))
        .build_global();
}

/// Run `f` on the bulk pool and wait for it without holding an async worker.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await
        .map_err(|_| anyhow::anyhow!("bulk work failed (it panicked)"))
}
