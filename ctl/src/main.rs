//! `llamactl`: drives llamad over D-Bus only (through `llamad-api`; no
//! inference code is compiled in). System bus by default; `--session` or
//! `--address` for others. Every command that prints data takes `--json`.
//!
//! Exit codes (stable, for scripts): 0 success; 1 other error; 2 usage;
//! 3 the daemon is not reachable; 4 unknown model; 5 invalid arguments;
//! 6 busy; 7 context overflow; 8 model failed to load; 9 cancelled;
//! 10 generation failed; 11 out of memory budget.

mod chat;
mod stream;

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use llamad_api::{Error, ManagerProxy, ModelInfo};
use stream::{finish_code, json_stats, options, print_stats, stream};
use zbus::zvariant::Value;

#[derive(Parser)]
#[command(name = "llamactl", version, about = "Control llamad, the on-device LLM daemon, over D-Bus")]
struct Cli {
    /// Use the session bus instead of the system bus.
    #[arg(long, global = true, conflicts_with = "address")]
    session: bool,
    /// Use the bus at this D-Bus address.
    #[arg(long, global = true)]
    address: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub(crate) struct Sampling {
    #[arg(long)]
    max_tokens: Option<u32>,
    /// 0 = greedy.
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_k: Option<u32>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    repetition_penalty: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Speculative decoding by prompt lookup: verify up to N draft tokens a pass (0 = off).
    #[arg(long)]
    prompt_lookup: Option<u32>,
    /// The output is one JSON value (`json`; the global --json is this tool's own output).
    #[arg(long, value_parser = ["json"], conflicts_with_all = ["json_schema", "regex", "lark"])]
    format: Option<String>,
    /// The output is JSON valid against the JSON Schema in FILE.
    #[arg(long, value_name = "FILE", value_parser = read_file, conflicts_with_all = ["regex", "lark"])]
    json_schema: Option<String>,
    /// The whole output matches this regular expression.
    #[arg(long, value_name = "RE", conflicts_with = "lark")]
    regex: Option<String>,
    /// The output follows the grammar in FILE (llguidance's Lark syntax).
    #[arg(long, value_name = "FILE", value_parser = read_file)]
    lark: Option<String>,
}

/// A schema or grammar file's text, for clap.
fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

#[derive(Subcommand)]
enum Command {
    /// Daemon version, backends, loaded models, requests.
    Status,
    /// Models in the daemon's models directory.
    Models,
    /// Load a model now.
    Load {
        model: String,
        /// tract or onnxruntime (default: the daemon's choice).
        #[arg(long)]
        backend: Option<String>,
    },
    /// Unload a model.
    Unload { model: String },
    /// Loaded models: backend, provider, idle time, running requests.
    Ps,
    /// Complete a prompt, streaming the text (the prompt is read from stdin when not given).
    Run {
        model: String,
        prompt: Option<String>,
        #[command(flatten)]
        sampling: Sampling,
        /// Print the final statistics on stderr.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Chat interactively in a session that keeps its KV cache (one line per user turn; an
    /// empty line or end of input quits).
    Chat {
        model: String,
        /// System prompt.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sampling: Sampling,
        /// Send the whole history each turn (Manager.Chat) instead of keeping it in a session.
        #[arg(long, conflicts_with = "tools")]
        stateless: bool,
        /// Offer the model the tools in FILE (a JSON array of OpenAI-style function
        /// definitions): each call is printed and its result asked for.
        #[arg(long, value_name = "FILE", value_parser = read_file)]
        tools: Option<String>,
        /// auto, none, required or a tool's name (with --tools).
        #[arg(long, requires = "tools")]
        tool_choice: Option<String>,
    },
    /// Open sessions: owner, model, tokens and KV cache held, turns, idle time.
    Sessions,
    /// Cancel one of this client's requests.
    Cancel { request: u64 },
    /// Dry run: what loading a model would take, and whether it fits now.
    Estimate {
        model: String,
        /// Context tokens per sequence (default: the model's context).
        #[arg(long)]
        ctx: Option<u32>,
        /// Sequences at once.
        #[arg(long, default_value_t = 1)]
        parallel: u32,
        #[arg(long)]
        backend: Option<String>,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
}

/// A failure with the exit code scripts see.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Self {
        Failure::from(Error::from(e))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::ZBus(zbus::Error::MethodError(name, _, _))
                if name.as_str().starts_with("org.freedesktop.DBus.Error.ServiceUnknown") =>
            {
                3
            }
            Error::ZBus(zbus::Error::InputOutput(_)) | Error::ZBus(zbus::Error::Address(_)) => 3,
            Error::ZBus(_) => 1,
            Error::UnknownModel(_) => 4,
            Error::InvalidArgs(_) | Error::UnknownRequest(_) | Error::UnknownSession(_) => 5,
            Error::Busy(_) => 6,
            Error::ContextOverflow(_) => 7,
            Error::ModelLoadFailed(_) => 8,
            Error::PermissionDenied(_) | Error::Internal(_) => 1,
            Error::OutOfBudget(_) => 11,
        };
        Failure { code, message: e.to_string() }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure { code: 1, message: e.to_string() }
    }
}

async fn connect(cli: &Cli) -> Result<(zbus::Connection, ManagerProxy<'static>), Failure> {
    let unreachable = |e: zbus::Error| Failure { code: 3, message: format!("cannot reach the bus: {e}") };
    let conn = match (&cli.address, cli.session) {
        (Some(a), _) => zbus::connection::Builder::address(a.as_str()).map_err(unreachable)?.build().await,
        (None, true) => zbus::Connection::session().await,
        (None, false) => zbus::Connection::system().await,
    }
    .map_err(unreachable)?;
    let proxy = ManagerProxy::new(&conn).await?;
    Ok((conn, proxy))
}

fn model_json(m: &ModelInfo) -> serde_json::Value {
    serde_json::json!({
        "name": m.name, "layout": m.layout, "quantization": m.quantization, "parameters": m.parameters,
        "context_length": m.context_length, "vocab_size": m.vocab_size, "file_size": m.file_size,
        "loaded": m.loaded, "backend": m.backend, "provider": m.provider, "idle_seconds": m.idle_seconds,
        "running": m.running, "error": m.error, "estimated_bytes": m.estimated_bytes,
        "measured_bytes": m.measured_bytes, "measured_anon_bytes": m.measured_anon_bytes,
        "measured_file_bytes": m.measured_file_bytes, "estimated_peak_bytes": m.estimated_peak_bytes,
        "measured_peak_bytes": m.measured_peak_bytes, "kv_bytes_per_token": m.kv_bytes_per_token,
        "kv_reserved_bytes": m.kv_reserved_bytes,
    })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "llamactl", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(());
        }
        _ => {}
    }
    let (conn, proxy) = connect(&cli).await?;
    match &cli.command {
        Command::Status => {
            let version = proxy.version().await?;
            let backends = proxy.backends().await?;
            let providers = proxy.providers().await?;
            let loaded = proxy.loaded_models().await?;
            let running = proxy.requests_running().await?;
            let queued = proxy.requests_queued().await?;
            let mem = proxy.memory().await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"version": version, "backends": backends, "providers": providers, "loaded_models": loaded,
                        "requests_running": running, "requests_queued": queued,
                        "memory": {"budget": mem.budget, "config": mem.config, "cgroup": mem.cgroup,
                            "cgroup_source": mem.cgroup_source, "physical": mem.physical, "reserve": mem.reserve,
                            "used": mem.used, "kv_reserved": mem.kv_reserved, "rss": mem.rss,
                            "sessions_kv": mem.sessions_kv, "prompt_cache": mem.prompt_cache}})
                );
            } else {
                println!("llamad {version}");
                println!("backends:       {}", backends.join(", "));
                println!("providers:      {}", if providers.is_empty() { "-".into() } else { providers.join(", ") });
                println!("loaded models:  {}", if loaded.is_empty() { "-".into() } else { loaded.join(", ") });
                println!("requests:       {running} running, {queued} queued");
                let m = |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
                println!(
                    "memory budget:  {} = min(config {}, cgroup {}{}, physical {}) - reserve {}",
                    m(Some(mem.budget)),
                    m(mem.config),
                    m(mem.cgroup),
                    mem.cgroup_source.as_deref().map(|s| format!(" from {s}")).unwrap_or_default(),
                    m(mem.physical),
                    m(mem.reserve)
                );
                println!(
                    "memory in use:  {} (KV reserved {}, sessions' KV {}, prompt cache {}), daemon RSS {}",
                    m(mem.used),
                    m(mem.kv_reserved),
                    m(mem.sessions_kv),
                    m(mem.prompt_cache),
                    m(mem.rss)
                );
            }
        }
        Command::Models | Command::Ps => {
            let mut models = proxy.list_models().await?;
            if matches!(cli.command, Command::Ps) {
                models.retain(|m| m.loaded == Some(true));
            }
            if cli.json {
                println!("{}", serde_json::Value::Array(models.iter().map(model_json).collect()));
            } else if matches!(cli.command, Command::Ps) {
                println!(
                    "{:<24} {:<12} {:<20} {:>6} {:>6} {:>10} {:>10} {:>9} {:>9} {:>8}",
                    "NAME", "BACKEND", "PROVIDER", "IDLE", "ACTIVE", "ESTIMATED", "MEASURED", "ANON", "FILE", "KV"
                );
                let mb = |b: Option<u64>| format!("{:.1}M", b.unwrap_or(0) as f64 / 1048576.0);
                for m in &models {
                    println!(
                        "{:<24} {:<12} {:<20} {:>5}s {:>6} {:>10} {:>10} {:>9} {:>9} {:>8}",
                        m.name,
                        m.backend.as_deref().unwrap_or("-"),
                        m.provider.as_deref().unwrap_or("-"),
                        m.idle_seconds.unwrap_or(0),
                        m.running.unwrap_or(0),
                        mb(m.estimated_bytes),
                        mb(m.measured_bytes),
                        mb(m.measured_anon_bytes),
                        mb(m.measured_file_bytes),
                        mb(m.kv_reserved_bytes)
                    );
                }
            } else {
                println!(
                    "{:<32} {:<18} {:<30} {:>9} {:>8} {:>9} LOADED",
                    "NAME", "LAYOUT", "QUANTIZATION", "PARAMS", "CONTEXT", "SIZE"
                );
                for m in &models {
                    if let Some(e) = &m.error {
                        println!("{:<32} unusable: {e}", m.name);
                        continue;
                    }
                    println!(
                        "{:<32} {:<18} {:<30} {:>8.1}M {:>8} {:>8.1}M {}",
                        m.name,
                        m.layout.as_deref().unwrap_or("-"),
                        m.quantization.as_deref().unwrap_or("-"),
                        m.parameters.unwrap_or(0) as f64 / 1e6,
                        m.context_length.unwrap_or(0),
                        m.file_size.unwrap_or(0) as f64 / 1048576.0,
                        if m.loaded == Some(true) { m.backend.as_deref().unwrap_or("yes") } else { "no" }
                    );
                }
            }
        }
        Command::Load { model, backend } => {
            let mut o: HashMap<&str, Value<'_>> = HashMap::new();
            if let Some(b) = backend {
                o.insert("backend", b.as_str().into());
            }
            proxy.load_model(model, o).await?;
        }
        Command::Unload { model } => proxy.unload_model(model).await?,
        Command::Cancel { request } => proxy.cancel(*request).await?,
        Command::Estimate { model, ctx, parallel, backend } => {
            let mut o: HashMap<&str, Value<'_>> = HashMap::from([("parallel", Value::from(*parallel))]);
            if let Some(c) = ctx {
                o.insert("context", Value::from(*c));
            }
            if let Some(b) = backend {
                o.insert("backend", b.as_str().into());
            }
            let e = proxy.estimate(model, o).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"backend": e.backend, "weights": e.weights, "scratch": e.scratch,
                        "kv_per_sequence": e.kv_per_sequence, "context": e.context, "parallel": e.parallel,
                        "total": e.total, "budget": e.budget, "in_use": e.in_use, "fits_now": e.fits_now,
                        "fits_after_eviction": e.fits_after_eviction, "load_peak": e.load_peak,
                        "runtime_code": e.runtime_code})
                );
            } else {
                let m = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
                println!("{model} on {}:", e.backend);
                println!("  weights              {}", m(e.weights));
                match e.runtime_code.filter(|&c| c > 0) {
                    Some(c) => {
                        println!("  scratch              {} (with {} of runtime code, first load)", m(e.scratch), m(c))
                    }
                    None => println!("  scratch              {}", m(e.scratch)),
                }
                println!(
                    "  KV cache             {} × {} sequence(s) of {} tokens",
                    m(e.kv_per_sequence),
                    e.parallel,
                    e.context
                );
                println!("  total                {}", m(e.total));
                if let Some(p) = e.load_peak {
                    println!("  while loading        {} at the peak", m(p));
                }
                println!("  budget               {} ({} in use)", m(e.budget), m(e.in_use));
                println!(
                    "  fits now: {}; after unloading idle models: {}",
                    if e.fits_now { "yes" } else { "no" },
                    if e.fits_after_eviction { "yes" } else { "no" }
                );
            }
        }
        Command::Run { model, prompt, sampling, verbose } => {
            let prompt = match prompt {
                Some(p) => p.clone(),
                None => std::io::read_to_string(std::io::stdin())?,
            };
            let opts = options(sampling);
            let out = stream(&conn, &proxy, || proxy.generate(model, &prompt, opts), !cli.json).await?;
            if cli.json {
                println!("{}", serde_json::json!({"text": out.text, "stats": json_stats(&out.stats)}));
            } else {
                println!();
            }
            if *verbose {
                print_stats(&out.stats);
            }
            finish_code(&out.stats)?;
        }
        Command::Chat { model, system, sampling, stateless, tools, tool_choice } => {
            let tools = tools.as_deref().map(|t| (t, tool_choice.as_deref()));
            chat::chat(&conn, &proxy, model, system.as_deref(), sampling, *stateless, tools, cli.json).await?
        }
        Command::Sessions => chat::sessions(&proxy, cli.json).await?,
        Command::Completions { .. } | Command::Man => unreachable!("handled before connecting"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llamactl: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("llamactl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
