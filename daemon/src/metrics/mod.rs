//! What the daemon did over time, as Prometheus metrics: requests by result, priority and
//! app, tokens, time to first token, decode speed, queue wait, loads and unloads,
//! preemptions, and (sampled when rendered) memory, models, requests in flight and the power
//! state. Rendered in Prometheus' text format for the `Metrics` D-Bus property and for the
//! textfile that node_exporter's textfile collector reads ([`textfile`]).
//!
//! Recording is a few atomic additions (the `prometheus` crate's counters and histograms),
//! made where a request ends (`Scheduler::conclude`), where one is refused before it is
//! queued (the D-Bus methods), where a model loads or unloads and where a row is preempted.
//! Label values come from bounded sets: results are finish reasons or the API's error names,
//! models are the models directory's, and apps past [`MAX_APPS`] are counted as `other`.

pub mod textfile;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Deserialize;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// `[metrics]`: the textfile for node_exporter.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A `*.prom` file for node_exporter's textfile collector (Debian's package reads
    /// `/var/lib/prometheus/node-exporter/`), rewritten whole every `interval` seconds;
    /// unset: no file (the `Metrics` D-Bus property has the same text).
    pub textfile: Option<PathBuf>,
    pub interval: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { textfile: None, interval: 15 }
    }
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = &self.textfile
            && !(p.is_absolute() && p.extension().is_some_and(|e| e == "prom"))
        {
            return Err(format!("metrics.textfile = {} (an absolute path ending in .prom)", p.display()));
        }
        if !(1..=3600).contains(&self.interval) {
            return Err(format!("metrics.interval = {} (1 to 3600 seconds)", self.interval));
        }
        Ok(())
    }
}

/// Distinct `app` label values; later apps are counted as `other`.
pub const MAX_APPS: usize = 64;

/// Values sampled when the metrics are rendered (the daemon's state now).
#[derive(Clone, Debug, Default)]
pub struct Now {
    pub memory_used: u64,
    pub memory_budget: u64,
    pub models_loaded: u64,
    pub requests_running: u64,
    pub requests_queued: u64,
    /// The power state's name (`normal`, `on-battery`, ...) and whether it limits anything.
    pub power_state: String,
}

/// The power states a `llamad_power_state` gauge has a series for (the one in force is 1).
pub const POWER_STATES: &[&str] = &["normal", "on-battery", "low-battery", "critical-battery", "hot", "critical-heat"];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    prompt_tokens: IntCounterVec,
    cached_prompt_tokens: IntCounterVec,
    generated_tokens: IntCounterVec,
    time_to_first_token: HistogramVec,
    decode_rate: HistogramVec,
    queue_wait: HistogramVec,
    loads: IntCounterVec,
    unloads: IntCounterVec,
    preemptions: IntCounter,
    memory_used: IntGauge,
    memory_budget: IntGauge,
    models_loaded: IntGauge,
    running: IntGauge,
    queued: IntGauge,
    power_state: IntGaugeVec,
    apps: Mutex<HashSet<String>>,
}

/// One request's end, as the metrics count it.
#[derive(Clone, Debug, Default)]
pub struct Ended<'a> {
    /// A finish reason (`eos`, `length`, `stop`, `cancelled`), or the API's short error name
    /// (`OutOfBudget`, `Busy`, ...).
    pub result: &'a str,
    /// `interactive` or `background`; `unknown` when refused before its class was decided.
    pub priority: &'a str,
    pub app: &'a str,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    pub time_to_first_token_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub queue_wait_s: Option<f64>,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["priority"]).expect("a valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("a valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let seconds = vec![0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
        let rates = vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0];
        let preemptions = IntCounter::new(
            "llamad_preemptions_total",
            "Background requests whose KV cache was taken back for interactive work (recomputed later)",
        )
        .expect("a valid metric");
        r.register(Box::new(preemptions.clone())).expect("registered once");
        let power_state = IntGaugeVec::new(
            Opts::new("llamad_power_state", "The power governor's state: 1 for the one in force"),
            &["state"],
        )
        .expect("a valid metric");
        r.register(Box::new(power_state.clone())).expect("registered once");
        Metrics {
            requests: counter(
                &r,
                "llamad_requests_total",
                "Requests ended, by result (finish reason or error name), priority and app",
                &["result", "priority", "app"],
            ),
            prompt_tokens: counter(&r, "llamad_prompt_tokens_total", "Prompt tokens of ended requests", &["app"]),
            cached_prompt_tokens: counter(
                &r,
                "llamad_cached_prompt_tokens_total",
                "Prompt tokens whose KV cache a session or the prompt cache held (not computed)",
                &["app"],
            ),
            generated_tokens: counter(&r, "llamad_generated_tokens_total", "Tokens generated", &["app"]),
            time_to_first_token: histogram(
                &r,
                "llamad_time_to_first_token_seconds",
                "From a request's start in its engine loop to its first token",
                seconds.clone(),
            ),
            decode_rate: histogram(
                &r,
                "llamad_decode_tokens_per_second",
                "A request's decoding speed after its first token",
                rates,
            ),
            queue_wait: histogram(
                &r,
                "llamad_queue_wait_seconds",
                "From a request's admission to its start (its KV cache reserved)",
                seconds,
            ),
            loads: counter(&r, "llamad_model_loads_total", "Models loaded, by reason", &["model", "reason"]),
            unloads: counter(
                &r,
                "llamad_model_unloads_total",
                "Models unloaded, by reason (request, idle, evicted, pressure, faulted)",
                &["model", "reason"],
            ),
            preemptions,
            memory_used: gauge(&r, "llamad_memory_used_bytes", "Memory the budget counts as used"),
            memory_budget: gauge(&r, "llamad_memory_budget_bytes", "The memory budget in force"),
            models_loaded: gauge(&r, "llamad_models_loaded", "Models loaded"),
            running: gauge(&r, "llamad_requests_running", "Requests running (paused ones included)"),
            queued: gauge(&r, "llamad_requests_queued", "Requests waiting to start"),
            power_state,
            registry: r,
            apps: Mutex::new(HashSet::new()),
        }
    }

    /// `app`, or `other` once [`MAX_APPS`] others have been seen.
    fn app_label<'a>(&self, app: &'a str) -> &'a str {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if apps.contains(app) {
            return app;
        }
        if apps.len() < MAX_APPS {
            apps.insert(app.to_string());
            return app;
        }
        "other"
    }

    /// Counts a request that ended (finished, failed, or refused before it was queued).
    pub fn ended(&self, e: &Ended<'_>) {
        let app = self.app_label(e.app);
        self.requests.with_label_values(&[e.result, e.priority, app]).inc();
        self.prompt_tokens.with_label_values(&[app]).inc_by(e.prompt_tokens);
        self.cached_prompt_tokens.with_label_values(&[app]).inc_by(e.cached_prompt_tokens);
        self.generated_tokens.with_label_values(&[app]).inc_by(e.generated_tokens);
        if let Some(t) = e.time_to_first_token_s {
            self.time_to_first_token.with_label_values(&[e.priority]).observe(t);
        }
        if let Some(r) = e.decode_tokens_per_s.filter(|r| r.is_finite()) {
            self.decode_rate.with_label_values(&[e.priority]).observe(r);
        }
        if let Some(w) = e.queue_wait_s {
            self.queue_wait.with_label_values(&[e.priority]).observe(w);
        }
    }

    pub fn loaded(&self, model: &str, reason: &str) {
        self.loads.with_label_values(&[model, reason]).inc();
    }

    pub fn unloaded(&self, model: &str, reason: &str) {
        self.unloads.with_label_values(&[model, reason]).inc();
    }

    pub fn preempted(&self) {
        self.preemptions.inc();
    }

    /// The metrics in Prometheus' text format (version 0.0.4), with `now`'s gauges.
    pub fn render(&self, now: &Now) -> String {
        self.memory_used.set(now.memory_used as i64);
        self.memory_budget.set(now.memory_budget as i64);
        self.models_loaded.set(now.models_loaded as i64);
        self.running.set(now.requests_running as i64);
        self.queued.set(now.requests_queued as i64);
        for s in POWER_STATES {
            self.power_state.with_label_values(&[s]).set(i64::from(*s == now.power_state));
        }
        let mut out = vec![];
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("writing to a Vec");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_it_is_told_and_caps_the_apps() {
        let m = Metrics::new();
        let ok = Ended {
            result: "eos",
            priority: "interactive",
            app: "flatpak:org.example.Chat",
            prompt_tokens: 10,
            generated_tokens: 5,
            time_to_first_token_s: Some(0.2),
            decode_tokens_per_s: Some(30.0),
            queue_wait_s: Some(0.01),
            ..Default::default()
        };
        m.ended(&ok);
        m.ended(&ok);
        for i in 0..MAX_APPS + 3 {
            let app = format!("uid:{i}");
            m.ended(&Ended { result: "Busy", priority: "background", app: &app, ..Default::default() });
        }
        m.preempted();
        let text = m.render(&Now { memory_budget: 1 << 30, power_state: "on-battery".into(), ..Default::default() });
        let line =
            |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}\n{text}"));
        assert!(
            line(r#"llamad_requests_total{app="flatpak:org.example.Chat",priority="interactive",result="eos"}"#)
                .ends_with(" 2")
        );
        assert!(line(r#"llamad_generated_tokens_total{app="flatpak:org.example.Chat"}"#).ends_with(" 10"));
        // the Flatpak took one of the 64 places and 63 uids the rest: the last 4 uids are `other`
        assert!(line(r#"llamad_requests_total{app="other",priority="background",result="Busy"}"#).ends_with(" 4"));
        assert!(line("llamad_preemptions_total").ends_with(" 1"));
        assert!(line("llamad_memory_budget_bytes").ends_with(" 1073741824"));
        assert!(line(r#"llamad_power_state{state="on-battery"}"#).ends_with(" 1"));
        assert!(line(r#"llamad_power_state{state="normal"}"#).ends_with(" 0"));
        assert!(line(r#"llamad_time_to_first_token_seconds_bucket{priority="interactive",le="0.25"}"#).ends_with(" 2"));
        assert!(line(r#"llamad_time_to_first_token_seconds_bucket{priority="interactive",le="0.1"}"#).ends_with(" 0"));
    }
}
