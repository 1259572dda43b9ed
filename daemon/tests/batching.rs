//! Batched decoding on ONNX Runtime's shared-buffer graphs: concurrent sequences of
//! one model step together in one forward pass and compute what each computes
//! alone, through joining, placeholder rows, growth, truncation, leaving and
//! rejoining; and concurrent requests through `Model::generate` give the output
//! each gives alone.

mod common;
use common::*;
use llamad::engine::backend::Sequence;
use llamad::engine::{BackendKind, LoadOptions, Model, Prompt, SamplingParams};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier};

fn load_with(batch_decode: bool) -> Model {
    let opts = LoadOptions { batch_decode, ..opts(BackendKind::Onnxruntime) };
    Model::load(&fixture("tiny-gguf-fused"), BackendKind::Onnxruntime, &opts, false).unwrap()
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

/// One thread, three sequences stepping in turn: each step leads a batch in which the others
/// are placeholder rows. Covers joining, growth past the first capacity (256), truncation
/// inside the batch, a multi-token feed (leaving, then rejoining) and a row dropped midway.
#[test]
fn rows_of_a_batch_compute_what_each_sequence_computes_alone() {
    let batched = load_with(true);
    let alone = load_with(false);
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
        assert!(d < ROW_TOLERANCE, "sequence {i} {what}: |Δ| {d}");
        worst = worst.max(d);
    };
    for step in 0..60u32 {
        for i in 0..3 {
            if i == 2 && step >= 30 {
                continue; // dropped below
            }
            let t = 259 + (step * 13 + i as u32 * 5) % 250;
            b[i].forward(&[t], &mut lb[i]).unwrap();
            a[i].forward(&[t], &mut la[i]).unwrap();
            check(&lb, &la, i, &format!("at step {step}"));
        }
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
    // one thread: every pass is one sequence's step, the others' rows placeholders
    assert!(c.steps >= 150 && c.placeholders >= c.steps, "batched passes: {c:?}");
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

/// Four requests at once on threads, as the scheduler's workers run them: each gives the
/// tokens it gives alone (greedy and seeded sampling), and their steps were batched.
/// Tests whose threads must overlap to batch take turns with each other (this binary's
/// tests run in parallel on few cores).
static OVERLAPPING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn concurrent_requests_give_what_each_gives_alone() {
    let _turn = OVERLAPPING.lock().unwrap_or_else(|e| e.into_inner());
    let m = Arc::new(load_with(true));
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
            (prompt(10 + 9 * i as usize, i), params)
        })
        .collect();
    let cancel = AtomicBool::new(false);
    let solo: Vec<Vec<u32>> = jobs
        .iter()
        .map(|(p, params)| m.generate(&Prompt::Tokens(p.clone()), params, &cancel, |_| {}).unwrap().tokens)
        .collect();
    assert_eq!(m.backend.batch_counters().steps, 0, "one request at a time does not batch");
    // How many rows a pass had depends on how the threads overlapped (this fixture's steps
    // take about 0.1 ms, so under a busy test run the threads may mostly take turns; alone
    // on the machine 2.4 rows a pass were measured): some passes must have had several, in
    // one of three tries. Every try must give each request its solo tokens.
    for attempt in 1..=3 {
        let before = m.backend.batch_counters();
        let start = Arc::new(Barrier::new(jobs.len()));
        let handles: Vec<_> = jobs
            .iter()
            .cloned()
            .map(|(p, params)| {
                let (m, start) = (m.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let cancel = AtomicBool::new(false);
                    m.generate(&Prompt::Tokens(p), &params, &cancel, |_| {}).unwrap().tokens
                })
            })
            .collect();
        let together: Vec<Vec<u32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (i, (t, s)) in together.iter().zip(&solo).enumerate() {
            assert!(!s.is_empty(), "request {i} generated nothing");
            assert_eq!(t, s, "request {i}, try {attempt}");
        }
        let c = m.backend.batch_counters();
        let (steps, rows) = (c.steps - before.steps, c.rows - before.rows);
        eprintln!("try {attempt}: {c:?}: {:.2} rows a step", rows as f64 / steps.max(1) as f64);
        if rows > steps {
            return;
        }
    }
    panic!("no pass batched several rows in three tries");
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
        a.forward(&[t], &mut la).unwrap();
        ra.forward(&[t], &mut lr).unwrap();
        b.forward(&[t], &mut lb).unwrap();
    }
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

/// A run that yields between two steps (the scheduler's background work pausing for
/// interactive work) parks its sequence and, on its own thread, lets another request of the
/// model run to the end (as the scheduler's yielding worker does); then it goes on. Both
/// give what each gives alone, while a third request batches with them on another thread.
#[test]
fn a_run_that_yields_to_another_on_its_thread_gives_what_it_gives_alone() {
    use llamad::engine::{GenerateError, Resumable, Yield};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Interrupt<'a> {
        model: &'a Model,
        steps: AtomicUsize,
        nested: Mutex<Option<Vec<u32>>>,
    }
    impl Yield for Interrupt<'_> {
        fn wanted(&self) -> bool {
            self.steps.fetch_add(1, Ordering::SeqCst) == 10
        }
        fn wait(&self, _: &mut Option<Box<dyn llamad::engine::backend::Sequence>>) -> Result<(), GenerateError> {
            let out = self
                .model
                .generate(&Prompt::Tokens(prompt(25, 9)), &SamplingParams::greedy(40), &AtomicBool::new(false), |_| {})
                .unwrap();
            *self.nested.lock().unwrap() = Some(out.tokens);
            Ok(())
        }
    }

    let _turn = OVERLAPPING.lock().unwrap_or_else(|e| e.into_inner());
    let m = Arc::new(load_with(true));
    let cancel = AtomicBool::new(false);
    let solo =
        |p: Vec<u32>, n| m.generate(&Prompt::Tokens(p), &SamplingParams::greedy(n), &cancel, |_| {}).unwrap().tokens;
    let (want_main, want_nested, want_other) =
        (solo(prompt(17, 8), 60), solo(prompt(25, 9), 40), solo(prompt(9, 4), 200));
    let other = {
        let m = m.clone();
        std::thread::spawn(move || {
            let p = SamplingParams::greedy(200);
            m.generate(&Prompt::Tokens(prompt(9, 4)), &p, &AtomicBool::new(false), |_| {}).unwrap().tokens
        })
    };
    let interrupt = Interrupt { model: &m, steps: AtomicUsize::new(0), nested: Mutex::new(None) };
    let mut cache = Resumable::default();
    let out = m
        .generate_from(
            &mut cache,
            &Prompt::Tokens(prompt(17, 8)),
            &SamplingParams::greedy(60),
            &cancel,
            &interrupt,
            |_| {},
        )
        .unwrap();
    assert_eq!(out.tokens, want_main, "the yielding run");
    assert_eq!(interrupt.nested.lock().unwrap().as_deref(), Some(&want_nested[..]), "the run it let go first");
    assert_eq!(other.join().unwrap(), want_other, "the request batching beside them");
    assert!(interrupt.steps.load(Ordering::SeqCst) > 11, "the run went on after yielding");
}
