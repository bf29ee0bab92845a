#![no_main]
//! See `ameide_sdk::fuzzing::retry_delay`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ameide_sdk::fuzzing::retry_delay(data));
