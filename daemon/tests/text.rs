//! Tokenizer, chat templates and streaming detokenization on the real Llama 2
//! and SmolLM2 tokenizers (no model needed).

mod common;
use common::*;
use llamad::engine::Tokenizer;
use llamad::engine::chat::{self, ChatError, Message, Role};
use llamad::engine::detok::Detokenizer;

fn tokenizer(name: &str) -> Tokenizer {
    let d = fixture("tokenizers").join(name);
    let tpl = d.join("chat_template.jinja");
    Tokenizer::from_files(
        &d.join("tokenizer.json"),
        Some(&d.join("tokenizer_config.json")),
        tpl.is_file().then_some(tpl.as_path()),
    )
    .unwrap()
}

const SAMPLES: &[&str] = &[
    "Hello world",
    "Emoji: 😀🦙👍🏽 and flags 🇫🇷",
    "日本語のテキストと中文",
    "  leading spaces,\ttabs\nand\n\nnewlines  ",
    "accents: café naïve Ångström",
    "code: fn main() { println!(\"{}\", 1 + 2); }",
    "numbers 1234567890 and 3.14159",
    "rare bytes \u{1F9EC}\u{0301}\u{200D}",
];

#[test]
fn llama2_encodes_like_sentencepiece() {
    let t = tokenizer("llama2");
    assert_eq!(t.encode("Hello world", true).unwrap(), vec![1, 15043, 3186]);
    assert_eq!(t.vocab_size(), 32000);
}

fn stream(t: &Tokenizer, ids: &[u32]) -> (String, usize) {
    let mut d = Detokenizer::new(t);
    let mut out = String::new();
    let mut pieces = 0;
    for &id in ids {
        if let Some(p) = d.push(id).unwrap() {
            assert!(!p.contains('\u{FFFD}'), "broken UTF-8 emitted: {p:?}");
            out.push_str(&p);
            pieces += 1;
        }
    }
    if let Some(p) = d.finish().unwrap() {
        out.push_str(&p);
    }
    (out, pieces)
}

#[test]
fn streaming_detokenizer_equals_full_decode() {
    for name in ["llama2", "smollm2"] {
        let t = tokenizer(name);
        for s in SAMPLES {
            let ids = t.encode(s, false).unwrap();
            let full = t.decode(&ids).unwrap();
            let (streamed, pieces) = stream(&t, &ids);
            assert_eq!(streamed, full, "{name}: {s:?}");
            assert!(pieces > 0);
        }
    }
}

#[test]
fn byte_fallback_characters_are_held_until_complete() {
    let t = tokenizer("llama2");
    // 🦙 is not a Llama 2 piece: it is four byte-fallback tokens <0xF0><0x9F><0xA6><0x99>.
    let ids = t.encode("🦙", false).unwrap();
    let bytes: Vec<u32> = ids.iter().copied().filter(|&i| (3..259).contains(&i)).collect();
    assert_eq!(bytes.len(), 4, "{ids:?}");
    let mut d = Detokenizer::new(&t);
    let mut emitted = vec![];
    for &id in &ids {
        emitted.push(d.push(id).unwrap());
    }
    assert!(emitted[..emitted.len() - 1].iter().all(|p| p.as_deref().is_none_or(|s| !s.contains('🦙'))));
    assert_eq!(emitted.last().unwrap().as_deref().map(str::trim), Some("🦙"));
}

#[test]
fn llama2_chat_format_is_metas() {
    let t = tokenizer("llama2");
    let msgs = vec![
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "Hi"),
        Message::new(Role::Assistant, "Hello!"),
        Message::new(Role::User, "Name a color."),
    ];
    let ids = chat::prompt_ids(&t, &msgs, None).unwrap();
    let mut want = vec![1];
    want.extend(t.encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! ", false).unwrap());
    want.push(2);
    want.push(1);
    want.extend(t.encode("[INST] Name a color. [/INST]", false).unwrap());
    assert_eq!(ids, want);
    // BOS and EOS are the special ids, never the text "<s>".
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 2);
    // The answer's trailing space and the next turn's leading one both stay: "Hello!  [INST]".
    assert_eq!(
        t.decode(&ids).unwrap(),
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello!  [INST] Name a color. [/INST]"
    );
}

#[test]
fn smollm2_uses_its_chatml_template() {
    let t = tokenizer("smollm2");
    let msgs = vec![Message::new(Role::User, "What is the capital of France?")];
    let ids = chat::prompt_ids(&t, &msgs, None).unwrap();
    let text = t.decode(&ids).unwrap();
    assert!(text.contains("user\nWhat is the capital of France?"), "{text:?}");
    // <|im_start|> = 1 opens each turn (system default, user, assistant prompt).
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
    let tail = t.encode("<|im_start|>assistant\n", false).unwrap();
    assert!(ids.ends_with(&tail), "generation prompt missing");
}

#[test]
fn bad_conversations_are_refused() {
    let t = tokenizer("llama2");
    let cases = [
        vec![],
        vec![Message::new(Role::Assistant, "hi")],
        vec![Message::new(Role::User, "a"), Message::new(Role::User, "b")],
        vec![Message::new(Role::User, "a"), Message::new(Role::Assistant, "b")],
        vec![Message::new(Role::User, "   ")],
    ];
    for msgs in cases {
        assert!(matches!(chat::prompt_ids(&t, &msgs, None), Err(ChatError::Messages(_))), "{msgs:?}");
    }
}
