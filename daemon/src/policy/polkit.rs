//! Asking polkit: `CheckAuthorization` for the calling bus name (a
//! `system-bus-name` subject, which polkitd resolves to the process and its
//! session itself), with the message's allow-interactive-authorization flag
//! passed on, so that an agent may ask the user for a password. The daemon
//! may ask only because the policy file names its user as the actions'
//! owner (`org.freedesktop.policykit.owner`); polkitd refuses non-root callers
//! otherwise.

use std::collections::HashMap;

use zbus::message::{Flags, Header};
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

use super::{Action, PolicyError};
use crate::identity::Caller;

/// Whether polkit allows `caller` (who sent `header`) to do `action`; `details` are passed
/// to polkit's rules (`action.lookup("model")`).
pub async fn check(
    conn: &zbus::Connection,
    header: &Header<'_>,
    caller: &Caller,
    action: Action,
    details: &[(&str, &str)],
) -> Result<(), PolicyError> {
    let unavailable = |reason: String| PolicyError::Unavailable { uid: caller.uid, what: action.what(), reason };
    let subject = Subject::new_for_message_header(header).map_err(|e| unavailable(e.to_string()))?;
    let interactive = header.primary().flags().contains(Flags::AllowInteractiveAuth);
    let flags = if interactive { CheckAuthorizationFlags::AllowUserInteraction.into() } else { Default::default() };
    let details: HashMap<&str, &str> = details.iter().copied().collect();
    let authority = AuthorityProxy::new(conn).await.map_err(|e| unavailable(e.to_string()))?;
    let result = authority
        .check_authorization(&subject, action.id(), &details, flags, "")
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tracing::debug!(uid = caller.uid, name = %caller.name, action = action.id(),
        authorized = result.is_authorized, challenge = result.is_challenge, "polkit");
    if result.is_authorized {
        Ok(())
    } else if result.is_challenge && interactive {
        // polkit would have asked an agent: none answered for the caller's session.
        Err(PolicyError::NoAgent { uid: caller.uid, what: action.what(), action: action.id() })
    } else if result.is_challenge {
        Err(PolicyError::AuthenticationRequired { uid: caller.uid, what: action.what(), action: action.id() })
    } else {
        Err(PolicyError::Denied { uid: caller.uid, what: action.what(), action: action.id() })
    }
}
