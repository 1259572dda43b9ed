//! llamad: an on-device Llama inference daemon. [`engine`] is the inference
//! core; [`scheduler`] runs requests on it; [`service`] serves them on D-Bus;
//! [`memory`] budgets and estimates; [`session`] keeps conversations' KV caches;
//! [`config`] is the daemon's configuration.

pub mod config;
pub mod engine;
pub mod memory;
pub mod scheduler;
pub mod service;
pub mod session;
