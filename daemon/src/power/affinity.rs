//! Confining the daemon to fewer cores: every thread of the process (the runtime's, the
//! engine loops', the backends' compute pools) gets the same CPU affinity, and threads
//! created later inherit it from their creator. The cores kept are the most efficient ones
//! where the kernel tells their capacity (`cpu_capacity`, on big.LITTLE ARM systems), else
//! the lowest numbered. The mask the daemon started with is put back when the limit ends.

use std::path::Path;

/// The CPUs this process may run on (its mask at start).
pub fn allowed() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0;
    if !ok {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: CPU_ISSET reads the set, within CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Each CPU's capacity (`/sys/devices/system/cpu/cpuN/cpu_capacity`, 1024 for the fastest),
/// or None where the kernel does not say (all cores alike).
fn capacity(sys: &Path, cpu: usize) -> Option<u32> {
    std::fs::read_to_string(sys.join(format!("cpu{cpu}/cpu_capacity"))).ok()?.trim().parse().ok()
}

/// `n` of `cpus`: the lowest capacity first, then the lowest number. All of them when `n`
/// is 0 or not fewer.
pub fn choose(cpus: &[usize], n: usize, sys: &Path) -> Vec<usize> {
    if n == 0 || n >= cpus.len() {
        return cpus.to_vec();
    }
    let mut by = cpus.to_vec();
    by.sort_by_key(|&c| (capacity(sys, c).unwrap_or(u32::MAX), c));
    let mut chosen: Vec<usize> = by.into_iter().take(n).collect();
    chosen.sort_unstable();
    chosen
}

/// Gives every thread of this process the mask `cpus`. Threads that end meanwhile are
/// skipped; the tasks are listed twice, so that a thread created during the first pass by
/// one not yet moved is caught by the second. Returns how many threads were set.
pub fn confine(cpus: &[usize]) -> std::io::Result<usize> {
    // SAFETY: an empty set, then CPU_SET within CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let mut done = std::collections::HashSet::new();
    for _ in 0..2 {
        for entry in std::fs::read_dir("/proc/self/task")?.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) else { continue };
            // SAFETY: sets the affinity of a thread of this process from a valid set.
            let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
            if r == 0 {
                done.insert(tid);
            } else {
                let e = std::io::Error::last_os_error();
                // ESRCH: the thread ended since it was listed
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e);
                }
            }
        }
    }
    Ok(done.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_efficient_cores_are_kept() {
        let sys = tempfile::tempdir().unwrap();
        // a big.LITTLE board: cpu0-3 little (capacity 446), cpu4-7 big (1024)
        for c in 0..8 {
            std::fs::create_dir_all(sys.path().join(format!("cpu{c}"))).unwrap();
            let cap = if c < 4 { "446\n" } else { "1024\n" };
            std::fs::write(sys.path().join(format!("cpu{c}/cpu_capacity")), cap).unwrap();
        }
        let all: Vec<usize> = (0..8).collect();
        assert_eq!(choose(&all, 2, sys.path()), vec![0, 1]);
        // only big cores allowed: the lowest numbered
        assert_eq!(choose(&[5, 6, 7], 2, sys.path()), vec![5, 6]);
        std::fs::write(sys.path().join("cpu6/cpu_capacity"), "300\n").unwrap();
        assert_eq!(choose(&[5, 6, 7], 1, sys.path()), vec![6]);
        // no capacities: the lowest numbered; 0 or too many: all
        let none = tempfile::tempdir().unwrap();
        assert_eq!(choose(&[2, 3, 1], 2, none.path()), vec![1, 2]);
        assert_eq!(choose(&[2, 3, 1], 0, none.path()), vec![2, 3, 1]);
        assert_eq!(choose(&[2, 3], 5, none.path()), vec![2, 3]);
    }

    #[test]
    fn this_process_has_cores() {
        let cpus = allowed();
        assert!(!cpus.is_empty());
        // confining to what it has changes nothing and reaches every thread
        assert!(confine(&cpus).unwrap() >= 1);
        assert_eq!(allowed(), cpus);
    }
}
