//! What the process holds now, from `/proc/self/status`: resident total,
//! anonymous (heap, arenas, packed weights) and file-backed (mapped model files).

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rss {
    pub total: u64,
    pub anon: u64,
    pub file: u64,
}

pub fn parse_status(status: &str) -> Rss {
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Rss { total: kib("VmRSS:"), anon: kib("RssAnon:"), file: kib("RssFile:") + kib("RssShmem:") }
}

pub fn rss() -> Rss {
    std::fs::read_to_string("/proc/self/status").map(|s| parse_status(&s)).unwrap_or_default()
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
}
