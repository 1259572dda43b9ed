//! The speed paths against their references: the converter's fused graph for ONNX
//! Runtime against the float graph of the same GGUF, its float16 KV cache against its
//! float32 one, and speculative decoding by prompt lookup against plain decoding, on both
//! backends and every KV-cache form.

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

/// The share of positions where two runs' logits pick the same top token.
fn top1_agreement(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().zip(b).filter(|(x, y)| argmax(x) == argmax(y)).count() as f32 / a.len() as f32
}

/// The largest logit difference between two runs at any position.
fn worst_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().zip(b).map(|(x, y)| max_abs_diff(x, y)).fold(0.0, f32::max)
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
    let (agree, worst) = (top1_agreement(&a, &b), worst_diff(&a, &b));
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
    let plain = run(&SamplingParams { prompt_lookup: Some(0), ..params.clone() });
    let spec = run(&SamplingParams { prompt_lookup: Some(6), ..params.clone() });
    assert_eq!(plain.stats.draft.drafted, 0);
    (plain.tokens, spec.tokens, (spec.stats.draft.drafted, spec.stats.draft.accepted))
}

/// Every backend and KV-cache form that can roll back: greedy output with prompt lookup is
/// plain greedy output, token for token, and drafts were verified and kept on the way.
#[test]
fn prompt_lookup_gives_plain_greedy_output_on_every_kv_cache_form() {
    let cases = [
        ("tiny-gguf-fused", BackendKind::Onnxruntime, KvCache::SharedBuffer),
        ("tiny-gguf-fused-f16", BackendKind::Onnxruntime, KvCache::SharedBuffer),
        ("tiny-llama2-optimum-fp32", BackendKind::Onnxruntime, KvCache::Moved),
        ("tiny-llama2-optimum-fp32", BackendKind::Tract, KvCache::Stateful),
        ("tiny-llama2-gguf-int4", BackendKind::Tract, KvCache::Stateful),
    ];
    for (name, kind, kv) in cases {
        let m = load(name, kind);
        assert_eq!(m.served().kv_cache, kv, "{name} on {kind}");
        // Random-weight models fall into loops: what they loop over, the lookup finds.
        let prompt =
            if name.starts_with("tiny-gguf-fused") { passage() } else { vec![1, 450, 4996, 17354, 1701, 29916] };
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
        ("tiny-gguf-fused-f16", BackendKind::Onnxruntime),
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
/// that grew step by step past its first capacity (256 positions) computes what one whose
/// buffer held every position from the start (its plan) computes, fed the same way. (Fed at
/// once against step by step differs by the kernels' order of operations: nothing on x86-64's
/// float32 path, up to 0.4 in a logit with aarch64's native float16 attention under the
/// int8-activation kernels.)
#[test]
fn the_shared_kv_buffer_grows_without_changing_results() {
    for name in ["tiny-gguf-fused", "tiny-gguf-fused-f16"] {
        shared_buffer_growth(name);
    }
}

fn shared_buffer_growth(name: &str) {
    let m = load(name, BackendKind::Onnxruntime);
    assert!(m.dir.spec.context_length > 300);
    let ids: Vec<u32> = (0..300u32).map(|i| 259 + (i * 7 + 3) % 250).collect();
    let run = |plan: Option<usize>| {
        let mut seq = m.backend.clone().new_sequence().unwrap();
        if let Some(p) = plan {
            seq.plan(p);
        }
        let mut logits = vec![];
        seq.forward(&ids[..250], &mut logits).unwrap();
        for &t in &ids[250..] {
            seq.forward(&[t], &mut logits).unwrap();
        }
        assert_eq!(seq.position(), 300);
        logits
    };
    let (grown, planned) = (run(None), run(Some(300)));
    assert!(max_abs_diff(&grown, &planned) < 1e-4, "{name}: {}", max_abs_diff(&grown, &planned));
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

/// Logits of every position of `ids`, fed one token at a time: every step but the first reads
/// the stored KV cache (in whatever type the graph keeps it).
fn stepped_logits(model: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut seq = model.backend.clone().new_sequence().unwrap();
    ids.iter()
        .map(|&t| {
            let mut row = vec![];
            seq.forward(&[t], &mut row).unwrap();
            row
        })
        .collect()
}

/// The float16 KV cache (`gguf_to_onnx.py`'s default for the fused graph): half the bytes a
/// token, counted as such by the estimate, and as close to the float graph as the float32
/// cache is. Stepped one token at a time, so attention reads the stored cache. Measured on
/// this fixture: against the float32 cache top-1 0.98, max |Δlogit| 0.66 (the int8-activation
/// kernels turn a rounding into a block's changed code: the float32 cache is 0.67 from the
/// float graph, the float16 one 0.62); on SmolLM2-135M
/// over models/quality/text.txt the float16 cache's agreement with the float graph is 96.8 %
/// against the float32 cache's 96.5 %, KL 0.0033 both (docs/quality.md).
#[test]
fn the_float16_kv_cache_halves_the_cache_and_matches_the_float32_one() {
    use llamad::memory::estimate::Estimate;
    let f16 = load("tiny-gguf-fused-f16", BackendKind::Onnxruntime);
    let f32 = load("tiny-gguf-fused", BackendKind::Onnxruntime);
    let float = load("tiny-gguf-fp32", BackendKind::Onnxruntime);
    assert_eq!((f16.dir.kv_cache_type(), f32.dir.kv_cache_type(), float.dir.kv_cache_type()), ("f16", "f32", "f32"));
    assert_eq!(f16.served().kv_cache, KvCache::SharedBuffer);
    let per_token = |m: &Model| Estimate::for_model(&m.dir, BackendKind::Onnxruntime, false).kv_per_token;
    let s = &f16.dir.spec;
    assert_eq!(per_token(&f16), 2 * (s.layers * s.kv_heads * s.head_dim) as u64 * 2);
    assert_eq!(per_token(&f32), 2 * per_token(&f16));
    let ids = passage();
    let (a, b, c) = (stepped_logits(&f16, &ids), stepped_logits(&f32, &ids), all_logits(&float, &ids));
    let (agree, worst) = (top1_agreement, worst_diff);
    eprintln!(
        "f16 against f32 cache: top-1 {} max |Δ| {}; against the float graph: f16 {} {}, f32 {} {}",
        agree(&a, &b),
        worst(&a, &b),
        agree(&a, &c),
        worst(&a, &c),
        agree(&b, &c),
        worst(&b, &c)
    );
    assert!(agree(&a, &b) >= 0.95 && worst(&a, &b) <= 1.0, "f16 against f32 cache");
    // the same bounds as the float32 cache's against the float graph (the test above), and no
    // farther from it than the float32 cache beyond the kernels' noise
    assert!(agree(&a, &c) >= 0.9 && worst(&a, &c) <= 2.0, "f16 cache against the float graph");
    assert!(agree(&a, &c) >= agree(&b, &c) - 0.05 && worst(&a, &c) <= worst(&b, &c) * 1.25 + 0.1);
}

/// Prompt lookup by default (no `prompt_lookup` option): on a prompt that gives something to
/// copy it drafts, and the output is plain greedy output token for token; on a short prompt,
/// or one whose text is never copied, it drafts nothing.
#[test]
fn automatic_prompt_lookup_copies_from_the_prompt_and_changes_nothing() {
    for name in ["tiny-gguf-fused", "tiny-gguf-fused-f16"] {
        let m = load(name, BackendKind::Onnxruntime);
        let cancel = AtomicBool::new(false);
        let run = |prompt: &[u32], lookup: Option<u32>| {
            let p = SamplingParams { prompt_lookup: lookup, ignore_eos: true, ..SamplingParams::greedy(40) };
            m.generate(&Prompt::Tokens(prompt.to_vec()), &p, &cancel, |_| {}).unwrap()
        };
        // the passage, the model's own continuation of it, and the passage again: what the
        // model writes next is in the prompt to copy
        let first = run(&passage(), Some(0));
        let mut grounded = passage();
        grounded.extend(&first.tokens);
        grounded.extend(&passage()[1..]);
        let (auto, plain) = (run(&grounded, None), run(&grounded, Some(0)));
        assert_eq!(auto.tokens, plain.tokens, "{name}");
        assert!(auto.stats.draft.accepted > 0, "{name}: {:?}", auto.stats.draft);
        assert_eq!(plain.stats.draft.drafted, 0);
        // shorter than AUTO_MIN_PROMPT: nothing to copy, no drafts
        let short = run(&grounded[..20], None);
        assert_eq!(short.stats.draft.drafted, 0, "{name}");
    }
}

/// The converter's `--block-size 64` (every linear layer requantized, 4.5 bits a weight with
/// its float32 scales): read as such, estimated with MLAS's layout for that block (1.25× the
/// codes), and as close to the float graph as requantizing allows. Measured on this fixture's
/// passage: top-1 0.82, max |Δlogit| 7.8. Its weights are drawn wide on purpose, and
/// requantizing them costs as much at block 32 (`onnx_eval.py` over 1,016 positions: block 32
/// asymmetric 77 %, max 10.4; block 64 73 %, 10.8; the carried-over block-32 graph 97.5 %,
/// 0.85); a wrong block layout agrees by chance (1 in 512). docs/quality.md has what it costs
/// a real model.
#[test]
fn the_block_64_graph_stays_close_to_the_float_graph() {
    use llamad::engine::ModelDir;
    use llamad::memory::estimate::Estimate;
    let b64 = load("tiny-gguf-fused-b64", BackendKind::Onnxruntime);
    assert_eq!(b64.dir.quantization.to_string(), "int4 (MatMulNBits, block 64)");
    let float = load("tiny-gguf-fp32", BackendKind::Onnxruntime);
    let ids = passage();
    let (a, b) = (stepped_logits(&b64, &ids), all_logits(&float, &ids));
    let (agree, worst) = (top1_agreement(&a, &b), worst_diff(&a, &b));
    eprintln!("block 64 against the float graph: top-1 {agree}, max |Δlogit| {worst}");
    assert!(agree >= 0.7 && worst <= 10.0, "top-1 {agree}, max |Δlogit| {worst}");
    // MLAS's int8 layout: codes (32 bytes a block of 64) + 8 bytes a block
    let dir = ModelDir::open(&fixture("tiny-gguf-fused-b64")).unwrap();
    let e = Estimate::for_model(&dir, BackendKind::Onnxruntime, false);
    let codes: u64 =
        dir.graph.weights.iter().filter(|w| w.usage.int8_packed && w.dims.get(2) == Some(&32)).map(|w| w.bytes).sum();
    assert!(codes > 0, "no block-64 MatMulNBits weights");
    let all: u64 = dir.graph.weights.iter().map(|w| w.bytes).sum();
    assert!(e.weights >= all + codes / 4, "{} < {all} + {codes} / 4", e.weights);
}
