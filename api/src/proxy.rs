//! The client proxies of `org.llamad.Llama1.Manager` and `org.llamad.Llama1.Session`
//! (what `llamactl` uses).

use std::collections::HashMap;

use zbus::proxy;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use crate::types::{EstimateInfo, FinishStats, MemoryStatus, ModelInfo, WireMessage};

#[proxy(
    interface = "org.llamad.Llama1.Manager",
    default_service = "org.llamad.Llama1",
    default_path = "/org/llamad/Llama1"
)]
pub trait Manager {
    /// Every model of the models directory, loaded or not.
    fn list_models(&self) -> zbus::Result<Vec<ModelInfo>>;
    /// Loads a model now (instead of on first use). Options: `backend` (s).
    fn load_model(&self, name: &str, options: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    fn unload_model(&self, name: &str) -> zbus::Result<()>;
    /// Starts a completion of `prompt`; returns the request id. The text
    /// arrives as `Token` signals sent to the caller only, then `Finished`.
    fn generate(&self, model: &str, prompt: &str, options: HashMap<&str, Value<'_>>) -> zbus::Result<u64>;
    /// Like `Generate`, from `(role, content)` messages through the model's chat template.
    fn chat(&self, model: &str, messages: &[WireMessage], options: HashMap<&str, Value<'_>>) -> zbus::Result<u64>;
    /// Like `Chat`, with messages as `a{sv}` (`role`, `content`, `tool_calls`, `tool_call_id`,
    /// `name`), so they can carry tool calls and results; options add `tools`, `tool_choice`.
    fn chat_messages(
        &self,
        model: &str,
        messages: &[HashMap<&str, Value<'_>>],
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<u64>;
    /// Cancels one of the caller's requests.
    fn cancel(&self, request: u64) -> zbus::Result<()>;
    /// Opens a session (a conversation that keeps its KV cache) on `model` for the caller.
    /// Options: `ttl` (u, seconds idle before it closes).
    fn open_session(&self, model: &str, options: HashMap<&str, Value<'_>>) -> zbus::Result<OwnedObjectPath>;
    /// Every open session (`id`, `path`, `owner`, `model`, `tokens`, `kv_bytes`, `turns`,
    /// `idle_seconds`, `busy`).
    fn list_sessions(&self) -> zbus::Result<Vec<HashMap<String, OwnedValue>>>;
    /// Requests queued or running and who runs each (`id`, `model`, `state`, `client`,
    /// `uid`, and where known `pid`, `unit`, `slice`, `app_id`, `session`).
    fn list_requests(&self) -> zbus::Result<Vec<HashMap<String, OwnedValue>>>;
    /// What each account (app id or `uid:N`) used (`account`, `running`,
    /// `tokens_last_minute`, `tokens_today`, `requests_today`).
    fn list_usage(&self) -> zbus::Result<Vec<HashMap<String, OwnedValue>>>;
    /// Hashes every file of `model` against its manifest (admins): `manifest` b, `files` u,
    /// `bytes` t; a mismatch is `ModelLoadFailed` naming the file.
    fn verify_model(&self, model: &str) -> zbus::Result<HashMap<String, OwnedValue>>;
    /// Dry run of loading `model`: options `context` (u), `parallel` (u), `backend` (s).
    fn estimate(&self, model: &str, options: HashMap<&str, Value<'_>>) -> zbus::Result<EstimateInfo>;

    #[zbus(signal)]
    fn token(&self, request: u64, text: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn finished(&self, request: u64, stats: FinishStats) -> zbus::Result<()>;
    /// A tool call of the answer, before `Finished` (`arguments`: a JSON object's text).
    #[zbus(signal)]
    fn tool_call(&self, request: u64, call_id: &str, name: &str, arguments: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn model_loaded(&self, model: &str, reason: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn model_unloaded(&self, model: &str, reason: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn memory_pressure(&self, active: bool, reason: &str) -> zbus::Result<()>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    /// Backends this daemon can use (`tract`, `onnxruntime`).
    #[zbus(property)]
    fn backends(&self) -> zbus::Result<Vec<String>>;
    /// ONNX Runtime execution providers available in the loaded library.
    #[zbus(property)]
    fn providers(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn loaded_models(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn requests_running(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn requests_queued(&self) -> zbus::Result<u32>;
    /// The memory budget, where it comes from, and what is in use.
    #[zbus(property)]
    fn memory(&self) -> zbus::Result<MemoryStatus>;
    #[zbus(property)]
    fn under_memory_pressure(&self) -> zbus::Result<bool>;
    /// The power governor's state (`state`, `limiting`, `reasons`, `threads`,
    /// `max_parallel`, `background`, `cores`, `since`; with a battery `on_battery`,
    /// `battery_percent`, `battery_warning`; with thermal zones `zone`, `zone_type`,
    /// `temperature_c`, `hot_at_c`, `critical_at_c`).
    #[zbus(property)]
    fn power_state(&self) -> zbus::Result<HashMap<String, OwnedValue>>;
    /// The daemon's metrics in Prometheus' text format.
    #[zbus(property(emits_changed_signal = "false"))]
    fn metrics(&self) -> zbus::Result<String>;
}

/// A session object, `/org/llamad/Llama1/session/N` (build with `.path(...)`).
#[proxy(interface = "org.llamad.Llama1.Session", default_service = "org.llamad.Llama1")]
pub trait Session {
    /// Appends `messages` (`role`, `content`) and answers; the text comes as the manager's
    /// `Token` signals, then `Finished`, with the returned request id.
    fn chat(&self, messages: &[HashMap<&str, Value<'_>>], options: HashMap<&str, Value<'_>>) -> zbus::Result<u64>;
    /// Drops the last `turns` turns.
    fn rewind(&self, turns: u32) -> zbus::Result<()>;
    fn close(&self) -> zbus::Result<()>;

    #[zbus(signal)]
    fn closed(&self, reason: &str) -> zbus::Result<()>;

    // Not announced by the daemon (see docs/dbus-api.md), so not cached: each read asks.
    #[zbus(property(emits_changed_signal = "const"))]
    fn model(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn tokens(&self) -> zbus::Result<u32>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn kv_bytes(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn turns(&self) -> zbus::Result<u32>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn idle_seconds(&self) -> zbus::Result<u64>;
}
