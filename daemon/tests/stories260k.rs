//! stories260K (a trained Llama 2 architecture checkpoint, GQA) exported by
//! Optimum: greedy decoding from [1] must reproduce llama2.c's 99 ids exactly
//! on both backends; the int8 export runs on ONNX Runtime and is refused by tract.

mod common;
use common::*;
use llamad::engine::{BackendError, BackendKind, LoadError, Model};

#[test]
fn fp32_reproduces_the_reference_on_tract() {
    let m = load("stories260k-optimum-fp32", BackendKind::Tract);
    let (ids, _) = greedy(&m, &[1], 99);
    assert_eq!(ids, stories_reference_ids());
}

#[test]
fn fp32_reproduces_the_reference_on_onnxruntime() {
    let m = load("stories260k-optimum-fp32", BackendKind::Onnxruntime);
    let (ids, _) = greedy(&m, &[1], 99);
    assert_eq!(ids, stories_reference_ids());
}

#[test]
fn fp32_logits_agree_across_backends_at_every_step() {
    let t = load("stories260k-optimum-fp32", BackendKind::Tract);
    let o = load("stories260k-optimum-fp32", BackendKind::Onnxruntime);
    let (_, lt) = greedy(&t, &[1], 99);
    let (_, lo) = greedy(&o, &[1], 99);
    let worst = lt.iter().zip(&lo).map(|(a, b)| max_abs_diff(a, b)).fold(0.0, f32::max);
    eprintln!("stories260k fp32: max |tract - onnxruntime| over 99 steps = {worst:e}");
    assert!(worst < 1e-4, "max |Δlogit| = {worst}");
}

#[test]
fn prefill_equals_token_by_token() {
    // Feeding a prompt at once or one token at a time must give the same logits.
    for kind in [BackendKind::Tract, BackendKind::Onnxruntime] {
        let m = load("stories260k-optimum-fp32", kind);
        let prompt: Vec<u32> = stories_reference_ids()[..20].to_vec();
        let mut a = m.backend.clone().new_sequence().unwrap();
        let mut la = vec![];
        a.forward(&[1], &mut la).unwrap();
        a.forward(&prompt, &mut la).unwrap();
        let mut b = m.backend.clone().new_sequence().unwrap();
        let mut lb = vec![];
        b.forward(&[1], &mut lb).unwrap();
        for &t in &prompt {
            b.forward(&[t], &mut lb).unwrap();
        }
        assert_eq!(a.position(), 21);
        let d = max_abs_diff(&la, &lb);
        assert!(d < 1e-4, "{kind}: prefill vs step-by-step differ by {d}");
    }
}

#[test]
fn sequences_of_one_model_are_independent() {
    // Two interleaved sequences on one loaded model each reproduce the reference.
    for kind in [BackendKind::Tract, BackendKind::Onnxruntime] {
        let m = load("stories260k-optimum-fp32", kind);
        let want = stories_reference_ids();
        let mut s1 = m.backend.clone().new_sequence().unwrap();
        let mut s2 = m.backend.clone().new_sequence().unwrap();
        let (mut l1, mut l2) = (vec![], vec![]);
        s1.forward(&[1], &mut l1).unwrap();
        s2.forward(&[1, 461, 461], &mut l2).unwrap();
        for i in 0..30 {
            let a = llamad::engine::sampler::argmax(&l1);
            let b = llamad::engine::sampler::argmax(&l2);
            assert_eq!(a, want[i], "{kind} seq 1 step {i}");
            assert_eq!(b, want[i + 2], "{kind} seq 2 step {i}");
            s1.forward(&[a], &mut l1).unwrap();
            s2.forward(&[b], &mut l2).unwrap();
        }
    }
}

#[test]
fn int8_runs_on_onnxruntime_close_to_fp32() {
    let f = load("stories260k-optimum-fp32", BackendKind::Onnxruntime);
    let q = load("stories260k-optimum-int8", BackendKind::Onnxruntime);
    assert_eq!(q.dir.quantization.to_string(), "int8 (dynamic)");
    // Compare logits along the fp32 greedy path (a quantized model may diverge after near-ties).
    let path: Vec<u32> = stories_reference_ids()[..20].to_vec();
    let (mut sf, mut sq) = (f.backend.clone().new_sequence().unwrap(), q.backend.clone().new_sequence().unwrap());
    let (mut lf, mut lq) = (vec![], vec![]);
    let (mut worst, mut top1, mut min_cos) = (0.0f32, 0, 1.0f32);
    for &t in [1].iter().chain(&path) {
        sf.forward(&[t], &mut lf).unwrap();
        sq.forward(&[t], &mut lq).unwrap();
        worst = worst.max(max_abs_diff(&lf, &lq));
        min_cos = min_cos.min(cosine(&lf, &lq));
        top1 += (llamad::engine::sampler::argmax(&lf) == llamad::engine::sampler::argmax(&lq)) as usize;
    }
    eprintln!("stories260k int8 vs fp32: max |Δlogit| {worst}, min cosine {min_cos}, top-1 agreement {top1}/21");
    // This model is tiny (dim 64): dynamic int8 with one activation scale per tensor moves
    // its logits (range about ±15) by up to ~3 (measured 2.9 with plain onnxruntime in
    // Python too). A broken int8 path (wrong scales, wrong weights) gives cosine near 0 and
    // chance-level top-1 (measured here: cosine >= 0.91, top-1 18/21); these bounds catch
    // that while allowing real quantization noise.
    assert!(worst < 4.0, "max |Δlogit| = {worst}");
    assert!(min_cos > 0.85, "min cosine {min_cos}");
    assert!(top1 >= 16, "top-1 agreement {top1}/21");
}

#[test]
fn int8_is_refused_on_tract_with_a_pointer_to_onnxruntime() {
    let err = Model::load(&fixture("stories260k-optimum-int8"), BackendKind::Tract, &opts(BackendKind::Tract), false)
        .err()
        .expect("tract must refuse quantize_dynamic models");
    match &err {
        LoadError::Backend(BackendError::Unsupported { backend: BackendKind::Tract, reason }) => {
            assert!(reason.contains("onnxruntime backend"), "{reason}");
        }
        other => panic!("unexpected error: {other}"),
    }
}
