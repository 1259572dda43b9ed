//! Broken model directories and bad requests get clear, typed errors.

mod common;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use common::*;
use llamad::engine::{
    BackendKind, GenerateError, LayoutError, LoadError, Model, Prompt, SamplingParams, TokenizerError,
};

fn load(dir: &Path, kind: BackendKind, require_tokenizer: bool) -> Result<Model, LoadError> {
    Model::load(dir, kind, &opts(kind), require_tokenizer)
}

#[test]
fn a_directory_that_is_no_model_names_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let e = load(tmp.path(), BackendKind::Tract, false).err().unwrap();
    let msg = e.to_string();
    assert!(matches!(e, LoadError::Layout(LayoutError::Missing { .. })), "{msg}");
    assert!(msg.contains("genai_config.json") && msg.contains("config.json"), "{msg}");

    let e = load(&tmp.path().join("nope"), BackendKind::Tract, false).err().unwrap();
    assert!(e.to_string().contains("no such directory"), "{e}");
}

#[test]
fn missing_model_onnx() {
    let d = copy_fixture("stories260k-optimum-fp32");
    std::fs::remove_file(d.path().join("model.onnx")).unwrap();
    let e = load(d.path(), BackendKind::Tract, false).err().unwrap();
    assert!(matches!(e, LoadError::Layout(LayoutError::Missing { .. })), "{e}");
    assert!(e.to_string().contains("model.onnx"), "{e}");
}

#[test]
fn truncated_and_corrupt_model_onnx() {
    for (what, mutate) in [
        ("truncated", Box::new(|b: &mut Vec<u8>| b.truncate(b.len() / 2)) as Box<dyn Fn(&mut Vec<u8>)>),
        ("garbage", Box::new(|b: &mut Vec<u8>| b.iter_mut().step_by(7).for_each(|x| *x = 0xff))),
        ("empty", Box::new(|b: &mut Vec<u8>| b.clear())),
    ] {
        let d = copy_fixture("stories260k-optimum-fp32");
        let p = d.path().join("model.onnx");
        let mut bytes = std::fs::read(&p).unwrap();
        mutate(&mut bytes);
        std::fs::write(&p, &bytes).unwrap();
        for kind in [BackendKind::Tract, BackendKind::Onnxruntime] {
            let e = load(d.path(), kind, false).err().unwrap_or_else(|| panic!("{what} model.onnx loaded on {kind}"));
            assert!(matches!(e, LoadError::Layout(LayoutError::BadGraph { .. })), "{what} on {kind}: {e}");
            assert!(e.to_string().contains("model.onnx"), "{e}");
        }
    }
}

#[test]
fn truncated_external_data() {
    let d = copy_fixture("tiny-llama2-genai-fp32");
    let p = d.path().join("model.onnx.data");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len / 3).unwrap();
    let e = load(d.path(), BackendKind::Onnxruntime, true).err().unwrap();
    assert!(e.to_string().contains("truncated"), "{e}");
}

/// External data must be a file beside the graph: a location that climbs out of the model
/// directory, or names an absolute path, is refused before any backend would read it.
#[test]
fn external_data_outside_the_model_directory_is_refused() {
    use prost::Message;
    use tract_onnx::pb;
    for location in ["../model.onnx.data", "/etc/passwd", "sub/../../x", ""] {
        let d = copy_fixture("tiny-llama2-genai-fp32");
        let p = d.path().join("model.onnx");
        let mut model = pb::ModelProto::decode(std::fs::read(&p).unwrap().as_slice()).unwrap();
        let graph = model.graph.as_mut().unwrap();
        let t = graph.initializer.iter_mut().find(|t| t.data_location == Some(1)).expect("external weights");
        t.external_data.iter_mut().find(|e| e.key == "location").unwrap().value = location.to_string();
        std::fs::write(&p, model.encode_to_vec()).unwrap();
        for kind in [BackendKind::Tract, BackendKind::Onnxruntime] {
            let e = load(d.path(), kind, false).err().unwrap_or_else(|| panic!("{location:?} loaded on {kind}"));
            assert!(matches!(e, LoadError::Layout(LayoutError::BadGraph { .. })), "{location:?}: {e}");
            assert!(e.to_string().contains("is not a file beside the graph"), "{e}");
        }
    }
}

/// Configs are untrusted too: a graph file named outside the directory, sizes no model has
/// (which would size per-layer names and caches without bound) and oversized files are
/// refused, naming the file and the field.
#[test]
fn hostile_configs_are_refused_by_name() {
    let cases = [
        ("\"filename\": \"model.onnx\"", "\"filename\": \"../tiny/model.onnx\"", "not a file name"),
        ("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 4000000000", "num_hidden_layers"),
        ("\"context_length\": 256", "\"context_length\": 0", "context length = 0"),
        ("\"eos_token_id\": 2", "\"eos_token_id\": 70000", "outside the vocabulary"),
    ];
    for (from, to, why) in cases {
        let d = copy_fixture("tiny-llama2-genai-fp32");
        let p = d.path().join("genai_config.json");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&p, text.replace(from, to)).unwrap();
        let e = load(d.path(), BackendKind::Onnxruntime, false).err().unwrap();
        assert!(matches!(e, LoadError::Layout(LayoutError::BadConfig { .. })), "{to}: {e}");
        assert!(e.to_string().contains("genai_config.json") && e.to_string().contains(why), "{to}: {e}");
    }
    let d = copy_fixture("tiny-llama2-optimum-fp32");
    let p = d.path().join("config.json");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(&" ".repeat(5 << 20));
    std::fs::write(&p, text).unwrap();
    let e = load(d.path(), BackendKind::Tract, false).err().unwrap();
    assert!(e.to_string().contains("config.json") && e.to_string().contains("larger than any such file"), "{e}");
    // a tokenizer claiming far more than any vocabulary needs is not read (a sparse file)
    let d = copy_fixture("tiny-llama2-optimum-fp32");
    let f = std::fs::OpenOptions::new().write(true).open(d.path().join("tokenizer.json")).unwrap();
    f.set_len(129 << 20).unwrap();
    let e = load(d.path(), BackendKind::Tract, true).err().unwrap();
    assert!(matches!(e, LoadError::Tokenizer(TokenizerError::Bad { .. })), "{e}");
    assert!(e.to_string().contains("tokenizer.json") && e.to_string().contains("larger than any such file"), "{e}");
}

/// tokenizer.json files on which the tokenizers library panics (found by fuzzing: an unwrap
/// in its decoders' deserialization; a template post-processor naming a special token it
/// lacks, which panics on every encode) fail to load with an error naming the file.
#[test]
fn a_tokenizer_the_library_panics_on_is_an_error() {
    for (crash, what) in [
        ("crash-b3e7578b582724cb9a32a20e6f0214a3c9fa5310", "reading this file"),
        ("crash-f1a4c7ae8560b0954b6530745c5a68d473ce6b44", "cannot encode text"),
    ] {
        let d = copy_fixture("tiny-llama2-optimum-fp32");
        std::fs::copy(repo().join("fuzz/artifacts/tokenizer").join(crash), d.path().join("tokenizer.json")).unwrap();
        let e = load(d.path(), BackendKind::Tract, true).err().unwrap();
        assert!(matches!(e, LoadError::Tokenizer(TokenizerError::Bad { .. })), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("tokenizer.json") && msg.contains(what) && msg.contains("panicked"), "{msg}");
    }
}

#[test]
fn missing_tokenizer() {
    let d = copy_fixture("tiny-llama2-optimum-fp32");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    let e = load(d.path(), BackendKind::Tract, true).err().unwrap();
    assert!(matches!(e, LoadError::Tokenizer(TokenizerError::Missing(_))), "{e}");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    // Loaded for token ids only, a text prompt is refused by name.
    let m = load(d.path(), BackendKind::Tract, false).unwrap();
    let e = m
        .generate(&Prompt::Text("hi".into()), &SamplingParams::greedy(2), &AtomicBool::new(false), |_| {})
        .unwrap_err();
    assert!(matches!(e, GenerateError::NoTokenizer), "{e}");
}

#[test]
fn tokenizer_of_another_model() {
    // stories260K has 512 ids; the Llama 2 tokenizer has 32000.
    let d = copy_fixture("stories260k-optimum-fp32");
    std::fs::copy(fixture("tokenizers/llama2/tokenizer.json"), d.path().join("tokenizer.json")).unwrap();
    let e = load(d.path(), BackendKind::Tract, true).err().unwrap();
    match e {
        LoadError::Tokenizer(TokenizerError::VocabMismatch { tokenizer, model }) => {
            assert_eq!((tokenizer, model), (32000, 512));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn broken_config_json() {
    let d = copy_fixture("stories260k-optimum-fp32");
    std::fs::write(d.path().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    let e = load(d.path(), BackendKind::Tract, false).err().unwrap();
    assert!(matches!(e, LoadError::Layout(LayoutError::BadConfig { .. })), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn prompt_longer_than_the_context_is_refused_not_truncated() {
    let m = load(&fixture("stories260k-optimum-fp32"), BackendKind::Tract, false).unwrap();
    let ids = vec![1u32; 600];
    let e = m.generate(&Prompt::Tokens(ids), &SamplingParams::greedy(4), &AtomicBool::new(false), |_| {}).unwrap_err();
    match e {
        GenerateError::ContextOverflow { prompt_tokens, context } => assert_eq!((prompt_tokens, context), (600, 512)),
        other => panic!("{other}"),
    }
    // Near the end of the context generation stops with "length", not an error.
    let out = m
        .generate(&Prompt::Tokens(vec![1; 510]), &SamplingParams::greedy(50), &AtomicBool::new(false), |_| {})
        .unwrap();
    assert_eq!(out.stats.generated_tokens, 2);
    assert_eq!(out.stats.finish.as_str(), "length");
}

#[test]
fn empty_prompts_and_bad_ids() {
    let m = load(&fixture("tiny-llama2-optimum-fp32"), BackendKind::Tract, true).unwrap();
    let c = AtomicBool::new(false);
    let p = SamplingParams::greedy(2);
    assert!(matches!(m.generate(&Prompt::Text(String::new()), &p, &c, |_| {}), Err(GenerateError::EmptyPrompt)));
    assert!(matches!(m.generate(&Prompt::Tokens(vec![]), &p, &c, |_| {}), Err(GenerateError::EmptyPrompt)));
    assert!(matches!(
        m.generate(&Prompt::Tokens(vec![1, 32000]), &p, &c, |_| {}),
        Err(GenerateError::BadToken { id: 32000, vocab: 32000 })
    ));
}

#[test]
fn invalid_sampling_options_name_the_field() {
    let m = load(&fixture("stories260k-optimum-fp32"), BackendKind::Tract, false).unwrap();
    let bad = SamplingParams { top_p: 2.0, ..SamplingParams::greedy(3) };
    match m.generate(&Prompt::Tokens(vec![1]), &bad, &AtomicBool::new(false), |_| {}) {
        Err(GenerateError::InvalidOption(o)) => assert_eq!(o.field, "top_p"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cancellation_stops_generation() {
    let m = load(&fixture("stories260k-optimum-fp32"), BackendKind::Tract, false).unwrap();
    let cancel = AtomicBool::new(true);
    let out = m.generate(&Prompt::Tokens(vec![1]), &SamplingParams::greedy(50), &cancel, |_| {}).unwrap();
    assert_eq!(out.stats.finish.as_str(), "cancelled");
    assert_eq!(out.stats.generated_tokens, 0);
}
