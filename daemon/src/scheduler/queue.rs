//! The request queue: bounded, in priority classes, fair between accounts.
//!
//! A worker takes the next request ([`Queue::take`]): interactive before
//! background; within a class, the account (an app, or a uid) with the fewest
//! requests running, then the least served, then the oldest request. "Served"
//! is the tokens of the account's finished requests since it last became
//! active; an account that becomes active starts level with the least served
//! active one, so a newcomer is not owed the history of a busy one.
//!
//! Background requests are not started while interactive work is waiting or
//! running, and running ones yield at their next token boundary: a run asks
//! [`Queue::should_yield`] (an atomic load) before each step; when it says yes,
//! the run parks its sequence and calls [`Queue::yield_now`], which hands it
//! the waiting interactive requests to run on its own thread (so a worker
//! held by a paused request is never lost), and returns once no interactive
//! work is waiting or running. A request that cannot run yet (its KV cache is
//! not reserved: `ready` false) is left to an idle worker and does not make
//! background work yield.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::policy::priority::Priority;

struct Entry<T> {
    item: T,
    class: Priority,
    account: String,
    ready: bool,
    seq: u64,
}

#[derive(Default)]
struct Account {
    queued: u32,
    running: u32,
    served: u64,
}

struct State<T> {
    waiting: Vec<Entry<T>>,
    accounts: HashMap<String, Account>,
    interactive_running: u32,
    next_seq: u64,
}

/// See the module doc.
pub struct Queue<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
    bound: usize,
    /// Interactive requests running, or waiting and ready: background work yields while > 0.
    urgent: AtomicU32,
}

/// A request taken from the queue, counted as running (for its class and its account) until
/// dropped; `served` tokens are credited to its account then.
pub struct Lease<T> {
    queue: Arc<Queue<T>>,
    class: Priority,
    account: String,
    pub served: u64,
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        self.queue.finish(self);
    }
}

/// What a yielding request is to do next ([`Queue::yield_for`]).
pub enum Yielded<T> {
    /// Run this interactive request on the yielding thread.
    Run(T, Lease<T>),
    /// No interactive work is waiting (ready) or running: go on.
    Done,
    /// Interactive work still runs elsewhere.
    Waiting,
}

/// The queue holds `bound` requests already (`max_queue`).
#[derive(Debug)]
pub struct Full<T>(pub T);

impl<T> Queue<T> {
    pub fn new(bound: usize) -> Arc<Queue<T>> {
        Arc::new(Queue {
            state: Mutex::new(State { waiting: vec![], accounts: HashMap::new(), interactive_running: 0, next_seq: 0 }),
            changed: Condvar::new(),
            bound,
            urgent: AtomicU32::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recount(&self, s: &State<T>) {
        let ready = s.waiting.iter().filter(|e| e.class == Priority::Interactive && e.ready).count() as u32;
        self.urgent.store(s.interactive_running + ready, Ordering::SeqCst);
    }

    /// Queues `item` of `account` in `class`; `ready`: it can run as soon as it is taken.
    pub fn push(&self, item: T, class: Priority, account: &str, ready: bool) -> Result<(), Full<T>> {
        let mut s = self.lock();
        if s.waiting.len() >= self.bound {
            return Err(Full(item));
        }
        if !s.accounts.contains_key(account) {
            let level = s.accounts.values().map(|a| a.served).min().unwrap_or(0);
            s.accounts.insert(account.to_string(), Account { served: level, ..Default::default() });
        }
        if let Some(a) = s.accounts.get_mut(account) {
            a.queued += 1;
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        s.waiting.push(Entry { item, class, account: account.to_string(), ready, seq });
        self.recount(&s);
        drop(s);
        self.changed.notify_all();
        Ok(())
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// The index of the next request to run among those `eligible`.
    fn best(s: &State<T>, eligible: impl Fn(&Entry<T>) -> bool) -> Option<usize> {
        s.waiting
            .iter()
            .enumerate()
            .filter(|(_, e)| eligible(e))
            .min_by_key(|(_, e)| {
                let a = &s.accounts[&e.account];
                (e.class, a.running, a.served, e.seq)
            })
            .map(|(i, _)| i)
    }

    fn start(self: &Arc<Self>, s: &mut State<T>, i: usize) -> (T, Lease<T>) {
        let e = s.waiting.remove(i);
        if let Some(a) = s.accounts.get_mut(&e.account) {
            a.queued -= 1;
            a.running += 1;
        }
        if e.class == Priority::Interactive {
            s.interactive_running += 1;
        }
        self.recount(s);
        (e.item, Lease { queue: self.clone(), class: e.class, account: e.account, served: 0 })
    }

    /// The next request to run; blocks until there is one. Background requests wait while
    /// interactive work is waiting or running.
    pub fn take(self: &Arc<Self>) -> (T, Lease<T>) {
        let mut s = self.lock();
        loop {
            let calm = s.interactive_running == 0 && !s.waiting.iter().any(|e| e.class == Priority::Interactive);
            if let Some(i) = Self::best(&s, |e| e.class == Priority::Interactive || calm) {
                return self.start(&mut s, i);
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether a running request of `class` should yield now.
    pub fn should_yield(&self, class: Priority) -> bool {
        class == Priority::Background && self.urgent.load(Ordering::SeqCst) > 0
    }

    /// For a background request that yields: a waiting interactive request to run now (on
    /// the yielding thread), or None once no interactive work is waiting (ready) or running.
    pub fn yield_now(self: &Arc<Self>) -> Option<(T, Lease<T>)> {
        loop {
            match self.yield_for(std::time::Duration::from_secs(3600)) {
                Yielded::Run(item, lease) => return Some((item, lease)),
                Yielded::Done => return None,
                Yielded::Waiting => {}
            }
        }
    }

    /// [`Queue::yield_now`] for at most `timeout`: `Waiting` if interactive work still runs
    /// then (the yielding request looks at what else it should do, and asks again).
    pub fn yield_for(self: &Arc<Self>, timeout: std::time::Duration) -> Yielded<T> {
        let deadline = std::time::Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(i) = Self::best(&s, |e| e.class == Priority::Interactive && e.ready) {
                let (item, lease) = self.start(&mut s, i);
                return Yielded::Run(item, lease);
            }
            if self.urgent.load(Ordering::SeqCst) == 0 {
                return Yielded::Done;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Yielded::Waiting;
            }
            s = self.changed.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn finish(&self, lease: &Lease<T>) {
        let mut s = self.lock();
        if lease.class == Priority::Interactive {
            s.interactive_running -= 1;
        }
        if let Some(a) = s.accounts.get_mut(&lease.account) {
            a.running -= 1;
            a.served += lease.served;
            if a.running == 0 && a.queued == 0 {
                s.accounts.remove(&lease.account);
            }
        }
        self.recount(&s);
        drop(s);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    fn queue() -> Arc<Queue<&'static str>> {
        Queue::new(16)
    }

    #[test]
    fn interactive_first_then_fewest_running_then_least_served_then_oldest() {
        let q = queue();
        q.push("bg", Background, "a", true).unwrap();
        q.push("a1", Interactive, "a", true).unwrap();
        q.push("a2", Interactive, "a", true).unwrap();
        q.push("b1", Interactive, "b", true).unwrap();
        let (first, l1) = q.take();
        assert_eq!(first, "a1", "the oldest when nothing runs");
        let (second, l2) = q.take();
        assert_eq!(second, "b1", "b runs nothing, a runs one");
        let (third, mut l3) = q.take();
        assert_eq!(third, "a2");
        assert_eq!(q.waiting(), 1);
        // the background request waits until no interactive work runs
        l3.served = 500;
        drop((l1, l2, l3));
        let (last, _l) = q.take();
        assert_eq!(last, "bg");
    }

    #[test]
    fn the_least_served_account_goes_first_and_newcomers_start_level() {
        let q = queue();
        q.push("a1", Interactive, "a", true).unwrap();
        q.push("b1", Interactive, "b", true).unwrap();
        let (x, mut la) = q.take();
        let (y, mut lb) = q.take();
        assert_eq!((x, y), ("a1", "b1"));
        // both stay active (one more request each queued) while their first ones finish
        q.push("a2", Interactive, "a", true).unwrap();
        q.push("b2", Interactive, "b", true).unwrap();
        la.served = 900;
        lb.served = 100;
        drop((la, lb));
        q.push("c1", Interactive, "c", true).unwrap();
        // b (100) before c (new: level with the least served, 100, but later) before a (900)
        let taken: Vec<_> = (0..3).map(|_| q.take()).collect();
        let order: Vec<&str> = taken.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, ["b2", "c1", "a2"]);
    }

    #[test]
    fn background_yields_to_ready_interactive_work_and_runs_it() {
        let q = queue();
        q.push("bg", Background, "a", true).unwrap();
        let (_, bg) = q.take();
        assert_eq!(bg.class, Background);
        assert!(!q.should_yield(Background));
        // not ready (its memory is not reserved): no yield
        q.push("later", Interactive, "b", false).unwrap();
        assert!(!q.should_yield(Background));
        q.push("now", Interactive, "c", true).unwrap();
        assert!(q.should_yield(Background));
        assert!(!q.should_yield(Interactive), "interactive work never yields");
        let (item, lease) = q.yield_now().expect("the ready interactive request");
        assert_eq!(item, "now");
        assert!(q.should_yield(Background), "it runs: background still yields");
        drop(lease);
        assert!(!q.should_yield(Background));
        assert!(q.yield_now().is_none(), "nothing ready or running: go on");
        assert_eq!(q.waiting(), 1);
    }

    #[test]
    fn a_yielding_request_waits_while_interactive_work_runs_elsewhere() {
        let q = queue();
        q.push("i", Interactive, "b", true).unwrap();
        let (_, running) = q.take();
        let q2 = q.clone();
        let waiter = std::thread::spawn(move || q2.yield_now().map(|(i, _)| i));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "it waits while interactive work runs");
        drop(running);
        assert_eq!(waiter.join().unwrap(), None);
    }

    #[test]
    fn the_queue_is_bounded() {
        let q: Arc<Queue<u32>> = Queue::new(2);
        q.push(1, Interactive, "a", true).unwrap();
        q.push(2, Background, "a", true).unwrap();
        assert_eq!(q.push(3, Interactive, "b", true).unwrap_err().0, 3);
    }
}
