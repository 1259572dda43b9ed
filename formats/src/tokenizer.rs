//! `tokenizer.json` (Hugging Face's format, read by the `tokenizers` crate)
//! from a model's directory, so untrusted: bounded in size, and a panic inside
//! the crate on a hostile file (fuzzing found two in tokenizers 0.22: an
//! `unwrap` deserializing decoders, a missing special token in a template
//! post-processor) becomes an error instead of taking the thread. A file is
//! refused at load if encoding a probe text already fails; encoding and
//! decoding are guarded as well.

use std::panic::{AssertUnwindSafe, catch_unwind};

use tokenizers::Tokenizer;

/// `tokenizer.json` larger than this is refused unread (the largest vocabularies in use,
/// 256k pieces, take about 35 MiB).
pub const MAX_TOKENIZER: u64 = 128 << 20;
/// `tokenizer_config.json` and `chat_template.jinja` (a few KiB; a template with its tools
/// and examples, tens).
pub const MAX_TOKENIZER_CONFIG: u64 = 4 << 20;

/// Text that goes through every stage of a tokenizer (normalizer, pre-tokenizer, model,
/// post-processor with special tokens, decoder).
const PROBE: &str = "Hello, wörld 123 東京 🙂\n\t  x";

fn guarded<T>(what: &str, f: impl FnOnce() -> tokenizers::Result<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("the tokenizers library failed {what} (it panicked)")),
    }
}

/// Parses `tokenizer.json`'s bytes and checks that the tokenizer encodes and decodes.
pub fn parse(bytes: &[u8]) -> Result<Tokenizer, String> {
    let t = guarded("reading this file", || Tokenizer::from_bytes(bytes))?;
    let ids = encode(&t, PROBE, true).map_err(|e| format!("it cannot encode text: {e}"))?;
    decode(&t, &ids, true).map_err(|e| format!("it cannot decode: {e}"))?;
    Ok(t)
}

/// `Tokenizer::encode`, guarded; `special`: with what the post-processor adds.
pub fn encode(t: &Tokenizer, text: &str, special: bool) -> Result<Vec<u32>, String> {
    guarded("encoding", || t.encode(text, special).map(|e| e.get_ids().to_vec()))
}

/// `Tokenizer::decode`, guarded.
pub fn decode(t: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<String, String> {
    guarded("decoding", || t.decode(ids, skip_special))
}

#[cfg(test)]
mod tests {
    #[test]
    fn garbage_is_an_error() {
        assert!(super::parse(b"{").is_err());
        assert!(super::parse(br#"{"model": {"type": "BPE", "vocab": {}, "merges": [["a"]]}}"#).is_err());
    }
}
