//! Wire types. Results that may grow are `a{sv}` dictionaries
//! (`SerializeDict`): new keys can be added without breaking clients, and
//! every field is optional on the receiving side.

use zbus::zvariant::{DeserializeDict, OwnedValue, SerializeDict, Type, Value};

/// One model of the models directory (`ListModels`).
#[derive(Debug, Clone, Default, PartialEq, SerializeDict, DeserializeDict, Type)]
#[zvariant(signature = "a{sv}")]
pub struct ModelInfo {
    pub name: String,
    /// `onnxruntime-genai` or `optimum`.
    pub layout: Option<String>,
    /// `fp32`, `int4 (MatMulNBits, block 32)`, `int8 (dynamic)`, ...
    pub quantization: Option<String>,
    pub parameters: Option<u64>,
    pub context_length: Option<u32>,
    pub vocab_size: Option<u32>,
    /// Bytes of the graph and its external data.
    pub file_size: Option<u64>,
    pub loaded: Option<bool>,
    /// When loaded: `tract` or `onnxruntime`, and the execution provider / runtime.
    pub backend: Option<String>,
    pub provider: Option<String>,
    /// When loaded: seconds since the model last served a request.
    pub idle_seconds: Option<u64>,
    /// Requests running on this model now.
    pub running: Option<u32>,
    /// When the directory is not a usable model: why.
    pub error: Option<String>,
    /// Estimated resident bytes once loaded (weights + scratch), on the backend it would use.
    pub estimated_bytes: Option<u64>,
    /// When loaded: the daemon's resident-memory growth measured over the load.
    pub measured_bytes: Option<u64>,
    /// Of `measured_bytes`: anonymous memory (heap: parsed graphs, packed weights).
    pub measured_anon_bytes: Option<u64>,
    /// Of `measured_bytes`: file-backed memory (memory-mapped model files, code pages).
    pub measured_file_bytes: Option<u64>,
    /// The resident growth a load is expected to pass through at its peak (admission uses it).
    pub estimated_peak_bytes: Option<u64>,
    /// When loaded: the highest resident growth seen during the load.
    pub measured_peak_bytes: Option<u64>,
    /// KV-cache bytes per token of context.
    pub kv_bytes_per_token: Option<u64>,
    /// The KV cache's element type as the graph stores it: `f32` or `f16`.
    pub kv_cache_type: Option<String>,
    /// KV cache reserved by this model's running requests.
    pub kv_reserved_bytes: Option<u64>,
}

/// The memory budget and its use (`Memory` property).
#[derive(Debug, Clone, Default, PartialEq, SerializeDict, DeserializeDict, Type, Value, OwnedValue)]
#[zvariant(signature = "a{sv}")]
pub struct MemoryStatus {
    /// min(config, cgroup, physical) − reserve.
    pub budget: u64,
    pub config: Option<u64>,
    pub cgroup: Option<u64>,
    pub cgroup_source: Option<String>,
    pub physical: Option<u64>,
    pub reserve: Option<u64>,
    /// Loaded models (max of estimate and measurement each) plus reserved KV caches.
    pub used: Option<u64>,
    pub kv_reserved: Option<u64>,
    /// The daemon's resident memory now.
    pub rss: Option<u64>,
    /// KV caches sessions hold between turns, and the prompt cache's (both in `used`).
    pub sessions_kv: Option<u64>,
    pub prompt_cache: Option<u64>,
}

/// The final message of a request (the `Finished` signal).
#[derive(Debug, Clone, Default, PartialEq, SerializeDict, DeserializeDict, Type)]
#[zvariant(signature = "a{sv}")]
pub struct FinishStats {
    /// `eos`, `length`, `stop`, `cancelled` or `error`.
    pub finish_reason: String,
    pub prompt_tokens: Option<u32>,
    pub generated_tokens: Option<u32>,
    pub time_to_first_token_ms: Option<f64>,
    pub prompt_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub seed: Option<u64>,
    pub backend: Option<String>,
    pub provider: Option<String>,
    /// With `finish_reason` = `error`: the D-Bus error name and message.
    pub error_name: Option<String>,
    pub error: Option<String>,
    /// When prompt lookup was asked for or (automatic) used: draft tokens verified, and how many of them the model kept
    /// (the acceptance rate is their ratio).
    pub draft_tokens: Option<u32>,
    pub draft_accepted: Option<u32>,
    /// Prompt tokens whose KV cache a session (or the prompt cache) held already: not computed.
    pub cached_prompt_tokens: Option<u32>,
    /// With a format: generated tokens its grammar forced (fed without sampling).
    pub forced_tokens: Option<u32>,
}

/// A chat message on the wire: `(role, content)`, role `system`, `user` or `assistant`.
pub type WireMessage = (String, String);

/// Keys accepted in the `a{sv}` options of `Generate` and `Chat`, with their D-Bus types.
pub const REQUEST_OPTIONS: &[(&str, &str)] = &[
    ("temperature", "d"),
    ("top_k", "u"),
    ("top_p", "d"),
    ("repetition_penalty", "d"),
    ("repeat_last_n", "u"),
    ("seed", "t"),
    ("max_tokens", "u"),
    ("stop", "as"),
    ("keep_alive", "x"),
    ("prompt_lookup", "u"),
    // interactive or background: a request may lower the class its caller gets (from its
    // [[apps]] rule or its systemd slice), never raise it.
    ("priority", "s"),
    // Structured output, at most one: any JSON value, a JSON Schema, a regular
    // expression, a Lark grammar (llguidance's syntax).
    ("json", "b"),
    ("json_schema", "s"),
    ("regex", "s"),
    ("lark", "s"),
    // Chats only (ChatMessages, Session.Chat): OpenAI-style function definitions (a JSON
    // array, as text) and auto, none, required or one function's name.
    ("tools", "s"),
    ("tool_choice", "s"),
    ("parallel_tool_calls", "b"),
];

/// A dry run of loading a model (`Estimate`).
#[derive(Debug, Clone, Default, PartialEq, SerializeDict, DeserializeDict, Type)]
#[zvariant(signature = "a{sv}")]
pub struct EstimateInfo {
    pub backend: String,
    pub weights: u64,
    pub scratch: u64,
    /// KV cache of one sequence of `context` tokens.
    pub kv_per_sequence: u64,
    pub context: u32,
    pub parallel: u32,
    /// weights + scratch + parallel × kv_per_sequence.
    pub total: u64,
    /// Resident growth at the peak of loading (parsed graph and runtime copies side by side).
    pub load_peak: Option<u64>,
    /// Code pages of the runtime that the first load on it brings in (in `scratch`).
    pub runtime_code: Option<u64>,
    pub budget: u64,
    /// What is in use now (loaded models and reservations).
    pub in_use: u64,
    /// Whether `total` fits next to what is in use now (without unloading anything).
    pub fits_now: bool,
    /// Whether it would fit after unloading every idle model.
    pub fits_after_eviction: bool,
    /// The KV cache's element type as the graph stores it: `f32` or `f16`.
    pub kv_cache_type: Option<String>,
    /// KV-cache bytes per token of context, in that type.
    pub kv_bytes_per_token: Option<u64>,
    /// The longest context (tokens per sequence, for `parallel` sequences) that fits next to
    /// what is in use now; 0 when not even the model fits.
    pub max_context_now: Option<u32>,
    /// The same after unloading every idle model.
    pub max_context_after_eviction: Option<u32>,
}
