//! The files under systemd/ as installed: the unit passes `systemd-analyze
//! verify` and its `systemd-analyze security` exposure is printed and bounded;
//! the bus policy loads in a real dbus-daemon; the shipped configuration is the
//! built-in defaults, spelled out.

mod common;
use std::process::Command;
use std::time::{Duration, Instant};

use common::bus::target_bin;
use common::repo;
use llamad::config::Config;

fn unit_with_built_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(repo().join("systemd/llamad.service")).unwrap();
    let unit = unit.replace("ExecStart=/usr/bin/llamad", &format!("ExecStart={}", target_bin("llamad").display()));
    let path = dir.join("llamad.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn unit_verifies_and_is_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(tmp.path());
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze (systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(!stderr.contains("llamad.service:"), "warnings about the unit: {stderr}");

    let out =
        Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    eprintln!("{line}");
    for l in text.lines().filter(|l| l.starts_with('✗')) {
        eprintln!("  remaining: {}", l.split_whitespace().nth(1).unwrap_or(""));
    }
    let score: f64 = line.split(':').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(score <= 1.0, "exposure {score}");
}

#[test]
fn bus_policy_and_activation_files_load() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("bus");
    let conf = tmp.path().join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig><type>system</type>\
             <listen>unix:path={}</listen><include>{}</include><servicedir>{}</servicedir></busconfig>",
            socket.display(),
            repo().join("systemd/org.llamad.Llama1.conf").display(),
            repo().join("systemd").display()
        ),
    )
    .unwrap();
    let mut bus =
        Command::new("dbus-daemon").arg(format!("--config-file={}", conf.display())).arg("--nofork").spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Some(status) = bus.try_wait().unwrap() {
            panic!("dbus-daemon refused the policy ({status})");
        }
        assert!(Instant::now() < deadline, "dbus-daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = bus.kill();
    let _ = bus.wait();
    let activation = std::fs::read_to_string(repo().join("systemd/org.llamad.Llama1.service")).unwrap();
    assert!(activation.contains("Name=org.llamad.Llama1"));
    assert!(activation.contains("SystemdService=dbus-org.llamad.Llama1.service"));
    let unit = std::fs::read_to_string(repo().join("systemd/llamad.service")).unwrap();
    assert!(unit.contains("Alias=dbus-org.llamad.Llama1.service") && unit.contains("BusName=org.llamad.Llama1"));
}

#[test]
fn shipped_configuration_is_the_defaults() {
    let c = Config::load(Some(&repo().join("systemd/llamad.toml"))).unwrap();
    assert_eq!(c, Config::default());
}
