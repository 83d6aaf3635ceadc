//! `counter`: the smallest stateful component. `POST /incr` adds one and returns the new count,
//! `GET /count` returns it (decimal text).

use continuum_guest::{Component, Request, Response, export};

#[derive(Default)]
struct Counter {
    n: u64,
}

impl Component for Counter {
    fn handle(&mut self, req: &Request) -> Response {
        match (req.method.as_str(), req.path()) {
            ("POST", "/incr") => {
                self.n += 1;
                Response::text(200, self.n.to_string())
            }
            ("GET", "/count") => Response::text(200, self.n.to_string()),
            _ => Response::not_found(),
        }
    }
}

export!(Counter);
