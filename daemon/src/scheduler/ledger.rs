//! What requests hold of a loaded model, as values released on drop (panics
//! included), never as counters someone must remember to decrement:
//!
//! - a [`Pin`]: the model is not unloaded or evicted while one lives;
//! - a [`Reservation`]: bytes of the memory budget for a request's KV cache.
//!
//! Each loaded model has one [`Holds`] that sums them. Dropping a value gives
//! back what it counted and wakes whoever waits for room ([`Room`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Signalled whenever a pin or a reservation goes (waiters also look again every 100 ms).
pub type Room = Arc<Condvar>;

/// The pins and reservations of one loaded model.
#[derive(Debug)]
pub struct Holds {
    pins: AtomicU32,
    kv: AtomicU64,
    last_used: Mutex<Instant>,
}

impl Default for Holds {
    fn default() -> Self {
        Holds { pins: AtomicU32::new(0), kv: AtomicU64::new(0), last_used: Mutex::new(Instant::now()) }
    }
}

impl Holds {
    /// Pins held now: requests preparing, queued or running on the model.
    pub fn pins(&self) -> u32 {
        self.pins.load(Ordering::SeqCst)
    }

    /// Bytes of KV cache reserved now.
    pub fn kv(&self) -> u64 {
        self.kv.load(Ordering::SeqCst)
    }

    pub fn last_used(&self) -> Instant {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// Keeps a model loaded while it lives.
#[derive(Debug)]
pub struct Pin {
    holds: Arc<Holds>,
    room: Room,
}

impl Pin {
    pub fn new(holds: &Arc<Holds>, room: &Room) -> Pin {
        holds.pins.fetch_add(1, Ordering::SeqCst);
        holds.touch();
        Pin { holds: holds.clone(), room: room.clone() }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.holds.pins.fetch_sub(1, Ordering::SeqCst);
        self.holds.touch();
        self.room.notify_all();
    }
}

/// Bytes of the budget held for a request's KV cache while it lives.
#[derive(Debug)]
pub struct Reservation {
    holds: Arc<Holds>,
    bytes: u64,
    room: Room,
}

impl Reservation {
    /// Counts `bytes` on `holds`: the caller checked they fit, under the lock that orders
    /// admissions (the scheduler's `loaded`).
    pub fn new(holds: &Arc<Holds>, bytes: u64, room: &Room) -> Reservation {
        holds.kv.fetch_add(bytes, Ordering::SeqCst);
        Reservation { holds: holds.clone(), bytes, room: room.clone() }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.holds.kv.fetch_sub(self.bytes, Ordering::SeqCst);
        self.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_reservations_are_given_back_on_drop_and_on_panic() {
        let holds = Arc::new(Holds::default());
        let room: Room = Default::default();
        let pin = Pin::new(&holds, &room);
        let r = Reservation::new(&holds, 1000, &room);
        assert_eq!((holds.pins(), holds.kv()), (1, 1000));
        drop((pin, r));
        assert_eq!((holds.pins(), holds.kv()), (0, 0));
        let (h, rm) = (holds.clone(), room.clone());
        let panicked = std::thread::spawn(move || {
            let _pin = Pin::new(&h, &rm);
            let _r = Reservation::new(&h, 5, &rm);
            panic!("a request's work panics");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!((holds.pins(), holds.kv()), (0, 0), "unwinding gave both back");
    }
}
