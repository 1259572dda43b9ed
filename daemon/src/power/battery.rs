//! The battery, as UPower tells it on the system bus: whether the device runs on battery
//! (`OnBattery`), and its display device's charge (`Percentage`) and `WarningLevel`.

use zbus::proxy;

use super::config::PowerConfig;

#[proxy(
    interface = "org.freedesktop.UPower",
    default_service = "org.freedesktop.UPower",
    default_path = "/org/freedesktop/UPower"
)]
pub trait UPower {
    #[zbus(property)]
    fn on_battery(&self) -> zbus::Result<bool>;
}

#[proxy(
    interface = "org.freedesktop.UPower.Device",
    default_service = "org.freedesktop.UPower",
    default_path = "/org/freedesktop/UPower/devices/DisplayDevice"
)]
pub trait Device {
    #[zbus(property)]
    fn percentage(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn warning_level(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn is_present(&self) -> zbus::Result<bool>;
}

/// UPower's `WarningLevel` values.
pub mod warning {
    pub const LOW: u32 = 3;
    pub const CRITICAL: u32 = 4;
    pub const ACTION: u32 = 5;
}

/// What UPower said last.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Battery {
    pub on_battery: bool,
    /// The display device's charge, when it has a battery.
    pub percent: Option<f64>,
    pub warning_level: u32,
}

impl Battery {
    /// UPower's warning level as a word.
    pub fn warning(&self) -> &'static str {
        match self.warning_level {
            1 => "none",
            2 => "discharging",
            warning::LOW => "low",
            warning::CRITICAL => "critical",
            warning::ACTION => "action",
            _ => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Charge {
    #[default]
    Mains,
    OnBattery,
    Low,
    Critical,
}

/// How the battery stands: mains power unless UPower says the device runs on battery.
pub fn charge(b: &Battery, c: &PowerConfig) -> Charge {
    if !b.on_battery {
        return Charge::Mains;
    }
    let pct = b.percent.unwrap_or(100.0);
    if b.warning_level >= warning::CRITICAL || pct <= c.critical_percent {
        Charge::Critical
    } else if b.warning_level == warning::LOW || pct <= c.low_percent {
        Charge::Low
    } else {
        Charge::OnBattery
    }
}

/// Reads UPower's properties now (from the proxies' caches, kept current by their signals).
pub async fn read(upower: &UPowerProxy<'_>, device: &DeviceProxy<'_>) -> zbus::Result<Battery> {
    let on_battery = upower.on_battery().await?;
    let present = device.is_present().await.unwrap_or(false);
    let percent = if present { device.percentage().await.ok() } else { None };
    let warning_level = device.warning_level().await.unwrap_or(0);
    Ok(Battery { on_battery, percent, warning_level })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charge_follows_upower_and_the_configured_percentages() {
        let c = PowerConfig::default(); // low 20 %, critical 7 %
        let b = |on_battery, percent, warning_level| Battery { on_battery, percent, warning_level };
        assert_eq!(charge(&b(false, Some(3.0), warning::CRITICAL), &c), Charge::Mains, "charging");
        assert_eq!(charge(&b(true, Some(80.0), 1), &c), Charge::OnBattery);
        assert_eq!(charge(&b(true, None, 1), &c), Charge::OnBattery, "no battery percentage");
        assert_eq!(charge(&b(true, Some(20.0), 1), &c), Charge::Low);
        assert_eq!(charge(&b(true, Some(50.0), warning::LOW), &c), Charge::Low);
        assert_eq!(charge(&b(true, Some(7.0), 1), &c), Charge::Critical);
        assert_eq!(charge(&b(true, Some(50.0), warning::ACTION), &c), Charge::Critical);
        assert_eq!(b(true, None, warning::LOW).warning(), "low");
    }
}
