//! The same tiny random-weight Llama (real Llama 2 tokenizer, GQA 2:1, head
//! size 16) exported by the onnxruntime-genai builder (fp32, int4) and by
//! Optimum (fp32): every layout against onnxruntime's own Python run
//! (REFERENCE.json) and against each other, on both backends where they load.

mod common;
use common::*;
use llamad::engine::{BackendKind, Layout, Model, Quantization};

struct Case {
    prompt: Vec<u32>,
    steps: usize,
}

fn case() -> Case {
    let r = reference();
    let ids = r["tiny_llama2"]["prompt_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    Case { prompt: ids, steps: r["tiny_llama2"]["new_tokens"].as_u64().unwrap() as usize }
}

fn expected(fixture: &str) -> (Vec<u32>, Vec<f32>) {
    let f = &reference()["tiny_llama2"]["fixtures"][fixture];
    let ids = f["greedy_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let l16 = f["last_prompt_logits_first16"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    (ids, l16)
}

/// Greedy ids and the logits after the prompt match onnxruntime's Python run of the same file.
fn check_against_python(model: &Model, fixture: &str, tol: f32) {
    let c = case();
    let (ids, logits) = greedy(model, &c.prompt, c.steps);
    let (want_ids, want16) = expected(fixture);
    let d = max_abs_diff(&logits[0][..16], &want16);
    assert!(d < tol, "{fixture} on {}: first logits differ by {d}", model.served().backend);
    assert_eq!(ids, want_ids, "{fixture} on {}", model.served().backend);
}

#[test]
fn layouts_are_recognised_from_files_and_graphs() {
    let g = load("tiny-llama2-genai-int4", BackendKind::Onnxruntime);
    assert_eq!(g.dir.layout, Layout::GenAi);
    assert_eq!(g.dir.quantization, Quantization::Int4 { block_size: 32 });
    assert_eq!((g.dir.spec.heads, g.dir.spec.kv_heads, g.dir.spec.head_dim, g.dir.spec.layers), (2, 1, 16, 2));
    assert_eq!(g.dir.io.position_ids, None, "the builder's graph takes no position_ids");
    assert_eq!(g.dir.spec.eos_ids, vec![2]);
    let o = load("tiny-llama2-optimum-fp32", BackendKind::Onnxruntime);
    assert_eq!(o.dir.layout, Layout::Optimum);
    assert_eq!(o.dir.quantization, Quantization::F32);
    assert_eq!(o.dir.io.position_ids.as_deref(), Some("position_ids"));
    assert_eq!(o.dir.spec.context_length, 256);
}

#[test]
fn kv_cache_is_kept_in_place_where_the_graph_allows() {
    use llamad::engine::backend::KvCache;
    // The builder's CPU graphs set past_present_share_buffer: one buffer, bound as past and present.
    assert_eq!(load("tiny-llama2-genai-int4", BackendKind::Onnxruntime).served().kv_cache, KvCache::SharedBuffer);
    assert_eq!(load("tiny-llama2-optimum-fp32", BackendKind::Onnxruntime).served().kv_cache, KvCache::Moved);
    assert_eq!(load("tiny-llama2-optimum-fp32", BackendKind::Tract).served().kv_cache, KvCache::Stateful);
    assert_eq!(load("tiny-llama2-genai-int4-unfused", BackendKind::Tract).served().kv_cache, KvCache::Explicit);
}

#[test]
fn onnxruntime_matches_python_on_every_layout() {
    for f in [
        "tiny-llama2-genai-fp32",
        "tiny-llama2-genai-int4-unfused",
        "tiny-llama2-genai-int4",
        "tiny-llama2-optimum-fp32",
    ] {
        let model = load(f, BackendKind::Onnxruntime);
        if cfg!(target_arch = "aarch64") && f.contains("int4") {
            // The reference was made on x86-64. These graphs ask `MatMulNBits` for int8
            // activations (accuracy_level 4), which ONNX Runtime's aarch64 kernels quantize
            // and accumulate differently: the first logits move by up to about 0.07 (0.072
            // measured under qemu-aarch64) and this random-weight model's near-ties then send
            // greedy decoding elsewhere after a few tokens. The first logits are held to that;
            // the int4 path is checked against fp32 (`int4_stays_close_to_fp32`) and, at
            // accuracy_level 0, against tract
            // (`tract_runs_the_builders_unfused_int4_output_like_onnxruntime`).
            let (_, logits) = greedy(&model, &case().prompt, 1);
            let d = max_abs_diff(&logits[0][..16], &expected(f).1);
            assert!(d < 0.15, "{f} on onnxruntime (aarch64): first logits differ by {d}");
            continue;
        }
        check_against_python(&model, f, 1e-4);
    }
}

#[test]
fn tract_matches_python_on_the_optimum_export() {
    check_against_python(&load("tiny-llama2-optimum-fp32", BackendKind::Tract), "tiny-llama2-optimum-fp32", 1e-4);
}

#[test]
fn builder_and_optimum_exports_of_the_same_weights_agree() {
    let c = case();
    let (gi, gl) = greedy(&load("tiny-llama2-genai-fp32", BackendKind::Onnxruntime), &c.prompt, c.steps);
    let (oi, ol) = greedy(&load("tiny-llama2-optimum-fp32", BackendKind::Tract), &c.prompt, c.steps);
    let worst = gl.iter().zip(&ol).map(|(a, b)| max_abs_diff(a, b)).fold(0.0, f32::max);
    eprintln!("tiny-llama2 genai fp32 (onnxruntime) vs optimum fp32 (tract): max |Δlogit| {worst:e}");
    assert!(worst < 1e-4);
    assert_eq!(gi, oi);
}

#[test]
fn int4_stays_close_to_fp32() {
    // Random weights (std 0.2) in a 32-wide model are the worst case for 4-bit blocks of
    // 32: the builder's int4 moves logits (range ±5) by up to ~2.6 (also measured in
    // Python). Compared along the fp32 path, the bound below separates that noise from a
    // broken int4 path (cosine near 0).
    let c = case();
    let f = load("tiny-llama2-genai-fp32", BackendKind::Onnxruntime);
    let q = load("tiny-llama2-genai-int4", BackendKind::Onnxruntime);
    let (path, _) = greedy(&f, &c.prompt, c.steps);
    let (mut sf, mut sq) = (f.backend.clone().new_sequence().unwrap(), q.backend.clone().new_sequence().unwrap());
    let (mut lf, mut lq) = (vec![], vec![]);
    sf.forward(&c.prompt, &mut lf).unwrap();
    sq.forward(&c.prompt, &mut lq).unwrap();
    let (mut worst, mut min_cos) = (max_abs_diff(&lf, &lq), cosine(&lf, &lq));
    for &t in &path {
        sf.forward(&[t], &mut lf).unwrap();
        sq.forward(&[t], &mut lq).unwrap();
        worst = worst.max(max_abs_diff(&lf, &lq));
        min_cos = min_cos.min(cosine(&lf, &lq));
    }
    eprintln!("tiny-llama2 int4 vs fp32: max |Δlogit| {worst}, min cosine {min_cos}");
    assert!(worst < 4.0, "{worst}");
    assert!(min_cos > 0.8, "{min_cos}");
}

/// Logits of `a` and `b` fed the same tokens: the prompt, then `a`'s greedy path.
fn compare_along_path(a: &Model, b: &Model, prompt: &[u32], steps: usize) -> (f32, usize) {
    let (path, la) = greedy(a, prompt, steps);
    let mut s = b.backend.clone().new_sequence().unwrap();
    let mut lb = vec![];
    s.forward(prompt, &mut lb).unwrap();
    let (mut worst, mut top1) = (0.0f32, 0);
    for (i, &t) in path.iter().enumerate() {
        worst = worst.max(max_abs_diff(&la[i], &lb));
        top1 += (llamad::engine::sampler::argmax(&lb) == t) as usize;
        s.forward(&[t], &mut lb).unwrap();
    }
    (worst, top1)
}

/// A copy of `fixture` whose MatMulNBits nodes compute in float (accuracy_level 0).
fn with_float_accuracy(fixture_name: &str) -> tempfile::TempDir {
    use prost::Message;
    use tract_onnx::prelude::Framework;
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(fixture_name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let path = tmp.path().join("model.onnx");
    let mut proto = tract_onnx::onnx().proto_model_for_path(&path).unwrap();
    let mut patched = 0;
    for node in &mut proto.graph.as_mut().unwrap().node {
        for a in node.attribute.iter_mut().filter(|a| node.op_type == "MatMulNBits" && a.name == "accuracy_level") {
            a.i = 0;
            patched += 1;
        }
    }
    assert!(patched > 0);
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    tmp
}

#[test]
fn tract_runs_the_builders_unfused_int4_output_like_onnxruntime() {
    let c = case();
    let f = "tiny-llama2-genai-int4-unfused";
    // The builder asks onnxruntime for accuracy_level 4 (activations quantized to int8 inside
    // MatMulNBits); tract computes in float. Against the same file at accuracy_level 0 the two
    // must agree closely; against the file as built they differ by onnxruntime's int8 noise.
    let exact = with_float_accuracy(f);
    let o = Model::load(exact.path(), BackendKind::Onnxruntime, &opts(BackendKind::Onnxruntime), true).unwrap();
    let t = load(f, BackendKind::Tract);
    let (worst, top1) = compare_along_path(&o, &t, &c.prompt, c.steps);
    eprintln!("{f}: max |tract - onnxruntime (accuracy_level 0)| {worst:e}, top-1 {top1}/{}", c.steps);
    // Measured 3.5e-3 (tract rounds the int4 block scales through f16): bound at 1e-2.
    assert!(worst < 1e-2, "{worst}");
    assert_eq!(top1, c.steps);
    let (worst4, top1_4) = compare_along_path(&load(f, BackendKind::Onnxruntime), &t, &c.prompt, c.steps);
    eprintln!("{f}: max |tract - onnxruntime (accuracy_level 4, as built)| {worst4:e}, top-1 {top1_4}/{}", c.steps);
    assert!(worst4 < 0.5, "{worst4}");
}

#[test]
fn tract_names_the_builder_option_for_fused_qkv() {
    for f in ["tiny-llama2-genai-fp32", "tiny-llama2-genai-int4"] {
        let e = Model::load(&fixture(f), BackendKind::Tract, &opts(BackendKind::Tract), false).err().unwrap();
        let msg = e.to_string();
        assert!(msg.contains("GroupQueryAttention") && msg.contains("fuse_qkv=false"), "{f}: {msg}");
        assert!(msg.contains("onnxruntime backend"), "{msg}");
    }
}

#[test]
fn the_converters_int4_output_runs_on_both_backends() {
    // models/gguf_to_onnx.py on a Q4_0 GGUF of the same tiny Llama: MatMulNBits in the
    // Optimum layout, float16 embedding rows, float head. Both backends against
    // onnxruntime's Python run of the same file.
    let f = "tiny-llama2-gguf-int4";
    check_against_python(&load(f, BackendKind::Onnxruntime), f, 1e-4);
    let t = load(f, BackendKind::Tract);
    assert_eq!(t.served().kv_cache, llamad::engine::backend::KvCache::Stateful);
    check_against_python(&t, f, 1e-2);
    let c = case();
    let (worst, top1) = compare_along_path(&load(f, BackendKind::Onnxruntime), &t, &c.prompt, c.steps);
    eprintln!("{f}: max |tract - onnxruntime| {worst:e}, top-1 {top1}/{}", c.steps);
    assert!(worst < 1e-2, "{worst}");
}

#[test]
fn block_quant_on_an_optimum_export_explains_itself() {
    let opts = llamad::engine::LoadOptions { tract_block_quant: true, ..opts(BackendKind::Tract) };
    let e = Model::load(&fixture("tiny-llama2-optimum-fp32"), BackendKind::Tract, &opts, false).err().unwrap();
    let msg = e.to_string();
    assert!(msg.contains("block_quant") && msg.contains("gguf_to_onnx.py"), "{msg}");
}
