//! `misbehave`: a component that does what a host must survive, for tests and demos.
//! `POST /spin` loops forever, `POST /hog?mb=N` keeps N more MiB, `POST /panic` panics,
//! `GET /ok` answers normally.

use continuum_guest::{Component, Request, Response, export};

#[derive(Default)]
struct Misbehave {
    hoard: Vec<Vec<u8>>,
    calls: u64,
}

impl Component for Misbehave {
    fn handle(&mut self, req: &Request) -> Response {
        self.calls += 1;
        match (req.method.as_str(), req.path()) {
            ("GET", "/ok") => Response::text(200, self.calls.to_string()),
            ("POST", "/spin") => {
                let mut x = self.calls;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            ("POST", "/hog") => {
                let mb = req
                    .query("mb")
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(1usize);
                for _ in 0..mb {
                    self.hoard.push(vec![1u8; 1024 * 1024]);
                }
                Response::text(200, format!("holding {} MiB\n", self.hoard.len()))
            }
            ("POST", "/panic") => panic!("asked to panic"),
            _ => Response::not_found(),
        }
    }
}

export!(Misbehave);
