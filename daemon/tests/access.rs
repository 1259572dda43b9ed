//! Who may do what, on a real daemon: callers identified from the bus and their
//! cgroup (unit, slice, Flatpak or snap app id, shown by `ListRequests` and
//! `llamactl ps`), the audit records of who did what, and the per-app rules
//! (models, concurrency, token rates and quotas). polkit's part is in `polkit.rs`.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::bus::{Daemon, python_client};
use common::cgroup::{Cgroup, request_of};
use common::users::{as_nobody, stderr};
use common::{repo, with_context};
use zbus::zvariant::OwnedValue;

const TINY: &str = "tiny-llama2-optimum-fp32";

/// The python client streaming a long completion from inside cgroup `procs`.
fn client_in(procs: &Path, d: &Daemon) -> Child {
    let script = format!(
        "echo $$ > {} && exec /usr/bin/python3 {} {} long 'Once upon a time' 1 3000",
        procs.display(),
        python_client().display(),
        d.address
    );
    Command::new("sh").args(["-c", &script]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

fn text(r: &HashMap<String, OwnedValue>, key: &str) -> String {
    r.get(key).and_then(|v| <&str>::try_from(v).ok()).unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_show_who_runs_them_by_unit_and_app() {
    let long = with_context(TINY, 4096);
    let d = Daemon::start_with("", &[("long", long.path())]).await;
    let (_conn, proxy) = d.proxy().await;
    // a Flatpak app, placed through the legacy name=systemd hierarchy
    let flatpak = "user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.example.Chat-42.scope";
    let legacy = Cgroup::new("/sys/fs/cgroup/systemd", flatpak);
    // a snap, through the unified hierarchy
    let snap = "user.slice/user-1000.slice/user@1000.service/app.slice/snap.notes.notes-5d1e.scope";
    let unified = Cgroup::new("/sys/fs/cgroup/unified", snap);

    let mut a = client_in(&legacy.procs(flatpak), &d);
    let r = request_of(&proxy, a.id()).await;
    assert_eq!(text(&r, "app_id"), "flatpak:org.example.Chat", "{r:?}");
    assert_eq!(text(&r, "unit"), "app-flatpak-org.example.Chat-42.scope");
    assert_eq!(text(&r, "slice"), "app.slice");
    assert_eq!(text(&r, "model"), "long");
    assert_eq!(r.get("uid").and_then(|v| u32::try_from(v).ok()), Some(0));
    assert!(text(&r, "client").starts_with(':'));
    assert!(!r.contains_key("prompt") && !r.contains_key("text"), "who, never what: {r:?}");

    let mut b = client_in(&unified.procs(snap), &d);
    let r = request_of(&proxy, b.id()).await;
    assert_eq!(text(&r, "app_id"), "snap:notes", "{r:?}");
    assert_eq!(text(&r, "unit"), "snap.notes.notes-5d1e.scope");

    // llamactl ps shows both, by uid, pid, unit and app
    let out = d.llamactl().arg("ps").output().unwrap();
    let ps = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    for (pid, unit, app) in [
        (a.id(), "app-flatpak-org.example.Chat-42.scope", "flatpak:org.example.Chat"),
        (b.id(), "snap.notes.notes-5d1e.scope", "snap:notes"),
    ] {
        let line = ps.lines().find(|l| l.contains(unit)).unwrap_or_else(|| panic!("{unit} not in:\n{ps}"));
        assert!(line.contains(&pid.to_string()) && line.contains(app) && line.contains("long"), "{line}");
    }
    let out = d.llamactl().args(["--json", "ps"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let long_model = v.as_array().unwrap().iter().find(|m| m["name"] == "long").unwrap();
    let apps: Vec<&str> =
        long_model["requests"].as_array().unwrap().iter().filter_map(|r| r["app_id"].as_str()).collect();
    assert!(apps.contains(&"flatpak:org.example.Chat") && apps.contains(&"snap:notes"), "{apps:?}");

    // clients that leave take their requests with them
    for c in [&mut a, &mut b] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.list_requests().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "requests outlived their clients");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The audit lines of a daemon's log (the stderr form: no journal here), with `id`.
fn audit_lines(log: &str, id: &str) -> Vec<String> {
    log.lines().filter(|l| l.contains(&format!(" MESSAGE_ID={id} "))).map(str::to_string).collect()
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split(' ').next()
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_records_say_who_did_what_and_never_what_was_said() {
    use common::client::{collect, manager_signals, request_opts, stream};
    use llamad::audit::{ADMIN_ID, REQUEST_ID};
    let d = Daemon::start("").await;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (conn, proxy) = d.proxy().await;
    let me = conn.unique_name().unwrap().to_string();
    let secret = "the password is PERIWINKLE";
    // a completion, a refused request, a session turn, an admin action done and one refused
    let (text, stats, _) = stream(&conn, &proxy, "tiny", secret, request_opts(3, 24)).await.unwrap();
    assert_eq!(stats.finish_reason, "length");
    assert!(stream(&conn, &proxy, "no-such-model", secret, request_opts(3, 8)).await.is_err());
    let path = proxy.open_session("tiny", HashMap::new()).await.unwrap();
    let session = llamad_api::SessionProxy::builder(&conn).path(path).unwrap().build().await.unwrap();
    let msg = HashMap::from([("role", zbus::zvariant::Value::from("user")), ("content", secret.into())]);
    let mut signals = manager_signals(&conn).await;
    let id = session.chat(&[msg], request_opts(4, 6)).await.unwrap();
    let (turn_text, _, _) = collect(&mut signals, id).await;
    proxy.load_model("tiny", HashMap::new()).await.unwrap();
    assert!(!as_nobody(&d, false, &["UnloadModel", "s", "tiny"]).status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = d.log();
    let requests = audit_lines(&log, REQUEST_ID);
    assert_eq!(requests.len(), 3, "one record per request:\n{log}");
    let done = &requests[0];
    assert_eq!(field(done, "LLAMAD_CALLER_UID"), Some("0"), "{done}");
    assert_eq!(field(done, "LLAMAD_CALLER_NAME"), Some(me.as_str()));
    assert_eq!(field(done, "LLAMAD_CALLER_PID"), Some(std::process::id().to_string().as_str()));
    assert_eq!(field(done, "LLAMAD_MODEL"), Some("tiny"));
    assert_eq!(field(done, "LLAMAD_TOKENS_IN"), Some(stats.prompt_tokens.unwrap().to_string().as_str()));
    assert_eq!(field(done, "LLAMAD_TOKENS_OUT"), Some("24"));
    assert_eq!(field(done, "LLAMAD_RESULT"), Some("length"));
    let refused = &requests[1];
    assert_eq!(field(refused, "LLAMAD_MODEL"), Some("no-such-model"), "{refused}");
    assert_eq!(field(refused, "LLAMAD_RESULT"), Some("org.llamad.Llama1.Error.UnknownModel"));
    assert_eq!(field(refused, "LLAMAD_REQUEST"), None, "it never had an id");
    let turn = &requests[2];
    assert!(field(turn, "LLAMAD_SESSION").is_some(), "{turn}");
    assert_eq!(field(turn, "LLAMAD_TOKENS_OUT"), Some("6"));

    let admin = audit_lines(&log, ADMIN_ID);
    assert_eq!(admin.len(), 2, "one record per admin action:\n{log}");
    assert_eq!(
        (field(&admin[0], "LLAMAD_ACTION"), field(&admin[0], "LLAMAD_RESULT")),
        (Some("load-model"), Some("ok"))
    );
    assert_eq!(field(&admin[1], "LLAMAD_ACTION"), Some("unload-model"));
    assert_eq!(field(&admin[1], "LLAMAD_CALLER_UID"), Some("65534"));
    assert_eq!(field(&admin[1], "LLAMAD_RESULT"), Some("org.llamad.Llama1.Error.PermissionDenied"));

    // never what: neither the prompt nor any output is in a record (nor anywhere in the log)
    assert!(!log.contains("PERIWINKLE"), "the prompt leaked into the log:\n{log}");
    for out in [text.trim(), turn_text.trim()] {
        if out.len() >= 8 {
            assert!(!log.contains(out), "output text {out:?} leaked into the log");
        }
    }
}

#[test]
fn the_journal_catalog_explains_every_audit_message_id() {
    // journalctl builds and reads the catalog database under a root of the test's own
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("usr/lib/systemd/catalog");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(repo().join("systemd/llamad.catalog"), dir.join("llamad.catalog")).unwrap();
    let update = Command::new("journalctl").arg("--root").arg(root.path()).arg("--update-catalog").output();
    let update = update.expect("journalctl (systemd)");
    assert!(update.status.success(), "{}", stderr(&update));
    let list = Command::new("journalctl").arg("--root").arg(root.path()).arg("--list-catalog").output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    for id in [llamad::audit::REQUEST_ID, llamad::audit::ADMIN_ID] {
        assert!(
            listed.lines().any(|l| l.starts_with(id) && l.contains("llamad")),
            "{id} not in the catalog:\n{listed}"
        );
    }
}

/// A copy of `file` that other users can run: in the daemon's directory (made 0755 by the
/// test), since the checkout may sit in a directory only its owner can enter.
fn for_others(d: &Daemon, file: &Path) -> PathBuf {
    let copy = d.dir.path().join(file.file_name().unwrap());
    if !copy.exists() {
        std::fs::copy(file, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    copy
}

/// The python client as uid `uid`: one completion; its JSON line (`text`, `finish_reason`,
/// or `error` and `message`).
fn complete_as(uid: u32, d: &Daemon, model: &str, max_tokens: u32) -> serde_json::Value {
    let out = Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()])
        .arg("/usr/bin/python3")
        .arg(for_others(d, &python_client()))
        .args([&d.address, model, "Once upon a time", "1", &max_tokens.to_string()])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", stderr(&out), d.log()))
}

#[tokio::test(flavor = "multi_thread")]
async fn app_rules_limit_models_concurrency_and_tokens() {
    let long = with_context(TINY, 4096);
    let rules = "[[apps]]\nuid = 65534\nmodels = [\"tiny\"]\ntokens_per_minute = 50\n\
                 [[apps]]\nuid = 2\nmax_concurrent = 1\n";
    let d = Daemon::start_with(rules, &[("long", long.path())]).await;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (conn, proxy) = d.proxy().await;

    // a model outside the rule's list
    let r = complete_as(65534, &d, "tiny-gguf", 8);
    assert_eq!(r["error"], "org.llamad.Llama1.Error.PermissionDenied", "{r}");
    assert!(r["message"].as_str().unwrap().contains("uid:65534 may not use model tiny-gguf"), "{r}");
    // tokens: prompt + generated are charged; two requests of 29 pass 50, the third waits
    for _ in 0..2 {
        let r = complete_as(65534, &d, "tiny", 24);
        assert_eq!(r["finish_reason"], "length", "{r}");
    }
    let r = complete_as(65534, &d, "tiny", 24);
    assert_eq!(r["error"], "org.llamad.Llama1.Error.QuotaExceeded", "{r}");
    let message = r["message"].as_str().unwrap();
    let retry: u64 = message.strip_prefix("retry in ").and_then(|m| m.split(' ').next()).unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{message}");
    assert!(message.contains("uid:65534 used 58 of its 50 tokens per minute"), "{message}");
    // others are not limited by that rule
    let (_, stats, _) = common::client::run(&conn, &proxy, 1, 24).await;
    assert_eq!(stats.finish_reason, "length");

    // one request at a time for uid 2 (bin: the bus drops uids without a passwd entry): a
    // second while the first runs is Busy
    let mut first = Command::new("setpriv")
        .args(["--reuid=2", "--regid=2", "--clear-groups", "/usr/bin/python3"])
        .arg(for_others(&d, &python_client()))
        .args([&d.address, "long", "Once upon a time", "1", "3000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    if tokio::time::timeout(Duration::from_secs(20), request_of(&proxy, first.id())).await.is_err() {
        let out = first.wait_with_output().unwrap();
        panic!("{}\n{}", String::from_utf8_lossy(&out.stdout), d.log());
    }
    let r = complete_as(2, &d, "tiny", 8);
    assert_eq!(r["error"], "org.llamad.Llama1.Error.Busy", "{r}");
    assert!(r["message"].as_str().unwrap().contains("uid:2 has 1 requests running"), "{r}");
    first.kill().unwrap();
    first.wait().unwrap();

    // usage per account, as the daemon and llamactl status show it
    let usage = proxy.list_usage().await.unwrap();
    let nobody = usage.iter().find(|u| text(u, "account") == "uid:65534").expect("uid:65534's usage");
    assert_eq!(nobody.get("tokens_last_minute").and_then(|v| u64::try_from(v).ok()), Some(58));
    assert_eq!(nobody.get("requests_today").and_then(|v| u32::try_from(v).ok()), Some(2), "refused ones do not count");
    let out = d.llamactl().arg("status").output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    let line = status.lines().find(|l| l.contains("uid:65534")).unwrap_or_else(|| panic!("{status}"));
    assert!(line.split_whitespace().any(|w| w == "58"), "{line}");
    // llamactl's exit code for a quota
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(common::bus::runner())
        .arg(for_others(&d, &common::bus::target_bin("llamactl")))
        .args(["--address", &d.address, "run", "tiny", "hello", "--max-tokens", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    assert!(stderr(&out).contains("retry in"), "{}", stderr(&out));
}
