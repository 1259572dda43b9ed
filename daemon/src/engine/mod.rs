//! The inference core: model directories, backends, tokenizer, chat
//! templates, structured output, sampling, streaming detokenization and the
//! decoding loop.
//! Everything the daemon serves goes through [`Model`].

pub mod backend;
pub mod chat;
pub mod detok;
pub mod file_maps;
pub mod generate;
pub mod grammar;
pub mod hugepages;
pub mod model_dir;
pub mod onnx_graph;
pub mod pick;
pub mod run;
pub mod sampler;
pub mod speculate;
pub mod text;
pub mod tokenizer;
pub mod tools;

use std::path::Path;
use std::sync::{Arc, OnceLock};

pub use backend::{BackendError, BackendKind, LoadOptions, LoadedModel, Served};
pub use generate::{FinishReason, GenerateError, Output, Prompt, Resumable, Stats};
pub use grammar::{Format, GrammarError};
pub use model_dir::{Layout, LayoutError, ModelDir, Quantization};
pub use run::Run;
pub use sampler::SamplingParams;
pub use tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A loaded model: its directory, the backend running it and its tokenizer.
/// Read-only and shareable; each request opens its own sequence.
pub struct Model {
    pub dir: ModelDir,
    pub backend: Arc<dyn LoadedModel>,
    /// None for token-id-only models (no `tokenizer.json`).
    pub tokenizer: Option<Tokenizer>,
    /// Ids that end generation: the configs' EOS ids and the tokenizer's EOS token.
    pub eos_ids: Vec<u32>,
    /// Structured output's engine, built when a request first asks for a format.
    grammars: OnceLock<Result<grammar::Grammars, GrammarError>>,
    /// The most prompt tokens one forward pass feeds (`LoadOptions::prefill_chunk`).
    pub prefill_chunk: usize,
}

impl Model {
    /// Opens `path` and loads it on `kind`. A model without `tokenizer.json`
    /// loads only when `require_tokenizer` is false (token-id use).
    pub fn load(
        path: &Path,
        kind: BackendKind,
        opts: &LoadOptions,
        require_tokenizer: bool,
    ) -> Result<Model, LoadError> {
        Model::from_dir(ModelDir::open(path)?, kind, opts, require_tokenizer)
    }

    /// Loads an already opened directory.
    pub fn from_dir(
        dir: ModelDir,
        kind: BackendKind,
        opts: &LoadOptions,
        require_tokenizer: bool,
    ) -> Result<Model, LoadError> {
        let tokenizer = match Tokenizer::for_model(&dir) {
            Ok(t) => Some(t),
            Err(TokenizerError::Missing(_)) if !require_tokenizer => None,
            Err(e) => return Err(e.into()),
        };
        // Loads in this process take turns (the daemon's already do): `file_maps` replaces
        // the mappings of the model's files, which must not be those of another load still
        // in progress. A backend maps files while it loads and unmaps them when done; copying
        // a range that another thread was unmapping crashed (two tests loading one fixture).
        static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let loading = LOADING.lock().unwrap_or_else(|e| e.into_inner());
        let backend = backend::load(kind, &dir, opts)?;
        // Before huge pages: the copies are anonymous memory, which they may then back.
        if opts.private_files {
            let started = std::time::Instant::now();
            let p = file_maps::make_private(&dir.path);
            if p.mappings + p.shared + p.failed > 0 {
                tracing::debug!(model = %dir.name(), mappings = p.mappings, mib = p.bytes >> 20,
                    ms = started.elapsed().as_millis() as u64, "model files' mappings made private");
            }
            if p.shared + p.failed > 0 {
                tracing::warn!(model = %dir.name(), shared = p.shared, failed = p.failed,
                    "mappings of the model's files left as they are: changing the files while it is loaded may crash the daemon");
            }
        }
        drop(loading);
        if opts.huge_pages {
            let h = hugepages::collapse_weights();
            tracing::debug!(model = %dir.name(), mappings = h.mappings, advised_mib = h.bytes >> 20,
                collapsed_mib = h.collapsed >> 20, "huge pages");
        }
        let mut eos_ids = dir.spec.eos_ids.clone();
        if let Some(id) =
            tokenizer.as_ref().and_then(|t| t.eos_token.as_deref()).and_then(|e| tokenizer.as_ref()?.token_id(e))
            && !eos_ids.contains(&id)
        {
            eos_ids.push(id);
        }
        Ok(Model {
            dir,
            backend,
            tokenizer,
            eos_ids,
            grammars: OnceLock::new(),
            prefill_chunk: opts.prefill_chunk.max(1),
        })
    }

    pub fn served(&self) -> &Served {
        self.backend.served()
    }
}
