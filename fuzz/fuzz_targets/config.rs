//! Fuzz target: `llamad_formats::fuzzing::config` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llamad_formats::fuzzing::config(data));
