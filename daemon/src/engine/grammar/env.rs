//! llguidance's view of a model's tokenizer: the token trie (each id's bytes,
//! read from `tokenizer.json` by `llguidance::token_bytes_from_tokenizer_json`)
//! padded to the width of the graph's logits, the model's end ids as its EOS set,
//! and tokenization of text the grammar forces, over the project's own
//! `tokenizers` (not a second copy of the crate through `toktrie_hf_tokenizers`).

use std::sync::Arc;

use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use super::GrammarError;
use crate::engine::Tokenizer;

/// A model's tokenizer as llguidance sees it.
pub struct Env {
    trie: TokTrie,
    tokenizer: Arc<tokenizers::Tokenizer>,
}

/// The bytes of each token id of `tokenizer`, padded with empty entries (never allowed)
/// to `width` ids, the logits' width. The reader asserts on malformed vocabularies, so a
/// panic in it is turned into an error.
fn token_bytes(tokenizer: &Tokenizer, width: usize) -> Result<Vec<Vec<u8>>, GrammarError> {
    let bad = |reason: String| GrammarError::Tokenizer(format!("{}: {reason}", tokenizer.file.display()));
    let text = std::fs::read_to_string(&tokenizer.file).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
        .map_err(|_| bad("unreadable vocabulary".into()))?
        .map_err(|e| bad(e.to_string()))?;
    if words.len() > width {
        return Err(bad(format!("{} token ids but the model's logits have {width}", words.len())));
    }
    let mut words = words;
    words.resize(width, Vec::new());
    Ok(words)
}

impl Env {
    /// The environment of a model whose logits are `width` wide and which ends on `eos`.
    pub fn new(tokenizer: &Tokenizer, width: usize, eos: &[u32]) -> Result<Env, GrammarError> {
        let Some(&first) = eos.first() else {
            return Err(GrammarError::Tokenizer("the model has no end-of-sequence token".into()));
        };
        let words = token_bytes(tokenizer, width)?;
        let info = TokRxInfo::new(width as u32, first);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos);
        Ok(Env { trie, tokenizer: tokenizer.shared() })
    }

    /// The canonical tokenization of `text` when the tokenizer gives one whose bytes are
    /// exactly `text` (a tokenizer that adds a leading space or reads special tokens in the
    /// text does not), else the trie's greedy one.
    fn tokenize_text(&self, text: &str) -> Vec<TokenId> {
        if let Ok(enc) = self.tokenizer.encode(text, false)
            && self.trie.decode_raw(enc.get_ids()) == text.as_bytes()
        {
            return enc.get_ids().to_vec();
        }
        self.trie.greedy_tokenize(text.as_bytes())
    }
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| self.tokenize_text(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(name: &str) -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/tokenizers").join(name);
        let config = dir.join("tokenizer_config.json");
        Tokenizer::from_files(&dir.join("tokenizer.json"), Some(&config), None).unwrap()
    }

    #[test]
    fn trie_is_padded_and_tokenizes_back_to_the_same_bytes() {
        for name in ["llama2", "smollm2"] {
            let tok = tokenizer(name);
            let n = tok.vocab_size();
            let env = Env::new(&tok, n + 64, &[2]).unwrap();
            let trie = env.tok_trie();
            assert_eq!(trie.vocab_size(), n + 64, "{name}");
            assert!(trie.token(n as u32 + 10).is_empty(), "{name}: padding ids have no bytes");
            assert_eq!(trie.eos_tokens(), &[2]);
            for text in ["{\"name\": \"Ada\"}", " leading space", "émigré 東京", "a\nb"] {
                let ids = env.tokenize_bytes(text.as_bytes());
                assert_eq!(trie.decode_raw(&ids), text.as_bytes(), "{name}: {text:?}");
            }
        }
    }

    #[test]
    fn a_vocabulary_wider_than_the_logits_or_no_eos_is_refused() {
        let tok = tokenizer("smollm2");
        assert!(matches!(Env::new(&tok, 100, &[0]), Err(GrammarError::Tokenizer(m)) if m.contains("logits")));
        assert!(matches!(Env::new(&tok, tok.vocab_size(), &[]), Err(GrammarError::Tokenizer(_))));
    }
}
