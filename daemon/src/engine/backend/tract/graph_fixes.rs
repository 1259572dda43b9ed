//! Graph-level fixes applied to onnxruntime-genai builder output before tract
//! parses it. The builder targets onnxruntime's contrib ops; tract implements
//! the ones Llama needs, but not every form the builder emits. What cannot be
//! fixed is reported by name so the user knows which export option to change.

use tract_onnx::pb;

/// `producer_name` of the converter's fused graph (models/ort_graph.py).
const FUSED_PRODUCER: &str = "llamad gguf_to_onnx (fused)";

/// Rewrites what can be rewritten, refuses what cannot (with the reason).
pub fn prepare_genai(proto: &mut pb::ModelProto) -> Result<(), String> {
    if proto.producer_name.starts_with(FUSED_PRODUCER) {
        return Err("this is models/gguf_to_onnx.py's fused graph, made for ONNX Runtime's fused CPU \
                    operators; load it with the onnxruntime backend, or convert the GGUF again with \
                    `--graph standard` for tract"
            .into());
    }
    let graph = proto.graph.as_mut().ok_or("the file holds no graph")?;
    for node in &graph.node {
        if node.op_type == "GroupQueryAttention" {
            let key_absent = node.input.get(1).is_none_or(|s| s.is_empty());
            if key_absent {
                return Err(format!(
                    "GroupQueryAttention node {} takes packed Q/K/V (the builder's default fusion), \
                     which tract does not implement; rebuild with \
                     `--extra_options fuse_qkv=false` (builders before 0.18: disable_qkv_fusion=true) \
                     or use the onnxruntime backend",
                    node.name
                ));
            }
        }
    }
    Ok(())
}
