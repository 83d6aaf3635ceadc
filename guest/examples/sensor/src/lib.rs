//! `sensor`, the first stage of the pipeline (`sensor` -> `filter` -> `controller`): a
//! simulated temperature sensor sampled every 10 ms. `GET /reading` answers `SEQ VALUE` (the
//! sample's number and value, plain text); `GET /stats` gives samples taken and the largest gap
//! between two, as JSON. Deploy it where the sensor is: `--require sensor=temp`.

use continuum_guest::{Component, Request, Response, export};

const PERIOD_MS: u32 = 10;

#[derive(Default)]
struct Sensor {
    seq: u64,
    value: f64,
    last_ms: u64,
    max_gap_ms: u64,
}

/// A room warming and cooling slowly (a 20 s cycle around 21 degrees), with a little
/// deterministic noise.
fn sample(now_ms: u64) -> f64 {
    let phase = (now_ms % 20_000) as f64 / 20_000.0 * std::f64::consts::TAU;
    let noise = ((now_ms.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as f64 / 1024.0) - 0.5;
    21.0 + 2.0 * phase.sin() + 0.2 * noise
}

impl Component for Sensor {
    fn tick(&mut self, now_ms: u64) -> Option<u32> {
        if self.last_ms != 0 {
            self.max_gap_ms = self.max_gap_ms.max(now_ms.saturating_sub(self.last_ms));
        }
        self.last_ms = now_ms;
        self.seq += 1;
        self.value = sample(now_ms);
        Some(PERIOD_MS)
    }

    fn handle(&mut self, req: &Request) -> Response {
        match (req.method.as_str(), req.path()) {
            ("GET", "/reading") => Response::text(200, format!("{} {:.4}", self.seq, self.value)),
            ("GET", "/stats") => Response::json(
                200,
                format!(
                    "{{\"samples\":{},\"max_gap_ms\":{},\"period_ms\":{PERIOD_MS}}}",
                    self.seq, self.max_gap_ms
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

export!(Sensor);
