//! llamad: an on-device Llama inference daemon. This crate holds the
//! inference core ([`engine`]) that the daemon binary serves.

pub mod engine;
