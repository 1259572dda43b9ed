//! The inference backends behind one small interface.
//!
//! A [`LoadedModel`] is read-only and shared (`Arc`) by any number of
//! [`Sequence`]s; each sequence owns its KV cache and position. A sequence is
//! fed tokens (a whole prompt first, then one token per step, or a few at once
//! to verify a draft) and writes the logits of the last positions it was fed.
//! It can be rolled back to an earlier position: what was fed after it is
//! forgotten, exactly, as if it had never been fed. Tokenizing, sampling,
//! drafting and stopping are not the backend's business.

pub mod onnxruntime;
pub mod providers;
pub mod tract;

use std::sync::Arc;

use super::model_dir::ModelDir;
pub use providers::ProviderConfig;

/// Which engine runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Pure Rust, builds anywhere: the default when no ONNX Runtime library is present.
    Tract,
    /// ONNX Runtime, loaded from a shared library at run time.
    Onnxruntime,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Onnxruntime => "onnxruntime",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tract" => Ok(BackendKind::Tract),
            "onnxruntime" | "ort" => Ok(BackendKind::Onnxruntime),
            other => Err(format!("unknown backend \"{other}\" (expected tract or onnxruntime)")),
        }
    }
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Compute threads; `None` lets the backend decide (one per core).
    pub threads: Option<usize>,
    /// ONNX Runtime execution providers in order of preference; CPU is always the last resort.
    pub providers: Vec<ProviderConfig>,
    /// tract: re-quantize float weights to Q4_0 at load (`block_quant`), its fastest path.
    pub tract_block_quant: bool,
    /// `libonnxruntime.so` to load (otherwise `ORT_DYLIB_PATH`, then a search).
    pub ort_library: Option<std::path::PathBuf>,
    /// Back the loaded weights with huge pages (`engine/hugepages.rs`); off by default, see
    /// `memory.huge_pages` in the configuration.
    pub huge_pages: bool,
    /// Copy what a backend keeps mapped of the model's files (`engine/file_maps.rs`); see
    /// `memory.private_model_files` in the configuration.
    pub private_files: bool,
    /// ONNX Runtime, shared-buffer graphs: concurrent sequences' one-token steps run as one
    /// forward pass (`onnxruntime/batch.rs`).
    pub batch_decode: bool,
    /// The most prompt tokens one forward pass feeds: a longer prompt is computed in chunks,
    /// so its transient memory is bounded and a run can be cancelled or yield between them.
    pub prefill_chunk: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: None,
            providers: vec![ProviderConfig::cpu()],
            tract_block_quant: false,
            ort_library: None,
            huge_pages: false,
            private_files: true,
            batch_decode: true,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }
}

/// Prompt tokens per forward pass unless configured (`scheduler.prefill_chunk`).
pub const DEFAULT_PREFILL_CHUNK: usize = 256;

/// What actually serves a loaded model.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Served {
    pub backend: BackendKind,
    /// Execution provider (ONNX Runtime) or runtime (tract) in use.
    pub provider: String,
    /// Providers that were tried first and failed, with the reason.
    pub skipped: Vec<(String, String)>,
    /// How the KV cache is kept between steps (see each backend's module doc).
    pub kv_cache: KvCache,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvCache {
    /// onnxruntime: one preallocated buffer per layer, bound as past and present.
    SharedBuffer,
    /// onnxruntime: present outputs moved into the next step's past inputs.
    Moved,
    /// tract: inside tract's stateful KV-cache ops.
    Stateful,
    /// tract: explicit past inputs and present outputs, fed back by the sequence.
    Explicit,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend} cannot run this model: {reason}")]
    Unsupported { backend: BackendKind, reason: String },
    #[error("{backend} failed to load the model: {reason}")]
    Load { backend: BackendKind, reason: String },
    #[error("{backend} failed during inference: {reason}")]
    Run { backend: BackendKind, reason: String },
    #[error("the ONNX Runtime library is not available: {0}")]
    RuntimeMissing(String),
    #[error("no tokens to feed")]
    NoTokens,
    #[error("sequence is full: {position} tokens + {adding} new exceed the context of {context}")]
    ContextFull { position: usize, adding: usize, context: usize },
    #[error("cannot roll a sequence of {position} tokens back to {to}")]
    BadTruncate { position: usize, to: usize },
}

/// A model loaded on a backend; shared by all its sequences.
pub trait LoadedModel: Send + Sync {
    fn served(&self) -> &Served;
    /// Starts a sequence with an empty KV cache.
    fn new_sequence(self: Arc<Self>) -> Result<Box<dyn Sequence>, BackendError>;
    /// What batched decoding has done (zero where the backend does not batch).
    fn batch_counters(&self) -> BatchCounters {
        Default::default()
    }
    /// One-token steps of several sequences of this model: each feeds its token and gets its
    /// logits, as [`Sequence::forward`] would, one result a step. Backends that batch run them
    /// as one forward pass (the weights read once for all); the others one after another.
    fn step_batch(&self, steps: &mut [BatchStep<'_>]) -> Vec<Result<(), BackendError>> {
        steps.iter_mut().map(|s| s.seq.forward(&[s.token], s.logits)).collect()
    }
}

/// A sequence's one-token step in [`LoadedModel::step_batch`].
pub struct BatchStep<'a> {
    pub seq: &'a mut dyn Sequence,
    pub token: u32,
    pub logits: &'a mut Vec<f32>,
}

/// One generation stream with its own KV cache.
pub trait Sequence: Send {
    /// Feeds `tokens` after those already fed and writes the logits of the last `rows` of them
    /// into `logits`, one row of the vocabulary's width after another (`1 <= rows <= tokens.len()`).
    fn forward_rows(&mut self, tokens: &[u32], rows: usize, logits: &mut Vec<f32>) -> Result<(), BackendError>;
    /// Feeds `tokens` after those already fed and writes the logits of the last one into `logits`.
    fn forward(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<(), BackendError> {
        self.forward_rows(tokens, 1, logits)
    }
    /// Forgets every token after the first `position` (at most [`Sequence::position`]): the
    /// next token fed goes at `position`. Backends that cannot roll back say `Unsupported`
    /// without changing anything.
    fn truncate(&mut self, position: usize) -> Result<(), BackendError>;
    /// Whether [`Sequence::truncate`] works on this sequence (asked after the first forward).
    fn can_truncate(&self) -> bool {
        true
    }
    /// Tokens fed so far.
    fn position(&self) -> usize;
    /// The sequence will not be fed for a while (a session between turns): it gives back what
    /// it shares with others (a batch row). The next forward takes it up again.
    fn park(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    /// The most positions this sequence will hold (its request's prompt and `max_tokens`,
    /// which its KV reservation counts): a backend that shares memory between sequences
    /// keeps each within it. Unset, the context.
    fn plan(&mut self, _positions: usize) {}
    /// For its backend's [`LoadedModel::step_batch`], which finds its own sequences.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// What batching has done on a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCounters {
    /// Forward passes run by the batcher.
    pub steps: u64,
    /// Rows those passes asked for (a pass of 3 sequences counts 3).
    pub rows: u64,
    /// Rows those passes fed a placeholder (their sequence had not asked for a step).
    pub placeholders: u64,
    /// Time spent running the passes.
    pub running: std::time::Duration,
}

/// Loads `dir` on the backend `kind`.
pub fn load(kind: BackendKind, dir: &ModelDir, opts: &LoadOptions) -> Result<Arc<dyn LoadedModel>, BackendError> {
    match kind {
        BackendKind::Tract => Ok(Arc::new(tract::TractModel::load(dir, opts)?)),
        BackendKind::Onnxruntime => Ok(Arc::new(onnxruntime::OrtModel::load(dir, opts)?)),
    }
}

/// Checks a forward call against the context before any compute.
pub(crate) fn check_room(position: usize, adding: usize, context: usize) -> Result<(), BackendError> {
    if adding == 0 {
        return Err(BackendError::NoTokens);
    }
    if position + adding > context {
        return Err(BackendError::ContextFull { position, adding, context });
    }
    Ok(())
}

/// Checks a `forward_rows` call's row count.
pub(crate) fn check_rows(backend: BackendKind, rows: usize, adding: usize) -> Result<(), BackendError> {
    if rows == 0 || rows > adding {
        return Err(BackendError::Run {
            backend,
            reason: format!("asked for the logits of {rows} of {adding} tokens"),
        });
    }
    Ok(())
}

/// Checks a `truncate` call.
pub(crate) fn check_truncate(position: usize, to: usize) -> Result<(), BackendError> {
    if to > position {
        return Err(BackendError::BadTruncate { position, to });
    }
    Ok(())
}

/// Copies the last `rows` rows of `vocab` values out of `all` into `logits`, as float32.
pub(crate) fn last_rows<T: Copy>(
    all: &[T],
    vocab: usize,
    rows: usize,
    logits: &mut Vec<f32>,
    to_f32: impl Fn(T) -> f32,
) -> Result<(), String> {
    if vocab == 0 || all.len() < rows * vocab || !all.len().is_multiple_of(vocab) {
        return Err(format!("logits of {} values do not hold {rows} rows of {vocab}", all.len()));
    }
    logits.clear();
    logits.extend(all[all.len() - rows * vocab..].iter().map(|&x| to_f32(x)));
    Ok(())
}
