//! What a node's components cost it: each one's share of a core, from the time it spent running
//! (requests and ticks), smoothed over a few seconds. With a CPU budget their sum is the node's
//! load, the figure `balance` acts on and the mesh advertises; either way it tells `balance`
//! which component to move and whether a peer has room for it.

use crate::runtime::ComponentHandle;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Weight of the newest sample (one a second): about three seconds of memory.
const ALPHA: f32 = 0.3;

pub struct LoadMeter {
    budget: Option<f32>,
    cores: f32,
    /// Busy time seen at the last sample, and the smoothed share of a core, per component.
    seen: HashMap<String, (u64, f32)>,
    at: Option<Instant>,
}

impl LoadMeter {
    pub fn new(budget: Option<f32>) -> LoadMeter {
        LoadMeter {
            budget,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as f32,
            seen: HashMap::new(),
            at: None,
        }
    }

    /// Take a sample of every component's busy time; each one's share of a core is kept in its
    /// stats (for `ls`) and here.
    pub fn sample(&mut self, now: Instant, handles: &[Arc<ComponentHandle>]) {
        let dt = self.at.map_or(0.0, |at| (now - at).as_nanos() as f32);
        self.at = Some(now);
        let mut seen = HashMap::with_capacity(handles.len());
        for h in handles {
            let busy = h.stats.busy_ns.load(Ordering::Relaxed);
            let share = match self.seen.get(&h.name) {
                Some(&(last, share)) if dt > 0.0 => {
                    let now_share = busy.saturating_sub(last) as f32 / dt;
                    share + ALPHA * (now_share - share)
                }
                Some(&(_, share)) => share,
                None => 0.0,
            };
            h.stats
                .cpu_milli
                .store((share * 1000.0) as u64, Ordering::Relaxed);
            seen.insert(h.name.clone(), (busy, share));
        }
        self.seen = seen;
    }

    /// What the node can give its components: its budget, else the host's cores.
    fn capacity(&self) -> f32 {
        self.budget.unwrap_or(self.cores)
    }

    /// A component's load, in units of the node's capacity.
    pub fn component(&self, name: &str) -> f32 {
        self.seen.get(name).map_or(0.0, |s| s.1) / self.capacity()
    }

    /// The node's own load when it has a budget (none: the host's load average speaks).
    pub fn budgeted(&self) -> Option<f32> {
        self.budget
            .map(|b| self.seen.values().map(|s| s.1).sum::<f32>() / b)
    }

    /// The node's load: its components' share of its budget, or the host's load average.
    pub fn node(&self) -> f32 {
        self.budgeted().unwrap_or_else(crate::mesh::resources::load)
    }
}
