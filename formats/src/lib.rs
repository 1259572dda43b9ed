//! llamad's readers of untrusted input: a model directory's files (the ONNX
//! graph's protobuf, the configs, the tokenizer, the manifest, the chat template) come from
//! whoever placed the model, and request options and messages ([`wire`]) from
//! any bus client, so each reader here is bounded (no panic, no
//! allocation beyond what the input warrants, no unbounded work) and fuzzed
//! ([`fuzzing`], `fuzz/`) without building the inference engines.

pub mod config;
pub mod fuzzing;
pub mod manifest;
pub mod onnx;
pub mod template;
pub mod tokenizer;
pub mod wire;
