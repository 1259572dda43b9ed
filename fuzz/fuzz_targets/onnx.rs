//! Fuzz target: `llamad_formats::fuzzing::onnx` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llamad_formats::fuzzing::onnx(data));
