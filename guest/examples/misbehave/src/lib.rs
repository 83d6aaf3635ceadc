//! `misbehave`: a component that does what a host must survive, for tests and demos.
//! `POST /spin` loops forever, `POST /hog?mb=N` keeps N more MiB, `POST /panic` panics,
//! `GET /ok` answers normally. Calls gone wrong: `POST /storm?n=N` makes N calls at once (to
//! its own `/ok`) and answers how many came back and how many were refused; `POST /bad-call`
//! calls a name that cannot exist; `POST /huge-call?mb=N` sends an N MiB body;
//! `POST /forever` waits far past any deadline.

use continuum_guest::{
    AsyncComponent, Call, CallError, Request, Response, Shared, call, export_async, sleep,
};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

#[derive(Default)]
struct Misbehave {
    hoard: Shared<Vec<Vec<u8>>>,
    calls: Cell<u64>,
}

/// Wait for every call, started all at once; the outcomes in order.
async fn all(calls: Vec<Call>) -> Vec<Result<Response, CallError>> {
    let mut calls: Vec<Pin<Box<Call>>> = calls.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<Result<Response, CallError>>> = calls.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (c, o) in calls.iter_mut().zip(out.iter_mut()) {
            if o.is_none()
                && let Poll::Ready(r) = c.as_mut().poll(cx)
            {
                *o = Some(r);
            }
        }
        if out.iter().all(Option::is_some) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn describe(r: &Result<Response, CallError>) -> String {
    match r {
        Ok(r) => format!("{} {}", r.status, r.body_text().trim_end()),
        Err(e) => format!("error {e}"),
    }
}

impl AsyncComponent for Misbehave {
    async fn handle(&self, req: Request) -> Response {
        self.calls.set(self.calls.get() + 1);
        match (req.method.as_str(), req.path()) {
            ("GET", "/ok") => Response::text(200, self.calls.get().to_string()),
            ("POST", "/spin") => {
                let mut x = self.calls.get();
                loop {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            ("POST", "/hog") => {
                let mb = req
                    .query("mb")
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(1usize);
                let held = self.hoard.with(|h| {
                    for _ in 0..mb {
                        h.push(vec![1u8; 1024 * 1024]);
                    }
                    h.len()
                });
                Response::text(200, format!("holding {held} MiB\n"))
            }
            ("POST", "/panic") => panic!("asked to panic"),
            ("POST", "/storm") => {
                let n = req.query("n").and_then(|m| m.parse().ok()).unwrap_or(10);
                let results = all((0..n)
                    .map(|_| call("misbehave", Request::get("/ok")))
                    .collect())
                .await;
                let ok = results.iter().filter(|r| r.is_ok()).count();
                let refused = results
                    .iter()
                    .filter(|r| matches!(r, Err(CallError::Refused(503, _))))
                    .count();
                Response::json(200, format!("{{\"ok\":{ok},\"refused\":{refused}}}"))
            }
            ("POST", "/bad-call") => Response::text(
                200,
                describe(&call("no such name!", Request::get("/")).await),
            ),
            ("POST", "/huge-call") => {
                let mb = req
                    .query("mb")
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(16usize);
                let body = vec![7u8; mb << 20];
                let r = call("misbehave", Request::post("/ok", body)).await;
                Response::text(200, describe(&r))
            }
            ("POST", "/forever") => {
                sleep(u32::MAX).await;
                Response::text(200, "woke up\n")
            }
            _ => Response::not_found(),
        }
    }
}

export_async!(Misbehave);
