#![no_main]
//! See `ameide_sdk::fuzzing::timeouts`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ameide_sdk::fuzzing::timeouts(data));
