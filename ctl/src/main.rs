//! `llamactl`: drives llamad over D-Bus only (through `llamad-api`; no
//! inference code is compiled in). System bus by default; `--session` or
//! `--address` for others. Every command that prints data takes `--json`.
//!
//! Exit codes (stable, for scripts): 0 success; 1 other error; 2 usage;
//! 3 the daemon is not reachable; 4 unknown model; 5 invalid arguments;
//! 6 busy; 7 context overflow; 8 model failed to load; 9 cancelled;
//! 10 generation failed; 11 out of memory budget; 12 quota exceeded; 13 refused by the
//! power governor (background work on low battery or in heat).

mod chat;
mod inspect;
mod stream;
mod top;

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use llamad_api::{Error, ManagerProxy};
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
    /// Speculative decoding by prompt lookup: verify up to N draft tokens a pass (0 = off;
    /// default: automatic, where it pays).
    #[arg(long)]
    prompt_lookup: Option<u32>,
    /// The output is one JSON value (`json`; the global --json is this tool's own output).
    #[arg(long, value_parser = ["json"], conflicts_with_all = ["json_schema", "regex", "lark"])]
    format: Option<String>,
    /// The output is JSON valid against the JSON Schema in FILE.
    #[arg(long, value_name = "FILE", value_parser = read_file, conflicts_with_all = ["regex", "lark"])]
    json_schema: Option<String>,
    /// Run as background work (served after interactive requests, pausing while they run);
    /// `interactive` is the default unless the caller's slice or rule says background.
    #[arg(long, value_parser = ["interactive", "background"])]
    priority: Option<String>,
    /// The whole output matches this regular expression.
    #[arg(long, value_name = "RE", conflicts_with = "lark")]
    regex: Option<String>,
    /// The output follows the grammar in FILE (llguidance's Lark syntax).
    #[arg(long, value_name = "FILE", value_parser = read_file)]
    lark: Option<String>,
}

/// A redraw interval, for clap: 0.1 to 3600 seconds.
fn interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s}: seconds from 0.1 to 3600")),
    }
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
    /// Check every file of a model against its manifest (written by `llamad manifest DIR`).
    Verify { model: String },
    /// Loaded models (backend, provider, idle time) and who runs each request (uid, pid,
    /// unit, app id; never what).
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
    /// The daemon's metrics live: requests by result and app, tokens, time to first token,
    /// decode speed, queue wait, memory and the power state.
    Top {
        /// Seconds between redraws.
        #[arg(long, default_value_t = 2.0, value_parser = interval)]
        interval: f64,
        /// Print once and exit (also when the output is not a terminal).
        #[arg(long)]
        once: bool,
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
            Error::QuotaExceeded(_) => 12,
            Error::GenerationFailed(_) => 10,
            Error::PowerSaving(_) => 13,
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
        Command::Status => inspect::status(&proxy, cli.json).await?,
        Command::Models => inspect::models(&proxy, false, cli.json).await?,
        Command::Ps => inspect::models(&proxy, true, cli.json).await?,
        Command::Estimate { model, ctx, parallel, backend } => {
            inspect::estimate(&proxy, model, *ctx, *parallel, backend.as_deref(), cli.json).await?
        }
        Command::Load { model, backend } => {
            let mut o: HashMap<&str, Value<'_>> = HashMap::new();
            if let Some(b) = backend {
                o.insert("backend", b.as_str().into());
            }
            proxy.load_model(model, o).await?;
        }
        Command::Unload { model } => proxy.unload_model(model).await?,
        Command::Verify { model } => inspect::verify(&proxy, model, cli.json).await?,
        Command::Cancel { request } => proxy.cancel(*request).await?,
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
        Command::Top { interval, once } => top::top(&proxy, *interval, *once, cli.json).await?,
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
