//! Tool calls on the tiny random-weight Llama, constrained (the model knows
//! nothing, so every call is the grammar's doing): the built-in Hermes-style
//! format (the fixture has no chat template) and Llama 3's JSON calls (through a
//! Llama-3-style template written here), `tool_choice` auto, none, required and
//! named, calls whose names are offered and whose arguments validate, and a
//! follow-up turn with the tool's result; then the same over D-Bus with the
//! `ToolCall` signal, and each bad input's typed error.

mod common;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use common::*;
use llamad::engine::chat::{Message, Role};
use llamad::engine::tools::{ToolCall, Tools};
use llamad::engine::{BackendKind, FinishReason, Model, Output, Prompt, SamplingParams};

const TOOLS: &str = r#"[
  {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
   "parameters": {"type": "object", "additionalProperties": false, "required": ["city"],
                  "properties": {"city": {"type": "string", "maxLength": 12},
                                 "unit": {"enum": ["celsius", "fahrenheit"]}}}}},
  {"type": "function", "function": {"name": "add", "description": "Adds two integers",
   "parameters": {"type": "object", "additionalProperties": false, "required": ["a", "b"],
                  "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                                 "b": {"type": "integer", "minimum": -99, "maximum": 99}}}}}
]"#;

/// A Llama-3.1-style template (tools listed in the first user message, calls as one JSON
/// object, results in the `ipython` role, `<|eot_id|>` after each turn).
const LLAMA3_TEMPLATE: &str = r#"{{- bos_token }}
{%- for m in messages %}
{%- if m.role == 'tool' %}{% set role = 'ipython' %}{% else %}{% set role = m.role %}{% endif %}
{{- '<|start_header_id|>' + role + '<|end_header_id|>\n\n' }}
{%- if loop.index0 == 0 and tools %}
{{- 'Call a function by answering {"name": function name, "parameters": arguments}. Functions:\n' }}
{%- for t in tools %}{{ t | tojson }}{{ '\n' }}{% endfor %}
{%- endif %}
{%- if m.tool_calls %}
{{- {"name": m.tool_calls[0].function.name, "parameters": m.tool_calls[0].function.arguments} | tojson }}
{%- else %}{{ m.content }}{% endif %}
{{- '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"#;

const RUNS: u64 = 20;

fn schemas() -> std::collections::HashMap<String, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(TOOLS).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| (t["function"]["name"].as_str().unwrap().to_string(), t["function"]["parameters"].clone()))
        .collect()
}

/// The tiny fixture holding 1,024 tokens (a prompt listing tools is longer than its 256),
/// with `template` as its chat template.
fn tiny_copy(template: Option<&str>) -> tempfile::TempDir {
    let tmp = with_context("tiny-llama2-optimum-fp32", 1024);
    if let Some(t) = template {
        std::fs::write(tmp.path().join("chat_template.jinja"), t).unwrap();
    }
    tmp
}

fn load_dir(dir: &Path, kind: BackendKind) -> Model {
    Model::load(dir, kind, &opts(kind), true).unwrap()
}

fn ask(model: &Model, messages: Vec<Message>, tools: &Tools, seed: u64) -> Output {
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        repetition_penalty: 1.0,
        seed: Some(seed),
        max_tokens: 96,
        tools: Some(tools.clone()),
        ..Default::default()
    };
    let prompt = Prompt::ChatTools(messages, tools.clone());
    model.generate(&prompt, &p, &AtomicBool::new(false), |_| {}).unwrap()
}

fn user(text: &str) -> Vec<Message> {
    vec![Message::new(Role::User, text)]
}

/// Every call names an offered tool (`only`, when given) and its arguments validate.
fn check_calls(calls: &[ToolCall], only: Option<&str>, what: &str) {
    let schemas = schemas();
    assert!(!calls.is_empty(), "{what}: no call");
    for c in calls {
        let schema = schemas.get(&c.name).unwrap_or_else(|| panic!("{what}: {} was not offered", c.name));
        if let Some(n) = only {
            assert_eq!(c.name, n, "{what}");
        }
        let args: serde_json::Value = serde_json::from_str(&c.arguments).unwrap();
        assert!(jsonschema::is_valid(schema, &args), "{what}: {} {}", c.name, c.arguments);
        assert!(c.id.starts_with("call_"), "{what}: id {}", c.id);
    }
}

/// `required` and a named tool always call, validly; `none` never does; `auto` gives text
/// or valid calls. For one model (one dialect).
fn choices(model: &Model, what: &str) {
    for (choice, only) in [("required", None), ("add", Some("add")), ("get_weather", Some("get_weather"))] {
        let tools = Tools::parse(TOOLS, Some(choice)).unwrap();
        for seed in 0..RUNS {
            let out = ask(model, user("What is the weather in Paris?"), &tools, seed);
            assert_eq!(out.stats.finish, FinishReason::ToolCalls, "{what} {choice} seed {seed}: {}", out.text);
            check_calls(&out.tool_calls, only, &format!("{what} {choice} seed {seed}"));
        }
    }
    let none = Tools::parse(TOOLS, Some("none")).unwrap();
    let auto = Tools::parse(TOOLS, None).unwrap();
    let mut auto_calls = 0;
    for seed in 0..RUNS / 2 {
        let out = ask(model, user("Hello"), &none, seed);
        assert!(out.tool_calls.is_empty(), "{what} none: {:?}", out.tool_calls);
        assert_ne!(out.stats.finish, FinishReason::ToolCalls);
        let out = ask(model, user("Hello"), &auto, seed);
        if !out.tool_calls.is_empty() {
            check_calls(&out.tool_calls, None, &format!("{what} auto seed {seed}"));
            auto_calls += 1;
        }
    }
    eprintln!("{what}: auto called a tool in {auto_calls} of {} runs", RUNS / 2);
}

#[test]
fn builtin_hermes_format_calls_validly_on_both_backends() {
    let dir = tiny_copy(None);
    for kind in [BackendKind::Tract, BackendKind::Onnxruntime] {
        let model = load_dir(dir.path(), kind);
        choices(&model, &format!("built-in on {kind}"));
    }
}

#[test]
fn llama3_json_calls_through_a_template_validate() {
    let dir = tiny_copy(Some(LLAMA3_TEMPLATE));
    for kind in [BackendKind::Tract, BackendKind::Onnxruntime] {
        choices(&load_dir(dir.path(), kind), &format!("llama3 on {kind}"));
    }
}

/// After a call, the app sends the result as a `tool` message: the prompt renders it (the
/// built-in format as a `<tool_response>`, Llama 3's in the `ipython` role) and the model
/// answers.
#[test]
fn a_follow_up_turn_with_the_tools_result_renders_and_generates() {
    let (plain, dir) = (tiny_copy(None), tiny_copy(Some(LLAMA3_TEMPLATE)));
    let builtin = load_dir(plain.path(), BackendKind::Tract);
    let llama3 = load_dir(dir.path(), BackendKind::Tract);
    for (model, marker) in [(&builtin, "<tool_response>"), (&llama3, "ipython")] {
        let tools = Tools::parse(TOOLS, Some("required")).unwrap();
        let first = ask(model, user("Weather in Paris?"), &tools, 1);
        let mut answer = Message::new(Role::Assistant, first.text.clone());
        answer.tool_calls = first.tool_calls.clone();
        let result = Message {
            tool_call_id: Some(first.tool_calls[0].id.clone()),
            name: Some(first.tool_calls[0].name.clone()),
            ..Message::new(Role::Tool, "18 degrees and sunny")
        };
        let conversation = [user("Weather in Paris?"), vec![answer, result]].concat();
        let auto = Tools::parse(TOOLS, Some("none")).unwrap();
        let ids = model.prompt_ids(&Prompt::ChatTools(conversation.clone(), auto.clone())).unwrap();
        let text = model.tokenizer.as_ref().unwrap().decode(&ids).unwrap();
        assert!(text.contains(marker) && text.contains("18 degrees and sunny"), "{text}");
        let out = ask(model, conversation, &auto, 2);
        assert!(out.stats.generated_tokens > 0 && out.tool_calls.is_empty());
    }
}

mod bus {
    use std::collections::HashMap;

    use super::common::bus::Daemon;
    use super::common::client::*;
    use super::{TOOLS, check_calls};
    use futures_util::StreamExt;
    use llamad::engine::tools::ToolCall;
    use llamad_api::{Error, FinishStats, SessionProxy};
    use zbus::zvariant::Value;

    fn msg(role: &str, content: &str) -> HashMap<&'static str, Value<'static>> {
        HashMap::from([("role", Value::from(role.to_string())), ("content", Value::from(content.to_string()))])
    }

    fn opts(extra: &[(&'static str, Value<'static>)]) -> HashMap<&'static str, Value<'static>> {
        let mut o = request_opts(3, 64);
        o.extend(extra.iter().cloned());
        o
    }

    /// The calls (`ToolCall` signals) and the final stats of request `id`.
    async fn calls(signals: &mut zbus::MessageStream, id: u64) -> (Vec<ToolCall>, String, FinishStats) {
        let (mut calls, mut text) = (vec![], String::new());
        while let Some(m) = signals.next().await {
            let m = m.unwrap();
            match m.header().member().map(|m| m.as_str()) {
                Some("Token") => text.push_str(&m.body().deserialize::<(u64, String)>().unwrap().1),
                Some("ToolCall") => {
                    let (rid, call_id, name, arguments): (u64, String, String, String) =
                        m.body().deserialize().unwrap();
                    assert_eq!(rid, id, "another request's call reached this client");
                    calls.push(ToolCall { id: call_id, name, arguments });
                }
                Some("Finished") => {
                    let (rid, stats): (u64, FinishStats) = m.body().deserialize().unwrap();
                    if rid == id {
                        return (calls, text, stats);
                    }
                }
                _ => {}
            }
        }
        panic!("stream ended")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn chat_messages_and_session_chat_call_tools_and_take_the_results() {
        let dir = super::tiny_copy(None);
        let d = Daemon::start_with("", &[("tiny1k", dir.path())]).await;
        let (conn, proxy) = d.proxy().await;
        let mut signals = manager_signals(&conn).await;
        let o = opts(&[("tools", TOOLS.into()), ("tool_choice", "get_weather".into())]);
        let id = proxy.chat_messages("tiny1k", &[msg("user", "What is the weather in Paris?")], o).await.unwrap();
        let (got, text, stats) = calls(&mut signals, id).await;
        assert_eq!(stats.finish_reason, "tool_calls", "{stats:?}");
        assert!(!text.contains("<tool_call>"), "the call's text streamed: {text}");
        check_calls(&got, Some("get_weather"), "ChatMessages");

        // a session: the call joins the conversation, the result goes back in a tool message
        let path = proxy.open_session("tiny1k", HashMap::new()).await.unwrap();
        let s = SessionProxy::builder(&conn).path(path).unwrap().build().await.unwrap();
        let o = opts(&[("tools", TOOLS.into()), ("tool_choice", "required".into())]);
        let id = s.chat(&[msg("user", "Add 2 and 3")], o).await.unwrap();
        let (got, _, stats) = calls(&mut signals, id).await;
        assert_eq!(stats.finish_reason, "tool_calls");
        check_calls(&got, None, "Session.Chat");
        let mut result = msg("tool", "5");
        result.insert("tool_call_id", Value::from(got[0].id.clone()));
        result.insert("name", Value::from(got[0].name.clone()));
        let id = s.chat(&[result], opts(&[("tools", TOOLS.into()), ("tool_choice", "none".into())])).await.unwrap();
        let (got, _, stats) = calls(&mut signals, id).await;
        assert!(got.is_empty() && stats.finish_reason != "tool_calls" && stats.finish_reason != "error", "{stats:?}");
        assert_eq!(s.turns().await.unwrap(), 2);

        // an assistant message carrying calls, through ChatMessages
        let call = HashMap::from([
            ("id", Value::from("call_1")),
            ("name", Value::from("add")),
            ("arguments", Value::from(r#"{"a": 2, "b": 3}"#)),
        ]);
        let assistant =
            HashMap::from([("role", Value::from("assistant")), ("tool_calls", Value::from(vec![Value::from(call)]))]);
        let mut result = msg("tool", "5");
        result.insert("tool_call_id", Value::from("call_1"));
        let id = proxy
            .chat_messages("tiny1k", &[msg("user", "Add 2 and 3"), assistant, result], opts(&[("tools", TOOLS.into())]))
            .await
            .unwrap();
        let (_, _, stats) = calls(&mut signals, id).await;
        assert_ne!(stats.finish_reason, "error", "{stats:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_tools_and_messages_fail_with_invalid_args() {
        let d = Daemon::start("").await;
        let (_conn, proxy) = d.proxy().await;
        let user = || vec![msg("user", "hi")];
        type Wire = HashMap<&'static str, Value<'static>>;
        type Opts = Vec<(&'static str, Value<'static>)>;
        let cases: Vec<(Vec<Wire>, Opts, &str)> = vec![
            (user(), vec![("tools", "{\"name\": \"f\"}".into())], "array"),
            (user(), vec![("tools", "not json".into())], "not JSON"),
            (user(), vec![("tools", r#"[{"type": "function", "function": {}}]"#.into())], "name"),
            (user(), vec![("tools", TOOLS.into()), ("tool_choice", "get_news".into())], "get_news"),
            (user(), vec![("tool_choice", "auto".into())], "no tools"),
            (user(), vec![("tools", r#"[{"name": "f", "parameters": {"type": "bogus"}}]"#.into())], "tools"),
            (user(), vec![("tools", TOOLS.into()), ("json", true.into())], "format"),
            (vec![msg("assistant", "hi")], vec![], "message 0"),
            (vec![msg("user", "hi"), msg("tool", "5")], vec![], "tool"),
            (vec![msg("robot", "hi")], vec![], "robot"),
        ];
        for (messages, extra, want) in cases {
            let what = format!("{messages:?} {extra:?}");
            match proxy.chat_messages("tiny", &messages, opts(&extra)).await.map_err(Error::from) {
                Err(Error::InvalidArgs(m)) => assert!(m.contains(want), "{what}: {m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        // tools are for chats
        match proxy.generate("tiny", PROMPT, opts(&[("tools", TOOLS.into())])).await.map_err(Error::from) {
            Err(Error::InvalidArgs(m)) => assert!(m.contains("only chats"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// A template that rejects a conversation (`raise_exception`) fails the call with
    /// `InvalidArgs` and its message.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_message_sequence_the_template_rejects_is_invalid_args() {
        let dir = super::tiny_copy(Some(
            "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system messages here') }}\
             {% endif %}{{ m.content }}{% endfor %}",
        ));
        let d = Daemon::start_with("", &[("picky", dir.path())]).await;
        let (_conn, proxy) = d.proxy().await;
        let messages = [msg("system", "be nice"), msg("user", "hi")];
        match proxy.chat_messages("picky", &messages, opts(&[])).await.map_err(Error::from) {
            Err(Error::InvalidArgs(m)) => assert!(m.contains("no system messages here"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// The docs' Python client (jeepney, no llamad code) and `llamactl chat --tools`: a
    /// call, its result sent back, an answer.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_python_client_and_llamactl_run_the_tool_loop() {
        let dir = super::tiny_copy(None);
        let d = Daemon::start_with("", &[("tiny1k", dir.path())]).await;
        let out = std::process::Command::new("/usr/bin/python3")
            .arg(super::repo().join("tests/clients/tool_chat.py"))
            .args([d.address.as_str(), "tiny1k", TOOLS, "get_weather", "Weather in Paris?", "18 C"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<serde_json::Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["finish_reason"], "tool_calls");
        assert_eq!(lines[0]["calls"][0]["name"], "get_weather");
        assert!(lines[1]["calls"].as_array().unwrap().is_empty() || lines[1]["finish_reason"] == "tool_calls");

        let tools = dir.path().join("tools.json");
        std::fs::write(&tools, TOOLS).unwrap();
        let mut child = d
            .llamactl()
            .args(["chat", "tiny1k", "--max-tokens", "48", "--temperature", "0", "--tool-choice", "add"])
            .args(["--tools", tools.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"Add 2 and 3\n5\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("[tool call call_") && text.contains("] add({"), "{text}");
    }
}
