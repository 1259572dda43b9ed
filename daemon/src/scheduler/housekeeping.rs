//! Housekeeping, every 250 ms: models idle past their keep_alive are unloaded;
//! memory pressure (PSI, cgroup events) unloads every idle model and stops
//! admitting new work until it ends.

use super::{Event, Scheduler};

impl Scheduler {
    /// Every 250 ms: unload models idle past their keep_alive; follow memory pressure
    /// (unload every idle model, refuse new work until it ends).
    pub(super) fn housekeeping(&self) {
        let m = &self.config.memory;
        let events = m.events.clone().or_else(crate::memory::pressure::own_events_file);
        let mut watch = crate::memory::pressure::Watch::new(m.psi.clone(), m.psi_threshold, events);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            let why = watch.check();
            let was = self.pressure.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match (&was, &why) {
                (None, Some(reason)) => {
                    tracing::warn!(%reason, "memory pressure: unloading idle models, not admitting new work");
                    let _ = self.events.send(Event::MemoryPressure { active: true, reason: reason.clone() });
                }
                (Some(_), None) => {
                    tracing::info!("memory pressure over");
                    let _ = self.events.send(Event::MemoryPressure { active: false, reason: String::new() });
                }
                _ => {}
            }
            *self.pressure.lock().unwrap_or_else(|e| e.into_inner()) = why.clone();
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            let expired: Vec<(String, &'static str)> = loaded
                .iter()
                .filter(|(_, l)| l.active == 0)
                .filter_map(|(n, l)| {
                    if why.is_some() {
                        Some((n.clone(), "pressure"))
                    } else if l.keep_alive.is_some_and(|k| l.last_used.elapsed() >= k) {
                        Some((n.clone(), "idle"))
                    } else {
                        None
                    }
                })
                .collect();
            let any = !expired.is_empty();
            for (name, reason) in expired {
                loaded.remove(&name);
                tracing::info!(model = %name, reason, "model unloaded");
                let _ = self.events.send(Event::ModelUnloaded { name, reason });
            }
            if any {
                crate::memory::measure::release_freed();
            }
        }
    }

    pub fn under_pressure(&self) -> bool {
        self.pressure.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}
