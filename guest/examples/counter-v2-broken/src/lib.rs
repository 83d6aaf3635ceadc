//! `counter-v2-broken`: a test double for a bad release. Its `upgrade` panics (a trap), so
//! `continuum update counter counter-v2-broken.wasm` must roll back to the running version
//! with its state intact.

use continuum_guest::{Component, Request, Response, export};

#[derive(Default)]
struct Counter;

impl Component for Counter {
    fn handle(&mut self, _req: &Request) -> Response {
        Response::text(500, "this version should never serve\n")
    }

    fn upgrade(_from_version: u32, _saved: &[u8]) -> Result<Self, String> {
        panic!("counter-v2-broken: upgrade is broken on purpose")
    }
}

export!(Counter);
