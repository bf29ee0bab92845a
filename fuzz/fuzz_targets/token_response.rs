#![no_main]
//! See `ameide_sdk::fuzzing::token_response`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ameide_sdk::fuzzing::token_response(data));
