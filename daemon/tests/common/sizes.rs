//! Budgets for the memory tests, from the daemon's own numbers in this
//! environment rather than constants: its baseline (read from a daemon with no
//! budget, ONNX Runtime set up as reading `Providers` does) and the estimates
//! it makes (the same library code). Each test's budget then sits in the middle
//! of the window in which what it checks must happen, and a window too narrow
//! to test fails loudly instead of making the test flaky.

use std::path::Path;

use llamad::engine::{BackendKind, ModelDir, Prompt};
use llamad::memory::estimate::Estimate;
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
        let (_c, proxy) = settled_proxy(&d).await;
        Sizes { baseline: proxy.memory().await.unwrap().used.unwrap() }
    }

    /// A budget (bytes) halfway through `[low, high)` above the baseline.
    pub fn budget_between(&self, what: &str, low: u64, high: u64) -> u64 {
        assert!(high > low + (2 << 20), "{what}: the window [{low}, {high}) above the baseline is too narrow to test");
        let b = self.baseline + (low + high) / 2;
        eprintln!(
            "{what}: baseline {:.1} MiB, window [{:.1}, {:.1}) MiB above it, budget {:.1} MiB",
            mib(self.baseline),
            mib(low),
            mib(high),
            mib(b)
        );
        b
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
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
