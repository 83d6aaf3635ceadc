//! `kv`: a key-value store whose whole state lives in the component's memory.
//!
//! - `PUT /k/KEY` stores the body, `GET /k/KEY` returns it, `DELETE /k/KEY` removes it;
//! - `POST /fill?mb=N` adds N MiB of pseudo-random values (to give the state some weight);
//! - `GET /digest` returns the blake3 of the whole state (hex), to compare two copies of it.

use continuum_guest::{Component, Request, Response, export};
use std::collections::BTreeMap;

/// Values written by `/fill` are this big, so that a fill touches whole pages.
const FILL_VALUE: usize = 64 * 1024;

#[derive(Default)]
struct Kv {
    map: BTreeMap<String, Vec<u8>>,
    /// xorshift64* state for `/fill`; part of the state, so a restored copy continues the
    /// same sequence.
    rng: u64,
    fills: u64,
}

impl Kv {
    fn next(&mut self) -> u64 {
        if self.rng == 0 {
            self.rng = 0x9E37_79B9_7F4A_7C15;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, mb: usize) -> usize {
        let values = mb * 1024 * 1024 / FILL_VALUE;
        for i in 0..values {
            let mut v = vec![0u8; FILL_VALUE];
            for chunk in v.chunks_exact_mut(8) {
                chunk.copy_from_slice(&self.next().to_le_bytes());
            }
            self.map.insert(format!("fill/{:06}/{i:06}", self.fills), v);
        }
        self.fills += 1;
        values * FILL_VALUE
    }

    fn digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        for (k, v) in &self.map {
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v);
        }
        h.update(&self.rng.to_le_bytes());
        h.finalize().to_hex().to_string()
    }
}

impl Component for Kv {
    fn handle(&mut self, req: &Request) -> Response {
        let path = req.path();
        if let Some(key) = path.strip_prefix("/k/").filter(|k| !k.is_empty()) {
            return match req.method.as_str() {
                "PUT" => match self.map.insert(key.to_string(), req.body.clone()) {
                    Some(_) => Response::text(200, "updated\n"),
                    None => Response::text(201, "created\n"),
                },
                "GET" => match self.map.get(key) {
                    Some(v) => Response::new(200, v.clone()),
                    None => Response::not_found(),
                },
                "DELETE" => match self.map.remove(key) {
                    Some(_) => Response::text(200, "deleted\n"),
                    None => Response::not_found(),
                },
                _ => Response::text(405, "use GET, PUT or DELETE\n"),
            };
        }
        match (req.method.as_str(), path) {
            ("POST", "/fill") => match req.query("mb").and_then(|m| m.parse::<usize>().ok()) {
                Some(mb) if mb <= 4096 => {
                    let added = self.fill(mb);
                    Response::json(
                        200,
                        format!("{{\"added_bytes\":{added},\"keys\":{}}}", self.map.len()),
                    )
                }
                _ => Response::bad_request("fill needs ?mb=N with N a number of MiB up to 4096\n"),
            },
            ("GET", "/digest") => Response::text(200, self.digest()),
            ("GET", "/len") => Response::text(200, self.map.len().to_string()),
            _ => Response::not_found(),
        }
    }
}

export!(Kv);
