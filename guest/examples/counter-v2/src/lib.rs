//! `counter-v2`: the second version of `counter`, for live updates. Its state has another
//! layout: the count is a `u128` and it remembers which layout it was upgraded from, so
//! `continuum update counter counter-v2.wasm` must convert the state. `GET /count` as before;
//! `GET /version` says `2 (from layout N)`.

use continuum_guest::{Component, Request, Response, export};

#[derive(Default)]
struct Counter {
    count: u128,
    upgraded_from: u32,
}

impl Component for Counter {
    fn handle(&mut self, req: &Request) -> Response {
        match (req.method.as_str(), req.path()) {
            ("POST", "/incr") => {
                self.count += 1;
                Response::text(200, self.count.to_string())
            }
            ("GET", "/count") => Response::text(200, self.count.to_string()),
            ("GET", "/version") => {
                Response::text(200, format!("2 (from layout {})", self.upgraded_from))
            }
            _ => Response::not_found(),
        }
    }

    const STATE_VERSION: u32 = 2;

    // Layout 2: the count as 16 little-endian bytes.
    fn save(&self) -> Option<Vec<u8>> {
        Some(self.count.to_le_bytes().to_vec())
    }

    fn upgrade(from_version: u32, saved: &[u8]) -> Result<Self, String> {
        let count = match from_version {
            1 => u64::from_le_bytes(saved.try_into().map_err(|_| "layout 1 is 8 bytes")?) as u128,
            2 => u128::from_le_bytes(saved.try_into().map_err(|_| "layout 2 is 16 bytes")?),
            v => return Err(format!("unknown state layout {v}")),
        };
        Ok(Counter {
            count,
            upgraded_from: from_version,
        })
    }
}

export!(Counter);
