//! The next token from logits: the logits processors first (a grammar's mask,
//! which leaves only the tokens it allows), then the seeded sampler (repetition
//! penalty, temperature, top-k, top-p), then the grammar is advanced past the
//! token and past what it forces after it.

use super::grammar::{Constraint, GrammarError};
use super::sampler::Sampler;

pub struct Picker {
    pub sampler: Sampler,
    constraint: Option<Constraint>,
    /// Tokens the grammar forced (given without sampling).
    pub forced: usize,
    /// Time spent picking (mask, sampling, grammar), for the stats.
    pub time: std::time::Duration,
}

impl Picker {
    pub fn new(sampler: Sampler, constraint: Option<Constraint>) -> Picker {
        Picker { sampler, constraint, forced: 0, time: std::time::Duration::ZERO }
    }

    pub fn constrained(&self) -> bool {
        self.constraint.is_some()
    }

    /// The tokens the grammar forces before anything is sampled (none without one).
    pub fn start(&mut self) -> Result<Vec<u32>, GrammarError> {
        let ids = self.constraint.as_mut().map_or(Ok(vec![]), Constraint::forced)?;
        self.forced += ids.len();
        Ok(ids)
    }

    /// Picks a token and appends it to `out`, followed by the tokens the grammar forces
    /// after it. An end token (`is_end`) is appended alone.
    pub fn pick(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        is_end: impl Fn(u32) -> bool,
        out: &mut Vec<u32>,
    ) -> Result<(), GrammarError> {
        let started = std::time::Instant::now();
        let r = (|| {
            if let Some(c) = self.constraint.as_mut() {
                c.mask(logits)?;
            }
            let id = self.sampler.sample(logits, history);
            out.push(id);
            if let Some(c) = self.constraint.as_mut()
                && !is_end(id)
            {
                c.commit(id)?;
                let forced = c.forced()?;
                self.forced += forced.len();
                out.extend(forced);
            }
            Ok(())
        })();
        self.time += started.elapsed();
        r
    }

    /// The grammar is complete: nothing more may be generated.
    pub fn done(&self) -> bool {
        self.constraint.as_ref().is_some_and(Constraint::is_stopped)
    }
}
