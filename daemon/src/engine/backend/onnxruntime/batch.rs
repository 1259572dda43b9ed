//! Batched decoding: the one-token steps of concurrent sequences of one model
//! run as one forward pass, so the weights are read once for all of them.
//!
//! Only for graphs with a shared KV buffer (`GroupQueryAttention`, which takes a
//! length per row from the attention mask). The sequences that take part keep
//! their KV cache in the model's [`Arena`]: per layer and kind one buffer
//! `[rows, kv_heads, capacity, head_dim]`, one row per sequence, bound once as
//! past and present. A step feeds every row: a sequence that has not asked for
//! a step is fed a placeholder token at its next position, which its own next
//! step writes over (so the arena's capacity is always at least the longest
//! row's position + 1).
//!
//! Coordination ([`Batcher`]): a sequence asking for a one-token step queues
//! it; if no step is being collected or run, it leads: it waits up to
//! [`COLLECT`] for every other row's sequence to queue its step, runs them all,
//! and hands each its logits. One sequence alone never waits. A panic in the
//! pass is caught: every row's step fails, and the next step leads anew.
//!
//! A sequence joins the arena on its first one-token step while another
//! sequence of the model is alive (its KV cache is copied in, the arena is
//! reallocated with one more row), and leaves it when dropped, or when it feeds
//! several tokens at once (copied out to its own buffers again); one that
//! verifies drafts (logits of several rows) never joins again. Joining and
//! leaving copy every row's cache once; steps copy nothing.
//!
//! Memory: every row has the longest row's capacity. A sequence joins only if
//! the arena then holds at most twice what the rows would hold alone; a long
//! row that grows later can still take the arena past that, to `rows ×` its
//! capacity, until rows leave.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ort::memory::Allocator;
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

use super::{FIRST_CAPACITY, OrtModel, buffer_capacity, run_err};
use crate::engine::backend::{BackendError, BatchCounters};

/// How long a leading step waits for the other rows' steps. Between two steps a sequence
/// samples, detokenizes and streams a piece of text: tens of microseconds.
pub(super) const COLLECT: Duration = Duration::from_millis(3);

/// The KV caches of the sequences that decode in batches, one row each.
#[derive(Default)]
pub(super) struct Arena {
    rows: Vec<Row>,
    capacity: usize,
    /// Keys of every layer, then values; bound to `binding` as past and present.
    buffers: Vec<Tensor<f32>>,
    binding: Option<IoBinding>,
    /// `[rows, 1, vocab]`, bound as the logits output.
    logits: Option<Tensor<f32>>,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    id: u64,
    /// Positions held (the next token goes here).
    position: usize,
}

/// Where a row's cache comes from when the arena is rebuilt.
enum Source<'a> {
    /// Row `i` of the arena as it was.
    Arena(usize),
    /// A sequence's own buffers, `[1, kv_heads, capacity, head_dim]`.
    Own(&'a [Tensor<f32>], usize),
}

/// One queued step.
pub(super) struct Step {
    id: u64,
    token: u32,
    /// The sequence's logits buffer, returned filled.
    logits: Vec<f32>,
}

#[derive(Default)]
struct State {
    /// Rows in the arena: how many steps a full batch has.
    members: usize,
    queued: Vec<Step>,
    done: HashMap<u64, Result<Vec<f32>, String>>,
    /// A step is leading (collecting or running).
    leading: bool,
    counters: BatchCounters,
}

/// Collects steps and hands out results; see the module doc.
#[derive(Default)]
pub(super) struct Batcher {
    state: Mutex<State>,
    changed: Condvar,
}

/// Copies the first `keep` positions of `lanes` lanes of `d` values (a lane: one row's head).
fn copy_lanes(src: &[f32], src_cap: usize, dst: &mut [f32], dst_cap: usize, lanes: usize, d: usize, keep: usize) {
    for l in 0..lanes {
        dst[l * dst_cap * d..][..keep * d].copy_from_slice(&src[l * src_cap * d..][..keep * d]);
    }
}

impl OrtModel {
    pub fn batch_counters(&self) -> BatchCounters {
        self.batch.state.lock().unwrap_or_else(|e| e.into_inner()).counters
    }

    /// The arena's capacity for rows holding `positions` (the longest + 1, for its next step).
    fn arena_capacity(&self, longest: usize) -> usize {
        let context = self.dir.spec.context_length;
        (longest + 1).max(FIRST_CAPACITY).next_power_of_two().min(context + 1)
    }

    /// Rebuilds the arena with `rows`, each filled from its source.
    fn rebuild(
        &self,
        session: &Session,
        arena: &mut Arena,
        rows: Vec<Row>,
        sources: &[Source<'_>],
    ) -> Result<(), BackendError> {
        let s = &self.dir.spec;
        let Some(longest) = rows.iter().map(|r| r.position).max() else {
            *arena = Arena::default();
            return Ok(());
        };
        let capacity = self.arena_capacity(longest);
        let (h, d) = (s.kv_heads, s.head_dim);
        let mut binding = session.create_binding().map_err(run_err)?;
        let io = &self.dir.io;
        let names = io.past_key.iter().zip(&io.present_key).chain(io.past_value.iter().zip(&io.present_value));
        let mut buffers = Vec::with_capacity(s.layers * 2);
        for (b, (past, present)) in names.enumerate() {
            let mut buf = Tensor::<f32>::new(&Allocator::default(), [rows.len(), h, capacity, d]).map_err(run_err)?;
            let dst = buf.extract_tensor_mut().1;
            for (i, (row, source)) in rows.iter().zip(sources).enumerate() {
                let dst = &mut dst[i * h * capacity * d..][..h * capacity * d];
                match source {
                    Source::Arena(j) => {
                        let src = &arena.buffers[b].extract_tensor().1[j * h * arena.capacity * d..];
                        copy_lanes(src, arena.capacity, dst, capacity, h, d, row.position);
                    }
                    Source::Own(own, cap) => {
                        copy_lanes(own[b].extract_tensor().1, *cap, dst, capacity, h, d, row.position)
                    }
                }
            }
            binding.bind_input(past, &buf).map_err(run_err)?;
            binding.bind_output(present, &mut buf).map_err(run_err)?;
            buffers.push(buf);
        }
        let mut logits = Tensor::<f32>::new(&Allocator::default(), [rows.len(), 1, self.vocab()]).map_err(run_err)?;
        binding.bind_output(&io.logits, &mut logits).map_err(run_err)?;
        let members = rows.len();
        *arena = Arena { rows, capacity, buffers, binding: Some(binding), logits: Some(logits) };
        let mut state = self.batch.state.lock().unwrap_or_else(|e| e.into_inner());
        state.members = members;
        self.batch.changed.notify_all();
        Ok(())
    }

    /// Moves a sequence's own cache of `position` positions into a new row; `None` when the
    /// join rule (module doc) says it would cost too much memory.
    pub(super) fn join(
        &self,
        id: u64,
        position: usize,
        own: &[Tensor<f32>],
        own_capacity: usize,
    ) -> Result<bool, BackendError> {
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        let super::Engine { session, arena } = &mut *engine;
        let context = self.dir.spec.context_length;
        let mut rows = arena.rows.clone();
        rows.push(Row { id, position });
        let longest = rows.iter().map(|r| r.position).max().unwrap_or(0);
        let together = rows.len() * self.arena_capacity(longest);
        let apart: usize = rows.iter().map(|r| buffer_capacity(r.position + 1, context)).sum();
        if together > 2 * apart {
            return Ok(false);
        }
        let mut sources: Vec<Source<'_>> = (0..arena.rows.len()).map(Source::Arena).collect();
        sources.push(Source::Own(own, own_capacity));
        self.rebuild(session, arena, rows, &sources)?;
        Ok(true)
    }

    /// Takes row `id` out of the arena; with `keep`, its cache is copied into `own` buffers of
    /// `own_capacity` positions first (bound to `binding`).
    pub(super) fn leave(&self, id: u64, keep: Option<(&mut [Tensor<f32>], usize)>) -> Result<(), BackendError> {
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        let super::Engine { session, arena } = &mut *engine;
        let Some(r) = arena.rows.iter().position(|row| row.id == id) else {
            return Err(run_err(format!("sequence {id} is not in the batch")));
        };
        let (h, d, position) = (self.dir.spec.kv_heads, self.dir.spec.head_dim, arena.rows[r].position);
        if let Some((own, cap)) = keep {
            for (b, buf) in own.iter_mut().enumerate() {
                let src = &arena.buffers[b].extract_tensor().1[r * h * arena.capacity * d..];
                copy_lanes(src, arena.capacity, buf.extract_tensor_mut().1, cap, h, d, position);
            }
        }
        let mut rows = arena.rows.clone();
        rows.remove(r);
        let sources: Vec<Source<'_>> = (0..arena.rows.len()).filter(|&i| i != r).map(Source::Arena).collect();
        self.rebuild(session, arena, rows, &sources)
    }

    /// Sets row `id`'s position (a truncation: what was after it is written over).
    pub(super) fn set_position(&self, id: u64, position: usize) {
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(row) = engine.arena.rows.iter_mut().find(|r| r.id == id) {
            row.position = position;
        }
    }

    /// Runs `token` as row `id`'s next step, batched with whatever other rows ask for meanwhile;
    /// writes its logits into `logits`.
    pub(super) fn step(&self, id: u64, token: u32, logits: &mut Vec<f32>) -> Result<(), BackendError> {
        let b = &self.batch;
        let mut state = b.state.lock().unwrap_or_else(|e| e.into_inner());
        state.queued.push(Step { id, token, logits: std::mem::take(logits) });
        b.changed.notify_all();
        loop {
            if let Some(result) = state.done.remove(&id) {
                return match result {
                    Ok(row) => {
                        *logits = row;
                        Ok(())
                    }
                    Err(e) => Err(run_err(e)),
                };
            }
            if state.leading {
                state = b.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.leading = true;
            let began = Instant::now();
            let deadline = began + COLLECT;
            while state.queued.len() < state.members {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = b.changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
            }
            let mut steps = std::mem::take(&mut state.queued);
            drop(state);
            let collected = Instant::now();
            // A panic in the pass fails every row's step (each request ends with an error)
            // instead of leaving `leading` set with the others waiting for ever.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::faults::hit("batch-step");
                self.run_batch(&mut steps)
            }))
            .unwrap_or_else(|p| {
                Err(run_err(format!("the batched step panicked: {}", crate::faults::panic_message(&*p))))
            });
            state = b.state.lock().unwrap_or_else(|e| e.into_inner());
            state.counters.collecting += collected - began;
            state.counters.running += collected.elapsed();
            if let Ok(rows) = result {
                state.counters.steps += 1;
                state.counters.rows += steps.len() as u64;
                state.counters.placeholders += (rows - steps.len()) as u64;
            }
            for s in steps {
                let r = match &result {
                    Ok(_) => Ok(s.logits),
                    Err(e) => Err(e.to_string()),
                };
                state.done.insert(s.id, r);
            }
            state.leading = false;
            b.changed.notify_all();
        }
    }

    /// One forward pass over every row of the arena: `steps` feed their tokens, the other rows
    /// a placeholder at their next position. Returns how many rows it ran.
    fn run_batch(&self, steps: &mut [Step]) -> Result<usize, BackendError> {
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        let super::Engine { session, arena } = &mut *engine;
        let longest = arena.rows.iter().map(|r| r.position).max().unwrap_or(0);
        if longest + 1 > arena.capacity {
            let rows = arena.rows.clone();
            let sources: Vec<Source<'_>> = (0..rows.len()).map(Source::Arena).collect();
            self.rebuild(session, arena, rows, &sources)?;
        }
        let n = arena.rows.len();
        let mut index = vec![usize::MAX; steps.len()];
        let mut ids = vec![0i64; n];
        for (k, s) in steps.iter().enumerate() {
            let r = arena
                .rows
                .iter()
                .position(|row| row.id == s.id)
                .ok_or_else(|| run_err(format!("sequence {} is not in the batch", s.id)))?;
            index[k] = r;
            ids[r] = s.token as i64;
        }
        let width = longest + 1;
        let mut mask = vec![0i64; n * width];
        for (r, row) in arena.rows.iter().enumerate() {
            mask[r * width..][..row.position + 1].fill(1);
        }
        let io = &self.dir.io;
        let binding = arena.binding.as_mut().ok_or_else(|| run_err("the batch has no binding"))?;
        binding
            .bind_input(&io.input_ids, &Tensor::<i64>::from_array(([n, 1usize], ids)).map_err(run_err)?)
            .map_err(run_err)?;
        if let Some(name) = &io.attention_mask {
            binding
                .bind_input(name, &Tensor::<i64>::from_array(([n, width], mask)).map_err(run_err)?)
                .map_err(run_err)?;
        }
        if let Some(name) = &io.logits_to_keep {
            binding
                .bind_input(name, &Tensor::<i64>::from_array(([0usize; 0], vec![1i64])).map_err(run_err)?)
                .map_err(run_err)?;
        }
        session.run_binding(binding).map_err(run_err)?;
        let vocab = self.vocab();
        let all = arena.logits.as_ref().ok_or_else(|| run_err("the batch has no logits"))?.extract_tensor().1;
        for (s, &r) in steps.iter_mut().zip(&index) {
            s.logits.clear();
            s.logits.extend_from_slice(&all[r * vocab..][..vocab]);
            arena.rows[r].position += 1;
        }
        Ok(n)
    }
}
