//! Choosing the next token from logits: repetition penalty, then greedy
//! (temperature 0) or temperature / top-k / top-p sampling from a seeded RNG,
//! so a request with a seed is reproducible on any backend that gives the
//! same logits.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::grammar::Format;
use super::tools::Tools;

/// Decoding options of a request: sampling, limits, stop strings and the output's
/// format. Defaults follow what llama.cpp and Ollama users know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    /// 1 = off; > 1 discourages tokens seen in the last `repeat_last_n`.
    pub repetition_penalty: f32,
    pub repeat_last_n: u32,
    /// None = a random seed (reported back in the stats).
    pub seed: Option<u64>,
    pub max_tokens: u32,
    /// Generation ends before the first occurrence of any of these; it is not emitted.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// Speculative decoding by prompt lookup: the most draft tokens verified in one pass
    /// (`Some(0)` = off); `None` = automatic, where it pays (see `speculate.rs`). The output is
    /// what plain decoding gives.
    pub prompt_lookup: Option<u32>,
    /// What the output must match (`grammar/`); None: free text.
    pub format: Option<Format>,
    /// Tools a chat offers (`tools/`): the answer is text or calls. Not with `format`.
    pub tools: Option<Tools>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.1,
            repeat_last_n: 64,
            seed: None,
            max_tokens: 256,
            stop: vec![],
            ignore_eos: false,
            prompt_lookup: None,
            format: None,
            tools: None,
        }
    }
}

impl SamplingParams {
    /// Deterministic argmax decoding.
    pub fn greedy(max_tokens: u32) -> Self {
        SamplingParams { temperature: 0.0, repetition_penalty: 1.0, max_tokens, ..Default::default() }
    }
}

/// An invalid sampling option, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidOption {
    pub field: &'static str,
    pub reason: String,
}

pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_LEN: usize = 256;
/// The most draft tokens `prompt_lookup` may ask to verify in one pass.
pub const MAX_DRAFT: u32 = 32;

impl SamplingParams {
    pub fn validate(&self) -> Result<(), InvalidOption> {
        let err = |field, reason: &str| Err(InvalidOption { field, reason: reason.to_string() });
        if !self.temperature.is_finite() || !(0.0..=100.0).contains(&self.temperature) {
            return err("temperature", "must be between 0 (greedy) and 100");
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return err("top_p", "must be in (0, 1]");
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 || self.repetition_penalty > 10.0 {
            return err("repetition_penalty", "must be in (0, 10]");
        }
        if self.max_tokens == 0 {
            return err("max_tokens", "must be at least 1");
        }
        if self.prompt_lookup.is_some_and(|n| n > MAX_DRAFT) {
            return err("prompt_lookup", "at most 32 draft tokens");
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return err("stop", "at most 16 stop strings");
        }
        if self.stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            return err("stop", "stop strings must be 1 to 256 bytes long");
        }
        if self.format.is_some() && self.tools.is_some() {
            return err("tools", "cannot be combined with a format (json, json_schema, regex, lark)");
        }
        if let Some(f) = &self.format
            && self.ignore_eos
        {
            return Err(InvalidOption { field: f.option(), reason: "cannot go past the end (ignore_eos)".into() });
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// The seed in use (given or drawn), so a run can be repeated.
    pub seed: u64,
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        Sampler { params: params.clone(), rng: StdRng::seed_from_u64(seed), seed, scratch: vec![] }
    }

    /// Picks the next token. `history` is every token so far (prompt included).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let from = history.len().saturating_sub(p.repeat_last_n as usize);
            let mut seen = history[from..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let c = &mut self.scratch;
        c.clear();
        // tokens at −∞ (masked by a grammar) have no chance: leave them out of the sort
        c.extend(logits.iter().enumerate().filter(|(_, l)| **l > f32::NEG_INFINITY).map(|(i, &l)| (i as u32, l)));
        if c.is_empty() {
            return argmax(logits);
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && (p.top_k as usize) < c.len() {
            c.select_nth_unstable_by(p.top_k as usize - 1, by_logit);
            c.truncate(p.top_k as usize);
        }
        c.sort_unstable_by(by_logit);
        let max = c[0].1;
        let mut total = 0.0f32;
        for x in c.iter_mut() {
            x.1 = ((x.1 - max) / p.temperature).exp();
            total += x.1;
        }
        let mut kept = 0.0;
        let mut keep = None;
        for (i, x) in c.iter_mut().enumerate() {
            x.1 /= total;
            kept += x.1;
            if kept >= p.top_p && keep.is_none() {
                keep = Some(i + 1);
            }
        }
        if let Some(k) = keep {
            c.truncate(k);
        }
        let mass: f32 = c.iter().map(|x| x.1).sum();
        let mut r = self.rng.random::<f32>() * mass;
        for x in c.iter() {
            r -= x.1;
            if r <= 0.0 {
                return x.0;
            }
        }
        c[c.len() - 1].0
    }
}

/// Index of the largest logit, the lowest index among equals.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: u32, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, repetition_penalty: 1.0, seed: Some(seed), ..Default::default() }
    }

    #[test]
    fn greedy_is_argmax_and_ties_take_the_lowest_id() {
        let mut s = Sampler::new(&SamplingParams::greedy(1));
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 3.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(&params(1.0, 0, 1.0, seed));
            (0..50).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_k_limits_choices() {
        let logits: Vec<f32> = vec![1.0, 5.0, 4.9, 4.8, 0.0];
        let mut s = Sampler::new(&params(1.0, 1, 1.0, 3));
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
        }
        let mut s = Sampler::new(&params(5.0, 3, 1.0, 3));
        let seen: std::collections::BTreeSet<u32> = (0..300).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(seen, [1, 2, 3].into_iter().collect());
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // Token 0 carries ~88 % of the mass: top_p 0.5 leaves only it.
        let logits = vec![4.0, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(&params(1.0, 0, 0.5, 11));
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 0);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // Two tokens with probabilities 0.73 / 0.27 (logit gap 1).
        let logits = vec![1.0, 0.0];
        let mut s = Sampler::new(&params(1.0, 0, 1.0, 5));
        let n = 20_000;
        let zeros = (0..n).filter(|_| s.sample(&mut logits.clone(), &[]) == 0).count();
        let p = zeros as f64 / n as f64;
        assert!((p - 0.731).abs() < 0.02, "p = {p}");
    }

    #[test]
    fn masked_tokens_are_never_sampled() {
        let mut logits: Vec<f32> = (0..50).map(|i| i as f32 * 0.01).collect();
        for (i, l) in logits.iter_mut().enumerate() {
            if i % 7 != 3 {
                *l = f32::NEG_INFINITY;
            }
        }
        let mut s = Sampler::new(&params(2.0, 0, 1.0, 9));
        let seen: std::collections::BTreeSet<u32> = (0..500).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(seen, (0..50).filter(|i| i % 7 == 3).collect());
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let p = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy(1) };
        let mut s = Sampler::new(&p);
        // Token 0 leads (2.0 vs 1.5) until it is penalised to 1.0.
        assert_eq!(s.sample(&mut [2.0, 1.5], &[]), 0);
        assert_eq!(s.sample(&mut [2.0, 1.5], &[0]), 1);
        // Negative logits are pushed further down.
        assert_eq!(s.sample(&mut [-1.0, -1.5], &[0]), 1);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = [
            (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
            (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
            (SamplingParams { top_p: 1.5, ..Default::default() }, "top_p"),
            (SamplingParams { repetition_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
            (SamplingParams { max_tokens: 0, ..Default::default() }, "max_tokens"),
            (SamplingParams { stop: vec![String::new()], ..Default::default() }, "stop"),
            (SamplingParams { stop: vec!["x".into(); 17], ..Default::default() }, "stop"),
        ];
        for (p, field) in bad {
            assert_eq!(p.validate().unwrap_err().field, field, "{p:?}");
        }
        assert!(SamplingParams::default().validate().is_ok());
    }
}
