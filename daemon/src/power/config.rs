//! The governor's settings (`[power]`): where the battery and the temperatures come from,
//! when a state begins, and what each state limits.

use std::path::PathBuf;

use serde::Deserialize;

/// What happens to background requests in a state.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    /// As usual.
    #[default]
    Run,
    /// They wait (running ones pause, holding their memory) until the state ends.
    Defer,
    /// New ones are refused (`PowerSaving`, with when to retry); waiting ones end so too;
    /// running ones pause.
    Refuse,
}

impl Background {
    pub fn as_str(self) -> &'static str {
        match self {
            Background::Run => "run",
            Background::Defer => "defer",
            Background::Refuse => "refuse",
        }
    }
}

/// What one state limits; 0 = no limit (the daemon's own setting).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Cores the daemon's threads may run on (the most efficient ones, where the CPU says
    /// which: `cpu_capacity`). Every thread of the daemon is confined to them, the backends'
    /// compute pools included, so fewer cores draw power and make heat.
    pub threads: usize,
    /// Requests computed at once on one model (`max_parallel`, lowered). Rows already
    /// running finish; new ones start while fewer run.
    pub max_parallel: usize,
    pub background: Background,
}

impl Limits {
    const fn new(threads: usize, max_parallel: usize, background: Background) -> Limits {
        Limits { threads, max_parallel, background }
    }

    /// The stricter of two limits, field by field.
    pub fn and(self, o: Limits) -> Limits {
        let min = |a: usize, b: usize| match (a, b) {
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        Limits {
            threads: min(self.threads, o.threads),
            max_parallel: min(self.max_parallel, o.max_parallel),
            background: self.background.max(o.background),
        }
    }

    fn validate(&self, name: &str) -> Result<(), String> {
        if self.threads > 1024 || self.max_parallel > 64 {
            return Err(format!(
                "power.{name}: threads {} (0 to 1024), max_parallel {} (0 to 64)",
                self.threads, self.max_parallel
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PowerConfig {
    /// Watch the battery through UPower on the system bus (`DBUS_SYSTEM_BUS_ADDRESS` if set).
    /// Without UPower (or a battery) the device counts as on mains power.
    pub battery: bool,
    /// The kernel's thermal zones (`thermal_zone*/temp` and their trip points); empty = none.
    pub thermal_dir: PathBuf,
    /// How often the temperatures are read (milliseconds); the battery is watched by signals.
    pub interval_ms: u64,
    /// The battery is low at or below this percentage (or when UPower's warning level says low).
    pub low_percent: f64,
    /// The battery is critical at or below this percentage (or UPower's warning level critical
    /// or action).
    pub critical_percent: f64,
    /// A zone is hot from this many °C below its first passive trip point (where the kernel
    /// starts throttling), critical from this many below its hot or critical trip point.
    pub margin_celsius: f64,
    /// For zones without such trip points: hot and critical temperatures (°C).
    pub hot_celsius: f64,
    pub critical_celsius: f64,
    /// A state caused by heat ends once every zone is this much cooler than where it began.
    pub hysteresis_celsius: f64,
    pub on_battery: Limits,
    pub low_battery: Limits,
    pub critical_battery: Limits,
    pub hot: Limits,
    pub critical_heat: Limits,
}

impl Default for PowerConfig {
    fn default() -> Self {
        use Background::*;
        PowerConfig {
            battery: true,
            thermal_dir: PathBuf::from("/sys/class/thermal"),
            interval_ms: 2000,
            low_percent: 20.0,
            critical_percent: 7.0,
            margin_celsius: 5.0,
            hot_celsius: 85.0,
            critical_celsius: 100.0,
            hysteresis_celsius: 3.0,
            on_battery: Limits::new(0, 0, Defer),
            low_battery: Limits::new(0, 1, Refuse),
            critical_battery: Limits::new(1, 1, Refuse),
            hot: Limits::new(1, 1, Defer),
            critical_heat: Limits::new(1, 1, Refuse),
        }
    }
}

impl PowerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=600_000).contains(&self.interval_ms) {
            return Err(format!("power.interval_ms = {} (100 to 600000)", self.interval_ms));
        }
        let pct = |p: f64| (0.0..=100.0).contains(&p);
        if !pct(self.low_percent) || !pct(self.critical_percent) || self.critical_percent > self.low_percent {
            return Err(format!(
                "power.low_percent = {}, critical_percent = {} (0 to 100, critical at most low)",
                self.low_percent, self.critical_percent
            ));
        }
        let celsius = |c: f64| (-50.0..=200.0).contains(&c);
        if !celsius(self.hot_celsius) || !celsius(self.critical_celsius) || self.critical_celsius < self.hot_celsius {
            return Err(format!(
                "power.hot_celsius = {}, critical_celsius = {} (-50 to 200, critical at least hot)",
                self.hot_celsius, self.critical_celsius
            ));
        }
        if !(0.0..=50.0).contains(&self.margin_celsius) || !(0.0..=50.0).contains(&self.hysteresis_celsius) {
            return Err("power.margin_celsius and hysteresis_celsius: 0 to 50".into());
        }
        for (name, l) in [
            ("on_battery", &self.on_battery),
            ("low_battery", &self.low_battery),
            ("critical_battery", &self.critical_battery),
            ("hot", &self.hot),
            ("critical_heat", &self.critical_heat),
        ] {
            l.validate(name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_combine_to_the_stricter() {
        let a = Limits::new(0, 2, Background::Defer);
        let b = Limits::new(1, 0, Background::Run);
        assert_eq!(a.and(b), Limits::new(1, 2, Background::Defer));
        assert_eq!(Limits::default().and(Limits::new(0, 0, Background::Refuse)).background, Background::Refuse);
    }

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        PowerConfig::default().validate().unwrap();
        for text in [
            "interval_ms = 5",
            "low_percent = 10\ncritical_percent = 20",
            "hot_celsius = 90\ncritical_celsius = 80",
            "[hot]\nmax_parallel = 100",
            "[hot]\nbackground = \"later\"",
            "[hot]\nspeed = 1",
        ] {
            let r = toml::from_str::<PowerConfig>(text).map_err(|e| e.to_string()).and_then(|c| c.validate());
            assert!(r.is_err(), "{text:?} was accepted");
        }
        let c: PowerConfig = toml::from_str("[on_battery]\nbackground = \"refuse\"\nthreads = 2").unwrap();
        assert_eq!(c.on_battery, Limits::new(2, 0, Background::Refuse));
    }
}
