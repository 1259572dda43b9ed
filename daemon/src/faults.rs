//! Fault injection for the fault suite: named points in the code that panic when
//! the daemon was started with `LLAMAD_FAULTS` naming them, so tests can check
//! on a real daemon that a panic stays contained (the request ends with
//! `GenerationFailed`, everything it held is given back, other work goes on).
//!
//! `LLAMAD_FAULTS=POINT[@N][,POINT[@N]...]`: panic at the Nth time (1 by
//! default) the point is reached, once. Points: `run` (a request's work, before
//! each decoding step), `batch-step` (the ONNX Runtime batch leader, in the
//! batched forward pass). Unset (production), a point costs one relaxed load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Point {
    name: String,
    at: u64,
    hits: AtomicU64,
}

fn points() -> &'static [Point] {
    static POINTS: OnceLock<Vec<Point>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let spec = std::env::var("LLAMAD_FAULTS").unwrap_or_default();
        spec.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (name, at) = match p.split_once('@') {
                    Some((n, at)) => (n, at.parse().unwrap_or(1)),
                    None => (p, 1),
                };
                Point { name: name.to_string(), at, hits: AtomicU64::new(0) }
            })
            .collect()
    })
}

/// Panics if `LLAMAD_FAULTS` names `point` and this is its Nth hit.
pub fn hit(point: &str) {
    for p in points() {
        if p.name == point && p.hits.fetch_add(1, Ordering::Relaxed) + 1 == p.at {
            panic!("fault injected at {point} (LLAMAD_FAULTS)");
        }
    }
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
