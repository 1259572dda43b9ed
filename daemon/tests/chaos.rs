//! The chaos suite: a seeded generator of random workloads on a real daemon,
//! checking the serving core's promises while it runs and once it is quiet.
//!
//! Each seed picks a backend (tract, or ONNX Runtime with its fused and genai
//! graphs), a budget (none, loose, or tight: room for the models and a few
//! requests), then runs clients that send, at random: `Generate` and `Chat` in
//! both priority classes, with prompts from a word to far over the context (and
//! megabytes), formats (a regular expression, JSON), cancels at random moments,
//! session turns, clients that leave the bus mid-stream or with a session open,
//! and loads and unloads. Invariants:
//!
//! - every request ends, with `Finished` or a typed error, within [`BOUND`];
//!   never `Internal` or `GenerationFailed` (no fault is injected here);
//! - resident memory, sampled every 50 ms, never exceeds the budget by more than
//!   [`slack`] (see there for why);
//! - once quiet: no request, reservation or busy session is left, and with every
//!   model unloaded, resident memory is back at its baseline (10 % + 16 MiB);
//! - greedy requests that complete give the text they give alone.
//!
//! `CHAOS_SEEDS` (comma-separated; default `1,2,3,4`) and `CHAOS_SECONDS` (per
//! seed; default 25) set the run; `models/soak.sh` runs it for an hour and the
//! summary lines (`chaos:`) are the figures.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::bus::Daemon;
use common::client::{manager_signals, memory_now};
use common::{fixture, with_context};
use futures_util::StreamExt;
use llamad_api::{FinishStats, ManagerProxy, SessionProxy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zbus::zvariant::Value;

/// Every request ends within this (a stall means something waits for ever).
const BOUND: Duration = Duration::from_secs(120);
const CLIENTS: usize = 6;
const PREFIX: &str = "org.llamad.Llama1.Error.";

/// How far above the budget resident memory may go. The budget is kept by estimates
/// (within 10 % of what loads measure: docs/benchmarks.md) and by reserving each request's
/// KV cache and prefill chunk before it runs; what it does not count is bounded but real:
/// D-Bus messages the bus library has read before a method refuses them (prompts of up to
/// a few MiB here, a few at once), tokenizing (`max_tokenizing` prompts of at most the
/// context's bytes), and the allocator's slack. 10 % of the budget plus 24 MiB covers those.
fn slack(budget: u64) -> u64 {
    budget / 10 + (24 << 20)
}

#[derive(Default)]
struct Tally {
    requests: u64,
    finished: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    /// One message of each error, to tell what the errors were.
    samples: BTreeMap<String, String>,
    left: u64,
    compared: u64,
    mismatches: Vec<String>,
    bad: Vec<String>,
}

impl Tally {
    fn error(&mut self, name: &str, context: &str) {
        let short = name.trim_start_matches(PREFIX).to_string();
        self.samples.entry(short.clone()).or_insert_with(|| context.to_string());
        *self.errors.entry(short).or_default() += 1;
        if !name.starts_with(PREFIX) || name.ends_with(".Internal") || name.ends_with(".GenerationFailed") {
            self.bad.push(format!("{context}: {name}"));
        }
    }
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("transport: {other}"),
    }
}

fn error_text(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(_, Some(msg), _) => msg.chars().take(200).collect(),
        other => other.to_string(),
    }
}

/// What a seed runs on.
struct Setup {
    backend: &'static str,
    models: Vec<&'static str>,
}

fn setup(seed: u64) -> Setup {
    if seed.is_multiple_of(2) {
        Setup { backend: "onnxruntime", models: vec!["fused", "genai", "tiny"] }
    } else {
        Setup { backend: "tract", models: vec!["tiny", "long", "tiny-gguf"] }
    }
}

const PROMPTS: &[&str] = &["Once upon a time", "The lighthouse keeper said", "Hello"];
const GREEDY_TOKENS: u32 = 24;

fn prompt(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        0 => "Hi".into(),
        1..=5 => PROMPTS[rng.random_range(0..PROMPTS.len())].to_string(),
        6 | 7 => "the keeper lit the lamp and ".repeat(rng.random_range(2..30)),
        // far over any context here (ContextOverflow), sometimes over the text bound
        8 => "the keeper lit the lamp and ".repeat(rng.random_range(400..2000)),
        _ => "x".repeat(rng.random_range(1..4) << 20),
    }
}

fn options(rng: &mut StdRng, greedy: bool) -> HashMap<&'static str, Value<'static>> {
    let mut o: HashMap<&'static str, Value<'static>> = HashMap::new();
    if greedy {
        o.insert("temperature", Value::from(0.0f64));
        o.insert("max_tokens", Value::from(GREEDY_TOKENS));
    } else {
        o.insert("temperature", Value::from(0.8f64));
        o.insert("seed", Value::from(rng.random::<u64>()));
        o.insert("max_tokens", Value::from(rng.random_range(1..400u32)));
        match rng.random_range(0..8) {
            0 => {
                o.insert("regex", Value::from("[a-z ]{1,40}"));
            }
            1 => {
                o.insert("json", Value::from(true));
            }
            _ => {}
        }
    }
    if rng.random_bool(0.35) {
        o.insert("priority", Value::from("background"));
    }
    o
}

/// How a client treats its request once it streams.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Complete,
    /// Cancel after this many pieces.
    Cancel(usize),
    /// Leave the bus (drop the connection) after this many pieces.
    Leave(usize),
}

fn fate(rng: &mut StdRng) -> Fate {
    match rng.random_range(0..10) {
        0 | 1 => Fate::Cancel(rng.random_range(0..20)),
        2 => Fate::Leave(rng.random_range(0..20)),
        _ => Fate::Complete,
    }
}

struct World {
    address: String,
    models: Vec<&'static str>,
    /// (model, prompt) → the greedy text alone.
    reference: HashMap<(String, String), (String, String)>,
    tally: Mutex<Tally>,
    deadline: Instant,
}

async fn connect(address: &str) -> zbus::Connection {
    zbus::connection::Builder::address(address).unwrap().build().await.unwrap()
}

/// Streams request `id` (signals opened before it started) according to `fate`; returns its
/// final stats and text, or None if the client left.
async fn follow(
    signals: &mut zbus::MessageStream,
    proxy: &ManagerProxy<'_>,
    id: u64,
    fate: Fate,
) -> Option<(FinishStats, String)> {
    let mut text = String::new();
    let mut pieces = 0;
    let started = Instant::now();
    loop {
        let left = BOUND.saturating_sub(started.elapsed());
        let Ok(msg) = tokio::time::timeout(left, signals.next()).await else {
            let listed = proxy.list_requests().await;
            let log = std::fs::read_to_string(std::env::var("CHAOS_LOG").unwrap_or_default()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!("request {id} did not end within {BOUND:?}: {listed:?}\n{}", tail.join("\n"))
        };
        let msg = msg?.unwrap();
        match msg.header().member().map(|m| m.as_str()) {
            Some("Token") => {
                let (rid, piece): (u64, String) = msg.body().deserialize().unwrap();
                if rid != id {
                    continue;
                }
                text.push_str(&piece);
                pieces += 1;
                match fate {
                    Fate::Cancel(n) if pieces == n.max(1) => {
                        let _ = proxy.cancel(id).await;
                    }
                    Fate::Leave(n) if pieces >= n.max(1) => return None,
                    _ => {}
                }
            }
            Some("Finished") => {
                let (rid, stats): (u64, FinishStats) = msg.body().deserialize().unwrap();
                if rid == id {
                    return Some((stats, text));
                }
            }
            _ => {}
        }
    }
}

/// Waits (bounded) until request `id` is gone from the daemon's table.
async fn gone(address: &str, id: u64) {
    let conn = connect(address).await;
    let proxy = ManagerProxy::new(&conn).await.unwrap();
    let started = Instant::now();
    while proxy
        .list_requests()
        .await
        .unwrap()
        .iter()
        .any(|r| r.get("id").and_then(|v| u64::try_from(v).ok()) == Some(id))
    {
        assert!(started.elapsed() < BOUND, "request {id} of a client that left did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl World {
    fn record(&self, context: &str, model: &str, prompt: &str, greedy: bool, outcome: Option<(FinishStats, String)>) {
        let mut t = self.tally.lock().unwrap();
        match outcome {
            None => t.left += 1,
            Some((stats, text)) => {
                *t.finished.entry(stats.finish_reason.clone()).or_default() += 1;
                if let Some(name) = &stats.error_name {
                    t.error(name, &format!("{context}: {}", stats.error.as_deref().unwrap_or("")));
                }
                if greedy
                    && let Some((want, reason)) = self.reference.get(&(model.to_string(), prompt.to_string()))
                    && stats.finish_reason == *reason
                {
                    t.compared += 1;
                    if text != *want {
                        t.mismatches.push(format!("{context} on {model}: {text:?} alone {want:?}"));
                    }
                }
            }
        }
    }

    async fn generate(&self, rng: &mut StdRng) {
        let conn = connect(&self.address).await;
        let proxy = ManagerProxy::new(&conn).await.unwrap();
        let model = self.models[rng.random_range(0..self.models.len())];
        let greedy = rng.random_bool(0.4);
        let prompt = if greedy { PROMPTS[rng.random_range(0..PROMPTS.len())].to_string() } else { prompt(rng) };
        let opts = options(rng, greedy);
        let fate = if greedy { Fate::Complete } else { fate(rng) };
        let mut signals = manager_signals(&conn).await;
        self.tally.lock().unwrap().requests += 1;
        let chat = rng.random_bool(0.3) && prompt.len() < 4096;
        let started = if chat {
            let m = vec![("user".to_string(), prompt.clone())];
            tokio::time::timeout(BOUND, proxy.chat(model, &m, opts)).await
        } else {
            tokio::time::timeout(BOUND, proxy.generate(model, &prompt, opts)).await
        };
        let context = format!("{} of {} bytes ({fate:?})", if chat { "Chat" } else { "Generate" }, prompt.len());
        match started.unwrap_or_else(|_| panic!("{context}: no reply within {BOUND:?}")) {
            Err(e) => self.tally.lock().unwrap().error(&error_name(&e), &format!("{context}: {}", error_text(&e))),
            Ok(id) => {
                let outcome = follow(&mut signals, &proxy, id, fate).await;
                if outcome.is_none() {
                    drop((signals, proxy, conn));
                    gone(&self.address, id).await;
                }
                self.record(&context, model, &prompt, greedy && !chat, outcome);
            }
        }
    }

    async fn session(&self, rng: &mut StdRng) {
        let conn = connect(&self.address).await;
        let proxy = ManagerProxy::new(&conn).await.unwrap();
        let model = self.models[rng.random_range(0..self.models.len())];
        let path = match proxy.open_session(model, HashMap::new()).await {
            Ok(p) => p,
            Err(e) => return self.tally.lock().unwrap().error(&error_name(&e), "OpenSession"),
        };
        let session = SessionProxy::builder(&conn).path(path).unwrap().build().await.unwrap();
        let mut signals = manager_signals(&conn).await;
        for turn in 0..rng.random_range(1..4) {
            let text = if rng.random_bool(0.1) { prompt(rng) } else { format!("Tell me more, part {turn}.") };
            let message = HashMap::from([("role", Value::from("user")), ("content", Value::from(text))]);
            let opts = options(rng, false);
            let fate = fate(rng);
            self.tally.lock().unwrap().requests += 1;
            let context = format!("session turn {turn} ({fate:?})");
            match tokio::time::timeout(BOUND, session.chat(&[message], opts)).await.expect("no reply to Session.Chat") {
                Err(e) => self.tally.lock().unwrap().error(&error_name(&e), &context),
                Ok(id) => {
                    let outcome = follow(&mut signals, &proxy, id, fate).await;
                    let left = outcome.is_none();
                    self.record(&context, model, "", false, outcome);
                    if left {
                        drop((signals, session, proxy, conn));
                        gone(&self.address, id).await;
                        return;
                    }
                }
            }
        }
        if rng.random_bool(0.5) {
            let _ = session.close().await;
        }
        // otherwise the client leaves with its session open: it closes (owner-left)
    }

    async fn admin(&self, rng: &mut StdRng) {
        let conn = connect(&self.address).await;
        let proxy = ManagerProxy::new(&conn).await.unwrap();
        let model = self.models[rng.random_range(0..self.models.len())];
        let result = if rng.random_bool(0.5) {
            proxy.unload_model(model).await
        } else {
            proxy.load_model(model, HashMap::new()).await
        };
        if let Err(e) = result {
            // unloading what is not loaded, or what serves requests, is expected here
            self.tally.lock().unwrap().error(&error_name(&e), "load/unload");
        }
    }

    async fn client(self: Arc<Self>, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        while Instant::now() < self.deadline {
            match rng.random_range(0..20) {
                0..=12 => self.generate(&mut rng).await,
                13..=17 => self.session(&mut rng).await,
                _ => self.admin(&mut rng).await,
            }
        }
    }
}

/// Writes the daemon's configuration for `s` with `memory` lines and starts it again.
async fn configure(d: &mut Daemon, s: &Setup, memory: &str) {
    let top = format!(
        "models_dir = \"{}\"\nbackend = \"{}\"\nthreads = 1\nmax_parallel = 3\nmax_queue = 12\nkeep_alive = -1\n\
         max_tokens_limit = 400\n[sessions]\nmax_per_client = 4\n[memory]\nreserve = 0\n{memory}\n",
        d.dir.path().join("models").display(),
        s.backend
    );
    std::fs::write(d.dir.path().join("llamad.toml"), top).unwrap();
    d.restart().await;
}

async fn quiet(conn: &zbus::Connection, proxy: &ManagerProxy<'_>) -> Duration {
    let started = Instant::now();
    loop {
        let m = memory_now(conn).await;
        let busy = proxy
            .list_sessions()
            .await
            .unwrap()
            .iter()
            .any(|s| s.get("busy").and_then(|v| bool::try_from(v).ok()) == Some(true));
        if proxy.list_requests().await.unwrap().is_empty() && m.kv_reserved == Some(0) && !busy {
            return started.elapsed();
        }
        assert!(started.elapsed() < BOUND, "never quiet: {:?}, {m:?}", proxy.list_requests().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_clients(world: &Arc<World>, seed: u64) {
    let clients: Vec<_> = (0..CLIENTS).map(|c| tokio::spawn(world.clone().client(seed * 1000 + c as u64))).collect();
    for c in clients {
        c.await.unwrap();
    }
}

/// Unloads every model (none serves: the daemon is quiet) and lets the daemon settle.
async fn unload_all(proxy: &ManagerProxy<'_>, models: &[&str]) {
    for m in models {
        match proxy.unload_model(m).await {
            Ok(()) => {}
            Err(zbus::Error::MethodError(name, _, _)) if name.ends_with(".InvalidArgs") => {} // not loaded
            Err(e) => panic!("unloading {m} once quiet: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
}

fn check(t: &Tally, d: &Daemon) {
    assert!(t.bad.is_empty(), "untyped or internal errors: {:?}\n{}", t.bad, d.log());
    assert!(t.mismatches.is_empty(), "greedy texts changed under load: {:?}", t.mismatches);
}

async fn run_seed(seed: u64, seconds: u64) {
    let s = setup(seed);
    let long = with_context("tiny-llama2-optimum-fp32", 2048);
    let (fused, genai) = (fixture("tiny-gguf-fused"), fixture("tiny-llama2-genai-int4"));
    let extra = [("long", long.path()), ("fused", fused.as_path()), ("genai", genai.as_path())];
    let mut d = Daemon::start_with("", &extra).await;
    // SAFETY: read by this test's own clients only (each test binary runs this one test)
    unsafe { std::env::set_var("CHAOS_LOG", d.dir.path().join("llamad.log")) };
    configure(&mut d, &s, "").await;
    // warm up: each model loaded, run alone (the greedy references), unloaded
    let (conn, proxy) = d.proxy().await;
    let mut reference = HashMap::new();
    for m in &s.models {
        for p in PROMPTS {
            let mut signals = manager_signals(&conn).await;
            let o = HashMap::from([("temperature", Value::from(0.0f64)), ("max_tokens", Value::from(GREEDY_TOKENS))]);
            let id = proxy.generate(m, p, o).await.unwrap();
            let (stats, text) = follow(&mut signals, &proxy, id, Fate::Complete).await.unwrap();
            reference.insert((m.to_string(), p.to_string()), (text, stats.finish_reason));
        }
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let loaded = memory_now(&conn).await.used.unwrap();
    for m in &s.models {
        proxy.unload_model(m).await.unwrap();
    }
    drop((proxy, conn));
    let mut rng = StdRng::seed_from_u64(seed);
    // tight: the models and a few requests' KV caches; loose: twice what they use; none
    let (budget, memory) = match seed % 3 {
        0 => (None, String::new()),
        1 => {
            // a request on these models reserves about 32 MiB while its prompt is computed
            // (a chunk's logits over a 32,000-token vocabulary): room for one to four
            let b = loaded + rng.random_range(40u64..130) * (1 << 20);
            (
                Some(b),
                format!("budget = {b}\nwhen_full = \"{}\"", if rng.random_bool(0.5) { "queue" } else { "refuse" }),
            )
        }
        _ => (Some(2 * loaded + (200 << 20)), format!("budget = {}", 2 * loaded + (200 << 20))),
    };
    configure(&mut d, &s, &memory).await;
    let (conn, proxy) = d.proxy().await;
    // The baseline is that of a daemon that has served such work: a first, shorter round
    // brings in what stays for good (runtimes' code, the allocator's arenas, threads, the
    // grammar checker), then every model is unloaded. The main round must not add to it.
    let world = |secs: u64| {
        Arc::new(World {
            address: d.address.clone(),
            models: s.models.clone(),
            reference: reference.clone(),
            tally: Mutex::new(Tally::default()),
            deadline: Instant::now() + Duration::from_secs(secs),
        })
    };
    let warm = world((seconds / 3).clamp(3, 10));
    run_clients(&warm, seed + 500).await;
    quiet(&conn, &proxy).await;
    check(&warm.tally.lock().unwrap(), &d);
    unload_all(&proxy, &s.models).await;
    let baseline = d.rss();
    let pid = d.llamad.as_ref().unwrap().id();
    let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
                    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
                }) {
                    peak.fetch_max(rss * 1024, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let world = world(seconds);
    run_clients(&world, seed).await;
    let to_quiet = quiet(&conn, &proxy).await;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    unload_all(&proxy, &s.models).await;
    let after = d.rss();
    let still: Vec<String> = proxy
        .list_models()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.loaded == Some(true))
        .map(|m| format!("{} (running {:?})", m.name, m.running))
        .collect();
    eprintln!(
        "chaos: after unloading: loaded {still:?}, sessions {}, {:?}",
        proxy.list_sessions().await.unwrap().len(),
        memory_now(&conn).await
    );
    let t = world.tally.lock().unwrap();
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    eprintln!(
        "chaos: seed {seed} on {}, {seconds} s, budget {}: {} requests, finished {:?}, errors {:?}, {} clients left mid-stream, \
         {} greedy texts compared; RSS peak {} ({}), baseline {} then {}; quiet {:?} after the last client\n  error samples: {:?}",
        s.backend,
        budget.map_or("none".into(), mib),
        t.requests,
        t.finished,
        t.errors,
        t.left,
        t.compared,
        mib(peak),
        budget.map_or("no budget".into(), |b| format!(
            "{:+.1} MiB over the budget",
            (peak as f64 - b as f64) / (1 << 20) as f64
        )),
        mib(baseline),
        mib(after),
        to_quiet,
        t.samples,
    );
    check(&t, &d);
    if let Some(b) = budget {
        assert!(
            peak <= b + slack(b),
            "RSS peaked at {} over a budget of {} (+{} slack)",
            mib(peak),
            mib(b),
            mib(slack(b))
        );
    }
    assert!(
        after <= baseline + baseline / 10 + (16 << 20),
        "memory not back: {} after, {} before",
        mib(after),
        mib(baseline)
    );
    assert!(t.requests > 10, "the workload ran: {} requests", t.requests);
}

#[tokio::test(flavor = "multi_thread")]
async fn random_workloads_keep_every_promise() {
    let seeds: Vec<u64> = std::env::var("CHAOS_SEEDS")
        .unwrap_or_else(|_| "1,2,3,4".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seconds: u64 = std::env::var("CHAOS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(25);
    for seed in seeds {
        run_seed(seed, seconds).await;
    }
}
