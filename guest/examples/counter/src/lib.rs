//! `counter`: the smallest stateful component. `POST /incr` adds one and returns the new count,
//! `GET /count` returns it (decimal text). It can hand its count to a newer version on a live
//! update (see `counter-v2`).

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

    // Live update: the count, as 8 little-endian bytes.
    fn save(&self) -> Option<Vec<u8>> {
        Some(self.n.to_le_bytes().to_vec())
    }

    fn upgrade(from_version: u32, saved: &[u8]) -> Result<Self, String> {
        match (from_version, <[u8; 8]>::try_from(saved)) {
            (1, Ok(b)) => Ok(Counter {
                n: u64::from_le_bytes(b),
            }),
            _ => Err(format!(
                "cannot read counter state of layout {from_version}"
            )),
        }
    }
}

export!(Counter);
