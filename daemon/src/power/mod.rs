//! The power and heat governor: from the battery (UPower, [`battery`]) and the thermal
//! zones ([`thermal`]) it decides a state (`normal`, `on-battery`, `low-battery`,
//! `critical-battery`, `hot`, `critical-heat`), and applies the configured limits of every
//! condition that holds, the stricter of each ([`config::Limits::and`]):
//!
//! - `threads`: the daemon's threads are confined to that many cores ([`affinity`]);
//! - `max_parallel`: each model's engine loop starts new rows while fewer run;
//! - `background`: background requests run, are deferred (they wait, running ones pause),
//!   or are refused with `PowerSaving` (which says why and when to retry).
//!
//! The engine loops and the admission read the limits from here (atomics); the watcher
//! ([`watch`]) feeds readings in and reports a change as [`crate::scheduler::Event::PowerState`],
//! which the D-Bus layer publishes as the `PowerState` property.

pub mod affinity;
pub mod battery;
pub mod config;
pub mod thermal;
pub mod watch;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::SystemTime;

use battery::{Battery, Charge};
pub use config::{Background, Limits, PowerConfig};
use thermal::{Heat, Zone};

/// What the governor decided, as `PowerState` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PowerState {
    /// The most severe condition: `normal`, `on-battery`, `low-battery`, `critical-battery`,
    /// `hot` or `critical-heat`.
    pub state: &'static str,
    pub battery: Option<Battery>,
    /// The zone nearest its threshold.
    pub zone: Option<Zone>,
    /// The limits in force (every condition's, the stricter of each).
    pub limits: Limits,
    /// The cores the daemon's threads may use now (all it started with when not limited).
    pub cores: Vec<usize>,
    /// Why, in words (`on battery at 42 %`, `cpu-thermal at 71.0 °C (hot from 70.0 °C)`).
    pub reasons: Vec<String>,
    pub since: SystemTime,
}

impl PowerState {
    /// Whether any limit is in force.
    pub fn limiting(&self) -> bool {
        self.limits != Limits::default()
    }
}

/// What the readings make, before anything is applied.
#[derive(Clone, Debug, PartialEq)]
struct Decision {
    state: &'static str,
    charge: Charge,
    heat: Heat,
    limits: Limits,
    reasons: Vec<String>,
}

fn decide(c: &PowerConfig, battery: Option<&Battery>, zones: &[Zone], previous: Heat) -> (Decision, Option<Zone>) {
    let charge = battery.map(|b| battery::charge(b, c)).unwrap_or_default();
    let (heat, zone) = thermal::heat(zones, c, previous);
    let mut limits = Limits::default();
    let mut reasons = vec![];
    let pct = battery.and_then(|b| b.percent).map(|p| format!(" at {p:.0} %")).unwrap_or_default();
    match charge {
        Charge::Mains => {}
        Charge::OnBattery => {
            limits = limits.and(c.on_battery);
            reasons.push(format!("on battery{pct}"));
        }
        Charge::Low => {
            limits = limits.and(c.on_battery).and(c.low_battery);
            reasons.push(format!("battery low{pct}"));
        }
        Charge::Critical => {
            limits = limits.and(c.on_battery).and(c.low_battery).and(c.critical_battery);
            reasons.push(format!("battery critical{pct}"));
        }
    }
    if let Some(z) = zone.filter(|_| heat > Heat::Normal) {
        let (what, from) = if heat == Heat::Critical {
            limits = limits.and(c.hot).and(c.critical_heat);
            ("critical", z.critical_at - c.margin_celsius)
        } else {
            limits = limits.and(c.hot);
            ("hot", z.hot_at - c.margin_celsius)
        };
        reasons.push(format!("{} {what} at {:.1} °C (from {from:.1} °C)", z.kind_or_name(), z.celsius));
    }
    let state = match (heat, charge) {
        (Heat::Critical, _) => "critical-heat",
        (_, Charge::Critical) => "critical-battery",
        (Heat::Hot, _) => "hot",
        (_, Charge::Low) => "low-battery",
        (_, Charge::OnBattery) => "on-battery",
        _ => "normal",
    };
    (Decision { state, charge, heat, limits, reasons }, zone.cloned())
}

impl Zone {
    fn kind_or_name(&self) -> &str {
        if self.kind.is_empty() { &self.name } else { &self.kind }
    }
}

/// Where the kernel describes the CPUs (their `cpu_capacity`).
const CPU_SYSFS: &str = "/sys/devices/system/cpu";

pub struct Governor {
    pub config: PowerConfig,
    /// The cores the daemon started with.
    cores: Vec<usize>,
    /// `max_parallel` in force (0: no limit) and the background mode, for the loops.
    max_parallel: AtomicUsize,
    background: AtomicU8,
    current: Mutex<(PowerState, Heat)>,
}

impl Governor {
    pub fn new(config: PowerConfig) -> Governor {
        let cores = affinity::allowed();
        let state = PowerState {
            state: "normal",
            battery: None,
            zone: None,
            limits: Limits::default(),
            cores: cores.clone(),
            reasons: vec![],
            since: SystemTime::now(),
        };
        Governor {
            config,
            cores,
            max_parallel: AtomicUsize::new(0),
            background: AtomicU8::new(Background::Run as u8),
            current: Mutex::new((state, Heat::Normal)),
        }
    }

    /// `configured` (a model's `max_parallel`), lowered while a state limits it.
    pub fn max_parallel(&self, configured: usize) -> usize {
        match self.max_parallel.load(Ordering::Relaxed) {
            0 => configured,
            n => configured.min(n),
        }
    }

    pub fn background(&self) -> Background {
        match self.background.load(Ordering::Relaxed) {
            x if x == Background::Refuse as u8 => Background::Refuse,
            x if x == Background::Defer as u8 => Background::Defer,
            _ => Background::Run,
        }
    }

    pub fn state(&self) -> PowerState {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Why background work is refused now and when to retry, as `PowerSaving`'s message.
    pub fn refusal(&self) -> String {
        let s = self.state();
        let retry = if s.state.contains("heat") || s.state == "hot" {
            self.config.interval_ms.div_ceil(1000).max(30)
        } else {
            300
        };
        let when = if s.state.contains("battery") { " or once the device is on mains power" } else { "" };
        format!(
            "retry in {retry} s{when}: background requests are refused while the device is {} ({})",
            s.state,
            s.reasons.join(", ")
        )
    }

    /// New readings. Applies the limits they make; returns the new state when it changed
    /// (its name, its limits or its reasons' conditions), None otherwise.
    pub fn update(&self, battery: Option<Battery>, zones: &[Zone]) -> Option<PowerState> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (d, zone) = decide(&self.config, battery.as_ref(), zones, current.1);
        let (old, _) = &*current;
        let changed = d.state != old.state || d.limits != old.limits;
        let (cores, since) = if changed {
            let cores = affinity::choose(&self.cores, d.limits.threads, std::path::Path::new(CPU_SYSFS));
            if cores != old.cores {
                match affinity::confine(&cores) {
                    Ok(n) => {
                        tracing::info!(cores = ?cores, threads = n, "power: the daemon's threads confined to these cores")
                    }
                    Err(e) => tracing::warn!(error = %e, "power: could not set the threads' CPU affinity"),
                }
            }
            (cores, SystemTime::now())
        } else {
            (old.cores.clone(), old.since)
        };
        let state = PowerState { state: d.state, battery, zone, limits: d.limits, cores, reasons: d.reasons, since };
        self.max_parallel.store(d.limits.max_parallel, Ordering::Relaxed);
        self.background.store(d.limits.background as u8, Ordering::Relaxed);
        *current = (state.clone(), d.heat);
        changed.then_some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(celsius: f64) -> Zone {
        Zone { name: "thermal_zone0".into(), kind: "cpu-thermal".into(), celsius, hot_at: 75.0, critical_at: 95.0 }
    }

    fn on_battery(percent: f64) -> Battery {
        Battery { on_battery: true, percent: Some(percent), warning_level: 1 }
    }

    #[test]
    fn every_condition_limits_and_the_worst_names_the_state() {
        let c = PowerConfig::default();
        let (d, _) = decide(&c, None, &[zone(40.0)], Heat::Normal);
        assert_eq!((d.state, d.limits), ("normal", Limits::default()));
        let (d, _) = decide(&c, Some(&on_battery(60.0)), &[zone(40.0)], Heat::Normal);
        assert_eq!((d.state, d.limits.background, d.limits.max_parallel), ("on-battery", Background::Defer, 0));
        assert_eq!(d.reasons, vec!["on battery at 60 %"]);
        let (d, _) = decide(&c, Some(&on_battery(15.0)), &[zone(40.0)], Heat::Normal);
        assert_eq!((d.state, d.limits.background, d.limits.max_parallel), ("low-battery", Background::Refuse, 1));
        let (d, _) = decide(&c, None, &[zone(72.0)], Heat::Normal);
        assert_eq!((d.state, d.limits), ("hot", c.hot));
        assert_eq!(d.reasons, vec!["cpu-thermal hot at 72.0 °C (from 70.0 °C)"]);
        // hot on battery: the heat names the state, both limit
        let (d, _) = decide(&c, Some(&on_battery(60.0)), &[zone(72.0)], Heat::Normal);
        assert_eq!((d.state, d.limits.threads, d.limits.background), ("hot", 1, Background::Defer));
        assert_eq!(d.reasons.len(), 2);
        let (d, _) = decide(&c, Some(&on_battery(5.0)), &[zone(72.0)], Heat::Normal);
        assert_eq!((d.state, d.limits.background), ("critical-battery", Background::Refuse));
        let (d, _) = decide(&c, Some(&on_battery(60.0)), &[zone(91.0)], Heat::Normal);
        assert_eq!(d.state, "critical-heat");
    }

    #[test]
    fn the_governor_reports_changes_only() {
        let mut c = PowerConfig::default();
        c.hot.threads = 0; // leave this test process's cores alone
        c.critical_heat.threads = 0;
        c.critical_battery.threads = 0;
        let g = Governor::new(c);
        assert_eq!(g.max_parallel(4), 4);
        assert!(g.update(None, &[zone(40.0)]).is_none(), "normal at start");
        let s = g.update(Some(on_battery(50.0)), &[zone(40.0)]).expect("a change");
        assert_eq!((s.state, g.background()), ("on-battery", Background::Defer));
        assert!(g.update(Some(on_battery(49.0)), &[zone(40.0)]).is_none(), "the same state");
        assert_eq!(g.state().battery.unwrap().percent, Some(49.0), "the readings are current");
        g.update(Some(on_battery(10.0)), &[zone(40.0)]).expect("low");
        assert_eq!((g.max_parallel(4), g.background()), (1, Background::Refuse));
        assert!(g.refusal().starts_with("retry in 300 s or once the device is on mains power: "), "{}", g.refusal());
        let s = g.update(None, &[zone(40.0)]).expect("back on mains");
        assert!(!s.limiting());
        assert_eq!((g.max_parallel(4), g.background()), (4, Background::Run));
    }
}
