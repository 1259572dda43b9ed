//! Method options from the wire (`a{sv}`), strictly: an unknown key or a value
//! of the wrong D-Bus type is `InvalidArgs` naming the key. Request options
//! become [`SamplingParams`] (then checked by `SamplingParams::validate`, and
//! a format compiled by `Format::check`, so a bad grammar fails the call);
//! `LoadModel` and `Estimate` take a backend, a context and a parallelism;
//! `OpenSession` a TTL; messages come as `aa{sv}`, with tool calls and
//! results, and a chat's `tools` and `tool_choice`.

use std::collections::HashMap;

use llamad_api::Error;
use zbus::zvariant::{OwnedValue, Value};

use crate::engine::chat::{Message, Role};
use crate::engine::tools::{Dialect, ToolCall, Tools};
use crate::engine::{BackendKind, Format, SamplingParams};
use crate::policy::priority::Priority;

type Options = HashMap<String, OwnedValue>;

/// Sequences an `Estimate` dry run may ask for (as many as `max_parallel` allows).
pub const MAX_PARALLEL: u32 = 64;

fn wrong(key: &str, want: &str, v: &Value<'_>) -> Error {
    Error::InvalidArgs(format!("option {key}: expected D-Bus type {want}, got {}", v.value_signature()))
}

/// A request's options.
pub struct Request {
    pub params: SamplingParams,
    /// The `keep_alive` override (seconds).
    pub keep_alive: Option<i64>,
    /// The class it asks to run in (at most the caller's own).
    pub priority: Option<Priority>,
}

/// Sampling parameters, the `keep_alive` override and the priority class of a request.
pub fn request(options: &HashMap<String, OwnedValue>) -> Result<Request, Error> {
    let mut p = SamplingParams::default();
    let mut keep_alive = None;
    let mut priority = None;
    for (key, value) in options {
        let v: &Value<'_> = value;
        match key.as_str() {
            "priority" => {
                priority = Some(match v {
                    Value::Str(s) => Priority::parse(s).ok_or_else(|| {
                        Error::InvalidArgs(format!("option priority: {s:?} (interactive or background)"))
                    })?,
                    _ => return Err(wrong(key, "s", v)),
                })
            }
            "keep_alive" => {
                keep_alive = Some(match v {
                    Value::I64(x) => *x,
                    Value::I32(x) => *x as i64,
                    Value::U32(x) => *x as i64,
                    _ => return Err(wrong(key, "x", v)),
                })
            }
            "temperature" => p.temperature = f64_of(key, v)? as f32,
            "top_p" => p.top_p = f64_of(key, v)? as f32,
            "repetition_penalty" => p.repetition_penalty = f64_of(key, v)? as f32,
            "top_k" => p.top_k = u32_of(key, v)?,
            "repeat_last_n" => p.repeat_last_n = u32_of(key, v)?,
            "max_tokens" => p.max_tokens = u32_of(key, v)?,
            "prompt_lookup" => p.prompt_lookup = u32_of(key, v)?,
            "seed" => {
                p.seed = Some(match v {
                    Value::U64(x) => *x,
                    Value::U32(x) => *x as u64,
                    Value::I64(x) if *x >= 0 => *x as u64,
                    Value::I32(x) if *x >= 0 => *x as u64,
                    _ => return Err(wrong(key, "t", v)),
                })
            }
            "json" | "json_schema" | "regex" | "lark" => {
                let format = match (key.as_str(), v) {
                    ("json", Value::Bool(true)) => Some(Format::Json),
                    ("json", Value::Bool(false)) => None,
                    ("json", _) => return Err(wrong(key, "b", v)),
                    (_, Value::Str(s)) => Some(match key.as_str() {
                        "json_schema" => Format::JsonSchema(s.to_string()),
                        "regex" => Format::Regex(s.to_string()),
                        _ => Format::Lark(s.to_string()),
                    }),
                    _ => return Err(wrong(key, "s", v)),
                };
                if let Some(f) = format {
                    if let Some(other) = &p.format {
                        return Err(Error::InvalidArgs(format!(
                            "options {} and {}: at most one format",
                            other.option(),
                            f.option()
                        )));
                    }
                    p.format = Some(f);
                }
            }
            "stop" => {
                p.stop = match v {
                    Value::Array(a) => a
                        .iter()
                        .map(|s| match s {
                            Value::Str(s) => Ok(s.to_string()),
                            other => Err(wrong(key, "as", other)),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(wrong(key, "as", v)),
                }
            }
            // a chat's tools: `tools()`
            "tools" | "tool_choice" | "parallel_tool_calls" => {}
            other => {
                let known: Vec<&str> = llamad_api::REQUEST_OPTIONS.iter().map(|(k, _)| *k).collect();
                return Err(Error::InvalidArgs(format!("unknown option {other} (known: {})", known.join(", "))));
            }
        }
    }
    p.validate().map_err(|e| Error::InvalidArgs(e.to_string()))?;
    if let Some(f) = &p.format {
        f.check().map_err(|e| Error::InvalidArgs(e.to_string()))?;
    }
    Ok(Request { params: p, keep_alive, priority })
}

fn backend_of(key: &str, v: &Value<'_>) -> Result<BackendKind, Error> {
    match v {
        Value::Str(s) => {
            s.as_str().parse::<BackendKind>().map_err(|e| Error::InvalidArgs(format!("option {key}: {e}")))
        }
        _ => Err(wrong(key, "s", v)),
    }
}

/// `LoadModel`'s options: the backend.
pub fn load(options: &Options) -> Result<Option<BackendKind>, Error> {
    let mut backend = None;
    for (key, value) in options {
        match key.as_str() {
            "backend" => backend = Some(backend_of(key, value)?),
            other => return Err(Error::InvalidArgs(format!("unknown option {other} (known: backend)"))),
        }
    }
    Ok(backend)
}

/// `Estimate`'s options: the backend, the context (at least 1; the model's when absent)
/// and the number of sequences (1 to [`MAX_PARALLEL`]).
pub fn estimate(options: &Options) -> Result<(Option<BackendKind>, Option<u32>, u32), Error> {
    let (mut backend, mut context, mut parallel) = (None, None, 1);
    for (key, value) in options {
        match key.as_str() {
            "backend" => backend = Some(backend_of(key, value)?),
            "context" => context = Some(u32_of(key, value)?),
            "parallel" => parallel = u32_of(key, value)?,
            other => {
                return Err(Error::InvalidArgs(format!("unknown option {other} (known: backend, context, parallel)")));
            }
        }
    }
    if context == Some(0) {
        return Err(Error::InvalidArgs("option context: must be at least 1".into()));
    }
    if !(1..=MAX_PARALLEL).contains(&parallel) {
        return Err(Error::InvalidArgs(format!("option parallel: {parallel} (1 to {MAX_PARALLEL})")));
    }
    Ok((backend, context, parallel))
}

/// `OpenSession`'s options: the idle TTL in seconds (1 to `max_ttl`, which is also the default).
pub fn session(options: &Options, max_ttl: u64) -> Result<std::time::Duration, Error> {
    let mut ttl = max_ttl;
    for (key, value) in options {
        match key.as_str() {
            "ttl" => ttl = u32_of(key, value)? as u64,
            other => return Err(Error::InvalidArgs(format!("unknown option {other} (known: ttl)"))),
        }
    }
    if ttl == 0 || ttl > max_ttl {
        return Err(Error::InvalidArgs(format!("option ttl: {ttl} seconds (1 to {max_ttl}, sessions.ttl)")));
    }
    Ok(std::time::Duration::from_secs(ttl))
}

/// Messages as `aa{sv}`: `role` (s: system, user, assistant, tool) and `content` (s) each;
/// an assistant's `tool_calls` (aa{sv}: `id`, `name`, `arguments` as a JSON object's text),
/// a tool result's `tool_call_id` (s) and `name` (s).
pub fn messages(wire: &[HashMap<String, OwnedValue>]) -> Result<Vec<Message>, Error> {
    let mut out = Vec::with_capacity(wire.len());
    for (i, m) in wire.iter().enumerate() {
        let bad = |what: String| Error::InvalidArgs(format!("messages[{i}]{what}"));
        let (mut role, mut msg) = (None, Message::new(Role::User, ""));
        let mut content = None;
        for (key, value) in m {
            let text = || match &**value {
                Value::Str(s) => Ok(s.to_string()),
                v => Err(bad(format!(".{key}: expected D-Bus type s, got {}", v.value_signature()))),
            };
            match key.as_str() {
                "role" => role = Some(text()?),
                "content" => content = Some(text()?),
                "tool_call_id" => msg.tool_call_id = Some(text()?),
                "name" => msg.name = Some(text()?),
                "tool_calls" => msg.tool_calls = tool_calls(value).map_err(|e| bad(format!(".tool_calls{e}")))?,
                other => {
                    return Err(bad(format!(
                        ": unknown key {other} (known: role, content, tool_calls, tool_call_id, name)"
                    )));
                }
            }
        }
        msg.role = match role.as_deref() {
            Some("system") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("tool") => Role::Tool,
            Some(other) => return Err(bad(format!(": role {other:?} (system, user, assistant or tool)"))),
            None => return Err(bad(": no role".into())),
        };
        msg.content = match content {
            Some(c) => c,
            // an assistant message may be only calls
            None if !msg.tool_calls.is_empty() => String::new(),
            None => return Err(bad(": no content".into())),
        };
        if msg.role == Role::Tool && msg.tool_call_id.is_none() {
            return Err(bad(": a tool result needs the tool_call_id it answers".into()));
        }
        out.push(msg);
    }
    Ok(out)
}

/// An assistant message's `tool_calls`: `aa{sv}` of `id`, `name` and `arguments` (s, a JSON object).
fn tool_calls(v: &Value<'_>) -> Result<Vec<ToolCall>, String> {
    let Value::Array(a) = v else {
        return Err(format!(": expected D-Bus type aa{{sv}}, got {}", v.value_signature()));
    };
    let mut calls = vec![];
    for (j, item) in a.iter().enumerate() {
        let item = match item {
            Value::Value(inner) => &**inner,
            other => other,
        };
        let Value::Dict(d) = item else {
            return Err(format!("[{j}]: expected a{{sv}}"));
        };
        let get = |k: &str| -> Result<String, String> {
            match d.get::<_, Value<'_>>(&k) {
                Ok(Some(Value::Str(s))) => Ok(s.to_string()),
                _ => Err(format!("[{j}].{k}: missing or not a string")),
            }
        };
        let call = ToolCall { id: get("id").unwrap_or_default(), name: get("name")?, arguments: get("arguments")? };
        if !serde_json::from_str::<serde_json::Value>(&call.arguments).is_ok_and(|a| a.is_object()) {
            return Err(format!("[{j}].arguments: not a JSON object"));
        }
        calls.push(call);
    }
    Ok(calls)
}

/// A chat request's `tools` (s: a JSON array of functions) and `tool_choice` (s), checked,
/// their grammar compiled; None when no tools are offered.
pub fn tools(options: &Options) -> Result<Option<Tools>, Error> {
    let text = |key: &str| -> Result<Option<String>, Error> {
        match options.get(key).map(|v| &**v) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.to_string())),
            Some(v) => Err(wrong(key, "s", v)),
        }
    };
    let (list, choice) = (text("tools")?, text("tool_choice")?);
    let Some(list) = list else {
        return match choice {
            Some(_) => Err(Error::InvalidArgs("option tool_choice: no tools offered".into())),
            None if options.contains_key("parallel_tool_calls") => {
                Err(Error::InvalidArgs("option parallel_tool_calls: no tools offered".into()))
            }
            None => Ok(None),
        };
    };
    let mut tools = Tools::parse(&list, choice.as_deref()).map_err(|e| Error::InvalidArgs(e.to_string()))?;
    tools.parallel = match options.get("parallel_tool_calls").map(|v| &**v) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(wrong("parallel_tool_calls", "b", v)),
    };
    // the parameter schemas compile (the dialect changes only a key and the text's rule)
    crate::engine::tools::format_for(&tools, Dialect::Hermes { native: false })
        .check()
        .map_err(|e| Error::InvalidArgs(format!("tools: {e}")))?;
    Ok(Some(tools))
}

fn f64_of(key: &str, v: &Value<'_>) -> Result<f64, Error> {
    match v {
        Value::F64(x) => Ok(*x),
        Value::I32(x) => Ok(*x as f64),
        Value::U32(x) => Ok(*x as f64),
        Value::I64(x) => Ok(*x as f64),
        _ => Err(wrong(key, "d", v)),
    }
}

fn u32_of(key: &str, v: &Value<'_>) -> Result<u32, Error> {
    match v {
        Value::U32(x) => Ok(*x),
        Value::I32(x) if *x >= 0 => Ok(*x as u32),
        Value::U64(x) if *x <= u32::MAX as u64 => Ok(*x as u32),
        Value::I64(x) if (0..=u32::MAX as i64).contains(x) => Ok(*x as u32),
        Value::U16(x) => Ok(*x as u32),
        Value::I32(_) | Value::I64(_) => Err(Error::InvalidArgs(format!("option {key}: must not be negative"))),
        _ => Err(wrong(key, "u", v)),
    }
}
