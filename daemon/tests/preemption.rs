//! Preemption and chunked prefill in the decoding loop, on both backends: a run whose
//! sequence is taken away while it yields (its KV cache given back) is computed again from
//! its token ids and gives exactly what it gives alone (a [`Run`] driven as the engine
//! loop drives it); a prompt computed in chunks gives
//! the logits of one computed at once; a run cancelled between chunks stops there.

mod common;

use std::sync::atomic::AtomicBool;

use common::max_abs_diff;
use llamad::engine::{BackendKind, FinishReason, LoadOptions, Model, Prompt, Resumable, Run, SamplingParams};

/// Drives `run` to its end as the engine loop does, preempting it (its sequence dropped, as
/// the loop does while an interactive request waits for memory) before the units of work
/// numbered in `at` (a unit: a prefill chunk or a decoding step), and cancelling it before
/// unit `cancel_at`. Returns how many preemptions dropped a sequence, and the units run.
fn drive(run: &mut Run, at: &[usize], cancel_at: Option<usize>) -> (usize, usize) {
    let (mut n, mut dropped) = (0, 0);
    while !run.done() {
        if at.contains(&n) && run.preempt() {
            dropped += 1;
        }
        if cancel_at == Some(n) {
            run.cancel();
            break;
        }
        if run.needs_prefill() {
            run.prefill_chunk().unwrap();
        } else {
            run.step().unwrap();
        }
        n += 1;
    }
    (dropped, n)
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
        // 101 prompt tokens in chunks of 16 are units 0-6: preempted during the prefill,
        // before its last chunk, and twice while decoding
        for at in [vec![2], vec![6], vec![20, 45]] {
            let mut cache = Resumable::default();
            let mut run = Run::start(&m, &mut cache, &Prompt::Tokens(prompt(100)), &p).unwrap();
            let (dropped, _) = drive(&mut run, &at, None);
            let out = run.finish(Some(&mut cache)).unwrap();
            assert_eq!(dropped, at.len(), "{name} on {kind}: preempted at {at:?}");
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
    let mut cache = Resumable::default();
    let mut run = Run::start(&m, &mut cache, &Prompt::Tokens(prompt(200)), &SamplingParams::greedy(20)).unwrap();
    let (_, units) = drive(&mut run, &[], Some(3));
    let out = run.finish(Some(&mut cache)).unwrap();
    assert_eq!(out.stats.finish, FinishReason::Cancelled);
    assert_eq!(out.tokens, Vec::<u32>::new());
    assert_eq!(units, 3);
    assert_eq!(cache.ids().len(), 3 * 8, "the sequence holds the three chunks computed, no more");
    // and a cancel that reaches a preempted run computes nothing more
    let mut run =
        Run::start(&m, &mut Resumable::default(), &Prompt::Tokens(prompt(200)), &SamplingParams::greedy(20)).unwrap();
    let (dropped, units) = drive(&mut run, &[2], Some(2));
    assert_eq!((dropped, units), (1, 2));
    assert_eq!(run.finish(None).unwrap().stats.finish, FinishReason::Cancelled);
}
