//! Shared helpers for the integration tests: fixture paths, load options for
//! each backend, reference data written when the fixtures were made.
#![allow(dead_code)]

pub mod bus;
pub mod cgroup;
pub mod client;
pub mod mock;
pub mod sizes;
pub mod users;
pub mod widen;

use std::path::PathBuf;

use llamad::engine::backend::onnxruntime::locate_library;
use llamad::engine::{BackendKind, LoadOptions, Model};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("models/fixtures").join(name)
}

/// A writable copy of a fixture directory.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

/// A copy of fixture `name` whose config holds `context` tokens (the tiny random-weight
/// models know no trained length, and their graphs compute the rotary embedding for any
/// position), for prompts longer than the fixture's 256.
pub fn with_context(name: &str, context: u64) -> tempfile::TempDir {
    let tmp = copy_fixture(name);
    let config = tmp.path().join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["max_position_embeddings"] = context.into();
    std::fs::write(&config, c.to_string()).unwrap();
    tmp
}

pub fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("models/fixtures/REFERENCE.json")).expect("REFERENCE.json");
    serde_json::from_str(&text).unwrap()
}

/// The 99 greedy ids of stories260K from [1] (llama2.c's run.c).
pub fn stories_reference_ids() -> Vec<u32> {
    let text = std::fs::read_to_string(repo().join("models/stories260k_reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["greedy_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Options for `kind`, single-threaded (tests run in parallel). The ONNX
/// Runtime library must be present: `tests/run` provides it.
pub fn opts(kind: BackendKind) -> LoadOptions {
    if kind == BackendKind::Onnxruntime
        && let Err(e) = locate_library(None)
    {
        panic!("ONNX Runtime library not found ({e}); run the suite through tests/run");
    }
    LoadOptions { threads: Some(1), ..Default::default() }
}

pub fn load(name: &str, kind: BackendKind) -> Model {
    Model::load(&fixture(name), kind, &opts(kind), false).unwrap_or_else(|e| panic!("{name} on {kind}: {e}"))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Greedy-decodes `steps` tokens after `prompt`, returning the ids and each step's logits.
pub fn greedy(model: &Model, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut seq = model.backend.clone().new_sequence().unwrap();
    let mut logits = vec![];
    seq.forward(prompt, &mut logits).unwrap();
    let (mut ids, mut all) = (vec![], vec![]);
    for _ in 0..steps {
        let id = llamad::engine::sampler::argmax(&logits);
        all.push(logits.clone());
        ids.push(id);
        seq.forward(&[id], &mut logits).unwrap();
    }
    (ids, all)
}

/// Cosine similarity of two logit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}
