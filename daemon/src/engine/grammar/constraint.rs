//! One request's grammar state: which tokens may come next (the mask, applied to
//! the logits as −∞ before the sampler), the sampled token committed, the tokens
//! the grammar forces fast-forwarded (fed without sampling), and whether the
//! grammar has finished.
//!
//! The loop's order per token: [`Constraint::mask`] the logits, sample, then
//! [`Constraint::commit`] the token unless it is an end token (which the mask
//! allows only where the grammar accepts), then [`Constraint::forced`] for what
//! follows necessarily, then stop if [`Constraint::is_stopped`].

use llguidance::{Matcher, TokenParser};

use super::GrammarError;

pub struct Constraint {
    matcher: Matcher,
    /// The logits' width (the trie's vocabulary, padded).
    width: usize,
}

fn runtime(e: impl std::fmt::Display) -> GrammarError {
    GrammarError::Runtime(e.to_string())
}

impl Constraint {
    pub(super) fn new(parser: TokenParser, width: usize) -> Constraint {
        Constraint { matcher: Matcher::new(Ok(parser)), width }
    }

    /// Sets the logits of every token the grammar does not allow now to −∞.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), GrammarError> {
        if logits.len() != self.width {
            return Err(runtime(format!("logits are {} wide, the grammar's vocabulary {}", logits.len(), self.width)));
        }
        let mask = self.matcher.compute_mask().map_err(runtime)?;
        if mask.is_zero() {
            return Err(runtime("the grammar allows no token here"));
        }
        mask.iter_unset_entries(|i| logits[i] = f32::NEG_INFINITY);
        Ok(())
    }

    /// Advances the grammar past a sampled token.
    pub fn commit(&mut self, id: u32) -> Result<(), GrammarError> {
        self.matcher.consume_token(id).map_err(runtime)
    }

    /// The tokens the grammar allows alone from here, advanced past (empty when none).
    pub fn forced(&mut self) -> Result<Vec<u32>, GrammarError> {
        if self.matcher.is_stopped() {
            return Ok(vec![]);
        }
        let ids = self.matcher.consume_ff_tokens();
        match self.matcher.get_error() {
            Some(e) => Err(runtime(e)),
            None => Ok(ids),
        }
    }

    /// The grammar is complete and allows nothing more: generation ends.
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }
}
