//! Client-side helpers shared by the D-Bus tests: request options, one
//! streamed request collected until `Finished`, the manager's signals, and
//! the core's own result for comparison.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures_util::StreamExt;
use llamad::engine::{BackendKind, Model, Prompt, SamplingParams};
use llamad_api::{Error, FinishStats, MANAGER_INTERFACE, MANAGER_PATH, ManagerProxy};
use zbus::zvariant::Value;
use zbus::{MatchRule, MessageStream, message::Type as MsgType};

use super::fixture;

pub const PROMPT: &str = "Once upon a time";

/// Load options naming the backend.
pub fn backend_opt(backend: &str) -> HashMap<&'static str, Value<'static>> {
    HashMap::from([("backend", Value::from(backend.to_string()))])
}

pub fn request_opts(seed: u64, max_tokens: u32) -> HashMap<&'static str, Value<'static>> {
    HashMap::from([
        ("seed", Value::from(seed)),
        ("max_tokens", Value::from(max_tokens)),
        ("temperature", Value::from(0.8f64)),
    ])
}

/// What the core itself produces for `tiny` with the same options (no D-Bus).
pub fn core_text(seed: u64, max_tokens: u32) -> String {
    let m =
        Model::load(&fixture("tiny-llama2-optimum-fp32"), BackendKind::Tract, &super::opts(BackendKind::Tract), true)
            .unwrap();
    let p = SamplingParams { seed: Some(seed), max_tokens, temperature: 0.8, ..Default::default() };
    m.generate(&Prompt::Text(PROMPT.into()), &p, &AtomicBool::new(false), |_| {}).unwrap().text
}

/// Starts a request through `proxy` and collects its stream until `Finished`.
pub async fn run(
    conn: &zbus::Connection,
    proxy: &ManagerProxy<'_>,
    seed: u64,
    max_tokens: u32,
) -> (String, FinishStats, usize) {
    stream_prompt(conn, proxy, PROMPT, seed, max_tokens).await.unwrap()
}

/// `Generate` on `tiny`, then the request's text, final stats and number of pieces.
pub async fn stream_prompt(
    conn: &zbus::Connection,
    proxy: &ManagerProxy<'_>,
    prompt: &str,
    seed: u64,
    max_tokens: u32,
) -> Result<(String, FinishStats, usize), Error> {
    stream(conn, proxy, "tiny", prompt, request_opts(seed, max_tokens)).await
}

/// `Generate` on `model`, then the request's text, final stats and number of pieces.
/// Signals of other requests must not reach this client (they are unicast).
pub async fn stream(
    conn: &zbus::Connection,
    proxy: &ManagerProxy<'_>,
    model: &str,
    prompt: &str,
    options: HashMap<&str, Value<'_>>,
) -> Result<(String, FinishStats, usize), Error> {
    let mut signals = manager_signals(conn).await;
    let id = proxy.generate(model, prompt, options).await.map_err(Error::from)?;
    Ok(collect(&mut signals, id).await)
}

/// Every signal of the manager interface that reaches `conn` (its own unicast ones and broadcasts).
/// Collects request `id`'s stream from `signals` (opened before the request started) until
/// `Finished`: the text, the final stats and the number of pieces.
pub async fn collect(signals: &mut MessageStream, id: u64) -> (String, FinishStats, usize) {
    let (mut text, mut pieces) = (String::new(), 0);
    // A daemon that died sends nothing more: fail rather than wait for ever.
    const STALL: std::time::Duration = std::time::Duration::from_secs(120);
    loop {
        let Ok(next) = tokio::time::timeout(STALL, signals.next()).await else {
            panic!("no message about request {id} for {STALL:?}: did the daemon die?")
        };
        let Some(msg) = next else { break };
        let msg = msg.unwrap();
        match msg.header().member().map(|m| m.as_str()) {
            Some("Token") => {
                let (rid, piece): (u64, String) = msg.body().deserialize().unwrap();
                assert_eq!(rid, id, "a token of another request reached this client");
                text.push_str(&piece);
                pieces += 1;
            }
            Some("Finished") => {
                let (rid, stats): (u64, FinishStats) = msg.body().deserialize().unwrap();
                assert_eq!(rid, id, "another request's final message reached this client");
                return (text, stats, pieces);
            }
            _ => {}
        }
    }
    panic!("stream ended")
}

pub async fn manager_signals(conn: &zbus::Connection) -> MessageStream {
    let rule = MatchRule::builder()
        .msg_type(MsgType::Signal)
        .interface(MANAGER_INTERFACE)
        .unwrap()
        .path(MANAGER_PATH)
        .unwrap()
        .build();
    MessageStream::for_match_rule(rule, conn, Some(10_000)).await.unwrap()
}

pub async fn wait_for(stream: &mut MessageStream, member: &str) -> zbus::Message {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {member} signal"))
            .unwrap()
            .unwrap();
        if msg.header().member().map(|m| m.as_str()) == Some(member) {
            return msg;
        }
    }
}

/// Names of the loaded models, sorted, from `ListModels` (a method call: the proxy's cached
/// `LoadedModels` property may not have seen the latest PropertiesChanged yet).
pub async fn loaded_now(proxy: &ManagerProxy<'_>) -> Vec<String> {
    let mut v: Vec<String> =
        proxy.list_models().await.unwrap().into_iter().filter(|m| m.loaded == Some(true)).map(|m| m.name).collect();
    v.sort();
    v
}

/// The daemon's `Memory` property as it is now (read with `Get`, not from a proxy's cache,
/// which follows PropertiesChanged and may lag behind).
pub async fn memory_now(conn: &zbus::Connection) -> llamad_api::MemoryStatus {
    let proxy = ManagerProxy::builder(conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    proxy.memory().await.unwrap()
}
