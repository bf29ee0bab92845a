#![no_main]
//! See `ameide_sdk::fuzzing::tls_material`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ameide_sdk::fuzzing::tls_material(data));
