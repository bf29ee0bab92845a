#![no_main]
//! See `ameide_sdk::fuzzing::config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ameide_sdk::fuzzing::config(data));
