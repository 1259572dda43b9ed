//! Entry points shared by the fuzz targets (`fuzz/fuzz_targets/`, run with
//! cargo-fuzz on nightly) and by `tests/corpora.rs`, which replays their
//! corpora and every crash found on stable with plain `cargo test`. Each takes
//! arbitrary bytes and must return: no panic, no allocation beyond what the
//! input warrants, no unbounded work.

use serde_json::Value;

/// An ONNX graph file, summarized.
pub fn onnx(data: &[u8]) {
    if let Ok(g) = crate::onnx::summarize(data) {
        // what the summary promises: every external location stays beside the graph
        assert!(g.external_files.iter().all(|f| crate::onnx::external_location_ok(f)));
        assert!(g.weights.len() <= data.len());
    }
}

/// `genai_config.json`, or `config.json` and `generation_config.json` (split at the first
/// NUL): the first byte chooses.
pub fn config(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let spec = if which & 1 == 0 {
        crate::config::genai(text).map(|g| {
            assert!(!g.filename.contains('/') && g.filename != "..");
            g.spec
        })
    } else {
        let (config, generation) = match text.split_once('\0') {
            Some((c, g)) => (c, Some(g)),
            None => (text, None),
        };
        crate::config::optimum(config, generation).map_err(|e| e.1)
    };
    if let Ok(s) = spec {
        assert!(s.validate().is_ok());
        // what the daemon sizes from a spec cannot overflow
        let per_token = (s.layers * 2 * s.kv_heads * s.head_dim) as u128 * 4;
        assert!(per_token * s.context_length as u128 <= u64::MAX as u128);
    }
}

/// `llamad-manifest.json`.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = crate::manifest::Manifest::parse(text) {
        for path in m.files.keys() {
            assert!(!path.starts_with('/') && !path.split('/').any(|c| c == ".."), "{path}");
        }
    }
}

/// A chat template and, after the first NUL, the messages as a JSON array (one user
/// message when they are missing or not an array).
pub fn template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (template, messages) = match text.split_once('\0') {
        Some((t, m)) => (t, serde_json::from_str::<Value>(m).ok()),
        None => (text, None),
    };
    let messages = match messages {
        Some(Value::Array(list)) => list,
        _ => vec![serde_json::json!({"role": "user", "content": "Hello"})],
    };
    let inputs = crate::template::Inputs { messages: &messages, tools: None, bos_token: "<s>", eos_token: "</s>" };
    if let Ok(out) = crate::template::render(template, &inputs) {
        assert!(out.len() <= crate::template::MAX_OUTPUT);
    }
}

/// A target's entry point.
pub type Target = fn(&[u8]);

/// The targets by name (the fuzz targets' and the corpora's folder names).
pub const TARGETS: &[(&str, Target)] =
    &[("onnx", onnx), ("config", config), ("manifest", manifest), ("template", template)];
