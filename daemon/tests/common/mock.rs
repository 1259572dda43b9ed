//! python3-dbusmock's templates for system services a test machine lacks (polkitd,
//! UPower), on the test's private bus: the templates ask for the system bus, and
//! DBUS_SYSTEM_BUS_ADDRESS points them at the test bus. The mock dies with the guard.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::bus::Daemon;

pub struct Mock(Child);

impl Mock {
    /// Starts `template` on `d`'s bus and waits until it owns `name`.
    pub async fn start(d: &Daemon, conn: &zbus::Connection, template: &str, name: &str) -> Mock {
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--template", template])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &d.address)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-dbusmock (tests/run installs it)");
        let mock = Mock(child);
        let dbus = zbus::fdo::DBusProxy::new(conn).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dbus.name_has_owner(name.try_into().unwrap()).await.unwrap() {
            assert!(Instant::now() < deadline, "the {template} mock did not take {name}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        mock
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
