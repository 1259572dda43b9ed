//! Who a caller is: the uid, groups and process behind a unique bus name, as the
//! bus vouches for them (`GetConnectionCredentials`), and the process's systemd
//! unit, slice and sandboxed app (see [`cgroup`]).
//!
//! The process is pinned with a pidfd (the bus's own `ProcessFD` where it gives
//! one; `pidfd_open` on the pid otherwise, as polkit and systemd do), its
//! cgroup read, and the result trusted only if afterwards the pidfd's process is
//! still running and the name is still on the bus with the same pid: a pid the
//! kernel recycled in between is never taken for the caller. A process hidden
//! from the daemon (`ProtectProc=invisible`, another pid namespace) is still
//! identified by its uid; its placement is unknown.
//!
//! Lookups are cached per unique name (unique names are never reused on a bus);
//! the service drops an entry when its name leaves the bus.

pub mod cgroup;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

pub use cgroup::{App, Placement};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the bus does not say who {name} is: {reason}")]
    Unknown { name: String, reason: String },
    #[error("{name}'s process changed while it was identified")]
    Changed { name: String },
}

/// One client of the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Its unique bus name (`:1.42`).
    pub name: String,
    pub uid: u32,
    /// Supplementary groups, where the bus gives them.
    pub gids: Vec<u32>,
    pub pid: Option<u32>,
    pub placement: Placement,
}

impl Caller {
    /// A caller known only by its name and uid (tests, internal work).
    pub fn bare(name: &str, uid: u32) -> Caller {
        Caller { name: name.to_string(), uid, gids: vec![], pid: None, placement: Placement::default() }
    }

    /// A Flatpak app's caller (`flatpak:org.example.Chat`, pid 4242, groups 100 and 27), for
    /// tests of what uses identities.
    #[cfg(test)]
    pub fn sample_flatpak(uid: u32) -> Caller {
        Caller {
            name: ":1.7".into(),
            uid,
            gids: vec![100, 27],
            pid: Some(4242),
            placement: Placement {
                unit: Some("app-flatpak-org.example.Chat-42.scope".into()),
                slice: Some("app.slice".into()),
                app: Some(App::Flatpak("org.example.Chat".into())),
            },
        }
    }

    /// The app id label (`flatpak:…`, `snap:…`), if any.
    pub fn app_label(&self) -> Option<String> {
        self.placement.app.as_ref().map(App::label)
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process a pidfd refers to is still running (a pidfd polls readable once
/// it has exited).
fn running(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 0
}

/// Every caller seen, by unique name.
#[derive(Default)]
pub struct Identities {
    known: Mutex<HashMap<String, Arc<Caller>>>,
}

impl Identities {
    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Caller>>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who `name` is, from the cache or the bus.
    pub async fn resolve(&self, conn: &zbus::Connection, name: &str) -> Result<Arc<Caller>, IdentityError> {
        if let Some(c) = self.known().get(name) {
            return Ok(c.clone());
        }
        let caller = Arc::new(identify(conn, name).await?);
        self.known().insert(name.to_string(), caller.clone());
        Ok(caller)
    }

    /// Drops what is known of `name` (it left the bus).
    pub fn forget(&self, name: &str) {
        self.known().remove(name);
    }

    pub fn len(&self) -> usize {
        self.known().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn identify(conn: &zbus::Connection, name: &str) -> Result<Caller, IdentityError> {
    let unknown = |reason: String| IdentityError::Unknown { name: name.to_string(), reason };
    let bus_name = zbus::names::BusName::try_from(name).map_err(|e| unknown(e.to_string()))?;
    let dbus = zbus::fdo::DBusProxy::new(conn).await.map_err(|e| unknown(e.to_string()))?;
    let creds = dbus.get_connection_credentials(bus_name.clone()).await.map_err(|e| unknown(e.to_string()))?;
    let uid = creds.unix_user_id().ok_or_else(|| unknown("no unix user id".into()))?;
    let gids = creds.unix_group_ids().cloned().unwrap_or_default();
    let Some(pid) = creds.process_id() else {
        return Ok(Caller { name: name.to_string(), uid, gids, pid: None, placement: Placement::default() });
    };
    let pidfd = match creds.process_fd() {
        Some(fd) => std::os::fd::AsFd::as_fd(fd).try_clone_to_owned().map_err(|e| unknown(e.to_string()))?,
        None => match pidfd_open(pid) {
            Ok(fd) => fd,
            // gone already: the name must be leaving too
            Err(_) => return Err(IdentityError::Changed { name: name.to_string() }),
        },
    };
    let placement =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map(|t| cgroup::parse(&t)).unwrap_or_default();
    // what was read belongs to the caller only if the pinned process still runs and the
    // name still stands for it
    let still = dbus.get_connection_unix_process_id(bus_name).await.ok();
    if !running(&pidfd) || still != Some(pid) {
        return Err(IdentityError::Changed { name: name.to_string() });
    }
    Ok(Caller { name: name.to_string(), uid, gids, pid: Some(pid), placement })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_tells_a_running_process_from_an_exited_one() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let fd = pidfd_open(child.id()).unwrap();
        assert!(running(&fd));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!running(&fd), "the pidfd polls readable once its process has exited");
        assert!(running(&pidfd_open(std::process::id()).unwrap()));
    }
}
