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
//! Exact: each kept token is the token sampled, with the request's sampler and
//! history, from the logits after the tokens before it, as plain decoding would
//! sample it. The draft is deterministic, so "sample from the model, keep the draft
//! token while they agree" is the speculative-sampling rule for a draft
//! distribution that is a point mass: greedy output is the same, and sampled output
//! comes from the same distribution with the same seed drawing the same random
//! numbers in the same order. Only the logits' rounding differs (a forward pass over
//! k tokens against k of one token).

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
}

impl Lookup {
    pub fn new(max_draft: usize) -> Lookup {
        Lookup { max_draft, max_ngram: 4, min_ngram: 2 }
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
            if let Some(start) = (0..history.len() - n).rev().find(|&i| &history[i..i + n] == tail) {
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
        Steps { decoder, draft_len, pause: 0, next_pause: 1, unfed: vec![], rows: vec![], stats: DraftStats::default() }
    }

    /// Adapts the draft length and the pause to how much of a draft of `drafted` was kept.
    fn adapt(&mut self, drafted: usize, kept: usize, max_draft: usize) {
        if kept == drafted {
            self.draft_len = (self.draft_len * 2).min(max_draft);
        } else {
            self.draft_len = (kept + 1).min(max_draft);
        }
        if kept == 0 {
            self.pause = self.next_pause;
            self.next_pause = (self.next_pause * 2).min(MAX_PAUSE);
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
    /// are the prompt's).
    pub fn begin(
        &mut self,
        seq: &mut dyn Sequence,
        picker: &mut Picker,
        history: &mut Vec<u32>,
        left: usize,
        is_end: impl Fn(u32) -> bool,
    ) -> Result<Begun, GenerateError> {
        debug_assert!(left > 0);
        if self.unfed.is_empty() {
            return Ok(Begun::Ready);
        }
        let (draft, max_draft): (Vec<u32>, usize) = match &self.decoder {
            Decoder::Lookup(l) if self.pause == 0 && !picker.constrained() => {
                (l.draft(history, (left - 1).min(self.draft_len)).to_vec(), l.max_draft)
            }
            _ => (vec![], 0),
        };
        self.pause = self.pause.saturating_sub(1);
        if !draft.is_empty() {
            return Ok(Begun::Picked(self.verify(seq, &mut picker.sampler, history, draft, max_draft, is_end)?));
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
        max_draft: usize,
        is_end: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>, BackendError> {
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
        self.adapt(draft.len(), kept, max_draft);
        seq.truncate(start + 1 + kept)?;
        self.unfed = out.last().copied().into_iter().collect();
        Ok(out)
    }
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
        s.adapt(8, 3, 8);
        assert_eq!((s.draft_len, s.pause), (4, 0));
        s.adapt(4, 4, 8);
        assert_eq!(s.draft_len, 8);
        // misses in a row pause lookup for 1, 2, 4, ... steps, at most MAX_PAUSE
        let pauses: Vec<usize> = (0..8)
            .map(|_| {
                s.adapt(1, 0, 8);
                s.pause
            })
            .collect();
        assert_eq!(pauses, vec![1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(s.draft_len, 1);
        // a kept token ends the run of misses
        s.adapt(1, 1, 8);
        s.adapt(2, 0, 8);
        assert_eq!(s.pause, 1);
    }

    #[test]
    fn draft_stops_at_the_end_of_the_history() {
        let l = Lookup::new(8);
        // the match is right before the tail: only what follows it, up to the end
        let h = [5, 6, 5, 6];
        assert_eq!(l.draft(&h, 8), &[5, 6]);
    }
}
