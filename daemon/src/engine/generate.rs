//! The decoding loop: prompt → tokens → prefill → next tokens (one a step, or
//! more with speculation: `speculate.rs`), until EOS, a stop string,
//! `max_tokens`, the context's end, or cancellation. Text is streamed through a
//! callback as it becomes complete, through the text stages (`text.rs`: stop
//! strings). Each token is picked by `pick.rs`: a request's format (`grammar/`)
//! masks the logits before the sampler, and the run ends when the grammar does.
//!
//! Between steps a run may yield ([`Yield`]: the scheduler's background work
//! waiting for interactive work), its sequence parked meanwhile.
//!
//! A run can continue a [`Resumable`] sequence (a session's, a prompt cache's):
//! the longest common prefix of the ids it holds and the new prompt is kept, the
//! rest rolled back, and only the new tokens are fed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Model;
use super::backend::{BackendError, Sequence};
use super::chat::{self, ChatError, Message};
use super::grammar::{GrammarError, Grammars};
use super::pick::Picker;
use super::sampler::{InvalidOption, Sampler, SamplingParams};
use super::speculate::{Decoder, DraftStats, Lookup, Steps};
use super::text::TextOut;
use super::tokenizer::TokenizerError;
use super::tools::{self, Dialect, ToolCall, Tools};

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
    /// A run that gave its KV cache back while paused (preempted) found no room to go on.
    #[error("{0}")]
    NoRoom(String),
}

/// Lets other work go first between two steps of a run (the scheduler's priority classes).
pub trait Yield {
    /// Whether the run should stop for a while now; asked before every step and prefill
    /// chunk, so it is cheap.
    fn wanted(&self) -> bool;
    /// Returns when the run may go on. Its sequence was parked first (it holds no batch row);
    /// the yielder may drop it meanwhile to give its memory back (preemption): the run then
    /// computes it again from its token ids. An error ends the run.
    fn wait(&self, seq: &mut Option<Box<dyn Sequence>>) -> Result<(), GenerateError>;
}

/// Never yields.
impl Yield for () {
    fn wanted(&self) -> bool {
        false
    }
    fn wait(&self, _: &mut Option<Box<dyn Sequence>>) -> Result<(), GenerateError> {
        Ok(())
    }
}

/// A run's sequence, which a yield may take away to give its memory back (preemption): it
/// is then computed again from the ids that had been fed into it.
struct Held<'m> {
    model: &'m Model,
    seq: Option<Box<dyn Sequence>>,
    /// The most tokens one forward pass feeds (`LoadOptions::prefill_chunk`).
    chunk: usize,
}

impl Held<'_> {
    fn seq(&mut self) -> Result<&mut Box<dyn Sequence>, GenerateError> {
        self.seq.as_mut().ok_or(GenerateError::Backend(BackendError::NoTokens))
    }

    /// Yields to other work; `fed`: the ids the sequence holds (at least its position). False
    /// if the run was cancelled while its sequence was taken away.
    fn pause(
        &mut self,
        yielder: &dyn Yield,
        cancel: &AtomicBool,
        fed: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<bool, GenerateError> {
        let seq = self.seq()?;
        let position = seq.position();
        seq.park()?;
        yielder.wait(&mut self.seq)?;
        if self.seq.is_none() {
            if cancel.load(Ordering::Relaxed) {
                return Ok(false);
            }
            // Computed again: the logits after its last token are what they were (the next
            // step needs them when nothing is left unfed).
            let mut seq = self.model.backend.clone().new_sequence()?;
            for c in fed[..position].chunks(self.chunk) {
                seq.forward(c, logits)?;
            }
            self.seq = Some(seq);
        }
        Ok(true)
    }

    /// Feeds `tokens` after the `before` ids the sequence holds, in chunks (a long prompt's
    /// transient memory is a chunk's, not the whole prompt's), writing the last token's
    /// logits into `logits`. Between chunks the run may be cancelled (false: it stopped) or
    /// yield.
    fn prefill(
        &mut self,
        before: &[u32],
        tokens: &[u32],
        logits: &mut Vec<f32>,
        cancel: &AtomicBool,
        yielder: &dyn Yield,
    ) -> Result<bool, GenerateError> {
        let mut start = 0;
        while start < tokens.len() {
            if cancel.load(Ordering::Relaxed) {
                return Ok(false);
            }
            if start > 0
                && yielder.wanted()
                && !self.pause(yielder, cancel, &[before, &tokens[..start]].concat(), logits)?
            {
                return Ok(false);
            }
            let end = (start + self.chunk).min(tokens.len());
            self.seq()?.forward(&tokens[start..end], logits)?;
            start = end;
        }
        Ok(true)
    }
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

    /// Drops the KV cache (the next run computes its whole prompt).
    pub fn clear(&mut self) {
        self.seq = None;
        self.ids.clear();
    }

    /// The sequence to continue for `prompt` and how many of its first tokens it holds
    /// already: the common prefix, at most all but the last prompt token (whose logits the
    /// run needs), with what followed rolled back. A sequence that cannot roll back is
    /// replaced by a new one.
    fn take_for(&mut self, model: &Model, prompt: &[u32]) -> Result<(Box<dyn Sequence>, usize), BackendError> {
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
        self.run(&mut Resumable::default(), false, prompt, params, cancel, &(), on_text)
    }

    /// Runs one request, continuing `cache` (which holds the run's sequence afterwards, or
    /// nothing if it failed), and letting other work go first when `yielder` wants.
    pub fn generate_from(
        &self,
        cache: &mut Resumable,
        prompt: &Prompt,
        params: &SamplingParams,
        cancel: &AtomicBool,
        yielder: &dyn Yield,
        on_text: impl FnMut(&str),
    ) -> Result<Output, GenerateError> {
        self.run(cache, true, prompt, params, cancel, yielder, on_text)
    }

    /// The decoding loop; `keep`: the sequence is kept in `cache` afterwards (parked).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        cache: &mut Resumable,
        keep: bool,
        prompt: &Prompt,
        params: &SamplingParams,
        cancel: &AtomicBool,
        yielder: &dyn Yield,
        mut on_text: impl FnMut(&str),
    ) -> Result<Output, GenerateError> {
        params.validate()?;
        let prompt_ids = self.prompt_ids(prompt)?;
        // tools offered: the answer's grammar, call marker and parsing follow the template
        let offered = params.tools.as_ref().or(match prompt {
            Prompt::ChatTools(_, t) => Some(t),
            _ => None,
        });
        let dialect = match offered {
            Some(t) => {
                let d = Dialect::of(self.tokenizer()?.chat_template.as_deref());
                Some((d, tools::format_for(t, d)))
            }
            None => None,
        };
        let format = dialect.as_ref().map(|(_, f)| f).or(params.format.as_ref());
        let constraint = format.map(|f| self.grammars()?.constraint(f)).transpose()?;
        let started = Instant::now();
        let mut picker = Picker::new(Sampler::new(params), constraint);
        let context = self.dir.spec.context_length;
        let budget = (params.max_tokens as usize).min(context - prompt_ids.len());
        // what the grammar forces first is fed with the prompt (within the budget)
        let forced = picker.start()?;
        let (seq, cached) = cache.take_for(self, &prompt_ids)?;
        let mut held = Held { model: self, seq: Some(seq), chunk: self.prefill_chunk };
        let mut out = TextOut::new(self.tokenizer.as_ref(), &params.stop);
        if let Some((d, _)) = &dialect {
            let (marker, at_start) = d.trigger();
            out = out.hold_calls(marker, at_start);
        }
        let mut history = prompt_ids.clone();
        let mut logits = Vec::new();
        let mut generated = vec![];
        let mut finish = FinishReason::Length;
        let mut first_token_at = None;
        let feed = [&prompt_ids[cached..], &forced[..forced.len().min(budget)]].concat();
        let prefilled = held.prefill(&prompt_ids[..cached], &feed, &mut logits, cancel, yielder)?;
        let prompt_time = started.elapsed();
        let decoder = match params.prompt_lookup {
            n if n > 0 && held.seq()?.can_truncate() => Decoder::Lookup(Lookup::new(n as usize)),
            _ => Decoder::Plain,
        };
        let mut steps = Steps::new(decoder);
        let is_end = |id| !params.ignore_eos && self.eos_ids.contains(&id);
        history.extend_from_slice(&forced);
        let mut ids = forced;
        if !prefilled {
            // cancelled before the prompt was computed: nothing is generated
            finish = FinishReason::Cancelled;
            ids = vec![];
        }
        'decode: loop {
            if finish == FinishReason::Cancelled {
                break;
            }
            for id in ids {
                if is_end(id) {
                    finish = FinishReason::Eos;
                    break 'decode;
                }
                if generated.len() == budget {
                    break 'decode;
                }
                generated.push(id);
                if out.push(id, &mut on_text)? {
                    finish = FinishReason::Stop;
                    break 'decode;
                }
            }
            if picker.done() {
                finish = FinishReason::Eos;
                break;
            }
            if generated.len() >= budget {
                break;
            }
            if yielder.wanted() && !held.pause(yielder, cancel, &history, &mut logits)? {
                finish = FinishReason::Cancelled;
                break;
            }
            if cancel.load(Ordering::Relaxed) {
                finish = FinishReason::Cancelled;
                break;
            }
            let seq = held.seq()?;
            ids = steps.next(&mut **seq, &mut picker, &mut logits, &mut history, budget - generated.len(), is_end)?;
            first_token_at.get_or_insert_with(|| started.elapsed());
        }
        let mut text = out.finish(&mut on_text)?;
        let mut tool_calls = vec![];
        if let Some((d, _)) = &dialect
            && finish == FinishReason::Eos
        {
            (text, tool_calls) = d.parse(&text);
            if !tool_calls.is_empty() {
                finish = FinishReason::ToolCalls;
            }
            for c in &mut tool_calls {
                c.id = format!("call_{:016x}", rand::random::<u64>());
            }
        }
        if keep {
            *cache = match held.seq.take() {
                Some(mut seq) => {
                    history.truncate(seq.position());
                    seq.park()?;
                    Resumable { seq: Some(seq), ids: history }
                }
                None => Resumable::default(),
            };
        }
        let first = first_token_at.unwrap_or_else(|| started.elapsed());
        Ok(Output {
            text,
            tokens: generated.clone(),
            tool_calls,
            stats: Stats {
                prompt_tokens: prompt_ids.len(),
                generated_tokens: generated.len(),
                time_to_first_token: first,
                prompt_time,
                decode_time: started.elapsed().saturating_sub(first),
                finish,
                seed: picker.sampler.seed,
                draft: steps.stats,
                cached_prompt_tokens: cached,
                forced_tokens: picker.forced.min(generated.len()),
                pick_time: picker.time,
            },
        })
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
