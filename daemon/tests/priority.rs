//! Priority classes and fair sharing, on a real daemon: background requests
//! pause between tokens while interactive work runs and then finish as they
//! would have alone; one app flooding the queue does not hold back another's
//! request; the class comes from the caller's slice (placed in a real cgroup)
//! or its rule, and a request may lower it but never raise it.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bus::{Daemon, python_client};
use common::cgroup::{Cgroup, request_of};
use common::client::{PROMPT, collect, manager_signals};
use common::with_context;
use futures_util::StreamExt;
use llamad_api::ManagerProxy;
use zbus::zvariant::{OwnedValue, Value};

const TINY: &str = "tiny-llama2-optimum-fp32";
const UNIFIED: &str = "/sys/fs/cgroup/unified";

fn opts(max_tokens: u32, priority: Option<&str>) -> HashMap<&'static str, Value<'static>> {
    let mut o = HashMap::from([
        ("seed", Value::from(7u64)),
        ("max_tokens", Value::from(max_tokens)),
        ("temperature", Value::from(0.8f64)),
    ]);
    if let Some(p) = priority {
        o.insert("priority", Value::from(p.to_string()));
    }
    o
}

fn text(r: &HashMap<String, OwnedValue>, key: &str) -> String {
    r.get(key).and_then(|v| <&str>::try_from(v).ok()).unwrap_or("").to_string()
}

async fn state_of(proxy: &ManagerProxy<'_>, id: u64) -> Option<(String, String)> {
    let list = proxy.list_requests().await.unwrap();
    let r = list.into_iter().find(|r| r.get("id").and_then(|v| u64::try_from(v).ok()) == Some(id))?;
    Some((text(&r, "state"), text(&r, "priority")))
}

/// Two background requests stream; an interactive one arrives. While it runs, neither
/// background request makes progress (at most the step in flight when it came), both are
/// listed as paused, and afterwards each finishes with exactly the text it gives alone.
#[tokio::test(flavor = "multi_thread")]
async fn background_requests_pause_for_interactive_work_and_lose_nothing() {
    let long = with_context(TINY, 4096);
    let d = Daemon::start_with("max_parallel = 4", &[("long", long.path())]).await;
    let (conn, proxy) = d.proxy().await;
    let mut signals = manager_signals(&conn).await;
    let bg: Vec<u64> = [
        proxy.generate("long", PROMPT, opts(3000, Some("background"))).await.unwrap(),
        proxy.generate("long", PROMPT, opts(3000, Some("background"))).await.unwrap(),
    ]
    .to_vec();
    for &id in &bg {
        assert_eq!(state_of(&proxy, id).await.map(|s| s.1), Some("background".into()));
    }
    // the events of the three requests, in the order the daemon sent them
    let mut events: Vec<(u64, String, String)> = vec![];
    let mut interactive = None;
    let mut seen_paused = 0;
    let mut finished = vec![];
    let deadline = Instant::now() + Duration::from_secs(120);
    while finished.len() < 3 {
        assert!(Instant::now() < deadline, "the requests did not finish");
        let msg = tokio::time::timeout(Duration::from_secs(60), signals.next()).await.unwrap().unwrap().unwrap();
        let member = msg.header().member().map(|m| m.to_string()).unwrap_or_default();
        if member != "Token" && member != "Finished" {
            continue;
        }
        let (id, piece) = if member == "Token" {
            msg.body().deserialize::<(u64, String)>().unwrap()
        } else {
            let (id, stats): (u64, llamad_api::FinishStats) = msg.body().deserialize().unwrap();
            assert_eq!(stats.finish_reason, "length", "request {id}: {stats:?}");
            (id, String::new())
        };
        events.push((id, member.clone(), piece));
        if member == "Finished" {
            finished.push(id);
        }
        // once both background requests stream, the interactive one comes
        if interactive.is_none() && bg.iter().all(|b| events.iter().filter(|e| e.0 == *b).count() >= 20) {
            let id = proxy.generate("long", PROMPT, opts(300, None)).await.unwrap();
            interactive = Some(id);
        }
        if let Some(i) = interactive
            && !finished.contains(&i)
            && seen_paused < 2
            && events.iter().any(|e| e.0 == i)
        {
            seen_paused = 0;
            for &b in &bg {
                if state_of(&proxy, b).await.map(|s| s.0).as_deref() == Some("paused") {
                    seen_paused += 1;
                }
            }
        }
    }
    let i = interactive.unwrap();
    assert_eq!(state_of(&proxy, i).await, None);
    assert_eq!(*finished.first().unwrap(), i, "the interactive request finished first: {finished:?}");
    assert_eq!(seen_paused, 2, "both background requests were listed as paused while it ran");
    let first = events.iter().position(|e| e.0 == i).unwrap();
    let last = events.iter().rposition(|e| e.0 == i).unwrap();
    for &b in &bg {
        let during = events[first..last].iter().filter(|e| e.0 == b && e.1 == "Token").count();
        assert!(during <= 1, "background request {b} streamed {during} pieces while interactive work ran");
    }
    // each background request's text is what it gives alone
    let alone = {
        let mut s = manager_signals(&conn).await;
        let id = proxy.generate("long", PROMPT, opts(3000, Some("background"))).await.unwrap();
        collect(&mut s, id).await.0
    };
    for &b in &bg {
        let text: String = events.iter().filter(|e| e.0 == b).map(|e| e.2.as_str()).collect();
        assert_eq!(text, alone, "request {b} lost or changed text by pausing");
    }
}

/// One app floods the queue; another's single request is served next, not after the flood.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_app_does_not_hold_back_another() {
    let long = with_context(TINY, 4096);
    let d = Daemon::start_with("max_parallel = 1\nmax_queue = 64", &[("long", long.path())]).await;
    let (flood_conn, flood) = d.proxy().await;
    let mut flood_signals = manager_signals(&flood_conn).await;
    let mut flooded = vec![];
    for _ in 0..12 {
        flooded.push(flood.generate("long", PROMPT, opts(400, None)).await.unwrap());
    }
    let flood_waiting =
        |listed: &[HashMap<String, OwnedValue>]| listed.iter().filter(|r| text(r, "app_id").is_empty()).count();
    // the other app: a Flatpak app's client (its account is its app id), placed in its scope
    let scope = "user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.example.Other-1.scope";
    let cg = Cgroup::new(UNIFIED, scope);
    let script = format!(
        "echo $$ > {} && exec /usr/bin/python3 {} {} long '{PROMPT}' 7 100",
        cg.procs(scope).display(),
        python_client().display(),
        d.address
    );
    let mut client = Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
    let (other, before) = loop {
        let listed = flood.list_requests().await.unwrap();
        if let Some(r) = listed.iter().find(|r| text(r, "app_id") == "flatpak:org.example.Other") {
            break (r.get("id").and_then(|v| u64::try_from(v).ok()).unwrap(), flood_waiting(&listed));
        }
        if client.try_wait().unwrap().is_some() {
            let out = client.wait_with_output().unwrap();
            panic!(
                "the other app's client ended before its request was listed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // how many of the flood's requests finish before the other app's leaves the list
    let mut after = before;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = flood.list_requests().await.unwrap();
        if !listed.iter().any(|r| r.get("id").and_then(|v| u64::try_from(v).ok()) == Some(other)) {
            break;
        }
        assert!(Instant::now() < deadline, "the other app's request was not served");
        after = flood_waiting(&listed);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let out = client.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["generated_tokens"], 100, "{v}");
    eprintln!("flood requests not finished: {before} when the other app asked, {after} when it was served");
    assert!(after >= 4, "the flood ended too soon to show anything ({after} left)");
    // FIFO would serve all of them first; least served first takes it once the running one ends
    assert!(before - after <= 1, "{} of the flood's requests were served before the other app's", before - after);
    for &id in &flooded {
        let _ = flood.cancel(id).await;
    }
    for id in flooded {
        collect(&mut flood_signals, id).await;
    }
}

/// The python client streaming a completion from inside the cgroup `tail` of `cg`, asking
/// for `priority` if given.
fn client_in(cg: &Cgroup, tail: &str, d: &Daemon, priority: Option<&str>) -> std::process::Child {
    let script = format!(
        "echo $$ > {} && exec /usr/bin/python3 {} {} long Hi 1 4 {}",
        cg.procs(tail).display(),
        python_client().display(),
        d.address,
        priority.unwrap_or("")
    );
    Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_class_comes_from_the_slice_or_rule_and_is_never_raised() {
    let long = with_context(TINY, 4096);
    let config = "max_parallel = 1\n[[apps]]\nuid = 2\npriority = \"background\"";
    let d = Daemon::start_with(config, &[("long", long.path())]).await;
    let (conn, proxy) = d.proxy().await;
    let mut signals = manager_signals(&conn).await;
    let bg = "user.slice/user-1000.slice/user@1000.service/background.slice/indexer.service";
    let cg = Cgroup::new(UNIFIED, bg);
    // occupy the model's one row, so the requests below stay queued and listed (cancelled
    // at the end): `max_parallel` is per model
    let blocker = proxy.generate("long", PROMPT, opts(3000, None)).await.unwrap();

    let mut clients = vec![];
    for asked in [None, Some("background")] {
        let c = client_in(&cg, bg, &d, asked);
        let r = request_of(&proxy, c.id()).await;
        assert_eq!(text(&r, "priority"), "background", "from background.slice, asking {asked:?}: {r:?}");
        assert_eq!(text(&r, "slice"), "background.slice");
        clients.push(c);
    }
    let out = client_in(&cg, bg, &d, Some("interactive")).wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"], "org.llamad.Llama1.Error.PermissionDenied", "{v}");
    assert!(v["message"].as_str().unwrap().contains("never raise"), "{v}");

    // uid 2's rule makes it background wherever it runs
    let out = Command::new("setpriv")
        .args(["--reuid=2", "--regid=2", "--clear-groups", "busctl", "--address", &d.address])
        .args(["call", "org.llamad.Llama1", "/org/llamad/Llama1", "org.llamad.Llama1.Manager"])
        .args(["Generate", "ssa{sv}", "long", "Hi", "1", "priority", "s", "interactive"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("background") && err.contains("never raise"), "{err}");

    // callers outside background.slice are interactive and may lower their class
    let mine = proxy.generate("long", PROMPT, opts(4, None)).await.unwrap();
    assert_eq!(state_of(&proxy, mine).await.map(|s| s.1).as_deref(), Some("interactive"));
    let lowered = proxy.generate("long", PROMPT, opts(4, Some("background"))).await.unwrap();
    assert_eq!(state_of(&proxy, lowered).await.map(|s| s.1).as_deref(), Some("background"));

    // bad values are typed errors naming the option
    for (value, want) in [(Value::from("high"), "interactive or background"), (Value::from(1u32), "expected")] {
        let mut o = opts(4, None);
        o.insert("priority", value);
        let e = llamad_api::Error::from(proxy.generate("tiny", PROMPT, o).await.unwrap_err());
        assert!(matches!(&e, llamad_api::Error::InvalidArgs(m) if m.contains("priority") && m.contains(want)), "{e:?}");
    }
    // llamactl ps shows the class
    let out = d.llamactl().arg("ps").output().unwrap();
    let ps = String::from_utf8_lossy(&out.stdout);
    assert!(ps.contains("PRIORITY") && ps.contains("background") && ps.contains("interactive"), "{ps}");
    proxy.cancel(blocker).await.unwrap();
    for id in [blocker, mine, lowered] {
        collect(&mut signals, id).await;
    }
    for c in clients {
        let out = c.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["generated_tokens"], 4, "{v}");
    }
}
