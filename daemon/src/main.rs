//! `llamad`: the daemon binary. `serve` runs the D-Bus service; `generate`
//! and `inspect` run the inference core directly (development, benchmarks).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};
use llamad::config::Config;
use llamad::engine::backend::ProviderConfig;
use llamad::engine::backend::providers::ProviderName;
use llamad::engine::chat::{Message, Role};
use llamad::engine::{BackendKind, Format, LoadOptions, Model, ModelDir, Prompt, SamplingParams};
use llamad::service::Bus;

#[derive(Parser)]
#[command(name = "llamad", version, about = "On-device Llama inference daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: serve org.llamad.Llama1 on D-Bus.
    Serve(ServeArgs),
    /// Generate text with a model directly (no D-Bus): streams the text, then prints timings.
    Generate(Box<GenerateArgs>),
    /// Print what llamad recognises in a model directory, as JSON.
    Inspect { model: PathBuf },
    /// Write the directory's manifest (`llamad-manifest.json`: every file's size and SHA-256),
    /// against which the daemon checks it before every load.
    Manifest { model: PathBuf },
    /// Print the man page (roff; the Debian package's is made so).
    #[command(hide = true)]
    Man,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (default /etc/llamad/llamad.toml, if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve on the session bus (development) instead of the system bus.
    #[arg(long, conflicts_with = "address")]
    session: bool,
    /// Serve on the bus at this D-Bus address.
    #[arg(long)]
    address: Option<String>,
    /// Models directory (overrides the configuration's models_dir).
    #[arg(long)]
    models_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Model directory (onnxruntime-genai or Optimum layout).
    #[arg(long, short)]
    model: PathBuf,
    /// Raw prompt (tokenized with BOS where the model's tokenizer adds it).
    #[arg(long, short, conflicts_with_all = ["chat", "tokens"])]
    prompt: Option<String>,
    /// A user message, sent through the model's chat template.
    #[arg(long, conflicts_with = "tokens")]
    chat: Option<String>,
    /// System prompt for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Prompt as token ids separated by spaces or commas (prints ids back).
    #[arg(long)]
    tokens: Option<String>,
    #[arg(long, default_value = "tract")]
    backend: BackendKind,
    /// ONNX Runtime execution providers in order, e.g. qnn,xnnpack,cpu.
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    providers: Vec<ProviderName>,
    #[arg(long)]
    threads: Option<usize>,
    /// tract: re-quantize fp32 weights to Q4_0 at load.
    #[arg(long)]
    block_quant: bool,
    /// Back the loaded weights with huge pages (MADV_HUGEPAGE, MADV_COLLAPSE).
    #[arg(long)]
    huge_pages: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    stop: Vec<String>,
    /// Do not stop at end-of-sequence tokens (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Speculative decoding by prompt lookup: verify up to N draft tokens a pass (0 = off;
    /// default: automatic, where it pays).
    #[arg(long)]
    prompt_lookup: Option<u32>,
    /// Print the stats as one JSON object on stderr.
    #[arg(long)]
    json: bool,
    /// The output is one JSON value (`json`).
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
    /// Run N copies of the request at once (as the daemon's engine loop runs a model's
    /// requests), and print their aggregate speed instead of the text (a benchmark of
    /// batched decoding).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    parallel: u32,
    /// With --parallel: the sequences take turns instead of decoding in batches.
    #[arg(long)]
    no_batch: bool,
}

/// `n` copies of one request at once; prints their aggregate tokens/s.
fn generate_parallel(
    model: &Model,
    prompt: &Prompt,
    params: &SamplingParams,
    n: usize,
    json: bool,
) -> Result<(), String> {
    // driven as the daemon's engine loop drives a model's requests: one prefill chunk and
    // one decoding step of the others (batched) a tick
    let t0 = std::time::Instant::now();
    let mut runs = (0..n)
        .map(|_| llamad::engine::Run::start(model, &mut Default::default(), prompt, params))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    while runs.iter().any(|r| !r.done()) {
        if let Some(r) = runs.iter_mut().find(|r| r.needs_prefill()) {
            r.prefill_chunk().map_err(|e| e.to_string())?;
        }
        let mut decoding: Vec<&mut llamad::engine::Run> =
            runs.iter_mut().filter(|r| !r.done() && !r.needs_prefill()).collect();
        for r in llamad::engine::Run::step_together(&mut decoding) {
            r.map_err(|e| e.to_string())?;
        }
    }
    let results: Vec<Result<llamad::engine::Output, String>> =
        runs.iter_mut().map(|r| r.finish(None).map_err(|e| e.to_string())).collect();
    let wall = t0.elapsed().as_secs_f64();
    let outputs = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let generated: usize = outputs.iter().map(|o| o.stats.generated_tokens).sum();
    let mut decode: Vec<f64> = outputs.iter().map(|o| o.stats.decode_tokens_per_s()).collect();
    decode.sort_by(f64::total_cmp);
    let c = model.backend.batch_counters();
    let rows = c.rows as f64 / c.steps.max(1) as f64;
    let aggregate = generated as f64 / wall;
    if json {
        let v = serde_json::json!({
            "parallel": n, "generated_tokens": generated, "wall_s": wall, "aggregate_tokens_per_s": aggregate,
            "decode_tokens_per_s": decode, "batch_steps": c.steps, "batch_rows": c.rows,
            "batch_placeholders": c.placeholders,
            "batch_run_s": c.running.as_secs_f64(), "peak_rss_kib": peak_rss_kib().unwrap_or(0),
        });
        eprintln!("{v}");
    } else {
        eprintln!(
            "{n} at once: {generated} tokens in {wall:.2} s, {aggregate:.1} tok/s in all | each decodes {:.1}-{:.1} tok/s | \
             {} batched passes, {rows:.2} rows a pass, {:.2} ms each",
            decode[0],
            decode[decode.len() - 1],
            c.steps,
            c.running.as_secs_f64() * 1e3 / c.steps.max(1) as f64,
        );
    }
    Ok(())
}

fn peak_rss_kib() -> Option<u64> {
    llamad::memory::measure::status_kib(&std::fs::read_to_string("/proc/self/status").ok()?, "VmHWM:")
}

/// A schema or grammar file's text, for clap.
fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

fn parse_ids(s: &str) -> Result<Vec<u32>, String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().map_err(|e| format!("token id {t:?}: {e}")))
        .collect()
}

fn generate(a: GenerateArgs) -> Result<(), String> {
    let opts = LoadOptions {
        threads: a.threads,
        providers: a.providers.iter().map(|&p| ProviderConfig::named(p)).collect(),
        tract_block_quant: a.block_quant,
        ort_library: None,
        huge_pages: a.huge_pages,
        private_files: true,
        batch_decode: !a.no_batch,
        ..Default::default()
    };
    let prompt = match (&a.prompt, &a.chat, &a.tokens) {
        (Some(p), _, _) => Prompt::Text(p.clone()),
        (_, Some(c), _) => {
            let mut m = vec![];
            if let Some(s) = &a.system {
                m.push(Message::new(Role::System, s));
            }
            m.push(Message::new(Role::User, c));
            Prompt::Chat(m)
        }
        (_, _, Some(t)) => Prompt::Tokens(parse_ids(t)?),
        _ => return Err("give --prompt, --chat or --tokens".into()),
    };
    let t0 = std::time::Instant::now();
    let model = Model::load(&a.model, a.backend, &opts, matches!(prompt, Prompt::Text(_) | Prompt::Chat(_)))
        .map_err(|e| e.to_string())?;
    let load_time = t0.elapsed();
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        prompt_lookup: a.prompt_lookup,
        format: match (&a.format, &a.json_schema, &a.regex, &a.lark) {
            (Some(_), ..) => Some(Format::Json),
            (_, Some(s), ..) => Some(Format::JsonSchema(s.clone())),
            (_, _, Some(r), _) => Some(Format::Regex(r.clone())),
            (.., Some(g)) => Some(Format::Lark(g.clone())),
            _ => None,
        },
        ..Default::default()
    };
    if let Some(f) = &params.format {
        f.check().map_err(|e| e.to_string())?;
    }
    if a.parallel > 1 {
        return generate_parallel(&model, &prompt, &params, a.parallel as usize, a.json);
    }
    let cancel = AtomicBool::new(false);
    let mut out = std::io::stdout().lock();
    let result = model
        .generate(&prompt, &params, &cancel, |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        })
        .map_err(|e| e.to_string())?;
    if model.tokenizer.is_none() {
        let ids: Vec<String> = result.tokens.iter().map(u32::to_string).collect();
        let _ = write!(out, "{}", ids.join(" "));
    }
    let _ = writeln!(out);
    let s = &result.stats;
    let served = model.served();
    let rss = peak_rss_kib().unwrap_or(0);
    if a.json {
        let v = serde_json::json!({
            "backend": served.backend, "provider": served.provider, "kv_cache": served.kv_cache, "load_s": load_time.as_secs_f64(),
            "prompt_tokens": s.prompt_tokens, "generated_tokens": s.generated_tokens,
            "ttft_ms": s.time_to_first_token.as_secs_f64() * 1e3,
            "prompt_tokens_per_s": s.prompt_tokens_per_s(), "decode_tokens_per_s": s.decode_tokens_per_s(),
            "finish": s.finish, "seed": s.seed, "peak_rss_kib": rss,
            "draft_tokens": s.draft.drafted, "draft_accepted": s.draft.accepted,
            "forced_tokens": s.forced_tokens, "pick_ms": s.pick_time.as_secs_f64() * 1e3,
        });
        eprintln!("{v}");
    } else {
        eprintln!(
            "[{} / {}] load {:.2}s | prompt {} tok, {:.1} tok/s | ttft {:.1} ms | decode {} tok, {:.1} tok/s | finish {} | seed {} | peak RSS {:.1} MiB{}",
            served.backend,
            served.provider,
            load_time.as_secs_f64(),
            s.prompt_tokens,
            s.prompt_tokens_per_s(),
            s.time_to_first_token.as_secs_f64() * 1e3,
            s.generated_tokens,
            s.decode_tokens_per_s(),
            s.finish.as_str(),
            s.seed,
            rss as f64 / 1024.0,
            if s.draft.drafted > 0 {
                format!(" | drafts {} of {} kept", s.draft.accepted, s.draft.drafted)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn serve(a: ServeArgs) -> Result<(), String> {
    llamad::memory::measure::configure_allocator();
    let mut config = Config::load(a.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(d) = a.models_dir {
        config.models_dir = d;
    }
    config.validate().map_err(|e| e.to_string())?;
    let bus = match (a.session, a.address) {
        (_, Some(addr)) => Bus::Address(addr),
        (true, None) => Bus::Session,
        (false, None) => Bus::System,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(llamad::service::run(config, bus)).map_err(|e| format!("{e:#}"))
}

/// Under systemd (stderr connected to the journal) log to the journal; otherwise to stderr.
fn init_logging(default: &str) {
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journal) = systemd_journal_logger::JournalLog::new()
        && journal.install().is_ok()
    {
        log::set_max_level(log::LevelFilter::Info);
        llamad::audit::to_journal(true);
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LLAMAD_LOG").unwrap_or_else(|_| default.into()))
        .with_writer(std::io::stderr)
        .init();
}

fn write_manifest(dir: &std::path::Path) -> Result<(), String> {
    use llamad::policy::manifest;
    let m = manifest::make(dir).map_err(|e| e.to_string())?;
    let path = dir.join(manifest::FILE);
    let text = serde_json::to_string_pretty(&m).map_err(|e| e.to_string())? + "\n";
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes: u64 = m.files.values().map(|e| e.size).sum();
    eprintln!("{}: {} files, {:.1} MiB", path.display(), m.files.len(), bytes as f64 / 1048576.0);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(if matches!(cli.command, Command::Serve(_)) { "info,ort=warn" } else { "warn" });
    let result = match cli.command {
        Command::Serve(a) => serve(a),
        Command::Generate(a) => generate(*a),
        Command::Inspect { model } => ModelDir::open(&model).map_err(|e| e.to_string()).map(|d| {
            let v = serde_json::json!({
                "name": d.name(), "layout": d.layout.to_string(), "quantization": d.quantization.to_string(),
                "spec": d.spec, "io": d.io, "parameters": d.parameters(), "file_size": d.file_size,
                "tokenizer": d.tokenizer.is_some(), "ops": d.graph.ops, "opset": d.graph.opset,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }),
        Command::Manifest { model } => write_manifest(&model),
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).section("8").render(&mut std::io::stdout()).map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llamad: {e}");
            ExitCode::FAILURE
        }
    }
}
