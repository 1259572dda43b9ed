//! A private `dbus-daemon` and a real `llamad serve` on it, per test, with the
//! fixture models in a models directory of symlinks. Both die with the guard.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llamad_api::ManagerProxy;

use super::{fixture, repo};

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub address: String,
    pub bus: Child,
    pub llamad: Option<Child>,
    /// Environment variables llamad is started with (besides the test's own).
    pub env: Vec<(String, String)>,
}

/// Models offered by every test daemon: name → fixture directory.
pub const MODELS: &[(&str, &str)] = &[
    ("tiny", "tiny-llama2-optimum-fp32"),
    ("tiny-genai", "tiny-llama2-genai-int4"),
    ("stories", "stories260k-optimum-fp32"),
    ("tiny-gguf", "tiny-llama2-gguf-int4"),
];

pub fn target_bin(name: &str) -> PathBuf {
    // tests run from target/<profile>/deps/
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(path.exists(), "{} is not built: run the suite with `cargo test --workspace` (tests/run)", path.display());
    path
}

/// The runner that the workspace's binaries are started through, split into words:
/// `LLAMAD_TEST_RUNNER` (tests/run-arm64 sets `qemu-aarch64` to run aarch64 binaries on
/// another machine, with no binfmt handler), or nothing.
pub fn runner() -> Vec<String> {
    std::env::var("LLAMAD_TEST_RUNNER").map(|r| r.split_whitespace().map(String::from).collect()).unwrap_or_default()
}

/// A command that starts the workspace's binary `name` (through [`runner`]).
pub fn target_command(name: &str) -> Command {
    let mut words = runner();
    if words.is_empty() {
        return Command::new(target_bin(name));
    }
    let mut c = Command::new(words.remove(0));
    c.args(words).arg(target_bin(name));
    c
}

/// `config` with its `[memory]` table reading pressure from a quiet file in `dir`, unless
/// it names a `psi` file itself. A test daemon on the machine's `/proc/pressure/memory`
/// refused work whenever the shared machine stalled on memory (its PSI trigger fired while
/// other tests, builds or qemu ran): the tests of other features must not depend on that.
/// `memory.rs` drives pressure through such a file; the trigger on the kernel's file is
/// tested in `memory::trigger` and by `the_kernel_pressure_file_takes_the_trigger`.
pub fn quiet_pressure(config: &str, dir: &Path) -> String {
    if config.lines().any(|l| l.trim_start().starts_with("psi ") || l.trim_start().starts_with("psi=")) {
        return config.to_string();
    }
    let file = dir.join("pressure");
    if !file.exists() {
        std::fs::write(&file, "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
    }
    let line = format!("psi = \"{}\"", file.display());
    match config.lines().position(|l| l.trim() == "[memory]") {
        Some(i) => {
            let mut lines: Vec<&str> = config.lines().collect();
            lines.insert(i + 1, &line);
            lines.join("\n") + "\n"
        }
        None => format!("{config}\n[memory]\n{line}\n"),
    }
}

impl Daemon {
    /// Starts a bus and llamad with `extra_config` appended to the test configuration.
    pub async fn start(extra_config: &str) -> Daemon {
        Daemon::start_with(extra_config, &[]).await
    }

    /// As [`Daemon::start`], offering `extra_models` (name, directory) besides [`MODELS`].
    pub async fn start_with(extra_config: &str, extra_models: &[(&str, &Path)]) -> Daemon {
        Daemon::start_env(extra_config, extra_models, &[]).await
    }

    /// As [`Daemon::start_with`], llamad having `env` in its environment (`{bus}` in a value
    /// is the test bus's address).
    pub async fn start_env(extra_config: &str, extra_models: &[(&str, &Path)], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>"#,
                socket.display()
            ),
        )
        .unwrap();
        let bus_log = std::fs::File::create(dir.path().join("bus.log")).unwrap();
        let bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--nosyslog")
            .stdout(Stdio::null())
            .stderr(bus_log)
            .spawn()
            .expect("dbus-daemon (Debian package dbus-daemon) must be installed: tests/run installs it");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let models = dir.path().join("models");
        std::fs::create_dir(&models).unwrap();
        for (name, fixture_name) in MODELS {
            std::os::unix::fs::symlink(fixture(fixture_name), models.join(name)).unwrap();
        }
        for (name, dir) in extra_models {
            std::os::unix::fs::symlink(dir, models.join(name)).unwrap();
        }
        let config = dir.path().join("llamad.toml");
        std::fs::write(
            &config,
            format!("models_dir = \"{}\"\nbackend = \"tract\"\nthreads = 1\n{extra_config}\n", models.display()),
        )
        .unwrap();
        let address = format!("unix:path={}", socket.display());
        // `{bus}` in a value: this test bus's address (DBUS_SYSTEM_BUS_ADDRESS for mocks of
        // system services)
        let env = env.iter().map(|(k, v)| (k.to_string(), v.replace("{bus}", &address))).collect();
        let mut d = Daemon { dir, address, bus, llamad: None, env };
        d.spawn_llamad(&config).await;
        d
    }

    async fn spawn_llamad(&mut self, config: &Path) {
        self.spawn_llamad_as(config, None).await
    }

    /// Spawns llamad, as `uid` (and its group) when given: with the capability to read
    /// any file (`CAP_DAC_READ_SEARCH`, ambient), so that it reads the fixtures wherever
    /// the clone lives, while the bus and polkit see the unprivileged uid.
    async fn spawn_llamad_as(&mut self, config: &Path, uid: Option<u32>) {
        let text = std::fs::read_to_string(config).unwrap();
        std::fs::write(config, quiet_pressure(&text, self.dir.path())).unwrap();
        let log = std::fs::File::options().create(true).append(true).open(self.dir.path().join("llamad.log")).unwrap();
        let mut command = match uid {
            None => target_command("llamad"),
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .args(["--clear-groups", "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"])
                    .args(runner())
                    .arg(target_bin("llamad"));
                c
            }
        };
        let child = command
            .args(["serve", "--address", &self.address, "--config"])
            .arg(config)
            .env("LLAMAD_LOG", "info,ort=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.llamad = Some(child);
        // Ready when the name is owned.
        let deadline = Instant::now() + Duration::from_secs(30);
        let conn = self.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        loop {
            if dbus.name_has_owner(llamad_api::BUS_NAME.try_into().unwrap()).await.unwrap() {
                return;
            }
            assert!(Instant::now() < deadline, "llamad did not take its name: {}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts llamad again on the same bus and configuration (after it died or was killed).
    pub async fn restart(&mut self) {
        if let Some(mut c) = self.llamad.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let config = self.dir.path().join("llamad.toml");
        self.spawn_llamad(&config).await;
    }

    /// Starts llamad again as `uid` (see [`Daemon::spawn_llamad_as`]); the socket's
    /// directory is opened to others.
    pub async fn restart_as(&mut self, uid: u32) {
        use std::os::unix::fs::PermissionsExt;
        if let Some(mut c) = self.llamad.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = self.dir.path().join("llamad.toml");
        self.spawn_llamad_as(&config, Some(uid)).await;
    }

    /// llamad's resident memory now, in bytes (VmRSS).
    pub fn rss(&self) -> u64 {
        let pid = self.llamad.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        kib * 1024
    }

    pub async fn connect(&self) -> zbus::Connection {
        // A loaded machine occasionally refuses a connection attempt: retry a few times.
        let mut last = None;
        for _ in 0..5 {
            match zbus::connection::Builder::address(self.address.as_str()).unwrap().build().await {
                Ok(c) => return c,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot connect to the test bus: {last:?}")
    }

    pub async fn proxy(&self) -> (zbus::Connection, ManagerProxy<'static>) {
        let conn = self.connect().await;
        let proxy = ManagerProxy::new(&conn).await.unwrap();
        (conn, proxy)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("llamad.log")).unwrap_or_default()
    }

    pub fn llamactl(&self) -> Command {
        let mut c = target_command("llamactl");
        c.args(["--address", &self.address]);
        c
    }

    /// Sends SIGTERM to llamad and waits for it (returns its exit status).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.llamad.as_mut().unwrap();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "llamad did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.llamad.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

pub fn python_client() -> PathBuf {
    repo().join("tests/clients/stream_completion.py")
}
