//! Structured output with llguidance: a request's [`Format`] (any JSON, a JSON
//! Schema, a regular expression or a Lark grammar) becomes a [`Constraint`]
//! that masks the logits before the sampler, so the output matches.
//!
//! A loaded model has one [`Grammars`]: llguidance's parser factory over the
//! model's token trie (`env.rs`), built on first use, and the grammars it has
//! compiled, kept by their text (a few, least recently used out) so a schema
//! compiles once. [`Format::check`] compiles against a one-byte-per-token
//! vocabulary, which needs no model: the D-Bus call rejects a bad grammar with
//! llguidance's message before anything is queued.
//!
//! JSON is generated compact (`", "` and `": "` separators, no other
//! whitespace) unless the schema says otherwise in llguidance's `x-guidance`
//! key: a model free to add whitespace can add it forever.

mod constraint;
mod env;

use std::sync::{Arc, Mutex, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv};
use llguidance::{ParserFactory, TokenParser};
use serde::{Deserialize, Serialize};

pub use constraint::Constraint;
pub use env::Env;

/// The longest schema or grammar a request may give, in bytes.
pub const MAX_GRAMMAR_BYTES: usize = 64 << 10;
/// Compiled grammars kept per model.
const CACHED: usize = 16;

/// What the output must match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Any JSON value.
    Json,
    /// A JSON Schema (its text).
    JsonSchema(String),
    /// A regular expression the whole output matches.
    Regex(String),
    /// A grammar in llguidance's Lark syntax.
    Lark(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrammarError {
    /// The schema or grammar does not compile (llguidance's message).
    #[error("{option}: {message}")]
    Invalid { option: &'static str, message: String },
    /// The model's tokenizer cannot serve a grammar.
    #[error("structured output: {0}")]
    Tokenizer(String),
    /// The grammar failed during generation.
    #[error("structured output: {0}")]
    Runtime(String),
}

impl Format {
    /// The request option that gives this format.
    pub fn option(&self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::JsonSchema(_) => "json_schema",
            Format::Regex(_) => "regex",
            Format::Lark(_) => "lark",
        }
    }

    fn invalid(&self, message: impl std::fmt::Display) -> GrammarError {
        GrammarError::Invalid { option: self.option(), message: message.to_string() }
    }

    /// llguidance's grammar for this format.
    fn grammar(&self) -> Result<TopLevelGrammar, GrammarError> {
        let text = match self {
            Format::Json => "",
            Format::JsonSchema(s) | Format::Regex(s) | Format::Lark(s) => s,
        };
        if text.len() > MAX_GRAMMAR_BYTES {
            return Err(self.invalid(format!("{} bytes (at most {MAX_GRAMMAR_BYTES})", text.len())));
        }
        Ok(match self {
            Format::Json => TopLevelGrammar::from_json_schema(compact(serde_json::json!({}))),
            Format::JsonSchema(s) => {
                let schema: serde_json::Value =
                    serde_json::from_str(s).map_err(|e| self.invalid(format!("not JSON: {e}")))?;
                TopLevelGrammar::from_json_schema(compact(schema))
            }
            Format::Regex(s) => TopLevelGrammar::from_regex(s),
            Format::Lark(s) => TopLevelGrammar::from_lark(s.clone()),
        })
    }

    /// Compiles the format without a model (a one-byte-per-token vocabulary): the errors
    /// a schema or grammar can have are the same for every tokenizer.
    pub fn check(&self) -> Result<(), GrammarError> {
        static FACTORY: OnceLock<ParserFactory> = OnceLock::new();
        let factory = FACTORY.get_or_init(|| {
            let env: TokEnv = ApproximateTokEnv::single_byte_env();
            quiet(ParserFactory::new_simple(&env).expect("llguidance's single-byte environment"))
        });
        compile(factory, self).map(drop)
    }
}

/// Schemas without their own `x-guidance` are generated compact (see the module doc).
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object_mut()
        && !obj.contains_key("x-guidance")
    {
        obj.insert(
            "x-guidance".into(),
            serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

fn quiet(mut f: ParserFactory) -> ParserFactory {
    f.quiet();
    f
}

fn compile(factory: &ParserFactory, format: &Format) -> Result<TokenParser, GrammarError> {
    let grammar = format.grammar()?;
    // llguidance reports bad grammars as errors; the catch is for a panic on a hostile one.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory.create_parser(grammar)))
        .map_err(|_| format.invalid("the grammar compiler failed"))?
        .map_err(|e| format.invalid(e))
}

/// A loaded model's grammar engine (see the module doc).
pub struct Grammars {
    factory: ParserFactory,
    /// Compiled, unstarted parsers by format, most recently used last.
    cache: Mutex<Vec<(Format, TokenParser)>>,
}

impl Grammars {
    /// The engine of a model whose logits are `width` wide and which ends on `eos`.
    pub fn new(tokenizer: &crate::engine::Tokenizer, width: usize, eos: &[u32]) -> Result<Grammars, GrammarError> {
        let env: TokEnv = Arc::new(Env::new(tokenizer, width, eos)?);
        let factory = ParserFactory::new_simple(&env).map_err(|e| GrammarError::Tokenizer(e.to_string()))?;
        Ok(Grammars { factory: quiet(factory), cache: Mutex::new(Vec::new()) })
    }

    /// A new constraint for one request, from the compiled grammar when it is cached.
    pub fn constraint(&self, format: &Format) -> Result<Constraint, GrammarError> {
        let cached = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.iter().position(|(f, _)| f == format).map(|i| {
                let entry = cache.remove(i);
                let parser = entry.1.deep_clone();
                cache.push(entry);
                parser
            })
        };
        let parser = match cached {
            Some(p) => p,
            None => {
                let p = compile(&self.factory, format)?;
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= CACHED {
                    cache.remove(0);
                }
                cache.push((format.clone(), p.deep_clone()));
                p
            }
        };
        Ok(Constraint::new(parser, self.factory.tok_env().tok_trie().vocab_size()))
    }

    /// Grammars compiled and kept.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_schemas_and_grammars_name_their_option() {
        let bad = [
            Format::JsonSchema("{not json".into()),
            Format::JsonSchema(r#"{"type": "no-such-type"}"#.into()),
            Format::Regex("a(b".into()),
            Format::Lark("start: undefined_rule".into()),
            Format::Lark("x".repeat(MAX_GRAMMAR_BYTES + 1)),
        ];
        for f in bad {
            match f.check() {
                Err(GrammarError::Invalid { option, message }) => {
                    assert_eq!(option, f.option());
                    assert!(!message.is_empty());
                }
                other => panic!("{f:?}: {other:?}"),
            }
        }
        for f in [
            Format::Json,
            Format::JsonSchema(r#"{"type": "object", "properties": {"a": {"type": "integer"}}}"#.into()),
            Format::Regex("[a-z]+@[a-z]+\\.com".into()),
            Format::Lark("start: \"yes\" | \"no\"".into()),
        ] {
            f.check().unwrap_or_else(|e| panic!("{f:?}: {e}"));
        }
    }

    #[test]
    fn compact_json_unless_the_schema_says() {
        let c = compact(serde_json::json!({"type": "object"}));
        assert_eq!(c["x-guidance"]["whitespace_flexible"], false);
        let own = serde_json::json!({"x-guidance": {"whitespace_flexible": true}});
        assert_eq!(compact(own.clone()), own);
        // a boolean schema has nowhere to say it and stays as it is
        assert_eq!(compact(serde_json::json!(true)), serde_json::json!(true));
    }
}
