//! Method options from the wire (`a{sv}`), strictly: an unknown key or a value
//! of the wrong D-Bus type is `InvalidArgs` naming the key (request options'
//! and messages' types are checked by `llamad_formats::wire`, fuzzed on its
//! own; their values here). Request options
//! become [`SamplingParams`] (then checked by `SamplingParams::validate`, and
//! a format compiled by `Format::check`, so a bad grammar fails the call);
//! `LoadModel` and `Estimate` take a backend, a context and a parallelism;
//! `OpenSession` a TTL; messages come as `aa{sv}`, with tool calls and
//! results, and a chat's `tools` and `tool_choice`.

use std::collections::HashMap;

use llamad_api::Error;
use zbus::zvariant::{OwnedValue, Value};

use llamad_formats::wire::{self, FormatOption, WireError};

use crate::engine::chat::Message;
use crate::engine::tools::{Dialect, Tools};
use crate::engine::{BackendKind, Format, SamplingParams};
use crate::policy::priority::Priority;

type Options = HashMap<String, OwnedValue>;

/// Sequences an `Estimate` dry run may ask for (as many as `max_parallel` allows).
pub const MAX_PARALLEL: u32 = 64;

fn invalid(e: WireError) -> Error {
    match e {
        WireError::Unknown(key) => {
            let known: Vec<&str> = llamad_api::REQUEST_OPTIONS.iter().map(|(k, _)| *k).collect();
            Error::InvalidArgs(format!("unknown option {key} (known: {})", known.join(", ")))
        }
        WireError::Invalid(m) => Error::InvalidArgs(m),
    }
}

fn wrong(key: &str, want: &str, v: &Value<'_>) -> Error {
    invalid(wire::wrong(key, want, v))
}

fn u32_of(key: &str, v: &Value<'_>) -> Result<u32, Error> {
    wire::u32_of(key, v).map_err(invalid)
}

/// A request's options.
pub struct Request {
    pub params: SamplingParams,
    /// The `keep_alive` override (seconds).
    pub keep_alive: Option<i64>,
    /// The class it asks to run in (at most the caller's own).
    pub priority: Option<Priority>,
}

/// Sampling parameters, the `keep_alive` override and the priority class of a request: the
/// wire's types checked (`llamad_formats::wire`), then their values.
pub fn request(options: &HashMap<String, OwnedValue>) -> Result<Request, Error> {
    let r = wire::request(options).map_err(invalid)?;
    let mut p = SamplingParams::default();
    let set = |field: &mut f32, v: Option<f64>| v.into_iter().for_each(|v| *field = v as f32);
    set(&mut p.temperature, r.temperature);
    set(&mut p.top_p, r.top_p);
    set(&mut p.repetition_penalty, r.repetition_penalty);
    for (field, v) in
        [(&mut p.top_k, r.top_k), (&mut p.repeat_last_n, r.repeat_last_n), (&mut p.max_tokens, r.max_tokens)]
    {
        if let Some(v) = v {
            *field = v;
        }
    }
    p.prompt_lookup = r.prompt_lookup;
    p.seed = r.seed;
    p.stop = r.stop.unwrap_or_default();
    p.format = r.format.map(|f| match f {
        FormatOption::Json => Format::Json,
        FormatOption::JsonSchema(s) => Format::JsonSchema(s),
        FormatOption::Regex(s) => Format::Regex(s),
        FormatOption::Lark(s) => Format::Lark(s),
    });
    let priority = match r.priority {
        None => None,
        Some(s) => Some(
            Priority::parse(&s)
                .ok_or_else(|| Error::InvalidArgs(format!("option priority: {s:?} (interactive or background)")))?,
        ),
    };
    p.validate().map_err(|e| Error::InvalidArgs(e.to_string()))?;
    if let Some(f) = &p.format {
        f.check().map_err(|e| Error::InvalidArgs(e.to_string()))?;
    }
    Ok(Request { params: p, keep_alive: r.keep_alive, priority })
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

/// Messages as `aa{sv}` (`llamad_formats::wire::messages`).
pub fn messages(wire: &[HashMap<String, OwnedValue>]) -> Result<Vec<Message>, Error> {
    wire::messages(wire).map_err(Error::InvalidArgs)
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
