//! Execution-provider fallback on the CPU-only onnxruntime wheel: every NPU or
//! accelerator provider fails to register, each failure is reported with its
//! reason, and the model is served by the CPU provider.

mod common;
use common::*;
use llamad::engine::backend::ProviderConfig;
use llamad::engine::backend::providers::ProviderName;
use llamad::engine::{BackendKind, LoadOptions, Model};

#[test]
fn unavailable_providers_fall_back_to_cpu_with_reasons() {
    let mut qnn = ProviderConfig::named(ProviderName::Qnn);
    qnn.options.insert("backend_path".into(), "libQnnHtp.so".into());
    qnn.options.insert("htp_performance_mode".into(), "burst".into());
    let mut ov = ProviderConfig::named(ProviderName::Openvino);
    ov.options.insert("device_type".into(), "NPU".into());
    let providers = vec![
        qnn,
        ov,
        ProviderConfig::named(ProviderName::Acl),
        ProviderConfig::named(ProviderName::Xnnpack),
        ProviderConfig::cpu(),
    ];
    let opts = LoadOptions { providers, ..opts(BackendKind::Onnxruntime) };
    let m = Model::load(&fixture("stories260k-optimum-fp32"), BackendKind::Onnxruntime, &opts, false).unwrap();
    let served = m.served();
    eprintln!("served by {}; skipped: {:#?}", served.provider, served.skipped);
    assert_eq!(served.provider, "cpu");
    let names: Vec<&str> = served.skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["qnn", "openvino", "acl", "xnnpack"]);
    // The reasons are onnxruntime's own words for this build.
    for (name, reason) in &served.skipped {
        let expected =
            if name == "acl" { "OrtSessionOptionsAppendExecutionProvider_ACL" } else { "not supported in this build" };
        assert!(reason.contains(expected), "{name}: {reason}");
    }
    // And the model still computes correctly on the provider that serves it.
    let (ids, _) = greedy(&m, &[1], 20);
    assert_eq!(ids, stories_reference_ids()[..20]);
}

#[test]
fn a_missing_plugin_library_is_reported_and_skipped() {
    let mut qnn = ProviderConfig::named(ProviderName::Qnn);
    qnn.library = Some("/nonexistent/libonnxruntime_providers_qnn.so".into());
    let opts = LoadOptions { providers: vec![qnn, ProviderConfig::cpu()], ..opts(BackendKind::Onnxruntime) };
    let m = Model::load(&fixture("stories260k-optimum-fp32"), BackendKind::Onnxruntime, &opts, false).unwrap();
    let served = m.served();
    assert_eq!(served.provider, "cpu");
    assert_eq!(served.skipped.len(), 1);
    let (name, reason) = &served.skipped[0];
    assert_eq!(name, "qnn");
    assert!(reason.contains("/nonexistent/libonnxruntime_providers_qnn.so"), "{reason}");
}

#[test]
fn invalid_provider_options_are_refused_by_name() {
    let mut qnn = ProviderConfig::named(ProviderName::Qnn);
    qnn.options.insert("htp_performance_mode".into(), "warp_speed".into());
    let e = qnn.validate().unwrap_err();
    assert!(e.contains("htp_performance_mode") && e.contains("warp_speed"), "{e}");
    let mut x = ProviderConfig::named(ProviderName::Xnnpack);
    x.options.insert("intra_op_num_threads".into(), "0".into());
    assert!(x.validate().is_err());
    assert!("npu".parse::<ProviderName>().is_err());
}
