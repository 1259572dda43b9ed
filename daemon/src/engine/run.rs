//! One request's decoding as a state machine that its driver steps: prefill in
//! chunks, then decoding steps, until EOS, a stop string, `max_tokens`, the
//! context's end, the grammar's end, or cancellation.
//!
//! Two drivers: [`Model::generate`](super::Model::generate) runs one request to
//! its end on the calling thread; the scheduler's engine loop
//! (`scheduler/engine_loop.rs`) steps many requests of one model together, one
//! prefill chunk and one batched decoding step a tick, through the split step
//! ([`Run::begin_step`], the driver feeds the token, [`Run::end_step`]).
//!
//! A run's sequence can be taken away between two steps to give its memory back
//! ([`Run::preempt`]): the run then computes it again from the token ids it had
//! fed (its next prefill chunks), and goes on with the same output.
//!
//! Text becomes final token by token (`text.rs`: stop strings, the tool-call
//! hold); the driver takes it with [`Run::take_text`] after each step.

use std::time::{Duration, Instant};

use super::Model;
use super::backend::{BackendError, BatchStep, LoadedModel, Sequence};
use super::generate::{FinishReason, GenerateError, Output, Prompt, Resumable, Stats};
use super::pick::Picker;
use super::sampler::{Sampler, SamplingParams};
use super::speculate::{AUTO_MIN_PROMPT, Begun, Decoder, Lookup, Steps};
use super::text::TextOut;
use super::tools::{self, Dialect};
use std::sync::Arc;

/// Whether a token ends generation: one of `eos`, unless the request ignores them.
fn ends(eos: &[u32], ignore: bool) -> impl Fn(u32) -> bool + Copy + '_ {
    move |id| !ignore && eos.contains(&id)
}

/// A request being decoded; see the module doc.
pub struct Run {
    backend: Arc<dyn LoadedModel>,
    /// None while preempted (and before the first chunk of a run that continues nothing).
    seq: Option<Box<dyn Sequence>>,
    /// Prompt ids, then what was generated: the sequence holds a prefix of it.
    history: Vec<u32>,
    /// Positions the sequence must hold before decoding goes on: the prompt and what the
    /// grammar forced first; after a preemption, what it held then.
    target: usize,
    chunk: usize,
    prompt_tokens: usize,
    cached: usize,
    /// The most tokens it may generate.
    budget: usize,
    eos_ids: Vec<u32>,
    ignore_eos: bool,
    lookup: Option<u32>,
    /// Stepped together with other runs this step (automatic lookup then waits: batching
    /// pays more, and a run that verified drafts leaves the batch).
    crowded: bool,
    dialect: Option<Dialect>,
    picker: Picker,
    out: Option<TextOut>,
    /// The tokens the grammar forced first: the first generated tokens (fed with the prompt
    /// up to the budget; a run whose budget ends inside them ends with `length`).
    forced: Vec<u32>,
    steps: Option<Steps>,
    logits: Vec<f32>,
    generated: Vec<u32>,
    finish: Option<FinishReason>,
    /// Text that became final and was not taken yet.
    text: String,
    started: Instant,
    prompt_time: Option<Duration>,
    first_token_at: Option<Duration>,
}

impl Run {
    /// Starts a request on `model`, continuing `cache`'s sequence where it holds a prefix of
    /// the prompt (see [`Resumable`]): checks the options and the prompt, builds its format's
    /// constraint. Nothing is computed yet.
    pub fn start(
        model: &Model,
        cache: &mut Resumable,
        prompt: &Prompt,
        params: &SamplingParams,
    ) -> Result<Run, GenerateError> {
        params.validate()?;
        let prompt_ids = model.prompt_ids(prompt)?;
        // tools offered: the answer's grammar, call marker and parsing follow the template
        let offered = params.tools.as_ref().or(match prompt {
            Prompt::ChatTools(_, t) => Some(t),
            _ => None,
        });
        let dialect = match offered {
            Some(t) => {
                let template = model.tokenizer.as_ref().ok_or(GenerateError::NoTokenizer)?.chat_template.as_deref();
                let d = Dialect::of(template);
                Some((d, tools::format_for(t, d)))
            }
            None => None,
        };
        let format = dialect.as_ref().map(|(_, f)| f).or(params.format.as_ref());
        let constraint = format.map(|f| model.grammars()?.constraint(f)).transpose()?;
        let started = Instant::now();
        let mut picker = Picker::new(Sampler::new(params), constraint);
        let context = model.dir.spec.context_length;
        let budget = (params.max_tokens as usize).min(context - prompt_ids.len());
        // what the grammar forces first is fed with the prompt (within the budget)
        let forced = picker.start()?;
        let (mut seq, cached) = cache.take_for(model, &prompt_ids)?;
        seq.plan(prompt_ids.len() + budget);
        let mut out = TextOut::new(model.tokenizer.as_ref(), &params.stop);
        if let Some((d, _)) = &dialect {
            let (marker, at_start) = d.trigger();
            out = out.hold_calls(marker, at_start);
        }
        let prompt_tokens = prompt_ids.len();
        let mut history = prompt_ids;
        history.extend_from_slice(&forced[..forced.len().min(budget)]);
        Ok(Run {
            backend: model.backend.clone(),
            seq: Some(seq),
            target: history.len(),
            history,
            chunk: model.prefill_chunk,
            prompt_tokens,
            cached,
            budget,
            eos_ids: model.eos_ids.clone(),
            ignore_eos: params.ignore_eos,
            lookup: params.prompt_lookup,
            crowded: false,
            dialect: dialect.map(|(d, _)| d),
            picker,
            out: Some(out),
            forced,
            steps: None,
            logits: vec![],
            generated: vec![],
            finish: None,
            text: String::new(),
            started,
            prompt_time: None,
            first_token_at: None,
        })
    }

    /// It ended (or was cancelled): [`Run::finish`] gives its output.
    pub fn done(&self) -> bool {
        self.finish.is_some()
    }

    /// Its next work is a prefill chunk (the prompt's, or recomputing after a preemption).
    pub fn needs_prefill(&self) -> bool {
        !self.done() && self.seq.as_ref().is_none_or(|s| s.position() < self.target)
    }

    /// Prompt tokens not computed yet (what its prefill still costs).
    pub fn prefill_left(&self) -> usize {
        self.target - self.seq.as_ref().map_or(0, |s| s.position())
    }

    /// Ends the run as cancelled before its next step.
    pub fn cancel(&mut self) {
        self.finish.get_or_insert(FinishReason::Cancelled);
    }

    /// Gives the sequence's memory back: it is computed again from its ids before the next
    /// step. False if it held none.
    pub fn preempt(&mut self) -> bool {
        match self.seq.take() {
            Some(seq) => {
                self.target = self.target.max(seq.position());
                true
            }
            None => false,
        }
    }

    /// Whether it holds a sequence (its KV cache) now.
    pub fn holds_sequence(&self) -> bool {
        self.seq.is_some()
    }

    /// Text that became final since the last call.
    pub fn take_text(&mut self) -> String {
        std::mem::take(&mut self.text)
    }

    fn is_end(&self, id: u32) -> bool {
        ends(&self.eos_ids, self.ignore_eos)(id)
    }

    /// Computes the next chunk of what the sequence must hold (at most `prefill_chunk`
    /// tokens), starting a sequence if it has none.
    pub fn prefill_chunk(&mut self) -> Result<(), GenerateError> {
        if self.seq.is_none() {
            let mut seq = self.backend.clone().new_sequence()?;
            seq.plan(self.prompt_tokens + self.budget);
            self.seq = Some(seq);
        }
        let seq = self.seq.as_mut().ok_or(BackendError::NoTokens)?;
        let from = seq.position();
        let to = (from + self.chunk).min(self.target);
        seq.forward(&self.history[from..to], &mut self.logits)?;
        if to == self.target && self.steps.is_none() {
            self.prompt_time = Some(self.started.elapsed());
            let decoder = match self.lookup {
                _ if !seq.can_truncate() => Decoder::Plain,
                Some(0) => Decoder::Plain,
                Some(n) => Decoder::Lookup(Lookup::new(n as usize)),
                None if self.prompt_tokens >= AUTO_MIN_PROMPT => Decoder::Lookup(Lookup::auto(self.prompt_tokens)),
                None => Decoder::Plain,
            };
            self.steps = Some(Steps::new(decoder));
            // the forced tokens are the first generated ones
            let forced = std::mem::take(&mut self.forced);
            self.accept(forced)?;
            self.check_after_step();
        }
        Ok(())
    }

    /// The first half of a decoding step: `Some(token)` when the step is one token to feed
    /// (the driver feeds it into [`Run::sequence`], batched with other runs' where it can,
    /// and calls [`Run::end_step`]); `None` when the step was complete here.
    pub fn begin_step(&mut self) -> Result<Option<u32>, GenerateError> {
        if self.done() || self.needs_prefill() {
            return Ok(None);
        }
        let left = self.budget - self.generated.len();
        let is_end = ends(&self.eos_ids, self.ignore_eos);
        let (Some(steps), Some(seq)) = (self.steps.as_mut(), self.seq.as_mut()) else {
            return Err(BackendError::NoTokens.into());
        };
        let crowded = std::mem::take(&mut self.crowded);
        let ids = match steps.begin(&mut **seq, &mut self.picker, &mut self.history, left, crowded, is_end)? {
            Begun::Feed(tokens) if tokens.len() == 1 => return Ok(Some(tokens[0])),
            Begun::Feed(tokens) => {
                seq.forward(&tokens, &mut self.logits)?;
                steps.pick(&mut self.picker, &mut self.logits, &mut self.history, is_end)?
            }
            Begun::Ready => steps.pick(&mut self.picker, &mut self.logits, &mut self.history, is_end)?,
            Begun::Picked(ids) => ids,
        };
        self.accept(ids)?;
        self.stepped();
        Ok(None)
    }

    /// The sequence and logits buffer the token of [`Run::begin_step`] is fed into.
    pub fn sequence(&mut self) -> Option<(&mut dyn Sequence, &mut Vec<f32>)> {
        let seq = self.seq.as_mut()?;
        Some((&mut **seq, &mut self.logits))
    }

    /// The second half of a step whose token was fed: picks from its logits.
    pub fn end_step(&mut self) -> Result<(), GenerateError> {
        let is_end = ends(&self.eos_ids, self.ignore_eos);
        let steps = self.steps.as_mut().ok_or(BackendError::NoTokens)?;
        let ids = steps.pick(&mut self.picker, &mut self.logits, &mut self.history, is_end)?;
        self.accept(ids)?;
        self.stepped();
        Ok(())
    }

    /// Runs a whole step on this thread ([`Run::begin_step`], the feed, [`Run::end_step`]).
    pub fn step(&mut self) -> Result<(), GenerateError> {
        if let Some(token) = self.begin_step()? {
            let (seq, logits) = self.sequence().ok_or(BackendError::NoTokens)?;
            seq.forward(&[token], logits)?;
            self.end_step()?;
        }
        Ok(())
    }

    /// One decoding step of each of `runs` (runs of one model, none needing a prefill chunk),
    /// their one-token feeds as one batched forward pass ([`LoadedModel::step_batch`]): one
    /// result a run.
    pub fn step_together(runs: &mut [&mut Run]) -> Vec<Result<(), GenerateError>> {
        let mut results = Vec::with_capacity(runs.len());
        let mut feeds = vec![];
        let crowded = runs.len() > 1;
        for (i, run) in runs.iter_mut().enumerate() {
            run.crowded = crowded;
            results.push(match run.begin_step() {
                Ok(Some(token)) if run.seq.is_some() => {
                    feeds.push((i, token));
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            });
        }
        let Some(&(first, _)) = feeds.first() else { return results };
        let backend = runs[first].backend.clone();
        let mut steps = Vec::with_capacity(feeds.len());
        for (i, run) in runs.iter_mut().enumerate() {
            if let Some(&(_, token)) = feeds.iter().find(|f| f.0 == i)
                && let Some((seq, logits)) = run.sequence()
            {
                steps.push(BatchStep { seq, token, logits });
            }
        }
        let stepped = backend.step_batch(&mut steps);
        drop(steps);
        for (&(i, _), r) in feeds.iter().zip(stepped) {
            results[i] = r.map_err(GenerateError::from).and_then(|()| runs[i].end_step());
        }
        results
    }

    /// Takes a step's tokens into the output, in order, up to an end.
    fn accept(&mut self, ids: Vec<u32>) -> Result<(), GenerateError> {
        for id in ids {
            if self.is_end(id) {
                self.finish = Some(FinishReason::Eos);
                return Ok(());
            }
            if self.generated.len() == self.budget {
                self.finish = Some(FinishReason::Length);
                return Ok(());
            }
            self.generated.push(id);
            let Run { out, text, .. } = self;
            let out = out.as_mut().ok_or(BackendError::NoTokens)?;
            if out.push(id, &mut |t: &str| text.push_str(t))? {
                self.finish = Some(FinishReason::Stop);
                return Ok(());
            }
        }
        Ok(())
    }

    /// After a decoding step: the first token's time, and the end when its grammar or its
    /// budget says so.
    fn stepped(&mut self) {
        self.first_token_at.get_or_insert_with(|| self.started.elapsed());
        self.check_after_step();
    }

    /// Ends the run when its grammar or its budget does.
    fn check_after_step(&mut self) {
        if self.finish.is_some() {
            return;
        }
        if self.picker.done() {
            self.finish = Some(FinishReason::Eos);
        } else if self.generated.len() >= self.budget {
            self.finish = Some(FinishReason::Length);
        }
    }

    /// The output (its last text is then in [`Run::take_text`]). With `cache`, the sequence
    /// is kept there (parked) for a later run to continue.
    pub fn finish(&mut self, cache: Option<&mut Resumable>) -> Result<Output, GenerateError> {
        let mut finish = self.finish.unwrap_or(FinishReason::Length);
        let Run { out, text, .. } = self;
        let out = out.take().ok_or(BackendError::NoTokens)?;
        let mut full = out.finish(&mut |t: &str| text.push_str(t))?;
        let mut tool_calls = vec![];
        if let Some(d) = &self.dialect
            && finish == FinishReason::Eos
        {
            (full, tool_calls) = d.parse(&full);
            if !tool_calls.is_empty() {
                finish = FinishReason::ToolCalls;
            }
            for c in &mut tool_calls {
                c.id = format!("call_{:016x}", rand::random::<u64>());
            }
        }
        if let Some(cache) = cache {
            *cache = match self.seq.take() {
                Some(mut seq) => {
                    let mut ids = std::mem::take(&mut self.history);
                    ids.truncate(seq.position());
                    seq.park()?;
                    Resumable::holding(seq, ids)
                }
                None => Resumable::default(),
            };
        }
        let elapsed = self.started.elapsed();
        let first = self.first_token_at.unwrap_or(elapsed);
        Ok(Output {
            text: full,
            tokens: self.generated.clone(),
            tool_calls,
            stats: Stats {
                prompt_tokens: self.prompt_tokens,
                generated_tokens: self.generated.len(),
                time_to_first_token: first,
                prompt_time: self.prompt_time.unwrap_or(elapsed),
                decode_time: elapsed.saturating_sub(first),
                finish,
                seed: self.picker.sampler.seed,
                draft: self.steps.as_ref().map(|s| s.stats).unwrap_or_default(),
                cached_prompt_tokens: self.cached,
                forced_tokens: self.picker.forced.min(self.generated.len()),
                pick_time: self.picker.time,
            },
        })
    }
}
