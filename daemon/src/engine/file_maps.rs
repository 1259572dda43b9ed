//! A loaded model's files made private: ONNX Runtime maps a model's external data
//! (`mmap`, private) and keeps mapped the parts it does not copy into buffers of its
//! own. Pages of such a mapping that were never written are the file's page cache:
//! when the file is truncated or rewritten in place (`cp` over it, a half-written
//! download) while the model is loaded, the next request that touches them kills the
//! daemon with SIGBUS, or runs on changed weights (truncation unmaps even the pages
//! already copied on write). After a load, every private mapping of a file in the
//! model's directory is replaced by an anonymous copy of itself; from then on the
//! files may change freely. The cost is the mapped pages that were not yet resident.
//! Shared mappings are left alone (a backend would be writing to the file through
//! them): they are counted and reported.

use std::path::Path;

/// One mapping of a file in the model's directory (from `/proc/self/maps`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    readable: bool,
    writable: bool,
    executable: bool,
    shared: bool,
}

/// What [`make_private`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Privatized {
    /// Private mappings now held in the process's own memory, and their bytes.
    pub mappings: usize,
    pub bytes: u64,
    /// Shared mappings left as they are (a file change still reaches them).
    pub shared: usize,
    /// Mappings that could not be made private (an error from the kernel).
    pub failed: usize,
}

/// The mappings in `maps` (the text of `/proc/PID/maps`) of files under `dir` (a
/// canonical path). A file deleted or renamed over since it was mapped (" (deleted)")
/// still counts: its old contents can still be truncated by whoever holds it open.
fn mappings_under(maps: &str, dir: &Path) -> Vec<Mapping> {
    let mut out = vec![];
    for line in maps.lines() {
        // address perms offset dev inode [path]: the path is the rest after five fields
        // (it may hold spaces).
        let mut rest = line;
        let mut fields = [""; 5];
        for f in &mut fields {
            rest = rest.trim_start();
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            *f = &rest[..end];
            rest = &rest[end..];
        }
        let path = rest.trim_start();
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        if !path.starts_with('/') || !Path::new(path).starts_with(dir) {
            continue;
        }
        let (Some((a, b)), perms) = (fields[0].split_once('-'), fields[1].as_bytes()) else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else { continue };
        if perms.len() < 4 || end <= start {
            continue;
        }
        out.push(Mapping {
            start,
            end,
            readable: perms[0] == b'r',
            writable: perms[1] == b'w',
            executable: perms[2] == b'x',
            shared: perms[3] == b's',
        });
    }
    out
}

/// Copies every private mapping of a file under `dir` into the process's own memory
/// (see the module doc). Call right after a backend has loaded the model, before any
/// request runs on it.
pub fn make_private(dir: &Path) -> Privatized {
    let mut done = Privatized::default();
    let (Ok(dir), Ok(maps)) = (std::fs::canonicalize(dir), std::fs::read_to_string("/proc/self/maps")) else {
        return done;
    };
    for m in mappings_under(&maps, &dir) {
        if m.shared {
            done.shared += 1;
            continue;
        }
        if privatize(&m) {
            done.mappings += 1;
            done.bytes += (m.end - m.start) as u64;
        } else {
            done.failed += 1;
        }
    }
    done
}

/// Puts a copy of one mapping in its place: an anonymous mapping with the same contents
/// and protection, moved over the old one in a single step (`mremap`), so that no thread
/// ever sees the range unmapped. (Writing to the pages of a private file mapping is not
/// enough: truncating the file unmaps even the copied-on-write pages.)
fn privatize(m: &Mapping) -> bool {
    if !m.readable {
        return false;
    }
    let len = m.end - m.start;
    let prot = libc::PROT_READ
        | if m.writable { libc::PROT_WRITE } else { 0 }
        | if m.executable { libc::PROT_EXEC } else { 0 };
    // SAFETY: a new anonymous mapping of our own.
    let copy = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if copy == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: `m` is one whole readable mapping of this process, read from /proc/self/maps
    // a moment ago, of a model file the backend only reads, with no request running on the
    // model yet; `copy` is as long and does not overlap it. The move replaces the old
    // mapping's range atomically, and the backend's later `munmap` of it unmaps the copy.
    unsafe {
        std::ptr::copy_nonoverlapping(m.start as *const u8, copy as *mut u8, len);
        if libc::mprotect(copy, len, prot) != 0 {
            libc::munmap(copy, len);
            return false;
        }
        let moved =
            libc::mremap(copy, len, len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, m.start as *mut libc::c_void);
        if moved == libc::MAP_FAILED {
            libc::munmap(copy, len);
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
    }

    #[test]
    fn finds_the_mappings_of_files_under_the_directory() {
        let maps = "\
7f00aa000000-7f00aa002000 rw-p 06fd1000 fe:00 10355141                   /models/sf/model.onnx.data
7f00aa010000-7f00aa011000 r--p 00000000 fe:00 10355142                   /models/sf/a file (deleted)
7f00aa020000-7f00aa021000 r--s 00000000 fe:00 10355143                   /models/sf/shared.bin
7f00aa030000-7f00aa031000 r--p 00000000 fe:00 10355144                   /models/sfx/model.onnx.data
7f00aa040000-7f00aa041000 rw-p 00000000 00:00 0
7f00aa050000-7f00aa051000 r-xp 00000000 fe:00 99                         /usr/lib/libonnxruntime.so
";
        let found = mappings_under(maps, Path::new("/models/sf"));
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(
            found[0],
            Mapping {
                start: 0x7f00aa000000,
                end: 0x7f00aa002000,
                readable: true,
                writable: true,
                executable: false,
                shared: false
            }
        );
        assert!(!found[1].writable && !found[1].shared, "a deleted file still counts");
        assert!(found[2].shared);
    }

    /// A private read-only mapping of a file, made private, survives the file's truncation
    /// with its contents (without it, reading the page would raise SIGBUS).
    #[test]
    fn a_private_mapping_survives_truncation_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        let page = page_size();
        let contents: Vec<u8> = (0..4 * page).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path).unwrap().write_all(&contents).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a fresh private read-only mapping of a file this test owns.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                contents.len(),
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let done = make_private(dir.path());
        assert_eq!((done.mappings, done.bytes, done.failed), (1, contents.len() as u64, 0), "{done:?}");
        std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
        // SAFETY: the mapping is still ours and its length is unchanged.
        let seen = unsafe { std::slice::from_raw_parts(ptr as *const u8, contents.len()) };
        assert!(seen == contents.as_slice(), "the mapping's contents changed");
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps.lines().find(|l| l.starts_with(&format!("{:x}-", ptr as usize))).unwrap();
        assert!(line.split_whitespace().nth(1) == Some("r--p"), "protection restored: {line}");
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(ptr, contents.len()) };
    }
}
