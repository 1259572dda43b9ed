//! Batched decoding: the one-token steps of several sequences of one model
//! run as one forward pass, so the weights are read once for all of them.
//!
//! Only for graphs with a shared KV buffer (`GroupQueryAttention`, which takes a
//! length per row from the attention mask). The sequences that take part keep
//! their KV cache in the model's [`Arena`]: per layer and kind one buffer
//! `[rows, kv_heads, capacity, head_dim]`, one row per sequence, bound once as
//! past and present. A pass feeds every row: a row whose sequence takes no step
//! in it is fed a placeholder token at its next position, which its own next
//! step writes over (so the arena's capacity is always at least the longest
//! row's position + 1).
//!
//! Who batches: the caller, explicitly. [`LoadedModel::step_batch`] (the
//! scheduler's engine loop, once a tick, with every row that decodes) runs the
//! steps it is given as one pass; there is no collection window and no leader.
//! A sequence of the arena stepped alone ([`Sequence::forward`]) runs a pass of
//! its own row, the others placeholders.
//!
//! A sequence joins the arena on its first batched step (its KV cache is copied
//! in, the arena is reallocated with one more row), and leaves it when dropped,
//! parked, or fed several tokens at once (copied out to its own buffers again);
//! one that verifies drafts (logits of several rows) joins again only after `REJOIN_AFTER`
//! one-token steps without drafts. Joining
//! and leaving copy every row's cache once; steps copy nothing.
//!
//! Memory: every row has the longest row's capacity, so the arena is kept
//! within what its rows' KV reservations count: each sequence is told the most
//! positions it will hold ([`Sequence::plan`]: its request's prompt and
//! `max_tokens`, for which its reservation counts a buffer of
//! `buffer_capacity(planned)` positions). A sequence joins only if the arena then
//! holds at most the sum of its rows' planned buffers, and before a step that
//! would grow the arena past that sum, the longest stepping row leaves it (its
//! step runs alone). A rebuild (a row joining, leaving, or the arena growing)
//! frees the old arena layer by layer as it copies it, so it holds one layer's
//! buffer twice, not the whole arena; the row that moves in or out exists twice
//! for the copy (its own buffers and its row, each within its reservation).
//! A rebuild that fails leaves the arena empty: its rows' next steps fail.
//!
//! [`Sequence::plan`]: crate::engine::backend::Sequence::plan
//!
//! [`LoadedModel::step_batch`]: crate::engine::backend::LoadedModel::step_batch
//! [`Sequence::forward`]: crate::engine::backend::Sequence::forward

use std::time::Instant;

use ort::memory::Allocator;
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

use super::kv::{KvBuf, Lanes};
use super::{FIRST_CAPACITY, Kv, OrtModel, OrtSequence, buffer_capacity, run_err};
use crate::engine::backend::{BackendError, BatchCounters, BatchStep, check_room};

/// The KV caches of the sequences that decode in batches, one row each.
#[derive(Default)]
pub(super) struct Arena {
    rows: Vec<Row>,
    capacity: usize,
    /// Keys of every layer, then values; bound to `binding` as past and present.
    buffers: Vec<KvBuf>,
    binding: Option<IoBinding>,
    /// `[rows, 1, vocab]`, bound as the logits output.
    logits: Option<Tensor<f32>>,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    id: u64,
    /// Positions held (the next token goes here).
    position: usize,
    /// The most positions it will hold ([`Sequence::plan`](crate::engine::backend::Sequence::plan)).
    planned: usize,
}

/// Where a row's cache comes from when the arena is rebuilt.
enum Source<'a> {
    /// Row `i` of the arena as it was.
    Arena(usize),
    /// A sequence's own buffers, `[1, kv_heads, capacity, head_dim]`.
    Own(&'a [KvBuf], usize),
}

impl OrtModel {
    pub fn batch_counters(&self) -> BatchCounters {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner())
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
        // The old arena is freed layer by layer as it is copied: its binding (which holds its
        // buffers too) goes first; an error below leaves the arena empty.
        let old_capacity = arena.capacity;
        let mut old = std::mem::take(arena).buffers.into_iter();
        let io = &self.dir.io;
        let names = io.past_key.iter().zip(&io.present_key).chain(io.past_value.iter().zip(&io.present_value));
        let mut buffers = Vec::with_capacity(s.layers * 2);
        for (b, (past, present)) in names.enumerate() {
            let old_buf = old.next();
            let mut buf = KvBuf::new(self.kv_elem, [rows.len(), h, capacity, d])?;
            for (i, (row, source)) in rows.iter().zip(sources).enumerate() {
                let to = Lanes { first: i * h, capacity };
                match source {
                    Source::Arena(j) => {
                        let old_buf = old_buf.as_ref().ok_or_else(|| run_err("the arena lost a buffer"))?;
                        let from = Lanes { first: j * h, capacity: old_capacity };
                        buf.copy_from(to, old_buf, from, h, d, row.position)?;
                    }
                    Source::Own(own, cap) => {
                        buf.copy_from(to, &own[b], Lanes { first: 0, capacity: *cap }, h, d, row.position)?
                    }
                }
            }
            drop(old_buf);
            buf.bind(&mut binding, past, present)?;
            buffers.push(buf);
        }
        let mut logits = Tensor::<f32>::new(&Allocator::default(), [rows.len(), 1, self.vocab()]).map_err(run_err)?;
        binding.bind_output(&io.logits, &mut logits).map_err(run_err)?;
        *arena = Arena { rows, capacity, buffers, binding: Some(binding), logits: Some(logits) };
        Ok(())
    }

    /// Whether an arena of `rows`, ready for their next step, would hold more than their
    /// planned buffers (module doc).
    fn over_plan(&self, rows: &[Row]) -> bool {
        let context = self.dir.spec.context_length;
        let longest = rows.iter().map(|r| r.position).max().unwrap_or(0);
        let planned: usize = rows.iter().map(|r| buffer_capacity(r.planned.max(r.position + 1), context)).sum();
        rows.len() * self.arena_capacity(longest) > planned
    }

    /// Whether the arena, ready for its rows' next step, would hold more than their planned
    /// buffers.
    pub(super) fn arena_over_plan(&self) -> bool {
        let engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        self.over_plan(&engine.arena.rows)
    }

    /// Moves a sequence's own cache of `position` positions into a new row; `false` when the
    /// join rule (module doc) refuses it.
    pub(super) fn join(
        &self,
        id: u64,
        (position, planned): (usize, usize),
        own: &[KvBuf],
        own_capacity: usize,
    ) -> Result<bool, BackendError> {
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        let super::Engine { session, arena } = &mut *engine;
        let mut rows = arena.rows.clone();
        rows.push(Row { id, position, planned });
        if self.over_plan(&rows) {
            return Ok(false);
        }
        let mut sources: Vec<Source<'_>> = (0..arena.rows.len()).map(Source::Arena).collect();
        sources.push(Source::Own(own, own_capacity));
        self.rebuild(session, arena, rows, &sources)?;
        Ok(true)
    }

    /// Takes row `id` out of the arena; with `keep`, its cache is copied into `own` buffers of
    /// `own_capacity` positions first (bound to `binding`).
    pub(super) fn leave(&self, id: u64, keep: Option<(&mut [KvBuf], usize)>) -> Result<(), BackendError> {
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        let super::Engine { session, arena } = &mut *engine;
        let Some(r) = arena.rows.iter().position(|row| row.id == id) else {
            return Err(run_err(format!("sequence {id} is not in the batch")));
        };
        let (h, d, position) = (self.dir.spec.kv_heads, self.dir.spec.head_dim, arena.rows[r].position);
        if let Some((own, cap)) = keep {
            for (b, buf) in own.iter_mut().enumerate() {
                let from = Lanes { first: r * h, capacity: arena.capacity };
                buf.copy_from(Lanes { first: 0, capacity: cap }, &arena.buffers[b], from, h, d, position)?;
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

    /// The steps of [`LoadedModel::step_batch`]: those of this model's sequences that may
    /// batch join the arena and run as one pass; the others run alone.
    ///
    /// [`LoadedModel::step_batch`]: crate::engine::backend::LoadedModel::step_batch
    pub(super) fn step_batch(&self, steps: &mut [BatchStep<'_>]) -> Vec<Result<(), BackendError>> {
        let mut results: Vec<Option<Result<(), BackendError>>> = steps.iter().map(|_| None).collect();
        let mut members = vec![];
        if self.batch_decode && steps.len() > 1 {
            for (i, s) in steps.iter_mut().enumerate() {
                let Some(seq) = s.seq.as_any_mut().downcast_mut::<OrtSequence>() else { continue };
                if !std::ptr::eq(std::sync::Arc::as_ptr(&seq.model), self) {
                    continue;
                }
                match seq.enter_batch() {
                    Ok(true) => members.push(i),
                    Ok(false) => {}
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
            // growing the arena for this step must keep it within its rows' plans: the
            // longest stepping rows step alone instead
            while !members.is_empty() && self.arena_over_plan() {
                let mut longest: Option<(usize, usize)> = None;
                for (k, &i) in members.iter().enumerate() {
                    if let Some(q) = steps[i].seq.as_any_mut().downcast_mut::<OrtSequence>()
                        && longest.is_none_or(|(_, p)| q.position > p)
                    {
                        longest = Some((k, q.position));
                    }
                }
                let Some((k, _)) = longest else { break };
                let i = members.remove(k);
                if let Some(q) = steps[i].seq.as_any_mut().downcast_mut::<OrtSequence>()
                    && let Err(e) = q.leave_batch(q.position + 1)
                {
                    results[i] = Some(Err(e));
                }
            }
        }
        if !members.is_empty() {
            let mut ids = Vec::with_capacity(members.len());
            let mut batch: Vec<(u64, u32, &mut Vec<f32>)> = Vec::with_capacity(members.len());
            for (i, s) in steps.iter_mut().enumerate() {
                if !members.contains(&i) {
                    continue;
                }
                let id = s.seq.as_any_mut().downcast_mut::<OrtSequence>().map_or(0, |q| q.id);
                ids.push(i);
                batch.push((id, s.token, &mut *s.logits));
            }
            let outcome = self.run_batch(&mut batch).map(|_| ());
            drop(batch);
            for i in ids {
                results[i] = Some(match &outcome {
                    Ok(()) => {
                        if let Some(q) = steps[i].seq.as_any_mut().downcast_mut::<OrtSequence>() {
                            q.position += 1;
                        }
                        Ok(())
                    }
                    Err(e) => Err(run_err(e)),
                });
            }
        }
        steps.iter_mut().zip(results).map(|(s, r)| r.unwrap_or_else(|| s.seq.forward(&[s.token], s.logits))).collect()
    }

    /// One forward pass over every row of the arena: `steps` (row id, token, logits) feed
    /// their tokens, the other rows a placeholder at their next position. Returns how many
    /// rows it ran.
    pub(super) fn run_batch(&self, steps: &mut [(u64, u32, &mut Vec<f32>)]) -> Result<usize, BackendError> {
        let began = Instant::now();
        crate::faults::hit("batch-step");
        let result = self.pass(steps);
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.running += began.elapsed();
        if let Ok(rows) = result {
            c.steps += 1;
            c.rows += steps.len() as u64;
            c.placeholders += (rows - steps.len()) as u64;
        }
        result
    }

    fn pass(&self, steps: &mut [(u64, u32, &mut Vec<f32>)]) -> Result<usize, BackendError> {
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
        for (k, (id, token, _)) in steps.iter().enumerate() {
            let r = arena
                .rows
                .iter()
                .position(|row| row.id == *id)
                .ok_or_else(|| run_err(format!("sequence {id} is not in the batch")))?;
            index[k] = r;
            ids[r] = *token as i64;
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
        for ((_, _, logits), &r) in steps.iter_mut().zip(&index) {
            logits.clear();
            logits.extend_from_slice(&all[r * vocab..][..vocab]);
            arena.rows[r].position += 1;
        }
        Ok(n)
    }
}

impl OrtSequence {
    /// Makes this sequence a row of the arena for a batched one-token step, unless it may not
    /// batch (it verified drafts, has no shared buffer, has not been fed, or its context is
    /// full) or the join rule refuses it: false then.
    fn enter_batch(&mut self) -> Result<bool, BackendError> {
        if check_room(self.position, 1, self.model.dir.spec.context_length).is_err()
            || self.since_drafts < super::REJOIN_AFTER
            || self.position == 0
        {
            return Ok(false);
        }
        match &self.kv {
            Kv::Batched => Ok(true),
            Kv::Shared { buffers, capacity, .. } => {
                if self.model.join(self.id, (self.position, self.planned), buffers, *capacity)? {
                    self.kv = Kv::Batched;
                    return Ok(true);
                }
                Ok(false)
            }
            Kv::Moved(_) => Ok(false),
        }
    }
}
