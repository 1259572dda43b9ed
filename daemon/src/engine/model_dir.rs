//! Model directories: recognise which exporter wrote a directory (the
//! onnxruntime-genai model builder or Hugging Face Optimum) from its files and
//! the graph's input/output names, and read the model's shape from its configs.
//!
//! Nothing here runs the model: `ModelDir::open` is cheap enough for listing
//! models, and everything a backend needs to bind inputs is decided here once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::onnx_graph::{GraphSummary, read_graph};

/// Model names are directory names under `models_dir`: no paths, no hidden files.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Which exporter produced the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `python -m onnxruntime_genai.models.builder`: `genai_config.json`.
    GenAi,
    /// `optimum-cli export onnx --task text-generation-with-past`: `config.json`.
    Optimum,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::GenAi => "onnxruntime-genai",
            Layout::Optimum => "optimum",
        })
    }
}

/// How the weights are stored, as read from the graph's operators.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Quantization {
    F32,
    F16,
    /// com.microsoft `MatMulNBits` (onnxruntime-genai int4, our converter's int4).
    Int4 {
        block_size: u32,
    },
    /// onnxruntime `quantize_dynamic`: `DynamicQuantizeLinear` + `MatMulInteger`.
    Int8Dynamic,
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantization::F32 => f.write_str("fp32"),
            Quantization::F16 => f.write_str("fp16"),
            Quantization::Int4 { block_size } => write!(f, "int4 (MatMulNBits, block {block_size})"),
            Quantization::Int8Dynamic => f.write_str("int8 (dynamic)"),
        }
    }
}

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

/// Names of the graph inputs and outputs the decoding loop binds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IoNames {
    pub input_ids: String,
    pub attention_mask: Option<String>,
    pub position_ids: Option<String>,
    /// Present in Optimum's merged decoders: true once a past is fed.
    pub use_cache_branch: Option<String>,
    /// How many of the last positions get logits (HF's `logits_to_keep`; the converter's fused
    /// graph): an int64 scalar; not fed, or 0, is every position, as in graphs without it.
    pub logits_to_keep: Option<String>,
    pub past_key: Vec<String>,
    pub past_value: Vec<String>,
    pub logits: String,
    pub present_key: Vec<String>,
    pub present_value: Vec<String>,
}

/// A recognised model directory.
#[derive(Clone, Debug)]
pub struct ModelDir {
    pub path: PathBuf,
    pub layout: Layout,
    pub onnx: PathBuf,
    pub spec: ModelSpec,
    pub io: IoNames,
    pub graph: GraphSummary,
    pub quantization: Quantization,
    pub tokenizer: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    /// `chat_template.jinja` (newer transformers write the template there).
    pub chat_template_file: Option<PathBuf>,
    /// Bytes on disk of the graph and its external data.
    pub file_size: u64,
    /// genai_config's `search.past_present_share_buffer`.
    pub past_present_share_buffer: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{dir}: not a model directory: {what}")]
    Missing { dir: PathBuf, what: String },
    #[error("{file}: {reason}")]
    BadConfig { file: PathBuf, reason: String },
    #[error("{file}: not a usable ONNX graph: {reason}")]
    BadGraph { file: PathBuf, reason: String },
    #[error("{file}: the graph is not a causal LM decoder with a KV cache: missing {missing}")]
    NotADecoder { file: PathBuf, missing: String },
}

impl ModelDir {
    /// Whether ONNX Runtime runs this model with one preallocated KV buffer per layer, bound
    /// as both past and present (the whole context per sequence): the builder's float32 GQA
    /// graphs with `past_present_share_buffer` and no `position_ids` input.
    pub fn ort_shares_kv_buffer(&self) -> bool {
        let past_f16 =
            self.graph.input(&self.io.past_key[0]).is_some_and(|i| i.elem_type == super::onnx_graph::ONNX_FLOAT16);
        self.past_present_share_buffer
            && !past_f16
            && self.graph.has_op("com.microsoft::GroupQueryAttention")
            && self.io.position_ids.is_none()
    }

    /// Recognises `dir` and reads everything needed to load it.
    pub fn open(dir: &Path) -> Result<ModelDir, LayoutError> {
        if !dir.is_dir() {
            return Err(LayoutError::Missing { dir: dir.to_owned(), what: "no such directory".into() });
        }
        let genai = dir.join("genai_config.json");
        let hf = dir.join("config.json");
        if genai.is_file() {
            open_genai(dir, &genai)
        } else if hf.is_file() {
            open_optimum(dir, &hf)
        } else {
            Err(LayoutError::Missing {
                dir: dir.to_owned(),
                what: "neither genai_config.json (onnxruntime-genai layout) nor config.json \
                       (Optimum layout) is present"
                    .into(),
            })
        }
    }

    /// Directory name, used as the model's name.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// Parameters counted from the graph's initializers.
    pub fn parameters(&self) -> u64 {
        self.graph.parameters
    }
}

fn read_json(file: &Path) -> Result<Value, LayoutError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| LayoutError::BadConfig { file: file.to_owned(), reason: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| LayoutError::BadConfig { file: file.to_owned(), reason: e.to_string() })
}

fn parse<T: for<'de> Deserialize<'de>>(file: &Path, v: Value) -> Result<T, LayoutError> {
    serde_json::from_value(v).map_err(|e| LayoutError::BadConfig { file: file.to_owned(), reason: e.to_string() })
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

fn open_genai(dir: &Path, file: &Path) -> Result<ModelDir, LayoutError> {
    let cfg: GenAiConfig = parse(file, read_json(file)?)?;
    let d = &cfg.model.decoder;
    let onnx = dir.join(&d.filename);
    let spec = ModelSpec {
        layers: d.num_hidden_layers,
        heads: d.num_attention_heads,
        kv_heads: d.num_key_value_heads,
        head_dim: d.head_size,
        hidden: d.hidden_size,
        vocab_size: cfg.model.vocab_size,
        context_length: cfg.model.context_length,
        bos_id: cfg.model.bos_token_id,
        eos_ids: cfg.model.eos_token_id.clone().into_vec(),
    };
    let name = |map: &BTreeMap<String, String>, key: &str, default: &str| {
        map.get(key).cloned().unwrap_or_else(|| default.to_string())
    };
    let per_layer =
        |pattern: String| -> Vec<String> { (0..spec.layers).map(|i| pattern.replace("%d", &i.to_string())).collect() };
    let wanted = IoNames {
        input_ids: name(&d.inputs, "input_ids", "input_ids"),
        attention_mask: Some(name(&d.inputs, "attention_mask", "attention_mask")),
        position_ids: Some(name(&d.inputs, "position_ids", "position_ids")),
        use_cache_branch: None,
        logits_to_keep: Some("logits_to_keep".into()),
        past_key: per_layer(name(&d.inputs, "past_key_names", "past_key_values.%d.key")),
        past_value: per_layer(name(&d.inputs, "past_value_names", "past_key_values.%d.value")),
        logits: name(&d.outputs, "logits", "logits"),
        present_key: per_layer(name(&d.outputs, "present_key_names", "present.%d.key")),
        present_value: per_layer(name(&d.outputs, "present_value_names", "present.%d.value")),
    };
    finish(dir, Layout::GenAi, onnx, spec, wanted, cfg.search.past_present_share_buffer)
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

fn open_optimum(dir: &Path, file: &Path) -> Result<ModelDir, LayoutError> {
    let cfg: HfConfig = parse(file, read_json(file)?)?;
    if let Some(t) = &cfg.model_type
        && t != "llama"
    {
        return Err(LayoutError::BadConfig {
            file: file.to_owned(),
            reason: format!("model_type \"{t}\" is not a Llama-architecture model"),
        });
    }
    let gen_file = dir.join("generation_config.json");
    let generation: HfGenerationConfig =
        if gen_file.is_file() { parse(&gen_file, read_json(&gen_file)?)? } else { Default::default() };
    let mut eos_ids = generation.eos_token_id.into_vec();
    for id in cfg.eos_token_id.into_vec() {
        if !eos_ids.contains(&id) {
            eos_ids.push(id);
        }
    }
    let head_dim = cfg.head_dim.unwrap_or(cfg.hidden_size / cfg.num_attention_heads.max(1));
    let spec = ModelSpec {
        layers: cfg.num_hidden_layers,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads.unwrap_or(cfg.num_attention_heads),
        head_dim,
        hidden: cfg.hidden_size,
        vocab_size: cfg.vocab_size,
        context_length: cfg.max_position_embeddings.unwrap_or(2048),
        bos_id: generation.bos_token_id.or(cfg.bos_token_id),
        eos_ids,
    };
    let onnx =
        ["model.onnx", "decoder_model_merged.onnx"].iter().map(|f| dir.join(f)).find(|p| p.is_file()).ok_or_else(
            || LayoutError::Missing {
                dir: dir.to_owned(),
                what: "config.json is present but neither model.onnx nor decoder_model_merged.onnx is".into(),
            },
        )?;
    let per_layer =
        |fmt: &str| -> Vec<String> { (0..spec.layers).map(|i| fmt.replace("{}", &i.to_string())).collect() };
    let wanted = IoNames {
        input_ids: "input_ids".into(),
        attention_mask: Some("attention_mask".into()),
        position_ids: Some("position_ids".into()),
        use_cache_branch: Some("use_cache_branch".into()),
        logits_to_keep: Some("logits_to_keep".into()),
        past_key: per_layer("past_key_values.{}.key"),
        past_value: per_layer("past_key_values.{}.value"),
        logits: "logits".into(),
        present_key: per_layer("present.{}.key"),
        present_value: per_layer("present.{}.value"),
    };
    finish(dir, Layout::Optimum, onnx, spec, wanted, false)
}

/// Reads the graph, checks the wanted I/O names against it (optional inputs
/// the graph lacks are dropped), and fills in the rest.
fn finish(
    dir: &Path,
    layout: Layout,
    onnx: PathBuf,
    spec: ModelSpec,
    mut io: IoNames,
    past_present_share_buffer: bool,
) -> Result<ModelDir, LayoutError> {
    if !onnx.is_file() {
        return Err(LayoutError::Missing {
            dir: dir.to_owned(),
            what: format!("the graph file {} does not exist", onnx.display()),
        });
    }
    let graph = read_graph(&onnx)?;
    let has_in = |n: &str| graph.inputs.iter().any(|i| i.name == n);
    let has_out = |n: &str| graph.outputs.iter().any(|i| i.name == n);
    let mut missing: Vec<String> = vec![];
    if !has_in(&io.input_ids) {
        missing.push(format!("input {}", io.input_ids));
    }
    if !has_out(&io.logits) {
        missing.push(format!("output {}", io.logits));
    }
    for n in io.past_key.iter().chain(&io.past_value) {
        if !has_in(n) {
            missing.push(format!("input {n}"));
        }
    }
    for n in io.present_key.iter().chain(&io.present_value) {
        if !has_out(n) {
            missing.push(format!("output {n}"));
        }
    }
    if !missing.is_empty() {
        let shown = missing.len().min(4);
        let more = if missing.len() > shown { format!(" (and {} more)", missing.len() - shown) } else { String::new() };
        return Err(LayoutError::NotADecoder { file: onnx, missing: format!("{}{more}", missing[..shown].join(", ")) });
    }
    for opt in [&mut io.attention_mask, &mut io.position_ids, &mut io.use_cache_branch] {
        if opt.as_deref().is_some_and(|n| !has_in(n)) {
            *opt = None;
        }
    }
    if io.logits_to_keep.as_ref().is_some_and(|n| !has_in(n) && !graph.defaulted_inputs.contains(n)) {
        io.logits_to_keep = None;
    }
    let known: Vec<&str> = [Some(&io.input_ids), io.attention_mask.as_ref(), io.position_ids.as_ref()]
        .into_iter()
        .flatten()
        .chain(io.use_cache_branch.as_ref())
        .chain(io.logits_to_keep.as_ref())
        .chain(io.past_key.iter())
        .chain(io.past_value.iter())
        .map(String::as_str)
        .collect();
    if let Some(extra) = graph.inputs.iter().find(|i| !known.contains(&i.name.as_str())) {
        return Err(LayoutError::BadGraph {
            file: onnx,
            reason: format!("unexpected graph input {} that llamad does not know how to feed", extra.name),
        });
    }
    let quantization = graph.quantization();
    let file_size = graph.file_size + graph.external_bytes;
    let opt_file = |n: &str| Some(dir.join(n)).filter(|p| p.is_file());
    Ok(ModelDir {
        path: dir.to_owned(),
        layout,
        onnx,
        spec,
        io,
        quantization,
        tokenizer: opt_file("tokenizer.json"),
        tokenizer_config: opt_file("tokenizer_config.json"),
        chat_template_file: opt_file("chat_template.jinja"),
        file_size,
        graph,
        past_present_share_buffer,
    })
}
