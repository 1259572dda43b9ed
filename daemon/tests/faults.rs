//! The fault suite, on a real daemon: a flood of clients (the queue answers
//! `Busy`, every admitted request finishes, nothing stays behind), the daemon
//! killed mid-stream and started again (clients see its name go; nothing on
//! disk changed), a model directory replaced while its model is loaded, and a
//! loaded model's files rewritten and truncated in place.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::bus::Daemon;
use common::client::{PROMPT, backend_opt, collect, manager_signals, request_opts};
use common::{copy_fixture, with_context};
use futures_util::StreamExt;
use llamad_api::{Error, ManagerProxy};

const TINY: &str = "tiny-llama2-optimum-fp32";

/// Waits until the daemon lists no request.
async fn until_idle(proxy: &ManagerProxy<'_>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !proxy.list_requests().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "requests were left behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 20 clients send 1,000 requests between them as fast as the bus takes them. The bounded
/// queue answers `Busy` to what does not fit; every request admitted finishes; afterwards no
/// request, usage or memory is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_clients_gets_busy_and_leaves_nothing_behind() {
    let d = Daemon::start("max_parallel = 2\nmax_queue = 16").await;
    let (conn, proxy) = d.proxy().await;
    // warm: the model loaded, the workers' buffers and the bus's matches made
    let mut signals = manager_signals(&conn).await;
    for seed in 0..8 {
        let id = proxy.generate("tiny", PROMPT, request_opts(seed, 8)).await.unwrap();
        collect(&mut signals, id).await;
    }
    until_idle(&proxy).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = d.rss();

    let clients: Vec<_> = (0..20)
        .map(|c| {
            let address = d.address.clone();
            tokio::spawn(async move {
                let conn = zbus::connection::Builder::address(address.as_str()).unwrap().build().await.unwrap();
                let proxy = ManagerProxy::new(&conn).await.unwrap();
                let mut signals = manager_signals(&conn).await;
                let (mut admitted, mut busy) = (vec![], 0);
                for i in 0..50u64 {
                    match proxy.generate("tiny", PROMPT, request_opts(c * 100 + i, 8)).await.map_err(Error::from) {
                        Ok(id) => admitted.push(id),
                        Err(Error::Busy(m)) => {
                            assert!(m.contains("max_queue"), "{m}");
                            busy += 1;
                        }
                        Err(e) => panic!("client {c}, request {i}: {e:?}"),
                    }
                }
                // the requests' streams interleave on this connection: until each has finished
                let mut waiting: std::collections::HashSet<u64> = admitted.iter().copied().collect();
                let mut finished = 0;
                while !waiting.is_empty() {
                    let m = signals.next().await.unwrap().unwrap();
                    if m.header().member().map(|m| m.as_str()) != Some("Finished") {
                        continue;
                    }
                    let (id, stats): (u64, llamad_api::FinishStats) = m.body().deserialize().unwrap();
                    assert!(waiting.remove(&id), "client {c}: Finished for request {id}, not one of its own");
                    assert_eq!(stats.finish_reason, "length", "{stats:?}");
                    finished += 1;
                }
                (admitted.len(), busy, finished)
            })
        })
        .collect();
    let (mut admitted, mut busy, mut finished) = (0, 0, 0);
    for c in clients {
        let (a, b, f) = c.await.unwrap();
        (admitted, busy, finished) = (admitted + a, busy + b, finished + f);
    }
    eprintln!("1000 requests: {admitted} admitted and finished, {busy} refused Busy");
    assert_eq!(admitted + busy, 1000);
    assert_eq!(finished, admitted);
    assert!(busy > 0, "the flood never filled the queue: it tested nothing");
    assert!(admitted >= 16, "{admitted} admitted");

    until_idle(&proxy).await;
    let usage = proxy.list_usage().await.unwrap();
    for u in &usage {
        assert_eq!(u.get("running").and_then(|v| u32::try_from(v).ok()), Some(0), "{usage:?}");
    }
    // memory: back near the baseline once the daemon is idle (what the flood's requests held
    // is freed; the prompt cache may keep recent prompts' caches, a few KiB on this model)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = d.rss();
        if now <= baseline + baseline / 10 + (4 << 20) {
            eprintln!("resident: {} KiB before the flood, {} KiB after", baseline >> 10, now >> 10);
            break;
        }
        assert!(Instant::now() < deadline, "resident memory grew: {} KiB → {} KiB", baseline >> 10, now >> 10);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // and it still serves
    let id = proxy.generate("tiny", PROMPT, request_opts(1, 4)).await.unwrap();
    collect(&mut signals, id).await;
}

fn digest_of(dir: &Path) -> Vec<(String, u64, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), bytes.len() as u64, bytes)
        })
        .collect();
    v.sort();
    v
}

/// SIGKILL while a request streams: the client sees the daemon's name leave the bus (its
/// request will not finish), the model's files are as they were, and a daemon started again
/// serves the same text.
#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_stream_the_daemon_comes_back_and_nothing_on_disk_changed() {
    let long = with_context(TINY, 4096);
    let before = digest_of(long.path());
    let mut d = Daemon::start_with("", &[("long", long.path())]).await;
    let (conn, proxy) = d.proxy().await;
    let reference = {
        let mut s = manager_signals(&conn).await;
        let id = proxy.generate("long", PROMPT, request_opts(3, 32)).await.unwrap();
        collect(&mut s, id).await.0
    };
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    let mut owners = dbus.receive_name_owner_changed().await.unwrap();
    let mut signals = manager_signals(&conn).await;
    let id = proxy.generate("long", PROMPT, request_opts(7, 3000)).await.unwrap();
    // a few pieces stream, then the daemon dies
    let mut pieces = 0;
    while pieces < 5 {
        let m = signals.next().await.unwrap().unwrap();
        if m.header().member().map(|m| m.as_str()) == Some("Token") {
            pieces += 1;
        }
    }
    let pid = d.llamad.as_ref().unwrap().id();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(change) = owners.next().await {
            let a = change.args().unwrap();
            if a.name().as_str() == llamad_api::BUS_NAME && a.new_owner().is_none() {
                return;
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "the client did not see org.llamad.Llama1 leave the bus");
    let e = Error::from(proxy.cancel(id).await.unwrap_err());
    assert!(!matches!(e, Error::UnknownRequest(_)), "a dead daemon answered: {e:?}");

    assert_eq!(digest_of(long.path()), before, "the model's files changed");
    d.restart().await;
    let (conn, proxy) = d.proxy().await;
    let mut s = manager_signals(&conn).await;
    let id = proxy.generate("long", PROMPT, request_opts(3, 32)).await.unwrap();
    assert_eq!(collect(&mut s, id).await.0, reference, "the restarted daemon serves the same text");
}

/// A model directory replaced (renamed over, as a package update does) while its model is
/// loaded: the loaded model goes on serving until it is unloaded; loading again reads the
/// new one. A directory replaced by a broken model fails to load by name, and the daemon
/// goes on serving the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_model_directory_replaced_while_loaded() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("m");
    let place = |fixture: &str| {
        let fresh = copy_fixture(fixture);
        let staged = root.path().join("staged");
        std::fs::rename(fresh.keep(), &staged).unwrap();
        if dir.exists() {
            let old = tempfile::tempdir_in(root.path()).unwrap().keep();
            std::fs::rename(&dir, old.join("m")).unwrap();
        }
        std::fs::rename(&staged, &dir).unwrap();
    };
    place(TINY);
    let other = common::fixture("tiny-gguf-fp32");
    let d = Daemon::start_with("", &[("m", &dir), ("other", &other)]).await;
    let (conn, proxy) = d.proxy().await;
    let mut signals = manager_signals(&conn).await;
    let mut text = async |model: &str| -> Result<String, Error> {
        let id = proxy.generate(model, PROMPT, request_opts(5, 12)).await.map_err(Error::from)?;
        Ok(collect(&mut signals, id).await.0)
    };
    let tiny = text("m").await.unwrap();
    assert_eq!(text("tiny").await.unwrap(), tiny, "the same model under two names");
    let other_text = text("other").await.unwrap();
    assert_ne!(other_text, tiny);

    place("tiny-gguf-fp32");
    assert_eq!(text("m").await.unwrap(), tiny, "the loaded model serves on");
    let info = proxy.list_models().await.unwrap();
    assert!(info.iter().any(|m| m.name == "m"), "{info:?}");
    proxy.unload_model("m").await.unwrap();
    assert_eq!(text("m").await.unwrap(), other_text, "loaded again: the new directory's model");

    // replaced by a broken one: a typed error naming the file, and the rest serve on
    proxy.unload_model("m").await.unwrap();
    place(TINY);
    let onnx = dir.join("model.onnx");
    let len = std::fs::metadata(&onnx).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&onnx).unwrap().set_len(len / 2).unwrap();
    match text("m").await {
        Err(Error::ModelLoadFailed(m)) => assert!(m.contains("model.onnx"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(text("tiny").await.unwrap(), tiny);
}

/// A loaded model's files rewritten and truncated in place (`cp` over them, a download
/// started again). ONNX Runtime maps a model's external data and reads parts of it from
/// the file for as long as the model is loaded: unguarded, the next request died of
/// SIGBUS. The loaded model serves on with the weights it loaded, on both backends; once
/// unloaded, the broken files are refused with a typed error naming one.
#[tokio::test(flavor = "multi_thread")]
async fn a_loaded_models_files_rewritten_and_truncated_in_place() {
    // genai int4 runs on ONNX Runtime only (packed Q/K/V); the optimum one on tract.
    let (ort_dir, tract_dir) = (copy_fixture("tiny-llama2-genai-int4"), copy_fixture(TINY));
    let d = Daemon::start_with("", &[("g", ort_dir.path()), ("t", tract_dir.path())]).await;
    let (conn, proxy) = d.proxy().await;
    let mut signals = manager_signals(&conn).await;
    let pid = d.llamad.as_ref().unwrap().id();
    let mut text = async |model: &str| -> Result<String, Error> {
        let id = proxy.generate(model, PROMPT, request_opts(3, 12)).await.map_err(Error::from)?;
        match tokio::time::timeout(Duration::from_secs(30), collect(&mut signals, id)).await {
            Ok((text, ..)) => Ok(text),
            Err(_) => {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let state = status.lines().find(|l| l.starts_with("State:")).unwrap_or("State: gone");
                panic!("{model}: no answer in 30 s; the daemon's {state}")
            }
        }
    };
    proxy.load_model("g", backend_opt("onnxruntime")).await.unwrap();
    proxy.load_model("t", backend_opt("tract")).await.unwrap();
    let (g, t) = (text("g").await.unwrap(), text("t").await.unwrap());
    assert_eq!(mapped_under(pid, ort_dir.path()), 0, "ONNX Runtime's mappings of the files were replaced by copies");
    let graphs = graph_files(&[ort_dir.path(), tract_dir.path()]);
    for path in &graphs {
        let len = std::fs::metadata(path).unwrap().len() as usize;
        std::fs::write(path, vec![0u8; len]).unwrap();
    }
    assert_eq!(text("g").await.unwrap(), g, "rewritten: the loaded model serves on, unchanged");
    assert_eq!(text("t").await.unwrap(), t);
    for path in &graphs {
        std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
    }
    assert_eq!(text("g").await.unwrap(), g, "truncated: the loaded model serves on, unchanged");
    assert_eq!(text("t").await.unwrap(), t);
    for m in ["g", "t"] {
        proxy.unload_model(m).await.unwrap();
        match text(m).await {
            Err(Error::ModelLoadFailed(msg)) => assert!(msg.contains("model.onnx"), "{msg}"),
            other => panic!("{m}: {other:?}"),
        }
    }
    drop(d);

    // `memory.private_model_files = false` keeps ONNX Runtime's mappings (the premise above).
    let kept = copy_fixture("tiny-llama2-genai-int4");
    let d = Daemon::start_with("[memory]\nprivate_model_files = false", &[("g", kept.path())]).await;
    let (_conn, proxy) = d.proxy().await;
    proxy.load_model("g", backend_opt("onnxruntime")).await.unwrap();
    assert!(mapped_under(d.llamad.as_ref().unwrap().id(), kept.path()) > 0, "ONNX Runtime maps the external data");
}

/// The graphs and their external data (`*.onnx`, `*.data`) in `dirs`.
fn graph_files(dirs: &[&Path]) -> Vec<std::path::PathBuf> {
    let in_dir = |dir: &&Path| std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
    let files: Vec<_> = dirs.iter().flat_map(in_dir).collect();
    files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "onnx" || e == "data")).collect()
}

/// How many mappings of process `pid` are of files under `dir`.
fn mapped_under(pid: u32, dir: &Path) -> usize {
    let dir = std::fs::canonicalize(dir).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines().filter(|l| l.split_whitespace().nth(5).is_some_and(|p| Path::new(p).starts_with(&dir))).count()
}
