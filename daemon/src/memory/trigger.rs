//! A PSI trigger: the kernel wakes llamad (POLLPRI on the pressure file) as soon
//! as tasks stalled on memory for STALL µs within a WINDOW, instead of llamad
//! finding out at its next `avg10` reading. Registered only on the kernel's own
//! pressure files (procfs `/proc/pressure/memory`, cgroup v2 `memory.pressure`):
//! on any other file (tests drive the avg10 path with plain files) nothing is
//! written. See the kernel's Documentation/accounting/psi.rst.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("\"{0}\": expected `some|full STALL_US WINDOW_US`, e.g. `some 150000 2000000`")]
    Syntax(String),
    #[error("window {0} µs: the kernel takes 500000 to 10000000")]
    Window(u64),
    #[error("stall {stall} µs: must be above 0 and below the window ({window} µs)")]
    Stall { stall: u64, window: u64 },
    #[error("{0} is not a kernel pressure file (procfs or cgroup v2)")]
    NotPsi(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// `some|full STALL_US WINDOW_US`, checked against the kernel's limits.
#[derive(Clone, Debug, PartialEq)]
pub struct TriggerSpec {
    pub full: bool,
    pub stall_us: u64,
    pub window_us: u64,
}

impl TriggerSpec {
    pub fn parse(text: &str) -> Result<TriggerSpec, TriggerError> {
        let syntax = || TriggerError::Syntax(text.to_string());
        let mut words = text.split_whitespace();
        let full = match words.next() {
            Some("some") => false,
            Some("full") => true,
            _ => return Err(syntax()),
        };
        let mut number = || words.next().and_then(|w| w.parse::<u64>().ok()).ok_or_else(syntax);
        let (stall_us, window_us) = (number()?, number()?);
        if words.next().is_some() {
            return Err(syntax());
        }
        if !(500_000..=10_000_000).contains(&window_us) {
            return Err(TriggerError::Window(window_us));
        }
        if stall_us == 0 || stall_us >= window_us {
            return Err(TriggerError::Stall { stall: stall_us, window: window_us });
        }
        Ok(TriggerSpec { full, stall_us, window_us })
    }

    pub fn window(&self) -> Duration {
        Duration::from_micros(self.window_us)
    }
}

impl std::fmt::Display for TriggerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", if self.full { "full" } else { "some" }, self.stall_us, self.window_us)
    }
}

/// A registered trigger; the kernel removes it when the file is closed (on drop).
pub struct Trigger {
    file: File,
    pub spec: TriggerSpec,
}

/// Whether `file` is on procfs or cgroup2, where pressure files live.
fn on_kernel_fs(file: &File) -> bool {
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // SAFETY: fstatfs writes into the zeroed struct we pass; the fd is open for the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, PROC_SUPER_MAGIC | CGROUP2_SUPER_MAGIC)
}

impl Trigger {
    pub fn register(path: &Path, spec: &TriggerSpec) -> Result<Trigger, TriggerError> {
        let io = |source| TriggerError::Io { path: path.display().to_string(), source };
        let check = File::open(path).map_err(io)?;
        if !on_kernel_fs(&check) {
            return Err(TriggerError::NotPsi(path.display().to_string()));
        }
        let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
        // The whole trigger in one write, with its terminating NUL, as psi.rst shows.
        file.write_all(format!("{spec}\0").as_bytes()).map_err(io)?;
        Ok(Trigger { file, spec: spec.clone() })
    }

    /// Waits up to `timeout` for the trigger to fire. Ok(true): it fired.
    pub fn wait(&self, timeout: Duration) -> std::io::Result<bool> {
        let mut fds = libc::pollfd { fd: self.file.as_raw_fd(), events: libc::POLLPRI, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut fds, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
        }
        if fds.revents & libc::POLLERR != 0 {
            return Err(std::io::Error::other("the pressure file went away (POLLERR)"));
        }
        Ok(n > 0 && fds.revents & libc::POLLPRI != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked_against_the_kernel_limits() {
        let s = TriggerSpec::parse("some 150000 2000000").unwrap();
        assert_eq!((s.full, s.stall_us, s.window_us), (false, 150_000, 2_000_000));
        assert_eq!(s.to_string(), "some 150000 2000000");
        assert!(TriggerSpec::parse("full 100000 1000000").unwrap().full);
        assert!(matches!(TriggerSpec::parse("most 1 2"), Err(TriggerError::Syntax(_))));
        assert!(matches!(TriggerSpec::parse("some 100"), Err(TriggerError::Syntax(_))));
        assert!(matches!(TriggerSpec::parse("some 1 2000000 3"), Err(TriggerError::Syntax(_))));
        assert!(matches!(TriggerSpec::parse("some 100 100000"), Err(TriggerError::Window(100_000))));
        assert!(matches!(TriggerSpec::parse("some 3000000 2000000"), Err(TriggerError::Stall { .. })));
    }

    #[test]
    fn nothing_is_written_to_a_plain_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        let spec = TriggerSpec::parse("some 150000 2000000").unwrap();
        assert!(matches!(Trigger::register(f.path(), &spec), Err(TriggerError::NotPsi(_))));
        assert_eq!(std::fs::read_to_string(f.path()).unwrap(), "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
    }

    /// On a kernel with PSI (this machine's and CI's), the trigger registers and waits.
    /// Real pressure cannot be produced here without disturbing the machine, so firing
    /// itself is not tested.
    #[test]
    fn registers_on_the_kernel_pressure_file() {
        let path = Path::new("/proc/pressure/memory");
        if !path.exists() {
            eprintln!("skipped: this kernel has no PSI (CONFIG_PSI off or psi=0)");
            return;
        }
        let spec = TriggerSpec::parse("some 150000 2000000").unwrap();
        let t = Trigger::register(path, &spec).unwrap_or_else(|e| panic!("{e}"));
        t.wait(Duration::from_millis(20)).unwrap();
    }
}
