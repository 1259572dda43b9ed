//! Models and requests: the catalog of the models directory, loaded models
//! (on first use or at start), the bounded request queue and the worker
//! threads that run generations off the async runtime. Results leave as
//! [`Event`]s on a channel; the D-Bus layer turns them into signals.
//!
//! Memory ([`admission`]): a load is admitted only if its estimated peak fits
//! the budget next to what is in use, after unloading idle models least
//! recently used first when that makes it fit; a request reserves its KV cache
//! (prompt + `max_tokens`) before it is queued or once others finish. What does
//! not fit is refused with `OutOfBudget` and the numbers. Loading and the
//! catalog are in [`models`], keep_alive and pressure in [`housekeeping`].
//!
//! Order ([`queue`]): interactive requests before background ones, the least
//! served account first within a class; running background requests yield
//! at a token boundary while interactive work waits or runs, and give their
//! KV cache back (preemption: recomputed from their token ids when they go on)
//! while an interactive request waits for memory.
//!
//! What a request holds ([`ledger`]): its model's pin, its KV reservation, its
//! entry in the request table and its session's turn are values dropped when
//! the request ends, however it ends: a panic in its work is caught, ends the
//! request with `GenerationFailed`, and unloads the model once idle (its state
//! may be corrupt).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use llamad_api::{Error, FinishStats};
use tokio::sync::mpsc::UnboundedSender;
use zbus::DBusError as _;

use crate::config::{Config, WhenFull};
use crate::engine::backend::onnxruntime::locate_library;
use crate::engine::{BackendKind, GenerateError, GrammarError, Model, Prompt, SamplingParams};
use crate::identity::Caller;
use crate::memory::budget::Budget;
use crate::memory::estimate::Estimate;
use crate::memory::mib;
use crate::policy::priority::Priority;
use ledger::{Holds, Pin, Reservation, Room};
use queue::{Lease, Queue};

/// What the workers report.
#[derive(Debug)]
pub enum Event {
    Started,
    Token {
        id: u64,
        owner: String,
        text: String,
    },
    Finished {
        id: u64,
        owner: String,
        stats: Box<FinishStats>,
    },
    /// A tool call of request `id`'s answer (sent before its `Finished`).
    ToolCall {
        id: u64,
        owner: String,
        call: crate::engine::tools::ToolCall,
    },
    /// `reason`: request, preload or admin.
    ModelLoaded {
        name: String,
        reason: &'static str,
    },
    /// `reason`: request (UnloadModel), idle (keep_alive), evicted or pressure.
    ModelUnloaded {
        name: String,
        reason: &'static str,
    },
    MemoryPressure {
        active: bool,
        reason: String,
    },
    /// A session was taken out of the registry (idle past its TTL): its object goes too.
    SessionClosed {
        id: u64,
        owner: String,
        reason: crate::session::CloseReason,
    },
}

struct Loaded {
    model: Arc<Model>,
    /// Its pins (requests preparing, queued or running: never evicted while any) and KV
    /// reservations, and when it was last used.
    holds: Arc<Holds>,
    estimate: Estimate,
    /// Resident growth of the daemon over the load.
    measured: crate::memory::measure::Rss,
    /// The highest resident growth seen during the load.
    load_peak: u64,
    /// None: stays loaded until unloaded or evicted.
    keep_alive: Option<std::time::Duration>,
    /// A request's work panicked on it: its state may be corrupt. No new request gets it;
    /// it is unloaded once idle.
    faulted: bool,
}

/// keep_alive seconds (config or request) → how long an idle model stays.
pub fn keep_alive(seconds: i64) -> Option<std::time::Duration> {
    (seconds >= 0).then(|| std::time::Duration::from_secs(seconds as u64))
}

/// A session's turn: the session (busy while the guard lives) and the messages it adds.
pub struct Turn {
    pub guard: crate::session::TurnGuard,
    pub messages: Vec<crate::engine::chat::Message>,
}

/// A model pinned for a request (see [`Scheduler::acquire`]): it stays loaded while this lives.
pub struct Pinned {
    pub model: Arc<Model>,
    pin: Pin,
}

struct Job {
    turn: Option<Turn>,
    id: u64,
    owner: String,
    caller: Arc<Caller>,
    /// The request's place in its app's usage: charged with its tokens when the job goes.
    ticket: crate::policy::usage::Ticket,
    model_name: String,
    model: Arc<Model>,
    pin: Pin,
    prompt_ids: Vec<u32>,
    params: SamplingParams,
    cancel: Arc<AtomicBool>,
    /// Bytes of KV cache the request needs, and their reservation once held: taken when a
    /// worker starts the request (a queued one holds nothing), given back while preempted.
    kv: u64,
    reservation: Mutex<Option<Reservation>>,
    class: Priority,
    /// Its entry in the request table, removed when the job goes.
    listed: Listed,
}

type Requests = Arc<Mutex<HashMap<u64, RequestEntry>>>;

fn lock_requests(r: &Requests) -> MutexGuard<'_, HashMap<u64, RequestEntry>> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request's entry in the table, for as long as the request lives.
struct Listed {
    requests: Requests,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        lock_requests(&self.requests).remove(&self.id);
    }
}

struct RequestEntry {
    owner: String,
    cancel: Arc<AtomicBool>,
    caller: Arc<Caller>,
    model: String,
    session: Option<u64>,
    /// A worker runs it (it was queued before).
    running: bool,
    /// It yields to interactive work now (between two tokens).
    paused: bool,
    class: Priority,
}

/// A request queued or running, for `ListRequests`: who asked (never what).
#[derive(Clone, Debug)]
pub struct RequestSummary {
    pub id: u64,
    pub model: String,
    pub running: bool,
    pub paused: bool,
    pub class: Priority,
    pub caller: Arc<Caller>,
    pub session: Option<u64>,
}

pub struct Scheduler {
    pub config: Config,
    pub budget: Budget,
    loaded: Mutex<HashMap<String, Loaded>>,
    /// Recognised model directories and when they last changed (see `open_dir`).
    catalog: Mutex<HashMap<String, (std::time::SystemTime, crate::engine::ModelDir)>>,
    requests: Requests,
    queue: Arc<Queue<Job>>,
    next_id: AtomicU64,
    events: UnboundedSender<Event>,
    /// Serialises loads so one model is never loaded twice at once.
    load_lock: Mutex<()>,
    /// Why memory is under pressure, while it is.
    pressure: Mutex<Option<String>>,
    /// Signalled when a pin or a reservation is given back (waiters hold `loaded`).
    room: Room,
    /// Interactive requests waiting for memory to reserve their KV cache: paused background
    /// requests give theirs back meanwhile (preemption).
    wanting_room: AtomicU32,
    /// The daemon's own resident memory, counted as in use: measured at start, then again
    /// whenever it is idle (see `housekeeping`).
    baseline: AtomicU64,
    /// Model directories being read (their graphs decoded) now.
    reading: AtomicU32,
    /// Serialises setting ONNX Runtime up (see `set_up_onnxruntime`).
    ort_setup: Mutex<()>,
    /// Model directories checked against their manifests (`policy/manifest.rs`).
    pub verifier: crate::policy::manifest::Verifier,
    /// Backends that have loaded a model in this process (their code is resident).
    warm: Mutex<std::collections::HashSet<BackendKind>>,
    pub sessions: crate::session::Sessions,
    pub prompt_cache: crate::session::prompt_cache::PromptCache,
    /// Permits to tokenize a prompt (`max_tokenizing`), held while it is.
    pub tokenizing: Arc<tokio::sync::Semaphore>,
}

/// Counts an interactive request waiting for memory while it lives.
struct Wanting<'a>(&'a AtomicU32);

impl<'a> Wanting<'a> {
    fn new(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Wanting(count)
    }
}

impl Drop for Wanting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The final message of a request that ended with `e`.
fn failed(e: &Error) -> FinishStats {
    FinishStats {
        finish_reason: "error".into(),
        error_name: Some(e.name().to_string()),
        error: e.description().map(str::to_string),
        ..Default::default()
    }
}

/// D-Bus error for a generation error found before the request is queued.
pub fn request_error(e: GenerateError) -> Error {
    match e {
        GenerateError::ContextOverflow { .. } | GenerateError::PromptTooLong { .. } => {
            Error::ContextOverflow(e.to_string())
        }
        GenerateError::EmptyPrompt | GenerateError::BadToken { .. } | GenerateError::InvalidOption(_) => {
            Error::InvalidArgs(e.to_string())
        }
        GenerateError::Chat(_) | GenerateError::NoTokenizer => Error::InvalidArgs(e.to_string()),
        GenerateError::Grammar(GrammarError::Invalid { .. } | GrammarError::Tokenizer(_)) => {
            Error::InvalidArgs(e.to_string())
        }
        other => Error::Internal(other.to_string()),
    }
}

/// The final message of a request that did not get to run: cancelled while it was queued.
fn cancelled_before_running() -> FinishStats {
    FinishStats { finish_reason: "cancelled".into(), generated_tokens: Some(0), ..Default::default() }
}

mod admission;
mod housekeeping;
pub mod ledger;
mod models;
pub mod queue;
mod sessions;

impl Scheduler {
    /// Starts `config.max_parallel` workers.
    pub fn start(config: Config, events: UnboundedSender<Event>) -> Arc<Scheduler> {
        crate::memory::measure::tune_allocator();
        let s = Arc::new(Scheduler {
            loaded: Mutex::new(HashMap::new()),
            catalog: Mutex::new(HashMap::new()),
            requests: Default::default(),
            queue: Queue::new(config.max_queue),
            next_id: AtomicU64::new(1),
            events,
            load_lock: Mutex::new(()),
            pressure: Mutex::new(None),
            room: Default::default(),
            wanting_room: AtomicU32::new(0),
            ort_setup: Mutex::new(()),
            verifier: Default::default(),
            reading: AtomicU32::new(0),
            warm: Mutex::new(Default::default()),
            sessions: Default::default(),
            prompt_cache: Default::default(),
            tokenizing: Arc::new(tokio::sync::Semaphore::new(config.max_tokenizing)),
            baseline: AtomicU64::new({
                // ONNX Runtime's one-time setup (library, environment, thread pools) belongs to
                // the daemon's baseline, not to the first model loaded on it (unless the daemon
                // is configured for tract alone). Setting it up lazily instead (idle RSS 13 MiB
                // instead of 33) was tried and reverted: the memory tests' reload measurements
                // then failed now and again (a load measured up to 35 % below its estimate).
                if config.backend != Some(BackendKind::Tract) {
                    let _ =
                        crate::engine::backend::onnxruntime::available_providers(config.onnxruntime.library.as_deref());
                }
                crate::memory::measure::resident()
            }),
            budget: Budget::detect(config.memory.budget, config.memory.reserve),
            config,
        });
        tracing::info!(budget = %mib(s.budget.effective), physical = %mib(s.budget.physical),
            cgroup = ?s.budget.cgroup_source, "memory budget");
        let h = s.clone();
        std::thread::Builder::new()
            .name("llamad-housekeeping".into())
            .spawn(move || h.housekeeping())
            .expect("spawning the housekeeping thread");
        for i in 0..s.config.max_parallel {
            let s = s.clone();
            std::thread::Builder::new()
                .name(format!("llamad-worker-{i}"))
                .spawn(move || s.worker())
                .expect("spawning a worker thread");
        }
        s
    }

    pub fn backends(&self) -> Vec<String> {
        let mut b = vec!["tract".to_string()];
        if locate_library(self.config.onnxruntime.library.as_deref()).is_ok() {
            b.insert(0, "onnxruntime".into());
        }
        b
    }

    /// Queues a request whose prompt was already checked against the model, which the
    /// caller pinned with [`Scheduler::acquire`] (the pin passes to the request). A session's
    /// turn reserves the KV cache of its whole prompt: what the session held moves into it.
    /// It runs in priority `class`.
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &self,
        caller: &Arc<Caller>,
        ticket: crate::policy::usage::Ticket,
        class: Priority,
        model_name: &str,
        pinned: Pinned,
        prompt_ids: Vec<u32>,
        mut params: SamplingParams,
        keep_alive_override: Option<i64>,
        mut turn: Option<Turn>,
    ) -> Result<u64, Error> {
        params.max_tokens = params.max_tokens.min(self.config.max_tokens_limit);
        let tokens = prompt_ids.len() as u64 + params.max_tokens as u64;
        // Between turns a session's KV cache counts as the session's; during one, as the
        // request's (given back to the session if the turn never runs).
        if let Some(t) = &mut turn {
            t.guard.take_kv();
        }
        let (kv, ready) = {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            let (kv, resident) = loaded
                .get(model_name)
                .map(|l| {
                    let chunk = self.config.prefill_chunk as u64;
                    (l.estimate.request(prompt_ids.len() as u64, tokens, chunk), l.resident())
                })
                .unwrap_or((0, 0));
            let what = format!("the KV cache of this request ({tokens} tokens: prompt + max_tokens)");
            // Admission only: a queued request holds nothing (its reservation is taken when a
            // worker starts it), so that memory is never held by work that cannot run.
            let ready = match self.make_room(&mut loaded, kv, &what, false) {
                Ok(_) => true,
                // It fits once other work is done: wait in the queue.
                Err(_)
                    if self.config.memory.when_full == WhenFull::Queue
                        && self.baseline() + resident + kv <= self.budget.effective =>
                {
                    false
                }
                Err(e) => return Err(e),
            };
            if let Some(k) = keep_alive_override
                && let Some(l) = loaded.get_mut(model_name)
            {
                l.keep_alive = keep_alive(k);
            }
            (kv, ready)
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(false));
        let owner = caller.name.as_str();
        let entry = RequestEntry {
            owner: owner.to_string(),
            cancel: cancel.clone(),
            caller: caller.clone(),
            model: model_name.to_string(),
            session: turn.as_ref().map(|t| t.guard.session.id),
            running: false,
            paused: false,
            class,
        };
        lock_requests(&self.requests).insert(id, entry);
        let Pinned { model, pin } = pinned;
        let job = Job {
            turn,
            id,
            owner: owner.to_string(),
            caller: caller.clone(),
            ticket,
            model_name: model_name.to_string(),
            model,
            pin,
            prompt_ids,
            params,
            cancel,
            kv,
            reservation: Mutex::new(None),
            class,
            listed: Listed { requests: self.requests.clone(), id },
        };
        let account = crate::policy::rules::account_of(caller);
        match self.queue.push(job, class, &account, ready) {
            Ok(()) => {
                let _ = self.events.send(Event::Started);
                Ok(id)
            }
            // The job (its pin, reservation, entry and turn) is dropped with the error.
            Err(queue::Full(_)) => {
                Err(Error::Busy(format!("{} requests are queued already (max_queue)", self.config.max_queue)))
            }
        }
    }

    /// Cancels request `id` if `caller` owns it.
    pub fn cancel(&self, caller: &str, id: u64) -> Result<(), Error> {
        let requests = lock_requests(&self.requests);
        match requests.get(&id) {
            Some(r) if r.owner == caller => {
                r.cancel.store(true, Ordering::Relaxed);
                self.room.notify_all();
                Ok(())
            }
            _ => Err(Error::UnknownRequest(format!("no request {id} of this client is running or queued"))),
        }
    }

    /// Cancels every request of `owner` (a client that left the bus). Returns how many.
    pub fn cancel_owner(&self, owner: &str) -> usize {
        let requests = lock_requests(&self.requests);
        let mut n = 0;
        for r in requests.values().filter(|r| r.owner == owner) {
            r.cancel.store(true, Ordering::Relaxed);
            n += 1;
        }
        self.room.notify_all();
        n
    }

    /// Cancels everything (shutdown).
    pub fn cancel_all(&self) {
        for r in lock_requests(&self.requests).values() {
            r.cancel.store(true, Ordering::Relaxed);
        }
        self.room.notify_all();
    }

    /// Requests queued or running, oldest first.
    pub fn list_requests(&self) -> Vec<RequestSummary> {
        let requests = lock_requests(&self.requests);
        let mut list: Vec<RequestSummary> = requests
            .iter()
            .map(|(&id, r)| RequestSummary {
                id,
                model: r.model.clone(),
                running: r.running,
                paused: r.paused,
                class: r.class,
                caller: r.caller.clone(),
                session: r.session,
            })
            .collect();
        list.sort_by_key(|r| r.id);
        list
    }

    /// Requests not finished yet (queued or running).
    pub fn outstanding(&self) -> usize {
        lock_requests(&self.requests).len()
    }

    /// Requests running (a worker has them, paused ones included).
    pub fn running(&self) -> u32 {
        lock_requests(&self.requests).values().filter(|r| r.running).count() as u32
    }

    /// Requests computing now: running and not paused. A paused request's memory is counted
    /// (its reservation) or given back (preempted).
    pub(super) fn computing(&self) -> u32 {
        lock_requests(&self.requests).values().filter(|r| r.running && !r.paused).count() as u32
    }

    /// Requests queued (no worker has them yet).
    pub fn queued(&self) -> u32 {
        lock_requests(&self.requests).values().filter(|r| !r.running).count() as u32
    }

    fn set_state(&self, id: u64, running: bool, paused: bool) {
        if let Some(r) = lock_requests(&self.requests).get_mut(&id) {
            r.running = running;
            r.paused = paused;
        }
    }

    fn worker(&self) {
        loop {
            let (job, lease) = self.queue.take();
            // `process` catches a panic of the request's work; this catches one of its own
            // (a bug), so that the worker goes on. What the job held was dropped unwinding.
            if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| self.process(job, lease))) {
                tracing::error!(panic = %crate::faults::panic_message(&*p), "a worker panicked finishing a request");
            }
        }
    }

    /// Runs a job taken from the queue, and reports and releases what it held.
    fn process(&self, job: Job, mut lease: Lease<Job>) {
        let stats = if job.cancel.load(Ordering::Relaxed) {
            // cancelled while it was queued: nothing is computed
            cancelled_before_running()
        } else {
            match self.reserve_when_room(&job) {
                Ok(()) if job.cancel.load(Ordering::Relaxed) => cancelled_before_running(),
                Ok(()) => {
                    self.set_state(job.id, true, false);
                    let _ = self.events.send(Event::Started);
                    // Everything the job holds is released by drop below, whatever happened.
                    match std::panic::catch_unwind(AssertUnwindSafe(|| self.run(&job))) {
                        Ok(stats) => stats,
                        Err(p) => self.contain_panic(&job, &*p),
                    }
                }
                Err(e) => failed(&e),
            }
        };
        tracing::debug!(request = job.id, client = %job.owner, model = %job.model_name,
            finish = %stats.finish_reason, generated = stats.generated_tokens.unwrap_or(0), "request finished");
        crate::audit::log(&crate::audit::Record {
            caller: &job.caller,
            model: &job.model_name,
            event: crate::audit::Event::Request {
                id: Some(job.id),
                session: job.turn.as_ref().map(|t| t.guard.session.id),
                tokens_in: stats.prompt_tokens.unwrap_or(job.prompt_ids.len() as u32),
                tokens_out: stats.generated_tokens.unwrap_or(0),
            },
            result: stats.error_name.as_deref().unwrap_or(&stats.finish_reason),
        });
        let tokens = stats.prompt_tokens.unwrap_or(0) as u64 + stats.generated_tokens.unwrap_or(0) as u64;
        // Every field named (no `..`): what the job holds is dropped here, not at the end of
        // this function, since a client that unloads the model on `Finished` must find it
        // freed. The memory goes back to the system before the reservation and the pin do
        // (and the model may be evicted), so that what the budget counts is what is resident.
        let Job {
            id,
            owner,
            model_name: _,
            mut ticket,
            model,
            pin,
            turn,
            prompt_ids,
            params,
            caller,
            cancel,
            kv: _,
            reservation,
            class: _,
            listed,
        } = job;
        ticket.charge(tokens);
        drop((ticket, model, turn, prompt_ids, params, caller, cancel));
        lease.served = tokens;
        crate::memory::measure::release_freed();
        drop((reservation, pin, listed));
        let _ = self.events.send(Event::Finished { id, owner, stats: Box::new(stats) });
        // only now may paused background work go on (after this request's last message)
        drop(lease);
    }

    /// A request's work panicked: it ends with `GenerationFailed`; its model may be corrupt,
    /// so no new request gets it and it is unloaded once idle.
    fn contain_panic(&self, job: &Job, p: &(dyn std::any::Any + Send)) -> FinishStats {
        let message = crate::faults::panic_message(p);
        tracing::error!(request = job.id, model = %job.model_name, panic = %message,
            "a request's work panicked: the request failed; the model is unloaded once idle");
        if let Some(l) = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&job.model_name)
            && Arc::ptr_eq(&l.model, &job.model)
        {
            l.faulted = true;
        }
        failed(&Error::GenerationFailed(format!("the request's work failed unexpectedly ({message})")))
    }

    fn run(&self, job: &Job) -> FinishStats {
        let served = job.model.served();
        let mut stats = FinishStats {
            backend: Some(served.backend.to_string()),
            provider: Some(served.provider.clone()),
            ..Default::default()
        };
        let prompt = Prompt::Tokens(job.prompt_ids.clone());
        let events = &self.events;
        let on_text = |text: &str| {
            crate::faults::hit("run");
            let _ = events.send(Event::Token { id: job.id, owner: job.owner.clone(), text: text.to_string() });
        };
        let yielder = Yielder { scheduler: self, job };
        let result = match &job.turn {
            None => {
                let mut cache =
                    self.prompt_cache.take(&job.model_name, &job.prompt_ids, 1).map(|c| c.0).unwrap_or_default();
                let result = job.model.generate_from(&mut cache, &prompt, &job.params, &job.cancel, &yielder, on_text);
                self.keep_prompt(job, cache);
                result
            }
            Some(turn) => {
                let mut cache = std::mem::take(&mut turn.guard.session.state().cache);
                let result = job.model.generate_from(&mut cache, &prompt, &job.params, &job.cancel, &yielder, on_text);
                self.end_turn(job, cache, &result);
                result
            }
        };
        match result {
            Ok(out) => {
                for call in out.tool_calls {
                    let _ = self.events.send(Event::ToolCall { id: job.id, owner: job.owner.clone(), call });
                }
                let s = out.stats;
                stats.finish_reason = s.finish.as_str().to_string();
                stats.prompt_tokens = Some(s.prompt_tokens as u32);
                stats.generated_tokens = Some(s.generated_tokens as u32);
                stats.time_to_first_token_ms = Some(s.time_to_first_token.as_secs_f64() * 1e3);
                stats.prompt_tokens_per_s = Some(s.prompt_tokens_per_s());
                stats.decode_tokens_per_s = Some(s.decode_tokens_per_s());
                stats.seed = Some(s.seed);
                stats.cached_prompt_tokens = Some(s.cached_prompt_tokens as u32);
                if job.params.format.is_some() || job.params.tools.is_some() {
                    stats.forced_tokens = Some(s.forced_tokens as u32);
                }
                if job.params.prompt_lookup > 0 {
                    stats.draft_tokens = Some(s.draft.drafted as u32);
                    stats.draft_accepted = Some(s.draft.accepted as u32);
                }
            }
            Err(e) => {
                tracing::error!(request = job.id, error = %e, "generation failed");
                let e = match e {
                    GenerateError::NoRoom(m) => Error::OutOfBudget(m),
                    e => Error::GenerationFailed(e.to_string()),
                };
                stats = FinishStats { backend: stats.backend, provider: stats.provider, ..failed(&e) };
            }
        }
        stats
    }
}

/// How often a paused request looks again at what it waits for.
const PAUSE_TICK: Duration = Duration::from_millis(50);

/// A running job's way of letting interactive work go first (see [`queue`]): while it
/// yields, its worker runs the interactive requests waiting, or waits for those running;
/// while an interactive request waits for memory, it gives back its KV cache (its sequence
/// and its reservation), and reserves again (waiting, holding nothing) before it goes on.
struct Yielder<'a> {
    scheduler: &'a Scheduler,
    job: &'a Job,
}

impl Yielder<'_> {
    fn reservation(&self) -> MutexGuard<'_, Option<Reservation>> {
        self.job.reservation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the request's KV cache back: its sequence (computed again when it goes on) and
    /// its reservation.
    fn preempt(&self, seq: &mut Option<Box<dyn crate::engine::backend::Sequence>>, why: &str) {
        let Some(r) = self.reservation().take() else { return };
        tracing::info!(request = self.job.id, kv = %mib(r.bytes()), why, "preempted: KV cache given back");
        *seq = None;
        crate::memory::measure::release_freed();
        drop(r);
    }
}

impl crate::engine::Yield for Yielder<'_> {
    fn wanted(&self) -> bool {
        self.scheduler.queue.should_yield(self.job.class)
    }

    fn wait(&self, seq: &mut Option<Box<dyn crate::engine::backend::Sequence>>) -> Result<(), GenerateError> {
        let s = self.scheduler;
        tracing::debug!(request = self.job.id, "yielding to interactive work");
        s.set_state(self.job.id, true, true);
        let result = loop {
            if self.job.cancel.load(Ordering::Relaxed) {
                break Ok(());
            }
            if s.wanting_room.load(Ordering::SeqCst) > 0 {
                self.preempt(seq, "interactive work waits for memory");
            }
            match s.queue.yield_for(PAUSE_TICK) {
                queue::Yielded::Run(job, lease) => {
                    // Run here: if it cannot reserve while this request holds its KV cache,
                    // this one gives it back first (it must not wait on itself).
                    if matches!(s.try_reserve(&job), Ok(false)) {
                        self.preempt(seq, "the interactive request it runs needs the memory");
                    }
                    s.process(job, lease)
                }
                queue::Yielded::Waiting => {}
                queue::Yielded::Done if self.reservation().is_some() => break Ok(()),
                // No interactive work left: reserve again to go on (waiting holding nothing).
                queue::Yielded::Done => match s.try_reserve(self.job) {
                    Ok(true) => break Ok(()),
                    Ok(false) => s.wait_for_room(),
                    Err(e) => break Err(GenerateError::NoRoom(e.description().unwrap_or_default().to_string())),
                },
            }
        };
        s.set_state(self.job.id, true, false);
        result
    }
}
