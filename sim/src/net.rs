//! The simulated network: link latency from the nodes' positions, random loss, and partitions.
//! Everything random comes from the world's seeded generator, so a seed fixes every delay.

use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;

/// Where a node is, in kilometres on a plane.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Position {
    pub x: f64,
    pub y: f64,
}

impl Position {
    pub fn distance(self, other: Position) -> f64 {
        ((self.x - other.x).powi(2) + (self.y - other.y).powi(2)).sqrt()
    }
}

/// `nodes` positions on a square grid `spacing_km` apart, row by row; and the row length.
pub fn grid(nodes: usize, spacing_km: f64) -> (usize, Vec<Position>) {
    let side = (nodes as f64).sqrt().ceil() as usize;
    let pos = (0..nodes)
        .map(|i| Position {
            x: (i % side) as f64 * spacing_km,
            y: (i / side) as f64 * spacing_km,
        })
        .collect();
    (side, pos)
}

#[derive(Clone, Debug)]
pub struct NetConfig {
    /// One-way delay of any message, ms (processing, the last mile).
    pub base_ms: f64,
    /// Added one-way delay per kilometre (light in fibre, plus routing detours).
    pub ms_per_km: f64,
    /// Share of messages lost.
    pub loss: f64,
    /// Up to this much random extra delay, ms.
    pub jitter_ms: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            base_ms: 1.0,
            ms_per_km: 0.01,
            loss: 0.0,
            jitter_ms: 0.5,
        }
    }
}

pub struct Net {
    pub cfg: NetConfig,
    /// Partition of each node (messages cross only within one); all 0 when whole.
    partition: Vec<u32>,
}

impl Net {
    pub fn new(cfg: NetConfig, nodes: usize) -> Net {
        Net {
            cfg,
            partition: vec![0; nodes],
        }
    }

    pub fn add_node(&mut self) {
        self.partition.push(0);
    }

    /// Split the nodes: node `i` goes to partition `side(i)`.
    pub fn partition(&mut self, side: impl Fn(usize) -> u32) {
        for (i, p) in self.partition.iter_mut().enumerate() {
            *p = side(i);
        }
    }

    pub fn heal(&mut self) {
        self.partition.fill(0);
    }

    /// The one-way delay of a message from `a` to `b`, in microseconds, or `None` if it is
    /// lost or cannot cross.
    pub fn delay_us(
        &self,
        rng: &mut Xoshiro256PlusPlus,
        a: (usize, Position),
        b: (usize, Position),
    ) -> Option<u64> {
        if self.partition[a.0] != self.partition[b.0] {
            return None;
        }
        if self.cfg.loss > 0.0 && rng.random_bool(self.cfg.loss) {
            return None;
        }
        let jitter = if self.cfg.jitter_ms > 0.0 {
            rng.random_range(0.0..self.cfg.jitter_ms)
        } else {
            0.0
        };
        let ms = self.cfg.base_ms + a.1.distance(b.1) * self.cfg.ms_per_km + jitter;
        Some((ms * 1000.0) as u64)
    }
}
