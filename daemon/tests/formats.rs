//! Structured output on the tiny random-weight Llama (a model that knows
//! nothing: whatever it emits comes from the constraint): 200 sampled
//! generations under each of eleven JSON Schemas validate with the `jsonschema`
//! crate, under a regular expression match it (the `regex` crate) and under a
//! Lark grammar parse with a checker written for that grammar, on both backends.

mod common;
use std::sync::atomic::AtomicBool;

use common::*;
use llamad::engine::{BackendKind, FinishReason, Format, Model, Prompt, SamplingParams};

const RUNS: u64 = 200;
const FIXTURE: &str = "tiny-llama2-optimum-fp32";

fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    vec![
        (
            "flat object",
            json!({"type": "object", "additionalProperties": false, "required": ["name", "age"],
                   "properties": {"name": {"type": "string", "maxLength": 10},
                                  "age": {"type": "integer", "minimum": 0, "maximum": 120}}}),
        ),
        (
            "nested objects",
            json!({"type": "object", "additionalProperties": false, "required": ["user", "active"],
                   "properties": {
                       "user": {"type": "object", "additionalProperties": false, "required": ["id", "email"],
                                "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9999},
                                               "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,6}\\.com$"}}},
                       "active": {"type": "boolean"}}}),
        ),
        (
            "array with min and max items",
            json!({"type": "array", "minItems": 2, "maxItems": 4,
                   "items": {"type": "integer", "minimum": -50, "maximum": 50}}),
        ),
        (
            "enums",
            json!({"type": "object", "additionalProperties": false, "required": ["color", "size"],
                   "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"enum": [1, 2, 3, "XL"]}}}),
        ),
        (
            "numbers with ranges",
            json!({"type": "object", "additionalProperties": false, "required": ["x", "p", "n"],
                   "properties": {"x": {"type": "number", "minimum": -1.5, "maximum": 2.5, "multipleOf": 0.01},
                                  "p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "multipleOf": 0.001},
                                  "n": {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 20}}}),
        ),
        (
            "string patterns and lengths",
            json!({"type": "object", "additionalProperties": false, "required": ["code", "nick", "date"],
                   "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
                                  "nick": {"type": "string", "minLength": 2, "maxLength": 6},
                                  "date": {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]$"}}}),
        ),
        (
            "required and optional properties",
            json!({"type": "object", "additionalProperties": false, "required": ["a"],
                   "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                  "b": {"type": "string", "maxLength": 4},
                                  "c": {"type": "boolean"},
                                  "d": {"type": "null"}}}),
        ),
        (
            "$ref to definitions",
            json!({"$defs": {"point": {"type": "object", "additionalProperties": false, "required": ["x", "y"],
                                       "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                                      "y": {"type": "integer", "minimum": -9, "maximum": 9}}}},
                   "type": "object", "additionalProperties": false, "required": ["from", "to"],
                   "properties": {"from": {"$ref": "#/$defs/point"}, "to": {"$ref": "#/$defs/point"}}}),
        ),
        (
            "array of objects",
            json!({"type": "array", "minItems": 1, "maxItems": 3,
                   "items": {"type": "object", "additionalProperties": false, "required": ["k", "v"],
                             "properties": {"k": {"enum": ["a", "b"]}, "v": {"type": "integer", "minimum": 0, "maximum": 99}}}}),
        ),
        (
            "anyOf",
            json!({"anyOf": [{"type": "integer", "minimum": 0, "maximum": 1000},
                             {"type": "string", "maxLength": 5},
                             {"type": "null"}]}),
        ),
        (
            "const and nested arrays",
            json!({"type": "object", "additionalProperties": false, "required": ["version", "matrix"],
                   "properties": {"version": {"const": 2},
                                  "matrix": {"type": "array", "minItems": 1, "maxItems": 2,
                                             "items": {"type": "array", "minItems": 1, "maxItems": 3,
                                                       "items": {"type": "integer", "minimum": 0, "maximum": 9}}}}}),
        ),
    ]
}

/// Sampled runs (temperature 1, no top-k: every allowed token can come), seeds 0..RUNS.
fn runs(model: &Model, format: Format, max_tokens: u32) -> Vec<(String, FinishReason)> {
    let prompt = Prompt::Text("Tell me about it:".into());
    (0..RUNS)
        .map(|seed| {
            let p = SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                repetition_penalty: 1.0,
                seed: Some(seed),
                max_tokens,
                format: Some(format.clone()),
                ..Default::default()
            };
            let out = model.generate(&prompt, &p, &AtomicBool::new(false), |_| {}).unwrap();
            (out.text, out.stats.finish)
        })
        .collect()
}

fn json_schemas_validate(kind: BackendKind) {
    let model = load(FIXTURE, kind);
    for (name, schema) in schemas() {
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut distinct = std::collections::BTreeSet::new();
        for (text, finish) in runs(&model, Format::JsonSchema(schema.to_string()), 256) {
            assert_eq!(finish, FinishReason::Eos, "{name} on {kind}: cut off: {text}");
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} on {kind}: {e}: {text}"));
            if let Err(e) = validator.validate(&value) {
                panic!("{name} on {kind}: {text} does not validate: {e}");
            }
            distinct.insert(text);
        }
        // the outputs come from sampling, not from one forced answer
        assert!(distinct.len() > 5, "{name} on {kind}: only {} distinct outputs", distinct.len());
    }
}

#[test]
fn json_schemas_validate_on_tract() {
    json_schemas_validate(BackendKind::Tract);
}

#[test]
fn json_schemas_validate_on_onnxruntime() {
    json_schemas_validate(BackendKind::Onnxruntime);
}

/// `json`: any value. Unbounded strings may run into `max_tokens` (then the output is
/// incomplete and says so with `length`); every output that ended is one JSON value.
fn any_json(kind: BackendKind) {
    let model = load(FIXTURE, kind);
    let results = runs(&model, Format::Json, 128);
    let ended: Vec<_> = results.iter().filter(|(_, f)| *f == FinishReason::Eos).collect();
    for (text, _) in &ended {
        // JSON's numbers have no range (serde_json's values do): check the syntax only
        serde_json::from_str::<serde::de::IgnoredAny>(text).unwrap_or_else(|e| panic!("{kind}: {e}: {text}"));
    }
    assert!(results.iter().all(|(_, f)| matches!(f, FinishReason::Eos | FinishReason::Length)));
    assert!(ended.len() >= RUNS as usize / 2, "{kind}: only {} of {RUNS} ended", ended.len());
}

#[test]
fn any_json_parses_on_both_backends() {
    any_json(BackendKind::Tract);
    any_json(BackendKind::Onnxruntime);
}

const REGEX: &str = r"(\+[0-9]{1,3} )?[0-9]{3}-[0-9]{4}|[a-z]{2,8}@[a-z]{2,6}\.(com|org|net)";

fn regex_matches(kind: BackendKind) {
    let model = load(FIXTURE, kind);
    let whole = regex::Regex::new(&format!("^(?:{REGEX})$")).unwrap();
    for (text, finish) in runs(&model, Format::Regex(REGEX.into()), 64) {
        assert_eq!(finish, FinishReason::Eos, "{kind}: {text}");
        assert!(whole.is_match(&text), "{kind}: {text:?} does not match");
    }
}

#[test]
fn regex_matches_on_both_backends() {
    regex_matches(BackendKind::Tract);
    regex_matches(BackendKind::Onnxruntime);
}

/// Arithmetic with nested parentheses: not a regular language.
const LARK: &str = r#"
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,3}/
%llguidance {}
"#;

/// A recursive-descent checker of `LARK`'s language: the whole text is one `expr`.
fn is_expression(text: &str) -> bool {
    fn expr(s: &[u8], i: &mut usize, depth: usize) -> bool {
        term(s, i, depth) && {
            while *i < s.len() && (s[*i] == b'+' || s[*i] == b'-') {
                *i += 1;
                if !term(s, i, depth) {
                    return false;
                }
            }
            true
        }
    }
    fn term(s: &[u8], i: &mut usize, depth: usize) -> bool {
        factor(s, i, depth) && {
            while *i < s.len() && (s[*i] == b'*' || s[*i] == b'/') {
                *i += 1;
                if !factor(s, i, depth) {
                    return false;
                }
            }
            true
        }
    }
    fn factor(s: &[u8], i: &mut usize, depth: usize) -> bool {
        if *i < s.len() && s[*i] == b'(' {
            *i += 1;
            let ok = depth < 64 && expr(s, i, depth + 1) && *i < s.len() && s[*i] == b')';
            *i += 1;
            return ok;
        }
        let start = *i;
        while *i < s.len() && s[*i].is_ascii_digit() {
            *i += 1;
        }
        (1..=3).contains(&(*i - start))
    }
    let mut i = 0;
    expr(text.as_bytes(), &mut i, 0) && i == text.len()
}

#[test]
fn the_expression_checker_is_a_real_check() {
    for good in ["1", "12+3", "(1+2)*3", "((4))/5-6", "999*(1-(2+3))"] {
        assert!(is_expression(good), "{good}");
    }
    for bad in ["", "1+", "(1", "1)", "1234", "a", "1 + 2", "()", "1**2"] {
        assert!(!is_expression(bad), "{bad}");
    }
}

fn lark_parses(kind: BackendKind) {
    let model = load(FIXTURE, kind);
    let mut ended = 0;
    for (text, finish) in runs(&model, Format::Lark(LARK.into()), 96) {
        // a random model can nest and chain without end: a cut-off is still a prefix, never
        // a wrong character, and most runs end
        if finish == FinishReason::Eos {
            assert!(is_expression(&text), "{kind}: {text:?} is not an expression");
            ended += 1;
        } else {
            assert_eq!(finish, FinishReason::Length, "{kind}: {text}");
            assert!(text.bytes().all(|b| b"0123456789+-*/()".contains(&b)), "{kind}: {text:?}");
        }
    }
    assert!(ended >= RUNS as usize / 2, "{kind}: only {ended} of {RUNS} ended");
}

#[test]
fn lark_grammar_parses_on_both_backends() {
    lark_parses(BackendKind::Tract);
    lark_parses(BackendKind::Onnxruntime);
}

#[test]
fn forced_text_is_fed_without_sampling_and_a_finished_grammar_ends_the_run() {
    let model = load(FIXTURE, BackendKind::Tract);
    // the grammar allows one text: every token is forced, nothing is sampled
    let lark = Format::Lark(r#"start: "{\"answer\": 42}""#.into());
    let p = SamplingParams { format: Some(lark), ..SamplingParams::greedy(50) };
    let out = model.generate(&Prompt::Text("Q:".into()), &p, &AtomicBool::new(false), |_| {}).unwrap();
    assert_eq!(out.text, r#"{"answer": 42}"#);
    assert_eq!(out.stats.finish, FinishReason::Eos);
    // a budget shorter than the text: incomplete, and `length` says so
    let p = SamplingParams { max_tokens: 3, ..p };
    let out = model.generate(&Prompt::Text("Q:".into()), &p, &AtomicBool::new(false), |_| {}).unwrap();
    assert_eq!(out.stats.finish, FinishReason::Length);
    assert_eq!(out.stats.generated_tokens, 3);
    assert!(r#"{"answer": 42}"#.starts_with(&out.text), "{}", out.text);
}

#[test]
fn compiled_grammars_are_cached_per_model() {
    let model = load(FIXTURE, BackendKind::Tract);
    let f = Format::Regex("[0-9]{4}".into());
    let p = SamplingParams { format: Some(f), ..SamplingParams::greedy(8) };
    for _ in 0..3 {
        let out = model.generate(&Prompt::Text("Year:".into()), &p, &AtomicBool::new(false), |_| {}).unwrap();
        assert_eq!(out.text.len(), 4, "{}", out.text);
    }
    assert_eq!(model.grammars().unwrap().cached(), 1);
}

mod bus {
    //! The formats over D-Bus: `Generate`, `Chat` and `Session.Chat` take them, `llamactl`
    //! passes them, and every bad one fails the call with `InvalidArgs` naming the option.
    use std::collections::HashMap;

    use super::common::bus::Daemon;
    use super::common::client::*;
    use llamad_api::{Error, SessionProxy};
    use zbus::zvariant::Value;

    const SCHEMA: &str = r#"{"type": "object", "additionalProperties": false, "required": ["n", "ok"],
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "ok": {"type": "boolean"}}}"#;

    fn opts(extra: &[(&'static str, Value<'static>)]) -> HashMap<&'static str, Value<'static>> {
        let mut o = request_opts(5, 48);
        o.extend(extra.iter().cloned());
        o
    }

    fn valid(text: &str) -> bool {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        serde_json::from_str(text).is_ok_and(|v| jsonschema::is_valid(&schema, &v))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn generate_chat_and_session_chat_follow_their_format() {
        let d = Daemon::start("").await;
        let (conn, proxy) = d.proxy().await;
        let (text, stats, _) =
            stream(&conn, &proxy, "tiny", PROMPT, opts(&[("json_schema", SCHEMA.into())])).await.unwrap();
        assert!(valid(&text), "Generate: {text}");
        assert_eq!(stats.finish_reason, "eos");

        let mut signals = manager_signals(&conn).await;
        let id = proxy
            .chat(
                "tiny",
                &[("user".into(), "Your phone number?".into())],
                opts(&[("regex", "[0-9]{3}-[0-9]{4}".into())]),
            )
            .await
            .unwrap();
        let (text, _, _) = collect(&mut signals, id).await;
        assert!(regex::Regex::new("^[0-9]{3}-[0-9]{4}$").unwrap().is_match(&text), "Chat: {text}");

        let path = proxy.open_session("tiny", HashMap::new()).await.unwrap();
        let session = SessionProxy::builder(&conn).path(path).unwrap().build().await.unwrap();
        let msg = HashMap::from([("role", Value::from("user")), ("content", Value::from("Yes or no?"))]);
        let id = session.chat(&[msg], opts(&[("lark", r#"start: "yes" | "no""#.into())])).await.unwrap();
        let (text, _, _) = collect(&mut signals, id).await;
        assert!(text == "yes" || text == "no", "Session.Chat: {text}");

        let id = proxy.generate("tiny", PROMPT, opts(&[("json", true.into())])).await.unwrap();
        let (text, stats, _) = collect(&mut signals, id).await;
        if stats.finish_reason == "eos" {
            serde_json::from_str::<serde::de::IgnoredAny>(&text).unwrap_or_else(|e| panic!("json: {e}: {text}"));
        }

        // llamactl reads the schema from a file
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("schema.json");
        std::fs::write(&file, SCHEMA).unwrap();
        let out = d
            .llamactl()
            .args(["run", "tiny", PROMPT, "--max-tokens", "48", "--json-schema", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(valid(text.trim_end()), "llamactl: {text}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_formats_fail_the_call_with_invalid_args_naming_the_option() {
        let d = Daemon::start("").await;
        let (_conn, proxy) = d.proxy().await;
        let big = format!(r#"{{"description": "{}"}}"#, "x".repeat(70_000));
        let cases: Vec<(Vec<(&'static str, Value<'static>)>, &str)> = vec![
            (vec![("json_schema", "{not json".into())], "json_schema"),
            (vec![("json_schema", r#"{"type": "integer", "minimum": 5, "maximum": 1}"#.into())], "json_schema"),
            (vec![("json_schema", r##"{"$ref": "#/$defs/missing"}"##.into())], "json_schema"),
            (vec![("json_schema", big.into())], "json_schema"),
            (vec![("regex", "(unclosed".into())], "regex"),
            (vec![("lark", "start: missing_rule".into())], "lark"),
            (vec![("lark", "start: (".into())], "lark"),
            (vec![("json", "yes".into())], "json"),
            (vec![("regex", 7u32.into())], "regex"),
            (vec![("json", true.into()), ("regex", "a".into())], "at most one format"),
        ];
        for (extra, want) in cases {
            let what = format!("{extra:?}");
            match proxy.generate("tiny", PROMPT, opts(&extra)).await.map_err(Error::from) {
                Err(Error::InvalidArgs(m)) => assert!(m.contains(want), "{what}: {m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        // nothing was queued: the daemon is idle and answers as before
        let (text, _, _) = stream(&_conn, &proxy, "tiny", PROMPT, opts(&[("regex", "ok".into())])).await.unwrap();
        assert_eq!(text, "ok");
    }
}
