//! Fuzz target: `llamad_formats::fuzzing::tokenizer` on arbitrary bytes.
//!
//! The `tokenizers` crate panics on some malformed files (found here: an `unwrap` in its
//! decoders' deserialization, tokenizers 0.22.2 `decoders/mod.rs:90`); `formats::tokenizer`
//! catches such panics and turns them into errors, which is what the daemon relies on. So
//! this target replaces libfuzzer-sys's abort-on-any-panic hook with a silent one: a panic
//! caught inside is fine, one that escapes still aborts (libfuzzer-sys catches it and aborts).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: std::panic::set_hook(Box::new(|_| {})),
    |data: &[u8]| llamad_formats::fuzzing::tokenizer(data)
);
