//! What a peer writes on an rpc stream (one CBOR envelope) or on the call lane (frames), read
//! as the node reads it: the envelope decoded, checked against the swarm key and opened as a
//! request and as a reply (in an open swarm the body is opened as it is, so the fuzzer reaches
//! every request's decoder), each request placed on its protocol; and the same bytes read as
//! call-lane frames.
#![no_main]

use continuum_gossip::SwarmKey;
use continuum_wire::frame::read_frame;
use continuum_wire::rpc::{Envelope, Protocol, Reply, Request, misplaced, open};
use libfuzzer_sys::fuzz_target;

fn look(req: &Request) {
    let p = Protocol::of(req);
    let _ = (
        p.max_message(),
        p.max_streams(),
        p.needs_closed_swarm(),
        req.is_bulk(),
    );
    for on in Protocol::ALL {
        if on != p {
            let _ = misplaced(on, req);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let key = SwarmKey::new([7; 32]);
    if let Ok(env) = ciborium::from_reader::<Envelope, _>(data) {
        for k in [Some(&key), None] {
            if let Ok(req) = open::<Request>(k, &env) {
                look(&req);
            }
            let _ = open::<Reply>(k, &env);
        }
    }
    let body = Envelope::from_parts(data.to_vec(), None);
    if let Ok(req) = open::<Request>(None, &body) {
        look(&req);
    }
    let _ = open::<Reply>(None, &body);
    let mut framed = data;
    while let Ok(Some((_, env))) = futures::executor::block_on(read_frame(&mut framed, 1 << 20)) {
        let _ = open::<Request>(None, &env);
    }
});
