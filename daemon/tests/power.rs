//! The power and heat governor on a real daemon: python3-dbusmock's `upower` template on the
//! test bus (llamad's DBUS_SYSTEM_BUS_ADDRESS points there) and a fake thermal-zone
//! directory. On battery background work is deferred; on low battery it is refused with
//! `PowerSaving` (a waiting one ends so); back on mains it runs; hot confines the daemon's
//! threads to one core and one request at once per model; critical heat refuses background
//! work; cool again lifts every limit. Each state is seen in the `PowerState` property
//! (with its change signal), in `llamactl status` and in the metrics.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::bus::Daemon;
use common::client::{collect, manager_signals};
use common::mock::Mock;
use futures_util::StreamExt;
use llamad_api::ManagerProxy;
use zbus::zvariant::{OwnedValue, Value};

const UPOWER: &str = "org.freedesktop.UPower";
const DISPLAY: &str = "/org/freedesktop/UPower/devices/DisplayDevice";

/// Sets a property of the mock's (it sends PropertiesChanged, as UPower does).
async fn set(conn: &zbus::Connection, path: &str, iface: &str, name: &str, value: Value<'_>) {
    conn.call_method(Some(UPOWER), path, Some("org.freedesktop.DBus.Properties"), "Set", &(iface, name, value))
        .await
        .unwrap();
}

async fn battery(conn: &zbus::Connection, on_battery: bool, percent: f64) {
    let dev = "org.freedesktop.UPower.Device";
    set(conn, DISPLAY, dev, "IsPresent", Value::from(true)).await;
    set(conn, DISPLAY, dev, "Percentage", Value::from(percent)).await;
    set(conn, "/org/freedesktop/UPower", UPOWER, "OnBattery", Value::from(on_battery)).await;
}

fn zone(dir: &Path, millidegrees: i64) {
    let z = dir.join("thermal_zone0");
    std::fs::create_dir_all(&z).unwrap();
    for (name, text) in [
        ("type", "cpu-thermal".to_string()),
        ("trip_point_0_type", "passive".into()),
        ("trip_point_0_temp", "75000".into()),
        ("trip_point_1_type", "critical".into()),
        ("trip_point_1_temp", "95000".into()),
    ] {
        std::fs::write(z.join(name), text).unwrap();
    }
    // written whole then renamed, as the kernel's file reads whole
    std::fs::write(z.join("temp.new"), format!("{millidegrees}\n")).unwrap();
    std::fs::rename(z.join("temp.new"), z.join("temp")).unwrap();
}

fn text(m: &HashMap<String, OwnedValue>, k: &str) -> String {
    m.get(k).and_then(|v| <&str>::try_from(v).ok()).unwrap_or("").to_string()
}

/// Waits until `PowerState` says `state`; returns it.
async fn wait_state(proxy: &ManagerProxy<'_>, state: &str) -> HashMap<String, OwnedValue> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = proxy.power_state().await.unwrap();
        if text(&p, "state") == state {
            return p;
        }
        assert!(Instant::now() < deadline, "PowerState never became {state}: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn background(max_tokens: u32) -> HashMap<&'static str, Value<'static>> {
    HashMap::from([
        ("max_tokens", Value::from(max_tokens)),
        ("temperature", Value::from(0.0f64)),
        ("priority", Value::from("background")),
    ])
}

fn interactive(max_tokens: u32) -> HashMap<&'static str, Value<'static>> {
    HashMap::from([("max_tokens", Value::from(max_tokens)), ("temperature", Value::from(0.0f64))])
}

/// The CPUs each of `pid`'s threads may run on (`Cpus_allowed_list`), deduplicated.
fn cpus_allowed(pid: u32) -> Vec<String> {
    let mut lists: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| s.lines().find(|l| l.starts_with("Cpus_allowed_list:")).map(|l| l[18..].trim().to_string()))
        .collect();
    lists.sort();
    lists.dedup();
    lists
}

fn status_line(d: &Daemon) -> String {
    let out = d.llamactl().arg("status").output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.lines().find(|l| l.starts_with("power:")).unwrap_or_else(|| panic!("no power line in {s}")).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_governor_follows_the_battery_and_the_heat() {
    let thermal = tempfile::tempdir().unwrap();
    zone(thermal.path(), 40_000);
    let config =
        format!("max_parallel = 2\n[power]\nthermal_dir = \"{}\"\ninterval_ms = 200\n", thermal.path().display());
    let d = Daemon::start_env(&config, &[], &[("DBUS_SYSTEM_BUS_ADDRESS", "{bus}")]).await;
    let (conn, proxy) = d.proxy().await;
    let pid = d.llamad.as_ref().unwrap().id();
    let _mock = Mock::start(&d, &conn, "upower", UPOWER).await;
    let mut changes = proxy.receive_power_state_changed().await;
    let p = wait_state(&proxy, "normal").await;
    assert_eq!(text(&p, "background"), "run");
    let all_cores = cpus_allowed(pid);
    assert_eq!(all_cores.len(), 1, "every thread starts with one mask: {all_cores:?}");
    assert!(status_line(&d).starts_with("power:          normal"), "{}", status_line(&d));
    let mut signals = manager_signals(&conn).await;

    // on battery: background work waits; interactive work runs
    battery(&conn, true, 60.0).await;
    let p = wait_state(&proxy, "on-battery").await;
    assert_eq!(text(&p, "background"), "defer");
    // PropertiesChanged carried the new state
    let signalled = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(c) = changes.next().await {
            if c.get().await.is_ok_and(|p| text(&p, "state") == "on-battery") {
                return true;
            }
        }
        false
    });
    assert!(signalled.await.unwrap_or(false), "PowerState's change is signalled");
    let line = status_line(&d);
    assert!(line.contains("on-battery (on battery at 60 %): background deferred"), "{line}");
    let waiting = proxy.generate("tiny", "Once upon a time", background(4)).await.unwrap();
    let id = proxy.generate("tiny", "The cat", interactive(4)).await.unwrap();
    let (_, stats, _) = collect(&mut signals, id).await;
    assert_eq!(stats.finish_reason, "length");
    let listed = proxy.list_requests().await.unwrap();
    let state = listed.iter().find(|r| r.get("id").and_then(|v| u64::try_from(v).ok()) == Some(waiting));
    assert_eq!(state.map(|r| text(r, "state")).as_deref(), Some("queued"), "deferred: {listed:?}");

    // low battery: background work is refused, the waiting request ends so
    battery(&conn, true, 12.0).await;
    let p = wait_state(&proxy, "low-battery").await;
    assert_eq!(text(&p, "background"), "refuse");
    let (_, stats, _) = collect(&mut signals, waiting).await;
    assert_eq!(stats.error_name.as_deref(), Some("org.llamad.Llama1.Error.PowerSaving"), "{stats:?}");
    let e = proxy.generate("tiny", "Once", background(4)).await.unwrap_err();
    let message = e.to_string();
    assert!(message.contains("PowerSaving") && message.contains("retry in 300 s"), "{message}");
    let out =
        d.llamactl().args(["run", "tiny", "Once", "--max-tokens", "4", "--priority", "background"]).output().unwrap();
    assert_eq!(out.status.code(), Some(13), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("battery low at 12 %"));
    // interactive work still runs, one at a time
    let p = proxy.power_state().await.unwrap();
    assert_eq!(u32::try_from(p.get("max_parallel").unwrap().try_clone().unwrap()).unwrap(), 1);
    let id = proxy.generate("tiny", "The cat", interactive(4)).await.unwrap();
    assert_eq!(collect(&mut signals, id).await.1.finish_reason, "length");

    // on mains again: background work runs
    battery(&conn, false, 12.0).await;
    wait_state(&proxy, "normal").await;
    let id = proxy.generate("tiny", "Once upon a time", background(4)).await.unwrap();
    assert_eq!(collect(&mut signals, id).await.1.finish_reason, "length");

    // hot: one core for every thread of the daemon
    zone(thermal.path(), 72_000);
    let p = wait_state(&proxy, "hot").await;
    assert_eq!(text(&p, "background"), "defer");
    let line = status_line(&d);
    assert!(line.contains("cpu-thermal hot at 72.0 °C (from 70.0 °C)"), "{line}");
    assert!(line.contains("compute on core "), "{line}");
    let confined = cpus_allowed(pid);
    assert_eq!(confined.len(), 1, "{confined:?}");
    assert!(!confined[0].contains(',') && !confined[0].contains('-'), "one core: {confined:?}");
    let id = proxy.generate("tiny", "The cat", interactive(4)).await.unwrap();
    assert_eq!(collect(&mut signals, id).await.1.finish_reason, "length", "it still computes");
    let metrics = proxy.metrics().await.unwrap();
    assert!(metrics.contains("llamad_power_state{state=\"hot\"} 1"), "{metrics}");

    // critical heat: background refused
    zone(thermal.path(), 91_000);
    let p = wait_state(&proxy, "critical-heat").await;
    assert_eq!(text(&p, "background"), "refuse");
    let e = proxy.generate("tiny", "Once", background(4)).await.unwrap_err();
    assert!(e.to_string().contains("retry in 30 s"), "{e}");

    // cool again (below the hysteresis): every limit lifted, every thread on every core
    zone(thermal.path(), 66_000);
    let p = wait_state(&proxy, "normal").await;
    assert!(!bool::try_from(p.get("limiting").unwrap().try_clone().unwrap()).unwrap());
    assert_eq!(cpus_allowed(pid), all_cores);
    let log = d.log();
    assert!(log.contains("power state changed"), "{log}");
}
