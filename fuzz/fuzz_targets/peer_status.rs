#![no_main]
//! See `ameide_sdk::fuzzing::peer_status`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ameide_sdk::fuzzing::peer_status(data));
