//! Housekeeping, every 250 ms: models idle past their keep_alive, and idle
//! models on which a request's work panicked, are unloaded;
//! memory pressure (PSI avg10 and trigger, cgroup events) unloads every idle
//! model and stops admitting new work until it ends.

use std::time::{Duration, Instant};

use super::{Event, Scheduler};
use crate::memory::trigger::{Trigger, TriggerError, TriggerSpec};

const TICK: Duration = Duration::from_millis(250);

/// The configured PSI trigger, when the pressure file is the kernel's and takes it.
fn register_trigger(path: &std::path::Path, spec: &str) -> Option<Trigger> {
    if spec.is_empty() {
        return None;
    }
    let spec = TriggerSpec::parse(spec).ok()?; // validated with the configuration
    match Trigger::register(path, &spec) {
        Ok(t) => {
            tracing::info!(path = %path.display(), trigger = %spec, "PSI trigger registered");
            Some(t)
        }
        Err(e @ TriggerError::NotPsi(_)) => {
            tracing::info!(reason = %e, "no PSI trigger: pressure is read every 250 ms");
            None
        }
        Err(e) => {
            tracing::warn!(reason = %e, "PSI trigger not registered: pressure is read every 250 ms");
            None
        }
    }
}

impl Scheduler {
    /// Every 250 ms: unload models idle past their keep_alive; follow memory pressure
    /// (unload every idle model, refuse new work until it ends).
    pub(super) fn housekeeping(&self) {
        let m = &self.config.memory;
        let events = m.events.clone().or_else(crate::memory::pressure::own_events_file);
        let mut watch = crate::memory::pressure::Watch::new(m.psi.clone(), m.psi_threshold, events);
        let mut trigger = register_trigger(&m.psi, &m.psi_trigger);
        let mut fired: Option<Instant> = None;
        loop {
            match &trigger {
                Some(t) => match t.wait(TICK) {
                    Ok(true) => fired = Some(Instant::now()),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(reason = %e, "PSI trigger lost: pressure is read every 250 ms");
                        trigger = None;
                    }
                },
                None => std::thread::sleep(TICK),
            }
            let mut why = watch.check();
            // A trigger event counts as pressure for one window after it.
            if why.is_none()
                && let (Some(at), Some(t)) = (fired, &trigger)
                && at.elapsed() < t.spec.window()
            {
                why = Some(format!("{}: PSI trigger \"{}\" fired", m.psi.display(), t.spec));
            }
            // Stored before it is announced: a client that acts on the signal must find the
            // admission already in the state the signal says.
            let was = std::mem::replace(&mut *self.pressure.lock().unwrap_or_else(|e| e.into_inner()), why.clone());
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
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            let expired: Vec<(String, &'static str)> = loaded
                .iter()
                .filter(|(_, l)| l.idle())
                .filter_map(|(n, l)| {
                    if l.faulted {
                        Some((n.clone(), "fault"))
                    } else if why.is_some() {
                        Some((n.clone(), "pressure"))
                    } else if l.keep_alive.is_some_and(|k| l.holds.last_used().elapsed() >= k) {
                        Some((n.clone(), "idle"))
                    } else {
                        None
                    }
                })
                .collect();
            let any = !expired.is_empty();
            for (name, reason) in expired {
                self.remove_model(&mut loaded, &name, reason);
            }
            if any {
                crate::memory::measure::release_freed();
            }
            for id in self.sessions.expired() {
                if let Some(s) = self.sessions.remove(id) {
                    tracing::info!(session = id, client = %s.owner, "session idle past its TTL: closed");
                    let reason = crate::session::CloseReason::Idle;
                    let _ = self.events.send(Event::SessionClosed { id, owner: s.owner.clone(), reason });
                }
            }
            // The daemon's own memory, measured again every tick (see `refresh_baseline`).
            self.refresh_baseline_unless_loading(&loaded, false);
        }
    }

    pub fn under_pressure(&self) -> bool {
        self.pressure.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}
