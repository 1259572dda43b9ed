//! `llamactl top`: the daemon's metrics (its `Metrics` property, Prometheus' text format,
//! parsed with `prometheus-parse`) and its power state, redrawn every interval on a
//! terminal; printed once with `--once`, when the output is not a terminal, or as JSON.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use llamad_api::ManagerProxy;
use prometheus_parse::{Sample, Scrape, Value};

use crate::Failure;

/// What `top` shows, from one reading of the metrics.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Summary {
    /// Requests ended, by result.
    pub results: BTreeMap<String, f64>,
    /// Per app: requests, prompt tokens, generated tokens.
    pub apps: BTreeMap<String, [f64; 3]>,
    pub generated_tokens: f64,
    pub prompt_tokens: f64,
    /// Medians from the histograms (per priority): time to first token (s), decode
    /// tokens/s, queue wait (s).
    pub ttft_p50: BTreeMap<String, f64>,
    pub decode_p50: BTreeMap<String, f64>,
    pub queue_wait_p50: BTreeMap<String, f64>,
    pub loads: f64,
    pub unloads: f64,
    pub preemptions: f64,
    pub memory_used: f64,
    pub memory_budget: f64,
    pub models_loaded: f64,
    pub running: f64,
    pub queued: f64,
}

fn scalar(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        _ => 0.0,
    }
}

/// The `q` quantile of a cumulative histogram, interpolated inside its bucket (as
/// Prometheus' `histogram_quantile` does); None when it has no observations.
pub(crate) fn quantile(buckets: &[prometheus_parse::HistogramCount], q: f64) -> Option<f64> {
    let mut b: Vec<_> = buckets.iter().map(|h| (h.less_than, h.count)).collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in b {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            return Some(if inside > 0.0 { lower + (le - lower) * (rank - below) / inside } else { le });
        }
        (lower, below) = (le, count);
    }
    None
}

/// Reads the samples of one scrape into a [`Summary`].
pub(crate) fn summarize(text: &str) -> Result<Summary, Failure> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| Failure { code: 1, message: format!("the daemon's metrics do not parse: {e}") })?;
    let mut s = Summary::default();
    let label = |x: &Sample, k: &str| x.labels.get(k).unwrap_or("").to_string();
    for x in &scrape.samples {
        let v = scalar(&x.value);
        match x.metric.as_str() {
            "llamad_requests_total" => {
                *s.results.entry(label(x, "result")).or_default() += v;
                s.apps.entry(label(x, "app")).or_default()[0] += v;
            }
            "llamad_prompt_tokens_total" => {
                s.prompt_tokens += v;
                s.apps.entry(label(x, "app")).or_default()[1] += v;
            }
            "llamad_generated_tokens_total" => {
                s.generated_tokens += v;
                s.apps.entry(label(x, "app")).or_default()[2] += v;
            }
            "llamad_model_loads_total" => s.loads += v,
            "llamad_model_unloads_total" => s.unloads += v,
            "llamad_preemptions_total" => s.preemptions = v,
            "llamad_memory_used_bytes" => s.memory_used = v,
            "llamad_memory_budget_bytes" => s.memory_budget = v,
            "llamad_models_loaded" => s.models_loaded = v,
            "llamad_requests_running" => s.running = v,
            "llamad_requests_queued" => s.queued = v,
            name => {
                let Value::Histogram(h) = &x.value else { continue };
                let into = match name.trim_end_matches("_bucket") {
                    "llamad_time_to_first_token_seconds" => &mut s.ttft_p50,
                    "llamad_decode_tokens_per_second" => &mut s.decode_p50,
                    "llamad_queue_wait_seconds" => &mut s.queue_wait_p50,
                    _ => continue,
                };
                if let Some(q) = quantile(h, 0.5) {
                    into.insert(label(x, "priority"), q);
                }
            }
        }
    }
    Ok(s)
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / 1048576.0)
}

fn per_priority(m: &BTreeMap<String, f64>, unit: &str, scale: f64) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter().map(|(k, v)| format!("{k} {:.1}{unit}", v * scale)).collect::<Vec<_>>().join(", ")
}

/// The screen, with the generation rate since the previous reading when there is one.
fn render(s: &Summary, power: &str, rate: Option<f64>) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!(
        "requests: {:.0} running, {:.0} queued; models loaded {:.0} (loads {:.0}, unloads {:.0}); preemptions {:.0}",
        s.running, s.queued, s.models_loaded, s.loads, s.unloads, s.preemptions
    ));
    line(format!("memory:   {} of {}", mib(s.memory_used), mib(s.memory_budget)));
    line(format!("power:    {power}"));
    let rate = rate.map(|r| format!(", {r:.1} tokens/s now")).unwrap_or_default();
    line(format!("tokens:   {:.0} prompt, {:.0} generated{rate}", s.prompt_tokens, s.generated_tokens));
    line(format!("time to first token (median): {}", per_priority(&s.ttft_p50, " ms", 1000.0)));
    line(format!("decode speed (median):        {}", per_priority(&s.decode_p50, " tok/s", 1.0)));
    line(format!("queue wait (median):          {}", per_priority(&s.queue_wait_p50, " ms", 1000.0)));
    let results: Vec<String> = s.results.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
    line(format!("ended:    {}", if results.is_empty() { "-".into() } else { results.join(", ") }));
    if !s.apps.is_empty() {
        line(format!("  {:<40} {:>9} {:>12} {:>12}", "APP", "REQUESTS", "PROMPT", "GENERATED"));
        for (app, [n, p, g]) in &s.apps {
            line(format!("  {app:<40} {n:>9.0} {p:>12.0} {g:>12.0}"));
        }
    }
    out
}

pub(crate) async fn top(proxy: &ManagerProxy<'_>, every: f64, once: bool, json: bool) -> Result<(), Failure> {
    let live = !once && !json && std::io::stdout().is_terminal();
    let mut last: Option<(Instant, f64)> = None;
    loop {
        let text = proxy.metrics().await?;
        let s = summarize(&text)?;
        let power = proxy.power_state().await.map(|p| crate::inspect::power_line(&p)).unwrap_or_else(|_| "-".into());
        if json {
            let mut v = serde_json::to_value(&s).map_err(|e| Failure { code: 1, message: e.to_string() })?;
            v["power"] = power.into();
            println!("{v}");
            return Ok(());
        }
        let now = Instant::now();
        let rate = last.map(|(t, g)| (s.generated_tokens - g) / now.duration_since(t).as_secs_f64().max(1e-3));
        last = Some((now, s.generated_tokens));
        let screen = render(&s, &power, rate);
        if !live {
            print!("{screen}");
            return Ok(());
        }
        // home, clear, draw
        print!("\x1b[H\x1b[2Jllamactl top (every {every} s; Ctrl-C quits)\n\n{screen}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs_f64(every)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::HistogramCount;

    #[test]
    fn the_median_is_interpolated_in_its_bucket() {
        let h = |pairs: &[(f64, f64)]| {
            pairs.iter().map(|&(less_than, count)| HistogramCount { less_than, count }).collect::<Vec<_>>()
        };
        // 10 observations: 4 at most 0.1, 10 at most 0.5
        let b = h(&[(0.1, 4.0), (0.5, 10.0), (f64::INFINITY, 10.0)]);
        let m = quantile(&b, 0.5).unwrap();
        assert!((m - (0.1 + 0.4 * 1.0 / 6.0)).abs() < 1e-9, "{m}");
        assert_eq!(quantile(&h(&[(0.1, 0.0), (f64::INFINITY, 0.0)]), 0.5), None);
        // all past the last finite bound: the bound
        assert_eq!(quantile(&h(&[(0.1, 0.0), (f64::INFINITY, 3.0)]), 0.5), Some(0.1));
    }
}
