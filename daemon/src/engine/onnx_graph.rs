//! A summary of an ONNX graph read from its protobuf without building it:
//! input/output names, types and shapes, operator counts, external data files
//! (checked to exist and be long enough), parameter count. Used to recognise
//! layouts and quantization, to report model metadata and to catch truncated
//! or corrupt files before a backend spends time on them.

use std::collections::BTreeMap;
use std::path::Path;

use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use super::model_dir::{LayoutError, Quantization};

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
    pub external_files: Vec<String>,
    pub external_bytes: u64,
    pub file_size: u64,
    pub parameters: u64,
    /// `block_size` of the first `MatMulNBits` node.
    pub nbits_block_size: Option<u32>,
    /// Every initializer's size and use (for the memory estimate).
    #[serde(skip)]
    pub weights: Vec<super::weights::Weight>,
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

    pub fn quantization(&self) -> Quantization {
        if self.has_op("com.microsoft::MatMulNBits") {
            Quantization::Int4 { block_size: self.nbits_block_size.unwrap_or(32) }
        } else if self.has_op("MatMulInteger") || self.has_op("DynamicQuantizeLinear") {
            Quantization::Int8Dynamic
        } else if self.outputs.iter().any(|o| o.elem_type == ONNX_FLOAT16) {
            Quantization::F16
        } else {
            Quantization::F32
        }
    }
}

fn bad(file: &Path, reason: impl Into<String>) -> LayoutError {
    LayoutError::BadGraph { file: file.to_owned(), reason: reason.into() }
}

/// Decodes the protobuf of `file` (external data is not read, only checked).
pub fn read_proto(file: &Path) -> Result<pb::ModelProto, LayoutError> {
    tract_onnx::onnx().proto_model_for_path(file).map_err(|e| bad(file, format!("{e:#}")))
}

pub fn read_graph(file: &Path) -> Result<GraphSummary, LayoutError> {
    let file_size = std::fs::metadata(file).map_err(|e| bad(file, e.to_string()))?.len();
    let proto = read_proto(file)?;
    summarize(file, &proto, file_size)
}

/// Whether an external data location names a file inside the model directory: relative,
/// no `..`, no NUL (the exporters write a plain file name). Anything else could make a
/// backend read a file elsewhere on the system.
pub fn external_location_ok(location: &str) -> bool {
    use std::path::Component;
    !location.is_empty()
        && !location.contains('\0')
        && Path::new(location).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn value_info(v: &pb::ValueInfoProto) -> ValueInfo {
    let (elem_type, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => {
            let dims = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(pb::tensor_shape_proto::dimension::Value::DimValue(x)) => Dim::Fixed(*x),
                            Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => Dim::Named(p.clone()),
                            None => Dim::Unknown,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (t.elem_type, dims)
        }
        _ => (0, vec![]),
    };
    ValueInfo { name: v.name.clone(), elem_type, dims }
}

fn summarize(file: &Path, proto: &pb::ModelProto, file_size: u64) -> Result<GraphSummary, LayoutError> {
    let graph = proto.graph.as_ref().ok_or_else(|| bad(file, "the file holds no graph"))?;
    if graph.node.is_empty() {
        return Err(bad(file, "the graph has no nodes"));
    }
    let opset = proto
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
            nbits_block_size = node.attribute.iter().find(|a| a.name == "block_size").map(|a| a.i as u32);
        }
        *ops.entry(key).or_insert(0) += 1;
    }
    let dir = file.parent().unwrap_or(Path::new("."));
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
                .ok_or_else(|| bad(file, format!("initializer {} has external data without a location", t.name)))?;
            if !external_location_ok(location) {
                return Err(bad(
                    file,
                    format!(
                        "initializer {}: external data location {location:?} is not a file beside the graph",
                        t.name
                    ),
                ));
            }
            let offset: u64 = get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
            let length: u64 = get("length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let end = external.entry(location.to_string()).or_insert(0);
            *end = (*end).max(offset.saturating_add(length));
        }
    }
    let mut external_bytes = 0;
    for (location, needed) in &external {
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
        external_bytes += len;
    }
    Ok(GraphSummary {
        // Old IR versions list initializers among the inputs: they need not be fed (a runtime
        // may override them: `defaulted_inputs`).
        inputs: graph
            .input
            .iter()
            .filter(|i| !graph.initializer.iter().any(|t| t.name == i.name))
            .map(value_info)
            .collect(),
        defaulted_inputs: graph
            .input
            .iter()
            .filter(|i| graph.initializer.iter().any(|t| t.name == i.name))
            .map(|i| i.name.clone())
            .collect(),
        outputs: graph.output.iter().map(value_info).collect(),
        ops,
        opset,
        external_files: external.keys().cloned().collect(),
        external_bytes,
        file_size,
        parameters,
        nbits_block_size,
        weights: super::weights::classify(graph),
    })
}
