//! The migration handshake's messages as a peer sends them (CBOR), decoded, and each one
//! that decodes fed to a target machine (an offer opens one) and a source machine.
#![no_main]

use continuum_migrate::{Offer, Source, SourceConfig, Target, ToSource, ToTarget};
use libfuzzer_sys::fuzz_target;

fn offer() -> Offer {
    Offer {
        id: 1,
        name: "c".into(),
        version: "1".into(),
        module_digest: [0; 32],
        memory_bytes: 1 << 16,
        epoch: 0,
        federation: None,
        require: Default::default(),
        policy: "pinned".into(),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ciborium::from_reader::<ToTarget, _>(data) {
        let (target, _) = match &msg {
            ToTarget::Offer(o) => Target::new(0, o.clone(), Ok(false), 1_000),
            _ => Target::new(0, offer(), Ok(true), 1_000),
        };
        if let Some(mut t) = target {
            let _ = t.expect(&msg);
            let _ = t.handle_timeout(5_000);
        }
    }
    if let Ok(msg) = ciborium::from_reader::<ToSource, _>(data) {
        let mut s = Source::new(0, offer(), SourceConfig::default());
        while s.poll_action().is_some() {}
        s.handle_reply(10, msg);
        while s.poll_action().is_some() {}
        s.handle_timeout(60_000);
        while s.poll_action().is_some() {}
    }
});
