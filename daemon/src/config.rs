//! The daemon's configuration: TOML with every field defaulted, read from
//! `/etc/llamad/llamad.toml` (or `--config`), checked by [`Config::validate`]
//! before anything starts. A bad file is an error message, never a panic.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::BackendKind;
use crate::engine::backend::ProviderConfig;
use crate::memory::budget::Size;

pub const DEFAULT_PATH: &str = "/etc/llamad/llamad.toml";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// One subdirectory per model; the subdirectory's name is the model's name.
    pub models_dir: PathBuf,
    /// Models loaded at start, before READY is signalled.
    pub preload: Vec<String>,
    /// `tract`, `onnxruntime`, or none for: ONNX Runtime when its library is found, else tract.
    pub backend: Option<BackendKind>,
    /// Compute threads per model; 0 = one per core.
    pub threads: usize,
    /// Requests waiting to start (on all models) beyond which new ones get `Busy`.
    pub max_queue: usize,
    /// Requests computed at the same time on one model (its engine loop's rows; paused
    /// background rows are not counted). On ONNX Runtime's shared-buffer graphs their decoding
    /// steps run as one forward pass (`onnxruntime.batch_decode`): 4 at once give about 2×
    /// the tokens/s of one (docs/benchmarks.md); elsewhere they take turns.
    pub max_parallel: usize,
    /// Upper bound on a request's `max_tokens`.
    pub max_tokens_limit: u32,
    /// The most prompt tokens one forward pass computes: longer prompts go in chunks, so a
    /// prompt's transient memory is bounded, and a request can be cancelled, or yield to
    /// interactive work, between chunks.
    pub prefill_chunk: usize,
    /// Requests whose prompts are tokenized (and rendered through chat templates) at once;
    /// more wait. A prompt's text is bounded before that (the model's context times its
    /// tokenizer's longest token), so this bounds the memory tokenizing can take.
    pub max_tokenizing: usize,
    /// Seconds an idle model stays loaded after its last request: 0 = unload right after
    /// the request, negative = keep until unloaded or evicted. A request's `keep_alive`
    /// option overrides it for its model.
    pub keep_alive: i64,
    /// Models loaded at once; loading one more first unloads the least recently used idle one.
    pub max_loaded_models: usize,
    /// Users (uids) allowed to load and unload models without asking polkit, besides root
    /// and the daemon's own user (others: polkit's `org.llamad.Llama1.manage-models`).
    /// Everyone may generate (loading on first use) and list.
    pub admin_uids: Vec<u32>,
    pub onnxruntime: OnnxRuntime,
    pub sessions: Sessions,
    pub tract: Tract,
    pub memory: Memory,
    /// Load only model directories with a manifest (`llamad-manifest.json`, written by
    /// `llamad manifest DIR`); one that has a manifest is always checked against it.
    pub require_manifest: bool,
    /// Per-app rules (`[[apps]]`, `policy/rules.rs`): the first that matches a caller sets
    /// the models it may use, its requests at once and its token quotas.
    pub apps: Vec<crate::policy::rules::AppRule>,
    /// The power and heat governor (`power/`): limits on battery, low battery and heat.
    pub power: crate::power::PowerConfig,
    /// Metrics (`metrics/`): the node_exporter textfile.
    pub metrics: crate::metrics::MetricsConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Memory {
    /// What llamad may use: bytes, "2GiB", or "75%" of RAM; unset = all of RAM. The cgroup
    /// limit (the unit's MemoryMax) and physical RAM cap it too.
    pub budget: Option<Size>,
    /// Left for the rest of the system: taken off the cgroup limit and RAM (not off `budget`).
    pub reserve: Size,
    /// Pressure stall information to watch (`some avg10=...`).
    pub psi: PathBuf,
    /// Memory pressure begins at this `avg10` (percent of time stalled) and ends below it.
    pub psi_threshold: f64,
    /// A PSI trigger registered on `psi` when it is the kernel's file: `some|full STALL_US
    /// WINDOW_US`. The kernel wakes llamad as soon as tasks stalled that long within the
    /// window, instead of at the next avg10 reading. Unprivileged processes may only use
    /// windows that are multiples of 2 s. Empty: avg10 readings only.
    pub psi_trigger: String,
    /// A request whose KV cache does not fit now: `queue` (wait for running requests to
    /// finish) or `refuse` (`OutOfBudget` at once). One that could never fit is refused.
    pub when_full: WhenFull,
    /// The cgroup's `memory.events` to watch (`high`/`max`/`oom` counters); unset: the
    /// daemon's own cgroup v2 file when there is one.
    pub events: Option<PathBuf>,
    /// Back loaded weights with transparent huge pages (`MADV_HUGEPAGE`, `MADV_COLLAPSE`):
    /// decode 10-13 % faster (measured), but off by default until its effect on the memory
    /// accounting is understood: heap memory collapsed into huge pages may not all be returned
    /// when a model is unloaded (`malloc_trim` frees 4 KiB pages, not parts of a huge page).
    pub huge_pages: bool,
    /// After a load, copy the parts of the model's files that a backend keeps mapped (ONNX
    /// Runtime's external data) into the daemon's own memory (`engine/file_maps.rs`), so
    /// that the files may be rewritten or truncated while the model is loaded; otherwise
    /// that kills the daemon (SIGBUS). `false` keeps the mappings: pages never read stay on
    /// disk and the kernel may drop the rest under pressure. Only for model files that never
    /// change in place (a read-only image).
    pub private_model_files: bool,
    /// The prompt cache (`session/prompt_cache.rs`): KV caches of recent requests kept for the
    /// next request that shares their prompt's beginning. Bytes, units or a share of the
    /// budget ("10%"); 0 = off.
    pub prompt_cache: Size,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            budget: None,
            reserve: Size::Percent(5.0),
            psi: PathBuf::from("/proc/pressure/memory"),
            psi_threshold: 10.0,
            psi_trigger: "some 150000 2000000".into(),
            when_full: WhenFull::Queue,
            events: None,
            huge_pages: false,
            private_model_files: true,
            prompt_cache: Size::Bytes(256 << 20),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    Queue,
    Refuse,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OnnxRuntime {
    /// `libonnxruntime.so` to load; empty = `ORT_DYLIB_PATH`, then the search list.
    pub library: Option<PathBuf>,
    /// Execution providers in order of preference.
    pub providers: Vec<ProviderConfig>,
    /// The decoding steps of a model's running requests run as one forward pass (graphs with
    /// a shared KV buffer); only matters with `max_parallel` above 1.
    pub batch_decode: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Sessions {
    /// Seconds an idle session stays open (the longest a client may ask for in `OpenSession`).
    pub ttl: u64,
    /// Sessions one client (bus connection) may have open at once.
    pub max_per_client: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions { ttl: 900, max_per_client: 8 }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Tract {
    /// Re-quantize float weights to Q4_0 at load.
    pub block_quant: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            models_dir: PathBuf::from("/var/lib/llamad/models"),
            preload: vec![],
            backend: None,
            threads: 0,
            max_queue: 16,
            max_parallel: 4,
            max_tokens_limit: 4096,
            prefill_chunk: crate::engine::backend::DEFAULT_PREFILL_CHUNK,
            max_tokenizing: 2,
            admin_uids: vec![],
            keep_alive: 300,
            max_loaded_models: 3,
            onnxruntime: OnnxRuntime::default(),
            sessions: Sessions::default(),
            tract: Tract::default(),
            memory: Memory::default(),
            apps: vec![],
            require_manifest: false,
            power: Default::default(),
            metrics: Default::default(),
        }
    }
}

impl Default for OnnxRuntime {
    fn default() -> Self {
        OnnxRuntime { library: None, providers: vec![ProviderConfig::cpu()], batch_decode: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path`; a missing file at the default path means the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(ConfigError::File { path: path.display().to_string(), reason: e.to_string() }),
        };
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::File { path: path.display().to_string(), reason: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.models_dir.as_os_str().is_empty() {
            return bad("models_dir is empty".into());
        }
        if self.sessions.ttl == 0 || self.sessions.ttl > 7 * 86400 {
            return bad(format!("sessions.ttl = {} (1 to 604800 seconds)", self.sessions.ttl));
        }
        if self.sessions.max_per_client == 0 || self.sessions.max_per_client > 1024 {
            return bad(format!("sessions.max_per_client = {} (1 to 1024)", self.sessions.max_per_client));
        }
        if self.max_queue == 0 || self.max_queue > 4096 {
            return bad(format!("max_queue = {} (1 to 4096)", self.max_queue));
        }
        if self.max_parallel == 0 || self.max_parallel > 64 {
            return bad(format!("max_parallel = {} (1 to 64)", self.max_parallel));
        }
        if self.max_loaded_models == 0 {
            return bad("max_loaded_models = 0".into());
        }
        if !(self.memory.psi_threshold > 0.0 && self.memory.psi_threshold <= 100.0) {
            return bad(format!("memory.psi_threshold = {} (0 to 100]", self.memory.psi_threshold));
        }
        if !self.memory.psi_trigger.is_empty() {
            crate::memory::trigger::TriggerSpec::parse(&self.memory.psi_trigger)
                .map_err(|e| ConfigError::Invalid(format!("memory.psi_trigger: {e}")))?;
        }
        if self.max_tokens_limit == 0 {
            return bad("max_tokens_limit = 0".into());
        }
        if self.prefill_chunk == 0 || self.prefill_chunk > 65536 {
            return bad(format!("prefill_chunk = {} (1 to 65536)", self.prefill_chunk));
        }
        if self.max_tokenizing == 0 || self.max_tokenizing > 64 {
            return bad(format!("max_tokenizing = {} (1 to 64)", self.max_tokenizing));
        }
        if self.threads > 1024 {
            return bad(format!("threads = {}", self.threads));
        }
        for p in &self.onnxruntime.providers {
            p.validate().map_err(ConfigError::Invalid)?;
        }
        for name in &self.preload {
            if !crate::engine::model_dir::valid_model_name(name) {
                return bad(format!("preload: \"{name}\" is not a model name"));
            }
        }
        for (i, rule) in self.apps.iter().enumerate() {
            rule.validate(i).map_err(ConfigError::Invalid)?;
        }
        self.power.validate().map_err(ConfigError::Invalid)?;
        self.metrics.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_files_override_them() {
        Config::default().validate().unwrap();
        let c: Config = toml::from_str(
            "models_dir = \"/m\"\nmax_parallel = 2\nbackend = \"tract\"\n[[onnxruntime.providers]]\nname = \"qnn\"\n\
             options = { backend_path = \"libQnnHtp.so\" }\n[[onnxruntime.providers]]\nname = \"cpu\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.max_parallel, 2);
        assert_eq!(c.max_queue, 16);
        assert_eq!(c.onnxruntime.providers.len(), 2);
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        for text in [
            "max_queue = 0",
            "max_parallel = -1",
            "unknown_key = 1",
            "backend = \"gpu\"",
            "[[onnxruntime.providers]]\nname = \"qnn\"\noptions = { htp_performance_mode = \"warp\" }",
            "preload = [\"../etc\"]",
            "[[apps]]\nuid = 1000\nmax_concurrent = 0",
            "[[apps]]\ntokens_per_hour = 5",
            "models_dir = ",
            "[power]\ninterval_ms = 0",
            "[metrics]\ntextfile = \"relative.prom\"",
            "[metrics]\ntextfile = \"/var/lib/x/llamad.txt\"",
            "[metrics]\ninterval = 0",
        ] {
            let r = toml::from_str::<Config>(text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.to_string()));
            assert!(r.is_err(), "{text:?} was accepted");
        }
    }
}
