//! The serving core's promises under pressure, on a real daemon: every request
//! ends and the budget holds, whatever other clients do.
//!
//! - an interactive request that needs the memory a paused background request
//!   holds preempts it (both end; the background text is what it is alone);
//! - huge prompts are refused before anything tokenizes them, quickly, with
//!   resident memory inside the budget;
//! - llamactl, the Python example and the Rust proxy ignore signals forged by another
//!   client;
//! - a request cancelled while queued computes nothing;
//! - a panic in a request's work (injected with `LLAMAD_FAULTS`) ends that
//!   request with `GenerationFailed`, leaves no reservation, pin, entry or busy
//!   session, and the model serves again; the same for a panic in the ONNX
//!   Runtime batch leader, whose other rows end too instead of hanging;
//! - a request for a loaded model does not wait behind another model's load.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::bus::Daemon;
use common::client::{PROMPT, collect, manager_signals, memory_now};
use common::{copy_fixture, with_context};
use llamad_api::{MANAGER_INTERFACE, MANAGER_PATH, ManagerProxy, SessionProxy};
use zbus::zvariant::{OwnedValue, Value};

const TINY: &str = "tiny-llama2-optimum-fp32";

fn opts(max_tokens: u32, priority: Option<&str>) -> HashMap<&'static str, Value<'static>> {
    let mut o = HashMap::from([("max_tokens", Value::from(max_tokens)), ("temperature", Value::from(0.0f64))]);
    if let Some(p) = priority {
        o.insert("priority", Value::from(p.to_string()));
    }
    o
}

fn field<'a>(r: &'a HashMap<String, OwnedValue>, key: &str) -> Option<&'a OwnedValue> {
    r.get(key)
}

async fn requests(proxy: &ManagerProxy<'_>) -> Vec<HashMap<String, OwnedValue>> {
    proxy.list_requests().await.unwrap()
}

/// Waits until nothing is queued or running and no KV cache is reserved.
async fn quiet(conn: &zbus::Connection, proxy: &ManagerProxy<'_>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = memory_now(conn).await;
        if requests(proxy).await.is_empty() && m.kv_reserved == Some(0) {
            return;
        }
        assert!(Instant::now() < deadline, "not quiet: {:?} {:?}", requests(proxy).await, m);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Streams request `id` from `signals` until it has `chars` characters of text, then
/// cancels it and collects the rest: its whole text and final stats.
async fn text_then_cancel(
    signals: &mut zbus::MessageStream,
    proxy: &ManagerProxy<'_>,
    id: u64,
    chars: usize,
) -> (String, llamad_api::FinishStats) {
    let mut text = String::new();
    let mut cancelled = false;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), futures_util::StreamExt::next(signals))
            .await
            .unwrap_or_else(|_| panic!("request {id}: no progress for 60 s"))
            .unwrap()
            .unwrap();
        match msg.header().member().map(|m| m.to_string()).as_deref() {
            Some("Token") => {
                let (rid, piece): (u64, String) = msg.body().deserialize().unwrap();
                if rid != id {
                    continue;
                }
                text.push_str(&piece);
                if !cancelled && text.len() >= chars {
                    proxy.cancel(id).await.unwrap();
                    cancelled = true;
                }
            }
            Some("Finished") => {
                let (rid, stats): (u64, llamad_api::FinishStats) = msg.body().deserialize().unwrap();
                if rid == id {
                    return (text, stats);
                }
            }
            _ => {}
        }
    }
}

/// The deadlock of issue 18, on tract: a background request streams holding the KV
/// reservation that the budget has room for once; an interactive request of the same size
/// comes. Before, the background request paused holding its memory while the interactive one
/// waited for exactly that memory, for ever (and a cancel did not end either). Now the paused
/// request gives its KV cache back (preempted), the interactive one runs, and the background
/// one is computed again and goes on with the text it gives alone.
#[tokio::test(flavor = "multi_thread")]
async fn an_interactive_request_preempts_the_background_request_holding_its_memory() {
    // 256 bytes of KV cache a token: 100,000 tokens reserve 24 MiB, far above measuring noise
    let long = with_context(TINY, 131072);
    let top = "max_parallel = 4\nmax_tokens_limit = 100000\nkeep_alive = -1";
    let mut d = Daemon::start_with(top, &[("long", long.path())]).await;
    let (conn, proxy) = d.proxy().await;
    proxy.load_model("long", HashMap::new()).await.unwrap();
    let max_tokens = 100_000u32;
    let est = proxy
        .estimate("long", HashMap::from([("context", Value::from(max_tokens + 8)), ("parallel", Value::from(1u32))]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let used = memory_now(&conn).await.used.unwrap();
    let kv = est.kv_per_sequence;
    assert!(kv > 16 << 20, "the request's KV cache ({kv} bytes) dwarfs the measuring noise");
    // room for the model and one such request, not two
    let budget = used + kv + kv / 2;
    std::fs::write(
        d.dir.path().join("llamad.toml"),
        format!(
            "models_dir = \"{}\"\nbackend = \"tract\"\nthreads = 1\n{top}\n[memory]\nbudget = {budget}\nreserve = 0\nwhen_full = \"queue\"\n",
            d.dir.path().join("models").display()
        ),
    )
    .unwrap();
    d.restart().await;
    let (conn, proxy) = d.proxy().await;
    let mut signals = manager_signals(&conn).await;
    let bg = proxy.generate("long", PROMPT, opts(max_tokens - 8, Some("background"))).await.unwrap();
    // the background request streams; then the interactive one of the same size comes
    let mut bg_text = String::new();
    while bg_text.len() < 200 {
        let msg = tokio::time::timeout(Duration::from_secs(60), futures_util::StreamExt::next(&mut signals))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if msg.header().member().map(|m| m.as_str()) == Some("Token") {
            bg_text.push_str(&msg.body().deserialize::<(u64, String)>().unwrap().1);
        }
    }
    let mut i_signals = manager_signals(&conn).await;
    let started = Instant::now();
    let i = proxy.generate("long", PROMPT, opts(max_tokens - 8, None)).await.unwrap();
    let (i_text, i_stats) = text_then_cancel(&mut i_signals, &proxy, i, 400).await;
    eprintln!("interactive request answered and ended in {:?}", started.elapsed());
    assert_eq!(i_stats.finish_reason, "cancelled", "{i_stats:?}");
    assert!(d.log().contains("preempted"), "the background request gave its KV cache back: {}", d.log());
    // and the metrics count it (one property's Get: a caching proxy's first read asks for
    // all of them, Providers included, which sets ONNX Runtime up in the daemon and moves
    // its baseline in this tight budget)
    let reply = conn
        .call_method(
            Some(llamad_api::BUS_NAME),
            llamad_api::MANAGER_PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(llamad_api::MANAGER_INTERFACE, "Metrics"),
        )
        .await
        .unwrap();
    let metrics: String = reply.body().deserialize::<zbus::zvariant::OwnedValue>().unwrap().try_into().unwrap();
    let preemptions = metrics
        .lines()
        .find_map(|l| l.strip_prefix("llamad_preemptions_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(preemptions.is_some_and(|n| n >= 1.0), "the preemption is counted: {metrics}");
    // the background request goes on from where it was
    let (rest, bg_stats) = text_then_cancel(&mut signals, &proxy, bg, 600 - bg_text.len().min(400)).await;
    bg_text.push_str(&rest);
    assert_eq!(bg_stats.finish_reason, "cancelled", "{bg_stats:?}");
    quiet(&conn, &proxy).await;
    // each text agrees with what the request gives alone (greedy; the preempted one was
    // computed again from its token ids)
    let mut s = manager_signals(&conn).await;
    let id = proxy.generate("long", PROMPT, opts(max_tokens - 8, None)).await.unwrap();
    let (alone, _) = text_then_cancel(&mut s, &proxy, id, 1200).await;
    let common = |a: &str, b: &str| a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    assert_eq!(common(&i_text, &alone), i_text.chars().count().min(alone.chars().count()));
    assert!(bg_text.len() >= 600 && alone.len() >= bg_text.len(), "{} {}", bg_text.len(), alone.len());
    assert_eq!(common(&bg_text, &alone), bg_text.chars().count(), "preemption changed the background request's text");
}

/// Resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Six concurrent requests with 20 MiB prompts under a 1 GiB budget: each is refused with
/// `ContextOverflow` within seconds, untokenized, and resident memory stays inside the
/// budget (before: 9.3 GiB and 52-59 s).
#[tokio::test(flavor = "multi_thread")]
async fn huge_prompts_are_refused_untokenized_within_the_budget() {
    // reserve 0: the test also runs against code that took the reserve off explicit budgets
    let d = Daemon::start("[memory]\nbudget = \"1GiB\"\nreserve = 0\n").await;
    let (_conn, proxy) = d.proxy().await;
    proxy.load_model("tiny", HashMap::new()).await.unwrap();
    let prompt = "lorem ipsum dolor sit amet ".repeat((20 << 20) / 27 + 1);
    assert!(prompt.len() > 19 << 20);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pid = d.llamad.as_ref().unwrap().id();
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(rss) = rss_of(pid) {
                    peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let started = Instant::now();
    let mut calls = vec![];
    for _ in 0..6 {
        let (d_conn, p) = d.proxy().await;
        let prompt = prompt.clone();
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = p.generate("tiny", &prompt, opts(8, None)).await;
            drop(d_conn);
            (r, t.elapsed())
        }));
    }
    for c in calls {
        let (r, took) = c.await.unwrap();
        let e = r.expect_err("a 20 MiB prompt cannot fit a 256-token context");
        let text = e.to_string();
        assert!(text.contains("ContextOverflow") && text.contains("not tokenized"), "{text}");
        assert!(took < Duration::from_secs(10), "refused after {took:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak < 1 << 30, "resident memory reached {} MiB under a 1 GiB budget", peak >> 20);
    eprintln!("six 20 MiB prompts refused in {:?}; peak RSS {} MiB", started.elapsed(), peak >> 20);
    // and the daemon serves on
    let (conn, proxy) = d.proxy().await;
    let mut s = manager_signals(&conn).await;
    let id = proxy.generate("tiny", PROMPT, opts(8, None)).await.unwrap();
    assert_eq!(collect(&mut s, id).await.1.finish_reason, "length");
}

/// Sends the streaming client of the only listed request forged `Token` and `Finished`
/// signals (the manager's path and interface, from another connection).
async fn forge(conn: &zbus::Connection, proxy: &ManagerProxy<'_>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (id, client) = loop {
        if let Some(r) = requests(proxy).await.first() {
            let id = u64::try_from(field(r, "id").unwrap()).unwrap();
            let client = <&str>::try_from(field(r, "client").unwrap()).unwrap().to_string();
            break (id, client);
        }
        assert!(Instant::now() < deadline, "the client's request never showed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    for _ in 0..20 {
        conn.emit_signal(Some(client.as_str()), MANAGER_PATH, MANAGER_INTERFACE, "Token", &(id, "FORGED"))
            .await
            .unwrap();
    }
    let stats = llamad_api::FinishStats { finish_reason: "eos".into(), ..Default::default() };
    conn.emit_signal(Some(client.as_str()), MANAGER_PATH, MANAGER_INTERFACE, "Finished", &(id, stats)).await.unwrap();
}

/// While `llamactl run` and the Python example client stream, another client sends them
/// `Token` and `Finished` signals with the manager's path and interface: each prints only
/// the daemon's text and ends at the daemon's `Finished`. The Rust proxy's streams too.
#[tokio::test(flavor = "multi_thread")]
async fn clients_ignore_signals_forged_by_another_client() {
    let long = with_context(TINY, 4096);
    let d = Daemon::start_with("", &[("long", long.path())]).await;
    let (conn, proxy) = d.proxy().await;
    let args = ["run", "long", PROMPT, "--max-tokens", "1500", "--temperature", "0"];
    let alone = {
        let out = d.llamactl().args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let child = d.llamactl().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    forge(&conn, &proxy).await;
    let out = child.wait_with_output().unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!printed.contains("FORGED"), "llamactl printed a forged token");
    assert_eq!(printed, alone, "llamactl stopped at a forged Finished or lost text");

    // the Python example (jeepney), sampling with a seed
    let python = || {
        let mut c = std::process::Command::new("/usr/bin/python3");
        c.arg(common::bus::python_client())
            .args([&d.address, "long", PROMPT, "3", "1500"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let alone: serde_json::Value = serde_json::from_slice(&python().output().unwrap().stdout).unwrap();
    let child = python().spawn().unwrap();
    forge(&conn, &proxy).await;
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["text"], alone["text"], "the Python client took a forged token or Finished");
    assert_eq!(got["finish_reason"], "length");

    // the Rust proxy's signal stream (zbus matches the owner of the proxy's destination)
    let mut tokens = proxy.receive_token().await.unwrap();
    let forger = d.connect().await;
    let me = conn.unique_name().unwrap().to_string();
    forger.emit_signal(Some(me.as_str()), MANAGER_PATH, MANAGER_INTERFACE, "Token", &(0u64, "FORGED")).await.unwrap();
    let id = proxy.generate("tiny", PROMPT, opts(4, None)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), futures_util::StreamExt::next(&mut tokens))
        .await
        .unwrap()
        .unwrap();
    let a = first.args().unwrap();
    assert_eq!((a.request, a.text == "FORGED"), (id, false), "the proxy's stream took a forged token");
}

/// With one worker busy, a queued request with a long prompt is cancelled: it ends
/// `cancelled` without computing its prompt (no prompt statistics), and at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_cancelled_while_queued_computes_nothing() {
    let long = with_context(TINY, 4096);
    let d = Daemon::start_with("max_parallel = 1\n", &[("long", long.path())]).await;
    let (conn, proxy) = d.proxy().await;
    let mut signals = manager_signals(&conn).await;
    let busy = proxy.generate("long", PROMPT, opts(3000, None)).await.unwrap();
    let queued =
        proxy.generate("long", &"Once upon a time there was a lighthouse. ".repeat(60), opts(8, None)).await.unwrap();
    let state =
        requests(&proxy).await.into_iter().find(|r| field(r, "id").and_then(|v| u64::try_from(v).ok()) == Some(queued));
    assert_eq!(
        state.and_then(|r| <&str>::try_from(field(&r, "state").unwrap()).ok().map(str::to_owned)),
        Some("queued".into())
    );
    proxy.cancel(queued).await.unwrap();
    proxy.cancel(busy).await.unwrap();
    let mut ended = HashMap::new();
    while ended.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(60), futures_util::StreamExt::next(&mut signals))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if msg.header().member().map(|m| m.as_str()) == Some("Finished") {
            let (id, stats): (u64, llamad_api::FinishStats) = msg.body().deserialize().unwrap();
            ended.insert(id, stats);
        }
    }
    let q = &ended[&queued];
    assert_eq!(q.finish_reason, "cancelled");
    assert_eq!((q.prompt_tokens, q.prompt_tokens_per_s, q.generated_tokens), (None, None, Some(0)), "{q:?}");
    quiet(&conn, &proxy).await;
}

/// `LLAMAD_FAULTS=run@5`: the first request's work panics at its fifth piece of text. It
/// ends with `GenerationFailed`; nothing it held is left (request entry, KV reservation, the
/// session's busy flag); the model is unloaded once idle and the next request is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_a_requests_work_ends_that_request_only_and_releases_everything() {
    let d = Daemon::start_env("", &[], &[("LLAMAD_FAULTS", "run@5")]).await;
    let (conn, proxy) = d.proxy().await;
    let path = proxy.open_session("tiny", HashMap::new()).await.unwrap();
    let session = SessionProxy::builder(&conn).path(path).unwrap().build().await.unwrap();
    let mut signals = manager_signals(&conn).await;
    let user = |text: &str| HashMap::from([("role", Value::from("user")), ("content", Value::from(text.to_string()))]);
    let id = session.chat(&[user("Tell me a story.")], opts(40, None)).await.unwrap();
    let (_, stats, _) = collect(&mut signals, id).await;
    assert_eq!(stats.finish_reason, "error");
    assert_eq!(stats.error_name.as_deref(), Some("org.llamad.Llama1.Error.GenerationFailed"), "{stats:?}");
    assert!(stats.error.as_deref().unwrap_or("").contains("fault injected"), "{stats:?}");
    quiet(&conn, &proxy).await;
    assert!(d.log().contains("a request's work panicked"), "{}", d.log());
    // the session is free again, its conversation as it was; the model serves (reloaded)
    let id = session.chat(&[user("Tell me a story.")], opts(8, None)).await.expect("the session is not left busy");
    let (_, stats, _) = collect(&mut signals, id).await;
    assert_eq!(stats.finish_reason, "length", "{stats:?}");
    assert_eq!(session.turns().await.unwrap(), 1, "the failed turn left the conversation as it was");
    quiet(&conn, &proxy).await;
}

/// `LLAMAD_FAULTS=batch-step@20` on ONNX Runtime's batched decoding: the pass that panics
/// fails every row's request (each ends with `GenerationFailed`, none hangs); the model,
/// whose batch state may be corrupt, is unloaded once idle and serves again once loaded.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_the_batch_leader_ends_its_rows_and_no_one_waits_for_ever() {
    let d = Daemon::start_env(
        "max_parallel = 3\nkeep_alive = -1\n",
        &[("fused", &common::fixture("tiny-gguf-fused"))],
        &[("LLAMAD_FAULTS", "batch-step@20")],
    )
    .await;
    let (conn, proxy) = d.proxy().await;
    proxy.load_model("fused", common::client::backend_opt("onnxruntime")).await.unwrap();
    let mut signals = manager_signals(&conn).await;
    let mut ids = vec![];
    for _ in 0..3 {
        ids.push(proxy.generate("fused", PROMPT, opts(60, None)).await.unwrap());
    }
    let mut ended = HashMap::new();
    while ended.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(60), futures_util::StreamExt::next(&mut signals))
            .await
            .unwrap_or_else(|_| panic!("a request never ended: {}", d.log()))
            .unwrap()
            .unwrap();
        if msg.header().member().map(|m| m.as_str()) == Some("Finished") {
            let (id, stats): (u64, llamad_api::FinishStats) = msg.body().deserialize().unwrap();
            ended.insert(id, stats);
        }
    }
    let failed: Vec<_> = ended.values().filter(|s| s.finish_reason == "error").collect();
    assert!(!failed.is_empty(), "the injected fault failed a step: {ended:?}");
    for s in failed {
        assert_eq!(s.error_name.as_deref(), Some("org.llamad.Llama1.Error.GenerationFailed"), "{s:?}");
    }
    quiet(&conn, &proxy).await;
    // the pass's state may be corrupt: the model is unloaded once idle, then serves again
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.loaded_models().await.unwrap().iter().any(|m| m == "fused") {
        assert!(Instant::now() < deadline, "the faulted model was not unloaded: {}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.load_model("fused", common::client::backend_opt("onnxruntime")).await.unwrap();
    let id = proxy.generate("fused", PROMPT, opts(20, None)).await.unwrap();
    assert_eq!(collect(&mut signals, id).await.1.finish_reason, "length");
}

/// A model whose manifest lists a large file takes seconds to load (every byte is hashed
/// first); meanwhile a request for a model already loaded is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_for_a_loaded_model_does_not_wait_behind_another_load() {
    let slow = copy_fixture(TINY);
    // 3 GiB of zeros (a sparse file): hashing it takes seconds
    let pad = std::fs::File::create(slow.path().join("padding.bin")).unwrap();
    pad.set_len(3 << 30).unwrap();
    let status = common::bus::target_command("llamad").args(["manifest"]).arg(slow.path()).status().unwrap();
    assert!(status.success());
    let d = Daemon::start_with("", &[("slow", slow.path())]).await;
    let (conn, proxy) = d.proxy().await;
    proxy.load_model("tiny", HashMap::new()).await.unwrap();
    let loading = {
        let (c, p) = d.proxy().await;
        tokio::spawn(async move {
            let t = Instant::now();
            p.load_model("slow", HashMap::new()).await.unwrap();
            drop(c);
            t.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let mut s = manager_signals(&conn).await;
    let id = proxy.generate("tiny", PROMPT, opts(8, None)).await.unwrap();
    assert_eq!(collect(&mut s, id).await.1.finish_reason, "length");
    let served = t.elapsed();
    assert!(!loading.is_finished(), "the slow load ended before the request was served: make the file larger");
    let load = loading.await.unwrap();
    eprintln!("request served in {served:?} while the other model loaded for {load:?}");
    assert!(served + Duration::from_millis(200) < load, "served in {served:?}, the load took {load:?}");
}

/// A model can generate U+0000 (Llama's byte token `<0x00>`), which no D-Bus string may
/// hold: sent as is, the bus disconnected the daemon and every client lost it (found by the
/// chaos suite). Here a regular expression makes the tiny model generate it: the client
/// gets U+FFFD in its place, and the daemon serves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_generated_nul_character_does_not_cost_the_daemon_its_bus_connection() {
    let d = Daemon::start("").await;
    let (conn, proxy) = d.proxy().await;
    let mut signals = manager_signals(&conn).await;
    let mut o = opts(8, None);
    o.insert("regex", Value::from("\\x00ok"));
    let id = proxy.generate("tiny", PROMPT, o).await.unwrap();
    let (text, stats, _) = collect(&mut signals, id).await;
    assert_eq!(stats.finish_reason, "eos", "{stats:?}");
    assert_eq!(text, "\u{FFFD}ok");
    let id = proxy.generate("tiny", PROMPT, opts(4, None)).await.expect("the daemon is still on the bus");
    assert_eq!(collect(&mut signals, id).await.1.finish_reason, "length");
}
