//! What this host offers, read from the system for the node's advert.

use continuum_gossip::Resources;

/// Run-queue length per core over the last minute (0 where `/proc` is missing).
pub fn load() -> f32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f32;
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f32>().ok())
        .map_or(0.0, |one| one / cores)
}

/// Sample load and memory (Linux `/proc`; elsewhere, zeros) into `base`.
pub fn sample(mut base: Resources) -> Resources {
    base.arch = std::env::consts::ARCH.to_string();
    base.cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    base.load = load();
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .map(|kib| kib * 1024)
        };
        base.mem_total = field("MemTotal:").unwrap_or(0);
        base.mem_free = field("MemAvailable:").unwrap_or(0);
    }
    base
}
