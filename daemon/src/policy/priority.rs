//! Priority classes: `interactive` work (what a person waits for) is served
//! before `background` work, and a running background request yields at a
//! token boundary while interactive work is waiting or running (see
//! `scheduler/queue.rs`).
//!
//! A caller's class comes from its `[[apps]]` rule when that sets one, else
//! from its systemd slice: `background.slice` (and slices inside it) is
//! background, everything else interactive (`app.slice`, `session.slice`, and
//! callers outside systemd). A request may lower its class, never raise it.

use crate::identity::Caller;

use super::rules::AppRule;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served first (lower sorts first).
    Interactive,
    Background,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Background => "background",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "interactive" => Some(Priority::Interactive),
            "background" => Some(Priority::Background),
            _ => None,
        }
    }
}

/// The class a caller's requests get unless they ask for a lower one.
pub fn class_of(caller: &Caller, rule: Option<&AppRule>) -> Priority {
    if let Some(p) = rule.and_then(|r| r.priority) {
        return p;
    }
    match caller.placement.slice.as_deref() {
        Some(s) if s == "background.slice" || s.starts_with("background-") => Priority::Background,
        _ => Priority::Interactive,
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("priority {asked}: this caller's class is {class}; a request may lower its class, never raise it")]
pub struct Raised {
    pub asked: &'static str,
    pub class: &'static str,
}

/// The class a request runs in: `asked` if it is no higher than `class`.
pub fn effective(class: Priority, asked: Option<Priority>) -> Result<Priority, Raised> {
    match asked {
        None => Ok(class),
        Some(a) if a >= class => Ok(a),
        Some(a) => Err(Raised { asked: a.as_str(), class: class.as_str() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Placement;

    fn in_slice(slice: Option<&str>) -> Caller {
        let mut c = Caller::bare(":1.3", 1000);
        c.placement = Placement { slice: slice.map(str::to_string), ..Default::default() };
        c
    }

    #[test]
    fn the_slice_sets_the_class_unless_a_rule_does() {
        assert_eq!(class_of(&in_slice(None), None), Priority::Interactive);
        assert_eq!(class_of(&in_slice(Some("app.slice")), None), Priority::Interactive);
        assert_eq!(class_of(&in_slice(Some("session.slice")), None), Priority::Interactive);
        assert_eq!(class_of(&in_slice(Some("system.slice")), None), Priority::Interactive);
        assert_eq!(class_of(&in_slice(Some("background.slice")), None), Priority::Background);
        // systemd names a slice inside background.slice background-<name>.slice
        assert_eq!(class_of(&in_slice(Some("background-indexer.slice")), None), Priority::Background);
        let rule = AppRule { priority: Some(Priority::Background), ..Default::default() };
        assert_eq!(class_of(&in_slice(Some("app.slice")), Some(&rule)), Priority::Background);
        let rule = AppRule { priority: Some(Priority::Interactive), ..Default::default() };
        assert_eq!(class_of(&in_slice(Some("background.slice")), Some(&rule)), Priority::Interactive);
        assert_eq!(class_of(&in_slice(Some("background.slice")), Some(&AppRule::default())), Priority::Background);
    }

    #[test]
    fn a_request_may_lower_its_class_never_raise_it() {
        use Priority::*;
        assert_eq!(effective(Interactive, None), Ok(Interactive));
        assert_eq!(effective(Interactive, Some(Background)), Ok(Background));
        assert_eq!(effective(Background, Some(Background)), Ok(Background));
        let e = effective(Background, Some(Interactive)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "priority interactive: this caller's class is background; a request may lower its class, never raise it"
        );
        assert_eq!(Priority::parse("background"), Some(Background));
        assert_eq!(Priority::parse("high"), None);
    }
}
