//! The effective budget: the smallest of the configured value (bytes or a
//! percentage of RAM), and the cgroup limit the daemon runs under (v2
//! `memory.max`, v1 `memory.limit_in_bytes`) and physical RAM each less the
//! configured reserve (room left for the rest of the system and the kernel). A
//! budget the admin sets is that budget: the reserve only comes off limits the
//! daemon finds. Each number keeps where it came from.

use std::path::Path;

use serde::{Deserialize, Deserializer};

/// A size in the configuration: bytes (`1073741824`), units (`"512MiB"`, `"2G"`) or a
/// share of physical RAM (`"75%"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Size {
    Bytes(u64),
    Percent(f64),
}

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| format!("{s:?}: not a percentage"))?;
            if !(0.0..=100.0).contains(&v) || v == 0.0 {
                return Err(format!("{s:?}: a percentage must be in (0, 100]"));
            }
            return Ok(Size::Percent(v));
        }
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let v: f64 = num.parse().map_err(|_| format!("{s:?}: not a size"))?;
        let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" | "kib" => 1024.0,
            "m" | "mb" | "mib" => 1048576.0,
            "g" | "gb" | "gib" => 1073741824.0,
            "t" | "tb" | "tib" => 1099511627776.0,
            other => return Err(format!("{s:?}: unknown unit {other:?}")),
        };
        Ok(Size::Bytes((v * mult) as u64))
    }

    pub fn resolve(self, physical: u64) -> u64 {
        match self {
            Size::Bytes(b) => b,
            Size::Percent(p) => (physical as f64 * p / 100.0) as u64,
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size::Bytes(n)),
            Raw::S(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// The budget and where its parts came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    /// What llamad may use: min(config, cgroup − reserve, physical − reserve).
    pub effective: u64,
    pub config: Option<u64>,
    pub cgroup: Option<u64>,
    /// Which cgroup file gave `cgroup`.
    pub cgroup_source: Option<String>,
    pub physical: u64,
    pub reserve: u64,
}

/// The memory limit of the cgroup this process is in (`root` is `/sys/fs/cgroup` or a test copy).
pub fn cgroup_limit(root: &Path, proc_self_cgroup: &str) -> Option<(u64, String)> {
    let read = |p: &Path| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            // cgroup v2 (unified): memory.max, "max" = no limit.
            let file = root.join(rel).join("memory.max");
            if let Some(v) = read(&file).and_then(|v| v.parse::<u64>().ok()) {
                return Some((v, file.display().to_string()));
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let file = root.join("memory").join(rel).join("memory.limit_in_bytes");
            // v1 reports "no limit" as a huge page-rounded number.
            if let Some(v) = read(&file).and_then(|v| v.parse::<u64>().ok()).filter(|&v| v < (1 << 62)) {
                return Some((v, file.display().to_string()));
            }
        }
    }
    None
}

impl Budget {
    pub fn compute(config: Option<Size>, reserve: Size, physical: u64, cgroup: Option<(u64, String)>) -> Budget {
        let config = config.map(|s| s.resolve(physical));
        let (cgroup, cgroup_source) = match cgroup {
            Some((v, s)) => (Some(v), Some(s)),
            None => (None, None),
        };
        let reserve = reserve.resolve(physical);
        let found = [cgroup, Some(physical)].into_iter().flatten().min().unwrap_or(physical);
        let effective = found.saturating_sub(reserve).min(config.unwrap_or(u64::MAX));
        Budget { effective, config, cgroup, cgroup_source, physical, reserve }
    }

    /// The budget of this process on this machine.
    pub fn detect(config: Option<Size>, reserve: Size) -> Budget {
        let physical = match sysinfo::System::new() {
            Ok(mut sys) => {
                sys.refresh_memory();
                sys.total_memory()
            }
            Err(_) => 0,
        };
        let cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|c| cgroup_limit(Path::new("/sys/fs/cgroup"), &c));
        Budget::compute(config, reserve, physical, cgroup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(Size::parse("512MiB"), Ok(Size::Bytes(512 << 20)));
        assert_eq!(Size::parse("2G"), Ok(Size::Bytes(2 << 30)));
        assert_eq!(Size::parse("1000"), Ok(Size::Bytes(1000)));
        assert_eq!(Size::parse("75%"), Ok(Size::Percent(75.0)));
        for bad in ["", "12 apples", "-5", "150%", "0%", "MiB"] {
            assert!(Size::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_smallest_limit_wins_and_the_reserve_comes_off_found_limits_only() {
        let gib = 1u64 << 30;
        let b = Budget::compute(Some(Size::Percent(50.0)), Size::Bytes(gib / 4), 8 * gib, Some((3 * gib, "x".into())));
        assert_eq!(b.config, Some(4 * gib));
        assert_eq!(b.effective, 3 * gib - gib / 4);
        let b = Budget::compute(None, Size::Bytes(0), 8 * gib, None);
        assert_eq!(b.effective, 8 * gib);
        // an explicit budget is that budget: 1 GiB on 24 GiB with a 5 % reserve (1.2 GiB) was 0
        let b = Budget::compute(Some(Size::Bytes(gib)), Size::Percent(5.0), 24 * gib, None);
        assert_eq!(b.effective, gib);
        // ... unless what the daemon finds, less the reserve, is smaller
        let b = Budget::compute(Some(Size::Bytes(2 * gib)), Size::Bytes(gib / 2), 2 * gib, None);
        assert_eq!(b.effective, 2 * gib - gib / 2);
        let b = Budget::compute(None, Size::Percent(5.0), 20 * gib, Some((10 * gib, "x".into())));
        assert_eq!(b.effective, 9 * gib);
    }

    #[test]
    fn cgroup_limits_are_read_from_v2_and_v1_layouts() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("system.slice/llamad.service");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.max"), "1073741824\n").unwrap();
        let got = cgroup_limit(root.path(), "0::/system.slice/llamad.service\n").unwrap();
        assert_eq!(got.0, 1 << 30);
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_limit(root.path(), "0::/system.slice/llamad.service\n"), None);
        let v1 = root.path().join("memory/user.slice");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "536870912\n").unwrap();
        let got = cgroup_limit(root.path(), "9:memory:/user.slice\n1:name=systemd:/\n").unwrap();
        assert_eq!(got.0, 512 << 20);
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(cgroup_limit(root.path(), "9:memory:/user.slice\n"), None);
    }
}
