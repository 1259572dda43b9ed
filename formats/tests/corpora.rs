//! Replays what the fuzzers found, on stable and without a fuzzer: every input
//! of each target's corpus (`fuzz/corpus/TARGET/`) and every crash, leak or
//! timeout cargo-fuzz saved (`fuzz/artifacts/TARGET/`, kept once fixed) goes
//! through the same entry point the fuzz target calls.

use std::path::Path;
use std::time::{Duration, Instant};

use llamad_formats::fuzzing::TARGETS;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

#[test]
fn every_corpus_input_and_saved_crash_is_handled() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, run) in TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(name));
        assert!(corpus.len() >= 3, "fuzz/corpus/{name}: {} inputs (the seeds at least)", corpus.len());
        let artifacts = inputs(&fuzz.join("artifacts").join(name));
        let started = Instant::now();
        for input in corpus.iter().chain(&artifacts) {
            let data = std::fs::read(input).unwrap();
            let one = Instant::now();
            run(&data);
            // libFuzzer's own default time-out is 1200 s; an input that takes seconds here
            // is a hang waiting to be found
            assert!(one.elapsed() < Duration::from_secs(10), "{}: {:?}", input.display(), one.elapsed());
        }
        eprintln!("{name}: {} corpus inputs, {} saved crashes, {:?}", corpus.len(), artifacts.len(), started.elapsed());
    }
}
