//! Chat prompts: a list of messages → prompt token ids.
//!
//! A model's own template (`chat_template` in `tokenizer_config.json`, or
//! `chat_template.jinja`) is rendered with minijinja (Python string methods
//! through minijinja-contrib) and tokenized without adding special tokens, as
//! Hugging Face's `apply_chat_template` does. Models with no template that
//! use the Llama 2 vocabulary get Meta's Llama-2-chat format, built as ids so
//! BOS/EOS are tokens, never text.

use super::tokenizer::{Tokenizer, TokenizerError};
use super::tools::{Dialect, Tools, builtin_messages};

pub use llamad_formats::wire::{Message, Role};

/// A message as Hugging Face templates take it (calls as `{"id", "type": "function",
/// "function": {"name", "arguments"}}`, arguments an object).
fn template_value(m: &Message) -> serde_json::Value {
    let mut v = serde_json::json!({"role": m.role, "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                let args: serde_json::Value = serde_json::from_str(&c.arguments).unwrap_or(serde_json::json!({}));
                serde_json::json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": args}})
            })
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = id.clone().into();
    }
    if let Some(n) = &m.name {
        v["name"] = n.clone().into();
    }
    v
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("invalid messages: {0}")]
    Messages(String),
    #[error("the model has no chat template and is not a Llama 2 vocabulary model")]
    NoTemplate,
    #[error("chat template: {0}")]
    Template(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Checks the conversation shape every format needs: an optional system
/// message first, then a user message; after a user message an assistant's; after an
/// assistant's a user's, or `tool` results when it called tools; after a tool result
/// more results or the assistant's; ending with a user message or tool results.
pub fn validate(messages: &[Message]) -> Result<(), ChatError> {
    let turns = match messages.first() {
        Some(m) if m.role == Role::System => &messages[1..],
        _ => messages,
    };
    if turns.is_empty() {
        return Err(ChatError::Messages("no user message".into()));
    }
    let offset = messages.len() - turns.len();
    let mut prev: Option<&Message> = None;
    for (i, m) in turns.iter().enumerate() {
        let ok = matches!(
            (prev.map(|p| (p.role, p.tool_calls.is_empty())), m.role),
            (None, Role::User)
                | (Some((Role::User, _)), Role::Assistant)
                | (Some((Role::Assistant, _)), Role::User)
                | (Some((Role::Assistant, false)), Role::Tool)
                | (Some((Role::Tool, _)), Role::Tool | Role::Assistant)
        );
        if !ok {
            let expected = match prev.map(|p| (p.role, p.tool_calls.is_empty())) {
                None => "User",
                Some((Role::User, _)) => "Assistant",
                Some((Role::Assistant, true)) => "User",
                Some((Role::Assistant, false)) => "Tool or User",
                _ => "Tool or Assistant",
            };
            return Err(ChatError::Messages(format!(
                "message {} is {:?}: expected {expected} (an optional system message, then user and assistant \
                 alternating, tool results after an assistant's tool calls)",
                i + offset,
                m.role,
            )));
        }
        if !m.tool_calls.is_empty() && m.role != Role::Assistant {
            return Err(ChatError::Messages(format!("message {}: only the assistant calls tools", i + offset)));
        }
        prev = Some(m);
    }
    if !matches!(turns.last().map(|m| m.role), Some(Role::User | Role::Tool)) {
        return Err(ChatError::Messages("the last message must be the user's or a tool's result".into()));
    }
    if messages.iter().any(|m| m.content.trim().is_empty() && m.tool_calls.is_empty() && m.role != Role::System) {
        return Err(ChatError::Messages("empty message".into()));
    }
    Ok(())
}

/// The prompt ids for `messages` (offering `tools`), ready for the assistant's answer.
/// A template that does not speak tools gets them, the calls and their results in
/// llamad's built-in format (`tools/render.rs`).
pub fn prompt_ids(tok: &Tokenizer, messages: &[Message], tools: Option<&Tools>) -> Result<Vec<u32>, ChatError> {
    validate(messages)?;
    let uses_tools = tools.is_some() || messages.iter().any(|m| m.role == Role::Tool || !m.tool_calls.is_empty());
    let builtin = uses_tools && Dialect::of(tok.chat_template.as_deref()) == (Dialect::Hermes { native: false });
    let rewritten;
    let (messages, tools) = if builtin {
        rewritten = builtin_messages(messages, tools);
        (&rewritten[..], None)
    } else {
        (messages, tools)
    };
    if let Some(template) = &tok.chat_template {
        let text = render(template, tok, messages, tools)?;
        return Ok(tok.encode(&text, false)?);
    }
    let (Some(bos), Some(eos)) = (tok.token_id("<s>"), tok.token_id("</s>")) else {
        return Err(ChatError::NoTemplate);
    };
    llama2_ids(tok, messages, bos, eos)
}

fn render(template: &str, tok: &Tokenizer, messages: &[Message], tools: Option<&Tools>) -> Result<String, ChatError> {
    let messages: Vec<serde_json::Value> = messages.iter().map(template_value).collect();
    let inputs = llamad_formats::template::Inputs {
        messages: &messages,
        tools: tools.map(Tools::template_json),
        bos_token: tok.bos_token.as_deref().unwrap_or_default(),
        eos_token: tok.eos_token.as_deref().unwrap_or_default(),
    };
    llamad_formats::template::render(template, &inputs).map_err(ChatError::Template)
}

/// Meta's reference format:
/// `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s><s>[INST] {next} [/INST]`.
fn llama2_ids(tok: &Tokenizer, messages: &[Message], bos: u32, eos: u32) -> Result<Vec<u32>, ChatError> {
    let (system, turns) = match messages.first() {
        Some(m) if m.role == Role::System => (Some(m.content.trim()), &messages[1..]),
        _ => (None, messages),
    };
    let mut ids = vec![];
    for (i, pair) in turns.chunks(2).enumerate() {
        let mut user = pair[0].content.trim().to_string();
        if i == 0
            && let Some(sys) = system
        {
            user = format!("<<SYS>>\n{sys}\n<</SYS>>\n\n{user}");
        }
        ids.push(bos);
        match pair.get(1) {
            Some(answer) => {
                ids.extend(tok.encode(&format!("[INST] {user} [/INST] {} ", answer.content.trim()), false)?);
                ids.push(eos);
            }
            None => ids.extend(tok.encode(&format!("[INST] {user} [/INST]"), false)?),
        }
    }
    Ok(ids)
}
