//! Memory pressure, read from the kernel's pressure stall information
//! (`/proc/pressure/memory`, `some avg10=`) and the cgroup's `memory.events`
//! counters (`high`, `max`, `oom`). The paths are configurable so tests can
//! drive it. Read every 250 ms; on the kernel's file a PSI trigger
//! ([`super::trigger`]) also wakes the daemon as soon as stalls pass its limit.

use std::path::{Path, PathBuf};

pub struct Watch {
    psi: PathBuf,
    threshold: f64,
    events: Option<PathBuf>,
    last_events: Option<u64>,
}

/// `some avg10=` of a PSI file.
pub fn psi_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace().find_map(|kv| kv.strip_prefix("avg10=")).and_then(|v| v.parse().ok())
}

/// The sum of the `high`, `max` and `oom` counters of a `memory.events` file.
pub fn events_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| matches!(*k, "high" | "max" | "oom"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// The daemon's own cgroup v2 `memory.events`, if any.
pub fn own_events_file() -> Option<PathBuf> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let file = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')).join("memory.events");
    file.is_file().then_some(file)
}

impl Watch {
    pub fn new(psi: PathBuf, threshold: f64, events: Option<PathBuf>) -> Watch {
        Watch { psi, threshold, events, last_events: None }
    }

    /// Whether memory is under pressure now, and why.
    pub fn check(&mut self) -> Option<String> {
        let mut why = None;
        if let Some(avg10) = std::fs::read_to_string(&self.psi).ok().as_deref().and_then(psi_avg10)
            && avg10 >= self.threshold
        {
            why = Some(format!("{}: some avg10={avg10} (threshold {})", self.psi.display(), self.threshold));
        }
        if let Some(file) = &self.events
            && let Ok(text) = std::fs::read_to_string(file)
        {
            let n = events_count(&text);
            if self.last_events.is_some_and(|last| n > last) {
                why.get_or_insert_with(|| format!("{}: high/max/oom events", file.display()));
            }
            self.last_events = Some(n);
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_psi_and_events() {
        let psi = "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=9\n";
        assert_eq!(psi_avg10(psi), Some(12.5));
        assert_eq!(events_count("low 0\nhigh 3\nmax 1\noom 0\noom_kill 0\n"), 4);
    }

    #[test]
    fn pressure_starts_at_the_threshold_and_on_new_events() {
        let dir = tempfile::tempdir().unwrap();
        let (psi, ev) = (dir.path().join("psi"), dir.path().join("events"));
        std::fs::write(&psi, "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        std::fs::write(&ev, "high 0\nmax 0\noom 0\n").unwrap();
        let mut w = Watch::new(psi.clone(), 10.0, Some(ev.clone()));
        assert_eq!(w.check(), None);
        std::fs::write(&psi, "some avg10=25.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        assert!(w.check().unwrap().contains("avg10=25"));
        std::fs::write(&psi, "some avg10=1.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        assert_eq!(w.check(), None);
        std::fs::write(&ev, "high 2\nmax 0\noom 0\n").unwrap();
        assert!(w.check().unwrap().contains("events"));
        assert_eq!(w.check(), None, "only growth counts");
    }
}
