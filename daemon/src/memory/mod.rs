//! Memory: how much llamad may use ([`budget`]), what a model and its KV cache
//! will take ([`estimate`]), what the process really holds ([`measure`]), and
//! whether the system is short of memory ([`pressure`], [`trigger`]). The
//! scheduler admits loads and requests against these numbers.

pub mod budget;
pub mod estimate;
pub mod measure;
pub mod packing;
pub mod pressure;
pub mod trigger;

/// Bytes, printed in MiB.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}
