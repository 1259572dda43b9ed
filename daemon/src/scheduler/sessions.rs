//! The scheduler's side of sessions: a turn's end (the answer joins the
//! conversation, the KV cache goes back to the session and is counted as its),
//! and the sessions' KV caches in the memory budget: counted in what is in
//! use, dropped (least recently used first) before idle models are unloaded,
//! and dropped with their model.

use std::collections::HashMap;

use super::{Job, Loaded, Scheduler};
use crate::engine::chat::{Message, Role};
use crate::engine::{FinishReason, Output, Resumable};
use crate::memory::mib;

impl Scheduler {
    /// Ends the turn of `job`: the session gets its cache back; a turn that completed (not
    /// cancelled, no error) adds its messages and the answer to the conversation.
    pub(super) fn end_turn(&self, job: &Job, cache: Resumable, output: Option<&Output>) {
        let Some(turn) = &job.turn else { return };
        let kv = {
            let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            loaded.get(&job.model_name).map_or(0, |l| l.estimate.kv(cache.ids().len() as u64))
        };
        let added = match output {
            Some(out) if out.stats.finish != FinishReason::Cancelled => {
                let mut added = turn.messages.clone();
                let mut answer = Message::new(Role::Assistant, out.text.clone());
                answer.tool_calls = out.tool_calls.clone();
                added.push(answer);
                Some(added)
            }
            _ => None,
        };
        turn.guard.end(cache, kv, added);
    }

    /// Bytes of KV cache the sessions hold between turns, and the prompt cache.
    pub(super) fn sessions_kv(&self, loaded: &HashMap<String, Loaded>) -> u64 {
        loaded.keys().map(|m| self.sessions.kv_bytes(m) + self.prompt_cache.kv_bytes(m)).sum()
    }

    /// The prompt cache's bound in bytes.
    fn prompt_cache_limit(&self) -> u64 {
        match self.config.memory.prompt_cache {
            crate::memory::budget::Size::Bytes(b) => b,
            crate::memory::budget::Size::Percent(p) => (self.budget.effective as f64 * p / 100.0) as u64,
        }
    }

    /// Keeps a finished stateless request's sequence in the prompt cache.
    pub(super) fn keep_prompt(&self, job: &Job, cache: Resumable) {
        let limit = self.prompt_cache_limit();
        let kv = {
            let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            loaded.get(&job.model_name).map_or(u64::MAX, |l| l.estimate.kv(cache.ids().len() as u64))
        };
        if kv > limit {
            return;
        }
        self.prompt_cache.put(&job.model_name, cache, kv, limit);
    }

    /// Drops the prompt cache's entries, then idle sessions' KV caches, least recently used
    /// first, until `need` more bytes fit next to `in_use` (or none is left). Returns the
    /// bytes freed.
    pub(super) fn drop_session_kv(&self, in_use: u64, need: u64) -> u64 {
        let mut freed = 0;
        while in_use - freed + need > self.budget.effective && !self.prompt_cache.is_empty() {
            freed += self.prompt_cache.evict_one();
        }
        for (id, model, _) in self.sessions.idle_kv() {
            if in_use - freed + need <= self.budget.effective {
                break;
            }
            let bytes = self.sessions.drop_kv(id);
            if bytes > 0 {
                tracing::info!(session = id, %model, kv = %mib(bytes), "session KV cache dropped to make room");
            }
            freed += bytes;
        }
        freed
    }
}
