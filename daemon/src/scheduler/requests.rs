//! The request table: every request from submission to its end, for
//! `ListRequests`, cancellation and the memory accounting's "is anything
//! computing". An entry is a [`Listed`] value owned by the request's job and
//! removed when it is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use llamad_api::Error;

use crate::identity::Caller;
use crate::policy::priority::Priority;

/// See the module doc.
#[derive(Clone, Default)]
pub struct Requests(Arc<Mutex<HashMap<u64, Entry>>>);

pub struct Entry {
    pub owner: String,
    pub cancel: Arc<AtomicBool>,
    pub caller: Arc<Caller>,
    pub model: String,
    pub session: Option<u64>,
    /// Its model's loop runs it (it was queued before).
    pub running: bool,
    /// It does not compute now: paused (background work while interactive work is alive),
    /// or preempted and waiting to reserve its KV cache again.
    pub paused: bool,
    pub class: Priority,
}

/// A request's entry in the table, for as long as the request lives.
pub struct Listed {
    requests: Requests,
    pub id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.requests.lock().remove(&self.id);
    }
}

/// A request queued or running, for `ListRequests`: who asked (never what).
#[derive(Clone, Debug)]
pub struct RequestSummary {
    pub id: u64,
    pub model: String,
    pub running: bool,
    pub paused: bool,
    pub class: Priority,
    pub caller: Arc<Caller>,
    pub session: Option<u64>,
}

impl Requests {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists request `id` until the returned value is dropped.
    pub fn insert(&self, id: u64, entry: Entry) -> Listed {
        self.lock().insert(id, entry);
        Listed { requests: self.clone(), id }
    }

    /// Cancels request `id` if `caller` owns it.
    pub fn cancel(&self, caller: &str, id: u64) -> Result<(), Error> {
        match self.lock().get(&id) {
            Some(r) if r.owner == caller => {
                r.cancel.store(true, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(Error::UnknownRequest(format!("no request {id} of this client is running or queued"))),
        }
    }

    /// Cancels every request of `owner` (a client that left the bus). Returns how many.
    pub fn cancel_owner(&self, owner: &str) -> usize {
        let requests = self.lock();
        let mine: Vec<&Entry> = requests.values().filter(|r| r.owner == owner).collect();
        for r in &mine {
            r.cancel.store(true, Ordering::Relaxed);
        }
        mine.len()
    }

    /// Cancels everything (shutdown).
    pub fn cancel_all(&self) {
        for r in self.lock().values() {
            r.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Requests queued or running, oldest first.
    pub fn list(&self) -> Vec<RequestSummary> {
        let mut list: Vec<RequestSummary> = self
            .lock()
            .iter()
            .map(|(&id, r)| RequestSummary {
                id,
                model: r.model.clone(),
                running: r.running,
                paused: r.paused,
                class: r.class,
                caller: r.caller.clone(),
                session: r.session,
            })
            .collect();
        list.sort_by_key(|r| r.id);
        list
    }

    /// How many satisfy `f`.
    pub fn count(&self, f: impl Fn(&Entry) -> bool) -> u32 {
        self.lock().values().filter(|r| f(r)).count() as u32
    }

    pub fn set_state(&self, id: u64, running: bool, paused: bool) {
        if let Some(r) = self.lock().get_mut(&id) {
            r.running = running;
            r.paused = paused;
        }
    }
}
