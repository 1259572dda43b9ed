//! A model directory's configs: onnxruntime-genai's `genai_config.json`, or
//! Hugging Face's `config.json` with `generation_config.json` (Optimum's
//! layout), read into the transformer's shape ([`ModelSpec`]) and checked to
//! be a shape a Llama-family model can have: every size within bounds a real
//! model stays far inside, so that nothing sized from them (per-layer names,
//! KV caches, logits) can overflow or allocate without limit.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The transformer's shape: what KV-cache sizing and input binding need.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelSpec {
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
}

/// Bounds no Llama-family model comes near (Llama 3.1 405B: 126 layers, 128 heads,
/// 16,384 hidden, 128,256 ids, 131,072 positions).
pub const MAX_LAYERS: usize = 1024;
pub const MAX_HEADS: usize = 4096;
pub const MAX_HEAD_DIM: usize = 4096;
pub const MAX_HIDDEN: usize = 1 << 20;
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_CONTEXT: usize = 1 << 24;
pub const MAX_EOS_IDS: usize = 64;

impl ModelSpec {
    /// Checks the shape against the bounds above and itself.
    pub fn validate(&self) -> Result<(), String> {
        let within = |what: &str, v: usize, max: usize| {
            if v == 0 || v > max { Err(format!("{what} = {v} (1 to {max})")) } else { Ok(()) }
        };
        within("num_hidden_layers", self.layers, MAX_LAYERS)?;
        within("num_attention_heads", self.heads, MAX_HEADS)?;
        within("num_key_value_heads", self.kv_heads, MAX_HEADS)?;
        within("head_size", self.head_dim, MAX_HEAD_DIM)?;
        within("hidden_size", self.hidden, MAX_HIDDEN)?;
        within("vocab_size", self.vocab_size, MAX_VOCAB)?;
        within("context length", self.context_length, MAX_CONTEXT)?;
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "num_attention_heads = {} is not a multiple of num_key_value_heads = {}",
                self.heads, self.kv_heads
            ));
        }
        if self.eos_ids.len() > MAX_EOS_IDS {
            return Err(format!("{} eos_token_id values (at most {MAX_EOS_IDS})", self.eos_ids.len()));
        }
        if let Some(id) = self.bos_id.iter().chain(&self.eos_ids).find(|&&id| id as usize >= self.vocab_size) {
            return Err(format!("token id {id} is outside the vocabulary of {}", self.vocab_size));
        }
        Ok(())
    }
}

/// `eos_token_id` is an integer or a list of them in both config formats.
#[derive(Deserialize, Default, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
    #[default]
    None,
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
            OneOrMany::None => vec![],
        }
    }
}

#[derive(Deserialize)]
struct GenAiConfig {
    model: GenAiModel,
    #[serde(default)]
    search: GenAiSearch,
}

#[derive(Deserialize)]
struct GenAiModel {
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: OneOrMany,
    context_length: usize,
    vocab_size: usize,
    decoder: GenAiDecoder,
}

#[derive(Deserialize)]
struct GenAiDecoder {
    filename: String,
    head_size: usize,
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    num_key_value_heads: usize,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct GenAiSearch {
    #[serde(default)]
    past_present_share_buffer: bool,
}

/// What `genai_config.json` says.
#[derive(Clone, Debug, PartialEq)]
pub struct GenAi {
    pub spec: ModelSpec,
    /// The graph's file name (beside the config).
    pub filename: String,
    /// Graph input and output names by role (`input_ids`, `past_key_names` with `%d`, …).
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
    pub past_present_share_buffer: bool,
}

/// Reads `genai_config.json`'s text.
pub fn genai(text: &str) -> Result<GenAi, String> {
    let cfg: GenAiConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let d = cfg.model.decoder;
    let spec = ModelSpec {
        layers: d.num_hidden_layers,
        heads: d.num_attention_heads,
        kv_heads: d.num_key_value_heads,
        head_dim: d.head_size,
        hidden: d.hidden_size,
        vocab_size: cfg.model.vocab_size,
        context_length: cfg.model.context_length,
        bos_id: cfg.model.bos_token_id,
        eos_ids: cfg.model.eos_token_id.into_vec(),
    };
    spec.validate()?;
    if !plain_file_name(&d.filename) {
        return Err(format!("decoder.filename {:?} is not a file name beside the config", d.filename));
    }
    Ok(GenAi {
        spec,
        filename: d.filename,
        inputs: d.inputs,
        outputs: d.outputs,
        past_present_share_buffer: cfg.search.past_present_share_buffer,
    })
}

/// One path component, not `.` or `..`, no NUL.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    num_hidden_layers: usize,
    #[serde(default)]
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: OneOrMany,
}

#[derive(Deserialize, Default)]
struct HfGenerationConfig {
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: OneOrMany,
}

/// Which of Hugging Face's two files a reason is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfFile {
    Config,
    Generation,
}

/// Reads `config.json`'s text and, if there is one, `generation_config.json`'s.
pub fn optimum(config: &str, generation: Option<&str>) -> Result<ModelSpec, (HfFile, String)> {
    let cfg: HfConfig = serde_json::from_str(config).map_err(|e| (HfFile::Config, e.to_string()))?;
    if let Some(t) = &cfg.model_type
        && t != "llama"
    {
        return Err((HfFile::Config, format!("model_type \"{t}\" is not a Llama-architecture model")));
    }
    let generation: HfGenerationConfig = match generation {
        Some(text) => serde_json::from_str(text).map_err(|e| (HfFile::Generation, e.to_string()))?,
        None => Default::default(),
    };
    let mut eos_ids = generation.eos_token_id.into_vec();
    for id in cfg.eos_token_id.into_vec() {
        if !eos_ids.contains(&id) {
            eos_ids.push(id);
        }
    }
    let spec = ModelSpec {
        layers: cfg.num_hidden_layers,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads.unwrap_or(cfg.num_attention_heads),
        head_dim: cfg.head_dim.unwrap_or(cfg.hidden_size / cfg.num_attention_heads.max(1)),
        hidden: cfg.hidden_size,
        vocab_size: cfg.vocab_size,
        context_length: cfg.max_position_embeddings.unwrap_or(2048),
        bos_id: generation.bos_token_id.or(cfg.bos_token_id),
        eos_ids,
    };
    spec.validate().map_err(|e| (HfFile::Config, e))?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENAI: &str = r#"{"model": {"bos_token_id": 1, "eos_token_id": [2, 3], "context_length": 256,
        "vocab_size": 512, "decoder": {"filename": "model.onnx", "head_size": 8, "hidden_size": 64,
        "num_attention_heads": 8, "num_hidden_layers": 2, "num_key_value_heads": 4}},
        "search": {"past_present_share_buffer": true}}"#;

    #[test]
    fn genai_configs_are_read_and_bounded() {
        let g = genai(GENAI).unwrap();
        assert_eq!((g.spec.layers, g.spec.kv_heads, g.spec.eos_ids.clone()), (2, 4, vec![2, 3]));
        assert!(g.past_present_share_buffer);
        for (from, to, why) in [
            ("\"model.onnx\"", "\"../model.onnx\"", "not a file name"),
            ("\"model.onnx\"", "\"/etc/passwd\"", "not a file name"),
            ("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 100000000000", "num_hidden_layers"),
            ("\"num_key_value_heads\": 4", "\"num_key_value_heads\": 3", "multiple"),
            ("\"num_key_value_heads\": 4", "\"num_key_value_heads\": 0", "num_key_value_heads = 0"),
            ("[2, 3]", "[2, 900]", "outside the vocabulary"),
            ("\"context_length\": 256", "\"context_length\": 99999999999", "context length"),
        ] {
            let e = genai(&GENAI.replace(from, to)).unwrap_err();
            assert!(e.contains(why), "{to}: {e}");
        }
    }

    #[test]
    fn hf_configs_merge_the_generation_config() {
        let cfg = r#"{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8,
            "num_hidden_layers": 2, "vocab_size": 512, "eos_token_id": 2}"#;
        let s = optimum(cfg, Some(r#"{"eos_token_id": [5, 2], "bos_token_id": 1}"#)).unwrap();
        assert_eq!((s.head_dim, s.kv_heads, s.context_length, s.bos_id), (8, 8, 2048, Some(1)));
        assert_eq!(s.eos_ids, vec![5, 2]);
        let gpt = cfg.replace("llama", "gpt2");
        assert_eq!(optimum(&gpt, None).unwrap_err().0, HfFile::Config);
        assert_eq!(optimum(cfg, Some("{")).unwrap_err().0, HfFile::Generation);
        let e = optimum(&cfg.replace("\"num_attention_heads\": 8", "\"num_attention_heads\": 0"), None).unwrap_err();
        assert!(e.1.contains("num_attention_heads = 0"), "{e:?}");
    }
}
