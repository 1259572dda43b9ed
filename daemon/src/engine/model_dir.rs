//! Model directories: recognise which exporter wrote a directory (the
//! onnxruntime-genai model builder or Hugging Face Optimum) from its files and
//! the graph's input/output names, and read the model's shape from its configs.
//!
//! Nothing here runs the model: `ModelDir::open` is cheap enough for listing
//! models, and everything a backend needs to bind inputs is decided here once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use llamad_formats::config::ModelSpec;

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
    /// as both past and present (the whole context per sequence): the builder's GQA graphs (float32
    /// or float16 cache) with `past_present_share_buffer` and no `position_ids` input.
    pub fn ort_shares_kv_buffer(&self) -> bool {
        self.past_present_share_buffer
            && self.graph.has_op("com.microsoft::GroupQueryAttention")
            && self.io.position_ids.is_none()
    }

    /// Whether the graph keeps its KV cache in float16 (its past inputs' type).
    pub fn kv_f16(&self) -> bool {
        self.graph.input(&self.io.past_key[0]).is_some_and(|i| i.elem_type == super::onnx_graph::ONNX_FLOAT16)
    }

    /// The KV cache's element type, as `ListModels` and `Estimate` name it.
    pub fn kv_cache_type(&self) -> &'static str {
        if self.kv_f16() { "f16" } else { "f32" }
    }

    /// Bytes of one KV cache element as the graph stores it.
    pub fn kv_element_bytes(&self) -> u64 {
        if self.kv_f16() { 2 } else { 4 }
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

/// Config files larger than this are refused unread (real ones are a few KiB).
const MAX_CONFIG: u64 = 4 << 20;

/// The text of `file`, refused unread when it is larger than `max` bytes (model files are
/// untrusted: one claiming gigabytes of JSON is not read into memory).
pub(crate) fn read_bounded(file: &Path, max: u64) -> Result<String, String> {
    let len = std::fs::metadata(file).map_err(|e| e.to_string())?.len();
    if len > max {
        return Err(format!("{len} bytes: larger than any such file ({max} at most)"));
    }
    std::fs::read_to_string(file).map_err(|e| e.to_string())
}

/// The text of a config file, bounded.
fn read_config(file: &Path) -> Result<String, LayoutError> {
    read_bounded(file, MAX_CONFIG).map_err(|reason| LayoutError::BadConfig { file: file.to_owned(), reason })
}

fn open_genai(dir: &Path, file: &Path) -> Result<ModelDir, LayoutError> {
    let cfg = llamad_formats::config::genai(&read_config(file)?)
        .map_err(|reason| LayoutError::BadConfig { file: file.to_owned(), reason })?;
    let d = &cfg;
    let onnx = dir.join(&cfg.filename);
    let spec = cfg.spec.clone();
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
    finish(dir, Layout::GenAi, onnx, spec, wanted, cfg.past_present_share_buffer)
}

fn open_optimum(dir: &Path, file: &Path) -> Result<ModelDir, LayoutError> {
    let gen_file = dir.join("generation_config.json");
    let generation = if gen_file.is_file() { Some(read_config(&gen_file)?) } else { None };
    let spec =
        llamad_formats::config::optimum(&read_config(file)?, generation.as_deref()).map_err(|(which, reason)| {
            let file = match which {
                llamad_formats::config::HfFile::Config => file.to_owned(),
                llamad_formats::config::HfFile::Generation => gen_file.clone(),
            };
            LayoutError::BadConfig { file, reason }
        })?;
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
    let quantization = super::onnx_graph::quantization(&graph);
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
