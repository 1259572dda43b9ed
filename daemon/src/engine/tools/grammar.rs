//! The grammar of a tool-calling answer, in llguidance's Lark syntax: a call is
//! JSON whose `name` is one of the tools offered and whose arguments follow that
//! tool's parameter schema. With `auto` the answer is free text without the call
//! marker, or text and then calls; with `required` or a named tool only calls;
//! with `none` only text. Llama 3's calls are the whole answer, so its text may
//! not start with `{`.

use serde_json::{Value, json};

use super::{Choice, Dialect, Tools};
use crate::engine::Format;

/// The JSON Schema of one call of `dialect` to the tools named `names` of `tools`.
fn call_schema(tools: &Tools, dialect: Dialect, only: Option<&str>) -> Value {
    let key = dialect.arguments_key();
    let calls: Vec<Value> = tools
        .list
        .iter()
        .filter(|t| only.is_none_or(|n| n == t.name))
        .map(|t| {
            json!({"type": "object", "additionalProperties": false, "required": ["name", key],
                   "properties": {"name": {"const": t.name}, key: t.parameters}})
        })
        .collect();
    json!({"anyOf": calls, "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}})
}

/// The format that constrains an answer to `tools` in `dialect`.
pub fn format_for(tools: &Tools, dialect: Dialect) -> Format {
    let only = match &tools.choice {
        Choice::Named(n) => Some(n.as_str()),
        _ => None,
    };
    let call = format!("%json{}", call_schema(tools, dialect, only));
    let lark = match dialect {
        Dialect::Hermes { .. } => {
            let text = r#"TEXT: /(.|\n)+/ & ~/(.|\n)*<tool_call>(.|\n)*/"#;
            let more = if tools.parallel { r#" ("\n<tool_call>" body)*"# } else { "" };
            let body = format!("body: \"\\n\" {call} \"\\n</tool_call>\"");
            match tools.choice {
                Choice::None => format!("start: TEXT\n{text}"),
                Choice::Auto => format!(
                    "start: TEXT | prefix body{more}\n{text}\nprefix[suffix=\"<tool_call>\"]: /(.|\\n)*/\n{body}"
                ),
                Choice::Required | Choice::Named(_) => format!("start: \"<tool_call>\" body{more}\n{body}"),
            }
        }
        Dialect::Llama3 => {
            let text = r#"TEXT: /(.|\n)+/ & ~/\{(.|\n)*/"#;
            match tools.choice {
                Choice::None => format!("start: TEXT\n{text}"),
                Choice::Auto => format!("start: TEXT | call\n{text}\ncall: {call}"),
                Choice::Required | Choice::Named(_) => format!("start: {call}"),
            }
        }
    };
    Format::Lark(format!("%llguidance {{}}\n{lark}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(choice: &str) -> Tools {
        Tools::parse(
            r#"[{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                {"name": "get_time", "parameters": {"type": "object", "properties": {}}}]"#,
            Some(choice),
        )
        .unwrap()
    }

    #[test]
    fn every_dialect_and_choice_compiles() {
        for d in [Dialect::Hermes { native: false }, Dialect::Llama3] {
            for c in ["auto", "none", "required", "get_time"] {
                for parallel in [false, true] {
                    let t = Tools { parallel, ..tools(c) };
                    format_for(&t, d).check().unwrap_or_else(|e| panic!("{d:?} {c}: {e}"));
                }
            }
        }
    }

    #[test]
    fn a_bad_parameter_schema_fails_to_compile() {
        let t = Tools::parse(r#"[{"name": "f", "parameters": {"type": "nonsense"}}]"#, None).unwrap();
        assert!(format_for(&t, Dialect::Llama3).check().is_err());
    }
}
