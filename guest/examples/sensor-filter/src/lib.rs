//! `sensor-filter`: a periodic control task. Every 10 ms it reads a simulated sensor (a
//! deterministic function of time), keeps an exponentially weighted mean and a ring of the last
//! 1000 samples, and measures the largest gap between two ticks. `GET /stats` reports them;
//! `POST /reset-gap` starts a new gap measurement.

use continuum_guest::{Component, Request, Response, export};

const PERIOD_MS: u32 = 10;
const RING: usize = 1000;
const ALPHA: f64 = 0.1;

#[derive(Default)]
struct Filter {
    ticks: u64,
    mean: f64,
    ring: Vec<f32>,
    head: usize,
    last_tick_ms: u64,
    max_gap_ms: u64,
}

/// The simulated sensor: a slow 10 s sine wave around 20.0 with a little deterministic jitter.
fn sensor(now_ms: u64) -> f64 {
    let phase = (now_ms % 10_000) as f64 / 10_000.0 * std::f64::consts::TAU;
    let jitter = ((now_ms.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as f64 / 1024.0) - 0.5;
    20.0 + 5.0 * phase.sin() + jitter
}

impl Component for Filter {
    fn tick(&mut self, now_ms: u64) -> Option<u32> {
        let x = sensor(now_ms);
        self.mean = if self.ticks == 0 {
            x
        } else {
            self.mean + ALPHA * (x - self.mean)
        };
        if self.ring.len() < RING {
            self.ring.push(x as f32);
        } else {
            self.ring[self.head] = x as f32;
        }
        self.head = (self.head + 1) % RING;
        if self.last_tick_ms != 0 {
            self.max_gap_ms = self
                .max_gap_ms
                .max(now_ms.saturating_sub(self.last_tick_ms));
        }
        self.last_tick_ms = now_ms;
        self.ticks += 1;
        Some(PERIOD_MS)
    }

    fn handle(&mut self, req: &Request) -> Response {
        match (req.method.as_str(), req.path()) {
            ("GET", "/stats") => Response::json(
                200,
                format!(
                    "{{\"ticks\":{},\"mean\":{:.6},\"last_tick_ms\":{},\"max_gap_ms\":{},\"samples\":{},\"period_ms\":{PERIOD_MS}}}",
                    self.ticks,
                    self.mean,
                    self.last_tick_ms,
                    self.max_gap_ms,
                    self.ring.len()
                ),
            ),
            ("POST", "/reset-gap") => {
                self.max_gap_ms = 0;
                Response::text(200, "ok\n")
            }
            _ => Response::not_found(),
        }
    }
}

export!(Filter);
