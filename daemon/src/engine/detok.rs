//! Streaming detokenization: turns tokens into text pieces as they arrive,
//! never emitting a broken UTF-8 character (byte-fallback tokens can split
//! one character over several tokens), and such that the pieces concatenated
//! equal the decode of the whole sequence.
//!
//! Method: decode a short window of recent tokens twice, with and without the
//! new ones, and emit the difference once it no longer ends in U+FFFD (the
//! replacement the decoder writes for incomplete bytes). Decoding a window
//! rather than one token keeps leading-space rules (SentencePiece `▁`) right.

use super::tokenizer::{Tokenizer, TokenizerError};

pub struct Detokenizer {
    tok: Tokenizer,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix: usize,
    /// Tokens before this one have been emitted.
    read: usize,
}

impl Detokenizer {
    pub fn new(tok: &Tokenizer) -> Self {
        Detokenizer { tok: tok.clone(), ids: vec![], prefix: 0, read: 0 }
    }

    /// Adds a token; returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tok.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && now.starts_with(&before) && !now.ends_with('\u{FFFD}') {
            let piece = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(piece))
        } else if !now.starts_with(&before) && !now.ends_with('\u{FFFD}') {
            // The decoder rewrote earlier text (rare normalisation effects): re-anchor.
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(now.get(before.len()..).unwrap_or("").to_string()))
        } else {
            Ok(None)
        }
    }

    /// What is still held back at the end of the stream (an incomplete character is emitted as decoded).
    pub fn finish(&mut self) -> Result<Option<String>, TokenizerError> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tok.decode(&self.ids[self.prefix..])?;
        self.read = self.ids.len();
        Ok(now.get(before.len()..).filter(|s| !s.is_empty()).map(str::to_owned))
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
