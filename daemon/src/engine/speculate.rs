//! Decoding strategies: how the loop in `generate.rs` gets its next tokens.
//!
//! [`Decoder::Plain`] feeds the last token and samples one. [`Decoder::Lookup`] is
//! speculative decoding by prompt lookup: it copies a draft from the text so far
//! (the tokens that followed the most recent earlier occurrence of the last few
//! tokens: grounded work such as summarizing, rewriting or editing a given text
//! repeats it), feeds the last token and the draft in one forward pass with logits
//! for each position, and keeps the draft up to its first token that the model
//! does not choose itself, then rolls the sequence back past the rest.
//!
//! Verifying a draft costs a forward pass over more tokens, which on a CPU is not free
//! (SmolLM2 on 2 cores: 9 tokens take about 2.5 times one token's pass), so the draft
//! length adapts: it doubles after a draft kept whole, shrinks to what was kept plus one
//! otherwise, and after a draft of which nothing was kept, lookup pauses for a few steps
//! (twice as many after each such miss in a row, at most 32). Text that does not repeat
//! its context then costs about plain decoding.
//!
//! Automatic (a request that does not set `prompt_lookup`, the default): lookup runs only
//! where it pays. The prompt must give something to copy (at least [`AUTO_MIN_PROMPT`]
//! tokens), drafts come only from it (an n-gram that occurs in the prompt; text that repeats
//! itself is left to plain decoding), a run stepped in a batch with others drafts nothing
//! (a batched step reads the weights once for every row, and a run that verifies drafts
//! leaves the batch), and it keeps measuring: tokens a second of its verification passes
//! against its plain steps' (a plain step first, and one every 32 passes to measure again).
//! When drafting yields less, lookup pauses as after a miss (1,
//! 2, 4, ... steps, at most 32), then tries again. So it costs plain decoding about one
//! short verification every 32 steps where it does not pay.
//!
//! Exact: each kept token is the token sampled, with the request's sampler and
//! history, from the logits after the tokens before it, as plain decoding would
//! sample it. The draft is deterministic, so "sample from the model, keep the draft
//! token while they agree" is the speculative-sampling rule for a draft
//! distribution that is a point mass: greedy output is the same, and sampled output
//! comes from the same distribution with the same seed drawing the same random
//! numbers in the same order. Only the logits' rounding differs (a forward pass over
//! k tokens against k of one token).

use std::time::Instant;

use super::backend::{BackendError, Sequence};
use super::generate::GenerateError;
use super::pick::Picker;
use super::sampler::Sampler;

/// Prompt-lookup settings of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// The most draft tokens verified in one pass.
    pub max_draft: usize,
    /// The longest and shortest n-gram looked up (longest first).
    pub max_ngram: usize,
    pub min_ngram: usize,
    /// Matches must end at or before this position of the history (the prompt's end when
    /// automatic; unbounded when asked for).
    pub source_end: usize,
    /// Automatic: only while it pays (module doc).
    pub auto: bool,
}

/// The shortest prompt automatic lookup copies from.
pub const AUTO_MIN_PROMPT: usize = 32;
/// The most draft tokens automatic lookup verifies in one pass (measured best on 2 cores,
/// docs/benchmarks.md).
pub const AUTO_MAX_DRAFT: usize = 8;

impl Lookup {
    /// Asked for, with up to `max_draft` tokens a pass.
    pub fn new(max_draft: usize) -> Lookup {
        Lookup { max_draft, max_ngram: 4, min_ngram: 2, source_end: usize::MAX, auto: false }
    }

    /// Automatic, copying from a prompt of `prompt_len` tokens.
    pub fn auto(prompt_len: usize) -> Lookup {
        Lookup { source_end: prompt_len, auto: true, ..Lookup::new(AUTO_MAX_DRAFT) }
    }

    /// The draft after `history`: the tokens that followed the most recent earlier occurrence
    /// of its last n tokens (n from `max_ngram` down to `min_ngram`), at most `limit` of them.
    pub fn draft<'h>(&self, history: &'h [u32], limit: usize) -> &'h [u32] {
        let limit = limit.min(self.max_draft);
        if limit == 0 {
            return &[];
        }
        for n in (self.min_ngram..=self.max_ngram).rev() {
            if history.len() <= n {
                continue;
            }
            let tail = &history[history.len() - n..];
            // most recent match first; the match must leave at least one token after it
            let last = (history.len() - n).min(self.source_end.saturating_sub(n - 1));
            if let Some(start) = (0..last).rev().find(|&i| &history[i..i + n] == tail) {
                let from = start + n;
                return &history[from..(from + limit).min(history.len())];
            }
        }
        &[]
    }
}

/// Counts of a request's speculation (zero without it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DraftStats {
    /// Draft tokens verified.
    pub drafted: usize,
    /// Draft tokens the model chose too (kept).
    pub accepted: usize,
}

/// How the next tokens are produced; see the module doc.
pub enum Decoder {
    Plain,
    Lookup(Lookup),
}

/// The longest pause of prompt lookup after drafts of which nothing was kept, in steps.
const MAX_PAUSE: usize = 32;

/// What the first half of a step did ([`Steps::begin`]).
pub enum Begun {
    /// A draft was verified: these are the step's tokens.
    Picked(Vec<u32>),
    /// Feed these tokens (the last step's), then pick from their last logits.
    Feed(Vec<u32>),
    /// Nothing to feed: pick from the logits as they are (the prompt's).
    Ready,
}

/// One decoding strategy's state over a request.
pub struct Steps {
    decoder: Decoder,
    /// Draft tokens to ask for next (adapted, see the module doc).
    draft_len: usize,
    /// Plain steps left before the next lookup, and the pause after the next miss.
    pause: usize,
    next_pause: usize,
    /// The last step's tokens, not fed yet (fed at the start of the next step; empty at
    /// the first, whose logits are the prompt's).
    unfed: Vec<u32>,
    /// When the current plain step's token went to be fed, and the tokens a second of plain
    /// steps and of verification passes (moving averages; automatic lookup compares them).
    fed_at: Option<Instant>,
    plain_rate: Option<f64>,
    draft_rate: Option<f64>,
    /// Verification passes since the last plain step.
    since_plain: usize,
    /// Logits rows of the last verification pass, vocab wide each.
    rows: Vec<f32>,
    pub stats: DraftStats,
}

impl Steps {
    pub fn new(decoder: Decoder) -> Steps {
        let draft_len = match &decoder {
            Decoder::Plain => 0,
            Decoder::Lookup(l) => l.max_draft,
        };
        Steps {
            decoder,
            draft_len,
            pause: 0,
            next_pause: 1,
            unfed: vec![],
            fed_at: None,
            plain_rate: None,
            draft_rate: None,
            since_plain: 0,
            rows: vec![],
            stats: DraftStats::default(),
        }
    }

    /// Lookup pauses for the next pause, which doubles (at most [`MAX_PAUSE`]).
    fn pause_more(&mut self) {
        self.pause = self.next_pause;
        self.next_pause = (self.next_pause * 2).min(MAX_PAUSE);
    }

    /// Adapts the draft length and the pause to how much of a draft of `drafted` was kept,
    /// and whether the pass `paid` (automatic lookup's measure).
    fn adapt(&mut self, drafted: usize, kept: usize, max_draft: usize, paid: bool) {
        if kept == drafted {
            self.draft_len = (self.draft_len * 2).min(max_draft);
        } else {
            self.draft_len = (kept + 1).min(max_draft);
        }
        if kept == 0 || !paid {
            self.pause_more();
        } else {
            self.next_pause = 1;
        }
    }

    /// The first half of a step: the next tokens, at least one, each pushed on `history` as
    /// it is picked: at most `left` (the run's budget) from a draft, and one plus what a
    /// grammar forces after it otherwise (the caller stops at its budget). A step that picks
    /// an end token (`is_end`) returns it last. A constrained picker (a grammar) decodes
    /// plainly: its forced tokens are fed with the next step's token in one pass.
    /// A draft is verified here (it is the whole step); otherwise it says what to feed
    /// before [`Steps::pick`] picks from the logits (nothing at the first step, whose logits
    /// are the prompt's). `crowded`: the step runs in a batch with others' (automatic lookup
    /// drafts nothing then).
    pub fn begin(
        &mut self,
        seq: &mut dyn Sequence,
        picker: &mut Picker,
        history: &mut Vec<u32>,
        left: usize,
        crowded: bool,
        is_end: impl Fn(u32) -> bool,
    ) -> Result<Begun, GenerateError> {
        debug_assert!(left > 0);
        if self.unfed.is_empty() {
            return Ok(Begun::Ready);
        }
        // automatic: a plain step measures what plain decoding yields first, and again every
        // MAX_PAUSE steps
        let measure = self.plain_rate.is_none() || self.since_plain >= MAX_PAUSE;
        let lookup = match &self.decoder {
            Decoder::Lookup(l) if self.pause == 0 && !picker.constrained() && !(l.auto && (crowded || measure)) => {
                Some(*l)
            }
            _ => None,
        };
        let draft = lookup.map_or(vec![], |l| l.draft(history, (left - 1).min(self.draft_len)).to_vec());
        self.pause = self.pause.saturating_sub(1);
        if let (Some(l), false) = (lookup, draft.is_empty()) {
            self.since_plain += 1;
            return Ok(Begun::Picked(self.verify(seq, &mut picker.sampler, history, draft, l, is_end)?));
        }
        if self.unfed.len() == 1 {
            self.fed_at = Some(Instant::now());
            self.since_plain = 0;
        }
        Ok(Begun::Feed(self.unfed.clone()))
    }

    /// The second half of a step: picks from the logits after what [`Steps::begin`] said to
    /// feed.
    pub fn pick(
        &mut self,
        picker: &mut Picker,
        logits: &mut [f32],
        history: &mut Vec<u32>,
        is_end: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>, GenerateError> {
        if let Some(at) = self.fed_at.take() {
            average(&mut self.plain_rate, 1.0 / at.elapsed().as_secs_f64().max(1e-9));
        }
        let mut out = Vec::with_capacity(1);
        picker.pick(logits, history, is_end, &mut out)?;
        history.extend_from_slice(&out);
        self.unfed.clone_from(&out);
        Ok(out)
    }

    /// Feeds the unfed token and `draft` in one pass and keeps the draft up to its first
    /// token the sampler does not choose (see the module doc).
    fn verify(
        &mut self,
        seq: &mut dyn Sequence,
        sampler: &mut Sampler,
        history: &mut Vec<u32>,
        draft: Vec<u32>,
        lookup: Lookup,
        is_end: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>, BackendError> {
        let began = Instant::now();
        let start = seq.position();
        let mut fed = std::mem::take(&mut self.unfed);
        debug_assert_eq!(fed.len(), 1, "unconstrained steps leave one token unfed");
        fed.extend_from_slice(&draft);
        seq.forward_rows(&fed, fed.len(), &mut self.rows)?;
        let vocab = self.rows.len() / fed.len();
        let mut out = Vec::with_capacity(fed.len());
        for (j, row) in self.rows.chunks_mut(vocab).enumerate() {
            let id = sampler.sample(row, history);
            history.push(id);
            out.push(id);
            if j == draft.len() || id != draft[j] || is_end(id) {
                break;
            }
        }
        // the draft tokens the model chose too stay fed; the sequence forgets the rest
        let kept = out.iter().zip(&draft).take_while(|(a, b)| a == b).count();
        self.stats.drafted += draft.len();
        self.stats.accepted += kept;
        seq.truncate(start + 1 + kept)?;
        self.unfed = out.last().copied().into_iter().collect();
        // tokens a second of this pass (its rollback included), against plain steps'
        average(&mut self.draft_rate, out.len() as f64 / began.elapsed().as_secs_f64().max(1e-9));
        let paid = !lookup.auto || matches!((self.draft_rate, self.plain_rate), (Some(d), Some(p)) if d >= p);
        self.adapt(draft.len(), kept, lookup.max_draft, paid);
        Ok(out)
    }
}

/// A moving average of rates (the last few passes count most).
fn average(avg: &mut Option<f64>, sample: f64) {
    *avg = Some(avg.map_or(sample, |a| 0.7 * a + 0.3 * sample));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_follows_the_latest_match_of_the_longest_ngram() {
        let l = Lookup::new(3);
        // "1 2 3 4 5 ... 1 2 3" -> 4 5 6
        let h = [1, 2, 3, 4, 5, 6, 9, 1, 2, 3];
        assert_eq!(l.draft(&h, 10), &[4, 5, 6]);
        // limit and max_draft cut it
        assert_eq!(l.draft(&h, 2), &[4, 5]);
        // the most recent occurrence wins: "7 8" was followed by 1 then by 2
        let h = [7, 8, 1, 0, 7, 8, 2, 0, 7, 8];
        assert_eq!(l.draft(&h, 1), &[2]);
        // no n-gram of 2 or more repeats: no draft
        assert!(l.draft(&[1, 2, 3, 4], 5).is_empty());
        assert!(l.draft(&[1], 5).is_empty());
        assert!(l.draft(&h, 0).is_empty());
    }

    #[test]
    fn drafts_grow_when_kept_shrink_when_not_and_pause_after_misses() {
        let mut s = Steps::new(Decoder::Lookup(Lookup::new(8)));
        assert_eq!(s.draft_len, 8);
        s.adapt(8, 3, 8, true);
        assert_eq!((s.draft_len, s.pause), (4, 0));
        s.adapt(4, 4, 8, true);
        assert_eq!(s.draft_len, 8);
        // misses in a row pause lookup for 1, 2, 4, ... steps, at most MAX_PAUSE
        let pauses: Vec<usize> = (0..8)
            .map(|_| {
                s.adapt(1, 0, 8, true);
                s.pause
            })
            .collect();
        assert_eq!(pauses, vec![1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(s.draft_len, 1);
        // a kept token ends the run of misses
        s.adapt(1, 1, 8, true);
        s.adapt(2, 0, 8, true);
        assert_eq!(s.pause, 1);
        // a pass that kept tokens but did not pay pauses as a miss does
        s.adapt(2, 1, 8, false);
        assert_eq!(s.pause, 2);
        s.adapt(2, 1, 8, false);
        assert_eq!(s.pause, 4);
    }

    #[test]
    fn automatic_drafts_copy_only_from_the_prompt() {
        // prompt: 1 2 3 4 5; generated: 9 7 8 6 7 8 (7 8 occurs only in generated text)
        let h = [1, 2, 3, 4, 5, 9, 7, 8, 6, 7, 8];
        assert_eq!(Lookup::new(4).draft(&h, 4), &[6, 7, 8]);
        assert!(Lookup::auto(5).draft(&h, 4).is_empty());
        // ... and "2 3" at the end is copied from the prompt, continuing past it
        let h = [1, 2, 3, 4, 5, 9, 2, 3];
        assert_eq!(Lookup::auto(5).draft(&h, 4), &[4, 5, 9, 2]);
        // an n-gram that only ends past the prompt is not a source
        let h = [1, 2, 3, 4, 5, 9, 5, 9];
        assert!(Lookup::auto(5).draft(&h, 4).is_empty());
    }

    /// A sequence whose passes take a time proportional to the tokens fed, and whose model
    /// always picks token 7 after 3 and 3 otherwise (`tie` picks 7 otherwise too): verifying
    /// a draft never gives more tokens a second than plain steps.
    struct Timed {
        position: usize,
        fed: Vec<u32>,
        passes: usize,
    }

    impl Sequence for Timed {
        fn forward_rows(&mut self, tokens: &[u32], rows: usize, logits: &mut Vec<f32>) -> Result<(), BackendError> {
            std::thread::sleep(std::time::Duration::from_millis(tokens.len() as u64));
            self.passes += 1;
            self.fed.truncate(self.position);
            self.fed.extend_from_slice(tokens);
            self.position += tokens.len();
            logits.clear();
            for &t in &tokens[tokens.len() - rows..] {
                let mut row = vec![0.0f32; 10];
                row[if t == 3 { 7 } else { 3 }] = 1.0;
                logits.extend(row);
            }
            Ok(())
        }
        fn truncate(&mut self, position: usize) -> Result<(), BackendError> {
            self.position = position;
            Ok(())
        }
        fn position(&self) -> usize {
            self.position
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }

    /// Decodes `n` tokens after `prompt`; returns the verification passes and the output.
    fn decode(decoder: Decoder, prompt: &[u32], n: usize) -> (usize, Vec<u32>) {
        use crate::engine::sampler::SamplingParams;
        let mut seq = Timed { position: 0, fed: vec![], passes: 0 };
        let mut picker = Picker::new(Sampler::new(&SamplingParams::greedy(n as u32)), None);
        let mut logits = vec![];
        seq.forward(prompt, &mut logits).unwrap();
        let mut history = prompt.to_vec();
        let mut steps = Steps::new(decoder);
        let never = |_| false;
        while history.len() < prompt.len() + n {
            let left = prompt.len() + n - history.len();
            match steps.begin(&mut seq, &mut picker, &mut history, left, false, never).unwrap() {
                Begun::Ready => {
                    steps.pick(&mut picker, &mut logits, &mut history, never).unwrap();
                }
                Begun::Feed(t) => {
                    seq.forward(&t, &mut logits).unwrap();
                    steps.pick(&mut picker, &mut logits, &mut history, never).unwrap();
                }
                Begun::Picked(_) => {}
            }
        }
        (steps.stats.drafted, history[prompt.len()..].to_vec())
    }

    #[test]
    fn automatic_lookup_pauses_where_verifying_does_not_pay() {
        // the model writes 3 7 3 7 ...; the prompt has "3 7 3 3": drafts after "3 7" copy
        // "3 3 ...", of which the model keeps one token (3), never the next (it wants 7)
        let mut prompt: Vec<u32> = (10..50).collect();
        prompt.extend([3, 7, 3, 3, 3, 3, 3, 3, 3, 3]);
        // the same drafts (from the prompt only) without the measuring
        let unmeasured = Lookup { auto: false, ..Lookup::auto(prompt.len()) };
        let (asked, out_asked) = decode(Decoder::Lookup(unmeasured), &prompt, 200);
        let (auto, out_auto) = decode(Decoder::Lookup(Lookup::auto(prompt.len())), &prompt, 200);
        let (_, out_plain) = decode(Decoder::Plain, &prompt, 200);
        assert_eq!(out_auto, out_plain);
        assert_eq!(out_asked, out_plain);
        // unmeasured, it drafts every few steps; automatic, it backs off to a draft every 32
        // steps once it has measured that verifying yields fewer tokens a second
        assert!(asked >= 60, "unmeasured: {asked} draft tokens");
        assert!(auto * 4 <= asked, "automatic: {auto} draft tokens, asked: {asked}");
    }

    #[test]
    fn draft_stops_at_the_end_of_the_history() {
        let l = Lookup::new(8);
        // the match is right before the tail: only what follows it, up to the end
        let h = [5, 6, 5, 6];
        assert_eq!(l.draft(&h, 8), &[5, 6]);
    }
}
