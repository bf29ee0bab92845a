#![no_main]
//! See `ameide_sdk::fuzzing::connection_frames`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ameide_sdk::fuzzing::connection_frames(data));
