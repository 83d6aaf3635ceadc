//! Gossip frames as any peer may send them (published, relayed or direct), opened with and
//! without a swarm key, and fed to a gossip machine that lives across inputs.
#![no_main]

use continuum_gossip::{
    Config, Gossip, Keypair, MAX_DIRECT_BYTES, PeerId, Resources, SwarmKey, open,
};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    static MACHINE: RefCell<(Gossip, u64)> = RefCell::new((
        Gossip::new(
            0,
            Keypair::ed25519_from_bytes([1; 32]).expect("a valid seed"),
            None,
            Config::default(),
            Resources::default(),
            1,
        ),
        0,
    ));
}

fuzz_target!(|data: &[u8]| {
    let key = SwarmKey::new([7; 32]);
    let _ = open(data, None, MAX_DIRECT_BYTES);
    let _ = open(data, Some(&key), MAX_DIRECT_BYTES);
    // Past the decryption too: what a key holder could send.
    let _ = open(&key.encrypt(data), Some(&key), MAX_DIRECT_BYTES);
    MACHINE.with(|m| {
        let (g, now) = &mut *m.borrow_mut();
        *now += 50;
        let _ = g.handle_gossip(*now, data);
        let _ = g.handle_direct(
            *now,
            PeerId::from_bytes(&[0, 2, 8, 1]).unwrap_or(g.me()),
            data,
        );
        g.handle_timeout(*now);
        while g.poll_output().is_some() {}
        while g.poll_event().is_some() {}
    });
});
