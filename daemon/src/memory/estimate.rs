//! Memory estimates made before loading, from the model directory alone:
//! resident weights (what each backend keeps of the files), KV cache per token
//! (2 × layers × kv_heads × head_dim × 4 bytes) and logits per request, and
//! the tokenizer's and runtime's share. Factors come from measurements on the fixture and demo models
//! (see the issue notes); the daemon also measures each load and uses the
//! larger of the two.

use crate::engine::{BackendKind, ModelDir, Quantization};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub weights: u64,
    pub scratch: u64,
    pub kv_per_token: u64,
    /// onnxruntime with a shared past/present buffer allocates the whole context per sequence.
    pub kv_whole_context: bool,
    pub context: u64,
    /// Logits of one position ([vocab] floats): a prompt's are computed at once.
    pub logits_per_token: u64,
}

impl Estimate {
    /// Factors measured on the fixture, demo and TinyLlama-shaped models (dev build,
    /// onnxruntime 1.32, tract 0.23.9): resident growth of a fresh daemon over one load.
    pub fn for_model(dir: &ModelDir, backend: BackendKind) -> Estimate {
        let s = &dir.spec;
        let kv_per_token = 2 * s.layers as u64 * s.kv_heads as u64 * s.head_dim as u64 * 4;
        let files = dir.file_size as f64;
        let float = matches!(dir.quantization, Quantization::F32 | Quantization::F16);
        let mut weights = match (backend, float) {
            // tract keeps the float constants and its packed copies.
            (BackendKind::Tract, true) => files * 1.65,
            (BackendKind::Tract, false) => files,
            (BackendKind::Onnxruntime, true) => files * 1.07,
            (BackendKind::Onnxruntime, false) => files * 0.95,
        } as u64;
        // On the builder's int4 graphs tract holds two float copies of a vocab × hidden
        // table besides the file's weights (measured: +514 MiB on a TinyLlama-shaped model,
        // 2 × 32000 × 2048 × 4 bytes).
        if backend == BackendKind::Tract && !float && dir.graph.has_op("com.microsoft::GroupQueryAttention") {
            weights += 2 * s.vocab_size as u64 * s.hidden as u64 * 4;
        }
        // The tokenizer's tables (a multiple of tokenizer.json) and the runtime's share per
        // model. onnxruntime's one-time setup is in the daemon's baseline (it is created
        // at start), tract's per-model state is larger.
        let tokenizer = dir.tokenizer.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
        let scratch = match backend {
            BackendKind::Onnxruntime => tokenizer * 8 + (8 << 20),
            BackendKind::Tract => tokenizer * 12 + (10 << 20),
        };
        Estimate {
            weights,
            scratch,
            kv_per_token,
            kv_whole_context: backend == BackendKind::Onnxruntime && dir.past_present_share_buffer,
            context: s.context_length as u64,
            logits_per_token: s.vocab_size as u64 * 4,
        }
    }

    /// What a loaded model holds without any request.
    pub fn resident(&self) -> u64 {
        self.weights + self.scratch
    }

    /// What one request adds: the KV cache of `total` tokens (prompt + `max_tokens`) and the
    /// logits of its prompt, computed at once.
    pub fn request(&self, prompt: u64, total: u64) -> u64 {
        self.kv_per_token * if self.kv_whole_context { self.context } else { total.min(self.context) }
            + self.logits_per_token * prompt
    }
}
