//! The order requests run in: priority classes, then fairness between accounts.
//!
//! Each request holds a [`Place`] from submission to its end (a value: dropped
//! however the request ends). A model's engine loop starts the waiting request
//! with the lowest [`Queue::order`]: interactive before background; within a
//! class, the account (an app, or a uid) with the fewest requests running, then
//! the least served, then the oldest request. "Served" is the tokens of the
//! account's finished requests since it last became active; an account that
//! becomes active starts level with the least served active one, so a newcomer
//! is not owed the history of a busy one.
//!
//! While any interactive request is alive (queued or running, on any model),
//! background requests neither start nor step ([`Queue::urgent`]): their rows
//! pause, and give their KV cache back while an interactive request waits for
//! memory. The queue is bounded: at most `max_queue` requests wait to start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::policy::priority::Priority;

#[derive(Default)]
struct Account {
    queued: u32,
    running: u32,
    served: u64,
}

#[derive(Default)]
struct State {
    accounts: HashMap<String, Account>,
    /// Requests waiting to start.
    queued: usize,
    next_seq: u64,
}

/// See the module doc.
pub struct Queue {
    state: Mutex<State>,
    bound: usize,
    /// Interactive requests alive.
    interactive: AtomicU32,
}

/// A request's place in the order, from submission until dropped; see the module doc.
pub struct Place {
    queue: Arc<Queue>,
    pub class: Priority,
    account: String,
    seq: u64,
    running: bool,
    /// Tokens credited to its account when it goes.
    pub served: u64,
}

/// The queue holds `max_queue` requests already.
#[derive(Debug)]
pub struct Full;

impl Queue {
    pub fn new(bound: usize) -> Arc<Queue> {
        Arc::new(Queue { state: Default::default(), bound, interactive: AtomicU32::new(0) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new request of `account` in `class`, unless `max_queue` requests wait.
    pub fn enter(self: &Arc<Self>, class: Priority, account: &str) -> Result<Place, Full> {
        let mut s = self.lock();
        if s.queued >= self.bound {
            return Err(Full);
        }
        if !s.accounts.contains_key(account) {
            let level = s.accounts.values().map(|a| a.served).min().unwrap_or(0);
            s.accounts.insert(account.to_string(), Account { served: level, ..Default::default() });
        }
        if let Some(a) = s.accounts.get_mut(account) {
            a.queued += 1;
        }
        s.queued += 1;
        let seq = s.next_seq;
        s.next_seq += 1;
        if class == Priority::Interactive {
            self.interactive.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Place { queue: self.clone(), class, account: account.to_string(), seq, running: false, served: 0 })
    }

    /// Requests waiting to start.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().queued
    }

    /// Whether interactive work is alive: background work waits meanwhile.
    pub fn urgent(&self) -> bool {
        self.interactive.load(Ordering::SeqCst) > 0
    }

    /// Sort key of a waiting request: the lowest starts first.
    pub fn order(&self, place: &Place) -> (Priority, u32, u64, u64) {
        let s = self.lock();
        let (running, served) = s.accounts.get(&place.account).map_or((0, 0), |a| (a.running, a.served));
        (place.class, running, served, place.seq)
    }
}

impl Place {
    /// The request starts: counted as running for its account.
    pub fn start(&mut self) {
        if self.running {
            return;
        }
        self.running = true;
        let mut s = self.queue.lock();
        s.queued -= 1;
        if let Some(a) = s.accounts.get_mut(&self.account) {
            a.queued -= 1;
            a.running += 1;
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut s = self.queue.lock();
        if !self.running {
            s.queued -= 1;
        }
        if let Some(a) = s.accounts.get_mut(&self.account) {
            if self.running {
                a.running -= 1;
            } else {
                a.queued -= 1;
            }
            a.served += self.served;
            if a.running == 0 && a.queued == 0 {
                s.accounts.remove(&self.account);
            }
        }
        if self.class == Priority::Interactive {
            self.queue.interactive.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    /// The next of `places` to start, started.
    fn take(q: &Queue, places: &mut Vec<(&'static str, Place)>) -> (&'static str, Place) {
        let i = (0..places.len()).min_by_key(|&i| q.order(&places[i].1)).unwrap();
        let (name, mut p) = places.remove(i);
        p.start();
        (name, p)
    }

    #[test]
    fn interactive_first_then_fewest_running_then_least_served_then_oldest() {
        let q = Queue::new(16);
        let mut w = vec![
            ("bg", q.enter(Background, "a").unwrap()),
            ("a1", q.enter(Interactive, "a").unwrap()),
            ("a2", q.enter(Interactive, "a").unwrap()),
            ("b1", q.enter(Interactive, "b").unwrap()),
        ];
        assert!(q.urgent());
        let (first, l1) = take(&q, &mut w);
        assert_eq!(first, "a1", "the oldest when nothing runs");
        let (second, l2) = take(&q, &mut w);
        assert_eq!(second, "b1", "b runs nothing, a runs one");
        let (third, mut l3) = take(&q, &mut w);
        assert_eq!(third, "a2");
        assert_eq!(q.waiting(), 1);
        l3.served = 500;
        drop((l1, l2, l3));
        assert!(!q.urgent(), "no interactive work is left");
        let (last, _l) = take(&q, &mut w);
        assert_eq!(last, "bg");
    }

    #[test]
    fn the_least_served_account_goes_first_and_newcomers_start_level() {
        let q = Queue::new(16);
        let mut w = vec![("a1", q.enter(Interactive, "a").unwrap()), ("b1", q.enter(Interactive, "b").unwrap())];
        let (x, mut la) = take(&q, &mut w);
        let (y, mut lb) = take(&q, &mut w);
        assert_eq!((x, y), ("a1", "b1"));
        // both stay active (one more request each queued) while their first ones finish
        w.push(("a2", q.enter(Interactive, "a").unwrap()));
        w.push(("b2", q.enter(Interactive, "b").unwrap()));
        la.served = 900;
        lb.served = 100;
        drop((la, lb));
        w.push(("c1", q.enter(Interactive, "c").unwrap()));
        // b (100) before c (new: level with the least served, 100, but later) before a (900)
        let order: Vec<&str> = (0..3).map(|_| take(&q, &mut w).0).collect();
        assert_eq!(order, ["b2", "c1", "a2"]);
    }

    #[test]
    fn the_queue_is_bounded_and_places_are_given_back_on_drop() {
        let q = Queue::new(2);
        let a = q.enter(Interactive, "a").unwrap();
        let mut b = q.enter(Background, "a").unwrap();
        assert!(q.enter(Interactive, "b").is_err());
        b.start();
        let c = q.enter(Interactive, "b").unwrap();
        assert_eq!(q.waiting(), 2);
        drop((a, b, c));
        assert_eq!(q.waiting(), 0);
        assert!(!q.urgent());
        assert!(q.lock().accounts.is_empty());
    }
}
