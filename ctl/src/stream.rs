//! Streaming one request's text from the manager's `Token`/`Finished` signals
//! (Ctrl-C cancels it), request options from the command line, and the final
//! statistics as text or JSON.
//!
//! Only the daemon's signals count: any connection may send a signal with the
//! manager's path and interface to any other, so the match rule names the
//! unique name that owns `org.llamad.Llama1` now, and each message's sender is
//! checked against it again. If that owner leaves the bus the stream ends with
//! an error instead of waiting for ever.

use std::collections::HashMap;
use std::io::Write;

use futures_util::StreamExt;
use llamad_api::{BUS_NAME, FinishStats, MANAGER_INTERFACE, MANAGER_PATH, ManagerProxy};
use zbus::zvariant::Value;
use zbus::{MatchRule, MessageStream, message::Type as MsgType};

use crate::{Failure, Sampling};

pub(crate) fn options(s: &Sampling) -> HashMap<&'static str, Value<'static>> {
    let mut o: HashMap<&'static str, Value<'static>> = HashMap::new();
    if let Some(v) = s.max_tokens {
        o.insert("max_tokens", v.into());
    }
    if let Some(v) = s.temperature {
        o.insert("temperature", v.into());
    }
    if let Some(v) = s.top_k {
        o.insert("top_k", v.into());
    }
    if let Some(v) = s.top_p {
        o.insert("top_p", v.into());
    }
    if let Some(v) = s.prompt_lookup {
        o.insert("prompt_lookup", v.into());
    }
    if let Some(v) = s.repetition_penalty {
        o.insert("repetition_penalty", v.into());
    }
    if let Some(v) = s.seed {
        o.insert("seed", v.into());
    }
    if !s.stop.is_empty() {
        o.insert("stop", s.stop.clone().into());
    }
    if let Some(p) = &s.priority {
        o.insert("priority", p.clone().into());
    }
    if s.format.is_some() {
        o.insert("json", true.into());
    }
    for (key, text) in [("json_schema", &s.json_schema), ("regex", &s.regex), ("lark", &s.lark)] {
        if let Some(t) = text {
            o.insert(key, t.clone().into());
        }
    }
    o
}

/// What one request produced.
pub(crate) struct Outcome {
    pub(crate) text: String,
    pub(crate) stats: FinishStats,
    /// The answer's tool calls: id, name, arguments (a JSON object's text).
    pub(crate) tool_calls: Vec<(String, String, String)>,
}

/// Starts a request with `start` and streams its text to `out` until it finishes; Ctrl-C cancels it.
pub(crate) async fn stream<F, Fut>(
    conn: &zbus::Connection,
    proxy: &ManagerProxy<'_>,
    start: F,
    echo: bool,
) -> Result<Outcome, Failure>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = zbus::Result<u64>>,
{
    // Subscribe before starting, so no token can arrive before we listen; only to what the
    // daemon itself sends (see the module doc).
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let daemon = dbus.get_name_owner(BUS_NAME.try_into().map_err(zbus::Error::from)?).await.map_err(|e| match e {
        zbus::fdo::Error::NameHasNoOwner(_) => {
            Failure { code: 3, message: format!("{BUS_NAME} is not on this bus (is llamad running?)") }
        }
        e => Failure::from(zbus::Error::from(e)),
    })?;
    let rule = MatchRule::builder()
        .msg_type(MsgType::Signal)
        .sender(daemon.clone())?
        .interface(MANAGER_INTERFACE)?
        .path(MANAGER_PATH)?
        .build();
    let mut signals = MessageStream::for_match_rule(rule, conn, Some(1024)).await?;
    let mut owners = dbus.receive_name_owner_changed_with_args(&[(0, BUS_NAME)]).await?;
    let id = start().await?;
    let mut text = String::new();
    let mut tool_calls = vec![];
    let mut cancelled = false;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            msg = signals.next() => {
                let Some(msg) = msg else { return Err(Failure { code: 1, message: "the bus connection closed".into() }) };
                let msg = msg?;
                let header = msg.header();
                if header.sender().map(|s| s.as_str()) != Some(daemon.as_str()) {
                    continue;
                }
                match header.member().map(|m| m.as_str()) {
                    Some("Token") => {
                        let (rid, piece): (u64, String) = msg.body().deserialize()?;
                        if rid == id {
                            if echo {
                                stdout.write_all(piece.as_bytes())?;
                                stdout.flush()?;
                            }
                            text.push_str(&piece);
                        }
                    }
                    Some("ToolCall") => {
                        let (rid, call_id, name, arguments): (u64, String, String, String) = msg.body().deserialize()?;
                        if rid == id {
                            tool_calls.push((call_id, name, arguments));
                        }
                    }
                    Some("Finished") => {
                        let (rid, stats): (u64, FinishStats) = msg.body().deserialize()?;
                        if rid == id {
                            return Ok(Outcome { text, stats, tool_calls });
                        }
                    }
                    _ => {}
                }
            }
            Some(change) = owners.next() => {
                if let Ok(args) = change.args()
                    && args.old_owner().as_deref() == Some(&*daemon)
                {
                    return Err(Failure { code: 3, message: format!("llamad left the bus before request {id} finished") });
                }
            }
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                let _ = proxy.cancel(id).await;
            }
        }
    }
}

pub(crate) fn finish_code(stats: &FinishStats) -> Result<(), Failure> {
    match stats.finish_reason.as_str() {
        "cancelled" => Err(Failure { code: 9, message: "cancelled".into() }),
        "error" => {
            let message = stats.error.clone().unwrap_or_else(|| "generation failed".into());
            // the request's error by name: OutOfBudget, ContextOverflow... keep their exit codes
            let code = match stats.error_name.as_deref().and_then(|n| n.rsplit('.').next()) {
                Some("OutOfBudget") => 11,
                Some("ContextOverflow") => 7,
                Some("PowerSaving") => 13,
                _ => 10,
            };
            Err(Failure { code, message })
        }
        _ => Ok(()),
    }
}

pub(crate) fn print_stats(stats: &FinishStats) {
    eprintln!(
        "[{} / {}] prompt {} tok, {:.1} tok/s | ttft {:.1} ms | generated {} tok, {:.1} tok/s | finish {}{}",
        stats.backend.as_deref().unwrap_or("?"),
        stats.provider.as_deref().unwrap_or("?"),
        stats.prompt_tokens.unwrap_or(0),
        stats.prompt_tokens_per_s.unwrap_or(0.0),
        stats.time_to_first_token_ms.unwrap_or(0.0),
        stats.generated_tokens.unwrap_or(0),
        stats.decode_tokens_per_s.unwrap_or(0.0),
        stats.finish_reason,
        match (stats.draft_tokens, stats.draft_accepted) {
            (Some(d), Some(a)) if d > 0 => format!(" | drafts {a} of {d} kept"),
            _ => String::new(),
        }
    );
}

pub(crate) fn json_stats(s: &FinishStats) -> serde_json::Value {
    serde_json::json!({
        "finish_reason": s.finish_reason, "prompt_tokens": s.prompt_tokens, "generated_tokens": s.generated_tokens,
        "time_to_first_token_ms": s.time_to_first_token_ms, "prompt_tokens_per_s": s.prompt_tokens_per_s,
        "decode_tokens_per_s": s.decode_tokens_per_s, "seed": s.seed, "backend": s.backend,
        "provider": s.provider, "error_name": s.error_name, "error": s.error,
        "draft_tokens": s.draft_tokens, "draft_accepted": s.draft_accepted,
        "cached_prompt_tokens": s.cached_prompt_tokens,
    })
}
