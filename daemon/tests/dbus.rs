//! llamad on a private D-Bus, driven the ways clients drive it: the Rust
//! proxy, `llamactl` as a process, `busctl`, and a Python client with no
//! llamad code. Streamed text must equal the core's own result for the same
//! seed; every error is a typed `org.llamad.Llama1.Error.*`.

mod common;
use std::collections::HashMap;
use std::time::Duration;

use common::bus::{Daemon, python_client};
use common::client::*;
use common::*;
use futures_util::StreamExt;
use llamad_api::{Error, FinishStats, MANAGER_INTERFACE, MANAGER_PATH};
use zbus::zvariant::Value;
use zbus::{MatchRule, MessageStream, message::Type as MsgType};

#[tokio::test(flavor = "multi_thread")]
async fn introspection_matches_the_installed_xml() {
    let d = Daemon::start("").await;
    let conn = d.connect().await;
    let intro = zbus::fdo::IntrospectableProxy::builder(&conn)
        .destination(llamad_api::BUS_NAME)
        .unwrap()
        .path(MANAGER_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let served = zbus_xml::Node::from_reader(intro.introspect().await.unwrap().as_bytes()).unwrap();
    let file = std::fs::read_to_string(repo().join("systemd/org.llamad.Llama1.Manager.xml")).unwrap();
    let installed = zbus_xml::Node::from_reader(file.as_bytes()).unwrap();
    let pick = |n: &zbus_xml::Node<'_>| {
        let i = n.interfaces().iter().find(|i| i.name() == MANAGER_INTERFACE).expect("Manager interface").clone();
        format!("{i:?}")
    };
    assert_eq!(pick(&served), pick(&installed), "systemd/org.llamad.Llama1.Manager.xml is out of date");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_models_and_streamed_text_equal_to_the_core() {
    let d = Daemon::start("").await;
    let (conn, proxy) = d.proxy().await;
    assert_eq!(proxy.version().await.unwrap(), env!("CARGO_PKG_VERSION"));
    assert!(proxy.backends().await.unwrap().contains(&"tract".to_string()));
    // The CPU-only onnxruntime wheel the tests use offers the CPU provider only.
    assert_eq!(proxy.providers().await.unwrap(), vec!["cpu".to_string()]);
    let models = proxy.list_models().await.unwrap();
    let tiny = models.iter().find(|m| m.name == "tiny").unwrap();
    assert_eq!(tiny.layout.as_deref(), Some("optimum"));
    assert_eq!(tiny.context_length, Some(256));
    assert_eq!(tiny.loaded, Some(false));
    let genai = models.iter().find(|m| m.name == "tiny-genai").unwrap();
    assert_eq!(genai.quantization.as_deref(), Some("int4 (MatMulNBits, block 32)"));

    let (text, stats, pieces) = run(&conn, &proxy, 7, 40).await;
    assert_eq!(text, core_text(7, 40));
    assert!(pieces > 1, "the text came in one piece: not streamed");
    assert_eq!(stats.finish_reason, "length");
    assert_eq!(stats.generated_tokens, Some(40));
    assert_eq!(stats.seed, Some(7));
    assert_eq!(stats.backend.as_deref(), Some("tract"));
    assert_eq!(loaded_now(&proxy).await, vec!["tiny".to_string()]);
    // Same seed, same text; another seed, another text.
    assert_eq!(run(&conn, &proxy, 7, 40).await.0, text);
    assert_ne!(run(&conn, &proxy, 8, 40).await.0, text);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_clients_get_complete_uninterleaved_streams() {
    let d = Daemon::start("max_parallel = 3").await;
    let mut tasks = vec![];
    for seed in 1..=5u64 {
        let (conn, proxy) = d.proxy().await;
        tasks.push(tokio::spawn(async move { (seed, run(&conn, &proxy, seed, 30).await) }));
    }
    for t in tasks {
        let (seed, (text, stats, _)) = t.await.unwrap();
        assert_eq!(stats.finish_reason, "length");
        assert_eq!(text, core_text(seed, 30), "client with seed {seed}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn llamactl_busctl_and_a_python_client() {
    let d = Daemon::start("").await;
    let expected = core_text(3, 25);
    // llamactl as a process.
    let out = d
        .llamactl()
        .args(["--json", "run", "tiny", PROMPT, "--seed", "3", "--max-tokens", "25", "--temperature", "0.8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["text"], expected);
    assert_eq!(v["stats"]["generated_tokens"], 25);
    let out = d.llamactl().args(["--json", "models"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.as_array().unwrap().iter().any(|m| m["name"] == "tiny-genai"));
    let out = d.llamactl().args(["run", "nope", "hi"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "unknown model exit code");
    let out = d.llamactl().args(["run", "tiny", "hi", "--top-p", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "invalid argument exit code");
    // llamactl chat, reading turns from stdin.
    let mut chat = d
        .llamactl()
        .args(["--json", "chat", "tiny", "--max-tokens", "5", "--temperature", "0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    chat.stdin.take().unwrap().write_all(b"Hello there\nAnd again\n").unwrap();
    let out = chat.wait_with_output().unwrap();
    assert!(out.status.success());
    let turns: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(turns.len(), 2);
    assert!(turns.iter().all(|t| t["stats"]["generated_tokens"].as_u64().unwrap() >= 1));

    // busctl: a plain method call and a property.
    let out = std::process::Command::new("busctl")
        .args(["--address", &d.address, "call", llamad_api::BUS_NAME, MANAGER_PATH, MANAGER_INTERFACE, "ListModels"])
        .output()
        .expect("busctl (systemd) must be installed");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && s.contains("\"tiny-genai\""), "{s}");
    let out = std::process::Command::new("busctl")
        .args(["--address", &d.address, "call", llamad_api::BUS_NAME, MANAGER_PATH, MANAGER_INTERFACE])
        .args(["Generate", "ssa{sv}", "nope", "hi", "0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"), "{}", String::from_utf8_lossy(&out.stderr));

    // Python with jeepney streams the same text.
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(python_client())
        .args([&d.address, "tiny", PROMPT, "3", "25"])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["text"], expected);
    assert_eq!(v["finish_reason"], "length");
}

/// `prompt_lookup` over D-Bus: the same text as without it, and the draft counts in `Finished`.
#[tokio::test(flavor = "multi_thread")]
async fn prompt_lookup_reports_its_drafts_and_changes_no_text() {
    let d = Daemon::start("").await;
    let (conn, proxy) = d.proxy().await;
    let prompt = "one two three four five one two three four five one two three";
    let greedy = |lookup: u32| {
        HashMap::from([
            ("max_tokens", Value::from(40u32)),
            ("temperature", Value::from(0.0f64)),
            ("repetition_penalty", Value::from(1.0f64)),
            ("prompt_lookup", Value::from(lookup)),
        ])
    };
    let (plain, s0, _) = stream(&conn, &proxy, "tiny", prompt, greedy(0)).await.unwrap();
    let (spec, s1, _) = stream(&conn, &proxy, "tiny", prompt, greedy(6)).await.unwrap();
    assert_eq!(spec, plain);
    assert_eq!((s0.draft_tokens, s0.draft_accepted), (None, None));
    let (drafted, kept) = (s1.draft_tokens.unwrap(), s1.draft_accepted.unwrap());
    assert!(drafted > 0 && kept <= drafted, "{kept} of {drafted}");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_typed() {
    let d = Daemon::start("").await;
    std::fs::create_dir(d.dir.path().join("models/broken")).unwrap();
    std::fs::write(d.dir.path().join("models/broken/config.json"), "{ not json").unwrap();
    let (_conn, proxy) = d.proxy().await;
    let err = |r: zbus::Result<u64>| Error::from(r.unwrap_err());
    assert!(matches!(err(proxy.generate("nope", "hi", request_opts(1, 5)).await), Error::UnknownModel(_)));
    assert!(matches!(err(proxy.generate("../etc", "hi", request_opts(1, 5)).await), Error::InvalidArgs(_)));
    assert!(matches!(err(proxy.generate("tiny", "", request_opts(1, 5)).await), Error::InvalidArgs(_)));
    match err(proxy.generate("tiny", "hi", HashMap::from([("top_p", Value::from(2.0f64))])).await) {
        Error::InvalidArgs(m) => assert!(m.contains("top_p"), "{m}"),
        e => panic!("{e:?}"),
    }
    match err(proxy.generate("tiny", "hi", HashMap::from([("max_tokens", Value::from("ten"))])).await) {
        Error::InvalidArgs(m) => assert!(m.contains("max_tokens"), "{m}"),
        e => panic!("{e:?}"),
    }
    for bad in [Value::from(33u32), Value::from("eight"), Value::from(-1i32)] {
        match err(proxy.generate("tiny", "hi", HashMap::from([("prompt_lookup", bad)])).await) {
            Error::InvalidArgs(m) => assert!(m.contains("prompt_lookup"), "{m}"),
            e => panic!("{e:?}"),
        }
    }
    match err(proxy.generate("tiny", "hi", HashMap::from([("temprature", Value::from(1.0f64))])).await) {
        Error::InvalidArgs(m) => assert!(m.contains("temprature"), "{m}"),
        e => panic!("{e:?}"),
    }
    match err(proxy.generate("tiny", &"word ".repeat(400), request_opts(1, 5)).await) {
        Error::ContextOverflow(m) => assert!(m.contains("256"), "{m}"),
        e => panic!("{e:?}"),
    }
    match err(proxy.generate("broken", "hi", request_opts(1, 5)).await) {
        Error::ModelLoadFailed(m) => assert!(m.contains("config.json"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        err(proxy.chat("tiny", &[("robot".into(), "hi".into())], request_opts(1, 5)).await),
        Error::InvalidArgs(_)
    ));
    assert!(matches!(
        err(proxy.chat("tiny", &[("assistant".into(), "hi".into())], request_opts(1, 5)).await),
        Error::InvalidArgs(_)
    ));
    // The stories model has no tokenizer: the daemon, which serves text, cannot load it.
    match err(proxy.generate("stories", "hi", request_opts(1, 5)).await) {
        Error::ModelLoadFailed(m) => assert!(m.contains("tokenizer.json"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert!(matches!(Error::from(proxy.cancel(12345).await.unwrap_err()), Error::UnknownRequest(_)));
    assert!(matches!(Error::from(proxy.unload_model("tiny-genai").await.unwrap_err()), Error::InvalidArgs(_)));
    let e = Error::from(proxy.load_model("tiny", HashMap::from([("backend", Value::from("gpu"))])).await.unwrap_err());
    assert!(matches!(e, Error::InvalidArgs(_)), "{e:?}");
    for bad in [
        HashMap::from([("parallel", Value::from(0u32))]),
        HashMap::from([("parallel", Value::from(65u32))]),
        HashMap::from([("parallel", Value::from(u32::MAX))]),
        HashMap::from([("parallel", Value::from(-1i32))]),
        HashMap::from([("context", Value::from(0u32))]),
        HashMap::from([("context", Value::from("long"))]),
        HashMap::from([("backend", Value::from("gpu"))]),
        HashMap::from([("backend", Value::from(1u32))]),
        HashMap::from([("ctx", Value::from(5u32))]),
    ] {
        let e = Error::from(proxy.estimate("tiny", bad.clone()).await.unwrap_err());
        assert!(matches!(e, Error::InvalidArgs(_)), "{bad:?}: {e:?}");
    }
    // A context beyond the model's (256 tokens) is refused, not cut down.
    match Error::from(proxy.estimate("tiny", HashMap::from([("context", Value::from(257u32))])).await.unwrap_err()) {
        Error::ContextOverflow(m) => assert!(m.contains("256"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert!(matches!(Error::from(proxy.estimate("../etc", HashMap::new()).await.unwrap_err()), Error::InvalidArgs(_)));
    // Integers may come as any integer type, as for Generate.
    let e = proxy.estimate("tiny", HashMap::from([("context", Value::from(64i32))])).await.unwrap();
    assert_eq!(e.context, 64);
    assert!(matches!(Error::from(proxy.estimate("nope", HashMap::new()).await.unwrap_err()), Error::UnknownModel(_)));
    proxy.load_model("tiny-genai", HashMap::from([("backend", Value::from("onnxruntime"))])).await.unwrap();
    let m = proxy.list_models().await.unwrap().into_iter().find(|m| m.name == "tiny-genai").unwrap();
    assert_eq!(m.backend.as_deref(), Some("onnxruntime"));
    proxy.unload_model("tiny-genai").await.unwrap();
    // Error names on the wire are the documented ones.
    let conn = d.connect().await;
    let reply = conn
        .call_method(
            Some(llamad_api::BUS_NAME),
            MANAGER_PATH,
            Some(MANAGER_INTERFACE),
            "Generate",
            &("nope", "hi", HashMap::<&str, Value<'_>>::new()),
        )
        .await
        .unwrap_err();
    match reply {
        zbus::Error::MethodError(name, _, _) => assert_eq!(name.as_str(), "org.llamad.Llama1.Error.UnknownModel"),
        e => panic!("{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_busy() {
    let d = Daemon::start("max_queue = 1\nmax_parallel = 1").await;
    let (_c, proxy) = d.proxy().await;
    let mut busy = 0;
    let mut accepted = 0;
    // One running and one queued at most: submissions every 5 ms outpace 200-token requests.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        match proxy.generate("tiny", PROMPT, request_opts(1, 200)).await {
            Ok(_) => accepted += 1,
            Err(e) => match Error::from(e) {
                Error::Busy(m) => {
                    assert!(m.contains("max_queue"), "{m}");
                    busy += 1
                }
                other => panic!("{other:?}"),
            },
        }
    }
    assert!(accepted >= 2 && busy >= 1, "accepted {accepted}, busy {busy}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_cancels_its_requests() {
    let d = Daemon::start("max_parallel = 1\nmax_queue = 16").await;
    {
        let (conn, proxy) = d.proxy().await;
        for _ in 0..16 {
            let _ = proxy.generate("tiny", PROMPT, request_opts(1, 250)).await;
        }
        drop(proxy);
        conn.graceful_shutdown().await;
    }
    // Another client sees the queue drain long before 16 × 250 tokens could be computed.
    let (_c, proxy) = d.proxy().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while proxy.requests_running().await.unwrap() + proxy.requests_queued().await.unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "requests still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = d.log();
    // the audit records (one per request) say how each ended
    let audit = |l: &&str| l.contains(&format!("MESSAGE_ID={}", llamad::audit::REQUEST_ID));
    let cancelled = log.lines().filter(audit).filter(|l| l.ends_with("LLAMAD_RESULT=cancelled")).count();
    assert!(log.contains("client left the bus"), "{log}");
    assert!(cancelled >= 8, "only {cancelled} of 16 requests were cancelled:\n{log}");
    // A cancelled request stops at the next token: none of them ran to max_tokens.
    let full = log.lines().filter(audit).filter(|l| l.contains("LLAMAD_TOKENS_OUT=250 ")).count();
    assert_eq!(full, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_sends_final_messages_and_exits_cleanly() {
    let mut d = Daemon::start("max_parallel = 1").await;
    let (conn, proxy) = d.proxy().await;
    let rule = MatchRule::builder()
        .msg_type(MsgType::Signal)
        .interface(MANAGER_INTERFACE)
        .unwrap()
        .member("Finished")
        .unwrap()
        .build();
    let mut finished = MessageStream::for_match_rule(rule, &conn, Some(100)).await.unwrap();
    let mut ids = vec![];
    for _ in 0..4 {
        ids.push(proxy.generate("tiny", PROMPT, request_opts(1, 250)).await.unwrap());
    }
    let status = tokio::task::block_in_place(|| d.terminate());
    assert!(status.success(), "llamad exited with {status}: {}", d.log());
    let mut reasons = HashMap::new();
    while reasons.len() < ids.len() {
        let msg = tokio::time::timeout(Duration::from_secs(5), finished.next())
            .await
            .expect("a final message per request")
            .unwrap()
            .unwrap();
        let (rid, stats): (u64, FinishStats) = msg.body().deserialize().unwrap();
        reasons.insert(rid, stats.finish_reason);
    }
    assert!(reasons.values().any(|r| r == "cancelled"), "{reasons:?}");
    assert!(reasons.values().all(|r| r == "cancelled" || r == "length"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn loading_and_unloading_are_for_admins() {
    // The tests run as root; another user (nobody) may generate but not unload.
    let d = Daemon::start("").await;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_c, proxy) = d.proxy().await;
    proxy.load_model("tiny", HashMap::new()).await.unwrap();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl", "--address", &d.address, "call"])
            .args([llamad_api::BUS_NAME, MANAGER_PATH, MANAGER_INTERFACE])
            .args(args)
            .output()
            .expect("setpriv (util-linux)")
    };
    let out = as_nobody(&["UnloadModel", "s", "tiny"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody unloaded a model");
    assert!(stderr.contains("uid 65534 may not load or unload"), "{stderr}");
    let out = as_nobody(&["ListModels"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(loaded_now(&proxy).await, vec!["tiny".to_string()]);
    proxy.unload_model("tiny").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_models_are_loaded_before_the_name_is_taken() {
    let d = Daemon::start("preload = [\"tiny\"]").await;
    let (_c, proxy) = d.proxy().await;
    // The name is only owned after preloading, so the model is there at once.
    assert_eq!(proxy.loaded_models().await.unwrap(), vec!["tiny".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn property_changes_are_announced() {
    let d = Daemon::start("").await;
    let (conn, proxy) = d.proxy().await;
    let rule = MatchRule::builder()
        .msg_type(MsgType::Signal)
        .interface("org.freedesktop.DBus.Properties")
        .unwrap()
        .member("PropertiesChanged")
        .unwrap()
        .path(MANAGER_PATH)
        .unwrap()
        .build();
    let mut changes = MessageStream::for_match_rule(rule, &conn, Some(1000)).await.unwrap();
    let (_, stats, _) = run(&conn, &proxy, 5, 20).await;
    assert_eq!(stats.finish_reason, "length");
    let mut announced = std::collections::BTreeSet::new();
    while !(announced.contains("LoadedModels") && announced.contains("RequestsRunning")) {
        let msg = tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .unwrap_or_else(|_| panic!("only {announced:?} were announced"))
            .unwrap()
            .unwrap();
        let (iface, changed, _): (String, HashMap<String, zbus::zvariant::OwnedValue>, Vec<String>) =
            msg.body().deserialize().unwrap();
        assert_eq!(iface, MANAGER_INTERFACE);
        announced.extend(changed.into_keys());
    }
    assert_eq!(proxy.loaded_models().await.unwrap(), vec!["tiny".to_string()]);
}

#[test]
fn llamactl_makes_its_man_page_and_completions() {
    let ctl = || common::bus::target_command("llamactl");
    let man = ctl().arg("man").output().unwrap();
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(man.status.success() && text.contains(".TH llamactl") && text.contains("chat"), "{text}");
    let bash = ctl().args(["completions", "bash"]).output().unwrap();
    assert!(bash.status.success() && String::from_utf8_lossy(&bash.stdout).contains("llamactl"));
    // No daemon on this address: exit code 3.
    let out = ctl().args(["--address", "unix:path=/nonexistent/bus", "status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}
