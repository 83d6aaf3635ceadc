//! `filter`, the middle stage of the pipeline: every 10 ms it reads `sensor` (a call by name,
//! wherever the sensor runs) and keeps an exponentially weighted mean of the readings.
//! `GET /value` answers the mean (plain text); `GET /stats` gives reads, failed reads, the last
//! sample number and the largest gap between two good reads, as JSON; `POST /reset-gap`.

use continuum_guest::{AsyncComponent, Request, Response, call, export_async, now_ms};
use std::cell::Cell;

const PERIOD_MS: u32 = 10;
const ALPHA: f64 = 0.2;

#[derive(Default)]
struct Filter {
    mean: Cell<f64>,
    reads: Cell<u64>,
    errors: Cell<u64>,
    last_seq: Cell<u64>,
    last_ms: Cell<u64>,
    max_gap_ms: Cell<u64>,
}

impl Filter {
    fn take(&self, seq: u64, value: f64) {
        let now = now_ms();
        if self.last_ms.get() != 0 {
            let gap = now.saturating_sub(self.last_ms.get());
            self.max_gap_ms.set(self.max_gap_ms.get().max(gap));
        }
        self.last_ms.set(now);
        let m = if self.reads.get() == 0 {
            value
        } else {
            self.mean.get() + ALPHA * (value - self.mean.get())
        };
        self.mean.set(m);
        self.reads.set(self.reads.get() + 1);
        self.last_seq.set(seq);
    }
}

impl AsyncComponent for Filter {
    async fn tick(&self, _now_ms: u64) -> Option<u32> {
        let reading = call("sensor", Request::get("/reading")).await;
        let parsed = reading.ok().filter(|r| r.status == 200).and_then(|r| {
            let text = r.body_text();
            let (seq, value) = text.split_once(' ')?;
            Some((seq.parse().ok()?, value.parse().ok()?))
        });
        match parsed {
            Some((seq, value)) => self.take(seq, value),
            None => self.errors.set(self.errors.get() + 1),
        }
        Some(PERIOD_MS)
    }

    async fn handle(&self, req: Request) -> Response {
        match (req.method.as_str(), req.path()) {
            ("GET", "/value") => Response::text(200, format!("{:.4}", self.mean.get())),
            ("GET", "/stats") => Response::json(
                200,
                format!(
                    "{{\"mean\":{:.4},\"reads\":{},\"errors\":{},\"last_seq\":{},\"max_gap_ms\":{}}}",
                    self.mean.get(),
                    self.reads.get(),
                    self.errors.get(),
                    self.last_seq.get(),
                    self.max_gap_ms.get()
                ),
            ),
            ("POST", "/reset-gap") => {
                self.max_gap_ms.set(0);
                Response::text(200, "ok\n")
            }
            _ => Response::not_found(),
        }
    }
}

export_async!(Filter);
