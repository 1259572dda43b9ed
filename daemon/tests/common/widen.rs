//! A larger model made by the tests themselves, never committed: the tiny
//! Optimum fixture with each layer's MLP widened from 64 to `intermediate`
//! hidden units (tens of MB of weights instead of one). The first 64 units
//! keep the fixture's weights; the added ones get random gate/up weights and
//! zero down-projection rows, so the widened model computes the fixture's
//! function and its greedy output must equal the fixture's. Weights go to
//! external data (`model.onnx_data`), as Optimum writes large models.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use tract_onnx::pb;

use super::fixture;

const SOURCE: &str = "tiny-llama2-optimum-fp32";

/// Which MLP weight an initializer is, from the MatMul that uses it.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    GateOrUp,
    Down,
}

fn floats(t: &pb::TensorProto) -> Vec<f32> {
    if t.float_data.is_empty() {
        t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    } else {
        t.float_data.clone()
    }
}

/// A small deterministic generator (xorshift64*), uniform in [-0.2, 0.2).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32;
        (x - 0.5) * 0.4
    }
}

/// Writes the widened model directory to `dst` (created). Returns the bytes of weights written.
pub fn widened_tiny_llama(dst: &Path, intermediate: usize) -> u64 {
    let src = fixture(SOURCE);
    std::fs::create_dir_all(dst).unwrap();
    let mut model = pb::ModelProto::decode(std::fs::read(src.join("model.onnx")).unwrap().as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let mut parts = HashMap::new();
    for node in &graph.node {
        let part = if node.name.ends_with("/mlp/down_proj/MatMul") {
            Part::Down
        } else if node.name.ends_with("/mlp/gate_proj/MatMul") || node.name.ends_with("/mlp/up_proj/MatMul") {
            Part::GateOrUp
        } else {
            continue;
        };
        parts.insert(node.input[1].clone(), part);
    }
    assert_eq!(parts.len(), 6, "the fixture's two layers have gate, up and down MatMuls");
    // Shapes inferred at export time name the old width: let the runtimes infer again.
    graph.value_info.clear();

    let mut rng = Rng(0x1ad_5eed);
    let mut data = Vec::new();
    for t in &mut graph.initializer {
        let old = floats(t);
        let new: Vec<f32> = match parts.get(&t.name) {
            Some(Part::GateOrUp) => {
                // [hidden, 64] → [hidden, intermediate]: each row keeps its 64 values.
                let (rows, cols) = (t.dims[0] as usize, t.dims[1] as usize);
                t.dims[1] = intermediate as i64;
                let mut w = Vec::with_capacity(rows * intermediate);
                for row in old.chunks(cols) {
                    w.extend_from_slice(row);
                    w.extend((cols..intermediate).map(|_| rng.next()));
                }
                w
            }
            Some(Part::Down) => {
                // [64, hidden] → [intermediate, hidden]: the added rows are zero.
                let cols = t.dims[1] as usize;
                t.dims[0] = intermediate as i64;
                let mut w = old;
                w.resize(intermediate * cols, 0.0);
                w
            }
            None if old.len() * 4 < 1024 => continue,
            None => old,
        };
        let offset = data.len();
        data.extend(new.iter().flat_map(|v| v.to_le_bytes()));
        while data.len() % 4096 != 0 {
            data.push(0);
        }
        t.float_data.clear();
        t.raw_data.clear();
        t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
        let entry = |k: &str, v: String| pb::StringStringEntryProto { key: k.into(), value: v };
        t.external_data = vec![
            entry("location", "model.onnx_data".into()),
            entry("offset", offset.to_string()),
            entry("length", (new.len() * 4).to_string()),
        ];
    }
    std::fs::write(dst.join("model.onnx_data"), &data).unwrap();
    std::fs::write(dst.join("model.onnx"), model.encode_to_vec()).unwrap();

    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["intermediate_size"] = intermediate.into();
    std::fs::write(dst.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    for f in ["generation_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    data.len() as u64
}

/// The tiny fixture declaring a longer context (`max_position_embeddings`), weights
/// unchanged: its rotary embedding is computed from the positions, so prompts longer
/// than the fixture's 256 tokens run, and their logits (tokens × 32000 floats) can
/// exceed anything the budget leaves.
pub fn long_context_tiny_llama(dst: &Path, context: u64) {
    let src = fixture(SOURCE);
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = context.into();
    std::fs::write(dst.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
}
