//! Memory estimates made before loading, from the model directory alone:
//! resident weights (what each backend keeps of each initializer, from how the
//! graph uses it), the tokenizer's and runtime's share, the runtime's code on
//! its first load, the load's transient peak, and per request the KV cache
//! (2 × layers × kv_heads × head_dim × 4 or 2 bytes a token, as the graph stores it) and the prompt's
//! logits. The daemon also measures each load and counts the larger of the two.

use super::packing::{tract_packed_bytes, tract_panel};
use crate::engine::{BackendKind, ModelDir};
use llamad_formats::onnx::Weight;

/// tract folds a shared constant (a tied embedding that Gather also reads) into its
/// transposed, packed copy only up to this size; above it, it repacks at every run.
const TRACT_CONST_FOLD_MAX: u64 = 4 << 20;

/// What `backend` keeps resident of the graph's weights, and what it repacks at each
/// run (held only for a moment).
fn resident_weights(weights: &[Weight], backend: BackendKind) -> (u64, u64) {
    let panel = tract_panel();
    let (mut resident, mut repacked) = (0, 0);
    for w in weights {
        let (kept, again) = match backend {
            BackendKind::Onnxruntime => (onnxruntime_keeps(w), 0),
            BackendKind::Tract => tract_keeps(w, panel),
        };
        resident += kept;
        repacked += again;
    }
    (resident, repacked)
}

/// onnxruntime folds a Transpose of a weight into a new initializer (measured: except a
/// Transpose into a MatMul of externally stored data, which it leaves to the MatMul); the
/// original stays when something else reads it. Its MatMul pre-packing replaces what it packs;
/// MatMulNBits at `accuracy_level` 4 packs into a larger layout.
fn onnxruntime_keeps(w: &Weight) -> u64 {
    let u = w.usage;
    if u.int8_packed {
        // MLAS's int8 layout: the codes, and beside them per block a float32 copy of its scale
        // and the float32 sum of its codes (8 bytes a block; the scales' own initializer
        // stays too): 1.5× the codes at block 32 (16 bytes a block), 1.25× at 64, 1.125× at
        // 128 (measured on the fused graphs of SmolLM2, the 1.1B and the 7B shape within 1 %:
        // models/bench-memory.sh). The original stays when a Gather reads it too.
        let block_bytes = w.dims.get(2).copied().filter(|&b| b > 0).unwrap_or(16);
        let packed = w.bytes + w.bytes / block_bytes * 8;
        return packed + if u.other || u.matmul { w.bytes } else { 0 };
    }
    let copies = u64::from((u.transposed_into_matmul && !w.external) || u.transposed_other);
    let original = u64::from(u.matmul || u.quantized || u.other || copies == 0);
    w.bytes * (original + copies)
}

/// tract derives a constant for each use (a packed copy for a MatMul, a transposed one
/// for a Transpose) and drops the original when nothing reads it as it is. A shared
/// constant above [`TRACT_CONST_FOLD_MAX`] is not folded: it stays, and its derived
/// copies are made again at every run.
fn tract_keeps(w: &Weight, panel: (u64, u64)) -> (u64, u64) {
    let u = w.usage;
    let f32_2d = w.float && w.dims.len() == 2 && w.bytes == w.dims[0] * w.dims[1] * 4;
    if !f32_2d {
        // Block-quantized weights are re-laid in tract's own, slightly smaller format.
        return (if u.quantized { w.bytes * 95 / 100 } else { w.bytes }, 0);
    }
    let (k, n) = (w.dims[0], w.dims[1]);
    let mut derived = 0;
    if u.matmul {
        derived += tract_packed_bytes(k, n, panel);
    }
    if u.transposed_into_matmul {
        derived += tract_packed_bytes(n, k, panel);
    }
    if u.transposed_other {
        derived += w.bytes;
    }
    let folded = !u.shared() || w.bytes <= TRACT_CONST_FOLD_MAX;
    match (folded, u.other || u.quantized || derived == 0) {
        (true, direct) => (derived + if direct { w.bytes } else { 0 }, 0),
        (false, _) => (w.bytes, derived),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub weights: u64,
    /// The tokenizer's tables, the runtime's per-model state and `runtime_code`.
    pub scratch: u64,
    /// Code pages of the runtime that its first load in the process brings in.
    pub runtime_code: u64,
    /// What a load holds for a moment above its final size.
    pub load_extra: u64,
    pub kv_per_token: u64,
    /// onnxruntime with a shared past/present buffer allocates positions in powers of two, at
    /// least 256 (`OrtSequence`'s buffer grows by doubling), up to the context.
    pub kv_doubling: bool,
    pub context: u64,
    /// Logits of one position ([vocab] floats): a prompt's are computed at once.
    pub logits_per_token: u64,
    /// Activations of one prompt token in one layer: the residual stream, norms and
    /// projections (about 6 × hidden) and the MLP (about 3 × 2.7 × hidden) in f32.
    pub activations_per_token: u64,
    /// Attention scores of one (query, key) pair over all heads.
    pub scores_per_token_pair: u64,
}

impl Estimate {
    /// `first_load`: no model has run on `backend` in this process yet, so its code pages
    /// come in with this one. Factors measured with models/bench-memory.sh (see
    /// docs/benchmarks.md).
    pub fn for_model(dir: &ModelDir, backend: BackendKind, first_load: bool) -> Estimate {
        let s = &dir.spec;
        let kv_per_token = 2 * s.layers as u64 * s.kv_heads as u64 * s.head_dim as u64 * dir.kv_element_bytes();
        let (weights, repacked) = resident_weights(&dir.graph.weights, backend);
        // The tokenizer's tables, and the runtime's per-model state (graph, plans, one
        // set of buffers per layer).
        let tokenizer = dir.tokenizer.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
        let scratch = tokenizer * 3 / 2 + (7 << 20) + s.layers as u64 * (1 << 18);
        let runtime_code = match (first_load, backend) {
            (false, _) => 0,
            (true, BackendKind::Onnxruntime) => 9 << 20,
            (true, BackendKind::Tract) => 15 << 20,
        };
        // While loading, the parsed tokenizer.json, the decoded protobuf (weights inside
        // model.onnx) and the runtime's converted copies coexist with the final weights.
        let (inline, external) = (dir.graph.file_size, dir.graph.external_bytes);
        let load_extra = tokenizer * 9
            + match backend {
                BackendKind::Onnxruntime => inline * 7 / 10 + external * 3 / 10,
                BackendKind::Tract => (inline + external) * 13 / 10 + repacked,
            };
        Estimate {
            weights,
            scratch: scratch + runtime_code,
            runtime_code,
            load_extra,
            kv_per_token,
            kv_doubling: backend == BackendKind::Onnxruntime && dir.ort_shares_kv_buffer(),
            context: s.context_length as u64,
            logits_per_token: s.vocab_size as u64 * 4,
            activations_per_token: 15 * s.hidden as u64 * 4,
            scores_per_token_pair: s.heads as u64 * 4,
        }
    }

    /// What a loaded model holds without any request.
    pub fn resident(&self) -> u64 {
        self.weights + self.scratch
    }

    /// The resident growth at the peak of loading.
    pub fn load_peak(&self) -> u64 {
        self.resident() + self.load_extra
    }

    /// The KV cache of a sequence of `total` tokens.
    pub fn kv(&self, total: u64) -> u64 {
        let positions = match self.kv_doubling {
            true => crate::engine::backend::onnxruntime::buffer_capacity(total as usize, self.context as usize) as u64,
            false => total.min(self.context),
        };
        self.kv_per_token * positions
    }

    /// What one request adds: the KV cache of `total` tokens (prompt + `max_tokens`), and
    /// while its prompt is computed, a chunk's (at most `chunk` tokens: `prefill_chunk`)
    /// logits and activations (hidden states and MLP of one layer at a time, attention
    /// scores of all heads against up to `total` positions), plus the sampler's and
    /// tokenizer's buffers.
    pub fn request(&self, prompt: u64, total: u64, chunk: u64) -> u64 {
        let fed = prompt.min(chunk.max(1));
        self.kv(total)
            + fed * (self.logits_per_token + self.activations_per_token + self.scores_per_token_pair * total)
            + (1 << 20)
    }
}
