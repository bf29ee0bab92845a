#![no_main]
//! See `ameide_sdk::fuzzing::proxy`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ameide_sdk::fuzzing::proxy(data));
