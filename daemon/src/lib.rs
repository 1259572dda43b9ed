//! llamad: an on-device Llama inference daemon. [`engine`] is the inference
//! core; [`scheduler`] runs requests on it; [`service`] serves them on D-Bus;
//! [`memory`] budgets and estimates; [`session`] keeps conversations' KV caches;
//! [`config`] is the daemon's configuration; [`identity`] tells who a caller is
//! and [`policy`] what it may do; [`audit`] records who did what; [`power`]
//! governs compute on battery and in heat; [`metrics`] counts what happened for
//! Prometheus; [`faults`] injects panics for the fault suite.

pub mod audit;
pub mod config;
pub mod engine;
pub mod faults;
pub mod identity;
pub mod memory;
pub mod metrics;
pub mod policy;
pub mod power;
pub mod scheduler;
pub mod service;
pub mod session;
