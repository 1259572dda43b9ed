//! Sessions: conversations that keep their KV cache between turns.
//!
//! A session belongs to the client (unique bus name) that opened it and to one
//! model. It holds the conversation's messages, where each turn began, and a
//! [`Resumable`] sequence: the exact token ids fed and their KV cache. A turn
//! renders the whole conversation, as a stateless `Chat` would, and continues
//! the sequence from the longest common prefix of the ids it holds, so it feeds
//! only what is new when the history tokenizes as it was fed, and what changed
//! otherwise (a template that trims, a merge across the turn boundary): the
//! result is always that of the stateless request for the same messages.
//!
//! One turn at a time. A turn that fails or is cancelled leaves the
//! conversation as it was. Without its KV cache (dropped to make room, or its
//! model unloaded), a session keeps its messages, and its next turn computes
//! the whole prompt again.

pub mod prompt_cache;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::engine::Resumable;
use crate::engine::chat::Message;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SessionError {
    #[error("no session {0} (closed, expired, or never opened)")]
    Unknown(u64),
    #[error("session {0} belongs to another client")]
    NotOwner(u64),
    #[error("session {0} is answering a turn already")]
    Busy(u64),
    #[error("this client has {0} sessions open already (sessions.max_per_client)")]
    TooMany(usize),
    #[error("cannot rewind {asked} turns: the session has {turns}")]
    Rewind { asked: u32, turns: usize },
}

/// Why a session ended (the `Closed` signal's argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Closed,
    Idle,
    OwnerLeft,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Closed => "closed",
            CloseReason::Idle => "idle",
            CloseReason::OwnerLeft => "owner-left",
        }
    }
}

pub struct Session {
    pub id: u64,
    pub owner: String,
    pub model: String,
    /// Closed after this long without a turn.
    pub ttl: Duration,
    state: Mutex<State>,
}

pub struct State {
    pub messages: Vec<Message>,
    /// Index in `messages` of each turn's first message.
    pub turns: Vec<usize>,
    /// The KV cache; taken out while a turn runs.
    pub cache: Resumable,
    /// Bytes of KV cache `cache` holds, as the model's estimate counts them.
    pub kv_bytes: u64,
    pub last_used: Instant,
    /// A turn is queued or running.
    pub busy: bool,
}

impl Session {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a turn as started; `Busy` if one is. The session stays busy while the returned
    /// guard lives, however the turn ends (refused, failed, cancelled, panicked).
    pub fn begin_turn(self: &Arc<Self>) -> Result<TurnGuard, SessionError> {
        let mut s = self.state();
        if s.busy {
            return Err(SessionError::Busy(self.id));
        }
        s.busy = true;
        Ok(TurnGuard { session: self.clone(), held_kv: 0, ended: Default::default() })
    }

    /// Drops the last `turns` turns (their messages and answers); the KV cache rolls back with
    /// the next turn.
    pub fn rewind(&self, turns: u32) -> Result<(), SessionError> {
        let mut s = self.state();
        if s.busy {
            return Err(SessionError::Busy(self.id));
        }
        let held = s.turns.len();
        if turns as usize > held {
            return Err(SessionError::Rewind { asked: turns, turns: held });
        }
        if turns > 0 {
            let cut = s.turns[held - turns as usize];
            s.messages.truncate(cut);
            s.turns.truncate(held - turns as usize);
        }
        s.last_used = Instant::now();
        Ok(())
    }
}

/// A turn in progress: the session is busy while it lives. While the turn is queued and
/// runs, the session's KV cache is counted in the request's reservation, not as the
/// session's (`take_kv`); a turn that ends without [`TurnGuard::end`] gives the count back
/// to the session if it still holds its cache.
pub struct TurnGuard {
    pub session: Arc<Session>,
    held_kv: u64,
    ended: std::sync::atomic::AtomicBool,
}

impl TurnGuard {
    /// Moves the bytes the session's KV cache is counted for into the turn.
    pub fn take_kv(&mut self) {
        self.held_kv += std::mem::take(&mut self.session.state().kv_bytes);
    }

    /// Ends the turn: the session gets `cache` back, counted as `kv_bytes`; a completed turn
    /// (`added`: its messages and the answer) joins the conversation.
    pub fn end(&self, cache: Resumable, kv_bytes: u64, added: Option<Vec<Message>>) {
        let mut st = self.session.state();
        st.kv_bytes = if cache.ids().is_empty() { 0 } else { kv_bytes };
        st.cache = cache;
        if let Some(added) = added {
            let start = st.messages.len();
            st.turns.push(start);
            st.messages.extend(added);
        }
        drop(st);
        self.ended.store(true, Ordering::SeqCst);
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        let mut st = self.session.state();
        if !self.ended.load(Ordering::SeqCst) {
            st.kv_bytes = if st.cache.ids().is_empty() { 0 } else { self.held_kv };
        }
        st.busy = false;
        st.last_used = Instant::now();
    }
}

/// A session's numbers, for properties and `ListSessions`.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub id: u64,
    pub owner: String,
    pub model: String,
    pub tokens: u32,
    pub kv_bytes: u64,
    pub turns: u32,
    pub idle_seconds: u64,
    pub busy: bool,
}

impl Session {
    pub fn summary(&self) -> Summary {
        let s = self.state();
        Summary {
            id: self.id,
            owner: self.owner.clone(),
            model: self.model.clone(),
            tokens: s.cache.ids().len() as u32,
            kv_bytes: s.kv_bytes,
            turns: s.turns.len() as u32,
            idle_seconds: if s.busy { 0 } else { s.last_used.elapsed().as_secs() },
            busy: s.busy,
        }
    }
}

/// Every open session.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<u64, Arc<Session>>>,
    next: AtomicU64,
}

impl Sessions {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open(
        &self,
        owner: &str,
        model: &str,
        ttl: Duration,
        max_per_client: usize,
    ) -> Result<Arc<Session>, SessionError> {
        let mut map = self.map();
        let theirs = map.values().filter(|s| s.owner == owner).count();
        if theirs >= max_per_client {
            return Err(SessionError::TooMany(theirs));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Arc::new(Session {
            id,
            owner: owner.to_string(),
            model: model.to_string(),
            ttl,
            state: Mutex::new(State {
                messages: vec![],
                turns: vec![],
                cache: Resumable::default(),
                kv_bytes: 0,
                last_used: Instant::now(),
                busy: false,
            }),
        });
        map.insert(id, session.clone());
        Ok(session)
    }

    /// Session `id` if `caller` owns it.
    pub fn get(&self, id: u64, caller: &str) -> Result<Arc<Session>, SessionError> {
        match self.map().get(&id) {
            None => Err(SessionError::Unknown(id)),
            Some(s) if s.owner != caller => Err(SessionError::NotOwner(id)),
            Some(s) => Ok(s.clone()),
        }
    }

    /// Removes session `id` (its KV cache is freed when the last reference goes).
    pub fn remove(&self, id: u64) -> Option<Arc<Session>> {
        self.map().remove(&id)
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self.map().values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Sessions of `owner`.
    pub fn of_owner(&self, owner: &str) -> Vec<u64> {
        self.map().values().filter(|s| s.owner == owner).map(|s| s.id).collect()
    }

    /// Idle sessions past their TTL.
    pub fn expired(&self) -> Vec<u64> {
        self.map()
            .values()
            .filter(|s| s.state.try_lock().is_ok_and(|st| !st.busy && st.last_used.elapsed() >= s.ttl))
            .map(|s| s.id)
            .collect()
    }

    /// KV bytes the sessions of `model` hold between turns.
    pub fn kv_bytes(&self, model: &str) -> u64 {
        self.map().values().filter(|s| s.model == model).map(|s| s.state().kv_bytes).sum()
    }

    /// Drops the KV cache of every idle session of `model` (it is being unloaded).
    pub fn drop_kv_of(&self, model: &str) {
        for s in self.map().values().filter(|s| s.model == model) {
            let mut st = s.state();
            st.cache.clear();
            st.kv_bytes = 0;
        }
    }

    /// Idle sessions holding KV cache, least recently used first: (id, model, bytes).
    pub fn idle_kv(&self) -> Vec<(u64, String, u64)> {
        let mut v: Vec<(Instant, u64, String, u64)> = self
            .map()
            .values()
            .filter_map(|s| {
                let st = s.state.try_lock().ok()?;
                (!st.busy && st.kv_bytes > 0).then(|| (st.last_used, s.id, s.model.clone(), st.kv_bytes))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, id, m, b)| (id, m, b)).collect()
    }

    /// Drops session `id`'s KV cache if it is idle; returns the bytes freed.
    pub fn drop_kv(&self, id: u64) -> u64 {
        let Some(s) = self.map().get(&id).cloned() else { return 0 };
        let Ok(mut st) = s.state.try_lock() else { return 0 };
        if st.busy {
            return 0;
        }
        st.cache.clear();
        std::mem::take(&mut st.kv_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::chat::Role;

    fn sessions_with_one() -> (Sessions, Arc<Session>) {
        let s = Sessions::default();
        let one = s.open(":1.1", "m", Duration::from_secs(60), 2).unwrap();
        (s, one)
    }

    #[test]
    fn only_the_owner_gets_a_session_and_each_client_has_a_limit() {
        let (s, one) = sessions_with_one();
        assert_eq!(s.get(one.id, ":1.1").unwrap().id, one.id);
        assert_eq!(s.get(one.id, ":1.2").err(), Some(SessionError::NotOwner(one.id)));
        assert_eq!(s.get(99, ":1.1").err(), Some(SessionError::Unknown(99)));
        s.open(":1.1", "m", Duration::from_secs(60), 2).unwrap();
        assert_eq!(s.open(":1.1", "m", Duration::from_secs(60), 2).err(), Some(SessionError::TooMany(2)));
        assert!(s.open(":1.2", "m", Duration::from_secs(60), 2).is_ok());
        assert_eq!(s.of_owner(":1.1").len(), 2);
        s.remove(one.id);
        assert_eq!(s.get(one.id, ":1.1").err(), Some(SessionError::Unknown(one.id)));
    }

    #[test]
    fn one_turn_at_a_time_and_rewind_drops_whole_turns() {
        let (_, one) = sessions_with_one();
        let turn = one.begin_turn().unwrap();
        assert_eq!(one.begin_turn().err(), Some(SessionError::Busy(one.id)));
        assert_eq!(one.rewind(0), Err(SessionError::Busy(one.id)));
        drop(turn);
        {
            let mut st = one.state();
            assert!(!st.busy, "a turn that ends however it ends leaves the session free");
            for (i, turn) in [["a", "b"], ["c", "d"], ["e", "f"]].iter().enumerate() {
                let start = st.messages.len();
                st.turns.push(start);
                st.messages.push(Message::new(Role::User, turn[0]));
                st.messages.push(Message::new(Role::Assistant, turn[1]));
                if i == 0 {
                    st.messages.insert(0, Message::new(Role::System, "s"));
                    st.turns[0] = 0;
                }
            }
        }
        assert_eq!(one.rewind(4), Err(SessionError::Rewind { asked: 4, turns: 3 }));
        one.rewind(2).unwrap();
        let st = one.state();
        assert_eq!(st.turns, vec![0]);
        assert_eq!(st.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["s", "a", "b"]);
    }

    #[test]
    fn a_turn_that_never_ran_gives_the_session_back_its_kv_count() {
        let (_, one) = sessions_with_one();
        one.state().cache = Resumable::detached(vec![1, 2, 3]);
        one.state().kv_bytes = 300;
        let mut turn = one.begin_turn().unwrap();
        turn.take_kv();
        assert_eq!(one.state().kv_bytes, 0, "counted in the request's reservation meanwhile");
        drop(turn);
        let st = one.state();
        assert_eq!((st.kv_bytes, st.busy), (300, false));
        drop(st);
        // a turn whose run lost the cache (failed, panicked) leaves nothing counted
        let mut turn = one.begin_turn().unwrap();
        turn.take_kv();
        one.state().cache = Resumable::default();
        drop(turn);
        assert_eq!(one.state().kv_bytes, 0);
    }

    #[test]
    fn idle_sessions_expire_and_give_up_their_kv_least_recently_used_first() {
        let s = Sessions::default();
        let a = s.open(":1.1", "m", Duration::ZERO, 4).unwrap();
        let b = s.open(":1.1", "m", Duration::from_secs(3600), 4).unwrap();
        a.state().kv_bytes = 10;
        b.state().kv_bytes = 20;
        b.state().last_used -= Duration::from_secs(5);
        assert_eq!(s.expired(), vec![a.id]);
        assert_eq!(s.kv_bytes("m"), 30);
        assert_eq!(s.idle_kv().iter().map(|x| x.0).collect::<Vec<_>>(), vec![b.id, a.id]);
        let _turn = a.begin_turn().unwrap();
        assert_eq!(s.drop_kv(a.id), 0, "a busy session keeps its cache");
        assert_eq!(s.drop_kv(b.id), 20);
        assert_eq!(s.kv_bytes("m"), 10);
    }
}
