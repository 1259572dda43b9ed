//! Chat prompts: a list of messages → prompt token ids.
//!
//! A model's own template (`chat_template` in `tokenizer_config.json`, or
//! `chat_template.jinja`) is rendered with minijinja (Python string methods
//! through minijinja-contrib) and tokenized without adding special tokens, as
//! Hugging Face's `apply_chat_template` does. Models with no template that
//! use the Llama 2 vocabulary get Meta's Llama-2-chat format, built as ids so
//! BOS/EOS are tokens, never text.

use serde::{Deserialize, Serialize};

use super::tokenizer::{Tokenizer, TokenizerError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into() }
    }
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
/// message first, then user/assistant turns alternating, ending with the user.
pub fn validate(messages: &[Message]) -> Result<(), ChatError> {
    let turns = match messages.first() {
        Some(m) if m.role == Role::System => &messages[1..],
        _ => messages,
    };
    if turns.is_empty() {
        return Err(ChatError::Messages("no user message".into()));
    }
    for (i, m) in turns.iter().enumerate() {
        let want = if i % 2 == 0 { Role::User } else { Role::Assistant };
        if m.role != want {
            return Err(ChatError::Messages(format!(
                "message {} is {:?}: expected {:?} (an optional system message, then user and assistant alternating)",
                i + messages.len() - turns.len(),
                m.role,
                want
            )));
        }
    }
    if turns.last().map(|m| m.role) != Some(Role::User) {
        return Err(ChatError::Messages("the last message must be the user's".into()));
    }
    if messages.iter().any(|m| m.content.trim().is_empty() && m.role != Role::System) {
        return Err(ChatError::Messages("empty message".into()));
    }
    Ok(())
}

/// The prompt ids for `messages`, ready for the assistant's answer.
pub fn prompt_ids(tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>, ChatError> {
    validate(messages)?;
    if let Some(template) = &tok.chat_template {
        let text = render(template, tok, messages)?;
        return Ok(tok.encode(&text, false)?);
    }
    let (Some(bos), Some(eos)) = (tok.token_id("<s>"), tok.token_id("</s>")) else {
        return Err(ChatError::NoTemplate);
    };
    llama2_ids(tok, messages, bos, eos)
}

fn render(template: &str, tok: &Tokenizer, messages: &[Message]) -> Result<String, ChatError> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| ChatError::Template(e.to_string()))?;
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => tok.bos_token.clone().unwrap_or_default(),
        eos_token => tok.eos_token.clone().unwrap_or_default(),
    };
    env.get_template("chat").and_then(|t| t.render(ctx)).map_err(|e| ChatError::Template(format!("{e:#}")))
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
