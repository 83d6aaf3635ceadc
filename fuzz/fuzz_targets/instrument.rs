//! The instrumenter, on any bytes a deploy may carry: refused, or a module that still
//! validates.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = continuum_migrate::instrument(data) {
        wasmparser::Validator::new()
            .validate_all(&out)
            .expect("an instrumented module validates");
    }
});
