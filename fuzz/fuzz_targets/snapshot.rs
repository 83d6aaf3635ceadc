//! Snapshots (files a user restores, checkpoints a node reads back) and the page deltas of
//! a migration: decoded and verified, or refused, never a panic.
#![no_main]

use continuum_migrate::{Snapshot, decode_pages};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::decode(data.to_vec()) {
        // What decodes re-encodes to what decodes the same.
        assert_eq!(Snapshot::decode(s.encode()).ok().as_ref(), Some(&s));
        assert_eq!(Snapshot::module_of(data).ok(), Some(s.module_digest));
    }
    let _ = Snapshot::module_of(data);
    let _ = decode_pages(data.to_vec());
});
