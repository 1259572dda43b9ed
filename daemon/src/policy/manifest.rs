//! Verified models: an optional `llamad-manifest.json` in a model directory
//! lists every file with its size and SHA-256; when present (or when
//! `require_manifest` is set) a model loads only if the directory holds exactly
//! those files with those contents. `llamad manifest DIR` writes one.
//!
//! Files already verified are remembered by their inode, size and change
//! times (ctime cannot be set back by an unprivileged writer), so a reload
//! does not hash gigabytes again; `VerifyModel` hashes everything.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

pub use llamad_formats::manifest::{Entry, FILE, MAX_MANIFEST, Manifest, ManifestError};

/// Directory entries looked at, at most (a model directory holds a handful).
const MAX_FILES: usize = 4096;

/// The regular files under `dir` (following symlinks), relative, sorted; not the manifest.
fn files_of(dir: &Path) -> Result<Vec<(String, PathBuf)>, ManifestError> {
    let io = |p: &Path, e: std::io::Error| ManifestError::Io(p.display().to_string(), e.to_string());
    let mut out = vec![];
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, d)) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| io(&d, e))? {
            let e = e.map_err(|e| io(&d, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let path = e.path();
            let meta = std::fs::metadata(&path).map_err(|e| io(&path, e))?;
            if meta.is_dir() {
                stack.push((rel, path));
            } else if rel != FILE {
                out.push((rel, path));
            }
            if out.len() + stack.len() > MAX_FILES {
                return Err(ManifestError::Invalid(format!("more than {MAX_FILES} files")));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The manifest of `dir` as it is now.
pub fn make(dir: &Path) -> Result<Manifest, ManifestError> {
    let mut files = BTreeMap::new();
    for (rel, path) in files_of(dir)? {
        let io = |e: std::io::Error| ManifestError::Io(rel.clone(), e.to_string());
        let size = std::fs::metadata(&path).map_err(io)?.len();
        files.insert(rel.clone(), Entry { size, sha256: sha256_of(&path).map_err(io)? });
    }
    Ok(Manifest { llamad_manifest: 1, files })
}

/// What identifies a file's contents without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(m: &std::fs::Metadata) -> Stamp {
    Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

/// What a verification found.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// Whether the directory has a manifest (without one nothing was checked).
    pub manifest: bool,
    pub files: usize,
    /// Bytes hashed now (the rest were verified before and have not changed).
    pub hashed: u64,
}

/// Checks model directories against their manifests, remembering verified files.
#[derive(Default)]
pub struct Verifier {
    seen: Mutex<HashMap<PathBuf, (Stamp, String)>>,
}

impl Verifier {
    /// Verifies `dir`: every file listed, none unlisted, sizes and digests as listed.
    /// `required`: a directory without a manifest is refused. `fresh`: hash every file.
    pub fn verify(&self, dir: &Path, required: bool, fresh: bool) -> Result<Verified, ManifestError> {
        let path = dir.join(FILE);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if required {
                    Err(ManifestError::Missing)
                } else {
                    Ok(Verified { manifest: false, files: 0, hashed: 0 })
                };
            }
            Err(e) => return Err(ManifestError::Io(FILE.into(), e.to_string())),
        };
        if meta.len() > MAX_MANIFEST {
            return Err(ManifestError::Invalid(format!("{} bytes (at most {MAX_MANIFEST})", meta.len())));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ManifestError::Io(FILE.into(), e.to_string()))?;
        let manifest = Manifest::parse(&text)?;
        let present = files_of(dir)?;
        if let Some((rel, _)) = present.iter().find(|(rel, _)| !manifest.files.contains_key(rel)) {
            return Err(ManifestError::Unlisted(rel.clone()));
        }
        if let Some(rel) = manifest.files.keys().find(|k| !present.iter().any(|(r, _)| r == *k)) {
            return Err(ManifestError::Gone(rel.clone()));
        }
        let mut hashed = 0;
        for (rel, file) in &present {
            let want = &manifest.files[rel];
            let io = |e: std::io::Error| ManifestError::Io(rel.clone(), e.to_string());
            let meta = std::fs::metadata(file).map_err(io)?;
            if meta.len() != want.size {
                let what = format!("{} bytes, the manifest says {}", meta.len(), want.size);
                return Err(ManifestError::Changed { file: rel.clone(), what });
            }
            let st = stamp(&meta);
            let known = self.seen.lock().unwrap_or_else(|e| e.into_inner()).get(file).cloned();
            if !fresh && known.as_ref().is_some_and(|(s, d)| *s == st && *d == want.sha256) {
                continue;
            }
            let digest = sha256_of(file).map_err(io)?;
            hashed += meta.len();
            if digest != want.sha256 {
                let what = format!("sha256 {digest}, the manifest says {}", want.sha256);
                return Err(ManifestError::Changed { file: rel.clone(), what });
            }
            self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(file.clone(), (st, digest));
        }
        Ok(Verified { manifest: true, files: present.len(), hashed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, body) in files {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        d
    }

    fn write_manifest(d: &Path) {
        let m = make(d).unwrap();
        std::fs::write(d.join(FILE), serde_json::to_string_pretty(&m).unwrap()).unwrap();
    }

    #[test]
    fn a_directory_verifies_against_its_own_manifest_and_is_hashed_once() {
        let d = dir_with(&[("model.onnx", b"graph"), ("tokenizer.json", b"{}"), ("sub/x.bin", b"12345")]);
        write_manifest(d.path());
        let v = Verifier::default();
        let first = v.verify(d.path(), true, false).unwrap();
        assert_eq!((first.manifest, first.files, first.hashed), (true, 3, 12));
        assert_eq!(v.verify(d.path(), true, false).unwrap().hashed, 0, "unchanged files are not hashed again");
        assert_eq!(v.verify(d.path(), true, true).unwrap().hashed, 12, "fresh hashes everything");
        let m = Manifest::parse(&std::fs::read_to_string(d.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(m.files["sub/x.bin"].size, 5);
        assert_eq!(
            m.files["tokenizer.json"].sha256,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn a_changed_added_or_removed_file_is_refused_by_name() {
        let d = dir_with(&[("model.onnx", b"graph"), ("tokenizer.json", b"{}")]);
        write_manifest(d.path());
        let v = Verifier::default();
        v.verify(d.path(), false, false).unwrap();
        // same size, other bytes: caught although it was verified before (its stamp moved)
        std::fs::write(d.path().join("model.onnx"), b"GRAPH").unwrap();
        match v.verify(d.path(), false, false) {
            Err(ManifestError::Changed { file, what }) => assert!(file == "model.onnx" && what.starts_with("sha256")),
            other => panic!("{other:?}"),
        }
        std::fs::write(d.path().join("model.onnx"), b"graph!").unwrap();
        match v.verify(d.path(), false, false) {
            Err(ManifestError::Changed { file, what }) => {
                assert_eq!((file.as_str(), what.as_str()), ("model.onnx", "6 bytes, the manifest says 5"))
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(d.path().join("model.onnx"), b"graph").unwrap();
        std::fs::write(d.path().join("chat_template.jinja"), b"{{ x }}").unwrap();
        assert_eq!(v.verify(d.path(), false, false), Err(ManifestError::Unlisted("chat_template.jinja".into())));
        std::fs::remove_file(d.path().join("chat_template.jinja")).unwrap();
        std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
        assert_eq!(v.verify(d.path(), false, false), Err(ManifestError::Gone("tokenizer.json".into())));
    }

    #[test]
    fn without_a_manifest_only_require_manifest_refuses() {
        let d = dir_with(&[("model.onnx", b"graph")]);
        let v = Verifier::default();
        assert!(!v.verify(d.path(), false, false).unwrap().manifest);
        assert_eq!(v.verify(d.path(), true, false), Err(ManifestError::Missing));
    }

    #[test]
    fn hostile_manifests_are_errors() {
        let h = "0".repeat(64);
        for text in [
            "".to_string(),
            "[]".to_string(),
            r#"{"llamad_manifest": 2, "files": {}}"#.to_string(),
            format!(r#"{{"llamad_manifest": 1, "files": {{"../etc/passwd": {{"size": 1, "sha256": "{h}"}}}}}}"#),
            format!(r#"{{"llamad_manifest": 1, "files": {{"/abs": {{"size": 1, "sha256": "{h}"}}}}}}"#),
            format!(r#"{{"llamad_manifest": 1, "files": {{"a//b": {{"size": 1, "sha256": "{h}"}}}}}}"#),
            r#"{"llamad_manifest": 1, "files": {"a": {"size": 1, "sha256": "XYZ"}}}"#.to_string(),
            format!(r#"{{"llamad_manifest": 1, "files": {{"a": {{"size": -1, "sha256": "{h}"}}}}}}"#),
            format!(r#"{{"llamad_manifest": 1, "files": {{"a": {{"size": 1, "sha256": "{h}", "x": 1}}}}}}"#),
        ] {
            assert!(matches!(Manifest::parse(&text), Err(ManifestError::Invalid(_))), "{text}");
        }
        let d = dir_with(&[("model.onnx", b"graph")]);
        std::fs::write(d.path().join(FILE), vec![b' '; (MAX_MANIFEST + 1) as usize]).unwrap();
        assert!(matches!(Verifier::default().verify(d.path(), false, false), Err(ManifestError::Invalid(_))));
    }
}
