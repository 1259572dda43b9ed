//! A request's types (prompt, output, stats, errors), its prompt's checks and
//! tokenizing, and the one-request driver [`Model::generate`]: a [`Run`]
//! (`run.rs`: prefill in chunks, then decoding steps, one a step or more with
//! speculation: `speculate.rs`) stepped to its end on the calling thread. Text
//! is streamed through a callback as it becomes complete, through the text
//! stages (`text.rs`: stop strings). Each token is picked by `pick.rs`: a
//! request's format (`grammar/`) masks the logits before the sampler, and the
//! run ends when the grammar does.
//!
//! A run can continue a [`Resumable`] sequence (a session's, a prompt cache's):
//! the longest common prefix of the ids it holds and the new prompt is kept, the
//! rest rolled back, and only the new tokens are fed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::Model;
use super::backend::{BackendError, Sequence};
use super::chat::{self, ChatError, Message};
use super::grammar::{GrammarError, Grammars};
use super::run::Run;
use super::sampler::{InvalidOption, SamplingParams};
use super::speculate::DraftStats;
use super::tokenizer::TokenizerError;
use super::tools::{ToolCall, Tools};

/// What to continue from.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Raw text, tokenized as the tokenizer does by default (BOS for Llama 2).
    Text(String),
    /// Messages, through the model's chat template.
    Chat(Vec<Message>),
    /// Messages offering tools: the answer is text or calls (`Output::tool_calls`).
    ChatTools(Vec<Message>, Tools),
    /// Token ids as they are.
    Tokens(Vec<u32>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Eos,
    Length,
    Stop,
    Cancelled,
    /// The answer is tool calls.
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::Cancelled => "cancelled",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub time_to_first_token: Duration,
    pub prompt_time: Duration,
    pub decode_time: Duration,
    pub finish: FinishReason,
    pub seed: u64,
    /// Prompt lookup: draft tokens verified and kept (zero without it).
    pub draft: DraftStats,
    /// Prompt tokens whose KV cache was already held (a resumed sequence): not computed.
    pub cached_prompt_tokens: usize,
    /// Generated tokens a format's grammar forced: fed without sampling (in `generated_tokens`).
    pub forced_tokens: usize,
    /// Time spent picking tokens (a format's mask, sampling) in all; the rest is the model.
    pub pick_time: Duration,
}

impl Stats {
    /// Prompt tokens computed (not cached), over the time they took.
    pub fn prompt_tokens_per_s(&self) -> f64 {
        (self.prompt_tokens - self.cached_prompt_tokens) as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }
    /// Tokens after the first, over the time after the first.
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug)]
pub struct Output {
    /// The text: with tool calls, what came before them.
    pub text: String,
    pub tokens: Vec<u32>,
    /// With tools offered: the calls the answer made (ids left for the caller to give).
    pub tool_calls: Vec<ToolCall>,
    pub stats: Stats,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt_tokens} tokens but the model's context holds {context}")]
    ContextOverflow { prompt_tokens: usize, context: usize },
    #[error(
        "the prompt's text has {bytes} bytes: more than the model's context of {context} tokens can hold \
         ({limit} bytes: {context} tokens of at most {longest} bytes each); it was not tokenized"
    )]
    PromptTooLong { bytes: usize, limit: usize, context: usize, longest: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error(transparent)]
    InvalidOption(#[from] InvalidOption),
    #[error("this model has no tokenizer.json, so it only takes and gives token ids")]
    NoTokenizer,
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Grammar(#[from] GrammarError),
}

/// A sequence kept between runs, with the exact token ids fed into it (its KV cache holds
/// them, in order). Empty: nothing is held, the next run starts a new sequence.
#[derive(Default)]
pub struct Resumable {
    seq: Option<Box<dyn Sequence>>,
    ids: Vec<u32>,
}

impl Resumable {
    /// Token ids whose KV cache is held.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Holds `ids` without a sequence: a run continues nothing (its whole prompt is computed),
    /// but the ids are what a cache matches prompts against.
    pub fn detached(ids: Vec<u32>) -> Resumable {
        Resumable { seq: None, ids }
    }

    /// Holds `seq`, into which exactly `ids` were fed.
    pub(super) fn holding(seq: Box<dyn Sequence>, ids: Vec<u32>) -> Resumable {
        Resumable { seq: Some(seq), ids }
    }

    /// Drops the KV cache (the next run computes its whole prompt).
    pub fn clear(&mut self) {
        self.seq = None;
        self.ids.clear();
    }

    /// The sequence to continue for `prompt` and how many of its first tokens it holds
    /// already: the common prefix, at most all but the last prompt token (whose logits the
    /// run needs), with what followed rolled back. A sequence that cannot roll back is
    /// replaced by a new one.
    pub(super) fn take_for(
        &mut self,
        model: &Model,
        prompt: &[u32],
    ) -> Result<(Box<dyn Sequence>, usize), BackendError> {
        let held = std::mem::take(&mut self.ids);
        if let Some(mut seq) = self.seq.take() {
            let common = common_prefix(&held, prompt).min(prompt.len() - 1);
            if common == seq.position() || seq.can_truncate() {
                seq.truncate(common)?;
                return Ok((seq, common));
            }
        }
        Ok((model.backend.clone().new_sequence()?, 0))
    }
}

/// Longest common prefix of two token sequences.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Prompt {
    /// Bytes of text the prompt's tokens are made of (a chat template only adds to them).
    pub fn text_bytes(&self) -> usize {
        let messages = |m: &[Message]| -> usize {
            m.iter()
                .map(|m| {
                    m.content.len()
                        + m.name.as_ref().map_or(0, String::len)
                        + m.tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>()
                })
                .sum()
        };
        match self {
            Prompt::Text(t) => t.len(),
            Prompt::Chat(m) | Prompt::ChatTools(m, _) => messages(m),
            Prompt::Tokens(_) => 0,
        }
    }
}

impl Model {
    /// The most bytes of text a prompt can have and still fit the context: checked before
    /// anything tokenizes it, so a huge prompt costs nothing but its own bytes.
    pub fn max_prompt_bytes(&self) -> usize {
        let longest = self.tokenizer.as_ref().map_or(1, |t| t.longest_token);
        self.dir.spec.context_length.saturating_mul(longest)
    }

    /// Refuses a prompt whose text alone is longer than any prompt that fits the context.
    pub fn check_prompt_size(&self, prompt: &Prompt) -> Result<(), GenerateError> {
        let (bytes, limit) = (prompt.text_bytes(), self.max_prompt_bytes());
        if bytes > limit {
            let longest = self.tokenizer.as_ref().map_or(1, |t| t.longest_token);
            return Err(GenerateError::PromptTooLong { bytes, limit, context: self.dir.spec.context_length, longest });
        }
        Ok(())
    }

    /// Tokenizes a prompt and checks it against the vocabulary and the context.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, GenerateError> {
        self.check_prompt_size(prompt)?;
        let ids = match prompt {
            Prompt::Text(t) if t.is_empty() => return Err(GenerateError::EmptyPrompt),
            Prompt::Text(t) => self.tokenizer()?.encode(t, true)?,
            Prompt::Chat(m) => chat::prompt_ids(self.tokenizer()?, m, None)?,
            Prompt::ChatTools(m, tools) => chat::prompt_ids(self.tokenizer()?, m, Some(tools))?,
            Prompt::Tokens(ids) => ids.clone(),
        };
        if ids.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let vocab = self.dir.spec.vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::BadToken { id, vocab });
        }
        let context = self.dir.spec.context_length;
        if ids.len() >= context {
            return Err(GenerateError::ContextOverflow { prompt_tokens: ids.len(), context });
        }
        Ok(ids)
    }

    fn tokenizer(&self) -> Result<&super::Tokenizer, GenerateError> {
        self.tokenizer.as_ref().ok_or(GenerateError::NoTokenizer)
    }

    /// Runs one request. `on_text` gets each completed piece of text; `cancel` is checked every token.
    pub fn generate(
        &self,
        prompt: &Prompt,
        params: &SamplingParams,
        cancel: &AtomicBool,
        on_text: impl FnMut(&str),
    ) -> Result<Output, GenerateError> {
        self.run(&mut Resumable::default(), false, prompt, params, cancel, on_text)
    }

    /// Runs one request, continuing `cache` (which holds the run's sequence afterwards, or
    /// nothing if it failed).
    pub fn generate_from(
        &self,
        cache: &mut Resumable,
        prompt: &Prompt,
        params: &SamplingParams,
        cancel: &AtomicBool,
        on_text: impl FnMut(&str),
    ) -> Result<Output, GenerateError> {
        self.run(cache, true, prompt, params, cancel, on_text)
    }

    /// Drives a [`Run`] to its end on this thread; `keep`: the sequence is kept in `cache`
    /// afterwards (parked).
    fn run(
        &self,
        cache: &mut Resumable,
        keep: bool,
        prompt: &Prompt,
        params: &SamplingParams,
        cancel: &AtomicBool,
        mut on_text: impl FnMut(&str),
    ) -> Result<Output, GenerateError> {
        let mut run = Run::start(self, cache, prompt, params)?;
        while !run.done() {
            if cancel.load(Ordering::Relaxed) {
                run.cancel();
                break;
            }
            if run.needs_prefill() {
                run.prefill_chunk()?;
            } else {
                run.step()?;
            }
            let text = run.take_text();
            if !text.is_empty() {
                on_text(&text);
            }
        }
        let out = run.finish(keep.then_some(cache))?;
        let text = run.take_text();
        if !text.is_empty() {
            on_text(&text);
        }
        Ok(out)
    }

    /// The model's grammar engine, built on first use.
    pub fn grammars(&self) -> Result<&Grammars, GrammarError> {
        self.grammars
            .get_or_init(|| {
                let tokenizer = self.tokenizer.as_ref().ok_or_else(|| {
                    GrammarError::Tokenizer("the model has no tokenizer.json: formats need one".into())
                })?;
                Grammars::new(tokenizer, self.dir.spec.vocab_size, &self.eos_ids)
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}
