//! Tool calls: the tools a chat request offers (OpenAI-style function
//! definitions), how the model's chat template calls them (its [`Dialect`]),
//! the grammar that constrains a call (`grammar.rs`), the calls parsed back out
//! of the output, and the built-in prompt format for templates without tools
//! (`render.rs`). The daemon never runs a tool: the app does and sends the
//! result back as a `tool` message.

mod grammar;
mod render;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use grammar::format_for;
pub use render::builtin_messages;

/// The most tools a request may offer.
pub const MAX_TOOLS: usize = 64;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// A JSON Schema of the arguments object.
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Choice {
    /// Text or calls, as the model chooses.
    Auto,
    /// Text only.
    None,
    /// At least one call, of any tool.
    Required,
    /// One or more calls of this tool.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tools {
    pub list: Vec<Tool>,
    pub choice: Choice,
    /// Several calls in one answer (Hermes' format; Llama 3's answer is one call). Off by
    /// default, as in llama.cpp's server: a model that may repeat itself calls once.
    pub parallel: bool,
}

/// A call the model made (the same type as an assistant message's calls).
pub use llamad_formats::wire::ToolCall;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolError {
    #[error("tools: {0}")]
    Tools(String),
    #[error("tool_choice: {0}")]
    Choice(String),
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

impl Tools {
    /// Parses the `tools` option (a JSON array of `{"type": "function", "function": {...}}`
    /// or of the function objects themselves) and `tool_choice` (`auto` when absent).
    pub fn parse(tools: &str, choice: Option<&str>) -> Result<Tools, ToolError> {
        let bad = |m: String| ToolError::Tools(m);
        let v: Value = serde_json::from_str(tools).map_err(|e| bad(format!("not JSON: {e}")))?;
        let items = v.as_array().ok_or_else(|| bad("not a JSON array of functions".into()))?;
        if items.is_empty() || items.len() > MAX_TOOLS {
            return Err(bad(format!("{} tools (1 to {MAX_TOOLS})", items.len())));
        }
        let mut list: Vec<Tool> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let f = match item.get("type").and_then(Value::as_str) {
                Some("function") => item.get("function"),
                Some(other) => return Err(bad(format!("[{i}]: type {other:?} (only \"function\")"))),
                None => Some(item),
            }
            .and_then(Value::as_object)
            .ok_or_else(|| bad(format!("[{i}]: not a function object")))?;
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            if !valid_name(name) {
                return Err(bad(format!("[{i}]: name {name:?} (1-64 of A-Z a-z 0-9 _ - .)")));
            }
            if list.iter().any(|t| t.name == name) {
                return Err(bad(format!("[{i}]: {name} is offered twice")));
            }
            let parameters = match f.get("parameters") {
                None => serde_json::json!({"type": "object", "properties": {}}),
                Some(p) if p.is_object() => p.clone(),
                Some(_) => return Err(bad(format!("[{i}] {name}: parameters is not a JSON Schema object"))),
            };
            let description = match f.get("description") {
                None => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err(bad(format!("[{i}] {name}: description is not a string"))),
            };
            list.push(Tool { name: name.to_string(), description, parameters });
        }
        let choice = match choice.unwrap_or("auto") {
            "auto" => Choice::Auto,
            "none" => Choice::None,
            "required" => Choice::Required,
            name if list.iter().any(|t| t.name == name) => Choice::Named(name.to_string()),
            other => {
                let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
                return Err(ToolError::Choice(format!(
                    "{other:?} is none of auto, none, required or a tool offered ({})",
                    names.join(", ")
                )));
            }
        };
        Ok(Tools { list, choice, parallel: false })
    }

    /// The tools as Hugging Face chat templates take them.
    pub fn template_json(&self) -> Value {
        Value::Array(
            self.list
                .iter()
                .map(|t| {
                    serde_json::json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters}})
                })
                .collect(),
        )
    }
}

/// How a model's template writes calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one block a call (Hermes,
    /// Qwen). `native`: the template renders tools and calls itself; otherwise llamad's built-in
    /// format does (`render.rs`).
    Hermes { native: bool },
    /// Llama 3.1+: the answer is one JSON object `{"name": ..., "parameters": {...}}`; results
    /// come back in the `ipython` role.
    Llama3,
}

impl Dialect {
    /// The dialect a chat template speaks: Llama 3's when it has the `ipython` role or the
    /// `<|python_tag|>`, Hermes' when it writes `<tool_call>`, else the built-in Hermes format.
    pub fn of(template: Option<&str>) -> Dialect {
        match template {
            Some(t) if t.contains("<tool_call>") => Dialect::Hermes { native: true },
            Some(t) if t.contains("ipython") || t.contains("<|python_tag|>") => Dialect::Llama3,
            _ => Dialect::Hermes { native: false },
        }
    }

    /// Text from which the output is a call, not text for the user: held back while it
    /// may be starting, and not streamed once it has. Llama 3's only at the start.
    pub fn trigger(self) -> (&'static str, bool) {
        match self {
            Dialect::Hermes { .. } => ("<tool_call>", false),
            Dialect::Llama3 => ("{", true),
        }
    }

    /// The key of a call's arguments.
    fn arguments_key(self) -> &'static str {
        match self {
            Dialect::Hermes { .. } => "arguments",
            Dialect::Llama3 => "parameters",
        }
    }

    /// The text before any call, and the calls (ids left empty), from a whole output. An
    /// output cut off inside a call has no complete call: none is returned.
    pub fn parse(self, text: &str) -> (String, Vec<ToolCall>) {
        let call = |json: &str| -> Option<ToolCall> {
            let v: Value = serde_json::from_str(json.trim()).ok()?;
            let name = v.get("name")?.as_str()?.to_string();
            let args = v.get(self.arguments_key()).cloned().unwrap_or(serde_json::json!({}));
            Some(ToolCall { id: String::new(), name, arguments: args.to_string() })
        };
        match self {
            Dialect::Hermes { .. } => {
                let Some(at) = text.find("<tool_call>") else {
                    return (text.to_string(), vec![]);
                };
                let calls: Option<Vec<ToolCall>> = text[at..]
                    .split("<tool_call>")
                    .skip(1)
                    .map(|block| block.split_once("</tool_call>").and_then(|(json, _)| call(json)))
                    .collect();
                match calls {
                    Some(calls) => (text[..at].trim_end().to_string(), calls),
                    None => (text.to_string(), vec![]),
                }
            }
            Dialect::Llama3 => {
                let body = text.trim_start().trim_start_matches("<|python_tag|>");
                match body.starts_with('{').then(|| call(body)).flatten() {
                    Some(c) => (String::new(), vec![c]),
                    None => (text.to_string(), vec![]),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEATHER: &str = r#"[{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"name": "get_time"}]"#;

    #[test]
    fn tools_parse_in_both_shapes_and_bad_ones_name_the_problem() {
        let t = Tools::parse(WEATHER, Some("get_time")).unwrap();
        assert_eq!(t.list.len(), 2);
        assert_eq!(t.list[1].parameters["type"], "object");
        assert_eq!(t.choice, Choice::Named("get_time".into()));
        assert_eq!(Tools::parse(WEATHER, None).unwrap().choice, Choice::Auto);
        for (tools, choice, want) in [
            ("{}", None, "array"),
            ("nope", None, "not JSON"),
            ("[]", None, "0 tools"),
            (r#"[{"type": "retrieval"}]"#, None, "only"),
            (r#"[{"name": "a b"}]"#, None, "name"),
            (r#"[{"name": "a"}, {"name": "a"}]"#, None, "twice"),
            (r#"[{"name": "a", "parameters": 3}]"#, None, "parameters"),
            (WEATHER, Some("get_news"), "get_news"),
        ] {
            let e = Tools::parse(tools, choice).unwrap_err().to_string();
            assert!(e.contains(want), "{tools} {choice:?}: {e}");
        }
    }

    #[test]
    fn dialects_come_from_the_template_and_parse_their_calls() {
        assert_eq!(Dialect::of(None), Dialect::Hermes { native: false });
        assert_eq!(Dialect::of(Some("{{ '<tool_call>' }}")), Dialect::Hermes { native: true });
        assert_eq!(Dialect::of(Some("{% if m.role == 'ipython' %}")), Dialect::Llama3);
        let h = Dialect::Hermes { native: false };
        let (text, calls) = h.parse(
            "Checking.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>",
        );
        assert_eq!(text, "Checking.");
        assert_eq!(
            calls.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect::<Vec<_>>(),
            [("a", r#"{"x":1}"#), ("b", "{}")]
        );
        // cut off inside a call: no call, the text as it is
        let cut = "<tool_call>\n{\"name\": \"a\", \"argu";
        assert_eq!(h.parse(cut), (cut.to_string(), vec![]));
        let (text, calls) = Dialect::Llama3.parse(r#"{"name": "a", "parameters": {"x": "y"}}"#);
        assert_eq!((text.as_str(), calls[0].arguments.as_str()), ("", r#"{"x":"y"}"#));
        assert!(Dialect::Llama3.parse("Hello {there}").1.is_empty());
    }
}
