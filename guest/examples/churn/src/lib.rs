//! `churn`: a state of a chosen size that keeps changing, for measuring migrations.
//!
//! - `POST /fill?mb=N`: hold N MiB of (non-zero) state;
//! - `POST /churn?kb=K`: rewrite K KiB of it every 10 ms tick, 4 KiB pages spread over the whole;
//! - `GET /digest`: a 64-bit FNV-1a of the state and the write count (equal before and after a
//!   migration when the churn is 0);
//! - `GET /ping`: a cheap answer, to time requests;
//! - `POST /work?n=N`: N rounds of arithmetic (about N ns), to load its host's CPU.

use continuum_guest::{Component, Request, Response, export};

const PAGE: usize = 4096;
const PERIOD_MS: u32 = 10;

#[derive(Default)]
struct Churn {
    data: Vec<u8>,
    kb_per_tick: u32,
    cursor: usize,
    writes: u64,
}

impl Churn {
    fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf29ce484222325;
        for &b in self.data.iter().chain(&self.writes.to_le_bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        h
    }
}

impl Component for Churn {
    fn handle(&mut self, req: &Request) -> Response {
        let num = |k: &str| req.query(k).and_then(|v| v.parse::<usize>().ok());
        match (req.method.as_str(), req.path()) {
            ("POST", "/fill") => match num("mb") {
                Some(mb) => {
                    self.data = (0..mb << 20).map(|i| (i % 251) as u8 | 1).collect();
                    Response::text(200, format!("{}\n", self.data.len()))
                }
                None => Response::text(400, "want ?mb=N\n"),
            },
            ("POST", "/churn") => match num("kb") {
                Some(kb) => {
                    self.kb_per_tick = kb as u32;
                    Response::text(200, "ok\n")
                }
                None => Response::text(400, "want ?kb=N\n"),
            },
            ("GET", "/digest") => Response::text(200, format!("{:016x}", self.digest())),
            ("GET", "/ping") => Response::text(200, "pong"),
            ("POST", "/work") => match num("n") {
                Some(n) => {
                    let mut x = self.writes;
                    for _ in 0..n {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                    Response::text(200, format!("{:x}\n", x & 0xff))
                }
                None => Response::text(400, "want ?n=N\n"),
            },
            _ => Response::not_found(),
        }
    }

    fn tick(&mut self, _now_ms: u64) -> Option<u32> {
        let pages = self.data.len() / PAGE;
        if pages > 0 {
            for _ in 0..(self.kb_per_tick as usize * 1024 / PAGE).min(pages) {
                // A stride prime to any page count we use scatters the writes.
                self.cursor = (self.cursor + 7919) % pages;
                self.writes += 1;
                let at = self.cursor * PAGE + (self.writes as usize % (PAGE - 8));
                self.data[at..at + 8].copy_from_slice(&self.writes.to_le_bytes());
            }
        }
        Some(PERIOD_MS)
    }
}

export!(Churn);
