//! The guest ABI's request and response encodings (what crosses between host and guest, and
//! between nodes in forwarded requests): decoded or refused, and what decodes round-trips.
#![no_main]

use continuum_guest::abi::{decode_request, decode_response, encode_request, encode_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode_request(data) {
        assert_eq!(decode_request(&encode_request(&r)).ok(), Some(r));
    }
    if let Ok(r) = decode_response(data) {
        assert_eq!(decode_response(&encode_response(&r)).ok(), Some(r));
    }
});
