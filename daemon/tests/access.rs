//! Who may do what, on a real daemon: callers identified from the bus and their
//! cgroup (unit, slice, Flatpak or snap app id, shown by `ListRequests` and
//! `llamactl ps`), and polkit asked for unprivileged administrators, with
//! python3-dbusmock's polkitd template standing in for polkitd on the test bus
//! (allowed, denied, absent); the policy file validates against polkit's DTD.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::bus::{Daemon, python_client};
use common::cgroup::{Cgroup, request_of};
use common::client::loaded_now;
use common::{repo, with_context};
use futures_util::StreamExt;
use llamad_api::{MANAGER_INTERFACE, MANAGER_PATH};
use zbus::zvariant::OwnedValue;
use zbus::{MatchRule, MessageStream, message::Type as MsgType};

const TINY: &str = "tiny-llama2-optimum-fp32";
const ACTION: &str = "org.llamad.Llama1.manage-models";

/// A `busctl call` on the manager as uid 65534 (nobody); `interactive`: whether the call
/// allows interactive authorization.
fn as_nobody(d: &Daemon, interactive: bool, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl", "--address", &d.address])
        .arg(format!("--allow-interactive-authorization={}", if interactive { "yes" } else { "no" }))
        .arg("call")
        .args([llamad_api::BUS_NAME, MANAGER_PATH, MANAGER_INTERFACE])
        .args(args)
        .output()
        .expect("setpriv (util-linux) and busctl (systemd)")
}

/// python3-dbusmock's polkitd on the daemon's bus (the template asks for the system bus:
/// DBUS_SYSTEM_BUS_ADDRESS points it at the test bus).
struct Polkit(Child);

impl Polkit {
    async fn start(d: &Daemon, conn: &zbus::Connection) -> Polkit {
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--template", "polkitd"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &d.address)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-dbusmock (tests/run installs it)");
        let dbus = zbus::fdo::DBusProxy::new(conn).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dbus.name_has_owner("org.freedesktop.PolicyKit1".try_into().unwrap()).await.unwrap() {
            assert!(Instant::now() < deadline, "the polkitd mock did not take its name");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Polkit(child)
    }

    /// The mock's own control: which actions it allows.
    async fn allow(&self, conn: &zbus::Connection, actions: &[&str]) {
        conn.call_method(
            Some("org.freedesktop.PolicyKit1"),
            "/org/freedesktop/PolicyKit1/Authority",
            Some("org.freedesktop.DBus.Mock"),
            "SetAllowed",
            &(actions,),
        )
        .await
        .unwrap();
    }
}

impl Drop for Polkit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a monitor saw of one `CheckAuthorization` call.
#[derive(Debug)]
struct Check {
    sender: String,
    subject_kind: String,
    subject_name: String,
    action: String,
    details: HashMap<String, String>,
    flags: u32,
}

/// A monitor connection (BecomeMonitor) on the test bus that sees the daemon's polkit calls
/// and the manager calls they answer.
async fn monitor(d: &Daemon) -> MessageStream {
    let conn = d.connect().await;
    let rules = [
        MatchRule::builder().msg_type(MsgType::MethodCall).member("CheckAuthorization").unwrap().build(),
        MatchRule::builder().msg_type(MsgType::MethodCall).interface(MANAGER_INTERFACE).unwrap().build(),
    ];
    zbus::fdo::MonitoringProxy::new(&conn).await.unwrap().become_monitor(&rules, 0).await.unwrap();
    MessageStream::from(conn)
}

/// The next `CheckAuthorization` the monitor sees, and the sender of the manager call before it.
async fn next_check(stream: &mut MessageStream) -> (Check, String) {
    let mut caller = String::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a CheckAuthorization call")
            .unwrap()
            .unwrap();
        let h = msg.header();
        let sender = h.sender().map(|s| s.to_string()).unwrap_or_default();
        match h.member().map(|m| m.as_str()) {
            Some("LoadModel") | Some("UnloadModel") => caller = sender,
            Some("CheckAuthorization") => {
                type Args = ((String, HashMap<String, OwnedValue>), String, HashMap<String, String>, u32, String);
                let ((kind, subject_details), action, details, flags, _cancel): Args =
                    msg.body().deserialize().unwrap();
                let subject_name = subject_details.get("name").and_then(|v| <&str>::try_from(v).ok()).unwrap_or("");
                let check = Check {
                    sender,
                    subject_kind: kind,
                    subject_name: subject_name.to_string(),
                    action,
                    details,
                    flags,
                };
                return (check, caller);
            }
            _ => {}
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn polkit_decides_for_unprivileged_callers() {
    let d = Daemon::start("").await;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (conn, proxy) = d.proxy().await;
    let daemon_name = zbus::fdo::DBusProxy::new(&conn)
        .await
        .unwrap()
        .get_name_owner(llamad_api::BUS_NAME.try_into().unwrap())
        .await
        .unwrap()
        .to_string();
    let mut seen = monitor(&d).await;

    // polkit absent: no, with the reason
    let out = as_nobody(&d, false, &["LoadModel", "sa{sv}", "tiny", "0"]);
    assert!(!out.status.success(), "nobody loaded a model without polkit");
    assert!(
        stderr(&out).contains("uid 65534 may not load or unload models: polkit could not be asked"),
        "{}",
        stderr(&out)
    );
    let (check, caller) = next_check(&mut seen).await;
    assert_eq!((check.subject_name.as_str(), check.action.as_str()), (caller.as_str(), ACTION), "it asked");

    let polkit = Polkit::start(&d, &conn).await;
    // polkit says no (the mock's default): PermissionDenied, after asking about this caller
    let out = as_nobody(&d, false, &["LoadModel", "sa{sv}", "tiny", "0"]);
    assert!(!out.status.success(), "polkit said no, yet nobody loaded a model");
    assert!(stderr(&out).contains("polkit says no to org.llamad.Llama1.manage-models"), "{}", stderr(&out));
    let (check, caller) = next_check(&mut seen).await;
    assert_eq!(check.sender, daemon_name, "the daemon asks: {check:?}");
    assert_eq!((check.subject_kind.as_str(), check.subject_name.as_str()), ("system-bus-name", caller.as_str()));
    assert!(caller.starts_with(':') && caller != daemon_name, "{caller}");
    assert_eq!(check.action, ACTION);
    assert_eq!(check.details.get("model").map(String::as_str), Some("tiny"), "{check:?}");
    assert_eq!(check.flags, 0, "no interactive authorization was allowed");
    assert!(loaded_now(&proxy).await.is_empty());

    // polkit says yes: the model loads and unloads; the caller's flag is passed on
    polkit.allow(&conn, &[ACTION]).await;
    let out = as_nobody(&d, true, &["LoadModel", "sa{sv}", "tiny", "0"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let (check, caller) = next_check(&mut seen).await;
    assert_eq!((check.subject_name.as_str(), check.action.as_str()), (caller.as_str(), ACTION));
    assert_eq!(check.flags, 1, "AllowUserInteraction, as the caller allowed it");
    assert_eq!(loaded_now(&proxy).await, vec!["tiny".to_string()]);
    let out = as_nobody(&d, false, &["UnloadModel", "s", "tiny"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(loaded_now(&proxy).await.is_empty());

    // root (this test) is allowed without asking polkit: no check is seen for it
    polkit.allow(&conn, &[]).await;
    proxy.load_model("tiny", HashMap::new()).await.unwrap();
    let out = as_nobody(&d, false, &["UnloadModel", "s", "tiny"]);
    assert!(!out.status.success());
    let (check, caller) = next_check(&mut seen).await;
    assert_ne!(caller, conn.unique_name().unwrap().to_string(), "root's own call was not checked");
    assert_eq!(check.subject_name, caller);
    assert_eq!(loaded_now(&proxy).await, vec!["tiny".to_string()]);
}

#[test]
fn the_policy_file_is_valid_against_polkits_dtd() {
    let policy = repo().join("systemd/org.llamad.Llama1.policy");
    let dtd = Path::new("/usr/share/polkit-1/policyconfig-1.dtd");
    assert!(dtd.exists(), "polkit's DTD (Debian package polkitd; tests/run installs it)");
    let out = Command::new("xmllint")
        .args(["--noout", "--nonet", "--dtdvalid"])
        .arg(dtd)
        .arg(&policy)
        .output()
        .expect("xmllint (libxml2-utils)");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains(&format!("<action id=\"{ACTION}\">")));
    assert!(text.contains("<allow_active>auth_admin_keep</allow_active>"));
    assert!(text.contains("<annotate key=\"org.freedesktop.policykit.owner\">unix-user:llamad</annotate>"));
}

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
        .arg(for_others(&d, &common::bus::target_bin("llamactl")))
        .args(["--address", &d.address, "run", "tiny", "hello", "--max-tokens", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    assert!(stderr(&out).contains("retry in"), "{}", stderr(&out));
}
