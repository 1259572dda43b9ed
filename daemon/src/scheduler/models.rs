//! The loaded models: catalog, loading on first use, memory admission (estimates,
//! LRU eviction of idle models, `OutOfBudget` with the numbers), unloading, and the
//! dry-run estimate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use std::time::SystemTime;

use llamad_api::{Error, ModelInfo};

use super::ledger::Pin;
use super::{Event, Loaded, Pinned, Scheduler, keep_alive};
use crate::engine::backend::onnxruntime::locate_library;
use crate::engine::{BackendKind, LayoutError, LoadError, LoadOptions, Model, ModelDir};
use crate::memory::{measure, mib};

/// The newest modification time in a model directory (the directory and its files).
fn newest_change(dir: &Path) -> Option<SystemTime> {
    let mut newest = std::fs::metadata(dir).ok()?.modified().ok()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if let Ok(t) = std::fs::metadata(entry.path()).and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    Some(newest)
}

impl Scheduler {
    /// The recognised directory of model `name`, from the catalog while nothing in it has
    /// changed: reading a graph decodes its whole protobuf, too slow for every ListModels.
    pub(super) fn open_dir(&self, name: &str) -> Result<ModelDir, LayoutError> {
        let path = self.config.models_dir.join(name);
        let stamp = newest_change(&path);
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(t), Some((seen, dir))) = (stamp, catalog.get(name))
            && t == *seen
        {
            return Ok(dir.clone());
        }
        drop(catalog);
        // Decoding the graph holds about its size for a moment: not the daemon's own memory.
        self.reading.fetch_add(1, Ordering::SeqCst);
        let dir = ModelDir::open(&path);
        measure::release_freed();
        self.reading.fetch_sub(1, Ordering::SeqCst);
        let dir = dir?;
        catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        match stamp {
            Some(t) => catalog.insert(name.to_string(), (t, dir.clone())),
            None => catalog.remove(name),
        };
        Ok(dir)
    }

    pub fn providers(&self) -> Vec<String> {
        self.set_up_onnxruntime();
        crate::engine::backend::onnxruntime::available_providers(self.config.onnxruntime.library.as_deref())
    }

    /// Sets ONNX Runtime up if that has not been tried yet (its library, environment and
    /// thread pools: about 20 MiB), adding what it takes to the daemon's baseline.
    pub(super) fn set_up_onnxruntime(&self) {
        use crate::engine::backend::onnxruntime;
        let _once = self.ort_setup.lock().unwrap_or_else(|e| e.into_inner());
        if onnxruntime::environment_tried() {
            return;
        }
        let before = measure::resident();
        let _ = onnxruntime::environment(self.config.onnxruntime.library.as_deref());
        let grown = measure::resident().saturating_sub(before);
        self.baseline.fetch_add(grown, Ordering::Relaxed);
        tracing::info!(grown = %mib(grown), "ONNX Runtime set up: counted in the daemon's baseline");
    }

    pub fn model_path(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.config.models_dir.join(name);
        if !crate::engine::model_dir::valid_model_name(name) || !path.is_dir() {
            return Err(Error::UnknownModel(format!("no model \"{name}\" in {}", self.config.models_dir.display())));
        }
        Ok(path)
    }

    pub fn list_models(&self) -> Vec<ModelInfo> {
        let mut names: Vec<String> = std::fs::read_dir(&self.config.models_dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|n| crate::engine::model_dir::valid_model_name(n))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        // Directories are read (or taken from the catalog) before the lock is taken: workers
        // need it to finish requests.
        let kind = self.default_backend();
        let dirs: Vec<_> = names
            .iter()
            .map(|n| {
                self.open_dir(n).map(|d| {
                    let est = self.estimate_for(&d, kind);
                    (d, est)
                })
            })
            .collect();
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        names
            .into_iter()
            .zip(dirs)
            .map(|(name, dir)| {
                let mut info = ModelInfo { name: name.clone(), ..Default::default() };
                match dir {
                    Ok((d, est)) => {
                        info.estimated_bytes = Some(est.resident());
                        info.estimated_peak_bytes = Some(est.load_peak());
                        info.kv_bytes_per_token = Some(est.kv_per_token);
                        info.kv_cache_type = Some(d.kv_cache_type().to_string());
                        info.layout = Some(d.layout.to_string());
                        info.quantization = Some(d.quantization.to_string());
                        info.parameters = Some(d.parameters());
                        info.context_length = Some(d.spec.context_length as u32);
                        info.vocab_size = Some(d.spec.vocab_size as u32);
                        info.file_size = Some(d.file_size);
                    }
                    Err(e) => info.error = Some(e.to_string()),
                }
                info.loaded = Some(loaded.contains_key(&name));
                if let Some(l) = loaded.get(&name) {
                    let served = l.model.served();
                    info.backend = Some(served.backend.to_string());
                    info.provider = Some(served.provider.clone());
                    info.idle_seconds = Some(l.holds.last_used().elapsed().as_secs());
                    info.running = Some(l.holds.pins());
                    info.estimated_bytes = Some(l.estimate.resident());
                    info.estimated_peak_bytes = Some(l.estimate.load_peak());
                    info.measured_peak_bytes = Some(l.load_peak);
                    info.measured_bytes = Some(l.measured.total);
                    info.measured_anon_bytes = Some(l.measured.anon);
                    info.measured_file_bytes = Some(l.measured.file);
                    info.kv_reserved_bytes = Some(l.holds.kv());
                }
                info
            })
            .collect()
    }

    pub fn loaded_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        v.sort();
        v
    }

    pub(super) fn default_backend(&self) -> BackendKind {
        self.config.backend.unwrap_or_else(|| {
            if locate_library(self.config.onnxruntime.library.as_deref()).is_ok() {
                BackendKind::Onnxruntime
            } else {
                BackendKind::Tract
            }
        })
    }

    /// The loaded model `name`, loading it first if needed (blocking: call off the runtime).
    pub fn get_or_load(
        &self,
        name: &str,
        backend: Option<BackendKind>,
        reason: &'static str,
    ) -> Result<Arc<Model>, Error> {
        self.load(name, backend, reason).map(|p| p.model)
    }

    /// For a request: loads if needed; the model stays loaded while the returned pin lives.
    pub fn acquire(&self, name: &str) -> Result<Pinned, Error> {
        self.refuse_under_pressure()?;
        self.load(name, None, "request")
    }

    fn refuse_under_pressure(&self) -> Result<(), Error> {
        match &*self.pressure.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(Error::OutOfBudget(format!("memory pressure ({why}): not admitting new work"))),
            None => Ok(()),
        }
    }

    /// The loaded model `name`, pinned, unless a panic left it to be unloaded.
    fn pin_loaded(&self, name: &str) -> Option<Result<Pinned, Error>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let l = loaded.get(name)?;
        if l.faulted {
            if !l.idle() {
                return Some(Err(Error::Busy(format!(
                    "model \"{name}\" failed and is unloaded once its requests end: retry"
                ))));
            }
            self.remove_model(&mut loaded, name, "fault");
            return None;
        }
        Some(Ok(Pinned { model: l.model.clone(), pin: Pin::new(&l.holds, &self.room) }))
    }

    fn load(&self, name: &str, backend: Option<BackendKind>, reason: &'static str) -> Result<Pinned, Error> {
        let path = self.model_path(name)?;
        // A loaded model is served without waiting for another model's load.
        if let Some(pinned) = self.pin_loaded(name) {
            return pinned;
        }
        let _guard = self.load_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pinned) = self.pin_loaded(name) {
            return pinned;
        }
        // nothing of the directory is read before it matches its manifest
        let verified = self
            .verifier
            .verify(&path, self.config.require_manifest, false)
            .map_err(|e| Error::ModelLoadFailed(format!("{name}: {e}")))?;
        if verified.manifest {
            tracing::info!(model = name, files = verified.files, hashed = %mib(verified.hashed), "manifest verified");
        }
        let kind = backend.unwrap_or_else(|| self.default_backend());
        let dir = self.open_dir(name).map_err(|e| Error::ModelLoadFailed(format!("{name}: {e}")))?;
        if kind == BackendKind::Onnxruntime {
            self.set_up_onnxruntime();
        }
        let estimate = self.estimate_for(&dir, kind);
        {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            let what = format!(
                "loading {name} ({} weights + {} scratch estimated, {} at the load's peak)",
                mib(estimate.weights),
                mib(estimate.scratch),
                mib(estimate.load_peak())
            );
            if loaded.len() >= self.config.max_loaded_models {
                let lru = loaded.iter().filter(|(_, l)| l.idle()).min_by_key(|(_, l)| l.holds.last_used());
                match lru.map(|(n, _)| n.clone()) {
                    Some(victim) => {
                        tracing::info!(model = %victim, "max_loaded_models reached");
                        // make_room below hands the freed memory back.
                        self.remove_model(&mut loaded, &victim, "evicted");
                    }
                    None => {
                        return Err(Error::Busy(format!(
                            "{} models are loaded (max_loaded_models) and all are serving requests",
                            loaded.len()
                        )));
                    }
                }
            }
            // Loading passes through a peak above the loaded size (the parsed graph and the
            // runtime's copies coexist for a moment): room is made for the estimated peak.
            let evicted = self.make_room(&mut loaded, estimate.load_peak(), &what, true)?;
            if !evicted.is_empty() {
                tracing::info!(model = name, evicted = ?evicted, "made room");
            }
        }
        let opts = LoadOptions {
            threads: (self.config.threads > 0).then_some(self.config.threads),
            providers: self.config.onnxruntime.providers.clone(),
            tract_block_quant: self.config.tract.block_quant,
            ort_library: self.config.onnxruntime.library.clone(),
            huge_pages: self.config.memory.huge_pages,
            private_files: self.config.memory.private_model_files,
            batch_decode: self.config.onnxruntime.batch_decode,
            prefill_chunk: self.config.prefill_chunk,
        };
        let started = Instant::now();
        // Both readings after returning freed heap pages, so that the growth is what the
        // model holds, not what the allocator kept of earlier work or of the load's peak.
        measure::release_freed();
        let before = measure::rss();
        let sampler = measure::PeakSampler::start();
        let model = Model::from_dir(dir, kind, &opts, true).map_err(|e| match e {
            LoadError::Layout(_) | LoadError::Tokenizer(_) | LoadError::Backend(_) => {
                Error::ModelLoadFailed(format!("{name}: {e}"))
            }
        })?;
        let load_peak = sampler.stop().saturating_sub(before.total);
        measure::release_freed();
        let measured = measure::rss().growth_since(&before);
        self.warm.lock().unwrap_or_else(|e| e.into_inner()).insert(kind);
        let served = model.served();
        tracing::info!(model = name, backend = %served.backend, provider = %served.provider,
            seconds = started.elapsed().as_secs_f64(), estimated = %mib(estimate.resident()),
            estimated_peak = %mib(estimate.load_peak()), measured = %mib(measured.total),
            anon = %mib(measured.anon), file = %mib(measured.file), peak = %mib(load_peak), "model loaded");
        for (p, reason) in &served.skipped {
            tracing::warn!(model = name, provider = %p, %reason, "execution provider not used");
        }
        let model = Arc::new(model);
        let holds = Arc::new(super::ledger::Holds::default());
        let pin = Pin::new(&holds, &self.room);
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(
            name.to_string(),
            Loaded {
                model: model.clone(),
                holds,
                estimate,
                measured,
                load_peak,
                keep_alive: keep_alive(self.config.keep_alive),
                faulted: false,
                inbox: super::engine_loop::spawn(self.me.upgrade().expect("the scheduler is alive"), name),
            },
        );
        self.metrics.loaded(name, reason);
        let _ = self.events.send(Event::ModelLoaded { name: name.to_string(), reason });
        Ok(Pinned { model, pin })
    }

    /// Unloads `name` (the caller frees memory afterwards). The runtime code its first load
    /// brought in stays resident: it moves to the daemon's baseline (until that is measured
    /// again).
    pub(super) fn remove_model(&self, loaded: &mut HashMap<String, Loaded>, name: &str, reason: &'static str) {
        if let Some(l) = loaded.remove(name) {
            // Sessions on it keep their conversations, not its backend's memory.
            self.sessions.drop_kv_of(name);
            self.prompt_cache.drop_model(name);
            self.baseline.fetch_add(l.estimate.runtime_code, Ordering::Relaxed);
            // Only idle models are removed, so nothing else should hold it: if something
            // does, its memory comes back later than the budget assumes.
            let others = Arc::strong_count(&l.model) - 1;
            if others > 0 {
                tracing::warn!(model = name, references = others, "unloaded model still referenced");
            }
            tracing::info!(model = name, reason, "model unloaded");
            self.metrics.unloaded(name, reason);
            let _ = self.events.send(Event::ModelUnloaded { name: name.to_string(), reason });
        }
    }

    pub fn unload(&self, name: &str) -> Result<(), Error> {
        self.model_path(name)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        match loaded.get(name) {
            None => return Err(Error::InvalidArgs(format!("model \"{name}\" is not loaded"))),
            Some(l) if !l.idle() => {
                return Err(Error::Busy(format!("model \"{name}\" is serving {} request(s)", l.holds.pins())));
            }
            Some(_) => {}
        }
        self.remove_model(&mut loaded, name, "request");
        drop(loaded);
        measure::release_freed();
        Ok(())
    }
}
