//! The graph's weights and how each is used, read from the protobuf: what
//! the memory estimate needs to predict what a backend keeps of them (a packed
//! copy for a float MatMul, a folded transpose of a tied embedding, quantized
//! blocks kept as they are).

use std::collections::HashMap;

use super::proto as pb;

/// How the graph reads a weight. A tied embedding, for example, is read by a
/// Gather (`direct_other`) and, transposed, by the head's MatMul
/// (`transposed_into_matmul`); or, as the builder writes it, the other way round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Use {
    /// As the right-hand side of a MatMul: `[K, N]`.
    pub matmul: bool,
    /// By a Transpose whose output is a MatMul's right-hand side.
    pub transposed_into_matmul: bool,
    /// By a Transpose whose output goes anywhere else.
    pub transposed_other: bool,
    /// By a quantized operator (MatMulNBits, MatMulInteger, GatherBlockQuantized).
    pub quantized: bool,
    /// As the weights of a `MatMulNBits` with `accuracy_level` 4, which ONNX Runtime packs
    /// for its int8 kernels (a copy in its own layout; the original goes unless read otherwise).
    pub int8_packed: bool,
    /// By anything else (Gather, GatherBlockQuantized, norms, shape arithmetic): as it is.
    pub other: bool,
}

impl Use {
    /// Read in more than one way (a runtime cannot replace it by one derived copy).
    pub fn shared(&self) -> bool {
        [self.matmul, self.transposed_into_matmul, self.transposed_other, self.quantized, self.other]
            .iter()
            .filter(|&&u| u)
            .count()
            > 1
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Weight {
    pub dims: Vec<u64>,
    pub bytes: u64,
    pub float: bool,
    /// Stored in an external data file rather than inside model.onnx.
    pub external: bool,
    pub usage: Use,
}

/// Bytes per element of an ONNX `TensorProto.DataType` (0 when unknown).
fn elem_size(data_type: i32) -> u64 {
    match data_type {
        2 | 3 | 9 => 1,       // uint8, int8, bool
        4 | 5 | 10 | 16 => 2, // uint16, int16, float16, bfloat16
        1 | 6 | 12 => 4,      // float, int32, uint32
        7 | 11 | 13 => 8,     // int64, double, uint64
        _ => 0,
    }
}

/// Each initializer with its size and use.
pub fn classify(graph: &pb::GraphProto) -> Vec<Weight> {
    // tensor name → (op type, input index, accuracy_level 4) of each consumer
    let mut consumers: HashMap<&str, Vec<(&str, usize, bool)>> = HashMap::new();
    // tensor name → outputs of the Transpose nodes that read it
    let mut transposed: HashMap<&str, Vec<&str>> = HashMap::new();
    for node in &graph.node {
        let int8 = node.attribute.iter().any(|a| a.name == "accuracy_level" && a.i == 4);
        for (i, input) in node.input.iter().enumerate() {
            consumers.entry(input.as_str()).or_default().push((node.op_type.as_str(), i, int8));
        }
        if node.op_type == "Transpose"
            && let Some(input) = node.input.first()
        {
            transposed.entry(input.as_str()).or_default().extend(node.output.iter().map(String::as_str));
        }
    }
    let is_matmul_rhs = |tensor: &str| {
        consumers.get(tensor).is_some_and(|c| !c.is_empty() && c.iter().all(|&(op, i, _)| op == "MatMul" && i == 1))
    };
    graph
        .initializer
        .iter()
        .map(|t| {
            let dims: Vec<u64> = t.dims.iter().map(|&d| d.max(0) as u64).collect();
            let bytes = dims.iter().fold(elem_size(t.data_type), |n, &d| n.saturating_mul(d));
            let float = matches!(t.data_type, 1 | 10 | 16);
            let mut usage = Use::default();
            for &(op, i, int8) in consumers.get(t.name.as_str()).map(Vec::as_slice).unwrap_or_default() {
                match (op, i) {
                    ("MatMul", 1) => usage.matmul = true,
                    ("MatMulNBits", 1) if int8 => (usage.quantized, usage.int8_packed) = (true, true),
                    ("GatherBlockQuantized", _) => (usage.quantized, usage.other) = (true, true),
                    ("MatMulNBits" | "MatMulInteger", _) => usage.quantized = true,
                    ("Transpose", _) => {}
                    _ => usage.other = true,
                }
            }
            for out in transposed.get(t.name.as_str()).map(Vec::as_slice).unwrap_or_default() {
                if is_matmul_rhs(out) {
                    usage.transposed_into_matmul = true;
                } else {
                    usage.transposed_other = true;
                }
            }
            Weight { dims, bytes, float, external: t.data_location == Some(1), usage }
        })
        .collect()
}
