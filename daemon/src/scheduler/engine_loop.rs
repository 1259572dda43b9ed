//! One engine loop per loaded model: a thread that owns the running requests of
//! its model (their [`Run`]s: sequences, KV caches, samplers) and is fed new
//! requests through a channel by [`Scheduler::submit`]. Each tick it:
//!
//! 1. takes new requests; a cancelled row stops before its next step;
//! 2. pauses background rows while any interactive work is alive (on any model)
//!    or the power governor defers background work, and preempts them (their
//!    sequence and KV reservation dropped, recomputed from their token ids when they
//!    go on) while interactive work waits for memory;
//! 3. admits waiting requests in the queue's order while fewer than `max_parallel`
//!    rows run (lowered by the power governor in its states), each once its KV
//!    reservation is held (a request that cannot get it waits holding nothing, or is
//!    refused with the numbers); background requests wait while the governor defers
//!    them and end with `PowerSaving` while it refuses them;
//! 4. runs at most one prefill chunk (the first row in order that needs one) and
//!    one decoding step of every other running row, their one-token feeds as one
//!    batched forward pass ([`LoadedModel::step_batch`]: ONNX Runtime's arena;
//!    tract's rows take turns in it); samples; emits text;
//! 5. ends the rows that are done, failed or cancelled, releasing what they held,
//!    then the waiting requests cancelled (a queued request never computes).
//!
//! Each row's work runs under `catch_unwind`: a panic ends that request with
//! `GenerationFailed` and marks the model faulted (unloaded once idle). With
//! nothing to run, the loop waits on its channel for at most [`TICK`], then looks
//! again at cancellations, pauses and memory. It ends when its model is unloaded
//! (the channel's sender is dropped, which happens only once no request pins it).
//!
//! [`LoadedModel::step_batch`]: crate::engine::LoadedModel::step_batch

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use llamad_api::{Error, FinishStats};

use super::admission::Reserve;
use super::{Event, Job, Scheduler, Wanting, cancelled_before_running, failed};
use crate::config::WhenFull;
use crate::engine::{GenerateError, Output, Prompt, Resumable, Run};
use crate::memory::mib;
use crate::policy::priority::Priority;
use crate::power::Background;

/// The longest a loop with nothing to run waits before it looks again (cancellations,
/// pauses, memory freed elsewhere).
pub const TICK: Duration = Duration::from_millis(50);

/// A request its loop runs.
struct Row {
    job: Job,
    /// None if it failed to start (`error` says why).
    run: Option<Run>,
    /// The prompt cache's or the session's sequence it continues; after the run, the run's.
    cache: Resumable,
    error: Option<Error>,
    /// It does not step now (background work while interactive work is alive).
    paused: bool,
    /// What the request table says: paused, or waiting to reserve again after a preemption
    /// (either way not computing, which the memory accounting must know).
    stopped: bool,
}

impl Row {
    fn ended(&self) -> bool {
        self.error.is_some() || self.run.as_ref().is_none_or(Run::done)
    }

    /// It steps this tick.
    fn runs(&self) -> bool {
        !self.paused && !self.ended() && self.job.reservation.is_some()
    }
}

/// Starts the loop of `model`: requests sent to the returned channel run on it.
pub(super) fn spawn(s: Arc<Scheduler>, model: &str) -> Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel();
    let l = EngineLoop { s, model: model.to_string(), inbox: rx, waiting: vec![], rows: vec![], tried: None };
    std::thread::Builder::new().name("llamad-loop".into()).spawn(move || l.run()).expect("spawning an engine loop");
    tx
}

struct EngineLoop {
    s: Arc<Scheduler>,
    model: String,
    inbox: Receiver<Job>,
    /// Admitted requests not started yet: they hold no reservation.
    waiting: Vec<Job>,
    rows: Vec<Row>,
    /// When a reservation last failed; None when something changed since (a request
    /// arrived or ended here), so that admission is tried at once.
    tried: Option<Instant>,
}

/// A generation error of a running request, as the client gets it.
fn generation_error(e: GenerateError) -> Error {
    tracing::error!(error = %e, "generation failed");
    Error::GenerationFailed(e.to_string())
}

impl EngineLoop {
    fn run(mut self) {
        tracing::debug!(model = %self.model, "engine loop started");
        let mut idle = false;
        while self.receive(idle) {
            self.cancel();
            self.pause_and_preempt();
            self.admit();
            self.publish();
            idle = !self.tick();
            self.end_rows();
        }
        tracing::debug!(model = %self.model, "engine loop ended");
    }

    /// Takes new requests (waiting up to [`TICK`] for one when `idle`). False once the model
    /// is unloaded and nothing is left.
    fn receive(&mut self, idle: bool) -> bool {
        let before = self.waiting.len();
        let mut closed = false;
        if idle {
            match self.inbox.recv_timeout(TICK) {
                Ok(job) => self.waiting.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closed = true,
            }
        }
        loop {
            match self.inbox.try_recv() {
                Ok(job) => self.waiting.push(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if self.waiting.len() > before {
            self.tried = None;
        }
        if closed && self.waiting.is_empty() && self.rows.is_empty() {
            return false;
        }
        if closed && idle {
            // unreachable while requests pin the model; never spin
            std::thread::sleep(TICK);
        }
        true
    }

    /// Cancelled rows end before their next step (cancelled waiting requests end with
    /// them, in [`EngineLoop::end_rows`], after them).
    fn cancel(&mut self) {
        for row in &mut self.rows {
            if row.job.cancel.load(Ordering::Relaxed)
                && let Some(run) = &mut row.run
            {
                run.cancel();
            }
        }
    }

    /// Background rows pause while interactive work is alive, and give their KV cache back
    /// while interactive work waits for memory.
    fn pause_and_preempt(&mut self) {
        let urgent = self.s.queue.urgent() || self.s.power.background() != Background::Run;
        let wanting = self.s.wanting_room.load(Ordering::SeqCst) > 0;
        for row in &mut self.rows {
            let paused = row.job.class == Priority::Background && urgent;
            if paused != row.paused {
                row.paused = paused;
                tracing::debug!(request = row.job.id, paused, "background request paused or resumed");
            }
            if paused
                && wanting
                && let Some(r) = row.job.reservation.take()
            {
                if let Some(run) = &mut row.run {
                    run.preempt();
                }
                crate::memory::measure::release_freed();
                self.s.metrics.preempted();
                tracing::info!(request = row.job.id, kv = %mib(r.bytes()), "preempted: KV cache given back");
                drop(r);
            }
        }
    }

    /// The request table says which rows are not computing: paused, or preempted and waiting
    /// to reserve again.
    fn publish(&mut self) {
        for row in &mut self.rows {
            let stopped = row.paused || row.job.reservation.is_none();
            if stopped != row.stopped {
                row.stopped = stopped;
                self.s.requests.set_state(row.job.id, true, stopped);
            }
        }
    }

    /// Whether to try reserving again: something changed here, or [`TICK`] has passed.
    fn may_try(&self) -> bool {
        self.tried.is_none_or(|t| t.elapsed() >= TICK)
    }

    /// Rows preempted reserve again; then waiting requests start, in order, while they get
    /// their reservation and fewer than `max_parallel` rows run.
    fn admit(&mut self) {
        if !self.may_try() {
            return;
        }
        let s = self.s.clone();
        let mut failed_once = false;
        for row in self.rows.iter_mut().filter(|r| !r.paused && !r.ended() && r.job.reservation.is_none()) {
            match s.try_reserve(&row.job.model_name, row.job.kv, row.job.id) {
                Reserve::Held(r) => {
                    tracing::debug!(request = row.job.id, "preempted request goes on");
                    row.job.reservation = Some(r);
                }
                Reserve::Later(_) => failed_once = true,
                Reserve::Never(e) => row.error = Some(e),
            }
        }
        let urgent = s.queue.urgent();
        let power = s.power.background();
        // refused whether or not a row is free for them
        if power == Background::Refuse {
            let (mut refused, kept): (Vec<Job>, Vec<Job>) =
                std::mem::take(&mut self.waiting).into_iter().partition(|j| j.class == Priority::Background);
            self.waiting = kept;
            refused.sort_by_key(|j| j.id);
            for job in refused {
                s.conclude(job, failed(&Error::PowerSaving(s.power.refusal())));
            }
        }
        let mut active = self.rows.iter().filter(|r| !r.paused).count();
        self.waiting.sort_by_cached_key(|j| s.queue.order(&j.place));
        let mut i = 0;
        while i < self.waiting.len() && active < s.max_parallel() {
            let job = &mut self.waiting[i];
            if job.class == Priority::Background && (urgent || power == Background::Defer)
                || job.cancel.load(Ordering::Relaxed)
            {
                i += 1;
                continue;
            }
            match s.try_reserve(&job.model_name, job.kv, job.id) {
                Reserve::Held(r) => {
                    let mut job = self.waiting.remove(i);
                    job.reservation = Some(r);
                    self.start(job);
                    active += 1;
                }
                Reserve::Later(e) if s.config.memory.when_full == WhenFull::Refuse => {
                    s.conclude(self.waiting.remove(i), failed(&e));
                }
                Reserve::Later(_) => {
                    if job.wanting.is_none() {
                        tracing::info!(request = job.id, kv = %mib(job.kv), "waiting for memory to reserve the KV cache");
                        // paused background requests give their KV caches back meanwhile
                        job.wanting =
                            (job.class == Priority::Interactive).then(|| Wanting::new(s.wanting_room.clone()));
                    }
                    failed_once = true;
                    break;
                }
                Reserve::Never(e) => s.conclude(self.waiting.remove(i), failed(&e)),
            }
        }
        self.tried = failed_once.then(Instant::now);
    }

    /// A request starts: its run is set up on the sequence it continues (a session's, or the
    /// prompt cache's best match).
    fn start(&mut self, mut job: Job) {
        job.place.start();
        job.started_at = Some(Instant::now());
        job.wanting = None;
        self.s.requests.set_state(job.id, true, false);
        let _ = self.s.events.send(Event::Started);
        let mut cache = match &job.turn {
            None => self.s.prompt_cache.take(&job.model_name, &job.prompt_ids, 1).map(|c| c.0).unwrap_or_default(),
            Some(turn) => std::mem::take(&mut turn.guard.session.state().cache),
        };
        let prompt = Prompt::Tokens(job.prompt_ids.clone());
        let started =
            std::panic::catch_unwind(AssertUnwindSafe(|| Run::start(&job.model, &mut cache, &prompt, &job.params)));
        let (run, error) = match started {
            Ok(Ok(run)) => (Some(run), None),
            Ok(Err(e)) => (None, Some(generation_error(e))),
            Err(p) => (None, Some(self.s.contain_panic(&job.model_name, &job.model, job.id, &*p))),
        };
        self.rows.push(Row { job, run, cache, error, paused: false, stopped: false });
    }

    /// Runs `f` on row `i`'s run, then streams the text it made final; an error or a panic
    /// ends the row.
    fn guarded<T>(&mut self, i: usize, f: impl FnOnce(&mut Run) -> Result<T, GenerateError>) -> Option<T> {
        let s = &self.s;
        let row = &mut self.rows[i];
        let run = row.run.as_mut()?;
        let (id, owner) = (row.job.id, &row.job.owner);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let value = f(run)?;
            let text = run.take_text();
            if !text.is_empty() {
                crate::faults::hit("run");
                let _ = s.events.send(Event::Token { id, owner: owner.clone(), text });
            }
            Ok(value)
        }));
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                row.error = Some(generation_error(e));
                None
            }
            Err(p) => {
                row.error = Some(s.contain_panic(&row.job.model_name, &row.job.model, id, &*p));
                None
            }
        }
    }

    /// One tick's work: a prefill chunk and a decoding step of the other running rows. False
    /// when no row could run.
    fn tick(&mut self) -> bool {
        let running: Vec<usize> = (0..self.rows.len()).filter(|&i| self.rows[i].runs()).collect();
        if running.is_empty() {
            return false;
        }
        let needs_prefill = |r: &Row| r.run.as_ref().is_some_and(Run::needs_prefill);
        let decoding: Vec<usize> = running.iter().copied().filter(|&i| !needs_prefill(&self.rows[i])).collect();
        let first = running
            .iter()
            .copied()
            .filter(|&i| needs_prefill(&self.rows[i]))
            .min_by_key(|&i| (self.rows[i].job.class, self.rows[i].job.id));
        if let Some(i) = first {
            self.guarded(i, Run::prefill_chunk);
        }
        if !decoding.is_empty() {
            self.step_together(&decoding);
        }
        true
    }

    /// One decoding step of rows `which`, their one-token feeds as one batched forward pass.
    fn step_together(&mut self, which: &[usize]) {
        let mut runs: Vec<&mut Run> = vec![];
        let mut stepped = vec![];
        for (i, row) in self.rows.iter_mut().enumerate() {
            if which.contains(&i)
                && let Some(run) = row.run.as_mut()
            {
                runs.push(run);
                stepped.push(i);
            }
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| Run::step_together(&mut runs))) {
            Ok(results) => {
                drop(runs);
                for (i, r) in stepped.into_iter().zip(results) {
                    // the text it made final is streamed (or the error ends it)
                    self.guarded(i, |_| r);
                }
            }
            Err(p) => {
                drop(runs);
                // the pass's state may be corrupt: every row in it fails
                let message = crate::faults::panic_message(&*p);
                for i in stepped {
                    let job = &self.rows[i].job;
                    let e = self.s.contain_panic(&job.model_name, &job.model, job.id, &message);
                    self.rows[i].error = Some(e);
                }
            }
        }
    }

    /// Ends the rows that are done, failed or cancelled, then the waiting requests cancelled.
    fn end_rows(&mut self) {
        // cancels that came during the tick too
        self.cancel();
        let (ended, rows): (Vec<Row>, Vec<Row>) = std::mem::take(&mut self.rows).into_iter().partition(Row::ended);
        self.rows = rows;
        // a request cancelled while it waited computes nothing
        let (gone, kept): (Vec<Job>, Vec<Job>) =
            std::mem::take(&mut self.waiting).into_iter().partition(|j| j.cancel.load(Ordering::Relaxed));
        self.waiting = kept;
        if ended.is_empty() && gone.is_empty() {
            return;
        }
        self.tried = None;
        let (mut ended, mut gone) = (ended, gone);
        ended.sort_by_key(|r| r.job.id);
        gone.sort_by_key(|j| j.id);
        // in the order they were asked for: a client that cancels several requests gets
        // their ends in its order
        let mut ended = ended.into_iter().peekable();
        let mut gone = gone.into_iter().peekable();
        loop {
            match (ended.peek(), gone.peek()) {
                (Some(r), Some(j)) if r.job.id < j.id => self.end(ended.next().expect("peeked")),
                (_, Some(_)) => self.s.conclude(gone.next().expect("peeked"), cancelled_before_running()),
                (Some(_), None) => self.end(ended.next().expect("peeked")),
                (None, None) => break,
            }
        }
    }

    /// A row's output (its last text streamed, its tool calls sent), its sequence kept for
    /// its session or the prompt cache, and its end reported.
    fn end(&self, row: Row) {
        let s = &self.s;
        let Row { job, run, mut cache, error, .. } = row;
        let result: Result<Output, Error> = match (error, run) {
            (Some(e), _) => Err(e),
            (None, None) => Err(Error::Internal(format!("request {} has no run", job.id))),
            (None, Some(mut run)) => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| run.finish(Some(&mut cache)))) {
                    Ok(Ok(out)) => {
                        let text = run.take_text();
                        if !text.is_empty() {
                            let _ = s.events.send(Event::Token { id: job.id, owner: job.owner.clone(), text });
                        }
                        Ok(out)
                    }
                    Ok(Err(e)) => Err(generation_error(e)),
                    Err(p) => Err(s.contain_panic(&job.model_name, &job.model, job.id, &*p)),
                }
            }
        };
        if job.turn.is_some() {
            s.end_turn(&job, cache, result.as_ref().ok());
        } else if result.is_ok() {
            s.keep_prompt(&job, cache);
        }
        let served = job.model.served();
        let stats = match result {
            Ok(out) => {
                for call in out.tool_calls {
                    let _ = s.events.send(Event::ToolCall { id: job.id, owner: job.owner.clone(), call });
                }
                let st = out.stats;
                let mut stats = FinishStats {
                    backend: Some(served.backend.to_string()),
                    provider: Some(served.provider.clone()),
                    finish_reason: st.finish.as_str().to_string(),
                    prompt_tokens: Some(st.prompt_tokens as u32),
                    generated_tokens: Some(st.generated_tokens as u32),
                    time_to_first_token_ms: Some(st.time_to_first_token.as_secs_f64() * 1e3),
                    prompt_tokens_per_s: Some(st.prompt_tokens_per_s()),
                    decode_tokens_per_s: Some(st.decode_tokens_per_s()),
                    seed: Some(st.seed),
                    cached_prompt_tokens: Some(st.cached_prompt_tokens as u32),
                    ..Default::default()
                };
                if job.params.format.is_some() || job.params.tools.is_some() {
                    stats.forced_tokens = Some(st.forced_tokens as u32);
                }
                // asked for, or automatic and used
                if job.params.prompt_lookup.is_some_and(|n| n > 0) || st.draft.drafted > 0 {
                    stats.draft_tokens = Some(st.draft.drafted as u32);
                    stats.draft_accepted = Some(st.draft.accepted as u32);
                }
                stats
            }
            Err(e) => FinishStats {
                backend: Some(served.backend.to_string()),
                provider: Some(served.provider.clone()),
                ..failed(&e)
            },
        };
        s.conclude(job, stats);
    }
}
