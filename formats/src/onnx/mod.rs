//! A summary of an ONNX graph read from its protobuf without building it:
//! input/output names, types and shapes, operator counts, external data files
//! (with how many bytes of each the graph needs), parameter count and every
//! weight's size and use ([`weights`]). Used to recognise layouts and
//! quantization, to report model metadata, to estimate memory, and to refuse
//! corrupt or hostile files before a backend spends time on them.
//!
//! Hostile input: decoding skips tensor contents ([`proto`]), so it allocates no
//! more than the file's own size; sizes the file claims saturate instead of
//! overflowing; external data must be a file beside the graph.

pub mod proto;
pub mod weights;

use std::collections::BTreeMap;
use std::path::{Component, Path};

use prost::Message;

pub use weights::{Use, Weight};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum Dim {
    Fixed(i64),
    Named(String),
    Unknown,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ValueInfo {
    pub name: String,
    /// ONNX `TensorProto.DataType` code (1 = float, 7 = int64, 9 = bool, 10 = float16).
    pub elem_type: i32,
    pub dims: Vec<Dim>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GraphSummary {
    pub inputs: Vec<ValueInfo>,
    /// Inputs that also have an initializer: fed only to override their default.
    pub defaulted_inputs: Vec<String>,
    pub outputs: Vec<ValueInfo>,
    /// Operator counts keyed by `domain::OpType` (plain `OpType` for the default domain).
    pub ops: BTreeMap<String, usize>,
    pub opset: i64,
    /// External data files (relative to the graph's directory) and how many bytes of each
    /// the graph needs (the end of its last tensor there).
    #[serde(skip)]
    pub external_needs: BTreeMap<String, u64>,
    pub external_files: Vec<String>,
    /// Bytes of the external data files, as found on disk (set by whoever reads them).
    pub external_bytes: u64,
    /// Bytes of the graph file (set by whoever reads it).
    pub file_size: u64,
    pub parameters: u64,
    /// `block_size` of the first `MatMulNBits` node.
    pub nbits_block_size: Option<u32>,
    /// Every initializer's size and use (for the memory estimate).
    #[serde(skip)]
    pub weights: Vec<Weight>,
}

pub const ONNX_FLOAT: i32 = 1;
pub const ONNX_FLOAT16: i32 = 10;

impl GraphSummary {
    pub fn has_op(&self, op: &str) -> bool {
        self.ops.contains_key(op)
    }

    pub fn input(&self, name: &str) -> Option<&ValueInfo> {
        self.inputs.iter().find(|i| i.name == name)
    }
}

/// Whether an external data location names a file inside the model directory: relative,
/// no `..`, no NUL (the exporters write a plain file name). Anything else could make a
/// backend read a file elsewhere on the system.
pub fn external_location_ok(location: &str) -> bool {
    !location.is_empty()
        && !location.contains('\0')
        && Path::new(location).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn value_info(v: &proto::ValueInfoProto) -> ValueInfo {
    let (elem_type, dims) = match v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) {
        Some(t) => {
            let dims = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match (&d.dim_value, &d.dim_param) {
                            (Some(x), _) => Dim::Fixed(*x),
                            (None, Some(p)) => Dim::Named(p.clone()),
                            (None, None) => Dim::Unknown,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (t.elem_type, dims)
        }
        None => (0, vec![]),
    };
    ValueInfo { name: v.name.clone(), elem_type, dims }
}

/// Decodes a graph's protobuf and summarizes it; the reason when it is not a usable graph.
pub fn summarize(bytes: &[u8]) -> Result<GraphSummary, String> {
    let model = proto::ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model: {e}"))?;
    let graph = model.graph.as_ref().ok_or("the file holds no graph")?;
    if graph.node.is_empty() {
        return Err("the graph has no nodes".into());
    }
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0);
    let mut ops = BTreeMap::new();
    let mut nbits_block_size = None;
    for node in &graph.node {
        let key = if node.domain.is_empty() || node.domain == "ai.onnx" {
            node.op_type.clone()
        } else {
            format!("{}::{}", node.domain, node.op_type)
        };
        if node.op_type == "MatMulNBits" && nbits_block_size.is_none() {
            nbits_block_size =
                node.attribute.iter().find(|a| a.name == "block_size").map(|a| a.i.clamp(0, u32::MAX as i64) as u32);
        }
        *ops.entry(key).or_insert(0) += 1;
    }
    let mut external: BTreeMap<String, u64> = BTreeMap::new();
    let mut parameters = 0u64;
    for t in &graph.initializer {
        // Sizes come from the file: a hostile one may claim any, so they saturate.
        let elems = t.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d.max(0) as u64));
        // Packed int4 weights (uint8 holding two values) count twice.
        let per_byte = if t.data_type == 2 && t.dims.len() == 3 { 2 } else { 1 };
        if t.dims.len() >= 2 {
            parameters = parameters.saturating_add(elems.saturating_mul(per_byte));
        }
        if t.data_location == Some(1) {
            let get = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
            let location = get("location")
                .ok_or_else(|| format!("initializer {} has external data without a location", t.name))?;
            if !external_location_ok(location) {
                return Err(format!(
                    "initializer {}: external data location {location:?} is not a file beside the graph",
                    t.name
                ));
            }
            let offset: u64 = get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
            let length: u64 = get("length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let end = external.entry(location.to_string()).or_insert(0);
            *end = (*end).max(offset.saturating_add(length));
        }
    }
    let names: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let initialized = |name: &str| names.contains(name);
    Ok(GraphSummary {
        // Old IR versions list initializers among the inputs: they need not be fed (a runtime
        // may override them: `defaulted_inputs`).
        inputs: graph.input.iter().filter(|i| !initialized(&i.name)).map(value_info).collect(),
        defaulted_inputs: graph.input.iter().filter(|i| initialized(&i.name)).map(|i| i.name.clone()).collect(),
        outputs: graph.output.iter().map(value_info).collect(),
        ops,
        opset,
        external_files: external.keys().cloned().collect(),
        external_needs: external,
        external_bytes: 0,
        file_size: bytes.len() as u64,
        parameters,
        nbits_block_size,
        weights: weights::classify(graph),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_locations_stay_beside_the_graph() {
        for ok in ["model.onnx.data", "./model.onnx_data", "weights/part1.bin"] {
            assert!(external_location_ok(ok), "{ok}");
        }
        for bad in ["", "../x", "/etc/passwd", "a/../../x", "a\0b", "a/.."] {
            assert!(!external_location_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(summarize(b"").unwrap_err().contains("no graph"));
        assert!(summarize(&[0xff; 64]).unwrap_err().contains("not an ONNX model"));
    }
}
