//! Metrics on a real daemon: the requests a test makes (finished, cancelled, refused) are
//! counted in the `Metrics` property and in the textfile, both parsed with a real parser of
//! Prometheus' text format (`prometheus-parse`) and compared with what the requests'
//! `Finished` signals said; Debian's node_exporter reads the textfile with its textfile
//! collector; `llamactl top` shows the counts.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bus::Daemon;
use common::client::{collect, manager_signals};
use prometheus_parse::{Scrape, Value};
use zbus::zvariant::Value as V;

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the metrics parse")
}

/// The value of `metric` with exactly these labels (0 when absent).
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && x.labels.len() == labels.len())
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
        .unwrap_or(0.0)
}

fn greedy(max_tokens: u32) -> HashMap<&'static str, V<'static>> {
    HashMap::from([("max_tokens", V::from(max_tokens)), ("temperature", V::from(0.0f64))])
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_the_requests_made() {
    let prom = tempfile::tempdir().unwrap();
    let file = prom.path().join("llamad.prom");
    let d = Daemon::start(&format!("[metrics]\ntextfile = \"{}\"\ninterval = 1\n", file.display())).await;
    let (conn, proxy) = d.proxy().await;
    let me = format!("uid:{}", unsafe { libc::getuid() });

    // two that finish at their length, one that stops at end of sequence or length
    let mut signals = manager_signals(&conn).await;
    let mut finished = vec![];
    for prompt in ["Once upon a time", "The cat sat", "A dog"] {
        let id = proxy.generate("tiny", prompt, greedy(8)).await.unwrap();
        finished.push(collect(&mut signals, id).await.1);
    }
    // refused before it is queued: an unknown model, and a prompt beyond the context
    proxy.generate("no-such-model", "hi", greedy(4)).await.unwrap_err();
    let long = "word ".repeat(5000);
    proxy.generate("tiny", &long, greedy(4)).await.unwrap_err();
    // cancelled while running (a long one)
    let id = proxy.generate("tiny", "Once", greedy(200)).await.unwrap();
    proxy.cancel(id).await.unwrap();
    let cancelled = collect(&mut signals, id).await.1;
    assert_eq!(cancelled.finish_reason, "cancelled");
    finished.push(cancelled);

    let text = proxy.metrics().await.unwrap();
    let s = parse(&text);
    let mut by_reason: HashMap<String, f64> = HashMap::new();
    for f in &finished {
        *by_reason.entry(f.finish_reason.clone()).or_default() += 1.0;
    }
    for (reason, n) in &by_reason {
        let labels = [("result", reason.as_str()), ("priority", "interactive"), ("app", me.as_str())];
        assert_eq!(value(&s, "llamad_requests_total", &labels), *n, "{reason}\n{text}");
    }
    for result in ["UnknownModel", "ContextOverflow"] {
        let labels = [("result", result), ("priority", "interactive"), ("app", me.as_str())];
        assert_eq!(value(&s, "llamad_requests_total", &labels), 1.0, "{result}\n{text}");
    }
    let generated: u32 = finished.iter().map(|f| f.generated_tokens.unwrap_or(0)).sum();
    let prompt: u32 = finished.iter().map(|f| f.prompt_tokens.unwrap_or(0)).sum();
    assert_eq!(value(&s, "llamad_generated_tokens_total", &[("app", &me)]), generated as f64, "{text}");
    assert_eq!(value(&s, "llamad_prompt_tokens_total", &[("app", &me)]), prompt as f64, "{text}");
    // every request that produced a token has a time to first token; a queue wait, every one
    // that started (the cancelled one may have been cancelled before it did)
    let with_first = finished.iter().filter(|f| f.time_to_first_token_ms.is_some()).count();
    assert_eq!(
        value(&s, "llamad_time_to_first_token_seconds_count", &[("priority", "interactive")]),
        with_first as f64
    );
    let waits = value(&s, "llamad_queue_wait_seconds_count", &[("priority", "interactive")]);
    assert!((3.0..=4.0).contains(&waits), "{text}");
    assert_eq!(value(&s, "llamad_model_loads_total", &[("model", "tiny"), ("reason", "request")]), 1.0);
    assert_eq!(value(&s, "llamad_models_loaded", &[]), 1.0);
    assert!(value(&s, "llamad_memory_budget_bytes", &[]) > 0.0);
    assert!(value(&s, "llamad_memory_used_bytes", &[]) > 0.0);
    assert_eq!(value(&s, "llamad_power_state", &[("state", "normal")]), 1.0);

    // the textfile catches up within its interval, with the same counts
    let deadline = Instant::now() + Duration::from_secs(10);
    let file_text = loop {
        let t = std::fs::read_to_string(&file).unwrap_or_default();
        let f = parse(&t);
        if value(&f, "llamad_generated_tokens_total", &[("app", &me)]) == generated as f64 {
            break t;
        }
        assert!(Instant::now() < deadline, "the textfile was not rewritten:\n{t}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let f = parse(&file_text);
    let labels = [("result", "UnknownModel"), ("priority", "interactive"), ("app", me.as_str())];
    assert_eq!(value(&f, "llamad_requests_total", &labels), 1.0, "{file_text}");
    // nothing but the file in its directory (the temporary is renamed over it)
    assert_eq!(std::fs::read_dir(prom.path()).unwrap().count(), 1);

    // llamactl top shows the counts
    let out = d.llamactl().args(["top", "--once"]).output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}{}", String::from_utf8_lossy(&out.stderr));
    assert!(screen.contains(&format!("{generated} generated")), "{screen}");
    assert!(screen.contains("UnknownModel 1") && screen.contains("cancelled 1"), "{screen}");
    assert!(screen.contains("power:    normal"), "{screen}");
    let out = d.llamactl().args(["--json", "top"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["generated_tokens"].as_f64(), Some(generated as f64), "{v}");
    assert_eq!(v["results"]["ContextOverflow"].as_f64(), Some(1.0), "{v}");
}

/// A free TCP port on the loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[tokio::test(flavor = "multi_thread")]
async fn node_exporter_reads_the_textfile() {
    let prom = tempfile::tempdir().unwrap();
    let file = prom.path().join("llamad.prom");
    let d = Daemon::start(&format!("[metrics]\ntextfile = \"{}\"\ninterval = 1\n", file.display())).await;
    let (conn, proxy) = d.proxy().await;
    let mut signals = manager_signals(&conn).await;
    let id = proxy.generate("tiny", "Once upon a time", greedy(6)).await.unwrap();
    let stats = collect(&mut signals, id).await.1;
    let me = format!("uid:{}", unsafe { libc::getuid() });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&file).unwrap_or_default().contains("llamad_generated_tokens_total{") {
        assert!(Instant::now() < deadline, "no textfile");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));

    // Debian's node_exporter (tests/run unpacks prometheus-node-exporter and says where in
    // NODE_EXPORTER), textfile collector only
    let port = free_port();
    let exporter = std::env::var("NODE_EXPORTER").unwrap_or_else(|_| "prometheus-node-exporter".into());
    let mut exporter = Command::new(exporter)
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!("--collector.textfile.directory={}", prom.path().display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node_exporter: tests/run unpacks Debian's prometheus-node-exporter and sets NODE_EXPORTER");
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Some(b) = http_get(port, "/metrics").filter(|b| b.contains("node_textfile_scrape_error")) {
            break b;
        }
        assert!(Instant::now() < deadline, "node_exporter did not answer");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = exporter.kill();
    let _ = exporter.wait();
    let text = body.split_once("\r\n\r\n").map_or(body.as_str(), |(_, b)| b);
    let s = parse(text);
    assert_eq!(value(&s, "node_textfile_scrape_error", &[]), 0.0, "{text}");
    let labels = [("result", stats.finish_reason.as_str()), ("priority", "interactive"), ("app", me.as_str())];
    assert_eq!(value(&s, "llamad_requests_total", &labels), 1.0, "{text}");
    let generated = stats.generated_tokens.unwrap() as f64;
    assert_eq!(value(&s, "llamad_generated_tokens_total", &[("app", &me)]), generated, "{text}");
    assert_eq!(value(&s, "llamad_time_to_first_token_seconds_count", &[("priority", "interactive")]), 1.0, "{text}");
}
