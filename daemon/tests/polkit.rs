//! polkit deciding who may load and unload models, on a real daemon, for callers
//! that are not root, the daemon's user or `admin_uids`:
//! - python3-dbusmock's polkitd template on the test bus (absent, denied, allowed),
//!   with the check's subject, action, details and flags seen by a bus monitor;
//! - the real polkitd (Debian's) on the test bus, with the shipped policy file and a
//!   rules file bound over its directories in a mount namespace of its own: its rules
//!   decide, a password it would want is refused with the way out, and a daemon not
//!   running as root may ask only because the policy file names its user as the
//!   actions' owner;
//! - the policy file validates against polkit's DTD.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::bus::Daemon;
use common::client::loaded_now;
use common::mock::Mock;
use common::repo;
use common::users::{as_nobody, stderr};
use futures_util::StreamExt;
use llamad_api::MANAGER_INTERFACE;
use zbus::zvariant::OwnedValue;
use zbus::{MatchRule, MessageStream, message::Type as MsgType};

const ACTION: &str = "org.llamad.Llama1.manage-models";

/// python3-dbusmock's polkitd on the daemon's bus.
struct Polkit(#[allow(dead_code)] Mock);

impl Polkit {
    async fn start(d: &Daemon, conn: &zbus::Connection) -> Polkit {
        Polkit(Mock::start(d, conn, "polkitd", "org.freedesktop.PolicyKit1").await)
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

#[tokio::test(flavor = "multi_thread")]
async fn the_polkitd_mock_decides_for_unprivileged_callers() {
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

/// The real polkitd on the daemon's bus (it asks for the system bus: DBUS_SYSTEM_BUS_ADDRESS
/// points it at the test bus). Its action and rule directories are replaced, in a mount
/// namespace of its own (`unshare --mount`: private propagation, the host's are untouched),
/// by one holding `policy` and one holding `rules`; the system's own rules are hidden, so
/// that only these decide. polkitd drops to its user `polkitd`, hence the open modes.
struct Polkitd(Child);

impl Polkitd {
    const BINARY: &str = "/usr/lib/polkit-1/polkitd";

    async fn start(d: &Daemon, conn: &zbus::Connection, policy: &str, rules: &str) -> Polkitd {
        assert!(Path::new(Self::BINARY).exists(), "polkitd (Debian package polkitd; tests/run installs it)");
        let root = tempfile::Builder::new().prefix("polkit").tempdir_in(d.dir.path()).unwrap().keep();
        let (actions, rules_dir, empty) = (root.join("actions"), root.join("rules"), root.join("empty"));
        for dir in [&root, &actions, &rules_dir, &empty] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(actions.join("org.llamad.Llama1.policy"), policy).unwrap();
        std::fs::write(rules_dir.join("50-llamad-test.rules"), rules).unwrap();
        let script = "mount --bind \"$1\" /usr/share/polkit-1/actions && \
                      mount --bind \"$2\" /etc/polkit-1/rules.d && \
                      mount --bind \"$3\" /usr/share/polkit-1/rules.d && \
                      exec \"$4\" --no-debug";
        let log = std::fs::File::create(root.join("polkitd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
            .args([&actions, &rules_dir, &empty])
            .arg(Self::BINARY)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &d.address)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("unshare (util-linux)");
        let dbus = zbus::fdo::DBusProxy::new(conn).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dbus.name_has_owner("org.freedesktop.PolicyKit1".try_into().unwrap()).await.unwrap() {
            let log = std::fs::read_to_string(root.join("polkitd.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "polkitd did not take its name: {log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Polkitd(child)
    }
}

impl Drop for Polkitd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A rule: nobody may manage the model `tiny`, and no other, without a password.
const NOBODY_MAY_MANAGE_TINY: &str = r#"polkit.addRule(function(action, subject) {
    if (action.id == "org.llamad.Llama1.manage-models" && subject.user == "nobody" &&
        action.lookup("model") == "tiny") {
        return polkit.Result.YES;
    }
});
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_real_polkitd_decides_by_its_rules_and_trusts_the_actions_owner() {
    let shipped = std::fs::read_to_string(repo().join("systemd/org.llamad.Llama1.policy")).unwrap();
    let mut d = Daemon::start("").await;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (conn, proxy) = d.proxy().await;
    let polkitd = Polkitd::start(&d, &conn, &shipped, NOBODY_MAY_MANAGE_TINY).await;

    // The daemon runs as root here: polkitd answers it for any subject.
    // Its rule says yes for this model: nobody loads and unloads it.
    let out = as_nobody(&d, false, &["LoadModel", "sa{sv}", "tiny", "0"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    assert_eq!(loaded_now(&proxy).await, vec!["tiny".to_string()]);
    let out = as_nobody(&d, false, &["UnloadModel", "s", "tiny"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(loaded_now(&proxy).await.is_empty());
    // No rule for this model: the policy's default wants an administrator's password.
    // Without interaction allowed, the caller is told to allow it...
    let out = as_nobody(&d, false, &["LoadModel", "sa{sv}", "stories", "0"]);
    assert!(!out.status.success(), "nobody loaded a model polkit wants a password for");
    assert!(
        stderr(&out).contains("uid 65534 may load or unload models after authenticating")
            && stderr(&out).contains("allowing interactive authorization"),
        "{}",
        stderr(&out)
    );
    // ... and with it allowed, no agent answers for a caller outside any session.
    let out = as_nobody(&d, true, &["LoadModel", "sa{sv}", "stories", "0"]);
    assert!(!out.status.success(), "nobody loaded a model without authenticating");
    assert!(stderr(&out).contains("no polkit authentication agent"), "{}", stderr(&out));
    assert!(loaded_now(&proxy).await.is_empty());

    // The daemon as an ordinary user (daemon, uid 1). polkitd answers a caller about
    // another's process only if it is root or the action's owner: the shipped file names
    // the user llamad, here replaced by the user the daemon runs as.
    let annotation = "<annotate key=\"org.freedesktop.policykit.owner\">unix-user:llamad</annotate>";
    assert_eq!(shipped.matches(annotation).count(), 1, "the shipped policy names its owner once");
    drop(polkitd);
    let polkitd =
        Polkitd::start(&d, &conn, &shipped.replace("unix-user:llamad", "unix-user:daemon"), NOBODY_MAY_MANAGE_TINY)
            .await;
    d.restart_as(1).await;
    let (_conn2, proxy) = d.proxy().await;
    let out = as_nobody(&d, false, &["LoadModel", "sa{sv}", "tiny", "0"]);
    assert!(out.status.success(), "the owner was refused: {}\n{}", stderr(&out), d.log());
    assert_eq!(loaded_now(&proxy).await, vec!["tiny".to_string()]);
    assert!(as_nobody(&d, false, &["UnloadModel", "s", "tiny"]).status.success());

    // Without the annotation polkitd refuses to answer the daemon: no, with polkit's reason.
    drop(polkitd);
    let _polkitd = Polkitd::start(&d, &conn, &shipped.replace(annotation, ""), NOBODY_MAY_MANAGE_TINY).await;
    let out = as_nobody(&d, false, &["LoadModel", "sa{sv}", "tiny", "0"]);
    assert!(!out.status.success(), "polkitd answered a daemon that does not own the action");
    assert!(
        stderr(&out).contains("polkit could not be asked") && stderr(&out).contains("trusted callers"),
        "{}",
        stderr(&out)
    );
    assert!(loaded_now(&proxy).await.is_empty());
}
