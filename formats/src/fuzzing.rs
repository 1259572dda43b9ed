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

/// Keys the options and messages take, for the generator to pick from.
const KEYS: &[&str] = &[
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "repeat_last_n",
    "seed",
    "max_tokens",
    "stop",
    "keep_alive",
    "prompt_lookup",
    "priority",
    "json",
    "json_schema",
    "regex",
    "lark",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "role",
    "content",
    "tool_calls",
    "tool_call_id",
    "name",
    "id",
    "arguments",
];

/// Takes one byte (0 when the input is used up).
fn byte(data: &mut &[u8]) -> u8 {
    let (&b, rest) = data.split_first().unwrap_or((&0, &[]));
    *data = rest;
    b
}

/// A string of up to 255 bytes from the input (lossy UTF-8, as D-Bus strings are UTF-8).
fn text(data: &mut &[u8]) -> String {
    let n = (byte(data) as usize).min(data.len());
    let (s, rest) = data.split_at(n);
    *data = rest;
    String::from_utf8_lossy(s).into_owned()
}

/// A D-Bus value of any of the types a client could send for a key, nested `depth` deep at most.
fn value(data: &mut &[u8], depth: u8) -> zvariant::Value<'static> {
    use zvariant::Value;
    fn eight(data: &mut &[u8]) -> [u8; 8] {
        let mut b = [0u8; 8];
        b.iter_mut().for_each(|x| *x = byte(data));
        b
    }
    match byte(data) % 12 {
        0 => Value::U32(u32::from_le_bytes(eight(data)[..4].try_into().unwrap())),
        1 => Value::I32(i32::from_le_bytes(eight(data)[..4].try_into().unwrap())),
        2 => Value::U64(u64::from_le_bytes(eight(data))),
        3 => Value::I64(i64::from_le_bytes(eight(data))),
        4 => Value::F64(f64::from_le_bytes(eight(data))),
        5 => Value::Bool(byte(data) & 1 == 1),
        6 => Value::U16(byte(data) as u16),
        7 | 8 => Value::from(text(data)),
        9 => Value::from((0..byte(data) % 4).map(|_| text(data)).collect::<Vec<String>>()),
        10 if depth > 0 => Value::from((0..byte(data) % 3).map(|_| dict(data, depth - 1)).collect::<Vec<_>>()),
        _ => Value::U8(byte(data)),
    }
}

fn dict(data: &mut &[u8], depth: u8) -> std::collections::HashMap<String, zvariant::OwnedValue> {
    let mut d = std::collections::HashMap::new();
    for _ in 0..byte(data) % 8 {
        let k = match byte(data) {
            b if (b as usize) < KEYS.len() * 8 => KEYS[b as usize % KEYS.len()].to_string(),
            _ => text(data),
        };
        if let Ok(v) = value(data, depth).try_into() {
            d.insert(k, v);
        }
    }
    d
}

/// Request options (`a{sv}`) and chat messages (`aa{sv}`, with tool calls), made of keys the
/// daemon takes and values of any D-Bus type.
pub fn options(mut data: &[u8]) {
    let data = &mut data;
    let opts = dict(data, 1);
    if let Ok(r) = crate::wire::request(&opts) {
        assert!(opts.keys().all(|k| KEYS.contains(&k.as_str())));
        assert!(
            r.format.is_none()
                || opts.keys().filter(|k| ["json", "json_schema", "regex", "lark"].contains(&k.as_str())).count() >= 1
        );
    }
    let messages: Vec<_> = (0..byte(data) % 4).map(|_| dict(data, 2)).collect();
    if let Ok(list) = crate::wire::messages(&messages) {
        assert_eq!(list.len(), messages.len());
        assert!(list.iter().all(|m| m.role != crate::wire::Role::Tool || m.tool_call_id.is_some()));
    }
}

/// `tokenizer.json`: parsed (with its probe), then a text with special-token look-alikes
/// encoded and decoded, as the daemon does (panics inside the library are caught there).
pub fn tokenizer(data: &[u8]) {
    if let Ok(t) = crate::tokenizer::parse(data) {
        for special in [false, true] {
            if let Ok(ids) = crate::tokenizer::encode(&t, "<s>[INST] hi <|im_end|> </s>", special) {
                let _ = crate::tokenizer::decode(&t, &ids, false);
            }
        }
    }
}

/// A target's entry point.
pub type Target = fn(&[u8]);

/// The targets by name (the fuzz targets' and the corpora's folder names).
pub const TARGETS: &[(&str, Target)] = &[
    ("onnx", onnx),
    ("config", config),
    ("manifest", manifest),
    ("template", template),
    ("options", options),
    ("tokenizer", tokenizer),
];
