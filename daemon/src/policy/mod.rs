//! Who may do what. Administrative actions (loading and unloading models) are
//! allowed at once for root, the daemon's own user and `admin_uids`, and
//! otherwise asked of polkit ([`polkit`]), with the actions declared in
//! `systemd/org.llamad.Llama1.policy`. polkit absent or failing means no.
//!
//! Per-app rules ([`rules`]) say which models a caller may use and how much
//! ([`usage`]: requests at once, tokens per minute and per day) and in which
//! [`priority`] class their requests run. Model
//! directories with a [`manifest`] load only as it lists them.

pub mod manifest;
pub mod polkit;
pub mod priority;
pub mod rules;
pub mod usage;

use crate::identity::Caller;

/// An action that needs authorization; its id is declared in the polkit policy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Load and unload models (`LoadModel`, `UnloadModel`).
    ManageModels,
}

impl Action {
    pub fn id(self) -> &'static str {
        match self {
            Action::ManageModels => "org.llamad.Llama1.manage-models",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("uid {uid} may not {what}: polkit says no to {action}")]
    Denied { uid: u32, what: &'static str, action: &'static str },
    #[error(
        "uid {uid} may {what} after authenticating ({action}): call again allowing interactive \
         authorization (busctl --allow-interactive-authorization=yes, llamactl's default)"
    )]
    AuthenticationRequired { uid: u32, what: &'static str, action: &'static str },
    #[error(
        "uid {uid} may {what} after authenticating ({action}), but no polkit authentication agent \
         answered for the caller: run it in a session with an agent (a desktop's, or pkttyagent) \
         or ask an administrator"
    )]
    NoAgent { uid: u32, what: &'static str, action: &'static str },
    #[error(
        "uid {uid} may not {what}: polkit could not be asked ({reason}); only root, the daemon's \
         user and admin_uids may, without it"
    )]
    Unavailable { uid: u32, what: &'static str, reason: String },
}

impl Action {
    fn what(self) -> &'static str {
        match self {
            Action::ManageModels => "load or unload models",
        }
    }
}

/// The fast path: whether `caller` may do any administrative action without asking polkit.
pub fn trusted(caller: &Caller, own_uid: u32, admin_uids: &[u32]) -> bool {
    caller.uid == 0 || caller.uid == own_uid || admin_uids.contains(&caller.uid)
}

/// The daemon's own uid.
pub fn own_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_the_daemon_and_admin_uids_are_trusted() {
        let c = |uid| Caller::bare(":1.1", uid);
        assert!(trusted(&c(0), 990, &[]));
        assert!(trusted(&c(990), 990, &[]));
        assert!(trusted(&c(1000), 990, &[1000, 1001]));
        assert!(!trusted(&c(1002), 990, &[1000, 1001]));
        assert!(!trusted(&c(65534), 990, &[]));
    }
}
