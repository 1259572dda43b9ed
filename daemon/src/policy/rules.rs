//! Per-app rules from the configuration (`[[apps]]`): which callers a rule
//! matches (uid, group, unit, app id: all that are given must hold) and what
//! they may use (models, requests at once, tokens per minute and per day) and
//! the priority class of their requests.
//! The first rule that matches a caller applies; a caller no rule matches has
//! no limits but the daemon's own.

use serde::Deserialize;

use crate::identity::Caller;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AppRule {
    /// Matches this uid.
    pub uid: Option<u32>,
    /// Matches callers with this group (primary or supplementary gid).
    pub group: Option<u32>,
    /// Matches this unit; a trailing `*` matches any ending (`app-gnome-org.x-*`).
    pub unit: Option<String>,
    /// Matches this app id: `flatpak:ID` or `snap:NAME`.
    pub app: Option<String>,
    /// Models it may use; unset: all.
    pub models: Option<Vec<String>>,
    /// Requests queued or running at once.
    pub max_concurrent: Option<u32>,
    /// Tokens (prompt and generated) in any 60 seconds.
    pub tokens_per_minute: Option<u64>,
    /// Tokens (prompt and generated) per day (UTC).
    pub tokens_per_day: Option<u64>,
    /// Its requests' class (`interactive` or `background`); unset: from its slice.
    pub priority: Option<super::priority::Priority>,
}

impl AppRule {
    pub fn matches(&self, c: &Caller) -> bool {
        self.uid.is_none_or(|u| u == c.uid)
            && self.group.is_none_or(|g| c.gids.contains(&g))
            && self.unit.as_deref().is_none_or(|u| match (u.strip_suffix('*'), c.placement.unit.as_deref()) {
                (_, None) => false,
                (Some(prefix), Some(unit)) => unit.starts_with(prefix),
                (None, Some(unit)) => unit == u,
            })
            && self.app.as_deref().is_none_or(|a| c.app_label().as_deref() == Some(a))
    }

    pub fn validate(&self, i: usize) -> Result<(), String> {
        let bad = |what: &str| Err(format!("apps[{i}]: {what}"));
        if self.max_concurrent == Some(0) {
            return bad("max_concurrent = 0 (leave it out for no limit)");
        }
        if self.tokens_per_minute == Some(0) || self.tokens_per_day == Some(0) {
            return bad("a token limit of 0 (use models = [] to allow nothing)");
        }
        if let Some(a) = &self.app
            && !(a.starts_with("flatpak:") || a.starts_with("snap:"))
        {
            return bad(&format!("app = {a:?} (flatpak:ID or snap:NAME)"));
        }
        if let Some(models) = &self.models
            && let Some(m) = models.iter().find(|m| !crate::engine::model_dir::valid_model_name(m))
        {
            return bad(&format!("models: {m:?} is not a model name"));
        }
        Ok(())
    }
}

/// The rule that applies to `caller`, if any.
pub fn rule_for<'a>(rules: &'a [AppRule], caller: &Caller) -> Option<&'a AppRule> {
    rules.iter().find(|r| r.matches(caller))
}

/// Whose usage a request counts against: the app id when the caller is a sandboxed app
/// (all its instances together), its uid otherwise.
pub fn account_of(caller: &Caller) -> String {
    caller.app_label().unwrap_or_else(|| format!("uid:{}", caller.uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flatpak(uid: u32) -> Caller {
        Caller::sample_flatpak(uid)
    }

    #[test]
    fn every_given_condition_must_hold() {
        let c = flatpak(1000);
        assert!(AppRule::default().matches(&c), "a rule without conditions matches everyone");
        assert!(AppRule { uid: Some(1000), group: Some(27), ..Default::default() }.matches(&c));
        assert!(!AppRule { uid: Some(1000), group: Some(28), ..Default::default() }.matches(&c));
        assert!(AppRule { app: Some("flatpak:org.example.Chat".into()), ..Default::default() }.matches(&c));
        assert!(!AppRule { app: Some("flatpak:org.example".into()), ..Default::default() }.matches(&c));
        assert!(AppRule { unit: Some("app-flatpak-org.example.*".into()), ..Default::default() }.matches(&c));
        assert!(!AppRule { unit: Some("app-flatpak-org.example".into()), ..Default::default() }.matches(&c));
        assert!(!AppRule { unit: Some("x*".into()), ..Default::default() }.matches(&Caller::bare(":1.1", 0)));
    }

    #[test]
    fn the_first_match_applies_and_apps_are_counted_together() {
        let rules = [
            AppRule { uid: Some(1000), max_concurrent: Some(1), ..Default::default() },
            AppRule { max_concurrent: Some(4), ..Default::default() },
        ];
        assert_eq!(rule_for(&rules, &flatpak(1000)).unwrap().max_concurrent, Some(1));
        assert_eq!(rule_for(&rules, &flatpak(1001)).unwrap().max_concurrent, Some(4));
        assert!(rule_for(&rules[..1], &flatpak(1001)).is_none());
        assert_eq!(account_of(&flatpak(1000)), "flatpak:org.example.Chat");
        assert_eq!(account_of(&Caller::bare(":1.2", 1000)), "uid:1000");
    }

    #[test]
    fn bad_rules_are_named() {
        for (rule, what) in [
            (AppRule { max_concurrent: Some(0), ..Default::default() }, "max_concurrent"),
            (AppRule { tokens_per_day: Some(0), ..Default::default() }, "token limit"),
            (AppRule { app: Some("org.x".into()), ..Default::default() }, "flatpak:ID"),
            (AppRule { models: Some(vec!["../x".into()]), ..Default::default() }, "not a model name"),
        ] {
            let e = rule.validate(2).unwrap_err();
            assert!(e.starts_with("apps[2]: ") && e.contains(what), "{e}");
        }
    }
}
