//! llamad's D-Bus contract, shared by the daemon, `llamactl` and any Rust
//! client: the well-known names, the wire types, the typed errors and the
//! client proxy. Nothing here depends on the inference engines.
//!
//! Versioning: everything is under `org.llamad.Llama1`; an incompatible change
//! means a new `Llama2` name served side by side. Within `Llama1`, methods and
//! fields are only added (options and results are `a{sv}` dictionaries), and
//! error names are never removed.

pub mod error;
pub mod proxy;
pub mod types;

pub use error::Error;
pub use proxy::{ManagerProxy, SessionProxy};
pub use types::*;

/// Well-known bus name of the daemon.
pub const BUS_NAME: &str = "org.llamad.Llama1";
/// Object path of the manager object.
pub const MANAGER_PATH: &str = "/org/llamad/Llama1";
/// Interface of the manager object.
pub const MANAGER_INTERFACE: &str = "org.llamad.Llama1.Manager";
/// Interface of the session objects, `/org/llamad/Llama1/session/N`.
pub const SESSION_INTERFACE: &str = "org.llamad.Llama1.Session";

/// Object path of session `id`.
pub fn session_path(id: u64) -> String {
    format!("{MANAGER_PATH}/session/{id}")
}

/// Prefix of every error name.
pub const ERROR_PREFIX: &str = "org.llamad.Llama1.Error";
