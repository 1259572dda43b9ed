//! Models and requests: the catalog of the models directory, loaded models
//! (on first use or at start), the bounded request queue and the worker
//! threads that run generations off the async runtime. Results leave as
//! [`Event`]s on a channel; the D-Bus layer turns them into signals.
//!
//! Memory: a load is admitted only if the model's estimate fits the budget
//! next to what is in use (each loaded model counts the larger of its estimate
//! and its measured growth), after unloading idle models least recently used
//! first when that makes it fit; a request reserves its KV cache (prompt +
//! `max_tokens`) before it is queued. What does not fit is refused with
//! `OutOfBudget` and the numbers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llamad_api::{Error, FinishStats, ModelInfo};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::Config;
use crate::engine::backend::onnxruntime::locate_library;
use crate::engine::{BackendKind, GenerateError, LoadError, LoadOptions, Model, ModelDir, Prompt, SamplingParams};
use crate::memory::budget::Budget;
use crate::memory::estimate::Estimate;
use crate::memory::{measure, mib};

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
        stats: FinishStats,
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
}

struct Loaded {
    model: Arc<Model>,
    last_used: Instant,
    /// Requests queued or running on this model (pinned: never evicted while > 0).
    active: u32,
    estimate: Estimate,
    /// Resident growth of the daemon over the load.
    measured: u64,
    kv_reserved: u64,
    /// None: stays loaded until unloaded or evicted.
    keep_alive: Option<std::time::Duration>,
}

/// keep_alive seconds (config or request) → how long an idle model stays.
pub fn keep_alive(seconds: i64) -> Option<std::time::Duration> {
    (seconds >= 0).then(|| std::time::Duration::from_secs(seconds as u64))
}

impl Loaded {
    fn held(&self) -> u64 {
        self.estimate.resident().max(self.measured) + self.kv_reserved
    }
}

fn used(loaded: &HashMap<String, Loaded>) -> u64 {
    loaded.values().map(Loaded::held).sum()
}

struct Job {
    id: u64,
    owner: String,
    model_name: String,
    model: Arc<Model>,
    prompt_ids: Vec<u32>,
    params: SamplingParams,
    cancel: Arc<AtomicBool>,
    kv: u64,
}

struct RequestEntry {
    owner: String,
    cancel: Arc<AtomicBool>,
}

pub struct Scheduler {
    pub config: Config,
    pub budget: Budget,
    loaded: Mutex<HashMap<String, Loaded>>,
    requests: Mutex<HashMap<u64, RequestEntry>>,
    queue: SyncSender<Job>,
    next_id: AtomicU64,
    pub running: AtomicU32,
    pub queued: AtomicU32,
    events: UnboundedSender<Event>,
    /// Serialises loads so one model is never loaded twice at once.
    load_lock: Mutex<()>,
    /// Why memory is under pressure, while it is.
    pressure: Mutex<Option<String>>,
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
        other => Error::Internal(other.to_string()),
    }
}

impl Scheduler {
    /// Starts `config.max_parallel` workers.
    pub fn start(config: Config, events: UnboundedSender<Event>) -> Arc<Scheduler> {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.max_queue);
        let rx = Arc::new(Mutex::new(rx));
        let s = Arc::new(Scheduler {
            loaded: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            queue: tx,
            next_id: AtomicU64::new(1),
            running: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            events,
            load_lock: Mutex::new(()),
            pressure: Mutex::new(None),
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
            let (s, rx) = (s.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("llamad-worker-{i}"))
                .spawn(move || s.worker(rx))
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

    pub fn providers(&self) -> Vec<String> {
        crate::engine::backend::onnxruntime::available_providers(self.config.onnxruntime.library.as_deref())
    }

    fn model_path(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.config.models_dir.join(name);
        if !crate::service::valid_model_name(name) || !path.is_dir() {
            return Err(Error::UnknownModel(format!("no model \"{name}\" in {}", self.config.models_dir.display())));
        }
        Ok(path)
    }

    pub fn list_models(&self) -> Vec<ModelInfo> {
        let mut names: Vec<String> = std::fs::read_dir(&self.config.models_dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|n| crate::service::valid_model_name(n))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        names
            .into_iter()
            .map(|name| {
                let mut info = ModelInfo { name: name.clone(), ..Default::default() };
                let dir = match loaded.get(&name) {
                    Some(l) => Ok(l.model.dir.clone()),
                    None => ModelDir::open(&self.config.models_dir.join(&name)),
                };
                match dir {
                    Ok(d) => {
                        let est = Estimate::for_model(&d, self.default_backend());
                        info.estimated_bytes = Some(est.resident());
                        info.kv_bytes_per_token = Some(est.kv_per_token);
                        info.layout = Some(d.layout.to_string());
                        info.quantization = Some(d.quantization.to_string());
                        info.parameters = Some(d.parameters());
                        info.context_length = Some(d.spec.context_length as u32);
                        info.vocab_size = Some(d.spec.vocab_size as u32);
                        info.file_size = Some(d.file_size);
                    }
                    Err(e) => info.error = Some(e.to_string()),
                }
                info.loaded = Some(loaded.contains_key(&name));
                if let Some(l) = loaded.get(&name) {
                    let served = l.model.served();
                    info.backend = Some(served.backend.to_string());
                    info.provider = Some(served.provider.clone());
                    info.idle_seconds = Some(l.last_used.elapsed().as_secs());
                    info.running = Some(l.active);
                    info.estimated_bytes = Some(l.estimate.resident());
                    info.measured_bytes = Some(l.measured);
                    info.kv_reserved_bytes = Some(l.kv_reserved);
                }
                info
            })
            .collect()
    }

    pub fn loaded_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        v.sort();
        v
    }

    fn default_backend(&self) -> BackendKind {
        self.config.backend.unwrap_or_else(|| {
            if locate_library(self.config.onnxruntime.library.as_deref()).is_ok() {
                BackendKind::Onnxruntime
            } else {
                BackendKind::Tract
            }
        })
    }

    /// The memory budget and its use now.
    pub fn memory_status(&self) -> llamad_api::MemoryStatus {
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let b = &self.budget;
        llamad_api::MemoryStatus {
            budget: b.effective,
            config: b.config,
            cgroup: b.cgroup,
            cgroup_source: b.cgroup_source.clone(),
            physical: Some(b.physical),
            reserve: Some(b.reserve),
            used: Some(used(&loaded)),
            kv_reserved: Some(loaded.values().map(|l| l.kv_reserved).sum()),
            rss: Some(measure::rss().total),
        }
    }

    /// A dry run of loading `name` with `parallel` sequences of `context` tokens.
    pub fn estimate(
        &self,
        name: &str,
        backend: Option<BackendKind>,
        context: Option<u32>,
        parallel: u32,
    ) -> Result<llamad_api::EstimateInfo, Error> {
        let path = self.model_path(name)?;
        let kind = backend.unwrap_or_else(|| self.default_backend());
        let dir = ModelDir::open(&path).map_err(|e| Error::ModelLoadFailed(format!("{name}: {e}")))?;
        let est = Estimate::for_model(&dir, kind);
        let context = context.unwrap_or(dir.spec.context_length as u32).min(dir.spec.context_length as u32);
        let kv = est.request(0, context as u64);
        let total = est.resident() + kv * parallel as u64;
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let in_use = used(&loaded);
        let idle: u64 = loaded.values().filter(|l| l.active == 0).map(Loaded::held).sum();
        let budget = self.budget.effective;
        Ok(llamad_api::EstimateInfo {
            backend: kind.to_string(),
            weights: est.weights,
            scratch: est.scratch,
            kv_per_sequence: kv,
            context,
            parallel,
            total,
            budget,
            in_use,
            fits_now: in_use + total <= budget,
            fits_after_eviction: in_use - idle + total <= budget,
        })
    }

    /// Makes room for `need` more bytes: unloads idle models (least recently used first)
    /// if, and only if, that makes it fit. Returns the names unloaded.
    fn make_room(&self, loaded: &mut HashMap<String, Loaded>, need: u64, what: &str) -> Result<Vec<String>, Error> {
        let budget = self.budget.effective;
        let in_use = used(loaded);
        if in_use + need <= budget {
            return Ok(vec![]);
        }
        let mut idle: Vec<(&String, &Loaded)> = loaded.iter().filter(|(_, l)| l.active == 0).collect();
        idle.sort_by_key(|(_, l)| l.last_used);
        let mut freed = 0;
        let mut victims = vec![];
        for (name, l) in idle {
            if in_use - freed + need <= budget {
                break;
            }
            freed += l.held();
            victims.push(name.clone());
        }
        if in_use - freed + need > budget {
            let busy: Vec<String> =
                loaded.iter().filter(|(_, l)| l.active > 0).map(|(n, l)| format!("{n} {}", mib(l.held()))).collect();
            return Err(Error::OutOfBudget(format!(
                "{what} needs {}; the budget is {} and {} is in use ({} by models serving requests: {}); \
                 unloading every idle model would free only {}",
                mib(need),
                mib(budget),
                mib(in_use),
                mib(in_use - loaded.values().filter(|l| l.active == 0).map(Loaded::held).sum::<u64>()),
                if busy.is_empty() { "none".into() } else { busy.join(", ") },
                mib(freed)
            )));
        }
        for v in &victims {
            loaded.remove(v);
            tracing::info!(model = %v, reason = "evicted", "model unloaded to make room");
            let _ = self.events.send(Event::ModelUnloaded { name: v.clone(), reason: "evicted" });
        }
        Ok(victims)
    }

    /// The loaded model `name`, loading it first if needed (blocking: call off the runtime).
    /// With `pin`, the model is marked active until [`Scheduler::unpin`] or the request ends.
    pub fn get_or_load(
        &self,
        name: &str,
        backend: Option<BackendKind>,
        reason: &'static str,
    ) -> Result<Arc<Model>, Error> {
        self.load(name, backend, false, reason)
    }

    /// For a request: loads if needed and pins the model until the request ends.
    pub fn acquire(&self, name: &str) -> Result<Arc<Model>, Error> {
        self.refuse_under_pressure()?;
        self.load(name, None, true, "request")
    }

    fn refuse_under_pressure(&self) -> Result<(), Error> {
        match &*self.pressure.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(Error::OutOfBudget(format!("memory pressure ({why}): not admitting new work"))),
            None => Ok(()),
        }
    }

    pub fn unpin(&self, name: &str) {
        if let Some(l) = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name) {
            l.active = l.active.saturating_sub(1);
        }
    }

    fn load(
        &self,
        name: &str,
        backend: Option<BackendKind>,
        pin: bool,
        reason: &'static str,
    ) -> Result<Arc<Model>, Error> {
        let path = self.model_path(name)?;
        let _guard = self.load_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name) {
            l.last_used = Instant::now();
            l.active += pin as u32;
            return Ok(l.model.clone());
        }
        let kind = backend.unwrap_or_else(|| self.default_backend());
        let dir = ModelDir::open(&path).map_err(|e| Error::ModelLoadFailed(format!("{name}: {e}")))?;
        let estimate = Estimate::for_model(&dir, kind);
        {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            let what = format!(
                "loading {name} ({} weights + {} scratch, estimated)",
                mib(estimate.weights),
                mib(estimate.scratch)
            );
            if loaded.len() >= self.config.max_loaded_models {
                let lru = loaded.iter().filter(|(_, l)| l.active == 0).min_by_key(|(_, l)| l.last_used);
                match lru.map(|(n, _)| n.clone()) {
                    Some(victim) => {
                        loaded.remove(&victim);
                        tracing::info!(model = %victim, reason = "evicted", "max_loaded_models reached");
                        let _ = self.events.send(Event::ModelUnloaded { name: victim, reason: "evicted" });
                    }
                    None => {
                        return Err(Error::Busy(format!(
                            "{} models are loaded (max_loaded_models) and all are serving requests",
                            loaded.len()
                        )));
                    }
                }
            }
            let evicted = self.make_room(&mut loaded, estimate.resident(), &what)?;
            if !evicted.is_empty() {
                tracing::info!(model = name, evicted = ?evicted, "made room");
            }
        }
        let opts = LoadOptions {
            threads: (self.config.threads > 0).then_some(self.config.threads),
            providers: self.config.onnxruntime.providers.clone(),
            tract_block_quant: self.config.tract.block_quant,
            ort_library: self.config.onnxruntime.library.clone(),
        };
        let started = Instant::now();
        let before = measure::rss();
        let model = Model::from_dir(dir, kind, &opts, true).map_err(|e| match e {
            LoadError::Layout(_) | LoadError::Tokenizer(_) | LoadError::Backend(_) => {
                Error::ModelLoadFailed(format!("{name}: {e}"))
            }
        })?;
        let after = measure::rss();
        let measured = after.total.saturating_sub(before.total);
        let served = model.served();
        tracing::info!(model = name, backend = %served.backend, provider = %served.provider,
            seconds = started.elapsed().as_secs_f64(), estimated = %mib(estimate.resident()),
            measured = %mib(measured), anon = %mib(after.anon.saturating_sub(before.anon)),
            file = %mib(after.file.saturating_sub(before.file)), "model loaded");
        for (p, reason) in &served.skipped {
            tracing::warn!(model = name, provider = %p, %reason, "execution provider not used");
        }
        let model = Arc::new(model);
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(
            name.to_string(),
            Loaded {
                model: model.clone(),
                last_used: Instant::now(),
                active: pin as u32,
                estimate,
                measured,
                kv_reserved: 0,
                keep_alive: keep_alive(self.config.keep_alive),
            },
        );
        let _ = self.events.send(Event::ModelLoaded { name: name.to_string(), reason });
        Ok(model)
    }

    pub fn unload(&self, name: &str) -> Result<(), Error> {
        self.model_path(name)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        match loaded.get(name) {
            None => return Err(Error::InvalidArgs(format!("model \"{name}\" is not loaded"))),
            Some(l) if l.active > 0 => {
                return Err(Error::Busy(format!("model \"{name}\" is serving {} request(s)", l.active)));
            }
            Some(_) => {}
        }
        loaded.remove(name);
        drop(loaded);
        tracing::info!(model = name, reason = "request", "model unloaded");
        let _ = self.events.send(Event::ModelUnloaded { name: name.to_string(), reason: "request" });
        Ok(())
    }

    /// Queues a request whose prompt was already checked against the model, which the
    /// caller pinned with [`Scheduler::acquire`] (the pin passes to the request).
    pub fn submit(
        &self,
        owner: &str,
        model_name: &str,
        model: Arc<Model>,
        prompt_ids: Vec<u32>,
        mut params: SamplingParams,
        keep_alive_override: Option<i64>,
    ) -> Result<u64, Error> {
        params.max_tokens = params.max_tokens.min(self.config.max_tokens_limit);
        let tokens = prompt_ids.len() as u64 + params.max_tokens as u64;
        let kv = {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            let kv = loaded.get(model_name).map(|l| l.estimate.request(prompt_ids.len() as u64, tokens)).unwrap_or(0);
            let what = format!("the KV cache of this request ({tokens} tokens: prompt + max_tokens)");
            if let Err(e) = self.make_room(&mut loaded, kv, &what) {
                drop(loaded);
                self.unpin(model_name);
                return Err(e);
            }
            if let Some(l) = loaded.get_mut(model_name) {
                l.kv_reserved += kv;
                if let Some(k) = keep_alive_override {
                    l.keep_alive = keep_alive(k);
                }
            }
            kv
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(false));
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, RequestEntry { owner: owner.to_string(), cancel: cancel.clone() });
        self.queued.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            id,
            owner: owner.to_string(),
            model_name: model_name.to_string(),
            model,
            prompt_ids,
            params,
            cancel,
            kv,
        };
        match self.queue.try_send(job) {
            Ok(()) => {
                let _ = self.events.send(Event::Started);
                Ok(id)
            }
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                self.requests.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                self.release(model_name, kv);
                Err(match e {
                    TrySendError::Full(_) => {
                        Error::Busy(format!("{} requests are queued already (max_queue)", self.config.max_queue))
                    }
                    TrySendError::Disconnected(_) => internal("the workers are gone"),
                })
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

    /// Requests not finished yet (queued or running).
    pub fn outstanding(&self) -> usize {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Every 250 ms: unload models idle past their keep_alive; follow memory pressure
    /// (unload every idle model, refuse new work until it ends).
    fn housekeeping(&self) {
        let m = &self.config.memory;
        let events = m.events.clone().or_else(crate::memory::pressure::own_events_file);
        let mut watch = crate::memory::pressure::Watch::new(m.psi.clone(), m.psi_threshold, events);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            let why = watch.check();
            let was = self.pressure.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match (&was, &why) {
                (None, Some(reason)) => {
                    tracing::warn!(%reason, "memory pressure: unloading idle models, not admitting new work");
                    let _ = self.events.send(Event::MemoryPressure { active: true, reason: reason.clone() });
                }
                (Some(_), None) => {
                    tracing::info!("memory pressure over");
                    let _ = self.events.send(Event::MemoryPressure { active: false, reason: String::new() });
                }
                _ => {}
            }
            *self.pressure.lock().unwrap_or_else(|e| e.into_inner()) = why.clone();
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            let expired: Vec<(String, &'static str)> = loaded
                .iter()
                .filter(|(_, l)| l.active == 0)
                .filter_map(|(n, l)| {
                    if why.is_some() {
                        Some((n.clone(), "pressure"))
                    } else if l.keep_alive.is_some_and(|k| l.last_used.elapsed() >= k) {
                        Some((n.clone(), "idle"))
                    } else {
                        None
                    }
                })
                .collect();
            for (name, reason) in expired {
                loaded.remove(&name);
                tracing::info!(model = %name, reason, "model unloaded");
                let _ = self.events.send(Event::ModelUnloaded { name, reason });
            }
        }
    }

    pub fn under_pressure(&self) -> bool {
        self.pressure.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// A request ends: its KV reservation and its pin on the model go.
    fn release(&self, name: &str, kv: u64) {
        if let Some(l) = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name) {
            l.active = l.active.saturating_sub(1);
            l.kv_reserved = l.kv_reserved.saturating_sub(kv);
            l.last_used = Instant::now();
        }
    }

    fn worker(&self, rx: Arc<Mutex<Receiver<Job>>>) {
        loop {
            let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                Ok(j) => j,
                Err(_) => return,
            };
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.running.fetch_add(1, Ordering::SeqCst);
            let _ = self.events.send(Event::Started);
            let stats = self.run(&job);
            tracing::info!(request = job.id, client = %job.owner, model = %job.model_name,
                finish = %stats.finish_reason, generated = stats.generated_tokens.unwrap_or(0), "request finished");
            self.release(&job.model_name, job.kv);
            self.requests.lock().unwrap_or_else(|e| e.into_inner()).remove(&job.id);
            self.running.fetch_sub(1, Ordering::SeqCst);
            let _ = self.events.send(Event::Finished { id: job.id, owner: job.owner.clone(), stats });
        }
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
        let result = job.model.generate(&prompt, &job.params, &job.cancel, |text| {
            let _ = events.send(Event::Token { id: job.id, owner: job.owner.clone(), text: text.to_string() });
        });
        match result {
            Ok(out) => {
                let s = out.stats;
                stats.finish_reason = s.finish.as_str().to_string();
                stats.prompt_tokens = Some(s.prompt_tokens as u32);
                stats.generated_tokens = Some(s.generated_tokens as u32);
                stats.time_to_first_token_ms = Some(s.time_to_first_token.as_secs_f64() * 1e3);
                stats.prompt_tokens_per_s = Some(s.prompt_tokens_per_s());
                stats.decode_tokens_per_s = Some(s.decode_tokens_per_s());
                stats.seed = Some(s.seed);
            }
            Err(e) => {
                tracing::error!(request = job.id, error = %e, "generation failed");
                stats.finish_reason = "error".into();
                stats.error_name = Some(format!("{}.Internal", llamad_api::ERROR_PREFIX));
                stats.error = Some(e.to_string());
            }
        }
        stats
    }
}
