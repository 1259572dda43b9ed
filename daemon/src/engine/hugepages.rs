//! Huge pages for a loaded model's weights: every decoded token streams all of them, and
//! with 4 KiB pages that is a page walk every 4 KiB. After a load, the process's large
//! anonymous mappings that are (almost) wholly resident, which is where a backend keeps
//! its packed weights, are marked `MADV_HUGEPAGE` and collapsed into huge pages
//! (`MADV_COLLAPSE`, Linux 6.1+): 2 MiB on x86-64 and on aarch64 with 4 KiB pages, 32 MiB
//! or 512 MiB on aarch64 kernels with 16 or 64 KiB pages, as the kernel's
//! `hpage_pmd_size` says. Mappings that are mostly untouched (a KV cache reserved
//! for a whole context) are left alone: collapsing them would make them resident.
//! Everything is best effort: a kernel without the advice, or without transparent huge
//! pages, leaves the mappings as they are.

/// Mappings smaller than this are not worth it.
const MIN_BYTES: u64 = 16 << 20;
/// A mapping this resident (or more) counts as wholly used.
const MIN_RESIDENT: f64 = 0.9;
/// The huge page size when the kernel does not say (x86-64's, and aarch64's with 4 KiB pages).
const DEFAULT_HUGE: u64 = 2 << 20;
const HPAGE_PMD_SIZE: &str = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size";
/// `MADV_COLLAPSE` (linux/mman.h; not in every libc crate release).
const MADV_COLLAPSE: i32 = 25;

/// What [`collapse_weights`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collapsed {
    pub mappings: usize,
    /// Bytes advised (huge page aligned).
    pub bytes: u64,
    /// Bytes the kernel collapsed into huge pages there and then.
    pub collapsed: u64,
}

/// One anonymous, private, writable mapping of `smaps`: (start, end, resident bytes).
fn anonymous_mappings(smaps: &str) -> Vec<(u64, u64, u64)> {
    let mut out = vec![];
    let mut current: Option<(u64, u64)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let perms = f.next().unwrap_or("");
            let inode = f.nth(2).unwrap_or("1");
            let path = f.next();
            let anon = inode == "0" && matches!(path, None | Some("[heap]"));
            current = (anon && perms.starts_with("rw") && perms.ends_with('p')).then_some((a, b));
        } else if first == "Rss:"
            && let Some((a, b)) = current.take()
            && let Some(kib) = f.next().and_then(|v| v.parse::<u64>().ok())
        {
            out.push((a, b, kib * 1024));
        }
    }
    out
}

/// The kernel's transparent huge page size, from the text of `hpage_pmd_size`: a power of
/// two of at least 64 KiB, or [`DEFAULT_HUGE`].
fn huge_page_size(text: Option<&str>) -> u64 {
    text.and_then(|t| t.trim().parse::<u64>().ok())
        .filter(|&n| n.is_power_of_two() && n >= 64 << 10)
        .unwrap_or(DEFAULT_HUGE)
}

/// Advises and collapses the large, resident anonymous mappings (see the module doc).
pub fn collapse_weights() -> Collapsed {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return Collapsed::default();
    };
    let huge = huge_page_size(std::fs::read_to_string(HPAGE_PMD_SIZE).ok().as_deref());
    let mut done = Collapsed::default();
    for (start, end, rss) in anonymous_mappings(&smaps) {
        let size = end - start;
        if size < MIN_BYTES || (rss as f64) < MIN_RESIDENT * size as f64 {
            continue;
        }
        let (from, to) = (start.div_ceil(huge) * huge, end / huge * huge);
        if to <= from {
            continue;
        }
        let (ptr, len) = (from as *mut libc::c_void, (to - from) as usize);
        // SAFETY: madvise takes an address range of this process's own, currently mapped,
        // anonymous memory (read from smaps a moment ago) and changes only how the kernel
        // backs it, never its contents.
        let advised = unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) } == 0;
        if !advised {
            continue;
        }
        done.mappings += 1;
        done.bytes += to - from;
        // SAFETY: as above; MADV_COLLAPSE copies the pages into huge pages in place.
        if unsafe { libc::madvise(ptr, len, MADV_COLLAPSE) } == 0 {
            done.collapsed += to - from;
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_anonymous_private_writable_mappings_with_their_resident_size() {
        let smaps = "\
55d0c0000000-55d0c2000000 rw-p 00000000 00:00 0 \n\
Size:              32768 kB\n\
Rss:               32000 kB\n\
7f0000000000-7f0001000000 r--p 00000000 08:01 1234 /usr/lib/libonnxruntime.so\n\
Size:              16384 kB\n\
Rss:                 100 kB\n\
7f1000000000-7f1004000000 rw-p 00000000 00:00 0 [heap]\n\
Size:              65536 kB\n\
Rss:                   4 kB\n\
7f2000000000-7f2000001000 rw-s 00000000 00:01 99 /dev/zero (deleted)\n\
Rss:                   4 kB\n";
        assert_eq!(
            anonymous_mappings(smaps),
            vec![(0x55d0c0000000, 0x55d0c2000000, 32000 * 1024), (0x7f1000000000, 0x7f1004000000, 4096)]
        );
    }

    #[test]
    fn the_huge_page_size_is_the_kernels() {
        assert_eq!(huge_page_size(Some("2097152\n")), 2 << 20);
        // aarch64 kernels with 16 and 64 KiB base pages
        assert_eq!(huge_page_size(Some("33554432\n")), 32 << 20);
        assert_eq!(huge_page_size(Some("536870912\n")), 512 << 20);
        for bad in [None, Some(""), Some("garbage"), Some("0"), Some("3000000"), Some("4096")] {
            assert_eq!(huge_page_size(bad), DEFAULT_HUGE, "{bad:?}");
        }
        // this machine's, whatever it is, is a power of two
        let here = huge_page_size(std::fs::read_to_string(HPAGE_PMD_SIZE).ok().as_deref());
        assert!(here.is_power_of_two() && here >= 64 << 10);
    }

    #[test]
    fn collapsing_is_harmless_on_this_process() {
        // A resident 64 MiB buffer keeps its contents. Whether its mapping is advised depends on
        // what the kernel merged it with (other tests' mappings, less resident, may share its
        // VMA), and whether it is collapsed on the transparent huge page settings.
        let mut v = vec![1u8; 64 << 20];
        v[12345] = 7;
        // the live smaps has the buffer in an anonymous mapping, at least as resident as it
        let at = v.as_ptr() as u64;
        let live = anonymous_mappings(&std::fs::read_to_string("/proc/self/smaps").unwrap());
        let found = live.iter().find(|&&(a, b, _)| a <= at && at < b).expect("the buffer's mapping");
        // qemu-user's emulated smaps (tests/run-arm64) reports no page as resident: there
        // only the mapping is found, and collapsing must still leave the contents alone
        let emulated = live.iter().all(|m| m.2 == 0);
        assert!(emulated || found.2 >= 64 << 20, "{found:?}");
        let done = collapse_weights();
        assert!(done.collapsed <= done.bytes, "{done:?}");
        assert_eq!((v[12345], v[0], v[(64 << 20) - 1]), (7, 1, 1));
        v[0] = 2;
        assert_eq!(v.iter().map(|&x| x as u64).sum::<u64>(), (64 << 20) + 6 + 1);
    }
}
