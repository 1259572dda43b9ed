//! Text ↔ token ids with a model's `tokenizer.json` (Hugging Face
//! `tokenizers`, loaded from the file only) plus what `tokenizer_config.json`
//! says about special tokens and the chat template.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use llamad_formats::tokenizer::{MAX_TOKENIZER, MAX_TOKENIZER_CONFIG};
use serde_json::Value;

use super::model_dir::ModelDir;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{0}: the model directory has no tokenizer.json")]
    Missing(String),
    #[error("{file}: {reason}")]
    Bad { file: String, reason: String },
    #[error("the tokenizer has {tokenizer} ids but the model's vocabulary has {model}: they do not belong together")]
    VocabMismatch { tokenizer: usize, model: usize },
    #[error("tokenizer: {0}")]
    Codec(String),
}

/// Cheap to clone: the vocabulary is shared; a stream's detokenizer keeps a clone.
#[derive(Clone)]
pub struct Tokenizer {
    /// Shared with the grammar engine's tokenizer environment (`grammar/env.rs`).
    inner: Arc<tokenizers::Tokenizer>,
    /// The `tokenizer.json` it was read from.
    pub file: PathBuf,
    /// Text of the BOS/EOS tokens, for chat templates.
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Template from `tokenizer_config.json` or `chat_template.jinja`.
    pub chat_template: Option<String>,
    /// Whether encoding a prompt prepends BOS (`add_bos_token`, else the tokenizer's post-processor).
    pub add_bos: Option<bool>,
    /// Bytes of the longest token's text (as the vocabulary spells it, which is never shorter
    /// than the text it stands for): a text of more than `n` times this has more than `n` tokens.
    pub longest_token: usize,
}

/// A special token in `tokenizer_config.json` is a string or `{ "content": ... }`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads the tokenizer of `dir` and checks it fits the model's vocabulary.
    pub fn for_model(dir: &ModelDir) -> Result<Tokenizer, TokenizerError> {
        let file = dir.tokenizer.as_ref().ok_or_else(|| TokenizerError::Missing(dir.path.display().to_string()))?;
        let tok = Self::from_files(file, dir.tokenizer_config.as_deref(), dir.chat_template_file.as_deref())?;
        // Exporters pad the embedding to a multiple of 8 or 64, so the model may be larger;
        // a tokenizer producing ids the model does not have is the real mismatch.
        let n = tok.vocab_size();
        if n > dir.spec.vocab_size || n + 1024 < dir.spec.vocab_size {
            return Err(TokenizerError::VocabMismatch { tokenizer: n, model: dir.spec.vocab_size });
        }
        Ok(tok)
    }

    pub fn from_files(
        file: &Path,
        config: Option<&Path>,
        template_file: Option<&Path>,
    ) -> Result<Tokenizer, TokenizerError> {
        let bad = |f: &Path, reason: String| TokenizerError::Bad { file: f.display().to_string(), reason };
        let read = |f: &Path, max: u64| super::model_dir::read_bounded(f, max).map_err(|e| bad(f, e));
        let inner =
            llamad_formats::tokenizer::parse(read(file, MAX_TOKENIZER)?.as_bytes()).map_err(|e| bad(file, e))?;
        let longest_token = inner.get_vocab(true).keys().map(String::len).max().unwrap_or(1).max(1);
        let mut tok = Tokenizer {
            longest_token,
            inner: Arc::new(inner),
            file: file.to_path_buf(),
            bos_token: None,
            eos_token: None,
            chat_template: None,
            add_bos: None,
        };
        if let Some(cfg) = config {
            let text = read(cfg, MAX_TOKENIZER_CONFIG)?;
            let v: Value = serde_json::from_str(&text).map_err(|e| bad(cfg, e.to_string()))?;
            tok.bos_token = token_text(v.get("bos_token"));
            tok.eos_token = token_text(v.get("eos_token"));
            tok.add_bos = v.get("add_bos_token").and_then(Value::as_bool);
            tok.chat_template = match v.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
                _ => None,
            };
        }
        if tok.chat_template.is_none()
            && let Some(f) = template_file
        {
            tok.chat_template = Some(read(f, MAX_TOKENIZER_CONFIG)?);
        }
        Ok(tok)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes `text`; `special` adds what the tokenizer's post-processor adds (BOS for Llama 2).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, TokenizerError> {
        llamad_formats::tokenizer::encode(&self.inner, text, special).map_err(TokenizerError::Codec)
    }

    /// Decodes ids, leaving special tokens out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        llamad_formats::tokenizer::decode(&self.inner, ids, true).map_err(TokenizerError::Codec)
    }

    /// The Hugging Face tokenizer itself, for users that outlive a borrow (the grammar engine).
    pub fn shared(&self) -> Arc<tokenizers::Tokenizer> {
        self.inner.clone()
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }
}
