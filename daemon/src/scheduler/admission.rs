//! Memory admission: what is in use (the daemon's own memory, measured again from
//! what is resident, plus each loaded model's larger of estimate and measurement,
//! plus the KV reservations of requests), making room by unloading idle models
//! least recently used first, reserving a request's KV cache (now or once others
//! finish), the `Estimate` dry run and the `Memory` property.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use llamad_api::Error;

use super::ledger::Reservation;
use super::{Loaded, Scheduler};
use crate::engine::BackendKind;
use crate::memory::estimate::Estimate;
use crate::memory::{measure, mib};

/// What [`Scheduler::try_reserve`] got.
pub(super) enum Reserve {
    Held(Reservation),
    /// Not now: once other work ends.
    Later(Error),
    /// Never, as things are.
    Never(Error),
}

impl Loaded {
    /// The model itself: the larger of its estimate and its measured growth.
    pub(super) fn resident(&self) -> u64 {
        self.estimate.resident().max(self.measured.total)
    }

    pub(super) fn held(&self) -> u64 {
        self.resident() + self.holds.kv()
    }

    /// No request holds it: it may be unloaded.
    pub(super) fn idle(&self) -> bool {
        self.holds.pins() == 0
    }
}

pub(super) fn held(loaded: &HashMap<String, Loaded>) -> u64 {
    loaded.values().map(Loaded::held).sum()
}

impl Scheduler {
    /// What counts against the budget: the daemon's own baseline, loaded models, reservations
    /// and the sessions' KV caches.
    pub(super) fn used(&self, loaded: &HashMap<String, Loaded>) -> u64 {
        self.baseline() + held(loaded) + self.sessions_kv(loaded)
    }

    /// Measures the daemon's own memory again from what is resident: the resident size
    /// less the loaded models' measured size and the running requests' reservations. It
    /// then includes what estimates do not see (runtime code paged in by loads, what the
    /// allocator keeps after unloads, the bus connections). With nothing running (`quiet`)
    /// that is the baseline; otherwise requests may not have allocated all they reserved,
    /// so it can only raise it. Call with no load in progress; skipped while a model
    /// directory is being read.
    pub(super) fn refresh_baseline(&self, loaded: &HashMap<String, Loaded>, quiet: bool) {
        if self.reading.load(Ordering::SeqCst) > 0 {
            return;
        }
        let now = self.own_memory_now(loaded);
        if quiet {
            self.baseline.store(now, Ordering::Relaxed);
        } else {
            self.baseline.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Nothing computes and no reservation is held: what is resident is the daemon's own
    /// memory, the models' and the caches' (a reservation may not be allocated yet, and would
    /// read as the daemon's own memory being less).
    fn settled(&self, loaded: &HashMap<String, Loaded>) -> bool {
        self.computing() == 0 && loaded.values().all(|l| l.holds.kv() == 0)
    }

    /// Measures the daemon's own memory again (as [`Scheduler::refresh_baseline`]) and keeps
    /// it only if it is lower than the baseline. Only while nothing computes: a running
    /// request may not have allocated all it reserved yet, which would read as less.
    fn lower_baseline(&self, loaded: &HashMap<String, Loaded>) {
        if self.reading.load(Ordering::SeqCst) > 0 || !self.settled(loaded) {
            return;
        }
        self.baseline.fetch_min(self.own_memory_now(loaded), Ordering::Relaxed);
    }

    /// What is resident now, less the models, the requests' reservations and the KV caches
    /// sessions and the prompt cache hold (none of them is the daemon's own memory), after
    /// returning freed heap pages.
    fn own_memory_now(&self, loaded: &HashMap<String, Loaded>) -> u64 {
        measure::release_freed();
        let models: u64 =
            loaded.values().map(|l| l.measured.total + l.holds.kv()).sum::<u64>() + self.sessions_kv(loaded);
        measure::resident().saturating_sub(models)
    }

    /// [`Scheduler::refresh_baseline`] unless a load other than the caller's own (when
    /// `loading_here`) is in progress; quiet when no request runs either.
    pub(super) fn refresh_baseline_unless_loading(&self, loaded: &HashMap<String, Loaded>, loading_here: bool) {
        let _no_other_load = if loading_here {
            None
        } else {
            match self.load_lock.try_lock() {
                Ok(guard) => Some(guard),
                Err(_) => return,
            }
        };
        self.refresh_baseline(loaded, self.settled(loaded));
    }

    pub(super) fn baseline(&self) -> u64 {
        self.baseline.load(Ordering::Relaxed)
    }

    /// Reserves `kv` bytes for request `id` of `model` if they fit now; otherwise says whether
    /// they may fit later (the error has the numbers) or never will (no reservation is left to
    /// give back and no load is in progress).
    pub(super) fn try_reserve(&self, model: &str, kv: u64, id: u64) -> Reserve {
        let what = format!("the KV cache of request {id}");
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        match self.make_room(&mut loaded, kv, &what, false) {
            Ok(_) => match loaded.get(model) {
                Some(l) => Reserve::Held(Reservation::new(&l.holds, kv, &self.room)),
                None => Reserve::Never(Error::Internal(format!("request {id}: its model is not loaded"))),
            },
            // Nothing computing, reserved or loading will free anything (the baseline was just
            // measured again, quiet): it never fits.
            Err(e) if self.settled(&loaded) && self.load_lock.try_lock().is_ok() => Reserve::Never(e),
            Err(e) => Reserve::Later(e),
        }
    }

    /// The memory budget and its use now.
    pub fn memory_status(&self) -> llamad_api::MemoryStatus {
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let b = &self.budget;
        llamad_api::MemoryStatus {
            budget: b.effective,
            config: b.config,
            cgroup: b.cgroup,
            cgroup_source: b.cgroup_source.clone(),
            physical: Some(b.physical),
            reserve: Some(b.reserve),
            used: Some(self.used(&loaded)),
            kv_reserved: Some(loaded.values().map(|l| l.holds.kv()).sum()),
            rss: Some(measure::resident()),
            sessions_kv: Some(loaded.keys().map(|m| self.sessions.kv_bytes(m)).sum()),
            prompt_cache: Some(loaded.keys().map(|m| self.prompt_cache.kv_bytes(m)).sum()),
        }
    }

    /// The estimate for loading `dir` on `kind` now: with the runtime's code pages when no
    /// model has run on `kind` in this process yet.
    pub(super) fn estimate_for(&self, dir: &crate::engine::ModelDir, kind: BackendKind) -> Estimate {
        let first = !self.warm.lock().unwrap_or_else(|e| e.into_inner()).contains(&kind);
        Estimate::for_model(dir, kind, first)
    }

    /// A dry run of loading `name` with `parallel` sequences of `context` tokens.
    pub fn estimate(
        &self,
        name: &str,
        backend: Option<BackendKind>,
        context: Option<u32>,
        parallel: u32,
    ) -> Result<llamad_api::EstimateInfo, Error> {
        self.model_path(name)?;
        let kind = backend.unwrap_or_else(|| self.default_backend());
        let dir = self.open_dir(name).map_err(|e| Error::ModelLoadFailed(format!("{name}: {e}")))?;
        let est = self.estimate_for(&dir, kind);
        let model_context = dir.spec.context_length as u32;
        let context = context.unwrap_or(model_context);
        if context > model_context {
            return Err(Error::ContextOverflow(format!(
                "context {context}: {name}'s context is {model_context} tokens"
            )));
        }
        let kv = est.kv(context as u64);
        let total = est.resident() + kv * parallel as u64;
        // Loading passes through its peak before any request runs.
        let need = total.max(est.load_peak());
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let in_use = self.used(&loaded);
        let idle: u64 = loaded.values().filter(|l| l.idle()).map(Loaded::held).sum();
        let budget = self.budget.effective;
        // A loaded model is counted in `in_use` already: only its sequences' caches are new.
        let is_loaded = loaded.contains_key(name);
        let need_for = |c: u32| {
            let kv = est.kv(c as u64) * parallel as u64;
            if is_loaded { kv } else { (est.resident() + kv).max(est.load_peak()) }
        };
        let longest = |room: u64| longest_context(model_context, |c| need_for(c) <= room);
        let room_now = budget.saturating_sub(in_use);
        let room_evicted = budget.saturating_sub(in_use - idle);
        Ok(llamad_api::EstimateInfo {
            backend: kind.to_string(),
            weights: est.weights,
            scratch: est.scratch,
            kv_per_sequence: kv,
            context,
            parallel,
            total,
            load_peak: Some(est.load_peak()),
            runtime_code: Some(est.runtime_code),
            budget,
            in_use,
            fits_now: in_use + need <= budget,
            fits_after_eviction: in_use - idle + need <= budget,
            kv_cache_type: Some(dir.kv_cache_type().to_string()),
            kv_bytes_per_token: Some(est.kv_per_token),
            max_context_now: Some(longest(room_now)),
            max_context_after_eviction: Some(longest(room_evicted)),
        })
    }

    /// Makes room for `need` more bytes: drops idle sessions' KV caches, then unloads idle
    /// models (least recently used first) if, and only if, that makes it fit. Returns the
    /// names unloaded.
    /// `loading_here`: the caller holds the load lock (admitting its own load).
    pub(super) fn make_room(
        &self,
        loaded: &mut HashMap<String, Loaded>,
        need: u64,
        what: &str,
        loading_here: bool,
    ) -> Result<Vec<String>, Error> {
        let budget = self.budget.effective;
        self.refresh_baseline_unless_loading(loaded, loading_here);
        let mut in_use = self.used(loaded);
        if in_use + need <= budget {
            return Ok(vec![]);
        }
        if self.drop_session_kv(in_use, need) > 0 {
            // the dropped caches may have given back more than they were counted for (what
            // a finished request left with them): measured again, the baseline may go down
            self.lower_baseline(loaded);
            in_use = self.used(loaded);
            if in_use + need <= budget {
                return Ok(vec![]);
            }
        }
        let mut idle: Vec<(&String, &Loaded)> = loaded.iter().filter(|(_, l)| l.idle()).collect();
        idle.sort_by_key(|(_, l)| l.holds.last_used());
        let mut freed = 0;
        let mut victims = vec![];
        for (name, l) in idle {
            if in_use - freed + need <= budget {
                break;
            }
            freed += l.held();
            victims.push(name.clone());
        }
        if in_use - freed + need > budget {
            let busy: Vec<String> =
                loaded.iter().filter(|(_, l)| !l.idle()).map(|(n, l)| format!("{n} {}", mib(l.held()))).collect();
            return Err(Error::OutOfBudget(format!(
                "{what} needs {}; the budget is {}, {} is in use and {} available ({} by the daemon and \
                 models serving requests: {}); unloading every idle model would free only {}",
                mib(need),
                mib(budget),
                mib(in_use),
                mib(budget.saturating_sub(in_use)),
                // Every idle model was counted in `freed`: the rest is the daemon's and the busy ones'.
                mib(in_use - freed),
                if busy.is_empty() { "none".into() } else { busy.join(", ") },
                mib(freed)
            )));
        }
        for v in &victims {
            self.remove_model(loaded, v, "evicted");
        }
        if !victims.is_empty() {
            // What the unloaded models really gave back can be less than they were counted
            // for (the allocator keeps some): measure again and check.
            self.refresh_baseline_unless_loading(loaded, loading_here);
            let now = self.used(loaded);
            if now + need > budget {
                return Err(Error::OutOfBudget(format!(
                    "{what} needs {}; after unloading {} to make room, {} of the {} budget is still in use",
                    mib(need),
                    victims.join(", "),
                    mib(now),
                    mib(budget)
                )));
            }
        }
        Ok(victims)
    }
}

/// The longest context in `1..=max` for which `fits` holds (it holds for every shorter one
/// too: the need grows with the context), or 0.
fn longest_context(max: u32, fits: impl Fn(u32) -> bool) -> u32 {
    let (mut lo, mut hi) = (0, max);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

#[cfg(test)]
mod longest_tests {
    use super::longest_context;

    #[test]
    fn longest_context_is_the_last_that_fits() {
        assert_eq!(longest_context(4096, |c| c <= 1000), 1000);
        assert_eq!(longest_context(4096, |_| true), 4096);
        assert_eq!(longest_context(4096, |_| false), 0);
        assert_eq!(longest_context(1, |c| c <= 1), 1);
        // steps (a buffer that doubles): the last context of the last step that fits
        assert_eq!(longest_context(4096, |c| (c.max(256)).next_power_of_two() <= 1024), 1024);
    }
}
