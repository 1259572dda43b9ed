//! The inspection commands: `status`, `models`, `ps` (loaded models and who
//! runs each request: uid, unit, app id; never what) and `estimate`.

use std::collections::HashMap;

use llamad_api::{ManagerProxy, ModelInfo};
use zbus::zvariant::{OwnedValue, Value};

use crate::Failure;
use crate::chat::get;

pub(crate) async fn status(proxy: &ManagerProxy<'_>, json: bool) -> Result<(), Failure> {
    let version = proxy.version().await?;
    let backends = proxy.backends().await?;
    let providers = proxy.providers().await?;
    let loaded = proxy.loaded_models().await?;
    let running = proxy.requests_running().await?;
    let queued = proxy.requests_queued().await?;
    let mem = proxy.memory().await?;
    let usage = proxy.list_usage().await?;
    // an older daemon has no PowerState
    let power = proxy.power_state().await.unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::json!({"version": version, "backends": backends, "providers": providers, "loaded_models": loaded,
                "requests_running": running, "requests_queued": queued,
                "memory": {"budget": mem.budget, "config": mem.config, "cgroup": mem.cgroup,
                    "cgroup_source": mem.cgroup_source, "physical": mem.physical, "reserve": mem.reserve,
                    "used": mem.used, "kv_reserved": mem.kv_reserved, "rss": mem.rss,
                    "sessions_kv": mem.sessions_kv, "prompt_cache": mem.prompt_cache},
                "power": request_json(&power),
                "usage": usage.iter().map(request_json).collect::<Vec<_>>()})
        );
    } else {
        println!("llamad {version}");
        println!("backends:       {}", backends.join(", "));
        println!("providers:      {}", if providers.is_empty() { "-".into() } else { providers.join(", ") });
        println!("loaded models:  {}", if loaded.is_empty() { "-".into() } else { loaded.join(", ") });
        println!("requests:       {running} running, {queued} queued");
        let m = |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        println!(
            "memory budget:  {} = min(config {}, cgroup {}{}, physical {}) - reserve {}",
            m(Some(mem.budget)),
            m(mem.config),
            m(mem.cgroup),
            mem.cgroup_source.as_deref().map(|s| format!(" from {s}")).unwrap_or_default(),
            m(mem.physical),
            m(mem.reserve)
        );
        println!(
            "memory in use:  {} (KV reserved {}, sessions' KV {}, prompt cache {}), daemon RSS {}",
            m(mem.used),
            m(mem.kv_reserved),
            m(mem.sessions_kv),
            m(mem.prompt_cache),
            m(mem.rss)
        );
        if !power.is_empty() {
            println!("power:          {}", power_line(&power));
        }
        if !usage.is_empty() {
            println!("usage (UTC day):");
            println!(
                "  {:<40} {:>7} {:>12} {:>12} {:>9}",
                "ACCOUNT", "RUNNING", "TOKENS/MIN", "TOKENS/DAY", "REQUESTS"
            );
            let n =
                |r: &HashMap<String, OwnedValue>, k: &str| get::<u64>(r, k).or_else(|| get::<u32>(r, k).map(u64::from));
            for r in &usage {
                println!(
                    "  {:<40} {:>7} {:>12} {:>12} {:>9}",
                    text(r, "account"),
                    n(r, "running").unwrap_or(0),
                    n(r, "tokens_last_minute").unwrap_or(0),
                    n(r, "tokens_today").unwrap_or(0),
                    n(r, "requests_today").unwrap_or(0)
                );
            }
        }
    }
    Ok(())
}

/// `models`, or with `ps` the loaded ones and the requests each runs.
pub(crate) async fn models(proxy: &ManagerProxy<'_>, ps: bool, json: bool) -> Result<(), Failure> {
    let mut models = proxy.list_models().await?;
    if ps {
        models.retain(|m| m.loaded == Some(true));
    }
    let requests = if ps { proxy.list_requests().await? } else { vec![] };
    if json {
        let of = |m: &ModelInfo| {
            let mut v = model_json(m);
            if ps {
                let mine: Vec<_> = requests.iter().filter(|r| text(r, "model") == m.name).map(request_json).collect();
                v["requests"] = serde_json::Value::Array(mine);
            }
            v
        };
        println!("{}", serde_json::Value::Array(models.iter().map(of).collect()));
    } else if ps {
        println!(
            "{:<24} {:<12} {:<20} {:>6} {:>6} {:>10} {:>10} {:>9} {:>9} {:>8}",
            "NAME", "BACKEND", "PROVIDER", "IDLE", "ACTIVE", "ESTIMATED", "MEASURED", "ANON", "FILE", "KV"
        );
        let mb = |b: Option<u64>| format!("{:.1}M", b.unwrap_or(0) as f64 / 1048576.0);
        for m in &models {
            println!(
                "{:<24} {:<12} {:<20} {:>5}s {:>6} {:>10} {:>10} {:>9} {:>9} {:>8}",
                m.name,
                m.backend.as_deref().unwrap_or("-"),
                m.provider.as_deref().unwrap_or("-"),
                m.idle_seconds.unwrap_or(0),
                m.running.unwrap_or(0),
                mb(m.estimated_bytes),
                mb(m.measured_bytes),
                mb(m.measured_anon_bytes),
                mb(m.measured_file_bytes),
                mb(m.kv_reserved_bytes)
            );
        }
    } else {
        println!(
            "{:<32} {:<18} {:<30} {:>9} {:>8} {:>9} LOADED",
            "NAME", "LAYOUT", "QUANTIZATION", "PARAMS", "CONTEXT", "SIZE"
        );
        for m in &models {
            if let Some(e) = &m.error {
                println!("{:<32} unusable: {e}", m.name);
                continue;
            }
            println!(
                "{:<32} {:<18} {:<30} {:>8.1}M {:>8} {:>8.1}M {}",
                m.name,
                m.layout.as_deref().unwrap_or("-"),
                m.quantization.as_deref().unwrap_or("-"),
                m.parameters.unwrap_or(0) as f64 / 1e6,
                m.context_length.unwrap_or(0),
                m.file_size.unwrap_or(0) as f64 / 1048576.0,
                if m.loaded == Some(true) { m.backend.as_deref().unwrap_or("yes") } else { "no" }
            );
        }
    }
    if ps && !json && !requests.is_empty() {
        println!();
        println!(
            "{:>8} {:<24} {:<8} {:<11} {:>6} {:>8} {:<40} APP",
            "REQUEST", "MODEL", "STATE", "PRIORITY", "UID", "PID", "UNIT"
        );
        for r in &requests {
            let num = |k: &str| get::<u32>(r, k).map_or("-".to_string(), |n| n.to_string());
            println!(
                "{:>8} {:<24} {:<8} {:<11} {:>6} {:>8} {:<40} {}",
                get::<u64>(r, "id").unwrap_or(0),
                text(r, "model"),
                text(r, "state"),
                or_dash(text(r, "priority")),
                num("uid"),
                num("pid"),
                or_dash(text(r, "unit")),
                or_dash(text(r, "app_id")),
            );
        }
    }
    Ok(())
}

fn text<'a>(r: &'a HashMap<String, OwnedValue>, key: &str) -> &'a str {
    r.get(key).and_then(|v| <&str>::try_from(v).ok()).unwrap_or("")
}

/// `on-battery (on battery at 42 %): background deferred, 1 request at once, cores 0`.
pub(crate) fn power_line(p: &HashMap<String, OwnedValue>) -> String {
    let mut line = or_dash(text(p, "state")).to_string();
    let reasons: Vec<String> = get(p, "reasons").unwrap_or_default();
    if !reasons.is_empty() {
        line += &format!(" ({})", reasons.join(", "));
    }
    let mut limits = vec![];
    match text(p, "background") {
        "defer" => limits.push("background deferred".to_string()),
        "refuse" => limits.push("background refused".to_string()),
        _ => {}
    }
    if let Some(n) = get::<u32>(p, "max_parallel").filter(|&n| n > 0) {
        limits.push(format!("{n} request{} at once per model", if n == 1 { "" } else { "s" }));
    }
    if get::<u32>(p, "threads").is_some_and(|n| n > 0) {
        let cores: Vec<u32> = get(p, "cores").unwrap_or_default();
        let list: Vec<String> = cores.iter().map(u32::to_string).collect();
        limits.push(format!("compute on core{} {}", if cores.len() == 1 { "" } else { "s" }, list.join(",")));
    }
    if !limits.is_empty() {
        line += &format!(": {}", limits.join(", "));
    }
    if let Some(t) = get::<f64>(p, "temperature_c") {
        line += &format!("; {} at {t:.1} °C", or_dash(text(p, "zone_type")));
    }
    line
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// A dictionary's values as JSON (strings, numbers, booleans and arrays of them).
fn request_json(r: &HashMap<String, OwnedValue>) -> serde_json::Value {
    fn json(val: &Value<'_>) -> Option<serde_json::Value> {
        Some(match val {
            Value::Str(s) => serde_json::Value::from(s.as_str()),
            Value::U32(n) => serde_json::Value::from(*n),
            Value::U64(n) => serde_json::Value::from(*n),
            Value::I64(n) => serde_json::Value::from(*n),
            Value::F64(n) => serde_json::Value::from(*n),
            Value::Bool(b) => serde_json::Value::from(*b),
            Value::Array(a) => serde_json::Value::Array(a.iter().filter_map(json).collect()),
            _ => return None,
        })
    }
    let v = r.iter().filter_map(|(k, val)| Some((k.clone(), json(val)?))).collect();
    serde_json::Value::Object(v)
}

/// `verify`: the daemon hashes the model's files against its manifest.
pub(crate) async fn verify(proxy: &ManagerProxy<'_>, model: &str, json: bool) -> Result<(), Failure> {
    let r = proxy.verify_model(model).await?;
    let manifest = r.get("manifest").and_then(|v| bool::try_from(v).ok()).unwrap_or(false);
    let files = r.get("files").and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    let bytes = r.get("bytes").and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
    if json {
        println!("{}", serde_json::json!({"model": model, "manifest": manifest, "files": files, "bytes": bytes}));
    } else if manifest {
        println!("{model}: {files} files, {:.1} MiB, all as the manifest lists them", bytes as f64 / 1048576.0);
    }
    if !manifest {
        let message = format!("{model}: no manifest (llamad manifest DIR writes one); nothing was checked");
        return Err(Failure { code: 1, message });
    }
    Ok(())
}

pub(crate) async fn estimate(
    proxy: &ManagerProxy<'_>,
    model: &str,
    ctx: Option<u32>,
    parallel: u32,
    backend: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let mut o: HashMap<&str, Value<'_>> = HashMap::from([("parallel", Value::from(parallel))]);
    if let Some(c) = ctx {
        o.insert("context", Value::from(c));
    }
    if let Some(b) = backend {
        o.insert("backend", b.into());
    }
    let e = proxy.estimate(model, o).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({"backend": e.backend, "weights": e.weights, "scratch": e.scratch,
                "kv_per_sequence": e.kv_per_sequence, "context": e.context, "parallel": e.parallel,
                "total": e.total, "budget": e.budget, "in_use": e.in_use, "fits_now": e.fits_now,
                "fits_after_eviction": e.fits_after_eviction, "load_peak": e.load_peak,
                "runtime_code": e.runtime_code, "kv_cache_type": e.kv_cache_type,
                "kv_bytes_per_token": e.kv_bytes_per_token, "max_context_now": e.max_context_now,
                "max_context_after_eviction": e.max_context_after_eviction})
        );
    } else {
        let m = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
        println!("{model} on {}:", e.backend);
        println!("  weights              {}", m(e.weights));
        match e.runtime_code.filter(|&c| c > 0) {
            Some(c) => {
                println!("  scratch              {} (with {} of runtime code, first load)", m(e.scratch), m(c))
            }
            None => println!("  scratch              {}", m(e.scratch)),
        }
        println!(
            "  KV cache             {} × {} sequence(s) of {} tokens{}",
            m(e.kv_per_sequence),
            e.parallel,
            e.context,
            match (&e.kv_cache_type, e.kv_bytes_per_token) {
                (Some(t), Some(b)) => format!(" ({t}, {:.1} KiB a token)", b as f64 / 1024.0),
                _ => String::new(),
            }
        );
        println!("  total                {}", m(e.total));
        if let Some(p) = e.load_peak {
            println!("  while loading        {} at the peak", m(p));
        }
        println!("  budget               {} ({} in use)", m(e.budget), m(e.in_use));
        println!(
            "  fits now: {}; after unloading idle models: {}",
            if e.fits_now { "yes" } else { "no" },
            if e.fits_after_eviction { "yes" } else { "no" }
        );
        let tokens = |c: Option<u32>| match c {
            Some(0) => "none (the model itself does not fit)".to_string(),
            Some(c) => format!("{c} tokens"),
            None => "-".to_string(),
        };
        println!(
            "  longest context that fits now: {}; after unloading idle models: {}",
            tokens(e.max_context_now),
            tokens(e.max_context_after_eviction)
        );
    }
    Ok(())
}

fn model_json(m: &ModelInfo) -> serde_json::Value {
    serde_json::json!({
        "name": m.name, "layout": m.layout, "quantization": m.quantization, "parameters": m.parameters,
        "context_length": m.context_length, "vocab_size": m.vocab_size, "file_size": m.file_size,
        "loaded": m.loaded, "backend": m.backend, "provider": m.provider, "idle_seconds": m.idle_seconds,
        "running": m.running, "error": m.error, "estimated_bytes": m.estimated_bytes,
        "measured_bytes": m.measured_bytes, "measured_anon_bytes": m.measured_anon_bytes,
        "measured_file_bytes": m.measured_file_bytes, "estimated_peak_bytes": m.estimated_peak_bytes,
        "measured_peak_bytes": m.measured_peak_bytes, "kv_bytes_per_token": m.kv_bytes_per_token,
        "kv_cache_type": m.kv_cache_type, "kv_reserved_bytes": m.kv_reserved_bytes,
    })
}
