//! Reading a model's ONNX graph from disk: the summary (`llamad_formats::onnx`,
//! the untrusted-input reader, fuzzed on its own) of the graph file, with its
//! external data files checked to exist beside it and be long enough; and the
//! full protobuf for tract, once the summary has accepted the file.

use std::path::Path;

use tract_onnx::pb;
use tract_onnx::prelude::Framework;

pub use llamad_formats::onnx::{Dim, GraphSummary, ONNX_FLOAT, ONNX_FLOAT16, ValueInfo};

use super::model_dir::{LayoutError, Quantization};

fn bad(file: &Path, reason: impl Into<String>) -> LayoutError {
    LayoutError::BadGraph { file: file.to_owned(), reason: reason.into() }
}

/// How the weights are stored, from the graph's operators.
pub fn quantization(graph: &GraphSummary) -> Quantization {
    if graph.has_op("com.microsoft::MatMulNBits") {
        Quantization::Int4 { block_size: graph.nbits_block_size.unwrap_or(32) }
    } else if graph.has_op("MatMulInteger") || graph.has_op("DynamicQuantizeLinear") {
        Quantization::Int8Dynamic
    } else if graph.outputs.iter().any(|o| o.elem_type == ONNX_FLOAT16) {
        Quantization::F16
    } else {
        Quantization::F32
    }
}

/// Decodes the protobuf of `file` as tract reads it (external data is not read).
pub fn read_proto(file: &Path) -> Result<pb::ModelProto, LayoutError> {
    tract_onnx::onnx().proto_model_for_path(file).map_err(|e| bad(file, format!("{e:#}")))
}

/// The summary of graph `file`, its external data checked.
pub fn read_graph(file: &Path) -> Result<GraphSummary, LayoutError> {
    let bytes = std::fs::read(file).map_err(|e| bad(file, e.to_string()))?;
    let mut graph = llamad_formats::onnx::summarize(&bytes).map_err(|e| bad(file, e))?;
    drop(bytes);
    let dir = file.parent().unwrap_or(Path::new("."));
    for (location, needed) in &graph.external_needs {
        let path = dir.join(location);
        let len = std::fs::metadata(&path)
            .map_err(|e| bad(file, format!("external data file {}: {e}", path.display())))?
            .len();
        if len < *needed {
            return Err(bad(
                file,
                format!("external data file {} is truncated: {len} bytes, the graph needs {needed}", path.display()),
            ));
        }
        graph.external_bytes += len;
    }
    Ok(graph)
}
