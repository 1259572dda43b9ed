//! The speed paths against their references: the converter's fused graph for ONNX
//! Runtime against the float graph of the same GGUF, and speculative decoding by
//! prompt lookup against plain decoding, on both backends and every KV-cache form.

mod common;
use common::*;
use llamad::engine::backend::KvCache;
use llamad::engine::{BackendKind, Layout, Model, Prompt, SamplingParams};
use std::sync::atomic::AtomicBool;

/// A token sequence of the fused fixture's made-up vocabulary (ids 259.. are letter pieces):
/// text-like, with repeats, as a prompt to copy from.
fn passage() -> Vec<u32> {
    let words: Vec<u32> = (0..40u32).map(|i| 259 + (i * 37 + 11) % 250).collect();
    let mut ids = vec![1];
    ids.extend(&words);
    ids.extend(&words[5..25]);
    ids
}

/// Logits of every position of `ids`, in one forward pass.
fn all_logits(model: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut seq = model.backend.clone().new_sequence().unwrap();
    let mut rows = vec![];
    seq.forward_rows(ids, ids.len(), &mut rows).unwrap();
    let vocab = model.dir.spec.vocab_size;
    assert_eq!(rows.len(), ids.len() * vocab);
    rows.chunks(vocab).map(<[f32]>::to_vec).collect()
}

#[test]
fn the_fused_graph_is_read_as_onnxruntime_genai_layout_with_a_shared_kv_buffer() {
    let m = load("tiny-gguf-fused", BackendKind::Onnxruntime);
    assert_eq!(m.dir.layout, Layout::GenAi);
    assert_eq!(m.served().kv_cache, KvCache::SharedBuffer);
    assert_eq!(m.dir.io.logits_to_keep.as_deref(), Some("logits_to_keep"));
    assert_eq!(m.dir.io.position_ids, None);
    for op in ["GroupQueryAttention", "SkipSimplifiedLayerNormalization", "MatMulNBits", "GatherBlockQuantized"] {
        assert!(m.dir.graph.has_op(&format!("com.microsoft::{op}")), "no {op}");
    }
    // the float graph of the same GGUF is the standard one (Optimum layout, explicit positions)
    let f = load("tiny-gguf-fp32", BackendKind::Onnxruntime);
    assert_eq!((f.dir.layout, f.dir.io.logits_to_keep.as_deref()), (Layout::Optimum, None));
}

/// Bounds for the fused graph against the float graph of the same weights. Its 4-bit and
/// 8-bit weights are the GGUF's own (Q4_0, Q4_1 and Q8_0 carried over bit-exactly), so what
/// differs is `accuracy_level` 4: activations quantized to int8 per block of 32, as llama.cpp
/// does for its integer dot products. Measured on this fixture: top-1 agreement 0.97-1.0, max
/// |Δlogit| 0.8 (logits spread over about ±10); on SmolLM2-135M (models/check_fused.py): 0.98
/// and 1.3 (the same graph with accuracy_level 0 agrees exactly, Δ 0.000). The bounds leave
/// room for other CPUs' kernels without letting a wrong graph through (a requantized Q4_1, the
/// smallest real mistake measured, gave SmolLM2 0.83 and 17).
#[test]
fn the_fused_graph_stays_close_to_the_float_graph_of_the_same_gguf() {
    let fused = load("tiny-gguf-fused", BackendKind::Onnxruntime);
    let float = load("tiny-gguf-fp32", BackendKind::Onnxruntime);
    let ids = passage();
    let (a, b) = (all_logits(&fused, &ids), all_logits(&float, &ids));
    let agree = a.iter().zip(&b).filter(|(x, y)| argmax(x) == argmax(y)).count() as f32 / ids.len() as f32;
    let worst = a.iter().zip(&b).map(|(x, y)| max_abs_diff(x, y)).fold(0.0, f32::max);
    let spread = b.iter().flatten().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(agree >= 0.9, "top-1 agreement {agree}");
    assert!(worst <= 2.0, "max |Δlogit| {worst} (logits up to {spread})");
    assert!(spread > 5.0, "the fixture's logits should be spread out ({spread})");
    // logits_to_keep: one row from a prompt is the last row of all of them
    let mut seq = fused.backend.clone().new_sequence().unwrap();
    let mut last = vec![];
    seq.forward(&ids, &mut last).unwrap();
    assert!(max_abs_diff(&last, a.last().unwrap()) < 1e-4);
}

#[test]
fn tract_refuses_the_fused_graph_and_names_the_standard_one() {
    let err = Model::load(&fixture("tiny-gguf-fused"), BackendKind::Tract, &opts(BackendKind::Tract), false)
        .err()
        .expect("tract cannot run ONNX Runtime's fused operators");
    assert!(err.to_string().contains("--graph standard"), "{err}");
}

fn argmax(x: &[f32]) -> u32 {
    llamad::engine::sampler::argmax(x)
}

/// Generates from `prompt` with and without prompt lookup; returns both outputs' tokens and
/// the speculative run's draft counts.
fn with_and_without_lookup(
    model: &Model,
    prompt: &[u32],
    params: &SamplingParams,
) -> (Vec<u32>, Vec<u32>, (usize, usize)) {
    let cancel = AtomicBool::new(false);
    let run = |p: &SamplingParams| model.generate(&Prompt::Tokens(prompt.to_vec()), p, &cancel, |_| {}).unwrap();
    let plain = run(params);
    let spec = run(&SamplingParams { prompt_lookup: 6, ..params.clone() });
    assert_eq!(plain.stats.draft.drafted, 0);
    (plain.tokens, spec.tokens, (spec.stats.draft.drafted, spec.stats.draft.accepted))
}

/// Every backend and KV-cache form that can roll back: greedy output with prompt lookup is
/// plain greedy output, token for token, and drafts were verified and kept on the way.
#[test]
fn prompt_lookup_gives_plain_greedy_output_on_every_kv_cache_form() {
    let cases = [
        ("tiny-gguf-fused", BackendKind::Onnxruntime, KvCache::SharedBuffer),
        ("tiny-llama2-optimum-fp32", BackendKind::Onnxruntime, KvCache::Moved),
        ("tiny-llama2-optimum-fp32", BackendKind::Tract, KvCache::Stateful),
        ("tiny-llama2-gguf-int4", BackendKind::Tract, KvCache::Stateful),
    ];
    for (name, kind, kv) in cases {
        let m = load(name, kind);
        assert_eq!(m.served().kv_cache, kv, "{name} on {kind}");
        // Random-weight models fall into loops: what they loop over, the lookup finds.
        let prompt = if name == "tiny-gguf-fused" { passage() } else { vec![1, 450, 4996, 17354, 1701, 29916] };
        let (plain, spec, (drafted, kept)) = with_and_without_lookup(&m, &prompt, &SamplingParams::greedy(80));
        assert_eq!(spec, plain, "{name} on {kind}");
        assert!(drafted > 0 && kept > 0, "{name} on {kind}: {kept} of {drafted} draft tokens kept");
        eprintln!("{name} on {kind}: {kept} of {drafted} draft tokens kept");
    }
}

/// Sampling: the same seed draws the same random numbers in the same order, so the output is
/// the plain sampled output (and therefore from the same distribution).
#[test]
fn prompt_lookup_samples_what_plain_decoding_samples_with_the_same_seed() {
    for (name, kind) in
        [("tiny-gguf-fused", BackendKind::Onnxruntime), ("tiny-llama2-optimum-fp32", BackendKind::Tract)]
    {
        let m = load(name, kind);
        let prompt = if name == "tiny-gguf-fused" { passage() } else { vec![1, 450, 4996, 17354, 1701, 29916] };
        for seed in [1, 2, 3] {
            let params =
                SamplingParams { temperature: 0.7, top_k: 20, seed: Some(seed), max_tokens: 60, ..Default::default() };
            let (plain, spec, (drafted, _)) = with_and_without_lookup(&m, &prompt, &params);
            assert_eq!(spec, plain, "{name} on {kind}, seed {seed} ({drafted} drafted)");
        }
    }
}

/// A sequence rolled back forgets what came after: its next logits are those of a sequence
/// that never saw it.
#[test]
fn a_truncated_sequence_continues_as_if_the_tokens_had_never_been_fed() {
    let cases = [
        ("tiny-gguf-fused", BackendKind::Onnxruntime),
        ("tiny-llama2-optimum-fp32", BackendKind::Onnxruntime),
        ("tiny-llama2-optimum-fp32", BackendKind::Tract),
    ];
    for (name, kind) in cases {
        let m = load(name, kind);
        let ids = [1u32, 300, 301, 302, 303, 304];
        let (mut a, mut b) = (vec![], vec![]);
        let mut seq = m.backend.clone().new_sequence().unwrap();
        seq.forward(&ids, &mut a).unwrap();
        seq.forward(&[400, 401, 402], &mut a).unwrap();
        seq.truncate(ids.len()).unwrap();
        assert_eq!(seq.position(), ids.len());
        seq.forward(&[305], &mut a).unwrap();
        let mut fresh = m.backend.clone().new_sequence().unwrap();
        fresh.forward(&ids, &mut b).unwrap();
        fresh.forward(&[305], &mut b).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-4, "{name} on {kind}: {}", max_abs_diff(&a, &b));
        assert!(seq.truncate(ids.len() + 5).is_err(), "{name} on {kind}: past the end");
    }
}

/// Where a backend cannot roll back (tract's GroupQueryAttention runs one token a step), the
/// request still runs, plainly: no draft is verified.
#[test]
fn prompt_lookup_falls_back_to_plain_decoding_where_the_cache_cannot_roll_back() {
    let m = load("tiny-llama2-genai-int4-unfused", BackendKind::Tract);
    let prompt = vec![1, 450, 4996, 17354, 1701, 29916];
    let (plain, spec, (drafted, _)) = with_and_without_lookup(&m, &prompt, &SamplingParams::greedy(30));
    assert_eq!(spec, plain);
    assert_eq!(drafted, 0);
}

/// ONNX Runtime's shared KV buffer starts small and grows as the sequence does: a sequence
/// that grew step by step past its first capacity (256 positions) computes what one fed the
/// same tokens at once computes.
#[test]
fn the_shared_kv_buffer_grows_without_changing_results() {
    let m = load("tiny-gguf-fused", BackendKind::Onnxruntime);
    assert!(m.dir.spec.context_length > 300);
    let ids: Vec<u32> = (0..300u32).map(|i| 259 + (i * 7 + 3) % 250).collect();
    let (mut a, mut b) = (vec![], vec![]);
    let mut whole = m.backend.clone().new_sequence().unwrap();
    whole.forward(&ids, &mut a).unwrap();
    let mut steps = m.backend.clone().new_sequence().unwrap();
    steps.forward(&ids[..250], &mut b).unwrap();
    for &t in &ids[250..] {
        steps.forward(&[t], &mut b).unwrap();
    }
    assert_eq!(steps.position(), 300);
    assert!(max_abs_diff(&a, &b) < 1e-3, "{}", max_abs_diff(&a, &b));
}

/// The memory estimate knows that ONNX Runtime packs `accuracy_level` 4 weights into a larger
/// layout and keeps the tied head's codes for the embedding too (fused graphs were estimated
/// 23-28 % low before; now 5-9 %, models/bench-memory.sh).
#[test]
fn the_memory_estimate_counts_the_int8_packing_of_the_fused_graph() {
    use llamad::engine::ModelDir;
    use llamad::memory::estimate::Estimate;
    let dir = ModelDir::open(&fixture("tiny-gguf-fused")).unwrap();
    let packed: Vec<_> = dir.graph.weights.iter().filter(|w| w.usage.int8_packed).collect();
    // q/k/v, o, gate, up and down of each of the 2 layers, and the head
    assert_eq!(packed.len(), 2 * 5 + 1);
    // the head's codes are the embedding's as well (GatherBlockQuantized reads them as they are)
    assert_eq!(packed.iter().filter(|w| w.usage.other).count(), 1);
    let packed_bytes: u64 = packed.iter().map(|w| w.bytes).sum();
    let all_bytes: u64 = dir.graph.weights.iter().map(|w| w.bytes).sum();
    let e = Estimate::for_model(&dir, BackendKind::Onnxruntime, false);
    assert!(e.weights >= all_bytes + packed_bytes / 4, "{} < {all_bytes} + {packed_bytes} / 4", e.weights);
}
