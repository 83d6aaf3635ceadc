//! `slow`: answers late without holding its instance. `GET /after/MS` answers after MS
//! milliseconds (at most 60 s); meanwhile the instance serves other requests, and a checkpoint
//! or a migration carries the waiting ones along. `GET /stats` gives the requests answered and
//! those waiting, as JSON.

use continuum_guest::{AsyncComponent, Request, Response, export_async, sleep};
use std::cell::Cell;

#[derive(Default)]
struct Slow {
    answered: Cell<u64>,
    waiting: Cell<u64>,
}

/// Counts a request as waiting for as long as it does, even if the host drops it (its deadline
/// passed, or it was restored from a checkpoint where nobody awaits it any more).
struct Waiting<'a>(&'a Cell<u64>);

impl<'a> Waiting<'a> {
    fn new(c: &'a Cell<u64>) -> Self {
        c.set(c.get() + 1);
        Waiting(c)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl AsyncComponent for Slow {
    async fn handle(&self, req: Request) -> Response {
        if let Some(ms) = req.path().strip_prefix("/after/") {
            let Ok(ms) = ms.parse::<u32>() else {
                return Response::bad_request("expected /after/MILLISECONDS\n");
            };
            let _waiting = Waiting::new(&self.waiting);
            sleep(ms.min(60_000)).await;
            self.answered.set(self.answered.get() + 1);
            return Response::text(200, format!("waited {ms} ms\n"));
        }
        match (req.method.as_str(), req.path()) {
            ("GET", "/stats") => Response::json(
                200,
                format!(
                    "{{\"answered\":{},\"waiting\":{}}}",
                    self.answered.get(),
                    self.waiting.get()
                ),
            ),
            _ => Response::not_found(),
        }
    }
}

export_async!(Slow);
