//! The metrics as a file for node_exporter's textfile collector (`*.prom` in its
//! directory): written whole to a temporary file beside it and renamed over it, so that a
//! reader never sees half a file.

use std::io::Write;
use std::path::Path;

/// Writes `text` to `path` atomically (a temporary file in the same directory, renamed).
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| std::io::Error::other("the metrics path names no file"))?;
    // node_exporter reads only `*.prom`: the temporary name does not end so
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        // readable by node_exporter's user
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llamad.prom");
        write(&path, "a 1\n").unwrap();
        write(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("llamad.prom")]);
        // a directory that does not exist: an error, nothing left behind
        assert!(write(&dir.path().join("missing/llamad.prom"), "a 1\n").is_err());
    }
}
