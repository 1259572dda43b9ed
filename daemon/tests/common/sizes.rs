//! Budgets for the memory tests, from the daemon's own numbers in this
//! environment rather than constants: its baseline (read from a daemon with no
//! budget, ONNX Runtime set up as reading `Providers` does) and the estimates
//! it makes (the same library code). Each test's budget then sits in the middle
//! of the window in which what it checks must happen, and a window too narrow
//! to test fails loudly instead of making the test flaky.

use std::path::Path;

use llamad::engine::{BackendKind, ModelDir, Prompt};
use llamad::memory::estimate::Estimate;
use llamad::memory::mib;
use llamad_api::ManagerProxy;

use super::bus::Daemon;

pub struct Sizes {
    /// What the daemon counts for itself before any model.
    pub baseline: u64,
}

/// A proxy on `d` with ONNX Runtime set up (reading `Providers` does it), so that the
/// daemon's baseline is what the probe saw.
pub async fn settled_proxy(d: &Daemon) -> (zbus::Connection, ManagerProxy<'static>) {
    let (conn, proxy) = d.proxy().await;
    proxy.providers().await.unwrap();
    (conn, proxy)
}

impl Sizes {
    pub async fn probe() -> Sizes {
        let d = Daemon::start("").await;
        let (conn, _proxy) = settled_proxy(&d).await;
        Sizes { baseline: super::client::memory_now(&conn).await.used.unwrap() }
    }

    /// As [`Sizes::probe`], after the daemon has run each of `models` (see [`exercise`]):
    /// the baseline then holds what running them leaves behind (tract's code, the
    /// allocator's state), as in a daemon that has been serving for a while.
    pub async fn probe_after(models: &[&str], extra: &[(&str, &Path)]) -> Sizes {
        let d = Daemon::start_with("", extra).await;
        let (conn, proxy) = settled_proxy(&d).await;
        exercise(&conn, &proxy, models).await;
        Sizes { baseline: super::client::memory_now(&conn).await.used.unwrap() }
    }

    /// A budget (bytes) halfway through `[low, high)` above the baseline.
    pub fn budget_between(&self, what: &str, low: u64, high: u64) -> u64 {
        assert!(high > low + (2 << 20), "{what}: the window [{low}, {high}) above the baseline is too narrow to test");
        let b = self.baseline + (low + high) / 2;
        eprintln!(
            "{what}: baseline {}, window [{}, {}) above it, budget {}",
            mib(self.baseline),
            mib(low),
            mib(high),
            mib(b)
        );
        b
    }
}

/// Loads each of `models` on tract, runs a short request on it and unloads it, then gives
/// the daemon time to measure its baseline again (it does when idle, every 250 ms).
pub async fn exercise(conn: &zbus::Connection, proxy: &ManagerProxy<'_>, models: &[&str]) {
    for m in models {
        super::client::stream(conn, proxy, m, "Once upon a time", super::client::request_opts(1, 10)).await.unwrap();
        proxy.unload_model(m).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
}

/// The daemon's estimate for `dir` on tract; `first_load`: no tract model loaded yet.
pub fn estimate(dir: &Path, first_load: bool) -> Estimate {
    Estimate::for_model(&ModelDir::open(dir).unwrap(), BackendKind::Tract, first_load)
}

/// Tokens of `text` as the daemon will count them (BOS included).
pub fn tokens(dir: &Path, text: &str) -> u64 {
    let m = llamad::engine::Model::load(dir, BackendKind::Tract, &super::opts(BackendKind::Tract), true).unwrap();
    m.prompt_ids(&Prompt::Text(text.into())).unwrap().len() as u64
}

/// The configuration lines for a budget of `bytes` with no reserve, after `top` (top-level keys).
pub fn with_budget(top: &str, bytes: u64) -> String {
    format!("{top}\n[memory]\nbudget = {bytes}\nreserve = 0\n")
}
