//! The prompt cache: the sequences of recent stateless requests, kept so that a
//! new request on the same model continues the one whose token ids share the
//! longest prefix with its prompt (a system prompt, a document asked about
//! again, a chat history resent), as llama.cpp's `cache_prompt` does. Bounded
//! in bytes (its entries' KV caches, as the model's estimate counts them),
//! counted in the memory budget, evicted least recently used first when it is
//! over its bound or when room is needed (before sessions lose their caches and
//! before models are unloaded), and dropped with its model.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::engine::Resumable;
use crate::engine::generate::common_prefix;

struct Entry {
    model: String,
    cache: Resumable,
    kv_bytes: u64,
    last_used: Instant,
}

#[derive(Default)]
pub struct PromptCache {
    entries: Mutex<Vec<Entry>>,
}

impl PromptCache {
    fn entries(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes out the entry of `model` sharing the longest prefix with `prompt` (at least
    /// `min_common` tokens), with its bytes.
    pub fn take(&self, model: &str, prompt: &[u32], min_common: usize) -> Option<(Resumable, u64)> {
        let mut entries = self.entries();
        let (i, common) = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.model == model)
            .map(|(i, e)| (i, common_prefix(e.cache.ids(), prompt)))
            .max_by_key(|&(_, c)| c)?;
        if common < min_common.max(1) {
            return None;
        }
        let e = entries.swap_remove(i);
        Some((e.cache, e.kv_bytes))
    }

    /// Keeps `cache` (of `kv_bytes`) for `model`, then evicts the least recently used entries
    /// while the cache holds more than `limit` bytes. Returns the bytes evicted.
    pub fn put(&self, model: &str, cache: Resumable, kv_bytes: u64, limit: u64) -> u64 {
        let mut entries = self.entries();
        if !cache.ids().is_empty() {
            entries.push(Entry { model: model.to_string(), cache, kv_bytes, last_used: Instant::now() });
        }
        let mut freed = 0;
        while entries.iter().map(|e| e.kv_bytes).sum::<u64>() > limit {
            freed += evict_oldest(&mut entries);
        }
        freed
    }

    /// Bytes held for `model`.
    pub fn kv_bytes(&self, model: &str) -> u64 {
        self.entries().iter().filter(|e| e.model == model).map(|e| e.kv_bytes).sum()
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry of `model` (it is being unloaded).
    pub fn drop_model(&self, model: &str) {
        self.entries().retain(|e| e.model != model);
    }

    /// Evicts the least recently used entry; returns its bytes (0 when empty).
    pub fn evict_one(&self) -> u64 {
        evict_oldest(&mut self.entries())
    }
}

fn evict_oldest(entries: &mut Vec<Entry>) -> u64 {
    match entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i) {
        Some(i) => entries.swap_remove(i).kv_bytes,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ids: &[u32]) -> Resumable {
        Resumable::detached(ids.to_vec())
    }

    #[test]
    fn the_longest_common_prefix_of_the_model_wins_and_is_taken_out() {
        let c = PromptCache::default();
        c.put("a", entry(&[1, 2, 3]), 30, 1000);
        c.put("a", entry(&[1, 2, 9, 9]), 40, 1000);
        c.put("b", entry(&[1, 2, 3, 4, 5]), 50, 1000);
        let (got, bytes) = c.take("a", &[1, 2, 3, 7], 1).unwrap();
        assert_eq!((got.ids(), bytes), (&[1, 2, 3][..], 30));
        assert_eq!(c.len(), 2, "taken out");
        assert!(c.take("a", &[5, 6], 1).is_none(), "nothing in common");
        assert!(c.take("a", &[1, 2, 0], 3).is_none(), "less than asked for in common");
        assert_eq!(c.kv_bytes("a"), 40);
        c.drop_model("b");
        assert_eq!(c.kv_bytes("b"), 0);
    }

    #[test]
    fn it_stays_within_its_bound_evicting_the_least_recently_used() {
        let c = PromptCache::default();
        c.put("a", entry(&[1]), 60, 100);
        c.put("a", entry(&[2]), 30, 100);
        assert_eq!(c.put("a", entry(&[3]), 30, 100), 60, "the oldest went");
        assert_eq!(c.kv_bytes("a"), 60);
        assert_eq!(c.evict_one(), 30);
        assert_eq!(c.put("a", entry(&[4]), 200, 100), 230, "larger than the bound: nothing kept");
        assert!(c.is_empty());
    }
}
