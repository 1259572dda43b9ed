//! The memory budget on a real daemon: admission and its typed refusals,
//! eviction order (sessions' caches before idle models), keep_alive, KV reservations, memory pressure, estimates
//! against measurement (also on a larger model generated here), and the peak
//! resident size of a stress run, read from outside the process.

mod common;

const CHUNK: u64 = llamad::engine::backend::DEFAULT_PREFILL_CHUNK as u64;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::bus::Daemon;
use common::client::*;
use common::sizes::{Sizes, estimate, exercise, settled_proxy, tokens, with_budget};
use common::*;
use llamad::engine::{BackendKind, Model, Prompt, SamplingParams};
use llamad::memory::measure::status_kib;
use llamad::memory::mib;
use llamad_api::{Error, SessionProxy};
use zbus::zvariant::Value;

const TINY: &str = "tiny-llama2-optimum-fp32";

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_budget_refuses_what_does_not_fit() {
    let d = Daemon::start("[memory]\nbudget = \"20MiB\"\nreserve = 0").await;
    let (_c, proxy) = d.proxy().await;
    let mem = proxy.memory().await.unwrap();
    assert_eq!(mem.budget, 20 << 20);
    assert_eq!(mem.config, Some(20 << 20));
    match Error::from(proxy.generate("tiny", PROMPT, request_opts(1, 5)).await.unwrap_err()) {
        Error::OutOfBudget(m) => assert!(m.contains("loading tiny") && m.contains("budget is 20.0 MiB"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert!(loaded_now(&proxy).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_models_are_never_evicted_idle_ones_are() {
    // tiny-gguf (a first tract load) and tiny's load peak do not fit together; either fits alone.
    let models = ["tiny-gguf", "tiny"];
    let sizes = Sizes::probe_after(&models, &[]).await;
    let (gguf, tiny) = (estimate(&fixture("tiny-llama2-gguf-int4"), false), estimate(&fixture(TINY), false));
    let budget =
        sizes.budget_between("busy/idle", gguf.load_peak().max(tiny.load_peak()), gguf.resident() + tiny.load_peak());
    let d = Daemon::start(&with_budget("max_parallel = 1\nmax_queue = 16", budget)).await;
    let (conn, proxy) = settled_proxy(&d).await;
    exercise(&conn, &proxy, &models).await;
    proxy.load_model("tiny-gguf", HashMap::new()).await.unwrap();
    // While tiny-gguf has requests queued or running it is not evicted: loading tiny is refused.
    let mut ids = vec![];
    for _ in 0..4 {
        ids.push(proxy.generate("tiny-gguf", PROMPT, request_opts(1, 250)).await.unwrap());
    }
    match Error::from(proxy.load_model("tiny", HashMap::new()).await.unwrap_err()) {
        Error::OutOfBudget(m) => assert!(m.contains("tiny-gguf") && m.contains("serving requests"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert_eq!(loaded_now(&proxy).await, vec!["tiny-gguf".to_string()]);
    // Once it is idle, it makes room.
    let mut signals = manager_signals(&conn).await;
    for id in ids {
        proxy.cancel(id).await.unwrap();
    }
    while proxy.requests_running().await.unwrap() + proxy.requests_queued().await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.load_model("tiny", HashMap::new()).await.unwrap();
    let (name, reason): (String, String) = wait_for(&mut signals, "ModelUnloaded").await.body().deserialize().unwrap();
    assert_eq!((name.as_str(), reason.as_str()), ("tiny-gguf", "evicted"));
    assert_eq!(loaded_now(&proxy).await, vec!["tiny".to_string()], "{}", d.log());
    // the metrics count the eviction and both loads
    let metrics = proxy.metrics().await.unwrap();
    for line in [
        r#"llamad_model_unloads_total{model="tiny-gguf",reason="evicted"} 1"#,
        r#"llamad_model_loads_total{model="tiny",reason="admin"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}
#[tokio::test(flavor = "multi_thread")]
async fn a_request_reserves_its_kv_cache_first() {
    // A short prompt fits next to the loaded model; the logits of a 1000-word prompt (about
    // 1000 × 32000 floats) and its KV cache never can: refused at once, whatever
    // `when_full` says. The model is the tiny fixture declaring a 4096-token context.
    let gen_dir = tempfile::tempdir().unwrap();
    let long_dir = gen_dir.path().join("long");
    widen::long_context_tiny_llama(&long_dir, 4096);
    let long = "word ".repeat(1000);
    let sizes = Sizes::probe_after(&["long"], &[("long", &long_dir)]).await;
    let e = estimate(&long_dir, false);
    let (short_n, long_n) = (tokens(&long_dir, PROMPT), tokens(&long_dir, &long));
    // the long prompt in one pass (prefill_chunk above it): its transients count in full
    let one_pass = 4096;
    let low = e.load_peak().max(e.resident() + e.request(short_n, short_n + 20, one_pass));
    let budget = sizes.budget_between("reservations", low, e.resident() + e.request(long_n, long_n + 4, one_pass));
    let d = Daemon::start_with(&with_budget("prefill_chunk = 4096", budget), &[("long", &long_dir)]).await;
    let (conn, proxy) = settled_proxy(&d).await;
    exercise(&conn, &proxy, &["long"]).await;
    let (_, stats, _) = stream(&conn, &proxy, "long", PROMPT, request_opts(1, 20)).await.unwrap();
    assert_eq!(stats.finish_reason, "length");
    match Error::from(proxy.generate("long", &long, request_opts(1, 4)).await.unwrap_err()) {
        Error::OutOfBudget(m) => assert!(m.contains("KV cache"), "{m}"),
        e => panic!("{e:?}"),
    }
    let m = proxy.list_models().await.unwrap().into_iter().find(|m| m.name == "long").unwrap();
    assert_eq!(m.kv_reserved_bytes, Some(0), "reservations are released");
    assert!(m.measured_bytes.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_unloads_idle_models_on_time() {
    let d = Daemon::start("keep_alive = 1").await;
    let (conn, proxy) = d.proxy().await;
    let mut signals = manager_signals(&conn).await;
    let started = std::time::Instant::now();
    run(&conn, &proxy, 1, 5).await;
    let msg = wait_for(&mut signals, "ModelUnloaded").await;
    let (name, reason): (String, String) = msg.body().deserialize().unwrap();
    assert_eq!((name.as_str(), reason.as_str()), ("tiny", "idle"));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(5), "{waited:?}");
    // keep_alive 0 on a request: unloaded right after it; negative: kept.
    let mut o = request_opts(1, 5);
    o.insert("keep_alive", Value::from(-1i64));
    proxy.generate("tiny", PROMPT, o).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(loaded_now(&proxy).await, vec!["tiny".to_string()]);
    let mut o = request_opts(1, 5);
    o.insert("keep_alive", Value::from(0i64));
    proxy.generate("tiny", PROMPT, o).await.unwrap();
    let msg = wait_for(&mut signals, "ModelUnloaded").await;
    let (_, reason): (String, String) = msg.body().deserialize().unwrap();
    assert_eq!(reason, "idle");
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_pressure_unloads_idle_models_and_pauses_admission() {
    let psi = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(psi.path(), "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
    let d = Daemon::start(&format!("[memory]\npsi = \"{}\"\npsi_threshold = 20.0", psi.path().display())).await;
    let (conn, proxy) = d.proxy().await;
    let mut signals = manager_signals(&conn).await;
    proxy.load_model("tiny", HashMap::new()).await.unwrap();
    std::fs::write(psi.path(), "some avg10=35.00 avg60=10.00 avg300=2.00 total=99\n").unwrap();
    let (active, reason): (bool, String) = wait_for(&mut signals, "MemoryPressure").await.body().deserialize().unwrap();
    assert!(active && reason.contains("avg10=35"), "{reason}");
    let (name, why): (String, String) = wait_for(&mut signals, "ModelUnloaded").await.body().deserialize().unwrap();
    assert_eq!((name.as_str(), why.as_str()), ("tiny", "pressure"));
    assert!(proxy.under_memory_pressure().await.unwrap());
    match Error::from(proxy.generate("tiny", PROMPT, request_opts(1, 5)).await.unwrap_err()) {
        Error::OutOfBudget(m) => assert!(m.contains("memory pressure"), "{m}"),
        e => panic!("{e:?}"),
    }
    std::fs::write(psi.path(), "some avg10=1.00 avg60=10.00 avg300=2.00 total=99\n").unwrap();
    let (active, _): (bool, String) = wait_for(&mut signals, "MemoryPressure").await.body().deserialize().unwrap();
    assert!(!active);
    assert_eq!(run(&conn, &proxy, 1, 5).await.1.finish_reason, "length");
}

/// Test daemons read a quiet pressure file (`common::bus::quiet_pressure`); one named
/// on the kernel's file registers the PSI trigger there.
#[tokio::test(flavor = "multi_thread")]
async fn the_kernel_pressure_file_takes_the_trigger() {
    if !std::path::Path::new("/proc/pressure/memory").exists() {
        eprintln!("skipped: this kernel has no PSI (CONFIG_PSI off or psi=0)");
        return;
    }
    let d = Daemon::start("[memory]\npsi = \"/proc/pressure/memory\"").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !d.log().contains("PSI trigger registered") {
        assert!(std::time::Instant::now() < deadline, "no trigger registered:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.log().contains("some 150000 2000000"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn max_loaded_models_and_the_estimate_dry_run() {
    let d = Daemon::start("max_loaded_models = 1").await;
    let (conn, proxy) = d.proxy().await;
    let mut signals = manager_signals(&conn).await;
    proxy.load_model("tiny", HashMap::new()).await.unwrap();
    proxy.load_model("tiny-gguf", HashMap::new()).await.unwrap();
    let (name, reason): (String, String) = wait_for(&mut signals, "ModelUnloaded").await.body().deserialize().unwrap();
    assert_eq!((name.as_str(), reason.as_str()), ("tiny", "evicted"));
    assert_eq!(loaded_now(&proxy).await, vec!["tiny-gguf".to_string()]);
    let out = d.llamactl().args(["--json", "estimate", "tiny", "--ctx", "128", "--parallel", "2"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |k: &str| e[k].as_u64().unwrap();
    // 2 layers × 1 KV head × 16 dims × 2 (K and V) × 4 bytes = 256 bytes a token.
    assert_eq!(n("kv_per_sequence"), 128 * 256);
    assert_eq!(n("total"), n("weights") + n("scratch") + 2 * n("kv_per_sequence"));
    assert_eq!(e["fits_now"], true);
    let out = d.llamactl().args(["estimate", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_do_not_fit_together_wait_or_are_refused_as_configured() {
    // One request with a 400-word prompt (its logits: about 50 MiB) fits next to the model;
    // two do not. The model is the tiny fixture declaring a 4096-token context.
    let gen_dir = tempfile::tempdir().unwrap();
    let long_dir = gen_dir.path().join("long");
    widen::long_context_tiny_llama(&long_dir, 4096);
    let extra = [("long", long_dir.as_path())];
    let prompt = "word ".repeat(400);
    let expected = {
        let m = Model::load(&long_dir, BackendKind::Tract, &common::opts(BackendKind::Tract), true).unwrap();
        let p = SamplingParams { seed: Some(4), max_tokens: 30, temperature: 0.8, ..Default::default() };
        m.generate(&Prompt::Text(prompt.clone()), &p, &AtomicBool::new(false), |_| {}).unwrap().text
    };
    let sizes = Sizes::probe_after(&["long"], &extra).await;
    let e = estimate(&long_dir, false);
    let n = tokens(&long_dir, &prompt);
    let one = e.request(n, n + 50, CHUNK);
    let budget = sizes.budget_between("two requests", e.load_peak().max(e.resident() + one), e.resident() + 2 * one);
    let d = Daemon::start_with(&with_budget("max_parallel = 2", budget), &extra).await;
    let (conn, proxy) = settled_proxy(&d).await;
    exercise(&conn, &proxy, &["long"]).await;
    let mut tasks = vec![];
    for _ in 0..4 {
        let (conn, proxy) = d.proxy().await;
        let prompt = prompt.clone();
        tasks.push(tokio::spawn(async move { stream(&conn, &proxy, "long", &prompt, request_opts(4, 30)).await }));
    }
    for t in tasks {
        let (text, stats, _) = t.await.unwrap().expect("queued, not refused");
        assert_eq!(stats.finish_reason, "length", "{stats:?}\n{}", d.log());
        assert_eq!(text, expected);
    }
    assert!(d.log().contains("waiting for memory"), "no request had to wait: {}", d.log());
    drop(d);

    let d = Daemon::start_with(&format!("{}when_full = \"refuse\"\n", with_budget("max_parallel = 1", budget)), &extra)
        .await;
    let (conn, proxy) = settled_proxy(&d).await;
    exercise(&conn, &proxy, &["long"]).await;
    proxy.load_model("long", HashMap::new()).await.unwrap();
    let mut refused = 0;
    for _ in 0..3 {
        match proxy.generate("long", &prompt, request_opts(4, 50)).await {
            Ok(_) => {}
            Err(e) => match Error::from(e) {
                Error::OutOfBudget(m) => {
                    assert!(m.contains("KV cache"), "{m}");
                    refused += 1
                }
                other => panic!("{other:?}"),
            },
        }
    }
    assert!(refused >= 1, "nothing was refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn peak_memory_stays_within_the_budget_under_mixed_load() {
    // Room for either model and a few requests, not for both: loads alternate, so models
    // are evicted and reloaded while requests run. The daemon is first run through both
    // models, so that its baseline holds what they leave behind, as in a daemon that has
    // been serving for a while. The peak is read from outside (`VmHWM`).
    let sizes = Sizes::probe_after(&["tiny", "tiny-gguf"], &[]).await;
    let (tiny, gguf) = (estimate(&fixture(TINY), false), estimate(&fixture("tiny-llama2-gguf-int4"), false));
    let n = tokens(&fixture(TINY), PROMPT);
    let requests = 2 * tiny.request(n, n + 40, CHUNK).max(gguf.request(n, n + 40, CHUNK));
    let budget = sizes.budget_between(
        "stress",
        tiny.load_peak().max(gguf.load_peak()) + requests,
        (tiny.resident() + gguf.load_peak()).min(gguf.resident() + tiny.load_peak()),
    );
    let d = Daemon::start(&with_budget("max_parallel = 2\nmax_queue = 64", budget)).await;
    let (conn, proxy) = settled_proxy(&d).await;
    exercise(&conn, &proxy, &["tiny", "tiny-gguf"]).await;
    let pid = d.llamad.as_ref().unwrap().id();
    // Six rounds; in each, three clients ask the round's model for a completion and a
    // fourth asks the other model (refused while the round's model is busy, or served
    // after an eviction). Between rounds the previous model is idle and makes room.
    let mut completed = 0;
    let mut refused = 0;
    for round in 0..6u64 {
        let (this, other) = if round % 2 == 0 { ("tiny", "tiny-gguf") } else { ("tiny-gguf", "tiny") };
        let mut tasks = vec![];
        for client in 0..4u64 {
            let (conn, proxy) = d.proxy().await;
            let model = if client < 3 { this } else { other };
            tasks.push(tokio::spawn(async move {
                match stream(&conn, &proxy, model, PROMPT, request_opts(round * 4 + client, 40)).await {
                    Ok((_, stats, _)) => {
                        assert_eq!(stats.finish_reason, "length");
                        Ok(())
                    }
                    // No room for both models while one is busy: a typed refusal.
                    Err(Error::OutOfBudget(_)) => Err(()),
                    Err(e) => panic!("unexpected error {e:?}"),
                }
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => completed += 1,
                Err(()) => refused += 1,
            }
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak = status_kib(&status, "VmHWM:").unwrap() * 1024;
    let log = d.log();
    let evictions = log.matches("\"evicted\"").count();
    eprintln!(
        "stress: {completed} of 24 requests completed, {refused} refused, {evictions} evictions, peak RSS {}, budget {}",
        mib(peak),
        mib(budget)
    );
    assert!(completed >= 6, "{completed}: requests complete");
    assert!(evictions >= 1, "the models never had to make room for each other");
    assert!(peak <= budget * 105 / 100, "peak RSS {peak} over the budget + 5 %: {log}");
    // `exercise` unloads each model right after its request's `Finished`: the worker must
    // have let go of it by then, or its memory is counted as the daemon's own (one CI run
    // was refused the next load that way).
    assert!(!log.contains("still referenced"), "{log}");
}

/// The widened tiny model (see `common::widen`): about 42 MB of weights, made here.
fn larger_model(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("wide");
    let bytes = widen::widened_tiny_llama(&path, 49152);
    assert!(bytes > 30 << 20, "{bytes}");
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generated_larger_model_is_estimated_within_ten_percent_and_answers_like_its_source() {
    let gen_dir = tempfile::tempdir().unwrap();
    let wide = larger_model(gen_dir.path());
    let d = Daemon::start_with("", &[("wide", &wide)]).await;
    let (conn, proxy) = d.proxy().await;
    let greedy = || {
        let mut o = request_opts(0, 12);
        o.insert("temperature", Value::from(0.0f64));
        o
    };
    for backend in ["tract", "onnxruntime"] {
        // Three loads (the first brings the runtime's code in, and its estimate says so):
        // the median error counts, as one load's measurement moves with the allocator.
        let mut errors = vec![];
        for _ in 0..3 {
            proxy.load_model("wide", backend_opt(backend)).await.unwrap();
            let m = proxy.list_models().await.unwrap().into_iter().find(|m| m.name == "wide").unwrap();
            assert_eq!(m.backend.as_deref(), Some(backend));
            let (est, measured) = (m.estimated_bytes.unwrap(), m.measured_bytes.unwrap());
            let error = est as f64 / measured as f64 - 1.0;
            eprintln!(
                "wide ({}) on {backend}: estimated {}, measured {} (anon {}, file {}): {:+.1} %",
                mib(m.file_size.unwrap()),
                mib(est),
                mib(measured),
                mib(m.measured_anon_bytes.unwrap()),
                mib(m.measured_file_bytes.unwrap()),
                error * 100.0
            );
            errors.push(error);
            proxy.unload_model("wide").await.unwrap();
        }
        errors.sort_by(f64::total_cmp);
        assert!(errors[1].abs() <= 0.10, "median estimate error {:+.1} % on {backend}", errors[1] * 100.0);
        proxy.load_model("wide", backend_opt(backend)).await.unwrap();
        // The added units contribute exactly zero: the same greedy text as the fixture's.
        let (wide_text, stats, _) = stream(&conn, &proxy, "wide", PROMPT, greedy()).await.unwrap();
        assert_eq!(stats.backend.as_deref(), Some(backend));
        proxy.unload_model("wide").await.unwrap();
        proxy.load_model("tiny", backend_opt(backend)).await.unwrap();
        let (tiny_text, _, _) = stream(&conn, &proxy, "tiny", PROMPT, greedy()).await.unwrap();
        proxy.unload_model("tiny").await.unwrap();
        assert_eq!(wide_text, tiny_text, "on {backend}");
        assert!(!wide_text.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_larger_model_over_budget_is_refused_with_its_numbers() {
    let gen_dir = tempfile::tempdir().unwrap();
    let wide = larger_model(gen_dir.path());
    let d = Daemon::start_with("[memory]\nbudget = \"64MiB\"\nreserve = 0", &[("wide", &wide)]).await;
    let (conn, proxy) = settled_proxy(&d).await;
    let e = proxy.estimate("wide", HashMap::new()).await.unwrap();
    // Admission measures the daemon's own memory again first: what is in use is then what
    // is resident (after freed memory is handed back, so a little less than this reading).
    let in_use = memory_now(&conn).await.rss.unwrap();
    assert!(!e.fits_now && !e.fits_after_eviction, "{e:?}");
    let m = match Error::from(proxy.load_model("wide", HashMap::new()).await.unwrap_err()) {
        Error::OutOfBudget(m) => m,
        e => panic!("{e:?}"),
    };
    eprintln!("{m}");
    for part in [
        format!(
            "loading wide ({} weights + {} scratch estimated, {} at the load's peak)",
            mib(e.weights),
            mib(e.scratch),
            mib(e.load_peak.unwrap())
        ),
        format!("needs {}", mib(e.load_peak.unwrap())),
        "the budget is 64.0 MiB, ".to_string(),
        "would free only 0.0 MiB".to_string(),
    ] {
        assert!(m.contains(&part), "{part:?} not in {m:?}");
    }
    // "U MiB is in use and A MiB available": U is what was in use (it moves by a few pages
    // between two readings), U + A the budget.
    let number_before = |marker: &str| -> f64 {
        let head = &m[..m.find(marker).unwrap_or_else(|| panic!("{marker:?} not in {m:?}"))];
        head.rsplit(' ').nth(1).unwrap().parse().unwrap()
    };
    let (used, available) = (number_before(" is in use"), number_before(" available"));
    assert!((used - in_use as f64 / 1048576.0).abs() < 1.5, "{used} MiB in use, {in_use} bytes resident");
    assert!((used + available - 64.0).abs() < 0.11, "{used} + {available}");
    assert!(loaded_now(&proxy).await.is_empty(), "nothing was loaded");
}

#[tokio::test(flavor = "multi_thread")]
async fn loading_a_larger_model_evicts_the_least_recently_used_idle_model_only() {
    let gen_dir = tempfile::tempdir().unwrap();
    let wide = larger_model(gen_dir.path());
    let mid = gen_dir.path().join("mid");
    widen::widened_tiny_llama(&mid, 16384);
    let extra = [("wide", wide.as_path()), ("mid", mid.as_path())];
    // `mid` (MLP 16384) and `tiny` fit together; `wide` fits next to one of them, not both.
    // Both daemons are run through the fixtures first; the generated models only in the
    // scenario (what their loads leave behind varies from one daemon to the next).
    let models = ["tiny-gguf", "tiny"];
    let sizes = Sizes::probe_after(&models, &extra).await;
    let (mid_e, tiny, large) = (estimate(&mid, false), estimate(&fixture(TINY), false), estimate(&wide, false));
    let budget = sizes.budget_between(
        "eviction order",
        mid_e.load_peak().max(mid_e.resident() + tiny.load_peak()).max(tiny.resident() + large.load_peak()),
        mid_e.resident() + tiny.resident() + large.load_peak(),
    );
    let d = Daemon::start_with(&with_budget("", budget), &extra).await;
    let (conn, proxy) = settled_proxy(&d).await;
    exercise(&conn, &proxy, &models).await;
    let mut signals = manager_signals(&conn).await;
    proxy.load_model("mid", HashMap::new()).await.unwrap();
    proxy.load_model("tiny", HashMap::new()).await.unwrap();
    // mid was loaded first and served a request first: it is the least recently used.
    stream(&conn, &proxy, "mid", PROMPT, request_opts(1, 3)).await.unwrap();
    stream(&conn, &proxy, "tiny", PROMPT, request_opts(1, 3)).await.unwrap();
    let e = proxy.estimate("wide", HashMap::new()).await.unwrap();
    assert!(!e.fits_now && e.fits_after_eviction, "{e:?}");
    proxy.load_model("wide", HashMap::new()).await.unwrap();
    let (name, reason): (String, String) = wait_for(&mut signals, "ModelUnloaded").await.body().deserialize().unwrap();
    assert_eq!((name.as_str(), reason.as_str()), ("mid", "evicted"));
    assert_eq!(loaded_now(&proxy).await, vec!["tiny".to_string(), "wide".to_string()], "{}", d.log());
    let mem = memory_now(&conn).await;
    assert!(mem.used.unwrap() <= mem.budget, "{mem:?}");
}

/// Room for a load comes from idle sessions' KV caches before idle models: with sessions
/// holding long conversations on `long` and a budget in which `mid` loads next to `long` only
/// once they drop their caches, loading `mid` drops caches (least recently used first, as
/// many as it needs) and unloads nothing; the sessions stay open, and one without its cache
/// computes its whole prompt again.
///
/// The window the budget sits in is as wide as the sessions' caches together (about 39 MiB:
/// 192 conversations of 830 tokens), so that what each open session holds besides its cache
/// (its messages, its object on the bus, the allocator's share: some tens of KiB, counted in
/// the baseline as it is measured again) stays well inside half of it.
#[tokio::test(flavor = "multi_thread")]
async fn session_caches_go_before_idle_models() {
    let long = with_context(TINY, 1024);
    let gen_dir = tempfile::tempdir().unwrap();
    let mid = gen_dir.path().join("mid");
    widen::widened_tiny_llama(&mid, 49152);
    let extra = [("long", long.path()), ("mid", mid.as_path())];
    const SESSIONS: u64 = 192;
    let text = "Once upon a time there was a little dog who liked to run in the park. ".repeat(48);
    // what the daemon counts with `long` loaded, after a request of the sessions' shape:
    // its baseline and the model as measured (tract's scratch grows to the largest product
    // it has computed, and stays)
    let sizes = {
        let probe = Daemon::start_with("max_parallel = 1", &extra).await;
        let (conn, proxy) = settled_proxy(&probe).await;
        stream(&conn, &proxy, "long", &text, request_opts(1, 8)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        Sizes { baseline: memory_now(&conn).await.used.unwrap() }
    };
    let (a, b) = (estimate(long.path(), false), estimate(&mid, false));
    let held = tokens(long.path(), &text) + 8;
    let (kv, request) = (a.kv(held), a.request(held, held, CHUNK));
    let budget = sizes.budget_between(
        "session caches first",
        (SESSIONS * kv + request).max(b.load_peak()),
        SESSIONS * kv + b.load_peak(),
    );
    let d =
        Daemon::start_with(&with_budget("max_parallel = 1\n[sessions]\nmax_per_client = 192", budget), &extra).await;
    let (conn, proxy) = settled_proxy(&d).await;
    let mut sessions = vec![];
    for _ in 0..SESSIONS {
        let path = proxy.open_session("long", HashMap::new()).await.unwrap();
        let s = SessionProxy::builder(&conn).path(path).unwrap().build().await.unwrap();
        let msg = HashMap::from([("role", Value::from("user")), ("content", Value::from(text.as_str()))]);
        let mut signals = manager_signals(&conn).await;
        let id = s.chat(&[msg], request_opts(1, 8)).await.unwrap();
        collect(&mut signals, id).await;
        sessions.push(s);
    }
    let mem = memory_now(&conn).await;
    let before = mem.sessions_kv.unwrap();
    assert!(before >= SESSIONS * kv * 9 / 10, "the sessions hold their caches: {mem:?}");
    eprintln!("with the sessions: {mem:?}");
    let mut signals = manager_signals(&conn).await;
    if let Err(e) = proxy.load_model("mid", HashMap::new()).await {
        panic!("{e}\nbefore the load: {mem:?}\n{}", d.log());
    }
    assert_eq!(loaded_now(&proxy).await, vec!["long".to_string(), "mid".to_string()], "{}", d.log());
    let mem = memory_now(&conn).await;
    assert!(mem.sessions_kv.unwrap() < before, "no session cache was dropped: {before} -> {mem:?}");
    assert!(mem.used.unwrap() <= mem.budget, "{mem:?}");
    let dropped = {
        let mut n = 0;
        for s in &sessions {
            n += (s.kv_bytes().await.unwrap() == 0) as u32;
        }
        n
    };
    assert!(dropped > 0, "a session lost its cache");
    assert_eq!(proxy.list_sessions().await.unwrap().len(), SESSIONS as usize, "sessions stay open");
    // nothing was unloaded to make room
    let unloaded = tokio::time::timeout(std::time::Duration::from_millis(300), wait_for(&mut signals, "ModelUnloaded"));
    assert!(unloaded.await.is_err(), "a model was unloaded: {}", d.log());
    // a session without its cache answers, computing its whole prompt again
    for s in &sessions {
        if s.kv_bytes().await.unwrap() == 0 {
            let msg = HashMap::from([("role", Value::from("user")), ("content", Value::from("And then?"))]);
            let mut signals = manager_signals(&conn).await;
            let id = s.chat(&[msg], request_opts(1, 4)).await.unwrap();
            let (_, stats, _) = collect(&mut signals, id).await;
            assert_eq!(stats.cached_prompt_tokens, Some(0), "{stats:?}");
            break;
        }
    }
}

/// Not a test: writes the larger model to $LLAMAD_LARGER_MODEL_DIR for models/bench-memory.sh
/// (`cargo test -p llamad --test memory -- --ignored write_the_larger_model`).
#[test]
#[ignore]
fn write_the_larger_model() {
    let dir = std::env::var_os("LLAMAD_LARGER_MODEL_DIR").expect("set LLAMAD_LARGER_MODEL_DIR");
    let width = std::env::var("LLAMAD_LARGER_MODEL_WIDTH").map_or(49152, |w| w.parse().unwrap());
    widen::widened_tiny_llama(std::path::Path::new(&dir), width);
}
