//! Request options and chat messages as any bus client may send them (`a{sv}`,
//! `aa{sv}`), checked strictly into plain values: an unknown key, a value of
//! the wrong D-Bus type or out of its range is an error naming the key. What
//! the values mean (sampling ranges, grammars, tools) the daemon checks next
//! (`service/options.rs`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use zvariant::{OwnedValue, Value};

pub type Options = HashMap<String, OwnedValue>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// A key the method does not take (the daemon lists the known ones).
    #[error("unknown option {0}")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
}

/// `option KEY: expected D-Bus type WANT, got SIG`.
pub fn wrong(key: &str, want: &str, v: &Value<'_>) -> WireError {
    WireError::Invalid(format!("option {key}: expected D-Bus type {want}, got {}", v.value_signature()))
}

pub fn f64_of(key: &str, v: &Value<'_>) -> Result<f64, WireError> {
    match v {
        Value::F64(x) => Ok(*x),
        Value::I32(x) => Ok(*x as f64),
        Value::U32(x) => Ok(*x as f64),
        Value::I64(x) => Ok(*x as f64),
        _ => Err(wrong(key, "d", v)),
    }
}

pub fn u32_of(key: &str, v: &Value<'_>) -> Result<u32, WireError> {
    match v {
        Value::U32(x) => Ok(*x),
        Value::I32(x) if *x >= 0 => Ok(*x as u32),
        Value::U64(x) if *x <= u32::MAX as u64 => Ok(*x as u32),
        Value::I64(x) if (0..=u32::MAX as i64).contains(x) => Ok(*x as u32),
        Value::U16(x) => Ok(*x as u32),
        Value::I32(_) | Value::I64(_) => Err(WireError::Invalid(format!("option {key}: must not be negative"))),
        _ => Err(wrong(key, "u", v)),
    }
}

fn str_of(key: &str, v: &Value<'_>) -> Result<String, WireError> {
    match v {
        Value::Str(s) => Ok(s.to_string()),
        _ => Err(wrong(key, "s", v)),
    }
}

/// A structured-output option: at most one per request.
#[derive(Clone, Debug, PartialEq)]
pub enum FormatOption {
    Json,
    JsonSchema(String),
    Regex(String),
    Lark(String),
}

impl FormatOption {
    pub fn key(&self) -> &'static str {
        match self {
            FormatOption::Json => "json",
            FormatOption::JsonSchema(_) => "json_schema",
            FormatOption::Regex(_) => "regex",
            FormatOption::Lark(_) => "lark",
        }
    }
}

/// A request's options, each as given (None: not given).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestOptions {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub top_k: Option<u32>,
    pub repeat_last_n: Option<u32>,
    pub max_tokens: Option<u32>,
    pub prompt_lookup: Option<u32>,
    pub seed: Option<u64>,
    pub keep_alive: Option<i64>,
    pub priority: Option<String>,
    pub format: Option<FormatOption>,
    pub stop: Option<Vec<String>>,
}

/// `Generate`, `Chat`, `ChatMessages` and `Session.Chat` options.
pub fn request(options: &Options) -> Result<RequestOptions, WireError> {
    let mut r = RequestOptions::default();
    for (key, value) in options {
        let v: &Value<'_> = value;
        match key.as_str() {
            "priority" => r.priority = Some(str_of(key, v)?),
            "keep_alive" => {
                r.keep_alive = Some(match v {
                    Value::I64(x) => *x,
                    Value::I32(x) => *x as i64,
                    Value::U32(x) => *x as i64,
                    _ => return Err(wrong(key, "x", v)),
                })
            }
            "temperature" => r.temperature = Some(f64_of(key, v)?),
            "top_p" => r.top_p = Some(f64_of(key, v)?),
            "repetition_penalty" => r.repetition_penalty = Some(f64_of(key, v)?),
            "top_k" => r.top_k = Some(u32_of(key, v)?),
            "repeat_last_n" => r.repeat_last_n = Some(u32_of(key, v)?),
            "max_tokens" => r.max_tokens = Some(u32_of(key, v)?),
            "prompt_lookup" => r.prompt_lookup = Some(u32_of(key, v)?),
            "seed" => {
                r.seed = Some(match v {
                    Value::U64(x) => *x,
                    Value::U32(x) => *x as u64,
                    Value::I64(x) if *x >= 0 => *x as u64,
                    Value::I32(x) if *x >= 0 => *x as u64,
                    _ => return Err(wrong(key, "t", v)),
                })
            }
            "json" | "json_schema" | "regex" | "lark" => {
                let format = match (key.as_str(), v) {
                    ("json", Value::Bool(true)) => Some(FormatOption::Json),
                    ("json", Value::Bool(false)) => None,
                    ("json", _) => return Err(wrong(key, "b", v)),
                    (_, Value::Str(s)) => Some(match key.as_str() {
                        "json_schema" => FormatOption::JsonSchema(s.to_string()),
                        "regex" => FormatOption::Regex(s.to_string()),
                        _ => FormatOption::Lark(s.to_string()),
                    }),
                    _ => return Err(wrong(key, "s", v)),
                };
                if let Some(f) = format {
                    if let Some(other) = &r.format {
                        return Err(WireError::Invalid(format!(
                            "options {} and {}: at most one format",
                            other.key(),
                            f.key()
                        )));
                    }
                    r.format = Some(f);
                }
            }
            "stop" => {
                r.stop = Some(match v {
                    Value::Array(a) => {
                        a.iter().map(|s| str_of(key, s).map_err(|_| wrong(key, "as", s))).collect::<Result<_, _>>()?
                    }
                    _ => return Err(wrong(key, "as", v)),
                })
            }
            // a chat's tools: the daemon reads them with the prompt
            "tools" | "tool_choice" | "parallel_tool_calls" => {}
            other => return Err(WireError::Unknown(other.to_string())),
        }
    }
    Ok(r)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, answering an assistant's call (`tool_call_id`).
    Tool,
}

/// A call an assistant message made (or the model made): `arguments` is a JSON
/// object's text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// One message of a chat (`aa{sv}` on the bus).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// An assistant's calls.
    pub tool_calls: Vec<ToolCall>,
    /// A tool message: the call it answers, and the tool's name.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into(), tool_calls: vec![], tool_call_id: None, name: None }
    }
}

/// Messages as `aa{sv}`: `role` (s: system, user, assistant, tool) and `content` (s) each;
/// an assistant's `tool_calls` (aa{sv}: `id`, `name`, `arguments` as a JSON object's text),
/// a tool result's `tool_call_id` (s) and `name` (s).
pub fn messages(wire: &[HashMap<String, OwnedValue>]) -> Result<Vec<Message>, String> {
    let mut out = Vec::with_capacity(wire.len());
    for (i, m) in wire.iter().enumerate() {
        let bad = |what: String| format!("messages[{i}]{what}");
        let (mut role, mut content, mut tool_calls) = (None, None, vec![]);
        let (mut tool_call_id, mut name) = (None, None);
        for (key, value) in m {
            let text = || match &**value {
                Value::Str(s) => Ok(s.to_string()),
                v => Err(bad(format!(".{key}: expected D-Bus type s, got {}", v.value_signature()))),
            };
            match key.as_str() {
                "role" => role = Some(text()?),
                "content" => content = Some(text()?),
                "tool_call_id" => tool_call_id = Some(text()?),
                "name" => name = Some(text()?),
                "tool_calls" => tool_calls = calls(value).map_err(|e| bad(format!(".tool_calls{e}")))?,
                other => {
                    return Err(bad(format!(
                        ": unknown key {other} (known: role, content, tool_calls, tool_call_id, name)"
                    )));
                }
            }
        }
        let role = match role.as_deref() {
            Some("system") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("tool") => Role::Tool,
            Some(other) => return Err(bad(format!(": role {other:?} (system, user, assistant or tool)"))),
            None => return Err(bad(": no role".into())),
        };
        let content = match content {
            Some(c) => c,
            // an assistant message may be only calls
            None if !tool_calls.is_empty() => String::new(),
            None => return Err(bad(": no content".into())),
        };
        if role == Role::Tool && tool_call_id.is_none() {
            return Err(bad(": a tool result needs the tool_call_id it answers".into()));
        }
        out.push(Message { role, content, tool_calls, tool_call_id, name });
    }
    Ok(out)
}

/// An assistant message's `tool_calls`: `aa{sv}` of `id`, `name` and `arguments` (s, a JSON object).
fn calls(v: &Value<'_>) -> Result<Vec<ToolCall>, String> {
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
