//! Models and requests: the catalog of the models directory, loaded models
//! (on first use or at start), and one engine loop per loaded model that runs
//! its requests ([`engine_loop`]). Results leave as [`Event`]s on a channel; the
//! D-Bus layer turns them into signals.
//!
//! The parts: the model registry ([`models`]: catalog, loading, unloading), the
//! ledger ([`ledger`]: pins and KV reservations as values released on drop), the
//! memory admission ([`admission`]), the order requests run in ([`queue`]:
//! priority classes, fairness between accounts), the request table
//! ([`requests`]), the per-model loop ([`engine_loop`]), sessions' side
//! ([`sessions`]) and housekeeping (keep_alive, pressure: [`housekeeping`]).
//!
//! A request's path: the D-Bus layer tokenizes its prompt and pins its model
//! ([`Scheduler::acquire`]); [`Scheduler::submit`] admits it (refused at once with
//! the numbers if it can never fit, or if the queue is full) and sends it to its
//! model's loop, where it waits holding nothing but its pin until its KV
//! reservation is held, runs, and ends; [`Scheduler::conclude`] then releases
//! everything it held (by drop) and reports `Finished`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use llamad_api::{Error, FinishStats};
use tokio::sync::mpsc::UnboundedSender;
use zbus::DBusError as _;

use crate::config::{Config, WhenFull};
use crate::engine::backend::onnxruntime::locate_library;
use crate::engine::{BackendKind, GenerateError, GrammarError, Model, SamplingParams};
use crate::identity::Caller;
use crate::memory::budget::Budget;
use crate::memory::estimate::Estimate;
use crate::memory::mib;
use crate::policy::priority::Priority;
use ledger::{Holds, Pin, Reservation, Room};
use queue::Queue;
pub use requests::RequestSummary;
use requests::{Listed, Requests};

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
    /// The power governor's state changed (`Scheduler::power` has it).
    PowerState,
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
    /// Its engine loop's inbox; dropped with the model, which ends the loop.
    inbox: std::sync::mpsc::Sender<Job>,
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
    /// Bytes of KV cache the request needs, and their reservation once held: taken when its
    /// loop starts the request (a queued one holds nothing), given back while preempted.
    kv: u64,
    reservation: Option<Reservation>,
    class: Priority,
    /// Its entry in the request table, removed when the job goes.
    listed: Listed,
    /// Its place in the order (and its account's count of running requests).
    place: queue::Place,
    /// When it was admitted, and when its loop started it (the queue wait in the metrics).
    queued_at: std::time::Instant,
    started_at: Option<std::time::Instant>,
    /// An interactive request waiting for memory: paused background work gives its KV
    /// cache back while this lives.
    wanting: Option<Wanting>,
}

pub struct Scheduler {
    /// Itself, for the engine loops it starts.
    me: Weak<Scheduler>,
    pub config: Config,
    pub budget: Budget,
    loaded: Mutex<HashMap<String, Loaded>>,
    /// Recognised model directories and when they last changed (see `open_dir`).
    catalog: Mutex<HashMap<String, (std::time::SystemTime, crate::engine::ModelDir)>>,
    requests: Requests,
    queue: Arc<Queue>,
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
    wanting_room: Arc<AtomicU32>,
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
    /// The power and heat governor's limits (`max_parallel`, background work).
    pub power: Arc<crate::power::Governor>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Counts an interactive request waiting for memory while it lives.
struct Wanting(Arc<AtomicU32>);

impl Wanting {
    fn new(count: Arc<AtomicU32>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Wanting(count)
    }
}

impl Drop for Wanting {
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

/// `Busy` of `org.llamad.Llama1.Error.Busy`: the metrics' result label.
pub fn short_error_name(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// The final message of a request that did not get to run: cancelled while it was queued.
fn cancelled_before_running() -> FinishStats {
    FinishStats { finish_reason: "cancelled".into(), generated_tokens: Some(0), ..Default::default() }
}

mod admission;
pub mod engine_loop;
mod housekeeping;
pub mod ledger;
mod models;
pub mod queue;
pub mod requests;
mod sessions;

impl Scheduler {
    /// Starts the scheduler and its housekeeping thread (engine loops start with their models).
    pub fn start(config: Config, events: UnboundedSender<Event>) -> Arc<Scheduler> {
        crate::memory::measure::tune_allocator();
        let s = Arc::new_cyclic(|me| Scheduler {
            me: me.clone(),
            loaded: Mutex::new(HashMap::new()),
            catalog: Mutex::new(HashMap::new()),
            requests: Default::default(),
            queue: Queue::new(config.max_queue),
            next_id: AtomicU64::new(1),
            events,
            load_lock: Mutex::new(()),
            pressure: Mutex::new(None),
            room: Default::default(),
            wanting_room: Default::default(),
            ort_setup: Mutex::new(()),
            verifier: Default::default(),
            reading: AtomicU32::new(0),
            warm: Mutex::new(Default::default()),
            sessions: Default::default(),
            prompt_cache: Default::default(),
            tokenizing: Arc::new(tokio::sync::Semaphore::new(config.max_tokenizing)),
            power: Arc::new(crate::power::Governor::new(config.power.clone())),
            metrics: Default::default(),
            // ONNX Runtime is set up on first use (`set_up_onnxruntime`: a load on it, or
            // reading `Providers`), its growth then added to this baseline: an idle daemon
            // holds none of it.
            baseline: AtomicU64::new(crate::memory::measure::resident()),
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
        self.power_check(class)?;
        params.max_tokens = params.max_tokens.min(self.config.max_tokens_limit);
        let tokens = prompt_ids.len() as u64 + params.max_tokens as u64;
        // Between turns a session's KV cache counts as the session's; during one, as the
        // request's (given back to the session if the turn never runs).
        if let Some(t) = &mut turn {
            t.guard.take_kv();
        }
        let kv = {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            let (kv, resident) = loaded
                .get(model_name)
                .map(|l| {
                    let chunk = self.config.prefill_chunk as u64;
                    (l.estimate.request(prompt_ids.len() as u64, tokens, chunk), l.resident())
                })
                .unwrap_or((0, 0));
            let what = format!("the KV cache of this request ({tokens} tokens: prompt + max_tokens)");
            // Admission only: a queued request holds nothing (its reservation is taken when its
            // loop starts it), so that memory is never held by work that cannot run.
            match self.make_room(&mut loaded, kv, &what, false) {
                Ok(_) => {}
                // It fits once other work is done: wait in the queue.
                Err(_)
                    if self.config.memory.when_full == WhenFull::Queue
                        && self.baseline() + resident + kv <= self.budget.effective => {}
                Err(e) => return Err(e),
            }
            if let Some(k) = keep_alive_override
                && let Some(l) = loaded.get_mut(model_name)
            {
                l.keep_alive = keep_alive(k);
            }
            kv
        };
        let account = crate::policy::rules::account_of(caller);
        // The job (its pin, entry and turn) is dropped with an error.
        let place = self.queue.enter(class, &account).map_err(|queue::Full| {
            Error::Busy(format!("{} requests are queued already (max_queue)", self.config.max_queue))
        })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(false));
        let owner = caller.name.as_str();
        let listed = self.requests.insert(
            id,
            requests::Entry {
                owner: owner.to_string(),
                cancel: cancel.clone(),
                caller: caller.clone(),
                model: model_name.to_string(),
                session: turn.as_ref().map(|t| t.guard.session.id),
                running: false,
                paused: false,
                class,
            },
        );
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
            reservation: None,
            class,
            listed,
            place,
            wanting: None,
            queued_at: std::time::Instant::now(),
            started_at: None,
        };
        let inbox = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(model_name).map(|l| l.inbox.clone());
        if inbox.is_some_and(|i| i.send(job).is_ok()) {
            let _ = self.events.send(Event::Started);
            return Ok(id);
        }
        Err(Error::Internal(format!("model \"{model_name}\" has no engine loop")))
    }

    /// A sender of events (for the power governor's watcher).
    pub fn events(&self) -> UnboundedSender<Event> {
        self.events.clone()
    }

    /// `PowerSaving` for background work while the power governor refuses it.
    pub fn power_check(&self, class: Priority) -> Result<(), Error> {
        if class == Priority::Background && self.power.background() == crate::power::Background::Refuse {
            return Err(Error::PowerSaving(self.power.refusal()));
        }
        Ok(())
    }

    /// `max_parallel` as the power governor allows it now.
    fn max_parallel(&self) -> usize {
        self.power.max_parallel(self.config.max_parallel)
    }

    /// The metrics in Prometheus' text format, with the state now.
    pub fn metrics_text(&self) -> String {
        let m = self.memory_status();
        let now = crate::metrics::Now {
            memory_used: m.used.unwrap_or(0),
            memory_budget: m.budget,
            models_loaded: self.loaded_names().len() as u64,
            requests_running: self.running() as u64,
            requests_queued: self.queued() as u64,
            power_state: self.power.state().state.to_string(),
        };
        self.metrics.render(&now)
    }

    /// Cancels request `id` if `caller` owns it.
    pub fn cancel(&self, caller: &str, id: u64) -> Result<(), Error> {
        self.requests.cancel(caller, id)
    }

    /// Cancels every request of `owner` (a client that left the bus). Returns how many.
    pub fn cancel_owner(&self, owner: &str) -> usize {
        self.requests.cancel_owner(owner)
    }

    /// Cancels everything (shutdown).
    pub fn cancel_all(&self) {
        self.requests.cancel_all()
    }

    /// Requests queued or running, oldest first.
    pub fn list_requests(&self) -> Vec<RequestSummary> {
        self.requests.list()
    }

    /// Requests not finished yet (queued or running).
    pub fn outstanding(&self) -> usize {
        self.requests.count(|_| true) as usize
    }

    /// Requests running (their loop has them, paused ones included).
    pub fn running(&self) -> u32 {
        self.requests.count(|r| r.running)
    }

    /// Requests computing now: running and not paused. A paused request's memory is counted
    /// (its reservation) or given back (preempted).
    pub(super) fn computing(&self) -> u32 {
        self.requests.count(|r| r.running && !r.paused)
    }

    /// Requests queued (not started yet).
    pub fn queued(&self) -> u32 {
        self.requests.count(|r| !r.running)
    }

    /// Reports the end of a request and releases what it held.
    fn conclude(&self, job: Job, stats: FinishStats) {
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
        let account = crate::policy::rules::account_of(&job.caller);
        self.metrics.ended(&crate::metrics::Ended {
            result: stats.error_name.as_deref().map(short_error_name).unwrap_or(&stats.finish_reason),
            priority: job.class.as_str(),
            app: &account,
            prompt_tokens: stats.prompt_tokens.unwrap_or(0) as u64,
            cached_prompt_tokens: stats.cached_prompt_tokens.unwrap_or(0) as u64,
            generated_tokens: stats.generated_tokens.unwrap_or(0) as u64,
            time_to_first_token_s: stats.time_to_first_token_ms.map(|t| t / 1000.0),
            decode_tokens_per_s: stats.decode_tokens_per_s,
            queue_wait_s: job.started_at.map(|t| t.duration_since(job.queued_at).as_secs_f64()),
        });
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
            mut place,
            wanting,
            queued_at: _,
            started_at: _,
        } = job;
        ticket.charge(tokens);
        drop((ticket, model, turn, prompt_ids, params, caller, cancel, wanting));
        place.served = tokens;
        crate::memory::measure::release_freed();
        drop((reservation, pin, listed));
        let _ = self.events.send(Event::Finished { id, owner, stats: Box::new(stats) });
        // only now may paused background work go on (after this request's last message)
        drop(place);
    }

    /// A request's work panicked: it ends with `GenerationFailed`; its model may be corrupt,
    /// so no new request gets it and it is unloaded once idle.
    fn contain_panic(&self, model_name: &str, model: &Arc<Model>, id: u64, p: &(dyn std::any::Any + Send)) -> Error {
        let message = crate::faults::panic_message(p);
        tracing::error!(request = id, model = %model_name, panic = %message,
            "a request's work panicked: the request failed; the model is unloaded once idle");
        if let Some(l) = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get_mut(model_name)
            && Arc::ptr_eq(&l.model, model)
        {
            l.faulted = true;
        }
        Error::GenerationFailed(format!("the request's work failed unexpectedly ({message})"))
    }
}
