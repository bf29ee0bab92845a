#![no_main]
//! See `ameide_sdk::fuzzing::status_details`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ameide_sdk::fuzzing::status_details(data));
