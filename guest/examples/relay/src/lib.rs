//! `relay`: calls another component by name. `ANY /to/NAME/REST` sends the request (same
//! method, body and content type) to component NAME at `/REST`, wherever in the mesh it runs,
//! and answers with the callee's status and body (or the error the call ended with: 404 no such
//! component, 504 deadline, 508 loop, 503 refused). `GET /stats` gives the calls made, those in
//! flight and those that failed, as JSON. `GET /time/NAME/REST?n=N` makes N calls to NAME
//! one after the other and answers their round-trip times (p50, p99, mean, in microseconds, by
//! the WASI monotonic clock), for benchmarks. On a live update it hands its counts to the next
//! version.

use continuum_guest::{AsyncComponent, Request, Response, call, export_async};
use std::cell::Cell;

#[derive(Default)]
struct Relay {
    made: Cell<u64>,
    in_flight: Cell<u64>,
    failed: Cell<u64>,
}

/// Counts a call in flight for as long as it is, even if the host drops the request (its
/// deadline passed) before the answer comes.
struct InFlight<'a>(&'a Cell<u64>);

impl<'a> InFlight<'a> {
    fn new(c: &'a Cell<u64>) -> Self {
        c.set(c.get() + 1);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// `NAME/REST?QUERY` into the callee's name and its target.
fn split(rest: &str) -> (String, String) {
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (rest[..i].into(), rest[i..].into()),
        Some(i) => (rest[..i].into(), format!("/{}", &rest[i..])),
        None => (rest.into(), "/".into()),
    }
}

/// `n` calls to `name`, one at a time: their round trips.
async fn time(name: &str, target: &str, n: usize) -> Response {
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let began = std::time::Instant::now();
        match call(name, Request::get(target)).await {
            Ok(r) if r.status < 300 => {}
            Ok(r) => return Response::new(r.status, r.body),
            Err(e) => return e.into(),
        }
        us.push(began.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    Response::json(
        200,
        format!(
            "{{\"n\":{n},\"p50_us\":{:.1},\"p99_us\":{:.1},\"mean_us\":{mean:.1}}}",
            at(0.5),
            at(0.99)
        ),
    )
}

impl AsyncComponent for Relay {
    async fn handle(&self, req: Request) -> Response {
        if let Some(rest) = req.path().strip_prefix("/time/") {
            let n = req
                .query("n")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1000usize);
            let (name, target) = split(rest);
            return time(&name, &target, n.clamp(1, 100_000)).await;
        }
        let Some(rest) = req.target.strip_prefix("/to/") else {
            return match (req.method.as_str(), req.path()) {
                ("GET", "/stats") => Response::json(
                    200,
                    format!(
                        "{{\"made\":{},\"in_flight\":{},\"failed\":{}}}",
                        self.made.get(),
                        self.in_flight.get(),
                        self.failed.get()
                    ),
                ),
                _ => Response::not_found(),
            };
        };
        let (name, target) = split(rest);
        let mut out = Request::new(&req.method, target).with_body(req.body);
        if let Some(ct) = req.headers.iter().find(|(k, _)| k == "content-type") {
            out = out.with_header("content-type", &ct.1);
        }
        self.made.set(self.made.get() + 1);
        let _counted = InFlight::new(&self.in_flight);
        match call(&name, out).await {
            Ok(mut r) => {
                r.headers.retain(|(k, _)| k == "content-type");
                r
            }
            Err(e) => {
                self.failed.set(self.failed.get() + 1);
                e.into()
            }
        }
    }

    // Live update: the counts made and failed, 16 little-endian bytes.
    fn save(&self) -> Option<Vec<u8>> {
        let mut out = self.made.get().to_le_bytes().to_vec();
        out.extend_from_slice(&self.failed.get().to_le_bytes());
        Some(out)
    }

    fn upgrade(from_version: u32, saved: &[u8]) -> Result<Self, String> {
        let (Some(made), Some(failed)) = (saved.get(..8), saved.get(8..16)) else {
            return Err(format!("cannot read relay state of layout {from_version}"));
        };
        let n = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        Ok(Relay {
            made: Cell::new(n(made)),
            failed: Cell::new(n(failed)),
            ..Relay::default()
        })
    }
}

export_async!(Relay);

#[cfg(test)]
mod tests {
    #[test]
    fn targets_split_into_name_and_rest() {
        assert_eq!(
            super::split("counter/incr"),
            ("counter".into(), "/incr".into())
        );
        assert_eq!(super::split("counter"), ("counter".into(), "/".into()));
        assert_eq!(super::split("kv?x=1"), ("kv".into(), "/?x=1".into()));
        assert_eq!(super::split("r1/to/r1/x"), ("r1".into(), "/to/r1/x".into()));
    }
}
