//! The manifest of a verified model directory (`llamad-manifest.json`): every
//! file's path, size and SHA-256, strictly parsed (unknown keys, paths that
//! leave the directory and malformed digests are refused). Checking a
//! directory against it is the daemon's (`policy/manifest.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const FILE: &str = "llamad-manifest.json";
/// A manifest larger than this is refused unread.
pub const MAX_MANIFEST: u64 = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("no {FILE}, and require_manifest is set")]
    Missing,
    #[error("{FILE}: {0}")]
    Invalid(String),
    #[error("{0}: not in {FILE}")]
    Unlisted(String),
    #[error("{0}: listed in {FILE} but missing")]
    Gone(String),
    #[error("{file}: changed ({what})")]
    Changed { file: String, what: String },
    #[error("{0}: {1}")]
    Io(String, String),
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub llamad_manifest: u32,
    /// Path relative to the directory (`/`-separated) → its size and digest.
    pub files: BTreeMap<String, Entry>,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        if m.llamad_manifest != 1 {
            return Err(ManifestError::Invalid(format!("version {} (this llamad reads 1)", m.llamad_manifest)));
        }
        for (path, e) in &m.files {
            let bad_path = path.is_empty()
                || path.starts_with('/')
                || path.split('/').any(|c| c.is_empty() || c == "." || c == "..")
                || path == FILE;
            if bad_path {
                return Err(ManifestError::Invalid(format!("bad path {path:?}")));
            }
            if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                return Err(ManifestError::Invalid(format!("{path}: sha256 is not 64 lowercase hex digits")));
            }
        }
        Ok(m)
    }
}
