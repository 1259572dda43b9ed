//! Fuzz target: `llamad_formats::fuzzing::options` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llamad_formats::fuzzing::options(data));
