//! Request options from the wire (`a{sv}`) to [`SamplingParams`], strictly:
//! an unknown key or a value of the wrong D-Bus type is `InvalidArgs` naming
//! the key, and the values are then checked by `SamplingParams::validate`.

use std::collections::HashMap;

use llamad_api::Error;
use zbus::zvariant::{OwnedValue, Value};

use crate::engine::SamplingParams;

fn wrong(key: &str, want: &str, v: &Value<'_>) -> Error {
    Error::InvalidArgs(format!("option {key}: expected D-Bus type {want}, got {}", v.value_signature()))
}

/// Sampling parameters and the `keep_alive` override (seconds) of a request.
pub fn request(options: &HashMap<String, OwnedValue>) -> Result<(SamplingParams, Option<i64>), Error> {
    let mut p = SamplingParams::default();
    let mut keep_alive = None;
    for (key, value) in options {
        let v: &Value<'_> = value;
        match key.as_str() {
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
            "seed" => {
                p.seed = Some(match v {
                    Value::U64(x) => *x,
                    Value::U32(x) => *x as u64,
                    Value::I64(x) if *x >= 0 => *x as u64,
                    Value::I32(x) if *x >= 0 => *x as u64,
                    _ => return Err(wrong(key, "t", v)),
                })
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
            other => {
                let known: Vec<&str> = llamad_api::REQUEST_OPTIONS.iter().map(|(k, _)| *k).collect();
                return Err(Error::InvalidArgs(format!("unknown option {other} (known: {})", known.join(", "))));
            }
        }
    }
    p.validate().map_err(|e| Error::InvalidArgs(e.to_string()))?;
    Ok((p, keep_alive))
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
