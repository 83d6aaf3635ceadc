//! `controller`, the last stage of the pipeline: every 20 ms it reads the filtered temperature
//! from `filter` and computes a heater command with a PI law against its setpoint.
//! `PUT /setpoint` takes a temperature (plain text); `GET /state` gives the setpoint, the last
//! reading, the command, control steps taken, failed reads and the largest gap between two
//! steps, as JSON; `POST /reset-gap`.

use continuum_guest::{AsyncComponent, Request, Response, call, export_async, now_ms};
use std::cell::Cell;

const PERIOD_MS: u32 = 20;
const KP: f64 = 0.8;
const KI: f64 = 0.2;

struct Controller {
    setpoint: Cell<f64>,
    reading: Cell<f64>,
    integral: Cell<f64>,
    command: Cell<f64>,
    steps: Cell<u64>,
    errors: Cell<u64>,
    last_ms: Cell<u64>,
    max_gap_ms: Cell<u64>,
}

impl Default for Controller {
    fn default() -> Self {
        Controller {
            setpoint: Cell::new(21.0),
            reading: Cell::default(),
            integral: Cell::default(),
            command: Cell::default(),
            steps: Cell::default(),
            errors: Cell::default(),
            last_ms: Cell::default(),
            max_gap_ms: Cell::default(),
        }
    }
}

impl Controller {
    fn step(&self, reading: f64) {
        let now = now_ms();
        let dt = if self.last_ms.get() == 0 {
            0.0
        } else {
            let gap = now.saturating_sub(self.last_ms.get());
            self.max_gap_ms.set(self.max_gap_ms.get().max(gap));
            gap as f64 / 1000.0
        };
        self.last_ms.set(now);
        let error = self.setpoint.get() - reading;
        // Anti-windup: the integral stays within what the heater can do.
        let integral = (self.integral.get() + error * dt).clamp(-5.0, 5.0);
        self.integral.set(integral);
        self.command
            .set((KP * error + KI * integral).clamp(0.0, 1.0));
        self.reading.set(reading);
        self.steps.set(self.steps.get() + 1);
    }
}

impl AsyncComponent for Controller {
    async fn tick(&self, _now_ms: u64) -> Option<u32> {
        match call("filter", Request::get("/value")).await {
            Ok(r) if r.status == 200 => match r.body_text().trim().parse() {
                Ok(v) => self.step(v),
                Err(_) => self.errors.set(self.errors.get() + 1),
            },
            _ => self.errors.set(self.errors.get() + 1),
        }
        Some(PERIOD_MS)
    }

    async fn handle(&self, req: Request) -> Response {
        match (req.method.as_str(), req.path()) {
            ("PUT", "/setpoint") => match String::from_utf8_lossy(&req.body).trim().parse() {
                Ok(v) => {
                    self.setpoint.set(v);
                    Response::text(200, format!("{v}\n"))
                }
                Err(_) => Response::bad_request("expected a temperature, e.g. 22.5\n"),
            },
            ("GET", "/state") => Response::json(
                200,
                format!(
                    "{{\"setpoint\":{},\"reading\":{:.4},\"command\":{:.4},\"steps\":{},\"errors\":{},\"max_gap_ms\":{}}}",
                    self.setpoint.get(),
                    self.reading.get(),
                    self.command.get(),
                    self.steps.get(),
                    self.errors.get(),
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

export_async!(Controller);
