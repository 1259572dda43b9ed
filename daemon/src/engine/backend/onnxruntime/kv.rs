//! The KV buffers of the shared-buffer path and the batch arena: one per layer and kind,
//! `[rows, kv_heads, capacity, head_dim]`, in the element type the graph declares for its
//! past inputs (float32, or float16: half the memory), allocated by ONNX Runtime and bound
//! as both past and present.

use half::f16;
use ort::memory::Allocator;
use ort::session::IoBinding;
use ort::value::Tensor;

use super::run_err;
use crate::engine::backend::BackendError;

/// The element type of a model's KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KvElem {
    F32,
    F16,
}

/// One layer's keys or values.
pub(super) enum KvBuf {
    F32(Tensor<f32>),
    F16(Tensor<f16>),
}

/// Where a buffer's lanes (a lane: one row's head, `capacity` positions of `head_dim` values)
/// start, and how many positions each holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lanes {
    pub first: usize,
    pub capacity: usize,
}

fn copy<T: Copy>(dst: &mut [T], to: Lanes, src: &[T], from: Lanes, (lanes, d, keep): (usize, usize, usize)) {
    for l in 0..lanes {
        let s = &src[(from.first + l) * from.capacity * d..][..keep * d];
        dst[(to.first + l) * to.capacity * d..][..keep * d].copy_from_slice(s);
    }
}

impl KvBuf {
    /// A cleared buffer of `shape`.
    pub fn new(elem: KvElem, shape: [usize; 4]) -> Result<KvBuf, BackendError> {
        Ok(match elem {
            KvElem::F32 => KvBuf::F32(Tensor::new(&Allocator::default(), shape).map_err(run_err)?),
            KvElem::F16 => KvBuf::F16(Tensor::new(&Allocator::default(), shape).map_err(run_err)?),
        })
    }

    /// Bound to `binding` as input `past` and output `present`.
    pub fn bind(&mut self, binding: &mut IoBinding, past: &str, present: &str) -> Result<(), BackendError> {
        match self {
            KvBuf::F32(t) => {
                binding.bind_input(past, &*t).map_err(run_err)?;
                binding.bind_output(present, t).map_err(run_err)
            }
            KvBuf::F16(t) => {
                binding.bind_input(past, &*t).map_err(run_err)?;
                binding.bind_output(present, t).map_err(run_err)
            }
        }
    }

    /// Copies the first `keep` positions of `lanes` lanes of `d` values from `src` (same type).
    pub fn copy_from(
        &mut self,
        to: Lanes,
        src: &KvBuf,
        from: Lanes,
        lanes: usize,
        d: usize,
        keep: usize,
    ) -> Result<(), BackendError> {
        match (self, src) {
            (KvBuf::F32(dst), KvBuf::F32(src)) => {
                copy(dst.extract_tensor_mut().1, to, src.extract_tensor().1, from, (lanes, d, keep))
            }
            (KvBuf::F16(dst), KvBuf::F16(src)) => {
                copy(dst.extract_tensor_mut().1, to, src.extract_tensor().1, from, (lanes, d, keep))
            }
            _ => return Err(run_err("KV buffers of different types")),
        }
        Ok(())
    }
}
