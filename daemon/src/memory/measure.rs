//! What the process holds now, from `/proc/self/status`: resident total,
//! anonymous (heap, arenas, packed weights) and file-backed (mapped model files
//! and code pages); and the highest resident size over an operation (a load),
//! sampled from `/proc/self/statm`.

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rss {
    pub total: u64,
    pub anon: u64,
    pub file: u64,
}

impl Rss {
    /// What was added since `before` (each part on its own, never negative).
    pub fn growth_since(&self, before: &Rss) -> Rss {
        Rss {
            total: self.total.saturating_sub(before.total),
            anon: self.anon.saturating_sub(before.anon),
            file: self.file.saturating_sub(before.file),
        }
    }
}

/// The value of a `Key:  N kB` line of a `/proc/PID/status` text, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

pub fn parse_status(status: &str) -> Rss {
    let kib = |key: &str| status_kib(status, key).unwrap_or(0) * 1024;
    Rss { total: kib("VmRSS:"), anon: kib("RssAnon:"), file: kib("RssFile:") + kib("RssShmem:") }
}

pub fn rss() -> Rss {
    std::fs::read_to_string("/proc/self/status").map(|s| parse_status(&s)).unwrap_or_default()
}

/// Resident bytes from `/proc/self/statm` (the same count as `VmRSS`, cheaper to read
/// than `status`).
pub fn resident() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    let page = *PAGE.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64);
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * page)
}

/// Samples the resident size every 2 ms on its own thread until stopped: the peak of a
/// load (parsed graph, runtime copies and the final weights side by side). `VmHWM` would
/// be exact but resetting it (clear_refs) would hide the process's lifetime peak from
/// anyone watching from outside.
pub struct PeakSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl PeakSampler {
    pub fn start() -> PeakSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = resident();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(resident());
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak.max(resident())
        });
        PeakSampler { stop, thread }
    }

    /// The highest resident size seen.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// Caps glibc's per-thread heaps (arenas) at two: with one arena per worker, runtime and
/// compute thread, freed model memory is scattered and the resident size drifts above
/// what the budget accounts for.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_ARENA_MAX: i32 = -8;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes glibc's allocator settings; called before threads start.
        unsafe {
            mallopt(M_ARENA_MAX, 2);
        }
    }
}

/// Sets glibc's allocator so that what requests free goes back to the kernel: buffers of
/// 1 MiB and more (logits of a prefill chunk, activations) are mapped on their own and
/// unmapped when freed. glibc's default raises that threshold to the size of the last such
/// buffer freed (up to 32 MiB), after which they come from a thread's arena, whose top
/// `malloc_trim` does not give back: a 256-token chunk left 17 MiB resident for good
/// (measured on the tiny fixture with a 4096-token context). Fixing the threshold turns the
/// adjustment off; the cost is a map and an unmap per large buffer, against milliseconds of
/// compute per forward pass.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets glibc's parameters; called before the workers start.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        }
    }
}

/// Hands memory freed by unloaded models back to the kernel (glibc keeps freed heap
/// pages otherwise, and the daemon's resident size would not come down).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only walks glibc's own heap; no pointers are passed.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_proc_status() {
        let r = super::parse_status("VmRSS:\t  2048 kB\nRssAnon:\t 1024 kB\nRssFile:\t 1000 kB\nRssShmem:\t 24 kB\n");
        assert_eq!((r.total, r.anon, r.file), (2 << 20, 1 << 20, 1024 * 1024));
        assert!(super::rss().total > 0);
    }

    #[test]
    fn the_sampler_sees_a_passing_allocation() {
        // Alone in a process of its own: other tests of this binary allocating and freeing
        // at the same time move the resident size under it.
        const CHILD: &str = "LLAMAD_SAMPLER_TEST_ALONE";
        if std::env::var_os(CHILD).is_none() {
            // through the runner that runs this binary (qemu-aarch64 in tests/run-arm64), if any
            let mut runner: Vec<String> = std::env::var("LLAMAD_TEST_RUNNER")
                .map(|r| r.split_whitespace().map(String::from).collect())
                .unwrap_or_default();
            runner.push(std::env::current_exe().unwrap().display().to_string());
            let out = std::process::Command::new(&runner[0])
                .args(&runner[1..])
                .args(["--exact", "memory::measure::tests::the_sampler_sees_a_passing_allocation", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && log.contains("1 passed"), "{log}");
            return;
        }
        let before = super::resident();
        let sampler = super::PeakSampler::start();
        let block = vec![1u8; 64 << 20];
        std::thread::sleep(std::time::Duration::from_millis(30));
        drop(std::hint::black_box(block));
        super::release_freed();
        let peak = sampler.stop();
        assert!(peak >= before + (60 << 20), "peak {peak}, before {before}");
    }
}
