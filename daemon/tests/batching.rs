//! Batched decoding on ONNX Runtime's shared-buffer graphs: sequences of one
//! model stepped together (`LoadedModel::step_batch`) run in one forward pass
//! and compute what each computes alone, through joining, placeholder rows,
//! growth, truncation, leaving and rejoining; and runs driven together as the
//! engine loop drives them (a prefill chunk and a batched step a tick,
//! preemption included) give the output each gives alone.

mod common;
use common::*;
use llamad::engine::backend::{BatchStep, Sequence};
use llamad::engine::{BackendKind, LoadOptions, Model, Prompt, Resumable, Run, SamplingParams};
use std::sync::atomic::AtomicBool;

/// One batched step of `seqs[i]` for each `(i, token)` of `steps`.
fn step(m: &Model, seqs: &mut [Box<dyn Sequence>], logits: &mut [Vec<f32>], steps: &[(usize, u32)]) {
    let mut batch: Vec<BatchStep<'_>> = vec![];
    for ((i, seq), l) in seqs.iter_mut().enumerate().zip(logits.iter_mut()) {
        if let Some(&(_, token)) = steps.iter().find(|s| s.0 == i) {
            batch.push(BatchStep { seq: &mut **seq, token, logits: l });
        }
    }
    for r in m.backend.step_batch(&mut batch) {
        r.unwrap();
    }
}

fn load_with(batch_decode: bool) -> Model {
    load_fixture("tiny-gguf-fused", batch_decode)
}

fn load_fixture(name: &str, batch_decode: bool) -> Model {
    let opts = LoadOptions { batch_decode, ..opts(BackendKind::Onnxruntime) };
    Model::load(&fixture(name), BackendKind::Onnxruntime, &opts, false).unwrap()
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    let mut ids = vec![1];
    ids.extend((1..len as u32).map(|i| 259 + (i * 37 + salt * 11) % 250));
    ids
}

/// Bound on a batched row's logits against the same sequence alone. The int8-activation
/// kernels of `MatMulNBits` take another path for several rows than for one (as for
/// verifying drafts, docs/benchmarks.md); measured on this fixture: 0.0 to 1e-5, logits up
/// to about ±10.
const ROW_TOLERANCE: f32 = 1e-3;

/// Three sequences, two of which step in each pass (the third a placeholder row). Covers
/// joining, growth past the first capacity (256), truncation inside the batch, a multi-token
/// feed (leaving, then rejoining) and a row dropped midway.
#[test]
fn rows_of_a_batch_compute_what_each_sequence_computes_alone() {
    // the float32 and the float16 KV cache alike
    for name in ["tiny-gguf-fused", "tiny-gguf-fused-f16"] {
        batch_rows_against_alone(name);
    }
}

fn batch_rows_against_alone(name: &str) {
    let batched = load_fixture(name, true);
    let alone = load_fixture(name, false);
    let prompts = [prompt(40, 1), prompt(230, 2), prompt(7, 3)];
    let new = |m: &Model| -> Vec<Box<dyn Sequence>> {
        prompts.iter().map(|_| m.backend.clone().new_sequence().unwrap()).collect()
    };
    let (mut b, mut a) = (new(&batched), vec![]);
    let (mut lb, mut la) = (vec![vec![]; 3], vec![vec![]; 3]);
    for (i, p) in prompts.iter().enumerate() {
        b[i].forward(p, &mut lb[i]).unwrap();
    }
    // the references run one at a time (each alone on its model)
    for p in &prompts {
        let mut s = alone.backend.clone().new_sequence().unwrap();
        let mut l = vec![];
        s.forward(p, &mut l).unwrap();
        a.push(s);
        la.push(l);
    }
    let mut worst = 0.0f32;
    let mut check = |lb: &[Vec<f32>], la: &[Vec<f32>], i: usize, what: &str| {
        let d = max_abs_diff(&lb[i], &la[i]);
        assert!(d < ROW_TOLERANCE, "{name}: sequence {i} {what}: |Δ| {d}");
        worst = worst.max(d);
    };
    for n in 0..60u32 {
        let rows = if n < 30 { 3 } else { 2 }; // the third is dropped below
        let steps: Vec<(usize, u32)> = (0..rows)
            .filter(|&i| rows == 2 || !(n as usize + i).is_multiple_of(3))
            .map(|i| (i, 259 + (n * 13 + i as u32 * 5) % 250))
            .collect();
        step(&batched, &mut b, &mut lb, &steps);
        for &(i, t) in &steps {
            a[i].forward(&[t], &mut la[i]).unwrap();
            check(&lb, &la, i, &format!("at step {n}"));
        }
        let step = n;
        match step {
            10 => {
                // rolled back inside the batch, then stepped on
                let to = b[0].position() - 4;
                b[0].truncate(to).unwrap();
                a[0].truncate(to).unwrap();
            }
            20 => {
                // several tokens at once: out of the batch and back in at the next step
                let ts = [300, 301, 302];
                b[1].forward(&ts, &mut lb[1]).unwrap();
                a[1].forward(&ts, &mut la[1]).unwrap();
                check(&lb, &la, 1, "after three tokens at once");
            }
            29 => {
                b.pop();
                a.pop();
            }
            _ => {}
        }
    }
    assert!(b[1].position() > 256, "the batch grew past its first capacity");
    let c = batched.backend.batch_counters();
    // one pass a step; during the first 30, one row of three a placeholder in each
    assert!(c.steps >= 59 && c.rows >= 2 * c.steps && c.placeholders >= 29, "batched passes: {c:?}");
    assert_eq!(alone.backend.batch_counters().steps, 0);
    eprintln!("worst |Δ| {worst}, {c:?}");
}

/// A sequence alone never joins a batch: its steps are its own.
#[test]
fn a_sequence_alone_does_not_batch() {
    let m = load_with(true);
    let (ids, _) = greedy(&m, &prompt(20, 4), 20);
    assert_eq!(ids.len(), 20);
    assert_eq!(m.backend.batch_counters().steps, 0);
}

/// Four requests driven together as a model's engine loop drives them (one prefill chunk
/// and one batched decoding step a tick; one of them preempted midway and computed again):
/// each gives the tokens it gives alone (greedy and seeded sampling), and their steps were
/// batched.
#[test]
fn runs_stepped_together_give_what_each_gives_alone() {
    let m = load_with(true);
    let jobs: Vec<(Vec<u32>, SamplingParams)> = (0..4u32)
        .map(|i| {
            let params = match i {
                0 | 1 => SamplingParams::greedy(48),
                _ => SamplingParams {
                    temperature: 0.8,
                    top_k: 30,
                    seed: Some(i as u64),
                    max_tokens: 48,
                    ignore_eos: true,
                    ..Default::default()
                },
            };
            (prompt(10 + 90 * i as usize, i), params)
        })
        .collect();
    let cancel = AtomicBool::new(false);
    let solo: Vec<Vec<u32>> = jobs
        .iter()
        .map(|(p, params)| m.generate(&Prompt::Tokens(p.clone()), params, &cancel, |_| {}).unwrap().tokens)
        .collect();
    assert_eq!(m.backend.batch_counters().steps, 0, "one request at a time does not batch");
    let mut runs: Vec<Run> = jobs
        .iter()
        .map(|(p, params)| Run::start(&m, &mut Resumable::default(), &Prompt::Tokens(p.clone()), params).unwrap())
        .collect();
    let mut tick = 0;
    while runs.iter().any(|r| !r.done()) {
        if tick == 30 {
            assert!(runs[1].preempt(), "run 1 held its sequence");
        }
        let decoding: Vec<usize> = (0..4).filter(|&i| !runs[i].done() && !runs[i].needs_prefill()).collect();
        if let Some(i) = (0..4).find(|&i| runs[i].needs_prefill()) {
            runs[i].prefill_chunk().unwrap();
        }
        let mut stepping: Vec<&mut Run> =
            runs.iter_mut().enumerate().filter(|(i, _)| decoding.contains(i)).map(|(_, r)| r).collect();
        for r in Run::step_together(&mut stepping) {
            r.unwrap();
        }
        tick += 1;
    }
    for (i, (run, s)) in runs.iter_mut().zip(&solo).enumerate() {
        assert!(!s.is_empty(), "request {i} generated nothing");
        assert_eq!(&run.finish(None).unwrap().tokens, s, "request {i}");
    }
    let c = m.backend.batch_counters();
    eprintln!("{c:?}: {:.2} rows a step", c.rows as f64 / c.steps.max(1) as f64);
    assert!(c.rows > c.steps + 40, "passes batched several rows: {c:?}");
}

/// A parked sequence (a session between turns) leaves the batch: the others' passes no
/// longer carry its row, and it computes as before when it is fed again.
#[test]
fn a_parked_sequence_leaves_the_batch_and_resumes_exactly() {
    let batched = load_with(true);
    let alone = load_with(false);
    let (mut a, mut b) =
        (batched.backend.clone().new_sequence().unwrap(), batched.backend.clone().new_sequence().unwrap());
    let mut ra = alone.backend.clone().new_sequence().unwrap();
    let (mut la, mut lb, mut lr) = (vec![], vec![], vec![]);
    a.forward(&prompt(30, 5), &mut la).unwrap();
    ra.forward(&prompt(30, 5), &mut lr).unwrap();
    b.forward(&prompt(12, 6), &mut lb).unwrap();
    for t in 300..305 {
        let mut steps = [
            BatchStep { seq: &mut *a, token: t, logits: &mut la },
            BatchStep { seq: &mut *b, token: t, logits: &mut lb },
        ];
        for r in batched.backend.step_batch(&mut steps) {
            r.unwrap();
        }
        ra.forward(&[t], &mut lr).unwrap();
    }
    assert!(max_abs_diff(&la, &lr) < ROW_TOLERANCE, "{}", max_abs_diff(&la, &lr));
    a.park().unwrap();
    let before = batched.backend.batch_counters();
    for t in 305..310 {
        b.forward(&[t], &mut lb).unwrap();
    }
    let after = batched.backend.batch_counters();
    assert_eq!(after.placeholders, before.placeholders, "no row for the parked sequence: {before:?} {after:?}");
    assert_eq!(after.steps, before.steps + 5, "b still steps in the batch, alone");
    a.forward(&[310], &mut la).unwrap();
    ra.forward(&[310], &mut lr).unwrap();
    assert!(max_abs_diff(&la, &lr) < ROW_TOLERANCE, "{}", max_abs_diff(&la, &lr));
}

/// The arena stays within what its rows' reservations count (their planned buffers): two
/// rows join while one at the longest row's capacity fits both plans; once the long row
/// grows past what the plans allow for two rows at its capacity, it steps alone (the short
/// row stays in the arena); every step computes what the sequence computes unbatched.
#[test]
fn the_arena_stays_within_its_rows_plans() {
    let batched = load_with(true);
    let alone = load_with(false);
    let mut b: Vec<Box<dyn Sequence>> = (0..2).map(|_| batched.backend.clone().new_sequence().unwrap()).collect();
    let mut a: Vec<Box<dyn Sequence>> = (0..2).map(|_| alone.backend.clone().new_sequence().unwrap()).collect();
    // plans of 300 and 40 positions: buffers of 512 (the fixture's context) + 256 = 768
    for s in [&mut b, &mut a] {
        s[0].plan(300);
        s[1].plan(40);
    }
    let (mut lb, mut la) = (vec![vec![]; 2], vec![vec![]; 2]);
    for (i, p) in [prompt(130, 1), prompt(10, 2)].iter().enumerate() {
        b[i].forward(p, &mut lb[i]).unwrap();
        a[i].forward(p, &mut la[i]).unwrap();
    }
    let mut grown = None;
    for n in 0..160u32 {
        let t = 259 + (n * 7) % 250;
        // the short row stops at its plan (10 + 29 tokens), the long one goes on
        let steps: Vec<(usize, u32)> = if n < 29 { vec![(0, t), (1, t)] } else { vec![(0, t)] };
        if b[0].position() == 256 {
            grown = Some(batched.backend.batch_counters());
        }
        step(&batched, &mut b, &mut lb, &steps);
        for &(i, t) in &steps {
            a[i].forward(&[t], &mut la[i]).unwrap();
            let d = max_abs_diff(&lb[i], &la[i]);
            assert!(d < ROW_TOLERANCE, "sequence {i} at step {n}: |Δ| {d}");
        }
    }
    let (grown, end) = (grown.expect("the long row passed 256"), batched.backend.batch_counters());
    assert!(grown.steps >= 29 && grown.rows >= 2 * 29, "both rows batched while they fit: {grown:?}");
    // two rows at 512 positions would be 1024 > 768: the long row steps alone from 256 on
    assert_eq!(end.steps, grown.steps, "no batched pass once the arena would exceed the plans: {end:?}");
}

/// A sequence that verified drafts (logits of several rows) steps alone for a while, then joins
/// the batch again once it has taken `REJOIN_AFTER` one-token steps without drafts (automatic
/// prompt lookup drafts nothing while batched), computing what it computes alone.
#[test]
fn a_sequence_that_verified_drafts_rejoins_the_batch_later() {
    use llamad::engine::backend::onnxruntime::REJOIN_AFTER;
    let batched = load_with(true);
    let alone = load_with(false);
    let mut b: Vec<Box<dyn Sequence>> = (0..2).map(|_| batched.backend.clone().new_sequence().unwrap()).collect();
    let mut a: Vec<Box<dyn Sequence>> = (0..2).map(|_| alone.backend.clone().new_sequence().unwrap()).collect();
    let (mut lb, mut la) = (vec![vec![]; 2], vec![vec![]; 2]);
    for (i, p) in [prompt(30, 5), prompt(20, 6)].iter().enumerate() {
        b[i].forward(p, &mut lb[i]).unwrap();
        a[i].forward(p, &mut la[i]).unwrap();
    }
    // sequence 0 verifies a draft: 3 tokens, 3 rows of logits
    let draft = [300, 301, 302];
    let mut rows = vec![];
    b[0].forward_rows(&draft, 3, &mut rows).unwrap();
    a[0].forward_rows(&draft, 3, &mut rows).unwrap();
    let mut joined_at = None;
    for n in 0..(REJOIN_AFTER as u32 + 8) {
        let t = 259 + (n * 11) % 250;
        let before = batched.backend.batch_counters();
        step(&batched, &mut b, &mut lb, &[(0, t), (1, t)]);
        let after = batched.backend.batch_counters();
        if joined_at.is_none() && after.rows - before.rows == 2 {
            joined_at = Some(n);
        }
        for i in 0..2 {
            a[i].forward(&[t], &mut la[i]).unwrap();
            let d = max_abs_diff(&lb[i], &la[i]);
            assert!(d < ROW_TOLERANCE, "sequence {i} at step {n}: |Δ| {d}");
        }
    }
    // steps alone until REJOIN_AFTER one-token steps have passed, then both rows in one pass
    assert_eq!(joined_at, Some(REJOIN_AFTER as u32), "rejoined at step {joined_at:?}");
}
