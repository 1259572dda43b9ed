//! llamad: an on-device Llama inference daemon. [`engine`] is the inference
//! core; [`scheduler`] runs requests on it; [`service`] serves them on D-Bus;
//! [`config`] is the daemon's configuration.

pub mod config;
pub mod engine;
pub mod scheduler;
pub mod service;
