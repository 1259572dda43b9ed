//! The text stages after the decoding loop: token ids → detokenized pieces →
//! stop strings (generation ends before the first occurrence of one, which is
//! never emitted; a suffix that may be the start of one is held back until it
//! cannot) → the tool-call hold (text from a call's marker on is kept for the
//! call, not streamed; text that may be the marker's start waits until it is
//! clear) → the caller's callback. Models without a tokenizer give no text.

use super::Tokenizer;
use super::detok::Detokenizer;
use super::tokenizer::TokenizerError;

/// Longest suffix of `text` that is a proper prefix of some stop string.
fn held_back<'s>(text: &str, stops: impl IntoIterator<Item = &'s str>) -> usize {
    let mut keep = 0;
    for s in stops {
        for n in (1..s.len().min(text.len() + 1)).rev() {
            if text.is_char_boundary(text.len() - n) && s.as_bytes().starts_with(&text.as_bytes()[text.len() - n..]) {
                keep = keep.max(n);
                break;
            }
        }
    }
    keep
}

/// A request's output text as it is built and streamed.
pub struct TextOut {
    detok: Option<Detokenizer>,
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` given to the callback.
    emitted: usize,
    /// A stop string was found: the text ends before it.
    stopped: bool,
    /// The tool-call marker, and whether it counts only at the start of the text.
    hold: Option<(String, bool)>,
}

impl TextOut {
    pub fn new(tokenizer: Option<&Tokenizer>, stops: &[String]) -> TextOut {
        TextOut {
            detok: tokenizer.map(Detokenizer::new),
            stops: stops.to_vec(),
            text: String::new(),
            emitted: 0,
            stopped: false,
            hold: None,
        }
    }

    /// Holds back a tool call: text from `marker` on (anywhere, or only at the start).
    pub fn hold_calls(mut self, marker: &str, at_start: bool) -> TextOut {
        self.hold = Some((marker.to_string(), at_start));
        self
    }

    /// How much of the text may be streamed as far as the tool-call hold is concerned.
    fn streamable(&self) -> usize {
        let Some((marker, at_start)) = self.hold.as_ref().map(|(m, a)| (m.as_str(), *a)) else {
            return self.text.len();
        };
        if at_start {
            let lead = self.text.len() - self.text.trim_start().len();
            let body = &self.text[lead..];
            return if body.starts_with(marker) || marker.starts_with(body) { 0 } else { self.text.len() };
        }
        // streamed text never holds the marker's start: look only after it
        match self.text[self.emitted..].find(marker) {
            Some(at) => self.emitted + at,
            None => self.text.len() - held_back(&self.text, [marker]),
        }
    }

    /// Adds a generated token and streams the text that became final. True when a stop
    /// string ends the output (tokens after it are not pushed).
    pub fn push(&mut self, id: u32, on_text: &mut impl FnMut(&str)) -> Result<bool, TokenizerError> {
        let Some(piece) = self.detok.as_mut().map(|d| d.push(id)).transpose()?.flatten() else {
            return Ok(false);
        };
        self.text.push_str(&piece);
        let from = self.emitted;
        if let Some(at) = self.stops.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|i| i + from)).min() {
            self.text.truncate(at);
            self.stopped = true;
            return Ok(true);
        }
        let ready =
            (self.text.len() - held_back(&self.text, self.stops.iter().map(String::as_str))).min(self.streamable());
        if ready > self.emitted {
            on_text(&self.text[self.emitted..ready]);
            self.emitted = ready;
        }
        Ok(false)
    }

    /// Flushes what is left (held-back text, an incomplete character) and returns the whole
    /// text. A tool call's text, from its marker on, is not flushed.
    pub fn finish(mut self, on_text: &mut impl FnMut(&str)) -> Result<String, TokenizerError> {
        if !self.stopped
            && let Some(rest) = self.detok.as_mut().map(Detokenizer::finish).transpose()?.flatten()
        {
            self.text.push_str(&rest);
        }
        let end = match &self.hold {
            Some((marker, true)) if self.text.trim_start().starts_with(marker.as_str()) => self.emitted,
            Some((marker, false)) => self.text.find(marker.as_str()).unwrap_or(self.text.len()),
            _ => self.text.len(),
        };
        if end > self.emitted {
            on_text(&self.text[self.emitted..end]);
        }
        Ok(self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_only_possible_stop_prefixes() {
        let stops = ["</answer>", "\n\n"];
        assert_eq!(held_back("hello </ans", stops), 5);
        assert_eq!(held_back("hello\n", stops), 1);
        assert_eq!(held_back("hello", stops), 0);
        assert_eq!(held_back("héllo <", stops), 1);
    }

    fn tokenizer() -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/tokenizers/smollm2");
        Tokenizer::from_files(&dir.join("tokenizer.json"), None, None).unwrap()
    }

    /// Streams `text`'s tokens through the stages; returns the pieces, the result and
    /// whether a stop string ended it.
    fn stream(tok: &Tokenizer, text: &str, stops: &[String]) -> (Vec<String>, String, bool) {
        let mut out = TextOut::new(Some(tok), stops);
        let mut pieces = vec![];
        let mut on = |p: &str| pieces.push(p.to_string());
        let mut stopped = false;
        for id in tok.encode(text, false).unwrap() {
            if out.push(id, &mut on).unwrap() {
                stopped = true;
                break;
            }
        }
        let text = out.finish(&mut on).unwrap();
        (pieces, text, stopped)
    }

    #[test]
    fn a_tool_call_is_held_back_and_text_before_it_streams() {
        let tok = tokenizer();
        let text = "Let me look. <tool_call>\n{\"name\": \"f\"}\n</tool_call>";
        let mut out = TextOut::new(Some(&tok), &[]).hold_calls("<tool_call>", false);
        let mut pieces: Vec<String> = vec![];
        let mut on = |p: &str| pieces.push(p.to_string());
        for id in tok.encode(text, false).unwrap() {
            out.push(id, &mut on).unwrap();
        }
        assert_eq!(out.finish(&mut on).unwrap(), text);
        assert_eq!(pieces.concat(), "Let me look. ");
        // Llama 3's call is the whole answer: text that starts otherwise streams whole
        for (text, streamed) in [("{\"name\": \"f\"}", ""), ("Hi {there}", "Hi {there}")] {
            let mut out = TextOut::new(Some(&tok), &[]).hold_calls("{", true);
            let mut pieces: Vec<String> = vec![];
            let mut on = |p: &str| pieces.push(p.to_string());
            for id in tok.encode(text, false).unwrap() {
                out.push(id, &mut on).unwrap();
            }
            out.finish(&mut on).unwrap();
            assert_eq!(pieces.concat(), streamed, "{text}");
        }
    }

    #[test]
    fn a_stop_string_ends_the_text_and_is_never_streamed() {
        let tok = tokenizer();
        let stops = vec!["</a>".to_string()];
        let (pieces, text, stopped) = stream(&tok, "one two </a> three", &stops);
        assert!(stopped);
        assert_eq!(text, "one two ");
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| !p.contains('<')));
        // a prefix of a stop string that does not complete is streamed in the end
        let (pieces, text, stopped) = stream(&tok, "one </b two", &stops);
        assert!(!stopped);
        assert_eq!((pieces.concat(), text.as_str()), (text.clone(), "one </b two"));
    }
}
