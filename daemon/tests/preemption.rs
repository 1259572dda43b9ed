//! Preemption and chunked prefill in the decoding loop, on both backends: a run whose
//! sequence is taken away while it yields (its KV cache given back) is computed again from
//! its token ids and gives exactly what it gives alone; a prompt computed in chunks gives
//! the logits of one computed at once; a run cancelled between chunks stops there.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::max_abs_diff;
use llamad::engine::backend::Sequence;
use llamad::engine::{
    BackendKind, FinishReason, GenerateError, LoadOptions, Model, Prompt, Resumable, SamplingParams, Yield,
};

/// Drops the run's sequence at the yields it is asked for (as the scheduler does while an
/// interactive request waits for memory), cancelling at one of them if told to.
struct Preempt {
    steps: AtomicUsize,
    at: Vec<usize>,
    dropped: AtomicUsize,
    cancel_at: Option<usize>,
    cancel: Mutex<Option<std::sync::Arc<AtomicBool>>>,
}

impl Preempt {
    fn at(at: &[usize]) -> Preempt {
        Preempt {
            steps: AtomicUsize::new(0),
            at: at.to_vec(),
            dropped: AtomicUsize::new(0),
            cancel_at: None,
            cancel: Mutex::new(None),
        }
    }
}

impl Yield for Preempt {
    fn wanted(&self) -> bool {
        let n = self.steps.fetch_add(1, Ordering::SeqCst);
        self.at.contains(&n) || self.cancel_at == Some(n)
    }
    fn wait(&self, seq: &mut Option<Box<dyn Sequence>>) -> Result<(), GenerateError> {
        assert!(seq.is_some());
        *seq = None;
        self.dropped.fetch_add(1, Ordering::SeqCst);
        if self.cancel_at.is_some()
            && let Some(c) = &*self.cancel.lock().unwrap()
        {
            c.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

fn load(name: &str, kind: BackendKind, chunk: usize) -> Model {
    let opts = LoadOptions { prefill_chunk: chunk, ..common::opts(kind) };
    Model::load(&common::fixture(name), kind, &opts, false).unwrap()
}

fn prompt(n: u32) -> Vec<u32> {
    std::iter::once(1).chain((0..n).map(|i| 300 + (i * 37) % 5000)).collect()
}

const CASES: &[(&str, BackendKind)] = &[
    ("tiny-llama2-optimum-fp32", BackendKind::Tract),
    ("tiny-llama2-optimum-fp32", BackendKind::Onnxruntime),
    ("tiny-llama2-genai-fp32", BackendKind::Onnxruntime),
];

#[test]
fn a_preempted_run_is_computed_again_and_gives_what_it_gives_alone() {
    for &(name, kind) in CASES {
        // chunks of 16: the prompt of 100 tokens is computed in 7 passes, before and after
        let m = load(name, kind, 16);
        let cancel = AtomicBool::new(false);
        let p = SamplingParams::greedy(60);
        let alone = m.generate(&Prompt::Tokens(prompt(100)), &p, &cancel, |_| {}).unwrap().tokens;
        // 101 prompt tokens in chunks of 16: yields 0-5 come between chunks; then preempted
        // during the prefill, before the first step, and twice while decoding
        for at in [vec![2], vec![6], vec![20, 45]] {
            let y = Preempt::at(&at);
            let mut cache = Resumable::default();
            let out = m.generate_from(&mut cache, &Prompt::Tokens(prompt(100)), &p, &cancel, &y, |_| {}).unwrap();
            assert_eq!(y.dropped.load(Ordering::SeqCst), at.len(), "{name} on {kind}: preempted at {at:?}");
            assert_eq!(out.tokens, alone, "{name} on {kind}: preempted at yields {at:?}");
            assert_eq!(cache.ids().len(), 101 + 59, "the cache holds the recomputed sequence (the last token unfed)");
        }
    }
}

#[test]
fn a_prompt_computed_in_chunks_gives_the_logits_of_one_pass() {
    for &(name, kind) in CASES {
        let whole = load(name, kind, 4096);
        let chunked = load(name, kind, 7);
        let ids = prompt(90);
        let mut a = whole.backend.clone().new_sequence().unwrap();
        let mut la = vec![];
        a.forward(&ids, &mut la).unwrap();
        let mut lb = vec![];
        let out = chunked
            .generate(&Prompt::Tokens(ids.clone()), &SamplingParams::greedy(1), &AtomicBool::new(false), |_| {})
            .unwrap();
        let mut b = chunked.backend.clone().new_sequence().unwrap();
        for c in ids.chunks(7) {
            b.forward(c, &mut lb).unwrap();
        }
        assert!(max_abs_diff(&la, &lb) < 1e-4, "{name} on {kind}: {}", max_abs_diff(&la, &lb));
        let first = la.iter().enumerate().fold((0, f32::MIN), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0;
        assert_eq!(out.tokens, vec![first as u32], "{name} on {kind}");
    }
}

#[test]
fn a_run_cancelled_between_prefill_chunks_stops_there() {
    let m = load("tiny-llama2-optimum-fp32", BackendKind::Tract, 8);
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let y = Preempt { cancel_at: Some(3), ..Preempt::at(&[]) };
    *y.cancel.lock().unwrap() = Some(cancel.clone());
    let mut cache = Resumable::default();
    let out = m
        .generate_from(&mut cache, &Prompt::Tokens(prompt(200)), &SamplingParams::greedy(20), &cancel, &y, |_| {})
        .unwrap();
    assert_eq!(out.stats.finish, FinishReason::Cancelled);
    assert_eq!(out.tokens, Vec::<u32>::new());
    assert!(y.steps.load(Ordering::SeqCst) <= 4, "no chunk was asked to yield after the cancel");
    assert!(cache.ids().is_empty(), "the sequence was given back, nothing is kept");
}
