//! Test clients placed in cgroups of the tests' own, shaped as systemd names
//! them (both hierarchies are mounted on these machines), and finding their
//! requests in `ListRequests`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zbus::zvariant::OwnedValue;

/// A cgroup of this test's own in the hierarchy `root` (the legacy `name=systemd` one or
/// the unified one; both are mounted on these machines), shaped as systemd names it.
pub struct Cgroup(PathBuf);

impl Cgroup {
    pub fn new(root: &str, tail: &str) -> Cgroup {
        let top = Path::new(root).join(format!("llamad-test-{}", std::process::id()));
        let dir = top.join(tail);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
            panic!("{}: {e} (both cgroup hierarchies must be mounted and writable)", dir.display())
        });
        Cgroup(top)
    }

    pub fn procs(&self, tail: &str) -> PathBuf {
        self.0.join(tail).join("cgroup.procs")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // innermost first; each is empty once its processes have exited
        let mut dirs: Vec<PathBuf> = vec![];
        let mut stack = vec![self.0.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The request of process `pid` in `ListRequests`, once it is there.
pub async fn request_of(proxy: &llamad_api::ManagerProxy<'_>, pid: u32) -> HashMap<String, OwnedValue> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = proxy.list_requests().await.unwrap();
        if let Some(r) = list.into_iter().find(|r| r.get("pid").and_then(|v| u32::try_from(v).ok()) == Some(pid)) {
            return r;
        }
        assert!(Instant::now() < deadline, "no request of pid {pid} was listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
