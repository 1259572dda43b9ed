//! The ONNX Runtime backend, through `ort` with the library loaded at run time
//! (`load-dynamic`): nothing is downloaded or linked at build time.
//!
//! One ONNX Runtime environment per process (a library constraint), found
//! through the configured path, `ORT_DYLIB_PATH`, or the search list in
//! [`SEARCH_DIRS`]. Execution providers are tried in the configured order.
//!
//! KV cache, two ways:
//! - graphs whose attention is onnxruntime's `GroupQueryAttention` and whose
//!   `genai_config.json` sets `past_present_share_buffer` (the builder's CPU
//!   output): one buffer per layer and kind, `[1, kv_heads, capacity, head_dim]`,
//!   bound with an `IoBinding` as both `past_*` input and `present_*` output,
//!   so each step writes only the new positions in place (what
//!   onnxruntime-genai does); the buffer starts at 256 positions and doubles
//!   as the sequence grows (the graph reads its length from the buffer);
//! - other graphs (Optimum: `present = Concat(past, new)`): each step's
//!   `present.N.*` outputs are moved, as ONNX Runtime values, into the next
//!   step's `past_key_values.N.*` inputs; nothing goes through Rust memory.
//!
//! Several sequences of a shared-buffer model decode in batches: [`batch`].

mod batch;
mod kv;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub use super::BatchCounters;
use half::f16;
use ort::environment::Environment;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use kv::{KvBuf, KvElem, Lanes};

use super::providers::{ProviderName, register};
use super::{
    BackendError, BackendKind, BatchStep, KvCache, LoadOptions, LoadedModel, Sequence, Served, check_room, check_rows,
    check_truncate, last_rows,
};
use crate::engine::model_dir::ModelDir;
use crate::engine::onnx_graph::{ONNX_FLOAT, ONNX_FLOAT16};

/// Where llamad looks for `libonnxruntime.so` when neither the config nor
/// `ORT_DYLIB_PATH` names it (first match wins; `libonnxruntime.so` or a
/// versioned `libonnxruntime.so.N...`).
pub const SEARCH_DIRS: &[&str] = &["/usr/lib/llamad", "/usr/local/lib", "/usr/lib", "/usr/lib64"];

static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
static PLUGINS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

fn find_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join("libonnxruntime.so");
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
        .collect();
    versioned.sort();
    versioned.pop()
}

/// The library that would be loaded, or why there is none.
pub fn locate_library(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(format!("configured library {} does not exist", p.display()))
        };
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("ORT_DYLIB_PATH={} does not exist", p.display())) };
    }
    SEARCH_DIRS.iter().find_map(|d| find_in(Path::new(d))).ok_or_else(|| {
        format!(
            "no libonnxruntime.so: set onnxruntime.library in the config or ORT_DYLIB_PATH, or install it in one of {}",
            SEARCH_DIRS.join(", ")
        )
    })
}

/// Whether the environment has been set up (successfully or not).
pub fn environment_tried() -> bool {
    ENV.get().is_some()
}

/// The process-wide environment, created on first use.
pub fn environment(configured: Option<&Path>) -> Result<&'static Environment, BackendError> {
    let env = ENV.get_or_init(|| {
        let lib = locate_library(configured)?;
        let builder = ort::init_from(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
        let env = builder.with_name("llamad").build().map_err(|e| format!("{}: {e}", lib.display()))?;
        tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
        Ok(env)
    });
    env.as_ref().map_err(|e| BackendError::RuntimeMissing(e.clone()))
}

/// Execution providers compiled into the loaded ONNX Runtime library (empty without one).
/// Plugin providers registered from a library are not listed here.
pub fn available_providers(configured: Option<&Path>) -> Vec<String> {
    use ort::ep::ExecutionProvider;
    if environment(configured).is_err() {
        return vec![];
    }
    type Check = fn() -> ort::Result<bool>;
    let checks: [(ProviderName, Check); 5] = [
        (ProviderName::Qnn, ort::ep::QNN::is_available),
        (ProviderName::Openvino, ort::ep::OpenVINO::is_available),
        (ProviderName::Acl, ort::ep::ACL::is_available),
        (ProviderName::Xnnpack, ort::ep::XNNPACK::is_available),
        (ProviderName::Cpu, ort::ep::CPU::is_available),
    ];
    checks.iter().filter(|(_, available)| available().unwrap_or(false)).map(|(n, _)| n.as_str().to_string()).collect()
}

fn register_plugin(env: &Environment, name: ProviderName, lib: &Path) -> Result<(), String> {
    let mut done = PLUGINS.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|(n, p)| n == name.as_str() && p == lib) {
        return Ok(());
    }
    env.register_ep_library(name.as_str(), lib).map_err(|e| format!("plugin library {}: {e}", lib.display()))?;
    done.push((name.as_str().to_string(), lib.to_owned()));
    Ok(())
}

pub struct OrtModel {
    /// `Session::run` takes `&mut`: sequences of one model take turns (or batch).
    engine: Mutex<Engine>,
    dir: ModelDir,
    served: Served,
    /// The element type of the graph's past inputs.
    kv_elem: KvElem,
    /// Past and present share one preallocated buffer (IoBinding), see the module doc.
    share_buffer: bool,
    /// One-token steps of several sequences run as one pass ([`batch`]).
    batch_decode: bool,
    counters: Mutex<BatchCounters>,
    next_id: AtomicU64,
}

/// The session and the KV caches of the sequences that decode in batches.
struct Engine {
    session: Session,
    arena: batch::Arena,
}

fn load_err(reason: impl std::fmt::Display) -> BackendError {
    BackendError::Load { backend: BackendKind::Onnxruntime, reason: reason.to_string() }
}

fn run_err(reason: impl std::fmt::Display) -> BackendError {
    BackendError::Run { backend: BackendKind::Onnxruntime, reason: reason.to_string() }
}

impl OrtModel {
    pub fn load(dir: &ModelDir, opts: &LoadOptions) -> Result<OrtModel, BackendError> {
        for p in &opts.providers {
            p.validate().map_err(load_err)?;
        }
        let env = environment(opts.ort_library.as_deref())?;
        let mut builder = Session::builder(env).map_err(load_err)?;
        if let Some(n) = opts.threads {
            builder = builder.with_intra_threads(n).map_err(|e| load_err(e.to_string()))?;
        }
        let mut skipped = vec![];
        let mut provider = None;
        for p in &opts.providers {
            if p.name == ProviderName::Cpu {
                provider = Some("cpu".to_string());
                break;
            }
            if let Some(lib) = &p.library
                && let Err(reason) = register_plugin(env, p.name, lib)
            {
                tracing::warn!(model = %dir.name(), provider = p.name.as_str(), %reason, "execution provider skipped");
                skipped.push((p.name.as_str().to_string(), reason));
                continue;
            }
            let (b, result) = register(env, builder, p);
            builder = b;
            match result {
                Ok(()) => {
                    provider = Some(p.name.as_str().to_string());
                    break;
                }
                Err(reason) => {
                    tracing::warn!(model = %dir.name(), provider = p.name.as_str(), %reason, "execution provider skipped");
                    skipped.push((p.name.as_str().to_string(), reason));
                }
            }
        }
        let provider = provider.unwrap_or_else(|| "cpu".to_string());
        tracing::info!(model = %dir.name(), %provider, "ONNX Runtime session");
        let session = builder.commit_from_file(&dir.onnx).map_err(|e| load_err(e.to_string()))?;
        let past = dir.graph.input(&dir.io.past_key[0]);
        if let Some(i) = past
            && i.elem_type != ONNX_FLOAT
            && i.elem_type != ONNX_FLOAT16
        {
            return Err(BackendError::Unsupported {
                backend: BackendKind::Onnxruntime,
                reason: format!("KV cache element type {} (only float32 and float16 are supported)", i.elem_type),
            });
        }
        let share_buffer = dir.ort_shares_kv_buffer();
        let logits_f32 =
            dir.graph.outputs.iter().find(|o| o.name == dir.io.logits).is_some_and(|o| o.elem_type == ONNX_FLOAT);
        Ok(OrtModel {
            engine: Mutex::new(Engine { session, arena: Default::default() }),
            batch_decode: opts.batch_decode && share_buffer && logits_f32,
            counters: Default::default(),
            next_id: AtomicU64::new(1),
            dir: dir.clone(),
            served: Served {
                backend: BackendKind::Onnxruntime,
                provider,
                skipped,
                kv_cache: if share_buffer { KvCache::SharedBuffer } else { KvCache::Moved },
            },
            kv_elem: if dir.kv_f16() { KvElem::F16 } else { KvElem::F32 },
            share_buffer,
        })
    }

    /// The logits' width: the graph's declared last dimension, else the configs' vocabulary.
    fn vocab(&self) -> usize {
        let declared =
            self.dir.graph.outputs.iter().find(|o| o.name == self.dir.io.logits).and_then(|o| match o.dims.last() {
                Some(crate::engine::onnx_graph::Dim::Fixed(n)) if *n > 0 => Some(*n as usize),
                _ => None,
            });
        declared.unwrap_or(self.dir.spec.vocab_size)
    }

    fn empty_past(&self) -> Result<DynValue, BackendError> {
        let s = &self.dir.spec;
        let shape = [1usize, s.kv_heads, 0, s.head_dim];
        Ok(if self.kv_elem == KvElem::F16 {
            Tensor::<f16>::from_array((shape, Vec::<f16>::new())).map_err(run_err)?.into_dyn()
        } else {
            Tensor::<f32>::from_array((shape, Vec::<f32>::new())).map_err(run_err)?.into_dyn()
        })
    }
}

impl LoadedModel for OrtModel {
    fn served(&self) -> &Served {
        &self.served
    }

    fn new_sequence(self: Arc<Self>) -> Result<Box<dyn Sequence>, BackendError> {
        let n = self.dir.spec.layers * 2;
        let kv = if self.share_buffer {
            self.own_buffers(FIRST_CAPACITY, vec![], 0, 0)?
        } else {
            let mut past = Vec::with_capacity(n);
            for _ in 0..n {
                past.push(self.empty_past()?);
            }
            Kv::Moved(past)
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let planned = self.dir.spec.context_length;
        Ok(Box::new(OrtSequence { model: self, kv, position: 0, id, since_drafts: REJOIN_AFTER, planned }))
    }

    fn batch_counters(&self) -> BatchCounters {
        OrtModel::batch_counters(self)
    }

    fn step_batch(&self, steps: &mut [BatchStep<'_>]) -> Vec<Result<(), BackendError>> {
        OrtModel::step_batch(self, steps)
    }
}

pub struct OrtSequence {
    model: Arc<OrtModel>,
    kv: Kv,
    position: usize,
    id: u64,
    /// One-token steps since it last verified drafts (logits of several rows): it may decode in
    /// batches again after [`REJOIN_AFTER`] of them.
    since_drafts: usize,
    /// The most positions it will hold ([`Sequence::plan`]; the context until told).
    planned: usize,
}

enum Kv {
    /// Key 0, value 0, key 1, value 1, ...: last step's present values.
    Moved(Vec<DynValue>),
    /// Keys of every layer, then values, `[1, kv_heads, capacity, head_dim]` each; bound as both
    /// past and present.
    Shared {
        binding: Box<IoBinding>,
        cpu: MemoryInfo<'static>,
        buffers: Vec<KvBuf>,
        capacity: usize,
        one_row: Option<Tensor<f32>>,
    },
    /// In the model's batch arena, as row `OrtSequence::id`.
    Batched,
}

/// One-token steps after its last verification of drafts before a sequence may join the batch
/// arena again: a sequence that keeps verifying drafts (prompt lookup asked for) would leave and
/// rejoin, copying its cache each time, so it stays out; one whose drafting stopped (automatic
/// lookup drafts nothing while batched with others) comes back.
pub const REJOIN_AFTER: usize = 16;

/// Positions a shared KV buffer holds at first; it doubles (up to the context) as the sequence
/// grows, so its memory follows what the sequence uses, not the model's whole context (8192
/// positions of SmolLM2 are 377 MiB, and `Tensor::new` clears what it allocates).
const FIRST_CAPACITY: usize = 256;

/// Positions a sequence's own shared buffer holds for `positions`: a power of two, at least
/// [`FIRST_CAPACITY`], at most the context.
pub fn buffer_capacity(positions: usize, context: usize) -> usize {
    positions.max(FIRST_CAPACITY).next_power_of_two().min(context)
}

impl OrtModel {
    /// A sequence's own shared KV buffers (`capacity` positions at least `FIRST_CAPACITY`,
    /// at most the context), holding what [`OrtModel::shared_buffers`] copies.
    fn own_buffers(
        &self,
        capacity: usize,
        old: Vec<KvBuf>,
        old_capacity: usize,
        keep: usize,
    ) -> Result<Kv, BackendError> {
        let mut binding =
            self.engine.lock().unwrap_or_else(|e| e.into_inner()).session.create_binding().map_err(run_err)?;
        let capacity = buffer_capacity(capacity, self.dir.spec.context_length);
        let buffers = self.shared_buffers(&mut binding, capacity, old, old_capacity, keep)?;
        let cpu =
            MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::CPUOutput).map_err(run_err)?;
        // One row of logits, written in place by each step that asks for one row (the graphs
        // with `logits_to_keep`): no output allocated per token.
        let one_row = match &self.dir.io.logits_to_keep {
            Some(_) => Some(Tensor::<f32>::new(&Allocator::default(), [1usize, 1, self.vocab()]).map_err(run_err)?),
            None => None,
        };
        Ok(Kv::Shared { binding: Box::new(binding), cpu, buffers, capacity, one_row })
    }

    /// Shared KV buffers of `capacity` positions, bound to `binding`, holding the first `keep`
    /// positions of `old` (buffers of `old_capacity` positions). Each old buffer goes as soon as
    /// its layer is copied and bound anew (the binding held it too): growing holds the new
    /// buffers and one old layer's, not the old cache whole beside the new (the 7B shape's 1 GiB
    /// cache grown to 2 GiB held 3 GiB for a moment).
    fn shared_buffers(
        &self,
        binding: &mut IoBinding,
        capacity: usize,
        old: Vec<KvBuf>,
        old_capacity: usize,
        keep: usize,
    ) -> Result<Vec<KvBuf>, BackendError> {
        let (s, io) = (&self.dir.spec, &self.dir.io);
        let names = io.past_key.iter().zip(&io.present_key).chain(io.past_value.iter().zip(&io.present_value));
        let d = s.head_dim;
        let mut buffers = Vec::with_capacity(s.layers * 2);
        let mut old = old.into_iter();
        for (past, present) in names {
            let mut buf = KvBuf::new(self.kv_elem, [1, s.kv_heads, capacity, d])?;
            let previous = old.next();
            if let Some(o) = &previous {
                let (to, from) = (Lanes { first: 0, capacity }, Lanes { first: 0, capacity: old_capacity });
                buf.copy_from(to, o, from, s.kv_heads, d, keep)?;
            }
            buf.bind(binding, past, present)?;
            drop(previous);
            buffers.push(buf);
        }
        Ok(buffers)
    }
}

fn i64_tensor(values: Vec<i64>) -> Result<Tensor<i64>, BackendError> {
    let n = values.len();
    Tensor::<i64>::from_array(([1usize, n], values)).map_err(run_err)
}

/// The last `rows` rows of a `[1, S, vocab]` logits value (float32 or float16).
fn read_logits(out: &DynValue, rows: usize, logits: &mut Vec<f32>) -> Result<(), BackendError> {
    if let Ok((shape, data)) = out.try_extract_tensor::<f32>() {
        last_rows(data, *shape.last().unwrap_or(&0) as usize, rows, logits, |x| x).map_err(run_err)
    } else {
        let (shape, data) = out.try_extract_tensor::<f16>().map_err(run_err)?;
        last_rows(data, *shape.last().unwrap_or(&0) as usize, rows, logits, f16::to_f32).map_err(run_err)
    }
}

/// The first `keep` positions of a `[1, heads, T, head_dim]` past value (float32 or float16).
fn slice_past(past: &DynValue, keep: usize) -> Result<DynValue, BackendError> {
    fn cut<T: Copy>(shape: &[i64], data: &[T], keep: usize) -> Result<(Vec<usize>, Vec<T>), BackendError> {
        let [b, h, t, d] = <[i64; 4]>::try_from(shape).map_err(|_| run_err(format!("past of shape {shape:?}")))?;
        let (t, d) = (t as usize, d as usize);
        let mut out = Vec::with_capacity((b * h) as usize * keep * d);
        for row in data.chunks(t * d) {
            out.extend_from_slice(&row[..keep * d]);
        }
        Ok((vec![b as usize, h as usize, keep, d], out))
    }
    if let Ok((shape, data)) = past.try_extract_tensor::<f32>() {
        let (shape, data) = cut(shape, data, keep)?;
        Ok(Tensor::<f32>::from_array((shape, data)).map_err(run_err)?.into_dyn())
    } else {
        let (shape, data) = past.try_extract_tensor::<f16>().map_err(run_err)?;
        let (shape, data) = cut(shape, data, keep)?;
        Ok(Tensor::<f16>::from_array((shape, data)).map_err(run_err)?.into_dyn())
    }
}

impl Sequence for OrtSequence {
    fn forward_rows(&mut self, tokens: &[u32], rows: usize, logits: &mut Vec<f32>) -> Result<(), BackendError> {
        check_room(self.position, tokens.len(), self.model.dir.spec.context_length)?;
        check_rows(BackendKind::Onnxruntime, rows, tokens.len())?;
        self.since_drafts = if rows > 1 { 0 } else { self.since_drafts.saturating_add(1) };
        if matches!(self.kv, Kv::Batched) {
            if tokens.len() == 1 && rows == 1 && !self.model.arena_over_plan() {
                // a pass of its own row (the others placeholders)
                self.model.run_batch(&mut [(self.id, tokens[0], logits)])?;
                self.position += 1;
                return Ok(());
            }
            self.leave_batch(self.position + tokens.len())?;
        }
        let m = &self.model;
        let io = &m.dir.io;
        let n = tokens.len();
        let keep = match &io.logits_to_keep {
            Some(_) => Some(Tensor::<i64>::from_array(([0usize; 0], vec![rows as i64])).map_err(run_err)?),
            None => None,
        };
        let start = self.position as i64;
        let ids = i64_tensor(tokens.iter().map(|&t| t as i64).collect())?;
        let mask = i64_tensor(vec![1; self.position + n])?;
        let mut engine = m.engine.lock().unwrap_or_else(|e| e.into_inner());
        let session = &mut engine.session;
        match &mut self.kv {
            Kv::Shared { binding, cpu, buffers, capacity, one_row } => {
                if self.position + n > *capacity {
                    let grown = buffer_capacity(self.position + n, m.dir.spec.context_length);
                    *buffers = m.shared_buffers(binding, grown, std::mem::take(buffers), *capacity, self.position)?;
                    *capacity = grown;
                }
                binding.bind_input(&io.input_ids, &ids).map_err(run_err)?;
                match one_row {
                    Some(out) if rows == 1 => binding.bind_output(&io.logits, out).map_err(run_err)?,
                    // Rebound every step: a bound output keeps its first shape ([1, S, vocab]).
                    _ => binding.bind_output_to_device(&io.logits, cpu).map_err(run_err)?,
                }
                if let Some(name) = &io.attention_mask {
                    binding.bind_input(name, &mask).map_err(run_err)?;
                }
                if let (Some(name), Some(keep)) = (&io.logits_to_keep, &keep) {
                    binding.bind_input(name, keep).map_err(run_err)?;
                }
                let outputs = session.run_binding(binding).map_err(run_err)?;
                read_logits(&outputs[io.logits.as_str()], rows, logits)?;
            }
            Kv::Batched => unreachable!("a batched sequence's cache is moved back first"),
            Kv::Moved(past) => {
                let mut inputs: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(4 + past.len());
                inputs.push((&io.input_ids, ids.into()));
                if let Some(name) = &io.attention_mask {
                    inputs.push((name, mask.into()));
                }
                if let Some(name) = &io.position_ids {
                    inputs.push((name, i64_tensor((start..start + n as i64).collect())?.into()));
                }
                if let Some(name) = &io.use_cache_branch {
                    let t = Tensor::<bool>::from_array(([1usize], vec![self.position > 0])).map_err(run_err)?;
                    inputs.push((name, t.into()));
                }
                if let (Some(name), Some(keep)) = (&io.logits_to_keep, keep) {
                    inputs.push((name, keep.into()));
                }
                for (layer, (k, v)) in io.past_key.iter().zip(&io.past_value).enumerate() {
                    inputs.push((k, (&past[2 * layer]).into()));
                    inputs.push((v, (&past[2 * layer + 1]).into()));
                }
                let mut outputs = session.run(inputs).map_err(run_err)?;
                let out = outputs.remove(&io.logits).ok_or_else(|| run_err("no logits output"))?;
                read_logits(&out, rows, logits)?;
                for (layer, (k, v)) in io.present_key.iter().zip(&io.present_value).enumerate() {
                    past[2 * layer] = outputs.remove(k.as_str()).ok_or_else(|| run_err(format!("no output {k}")))?;
                    past[2 * layer + 1] =
                        outputs.remove(v.as_str()).ok_or_else(|| run_err(format!("no output {v}")))?;
                }
            }
        }
        self.position += n;
        Ok(())
    }

    /// Shared buffer: the position alone (the next step writes over what was after it).
    /// Moved values: each past cut to its first `position` entries (a copy).
    fn truncate(&mut self, position: usize) -> Result<(), BackendError> {
        check_truncate(self.position, position)?;
        if position == self.position {
            return Ok(());
        }
        match &mut self.kv {
            Kv::Moved(past) => {
                for p in past.iter_mut() {
                    *p = slice_past(p, position)?;
                }
            }
            Kv::Batched => self.model.set_position(self.id, position),
            Kv::Shared { .. } => {}
        }
        self.position = position;
        Ok(())
    }

    fn position(&self) -> usize {
        self.position
    }

    /// Out of the batch (its cache copied back to its own buffers).
    fn park(&mut self) -> Result<(), BackendError> {
        self.leave_batch(self.position)
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    /// With nothing held yet, a shared buffer takes the planned capacity at once (what the
    /// request's reservation counts): no doubling on the way, no copies.
    fn plan(&mut self, positions: usize) {
        self.planned = positions.max(self.position);
        let want = buffer_capacity(self.planned, self.model.dir.spec.context_length);
        if let Kv::Shared { binding, buffers, capacity, .. } = &mut self.kv
            && self.position == 0
            && *capacity < want
        {
            buffers.clear();
            match self.model.shared_buffers(binding, want, vec![], 0, 0) {
                Ok(b) => (*buffers, *capacity) = (b, want),
                // the sequence stays empty: its first step grows it (and reports the error)
                Err(e) => {
                    tracing::warn!(error = %e, "allocating the planned KV buffer");
                    *capacity = 0;
                }
            }
        }
    }
}

impl OrtSequence {
    /// A batched sequence's cache back in its own buffers (room for `positions`); nothing
    /// otherwise.
    pub(super) fn leave_batch(&mut self, positions: usize) -> Result<(), BackendError> {
        if !matches!(self.kv, Kv::Batched) {
            return Ok(());
        }
        let mut own = self.model.own_buffers(positions, vec![], 0, 0)?;
        let Kv::Shared { buffers, capacity, .. } = &mut own else { unreachable!("own_buffers gives Shared") };
        self.model.leave(self.id, Some((buffers, *capacity)))?;
        self.kv = own;
        Ok(())
    }
}

impl Drop for OrtSequence {
    fn drop(&mut self) {
        if matches!(self.kv, Kv::Batched)
            && let Err(e) = self.model.leave(self.id, None)
        {
            tracing::warn!(error = %e, "leaving the batch");
        }
    }
}
