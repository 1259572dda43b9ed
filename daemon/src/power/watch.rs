//! The governor's watcher: an async task that reads the battery (UPower, woken by its
//! `PropertiesChanged` signals) and the thermal zones (every `interval_ms`), feeds them to
//! the [`Governor`], and reports a change of state as an [`Event::PowerState`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;

use super::Governor;
use super::battery::{self, DeviceProxy, UPowerProxy};
use crate::scheduler::Event;

/// UPower's proxies on the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set), uncached: each
/// reading asks UPower, so a UPower started or restarted later is found.
async fn upower() -> Option<(UPowerProxy<'static>, DeviceProxy<'static>, zbus::Connection)> {
    let conn = match zbus::Connection::system().await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "power: no system bus, so no battery readings (counted as on mains power)");
            return None;
        }
    };
    let no_cache = zbus::proxy::CacheProperties::No;
    let u = UPowerProxy::builder(&conn).cache_properties(no_cache).build().await.ok()?;
    let d = DeviceProxy::builder(&conn).cache_properties(no_cache).build().await.ok()?;
    Some((u, d, conn))
}

/// Runs until the daemon stops.
pub async fn run(governor: Arc<Governor>, events: UnboundedSender<Event>) {
    let c = governor.config.clone();
    let proxies = if c.battery { upower().await } else { None };
    // any property change of UPower's or of its display device wakes the watcher
    let mut changes = futures_util::stream::select_all(Vec::new());
    if let Some((_, _, conn)) = &proxies {
        for path in ["/org/freedesktop/UPower", "/org/freedesktop/UPower/devices/DisplayDevice"] {
            let props = zbus::fdo::PropertiesProxy::builder(conn)
                .destination("org.freedesktop.UPower")
                .and_then(|b| b.path(path))
                .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No));
            if let Ok(b) = props
                && let Ok(p) = b.build().await
                && let Ok(s) = p.receive_properties_changed().await
            {
                changes.push(s.map(|_| ()).boxed());
            }
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(c.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = changes.next() => {}
        }
        let battery = match &proxies {
            Some((u, d, _)) => match battery::read(u, d).await {
                Ok(b) => {
                    warned = false;
                    Some(b)
                }
                Err(e) => {
                    if !warned {
                        tracing::info!(error = %e, "power: UPower does not answer (counted as on mains power)");
                        warned = true;
                    }
                    None
                }
            },
            None => None,
        };
        let (dir, config) = (c.thermal_dir.clone(), c.clone());
        let zones = if dir.as_os_str().is_empty() {
            vec![]
        } else {
            tokio::task::spawn_blocking(move || super::thermal::read_zones(&dir, &config)).await.unwrap_or_default()
        };
        let g = governor.clone();
        // applying a limit walks the process's threads: off the runtime
        let changed = tokio::task::spawn_blocking(move || g.update(battery, &zones)).await.ok().flatten();
        if let Some(state) = changed {
            tracing::info!(state = state.state, reasons = ?state.reasons, threads = state.limits.threads,
                max_parallel = state.limits.max_parallel, background = state.limits.background.as_str(),
                "power state changed");
            let _ = events.send(Event::PowerState);
        }
    }
}
