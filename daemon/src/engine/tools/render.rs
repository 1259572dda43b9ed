//! llamad's built-in tool format, for chat templates that know nothing of tools
//! (SmolLM2's, Meta's Llama 2 chat format): Hermes-style, as Ollama does for
//! such models. The tools are listed in the system message, inside `<tools>`;
//! an assistant's calls become its text, one
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` block each;
//! tool results become a user message of `<tool_response>` blocks. The result
//! is a plain system/user/assistant conversation any template renders.

use super::Tools;
use crate::engine::chat::{Message, Role};

fn system_text(tools: &Tools) -> String {
    let mut s = String::from("You have access to the following functions:\n<tools>\n");
    for t in tools.template_json().as_array().into_iter().flatten() {
        s.push_str(&t.to_string());
        s.push('\n');
    }
    s.push_str(
        "</tools>\nWhen one of them answers the user's request, call it: reply with only the call, its \
         name and arguments as JSON inside <tool_call></tool_call>:\n\
         <tool_call>\n{\"name\": \"function name\", \"arguments\": {\"argument\": \"value\"}}\n</tool_call>\n\
         The result comes back inside <tool_response></tool_response>. When no function helps, answer in text.",
    );
    s
}

/// `messages` in the built-in format, offering `tools` (none: only the calls and results
/// already in the conversation are rewritten).
pub fn builtin_messages(messages: &[Message], tools: Option<&Tools>) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len() + 1);
    if let Some(t) = tools {
        let listing = system_text(t);
        match messages.first() {
            Some(m) if m.role == Role::System => {
                out.push(Message::new(Role::System, format!("{}\n\n{listing}", m.content.trim_end())))
            }
            _ => out.push(Message::new(Role::System, listing)),
        }
    } else if let Some(m) = messages.first().filter(|m| m.role == Role::System) {
        out.push(m.clone());
    }
    let rest = match messages.first() {
        Some(m) if m.role == Role::System => &messages[1..],
        _ => messages,
    };
    for m in rest {
        match m.role {
            Role::Assistant if !m.tool_calls.is_empty() => {
                let mut text = m.content.trim_end().to_string();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    let call = serde_json::json!({"name": c.name, "arguments":
                        serde_json::from_str::<serde_json::Value>(&c.arguments).unwrap_or(serde_json::json!({}))});
                    text.push_str(&format!("<tool_call>\n{call}\n</tool_call>"));
                }
                out.push(Message::new(Role::Assistant, text));
            }
            Role::Tool => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content.trim());
                match out.last_mut() {
                    // results of one assistant turn's calls go in one user message
                    Some(prev) if prev.role == Role::User && prev.content.ends_with("</tool_response>") => {
                        prev.content.push('\n');
                        prev.content.push_str(&block);
                    }
                    _ => out.push(Message::new(Role::User, block)),
                }
            }
            _ => out.push(Message::new(m.role, m.content.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::chat::validate;
    use crate::engine::tools::ToolCall;

    #[test]
    fn tools_calls_and_results_become_a_plain_conversation() {
        let tools = Tools::parse(r#"[{"name": "get_weather", "description": "Weather now"}]"#, None).unwrap();
        let mut call = Message::new(Role::Assistant, "");
        call.tool_calls = vec![
            ToolCall { id: "c1".into(), name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() },
            ToolCall { id: "c2".into(), name: "get_weather".into(), arguments: r#"{"city":"Rome"}"#.into() },
        ];
        let result = |id: &str, text: &str| Message { tool_call_id: Some(id.into()), ..Message::new(Role::Tool, text) };
        let conversation = vec![
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "Weather in Paris and Rome?"),
            call,
            result("c1", "18 C"),
            result("c2", "24 C"),
        ];
        validate(&conversation).unwrap();
        let out = builtin_messages(&conversation, Some(&tools));
        let roles: Vec<Role> = out.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::User]);
        assert!(out[0].content.starts_with("Be brief.") && out[0].content.contains(r#""name":"get_weather""#));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>\n\
             <tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}\n</tool_call>"
        );
        assert_eq!(out[3].content, "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n24 C\n</tool_response>");
        validate(&out).unwrap();
    }
}
