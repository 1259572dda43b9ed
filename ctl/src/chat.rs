//! `llamactl chat` (a session that keeps the conversation's KV cache, or with
//! `--stateless` the whole history sent each turn; with `--tools`, each call the
//! model makes is printed and its result asked for) and `llamactl sessions`.

use std::collections::HashMap;
use std::io::BufRead;

use llamad_api::{ManagerProxy, SessionProxy};
use zbus::zvariant::{OwnedValue, Value};

use crate::stream::{finish_code, json_stats, options, stream};
use crate::{Failure, Sampling};

fn message(role: &str, content: &str) -> HashMap<&'static str, Value<'static>> {
    HashMap::from([("role", Value::from(role.to_string())), ("content", Value::from(content.to_string()))])
}

/// Reads one user turn from stdin; `None` at an empty line or the end of input.
fn read_turn(interactive: bool) -> Result<Option<String>, Failure> {
    if interactive {
        eprint!(">>> ");
    }
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(line.trim_end().to_string()))
}

fn print_answer(text: &str, stats: &llamad_api::FinishStats, json: bool) {
    if json {
        println!("{}", serde_json::json!({"text": text, "stats": json_stats(stats)}));
    } else {
        println!();
    }
}

/// The result of each call, asked for on stdin, as `tool` messages.
fn tool_results(calls: &[(String, String, String)], interactive: bool) -> Result<Vec<Msg>, Failure> {
    let mut out = vec![];
    for (id, name, arguments) in calls {
        println!("[tool call {id}] {name}({arguments})");
        if interactive {
            eprint!("result of {name}> ");
        }
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let mut m = message("tool", line.trim_end());
        m.insert("tool_call_id", Value::from(id.clone()));
        m.insert("name", Value::from(name.clone()));
        out.push(m);
    }
    Ok(out)
}

type Msg = HashMap<&'static str, Value<'static>>;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn chat(
    conn: &zbus::Connection,
    proxy: &ManagerProxy<'_>,
    model: &str,
    system: Option<&str>,
    sampling: &Sampling,
    stateless: bool,
    tools: Option<(&str, Option<&str>)>,
    json: bool,
) -> Result<(), Failure> {
    let interactive = !json && std::io::IsTerminal::is_terminal(&std::io::stdin());
    if stateless {
        let mut history: Vec<(String, String)> = system.map(|s| ("system".into(), s.into())).into_iter().collect();
        while let Some(line) = read_turn(interactive)? {
            history.push(("user".into(), line));
            let (opts, messages) = (options(sampling), history.clone());
            let out = stream(conn, proxy, || proxy.chat(model, &messages, opts), !json).await?;
            print_answer(&out.text, &out.stats, json);
            finish_code(&out.stats)?;
            history.push(("assistant".into(), out.text));
        }
        return Ok(());
    }
    let path = proxy.open_session(model, HashMap::new()).await?;
    let session = SessionProxy::builder(conn).path(path)?.build().await?;
    let mut first = system.map(|s| message("system", s));
    let result = async {
        while let Some(line) = read_turn(interactive)? {
            let mut messages: Vec<_> = first.take().into_iter().chain([message("user", &line)]).collect();
            // a turn ends with an answer; each round of calls gets its results back first, and
            // after the first round the model chooses (a `required` choice would call forever)
            let mut choice = tools.and_then(|t| t.1);
            loop {
                let mut opts = options(sampling);
                if let Some((list, _)) = tools {
                    opts.insert("tools", Value::from(list.to_string()));
                    if let Some(c) = choice.take() {
                        opts.insert("tool_choice", Value::from(c.to_string()));
                    }
                }
                let out = stream(conn, proxy, || session.chat(&messages, opts), !json).await?;
                print_answer(&out.text, &out.stats, json);
                finish_code(&out.stats)?;
                if out.tool_calls.is_empty() {
                    break;
                }
                messages = tool_results(&out.tool_calls, interactive)?;
            }
        }
        Ok(())
    }
    .await;
    let _ = session.close().await;
    result
}

pub(crate) fn get<T: TryFrom<OwnedValue>>(m: &HashMap<String, OwnedValue>, key: &str) -> Option<T> {
    m.get(key).and_then(|v| T::try_from(v.clone()).ok())
}

pub(crate) async fn sessions(proxy: &ManagerProxy<'_>, json: bool) -> Result<(), Failure> {
    let list = proxy.list_sessions().await?;
    let rows: Vec<serde_json::Value> = list
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": get::<u64>(s, "id"), "owner": get::<String>(s, "owner"), "model": get::<String>(s, "model"),
                "tokens": get::<u32>(s, "tokens"), "kv_bytes": get::<u64>(s, "kv_bytes"),
                "turns": get::<u32>(s, "turns"), "idle_seconds": get::<u64>(s, "idle_seconds"),
                "busy": get::<bool>(s, "busy"),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!("{:>4} {:<12} {:<24} {:>7} {:>9} {:>6} {:>6}", "ID", "OWNER", "MODEL", "TOKENS", "KV", "TURNS", "IDLE");
    for r in &rows {
        let kv = r["kv_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0;
        let idle = if r["busy"].as_bool() == Some(true) {
            "busy".to_string()
        } else {
            format!("{}s", r["idle_seconds"].as_u64().unwrap_or(0))
        };
        println!(
            "{:>4} {:<12} {:<24} {:>7} {:>8.1}M {:>6} {:>6}",
            r["id"].as_u64().unwrap_or(0),
            r["owner"].as_str().unwrap_or("-"),
            r["model"].as_str().unwrap_or("-"),
            r["tokens"].as_u64().unwrap_or(0),
            kv,
            r["turns"].as_u64().unwrap_or(0),
            idle
        );
    }
    Ok(())
}
