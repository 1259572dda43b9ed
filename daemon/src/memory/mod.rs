//! Memory: how much llamad may use ([`budget`]), what a model and its KV cache
//! will take ([`estimate`]), and what the process really holds ([`measure`]).
//! The scheduler admits loads and requests against these numbers.

pub mod budget;
pub mod estimate;
pub mod measure;
pub mod pressure;

/// Bytes, printed in MiB.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}
