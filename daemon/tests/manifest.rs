//! Verified models on a real daemon: a directory with a manifest (written by
//! `llamad manifest`) loads while its files are as listed; a changed file is
//! refused naming it, at load and by `llamactl verify`; `require_manifest`
//! refuses directories without one.

mod common;

use std::collections::HashMap;

use common::bus::{Daemon, target_command};
use common::client::loaded_now;
use common::copy_fixture;

const TINY: &str = "tiny-llama2-optimum-fp32";

fn write_manifest(dir: &std::path::Path) {
    let out = target_command("llamad").arg("manifest").arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("llamad-manifest.json").exists());
}

/// A copy of the tiny model with its manifest, offered as `signed` by a daemon with `config`.
async fn signed_daemon(config: &str) -> (tempfile::TempDir, Daemon) {
    let signed = copy_fixture(TINY);
    write_manifest(signed.path());
    let d = Daemon::start_with(config, &[("signed", signed.path())]).await;
    (signed, d)
}

/// Changes one byte of `file` without changing its size.
fn tamper(file: &std::path::Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let i = bytes.iter().position(|b| b.is_ascii_lowercase()).unwrap();
    bytes[i] = bytes[i].to_ascii_uppercase();
    std::fs::write(file, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_loads_only_as_its_manifest_lists_it() {
    let (signed, d) = signed_daemon("").await;
    let (_conn, proxy) = d.proxy().await;
    proxy.load_model("signed", HashMap::new()).await.unwrap();
    assert!(d.log().contains("manifest verified"), "{}", d.log());
    let out = d.llamactl().args(["verify", "signed"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("all as the manifest lists them"), "{text}");
    proxy.unload_model("signed").await.unwrap();

    // one byte of the tokenizer, same size: refused at load and by verify, naming the file
    tamper(&signed.path().join("tokenizer.json"));
    let e = proxy.load_model("signed", HashMap::new()).await.unwrap_err().to_string();
    assert!(e.contains("ModelLoadFailed") && e.contains("tokenizer.json: changed (sha256"), "{e}");
    assert!(loaded_now(&proxy).await.is_empty());
    let out = d.llamactl().args(["verify", "signed"]).output().unwrap();
    assert_eq!(out.status.code(), Some(8), "model failed to load: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenizer.json: changed"));
    // a file added beside the listed ones is refused too
    write_manifest(signed.path());
    std::fs::write(signed.path().join("chat_template.jinja"), "{{ messages }}").unwrap();
    let e = proxy.load_model("signed", HashMap::new()).await.unwrap_err().to_string();
    assert!(e.contains("chat_template.jinja: not in llamad-manifest.json"), "{e}");
    // generating loads through the same check
    let e = common::client::stream(&_conn, &proxy, "signed", "Once", common::client::request_opts(1, 4)).await;
    assert!(e.unwrap_err().to_string().contains("chat_template.jinja"));
    // a model without a manifest needs none, unless required
    let out = d.llamactl().args(["verify", "tiny"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no manifest"));
    proxy.load_model("tiny", HashMap::new()).await.unwrap();
    // bad names are typed errors
    let e = proxy.verify_model("../etc").await.unwrap_err().to_string();
    assert!(e.contains("InvalidArgs") && e.contains("model name"), "{e}");
    let e = proxy.verify_model("no-such-model").await.unwrap_err().to_string();
    assert!(e.contains("UnknownModel"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn require_manifest_refuses_directories_without_one() {
    let (_signed, d) = signed_daemon("require_manifest = true").await;
    let (_conn, proxy) = d.proxy().await;
    let e = proxy.load_model("tiny", HashMap::new()).await.unwrap_err().to_string();
    assert!(e.contains("no llamad-manifest.json, and require_manifest is set"), "{e}");
    proxy.load_model("signed", HashMap::new()).await.unwrap();
    assert_eq!(loaded_now(&proxy).await, vec!["signed".to_string()]);
}
