//! The tract backend: pure Rust, no native library, the embedded default.
//!
//! Loading follows tract's causal-LM recipe: concrete input facts (batch 1, a
//! symbol S for new tokens, P for the past), typing and decluttering, then
//! `transformers_detect_all`, which turns every `past → Concat → present`
//! chain into a stateful KV-cache op. The past/present pairs then disappear
//! from the graph's interface: each [`TractSequence`] owns a tract state that
//! holds its caches, and feeds only ids, mask and positions.

use std::sync::Arc;

use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::transform::get_transform;
use tract_transformers::ops::dyn_kv_cache::DynKeyValueCacheState;

use super::{
    BackendError, BackendKind, KvCache, LoadOptions, LoadedModel, Sequence, Served, check_room, check_rows,
    check_truncate, last_rows,
};
use crate::engine::model_dir::{Layout, ModelDir, Quantization};
use crate::engine::onnx_graph::read_proto;

mod graph_fixes;

/// What a remaining graph input carries.
#[derive(Clone, Copy, Debug)]
enum Role {
    Ids,
    Mask,
    Positions,
    /// Explicit KV input: index into the sequence's cache (keys of every layer, then values).
    Past(usize),
}

pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    roles: Vec<Role>,
    /// Explicit KV mode: output `1 + j` is the present for cache slot `present_slots[j]`.
    present_slots: Vec<usize>,
    /// Feed one token per run (graphs whose attention op cannot take a prompt on a cache).
    one_token: bool,
    /// Empty-cache shape per slot, for a new sequence in explicit KV mode.
    empty_kv: Vec<usize>,
    served: Served,
    context: usize,
    executor: Executor,
}

fn load_err(reason: impl std::fmt::Display) -> BackendError {
    BackendError::Load { backend: BackendKind::Tract, reason: reason.to_string() }
}

fn unsupported(reason: impl Into<String>) -> BackendError {
    BackendError::Unsupported { backend: BackendKind::Tract, reason: reason.into() }
}

fn transform(model: &mut TypedModel, name: &str) -> Result<(), BackendError> {
    let t = get_transform(name)
        .map_err(load_err)?
        .ok_or_else(|| load_err(format!("tract transform {name} is not linked in")))?;
    model.transform(&*t).map_err(|e| load_err(format!("{name}: {e:#}")))
}

impl TractModel {
    pub fn load(dir: &ModelDir, opts: &LoadOptions) -> Result<TractModel, BackendError> {
        if dir.quantization == Quantization::Int8Dynamic {
            return Err(unsupported(
                "onnxruntime int8 quantize_dynamic models (MatMulInteger) give wrong logits and take \
                 seconds per token on tract 0.23; load this model with the onnxruntime backend, or \
                 use the fp32 export with tract's own Q4_0 (block_quant)",
            ));
        }
        if dir.io.use_cache_branch.is_some() {
            return Err(unsupported(
                "merged decoders (decoder_model_merged.onnx, an If on use_cache_branch) are not \
                 supported on tract; export with --task text-generation-with-past and no merging, \
                 or use the onnxruntime backend",
            ));
        }
        // Make sure tract-transformers' transforms are linked in (they register through inventory).
        let _ = tract_transformers::tract_transformers_registry;

        let mut proto = read_proto(&dir.onnx).map_err(load_err)?;
        if dir.layout == Layout::GenAi {
            graph_fixes::prepare_genai(&mut proto).map_err(unsupported)?;
        }
        let dir_str = dir.path.to_str().ok_or_else(|| load_err("model path is not UTF-8"))?;
        // The builder's value_info entries disagree with its own constants (a [1] constant
        // declared as a scalar); tract infers the shapes itself instead.
        let mut model = tract_onnx::onnx()
            .with_ignore_value_info(dir.layout == Layout::GenAi)
            .parse(&proto, Some(dir_str))
            .map_err(|e| load_err(format!("{e:#}")))?
            .model;
        drop(proto);

        // tract's GroupQueryAttention handles a prompt on an empty cache or one token on any
        // cache, not both under one symbol: builder graphs are planned for one token a step.
        let one_token = dir.graph.has_op("com.microsoft::GroupQueryAttention");
        let s = if one_token { 1.to_dim() } else { model.symbols.sym("S").to_dim() };
        let p = model.symbols.sym("P");
        let spec = &dir.spec;
        let io = &dir.io;
        let outlets = model.input_outlets().map_err(load_err)?.to_vec();
        for (ix, outlet) in outlets.iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let fact: InferenceFact = if name == io.input_ids || Some(&name) == io.position_ids.as_ref() {
                i64::fact([1.to_dim(), s.clone()]).into()
            } else if Some(&name) == io.attention_mask.as_ref() {
                i64::fact([1.to_dim(), p.to_dim() + s.clone()]).into()
            } else if io.past_key.contains(&name) || io.past_value.contains(&name) {
                f32::fact([1.to_dim(), spec.kv_heads.to_dim(), p.to_dim(), spec.head_dim.to_dim()]).into()
            } else {
                return Err(unsupported(format!("graph input {name} is not one llamad feeds")));
            };
            model.set_input_fact(ix, fact).map_err(load_err)?;
        }
        let mut typed = model
            .into_typed()
            .map_err(|e| unsupported(format!("tract could not type the graph: {e:#}")))?
            .into_decluttered()
            .map_err(|e| load_err(format!("{e:#}")))?;
        transform(&mut typed, "transformers_detect_all")?;
        if opts.tract_block_quant && dir.quantization == Quantization::F32 {
            transform(&mut typed, "block_quant")?;
        }
        // Inputs left after KV detection: ids, mask, positions, and any past that tract could
        // not fold into its stateful cache (kept explicit: the sequence feeds it back).
        let kv_names: Vec<&String> = io.past_key.iter().chain(&io.past_value).collect();
        let mut roles = vec![];
        for outlet in typed.input_outlets().map_err(load_err)? {
            let name = &typed.node(outlet.node).name;
            roles.push(if *name == io.input_ids {
                Role::Ids
            } else if Some(name) == io.attention_mask.as_ref() {
                Role::Mask
            } else if Some(name) == io.position_ids.as_ref() {
                Role::Positions
            } else if let Some(i) = kv_names.iter().position(|n| *n == name) {
                Role::Past(i)
            } else {
                return Err(load_err(format!("unexpected input {name} after KV-cache detection")));
            });
        }
        let explicit_kv = roles.iter().filter(|r| matches!(r, Role::Past(_))).count();
        let presents: Vec<&String> = io.present_key.iter().chain(&io.present_value).collect();
        let outlets = typed.output_outlets().map_err(load_err)?.to_vec();
        let label =
            |o: &OutletId| typed.outlet_label(*o).map(str::to_owned).unwrap_or_else(|| typed.node(o.node).name.clone());
        let logits = outlets.iter().find(|o| label(o) == io.logits).or(outlets.first()).copied();
        let mut selected = vec![logits.ok_or_else(|| load_err("the graph has no outputs"))?];
        let mut present_slots = vec![];
        if explicit_kv > 0 {
            if explicit_kv != kv_names.len() {
                return Err(unsupported(format!(
                    "tract folded only {} of {} KV-cache inputs into its cache",
                    kv_names.len() - explicit_kv,
                    kv_names.len()
                )));
            }
            for (i, name) in presents.iter().enumerate() {
                let o = outlets
                    .iter()
                    .find(|o| label(o) == **name)
                    .ok_or_else(|| load_err(format!("output {name} disappeared while loading")))?;
                selected.push(*o);
                present_slots.push(i);
            }
        }
        typed.select_output_outlets(&selected).map_err(load_err)?;
        let block_quant = opts.tract_block_quant && dir.quantization == Quantization::F32;
        let optimized = typed.into_optimized().map_err(|e| {
            if block_quant {
                unsupported(format!(
                    "block_quant (Q4_0) could not be applied to this graph: {e:#}. tract's Q4_0 needs \
                     the inner dimension of every constant MatMul to be a multiple of 32, and \
                     Optimum exports compute the rotary embedding with a small one; convert the \
                     weights with models/gguf_to_onnx.py (cos/sin tables instead), or load \
                     without block_quant"
                ))
            } else {
                load_err(format!("{e:#}"))
            }
        })?;
        let plan = optimized.into_runnable().map_err(load_err)?;
        let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
        let runtime = if block_quant {
            format!("cpu ({threads} threads, Q4_0 block_quant)")
        } else {
            format!("cpu ({threads} threads)")
        };
        let kv_cache = if present_slots.is_empty() { KvCache::Stateful } else { KvCache::Explicit };
        Ok(TractModel {
            plan,
            roles,
            present_slots,
            one_token,
            empty_kv: vec![1, spec.kv_heads, 0, spec.head_dim],
            served: Served { backend: BackendKind::Tract, provider: runtime, skipped: vec![], kv_cache },
            context: spec.context_length,
            executor,
        })
    }
}

impl LoadedModel for TractModel {
    fn served(&self) -> &Served {
        &self.served
    }

    fn new_sequence(self: Arc<Self>) -> Result<Box<dyn Sequence>, BackendError> {
        let state = TypedSimpleState::new(&self.plan).map_err(load_err)?;
        let kv = self
            .present_slots
            .iter()
            .map(|_| Tensor::zero::<f32>(&self.empty_kv).map(Tensor::into_tvalue))
            .collect::<TractResult<Vec<_>>>()
            .map_err(load_err)?;
        Ok(Box::new(TractSequence { model: self, state, kv, position: 0 }))
    }
}

pub struct TractSequence {
    model: Arc<TractModel>,
    state: TypedSimpleState,
    /// Explicit KV mode only: the cache, fed back each step.
    kv: Vec<TValue>,
    position: usize,
}

fn run_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Run { backend: BackendKind::Tract, reason: e.to_string() }
}

impl Sequence for TractSequence {
    fn forward_rows(&mut self, tokens: &[u32], rows: usize, logits: &mut Vec<f32>) -> Result<(), BackendError> {
        check_room(self.position, tokens.len(), self.model.context)?;
        check_rows(BackendKind::Tract, rows, tokens.len())?;
        if self.model.one_token && rows == 1 {
            tokens.iter().try_for_each(|t| self.run(std::slice::from_ref(t), 1, logits))
        } else if self.model.one_token {
            let mut all = Vec::with_capacity(rows * logits.len().max(1));
            for (i, t) in tokens.iter().enumerate() {
                self.run(std::slice::from_ref(t), 1, logits)?;
                if i + rows >= tokens.len() {
                    all.extend_from_slice(logits);
                }
            }
            *logits = all;
            Ok(())
        } else {
            self.run(tokens, rows, logits)
        }
    }

    fn can_truncate(&self) -> bool {
        !self.model.one_token
            && (!self.model.present_slots.is_empty()
                || self.state.op_states.iter().flatten().all(|s| s.is::<DynKeyValueCacheState>()))
    }

    /// Explicit KV: each past cut along its sequence axis. Stateful: each of tract's
    /// `DynKeyValueCache` states truncated (any other cache state is `Unsupported`,
    /// checked before anything changes).
    fn truncate(&mut self, position: usize) -> Result<(), BackendError> {
        check_truncate(self.position, position)?;
        if position == self.position {
            return Ok(());
        }
        if !self.model.present_slots.is_empty() {
            for kv in &mut self.kv {
                *kv = kv.slice(2, 0, position).map_err(run_err)?.into_tvalue();
            }
        } else {
            let caches: Vec<usize> =
                self.state.op_states.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|_| i)).collect();
            if let Some(&other) = caches
                .iter()
                .find(|&&i| !self.state.op_states[i].as_ref().is_some_and(|s| s.is::<DynKeyValueCacheState>()))
            {
                return Err(unsupported(format!(
                    "rolling back this graph's state ({:?}) is not supported",
                    self.state.op_states[other]
                )));
            }
            for i in caches {
                if let Some(s) =
                    self.state.op_states[i].as_mut().and_then(|s| s.downcast_mut::<DynKeyValueCacheState>())
                {
                    s.truncate(position).map_err(run_err)?;
                }
            }
        }
        self.position = position;
        Ok(())
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn position(&self) -> usize {
        self.position
    }
}

impl TractSequence {
    fn run(&mut self, tokens: &[u32], rows: usize, logits: &mut Vec<f32>) -> Result<(), BackendError> {
        let n = tokens.len();
        let start = self.position as i64;
        let mut inputs: TVec<TValue> = tvec![];
        for role in &self.model.roles {
            let t = match role {
                Role::Ids => tensor1(&tokens.iter().map(|&t| t as i64).collect::<Vec<_>>()),
                Role::Positions => tensor1(&(start..start + n as i64).collect::<Vec<_>>()),
                Role::Mask => tensor1(&vec![1i64; self.position + n]),
                Role::Past(i) => {
                    inputs.push(self.kv[*i].clone());
                    continue;
                }
            };
            let len = t.len();
            inputs.push(t.into_shape(&[1, len]).map_err(run_err)?.into_tvalue());
        }
        let executor = self.model.executor.clone();
        let state = &mut self.state;
        let mut outputs =
            multithread_tract_scope(executor, || state.run(inputs)).map_err(|e| run_err(format!("{e:#}")))?;
        for (j, slot) in self.model.present_slots.iter().enumerate().rev() {
            self.kv[*slot] = outputs.remove(1 + j);
        }
        let out = outputs[0].cast_to::<f32>().map_err(run_err)?;
        let view = out.try_as_plain_ram().map_err(run_err)?;
        let all = view.as_slice::<f32>().map_err(run_err)?;
        last_rows(all, *out.shape().last().unwrap_or(&0), rows, logits, |x| x).map_err(run_err)?;
        self.position += n;
        Ok(())
    }
}
