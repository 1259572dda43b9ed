//! Temperatures from the kernel's thermal zones (`/sys/class/thermal/thermal_zone*`):
//! each zone's `temp` and its trip points (millidegrees Celsius), and the heat level they
//! make, with hysteresis so that a zone hovering at a threshold does not flap.

use std::path::Path;

use super::config::PowerConfig;

/// One zone as read now.
#[derive(Clone, Debug, PartialEq)]
pub struct Zone {
    /// `thermal_zone0`, ...
    pub name: String,
    /// What it measures (`type`: `cpu-thermal`, `x86_pkg_temp`, ...).
    pub kind: String,
    pub celsius: f64,
    /// Its first passive trip point (where the kernel throttles), or `hot_celsius`.
    pub hot_at: f64,
    /// Its first hot or critical trip point, or `critical_celsius`.
    pub critical_at: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Heat {
    #[default]
    Normal,
    Hot,
    Critical,
}

fn millidegrees(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: i64 = text.trim().parse().ok()?;
    Some(v as f64 / 1000.0)
}

/// The zones under `dir` that can be read (a zone whose sensor is off fails its read: skipped).
pub fn read_zones(dir: &Path, config: &PowerConfig) -> Vec<Zone> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut zones = vec![];
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("thermal_zone") {
            continue;
        }
        let zone = e.path();
        let Some(celsius) = millidegrees(&zone.join("temp")) else { continue };
        let kind = std::fs::read_to_string(zone.join("type")).map(|t| t.trim().to_string()).unwrap_or_default();
        let (mut passive, mut critical) = (f64::INFINITY, f64::INFINITY);
        for i in 0..64 {
            let Ok(kind) = std::fs::read_to_string(zone.join(format!("trip_point_{i}_type"))) else { break };
            // a trip point at or below 0 °C is a placeholder some drivers leave
            let Some(t) = millidegrees(&zone.join(format!("trip_point_{i}_temp"))).filter(|t| *t > 0.0) else {
                continue;
            };
            match kind.trim() {
                "passive" => passive = passive.min(t),
                "hot" | "critical" => critical = critical.min(t),
                _ => {}
            }
        }
        let critical_at = if critical.is_finite() { critical } else { config.critical_celsius };
        let hot_at = if passive.is_finite() { passive } else { config.hot_celsius }.min(critical_at);
        zones.push(Zone { name, kind, celsius, hot_at, critical_at });
    }
    zones.sort_by(|a, b| a.name.cmp(&b.name));
    zones
}

/// The heat level the zones make, `previous` being the last one: a level begins `margin`
/// below a zone's threshold and ends once every zone is `hysteresis` below where it began.
/// Also the zone that decides it (the one nearest its threshold).
pub fn heat<'a>(zones: &'a [Zone], config: &PowerConfig, previous: Heat) -> (Heat, Option<&'a Zone>) {
    let slack = |level: Heat| if previous >= level { config.hysteresis_celsius } else { 0.0 };
    let mut worst = (Heat::Normal, None, f64::NEG_INFINITY);
    for z in zones {
        let critical = z.critical_at - config.margin_celsius - slack(Heat::Critical);
        let hot = z.hot_at - config.margin_celsius - slack(Heat::Hot);
        let level = if z.celsius >= critical {
            Heat::Critical
        } else if z.celsius >= hot {
            Heat::Hot
        } else {
            Heat::Normal
        };
        // how close it is to its hot threshold: picks the zone to show
        let nearness = z.celsius - z.hot_at;
        if (level, nearness) > (worst.0, worst.2) {
            worst = (level, Some(z), nearness);
        }
    }
    (worst.0, worst.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, zone: &str, files: &[(&str, &str)]) {
        let z = dir.join(zone);
        std::fs::create_dir_all(&z).unwrap();
        for (name, text) in files {
            std::fs::write(z.join(name), text).unwrap();
        }
    }

    #[test]
    fn reads_zones_and_their_trip_points() {
        let dir = tempfile::tempdir().unwrap();
        let c = PowerConfig::default();
        write(
            dir.path(),
            "thermal_zone0",
            &[
                ("type", "cpu-thermal\n"),
                ("temp", "61500\n"),
                ("trip_point_0_type", "active\n"),
                ("trip_point_0_temp", "50000\n"),
                ("trip_point_1_type", "passive\n"),
                ("trip_point_1_temp", "75000\n"),
                ("trip_point_2_type", "critical\n"),
                ("trip_point_2_temp", "95000\n"),
            ],
        );
        // no trip points: the configured temperatures
        write(dir.path(), "thermal_zone1", &[("type", "gpu\n"), ("temp", "40000\n")]);
        // a sensor that is off
        write(dir.path(), "thermal_zone2", &[("type", "off\n"), ("temp", "")]);
        write(dir.path(), "cooling_device0", &[("type", "fan\n")]);
        let zones = read_zones(dir.path(), &c);
        assert_eq!(
            zones,
            vec![
                Zone {
                    name: "thermal_zone0".into(),
                    kind: "cpu-thermal".into(),
                    celsius: 61.5,
                    hot_at: 75.0,
                    critical_at: 95.0
                },
                Zone {
                    name: "thermal_zone1".into(),
                    kind: "gpu".into(),
                    celsius: 40.0,
                    hot_at: 85.0,
                    critical_at: 100.0
                },
            ]
        );
        assert!(read_zones(&dir.path().join("missing"), &c).is_empty());
    }

    #[test]
    fn heat_begins_before_the_trip_point_and_ends_below_it() {
        let c = PowerConfig::default(); // margin 5, hysteresis 3
        let zone = |celsius: f64| {
            vec![Zone { name: "z".into(), kind: "cpu".into(), celsius, hot_at: 75.0, critical_at: 95.0 }]
        };
        assert_eq!(heat(&zone(69.9), &c, Heat::Normal).0, Heat::Normal);
        assert_eq!(heat(&zone(70.0), &c, Heat::Normal).0, Heat::Hot);
        // hot stays hot until 3 °C below where it began
        assert_eq!(heat(&zone(67.5), &c, Heat::Hot).0, Heat::Hot);
        assert_eq!(heat(&zone(66.9), &c, Heat::Hot).0, Heat::Normal);
        assert_eq!(heat(&zone(90.0), &c, Heat::Hot).0, Heat::Critical);
        assert_eq!(heat(&zone(88.0), &c, Heat::Critical).0, Heat::Critical);
        assert_eq!(heat(&zone(86.0), &c, Heat::Critical).0, Heat::Hot);
        assert_eq!(heat(&[], &c, Heat::Critical), (Heat::Normal, None));
    }
}
