//! ONNX Runtime execution providers: the configured, ordered preference (NPU
//! first, CPU last), each with its options, and an optional plugin library
//! (e.g. the QNN provider shipped in PyPI's `onnxruntime-qnn` wheel).
//!
//! A provider that fails to register is logged with its reason and the next one
//! is tried; CPU always remains. What got registered is reported in `Served`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProviderDispatch};
use ort::session::builder::SessionBuilder;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderName {
    Cpu,
    Xnnpack,
    Qnn,
    Openvino,
    Acl,
}

impl ProviderName {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderName::Cpu => "cpu",
            ProviderName::Xnnpack => "xnnpack",
            ProviderName::Qnn => "qnn",
            ProviderName::Openvino => "openvino",
            ProviderName::Acl => "acl",
        }
    }

    /// ONNX Runtime's own name for the provider (what plugin devices report).
    pub fn ort_name(self) -> &'static str {
        match self {
            ProviderName::Cpu => "CPUExecutionProvider",
            ProviderName::Xnnpack => "XnnpackExecutionProvider",
            ProviderName::Qnn => "QNNExecutionProvider",
            ProviderName::Openvino => "OpenVINOExecutionProvider",
            ProviderName::Acl => "ACLExecutionProvider",
        }
    }
}

/// One entry of the provider preference list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: ProviderName,
    /// Plugin provider library to register with the environment first
    /// (onnxruntime's `RegisterExecutionProviderLibrary`).
    #[serde(default)]
    pub library: Option<PathBuf>,
    /// Provider options, passed through as ONNX Runtime's key/value pairs
    /// (`backend_path`, `htp_performance_mode` for QNN; `device_type` for
    /// OpenVINO; `intra_op_num_threads` for XNNPACK; ...). Known keys are validated.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

const QNN_PERF_MODES: &[&str] = &[
    "burst",
    "balanced",
    "default",
    "high_performance",
    "high_power_saver",
    "low_balanced",
    "extreme_power_saver",
    "low_power_saver",
    "power_saver",
    "sustained_high_performance",
];

impl ProviderConfig {
    pub fn cpu() -> ProviderConfig {
        ProviderConfig { name: ProviderName::Cpu, library: None, options: BTreeMap::new() }
    }

    pub fn named(name: ProviderName) -> ProviderConfig {
        ProviderConfig { name, library: None, options: BTreeMap::new() }
    }

    /// Checks the options llamad knows the meaning of.
    pub fn validate(&self) -> Result<(), String> {
        let p = self.name.as_str();
        for (k, v) in &self.options {
            let ok = match (self.name, k.as_str()) {
                (ProviderName::Qnn, "htp_performance_mode") => QNN_PERF_MODES.contains(&v.as_str()),
                (ProviderName::Xnnpack, "intra_op_num_threads") | (ProviderName::Openvino, "num_of_threads") => {
                    v.parse::<usize>().is_ok_and(|n| n > 0)
                }
                (ProviderName::Openvino, "device_type") => !v.is_empty(),
                (ProviderName::Qnn, "backend_path") => !v.is_empty(),
                _ => true,
            };
            if !ok {
                return Err(format!("providers: {p} option {k} = \"{v}\" is not valid"));
            }
        }
        if let Some(lib) = &self.library
            && lib.as_os_str().is_empty()
        {
            return Err(format!("providers: {p} library path is empty"));
        }
        Ok(())
    }

    fn dispatch(&self) -> ExecutionProviderDispatch {
        fn with<E: ArbitrarilyConfigurableExecutionProvider>(mut ep: E, opts: &BTreeMap<String, String>) -> E {
            for (k, v) in opts {
                ep = ep.with_arbitrary_config(k, v);
            }
            ep
        }
        let o = &self.options;
        match self.name {
            ProviderName::Cpu => ep::CPU::default().build(),
            ProviderName::Xnnpack => with(ep::XNNPACK::default(), o).build(),
            ProviderName::Qnn => with(ep::QNN::default(), o).build(),
            ProviderName::Openvino => with(ep::OpenVINO::default(), o).build(),
            ProviderName::Acl => ep::ACL::default().build(),
        }
        .error_on_failure()
    }
}

/// Registers `p` on `builder`; the builder always comes back, with the reason on failure.
pub(super) fn register(
    env: &ort::environment::Environment,
    builder: SessionBuilder,
    p: &ProviderConfig,
) -> (SessionBuilder, Result<(), String>) {
    let result = if p.library.is_some() {
        let options: Vec<(String, String)> =
            p.options.iter().map(|(k, v)| (format!("{}.{k}", p.name.ort_name()), v.clone())).collect();
        let devices: Vec<_> = env.devices().filter(|d| d.ep().is_ok_and(|n| n == p.name.ort_name())).collect();
        if devices.is_empty() {
            return (builder, Err(format!("no device is offered by a registered {} plugin", p.name.ort_name())));
        }
        builder.with_devices(devices, Some(&options))
    } else {
        builder.with_execution_providers([p.dispatch()])
    };
    match result {
        Ok(b) => (b, Ok(())),
        Err(e) => {
            let msg = e.to_string();
            (e.recover(), Err(msg))
        }
    }
}

impl std::str::FromStr for ProviderName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
            .map_err(|_| format!("unknown execution provider \"{s}\" (cpu, xnnpack, qnn, openvino, acl)"))
    }
}
