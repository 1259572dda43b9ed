//! The audit log: one structured record per request and per administrative
//! action, saying who (uid, pid, unit, app id, bus name), on which model, how
//! many tokens went in and out, and the result (a finish reason or a D-Bus
//! error name). Never what: no prompt, no output, no option values.
//!
//! Under systemd each record is a journal entry of its own with a `MESSAGE_ID`
//! (explained by `systemd/llamad.catalog`) and `LLAMAD_*` fields, so that
//! `journalctl MESSAGE_ID=… LLAMAD_CALLER_UID=1000` finds them. Elsewhere it is
//! one line on stderr, `audit:` followed by the same fields as `KEY=value`
//! (values JSON-quoted where they need it).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::identity::Caller;

/// A request ended (finished, cancelled, failed) or was refused.
pub const REQUEST_ID: &str = "dd5081407b584dd9a05a74a9593549c3";
/// An administrative action (loading or unloading a model) was done or refused.
pub const ADMIN_ID: &str = "189e7acaf16b42a9947d8628180e9e6a";

static JOURNAL: AtomicBool = AtomicBool::new(false);

/// Records go to the journal (the daemon logs there) rather than stderr.
pub fn to_journal(on: bool) {
    JOURNAL.store(on, Ordering::Relaxed);
}

/// What a record is about.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<'a> {
    Request {
        id: Option<u64>,
        session: Option<u64>,
        tokens_in: u32,
        tokens_out: u32,
    },
    /// `action`: `load-model`, `unload-model`.
    Admin {
        action: &'a str,
    },
}

/// One audit record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record<'a> {
    pub caller: &'a Caller,
    pub model: &'a str,
    pub event: Event<'a>,
    /// A finish reason (`length`, `eos`, `cancelled`, …), `ok`, or a D-Bus error name.
    pub result: &'a str,
}

impl Record<'_> {
    /// The record's journal fields, in order, `MESSAGE` first.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let c = self.caller;
        let who = match c.app_label() {
            Some(app) => format!("uid {} ({app})", c.uid),
            None => format!("uid {}", c.uid),
        };
        let (id, message) = match &self.event {
            Event::Request { id, tokens_in, tokens_out, .. } => (
                REQUEST_ID,
                format!(
                    "request {} on {} by {who}: {tokens_in} tokens in, {tokens_out} out, {}",
                    id.map_or("-".to_string(), |i| i.to_string()),
                    self.model,
                    self.result
                ),
            ),
            Event::Admin { action } => (ADMIN_ID, format!("{action} {} by {who}: {}", self.model, self.result)),
        };
        let mut f = vec![
            ("MESSAGE", message),
            ("MESSAGE_ID", id.to_string()),
            ("LLAMAD_CALLER_UID", c.uid.to_string()),
            ("LLAMAD_CALLER_NAME", c.name.clone()),
        ];
        if let Some(pid) = c.pid {
            f.push(("LLAMAD_CALLER_PID", pid.to_string()));
        }
        if let Some(unit) = &c.placement.unit {
            f.push(("LLAMAD_CALLER_UNIT", unit.clone()));
        }
        if let Some(slice) = &c.placement.slice {
            f.push(("LLAMAD_CALLER_SLICE", slice.clone()));
        }
        if let Some(app) = c.app_label() {
            f.push(("LLAMAD_CALLER_APP", app));
        }
        f.push(("LLAMAD_MODEL", self.model.to_string()));
        match &self.event {
            Event::Request { id, session, tokens_in, tokens_out } => {
                if let Some(id) = id {
                    f.push(("LLAMAD_REQUEST", id.to_string()));
                }
                if let Some(s) = session {
                    f.push(("LLAMAD_SESSION", s.to_string()));
                }
                f.push(("LLAMAD_TOKENS_IN", tokens_in.to_string()));
                f.push(("LLAMAD_TOKENS_OUT", tokens_out.to_string()));
            }
            Event::Admin { action } => f.push(("LLAMAD_ACTION", action.to_string())),
        }
        f.push(("LLAMAD_RESULT", self.result.to_string()));
        f
    }

    /// The stderr form: `KEY=value …` after `MESSAGE`'s text.
    pub fn line(&self) -> String {
        let fields = self.fields();
        let mut out = String::from("audit:");
        for (k, v) in &fields {
            let plain = !v.is_empty() && v.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '=');
            if plain {
                out.push_str(&format!(" {k}={v}"));
            } else {
                out.push_str(&format!(" {k}={}", serde_json::Value::from(v.as_str())));
            }
        }
        out
    }
}

/// Writes `record` to the journal or stderr.
pub fn log(record: &Record<'_>) {
    if JOURNAL.load(Ordering::Relaxed) {
        let fields = record.fields();
        let (message, rest) = fields.split_first().map(|(m, r)| (m.1.as_str(), r)).unwrap_or(("", &[]));
        let kvs: Vec<(&str, &str)> = rest.iter().map(|(k, v)| (*k, v.as_str())).collect();
        log::logger().log(
            &log::Record::builder()
                .args(format_args!("{message}"))
                .level(log::Level::Info)
                .target("llamad::audit")
                .key_values(&kvs.as_slice())
                .build(),
        );
    } else {
        tracing::info!(target: "llamad::audit", "{}", record.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller::sample_flatpak(1000)
    }

    #[test]
    fn a_request_record_has_who_and_how_much_never_what() {
        let c = caller();
        let r = Record {
            caller: &c,
            model: "smollm2",
            event: Event::Request { id: Some(12), session: Some(3), tokens_in: 40, tokens_out: 17 },
            result: "length",
        };
        let f = r.fields();
        let get = |k: &str| f.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(f[0].0, "MESSAGE");
        assert_eq!(
            get("MESSAGE"),
            Some("request 12 on smollm2 by uid 1000 (flatpak:org.example.Chat): 40 tokens in, 17 out, length")
        );
        assert_eq!(get("MESSAGE_ID"), Some(REQUEST_ID));
        assert_eq!(get("LLAMAD_CALLER_UID"), Some("1000"));
        assert_eq!(get("LLAMAD_CALLER_PID"), Some("4242"));
        assert_eq!(get("LLAMAD_CALLER_UNIT"), Some("app-flatpak-org.example.Chat-42.scope"));
        assert_eq!(get("LLAMAD_CALLER_APP"), Some("flatpak:org.example.Chat"));
        assert_eq!(get("LLAMAD_SESSION"), Some("3"));
        assert_eq!((get("LLAMAD_TOKENS_IN"), get("LLAMAD_TOKENS_OUT")), (Some("40"), Some("17")));
        assert_eq!(get("LLAMAD_RESULT"), Some("length"));
        // journal field names: uppercase letters, digits and underscores, not starting with `_`
        for (k, _) in &f {
            assert!(!k.starts_with('_') && k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
        }
        assert_eq!(REQUEST_ID.len(), 32);
        assert!(REQUEST_ID.chars().chain(ADMIN_ID.chars()).all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_stderr_line_quotes_what_needs_it() {
        let c = Caller::bare(":1.9", 65534);
        let r = Record {
            caller: &c,
            model: "tiny",
            event: Event::Admin { action: "load-model" },
            result: "org.llamad.Llama1.Error.PermissionDenied",
        };
        let line = r.line();
        assert!(
            line.starts_with(
                "audit: MESSAGE=\"load-model tiny by uid 65534: org.llamad.Llama1.Error.PermissionDenied\""
            ),
            "{line}"
        );
        assert!(line.contains(&format!(" MESSAGE_ID={ADMIN_ID} ")), "{line}");
        assert!(line.contains(" LLAMAD_CALLER_UID=65534 ") && line.contains(" LLAMAD_ACTION=load-model "), "{line}");
        assert!(
            !line.contains("LLAMAD_CALLER_PID") && !line.contains("LLAMAD_CALLER_UNIT"),
            "unknown parts are left out"
        );
        assert!(line.ends_with(" LLAMAD_RESULT=org.llamad.Llama1.Error.PermissionDenied"), "{line}");
    }
}
