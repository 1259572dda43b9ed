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
//! at a token boundary while interactive work waits or runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    last_used: Instant,
    /// Requests queued or running on this model (pinned: never evicted while > 0).
    active: u32,
    estimate: Estimate,
    /// Resident growth of the daemon over the load.
    measured: crate::memory::measure::Rss,
    /// The highest resident growth seen during the load.
    load_peak: u64,
    kv_reserved: u64,
    /// None: stays loaded until unloaded or evicted.
    keep_alive: Option<std::time::Duration>,
}

/// keep_alive seconds (config or request) → how long an idle model stays.
pub fn keep_alive(seconds: i64) -> Option<std::time::Duration> {
    (seconds >= 0).then(|| std::time::Duration::from_secs(seconds as u64))
}

/// A session's turn: the session and the messages the turn adds.
pub struct Turn {
    pub session: Arc<crate::session::Session>,
    pub messages: Vec<crate::engine::chat::Message>,
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
    prompt_ids: Vec<u32>,
    params: SamplingParams,
    cancel: Arc<AtomicBool>,
    kv: u64,
    /// Whether `kv` is reserved yet (queued requests reserve when a worker takes them).
    reserved: bool,
    class: Priority,
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
    requests: Mutex<HashMap<u64, RequestEntry>>,
    queue: Arc<Queue<Job>>,
    next_id: AtomicU64,
    pub running: AtomicU32,
    pub queued: AtomicU32,
    events: UnboundedSender<Event>,
    /// Serialises loads so one model is never loaded twice at once.
    load_lock: Mutex<()>,
    /// Why memory is under pressure, while it is.
    pressure: Mutex<Option<String>>,
    /// Signalled (with `loaded`) when reserved memory is released.
    room: std::sync::Condvar,
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

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

/// D-Bus error for a generation error found before the request is queued.
pub fn request_error(e: GenerateError) -> Error {
    match e {
        GenerateError::ContextOverflow { .. } => Error::ContextOverflow(e.to_string()),
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

mod admission;
mod housekeeping;
mod models;
pub mod queue;
mod sessions;

impl Scheduler {
    /// Starts `config.max_parallel` workers.
    pub fn start(config: Config, events: UnboundedSender<Event>) -> Arc<Scheduler> {
        let s = Arc::new(Scheduler {
            loaded: Mutex::new(HashMap::new()),
            catalog: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            queue: Queue::new(config.max_queue),
            next_id: AtomicU64::new(1),
            running: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            events,
            load_lock: Mutex::new(()),
            pressure: Mutex::new(None),
            room: std::sync::Condvar::new(),
            ort_setup: Mutex::new(()),
            verifier: Default::default(),
            reading: AtomicU32::new(0),
            warm: Mutex::new(Default::default()),
            sessions: Default::default(),
            prompt_cache: Default::default(),
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
        model: Arc<Model>,
        prompt_ids: Vec<u32>,
        mut params: SamplingParams,
        keep_alive_override: Option<i64>,
        turn: Option<Turn>,
    ) -> Result<u64, Error> {
        params.max_tokens = params.max_tokens.min(self.config.max_tokens_limit);
        let tokens = prompt_ids.len() as u64 + params.max_tokens as u64;
        let (kv, reserved) = {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            let (kv, resident) = loaded
                .get(model_name)
                .map(|l| (l.estimate.request(prompt_ids.len() as u64, tokens), l.resident()))
                .unwrap_or((0, 0));
            let what = format!("the KV cache of this request ({tokens} tokens: prompt + max_tokens)");
            let reserved = match self.make_room(&mut loaded, kv, &what, false) {
                Ok(_) => true,
                // It fits once other work is done: wait in the queue.
                Err(_)
                    if self.config.memory.when_full == WhenFull::Queue
                        && self.baseline() + resident + kv <= self.budget.effective =>
                {
                    false
                }
                Err(e) => {
                    drop(loaded);
                    self.unpin(model_name);
                    return Err(e);
                }
            };
            if let Some(l) = loaded.get_mut(model_name) {
                if reserved {
                    l.kv_reserved += kv;
                }
                if let Some(k) = keep_alive_override {
                    l.keep_alive = keep_alive(k);
                }
            }
            (kv, reserved)
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(false));
        let owner = caller.name.as_str();
        let entry = RequestEntry {
            owner: owner.to_string(),
            cancel: cancel.clone(),
            caller: caller.clone(),
            model: model_name.to_string(),
            session: turn.as_ref().map(|t| t.session.id),
            running: false,
            paused: false,
            class,
        };
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).insert(id, entry);
        self.queued.fetch_add(1, Ordering::SeqCst);
        // Between turns a session's KV cache counts as the session's; during one, as the job's.
        let session = turn.as_ref().map(|t| t.session.clone());
        let session_kv = session.as_ref().map_or(0, |s| std::mem::take(&mut s.state().kv_bytes));
        let job = Job {
            turn,
            id,
            owner: owner.to_string(),
            caller: caller.clone(),
            ticket,
            model_name: model_name.to_string(),
            model,
            prompt_ids,
            params,
            cancel,
            kv,
            reserved,
            class,
        };
        let account = crate::policy::rules::account_of(caller);
        match self.queue.push(job, class, &account, reserved) {
            Ok(()) => {
                let _ = self.events.send(Event::Started);
                Ok(id)
            }
            Err(queue::Full(_)) => {
                if let Some(s) = session {
                    s.state().kv_bytes = session_kv;
                }
                self.queued.fetch_sub(1, Ordering::SeqCst);
                self.requests.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                self.release(model_name, if reserved { kv } else { 0 });
                Err(Error::Busy(format!("{} requests are queued already (max_queue)", self.config.max_queue)))
            }
        }
    }

    /// Cancels request `id` if `caller` owns it.
    pub fn cancel(&self, caller: &str, id: u64) -> Result<(), Error> {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        match requests.get(&id) {
            Some(r) if r.owner == caller => {
                r.cancel.store(true, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(Error::UnknownRequest(format!("no request {id} of this client is running or queued"))),
        }
    }

    /// Cancels every request of `owner` (a client that left the bus). Returns how many.
    pub fn cancel_owner(&self, owner: &str) -> usize {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for r in requests.values().filter(|r| r.owner == owner) {
            r.cancel.store(true, Ordering::Relaxed);
            n += 1;
        }
        n
    }

    /// Cancels everything (shutdown).
    pub fn cancel_all(&self) {
        for r in self.requests.lock().unwrap_or_else(|e| e.into_inner()).values() {
            r.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Requests queued or running, oldest first.
    pub fn list_requests(&self) -> Vec<RequestSummary> {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
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
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn worker(&self) {
        loop {
            let (job, lease) = self.queue.take();
            self.process(job, lease);
        }
    }

    /// Runs a job taken from the queue, and reports and releases what it held.
    fn process(&self, job: Job, mut lease: Lease<Job>) {
        let reserved = self.reserve_when_room(&job);
        if let Some(r) = self.requests.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&job.id) {
            r.running = true;
        }
        self.queued.fetch_sub(1, Ordering::SeqCst);
        self.running.fetch_add(1, Ordering::SeqCst);
        let _ = self.events.send(Event::Started);
        let (kv, stats) = match reserved {
            Ok(kv) => (kv, self.run(&job)),
            Err(e) => (0, failed(&e)),
        };
        tracing::debug!(request = job.id, client = %job.owner, model = %job.model_name,
            finish = %stats.finish_reason, generated = stats.generated_tokens.unwrap_or(0), "request finished");
        crate::audit::log(&crate::audit::Record {
            caller: &job.caller,
            model: &job.model_name,
            event: crate::audit::Event::Request {
                id: Some(job.id),
                session: job.turn.as_ref().map(|t| t.session.id),
                tokens_in: stats.prompt_tokens.unwrap_or(job.prompt_ids.len() as u32),
                tokens_out: stats.generated_tokens.unwrap_or(0),
            },
            result: stats.error_name.as_deref().unwrap_or(&stats.finish_reason),
        });
        let tokens = stats.prompt_tokens.unwrap_or(0) as u64 + stats.generated_tokens.unwrap_or(0) as u64;
        // Every field named (no `..`): what the job holds is dropped here, not at the end of
        // this function, since a client that unloads the model on `Finished` must find it
        // freed (a partially moved `job` kept its model until after `Finished` was sent).
        let Job {
            id,
            owner,
            model_name,
            mut ticket,
            model,
            turn,
            prompt_ids,
            params,
            caller,
            cancel,
            kv: _,
            reserved: _,
            class: _,
        } = job;
        ticket.charge(tokens);
        drop((ticket, model, turn, prompt_ids, params, caller, cancel));
        lease.served = tokens;
        // Return the memory to the system before the reservation is released (and the model
        // may be evicted), so that what the budget counts is what is resident.
        crate::memory::measure::release_freed();
        self.release(&model_name, kv);
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        self.running.fetch_sub(1, Ordering::SeqCst);
        let _ = self.events.send(Event::Finished { id, owner, stats: Box::new(stats) });
        // only now may paused background work go on (after this request's last message)
        drop(lease);
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
                let mut cache = std::mem::take(&mut turn.session.state().cache);
                let result = job.model.generate_from(&mut cache, &prompt, &job.params, &job.cancel, &yielder, on_text);
                self.end_turn(job, turn, cache, &result);
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
                stats = FinishStats { backend: stats.backend, provider: stats.provider, ..failed(&internal(e)) };
            }
        }
        stats
    }
}

/// A running job's way of letting interactive work go first (see [`queue`]): while it
/// yields, its worker runs the interactive requests waiting, or waits for those running.
struct Yielder<'a> {
    scheduler: &'a Scheduler,
    job: &'a Job,
}

impl Yielder<'_> {
    fn mark_paused(&self, paused: bool) {
        if let Some(r) = self.scheduler.requests.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&self.job.id) {
            r.paused = paused;
        }
    }
}

impl crate::engine::Yield for Yielder<'_> {
    fn wanted(&self) -> bool {
        self.scheduler.queue.should_yield(self.job.class)
    }

    fn wait(&self) {
        tracing::debug!(request = self.job.id, "yielding to interactive work");
        self.mark_paused(true);
        while let Some((job, lease)) = self.scheduler.queue.yield_now() {
            self.scheduler.process(job, lease);
        }
        self.mark_paused(false);
    }
}
