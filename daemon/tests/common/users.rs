//! Callers other than root: `busctl call`s on the manager as uid 65534 (nobody),
//! for the tests of who may do what.

use std::process::{Command, Output};

use llamad_api::{MANAGER_INTERFACE, MANAGER_PATH};

use super::bus::Daemon;

/// A `busctl call` on the manager as uid 65534 (nobody); `interactive`: whether the call
/// allows interactive authorization.
pub fn as_nobody(d: &Daemon, interactive: bool, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl", "--address", &d.address])
        .arg(format!("--allow-interactive-authorization={}", if interactive { "yes" } else { "no" }))
        .arg("call")
        .args([llamad_api::BUS_NAME, MANAGER_PATH, MANAGER_INTERFACE])
        .args(args)
        .output()
        .expect("setpriv (util-linux) and busctl (systemd)")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
