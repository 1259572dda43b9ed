//! `org.llamad.Llama1.Manager`: thin D-Bus methods. Each checks its arguments,
//! hands the work to the scheduler (blocking parts on the blocking pool, so
//! the bus stays responsive) and returns; text and results come back as
//! signals addressed to the calling client only.

use std::collections::HashMap;
use std::sync::Arc;

use llamad_api::{Error, FinishStats, ModelInfo, WireMessage};
use zbus::interface;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::options;
use crate::engine::Prompt;
use crate::engine::chat::{Message, Role};
use crate::identity::{Caller, Identities};
use crate::policy::priority::{self, Priority};
use crate::policy::{self, Action};
use crate::scheduler::{Pinned, Scheduler, request_error};

pub struct Manager {
    pub scheduler: Arc<Scheduler>,
    pub identities: Arc<Identities>,
    pub usage: Arc<crate::policy::usage::Usage>,
}

pub(super) fn caller(header: &Header<'_>) -> Result<String, Error> {
    header.sender().map(|s| s.to_string()).ok_or_else(|| Error::PermissionDenied("message without a sender".into()))
}

/// Who sent `header`, as the bus vouches for it (see `identity/`).
pub(super) async fn identify(
    identities: &Identities,
    conn: &zbus::Connection,
    header: &Header<'_>,
) -> Result<Arc<Caller>, Error> {
    let name = caller(header)?;
    identities.resolve(conn, &name).await.map_err(|e| Error::PermissionDenied(e.to_string()))
}

/// Admits a request of `who` on `model` under its app rule: the models it may use, its
/// priority class (`asked`, if no higher than the caller's), its requests at once and its
/// token quotas.
pub(super) fn admit(
    scheduler: &Scheduler,
    usage: &Arc<crate::policy::usage::Usage>,
    who: &Caller,
    model: &str,
    asked: Option<Priority>,
) -> Result<(crate::policy::usage::Ticket, Priority), Error> {
    use crate::policy::rules::{account_of, rule_for};
    use crate::policy::usage::Refusal;
    let rule = rule_for(&scheduler.config.apps, who);
    let account = account_of(who);
    if let Some(models) = rule.and_then(|r| r.models.as_ref())
        && !models.iter().any(|m| m == model)
    {
        return Err(Error::PermissionDenied(format!("{account} may not use model {model} (its [[apps]] rule)")));
    }
    let class = priority::effective(priority::class_of(who, rule), asked)
        .map_err(|e| Error::PermissionDenied(format!("{account}: {e}")))?;
    // before anything loads or tokenizes for it
    scheduler.power_check(class)?;
    let ticket = usage.admit(&account, rule).map_err(|e| match e {
        Refusal::Concurrent { .. } => Error::Busy(e.to_string()),
        Refusal::Quota { .. } => Error::QuotaExceeded(e.to_string()),
    })?;
    Ok((ticket, class))
}

/// The audit record of an administrative action.
fn audit_admin(who: &Caller, action: &str, model: &str, error: Option<&Error>) {
    let result = match error {
        None => "ok".to_string(),
        Some(e) => zbus::DBusError::name(e).to_string(),
    };
    crate::audit::log(&crate::audit::Record {
        caller: who,
        model,
        event: crate::audit::Event::Admin { action },
        result: &result,
    });
}

/// The audit record and the metrics of a request refused before it was queued (a queued
/// one is recorded when it ends). `class`: its priority, when it was decided.
pub(super) fn refused(
    scheduler: &Scheduler,
    who: &Caller,
    model: &str,
    session: Option<u64>,
    class: Option<Priority>,
    e: &Error,
) {
    let name = zbus::DBusError::name(e);
    crate::audit::log(&crate::audit::Record {
        caller: who,
        model,
        event: crate::audit::Event::Request { id: None, session, tokens_in: 0, tokens_out: 0 },
        result: name.as_str(),
    });
    scheduler.metrics.ended(&crate::metrics::Ended {
        result: crate::scheduler::short_error_name(name.as_str()),
        priority: class.map_or("unknown", Priority::as_str),
        app: &crate::policy::rules::account_of(who),
        ..Default::default()
    });
}

fn check_name(name: &str) -> Result<(), Error> {
    if crate::engine::model_dir::valid_model_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidArgs(format!("model name {name:?}: 1 to 128 of [A-Za-z0-9._-], not starting with '.'")))
    }
}

fn session_info(s: &crate::session::Summary) -> HashMap<String, OwnedValue> {
    let path = OwnedObjectPath::try_from(llamad_api::session_path(s.id)).ok();
    let mut m: HashMap<String, OwnedValue> = HashMap::new();
    let mut put = |k: &str, v: Value<'_>| {
        if let Ok(v) = v.try_to_owned() {
            m.insert(k.to_string(), v);
        }
    };
    put("id", Value::from(s.id));
    if let Some(p) = path {
        put("path", Value::from(p));
    }
    put("owner", Value::from(s.owner.as_str()));
    put("model", Value::from(s.model.as_str()));
    put("tokens", Value::from(s.tokens));
    put("kv_bytes", Value::from(s.kv_bytes));
    put("turns", Value::from(s.turns));
    put("idle_seconds", Value::from(s.idle_seconds));
    put("busy", Value::from(s.busy));
    m
}

/// An `a{sv}` from (key, value) pairs.
fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Value<'a>)>) -> HashMap<String, OwnedValue> {
    pairs.into_iter().filter_map(|(k, v)| Some((k.to_string(), v.try_to_owned().ok()?))).collect()
}

fn request_info(r: &crate::scheduler::RequestSummary) -> HashMap<String, OwnedValue> {
    let mut m = HashMap::new();
    let mut put = |k: &str, v: Value<'_>| {
        if let Ok(v) = v.try_to_owned() {
            m.insert(k.to_string(), v);
        }
    };
    let c = &r.caller;
    put("id", Value::from(r.id));
    put("model", Value::from(r.model.as_str()));
    let state = match (r.running, r.paused) {
        (false, _) => "queued",
        (true, false) => "running",
        (true, true) => "paused",
    };
    put("state", Value::from(state));
    put("priority", Value::from(r.class.as_str()));
    put("client", Value::from(c.name.as_str()));
    put("uid", Value::from(c.uid));
    if let Some(pid) = c.pid {
        put("pid", Value::from(pid));
    }
    if let Some(unit) = &c.placement.unit {
        put("unit", Value::from(unit.as_str()));
    }
    if let Some(slice) = &c.placement.slice {
        put("slice", Value::from(slice.as_str()));
    }
    if let Some(app) = c.app_label() {
        put("app_id", Value::from(app));
    }
    if let Some(s) = r.session {
        put("session", Value::from(s));
    }
    m
}

impl Manager {
    /// Loading and unloading: at once for root, the daemon's own user and `admin_uids`;
    /// otherwise if polkit allows `manage-models` for this model.
    async fn check_admin(
        &self,
        conn: &zbus::Connection,
        header: &Header<'_>,
        caller: &Caller,
        model: &str,
    ) -> Result<(), Error> {
        if policy::trusted(caller, policy::own_uid(), &self.scheduler.config.admin_uids) {
            return Ok(());
        }
        policy::polkit::check(conn, header, caller, Action::ManageModels, &[("model", model)])
            .await
            .map_err(|e| Error::PermissionDenied(e.to_string()))
    }

    async fn start(
        &self,
        conn: &zbus::Connection,
        header: Header<'_>,
        model: &str,
        prompt: Prompt,
        opts: HashMap<String, OwnedValue>,
    ) -> Result<u64, Error> {
        // formats and tools compile their grammars: off the runtime
        let (options::Request { params, keep_alive, priority }, prompt) = blocking(move || {
            let mut r = options::request(&opts)?;
            let prompt = with_tools(prompt, &mut r.params, &opts)?;
            Ok((r, prompt))
        })
        .await?;
        let who = identify(&self.identities, conn, &header).await?;
        let mut decided = None;
        let queued = match admit(&self.scheduler, &self.usage, &who, model, priority) {
            Ok((ticket, class)) => {
                decided = Some(class);
                match prepare(&self.scheduler, model, prompt).await {
                    Ok((m, ids)) => {
                        let (s, w, name) = (self.scheduler.clone(), who.clone(), model.to_string());
                        blocking(move || s.submit(&w, ticket, class, &name, m, ids, params, keep_alive, None)).await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &queued {
            refused(&self.scheduler, &who, model, None, decided.or(priority), e);
        }
        queued
    }
}

/// Runs `f` on the blocking pool: what may take long or block (loads, grammar compilation,
/// tokenizing, admission that may unload models, dropping large values) never runs on the
/// async runtime, which serves the bus.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(e.to_string()))?
}

/// Loads `model` if needed (pinned: it stays loaded for the request), refuses a prompt
/// whose text is longer than any that fits its context before anything tokenizes it, then
/// tokenizes it, at most `max_tokenizing` at once (waiting asynchronously, holding nothing
/// but the pin), off the runtime.
pub(super) async fn prepare(
    scheduler: &Arc<Scheduler>,
    model: &str,
    prompt: Prompt,
) -> Result<(Pinned, Vec<u32>), Error> {
    check_name(model)?;
    let internal = |e: tokio::task::JoinError| Error::Internal(e.to_string());
    let (s, name) = (scheduler.clone(), model.to_string());
    let pinned = tokio::task::spawn_blocking(move || s.acquire(&name)).await.map_err(internal)??;
    pinned.model.check_prompt_size(&prompt).map_err(request_error)?;
    let permit = scheduler.tokenizing.clone().acquire_owned().await.map_err(|e| Error::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        // prompt_ids checks the vocabulary and the context (ContextOverflow with the numbers).
        let ids = pinned.model.prompt_ids(&prompt).map_err(request_error)?;
        Ok((pinned, ids))
    })
    .await
    .map_err(internal)?
}

/// A chat prompt offering the request's `tools` (also kept in `params`, for decoding).
pub(super) fn with_tools(
    prompt: Prompt,
    params: &mut crate::engine::SamplingParams,
    opts: &HashMap<String, OwnedValue>,
) -> Result<Prompt, Error> {
    let Some(tools) = options::tools(opts)? else {
        return Ok(prompt);
    };
    if params.format.is_some() {
        return Err(Error::InvalidArgs("option tools: cannot be combined with a format".into()));
    }
    params.tools = Some(tools.clone());
    match prompt {
        Prompt::Chat(m) => Ok(Prompt::ChatTools(m, tools)),
        _ => Err(Error::InvalidArgs("option tools: only chats offer tools (Chat, ChatMessages, Session.Chat)".into())),
    }
}

#[interface(name = "org.llamad.Llama1.Manager")]
impl Manager {
    #[zbus(out_args("models"))]
    async fn list_models(&self) -> Vec<ModelInfo> {
        let s = self.scheduler.clone();
        tokio::task::spawn_blocking(move || s.list_models()).await.unwrap_or_default()
    }

    async fn load_model(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
        name: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(), Error> {
        check_name(name)?;
        let backend = options::load(&options)?;
        let who = identify(&self.identities, conn, &header).await?;
        let result = match self.check_admin(conn, &header, &who, name).await {
            Ok(()) => {
                let (s, model) = (self.scheduler.clone(), name.to_string());
                tokio::task::spawn_blocking(move || s.get_or_load(&model, backend, "admin").map(|_| ()))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))
                    .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        audit_admin(&who, "load-model", name, result.as_ref().err());
        result
    }

    /// Hashes every file of `name` against its manifest (an admin action: it reads the whole
    /// model). Returns `manifest` b (whether it has one), `files` u, `bytes` t; a mismatch
    /// is `ModelLoadFailed` naming the file.
    #[zbus(out_args("result"))]
    async fn verify_model(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
        name: &str,
    ) -> Result<HashMap<String, OwnedValue>, Error> {
        check_name(name)?;
        let who = identify(&self.identities, conn, &header).await?;
        let path = self.scheduler.model_path(name)?;
        let result = match self.check_admin(conn, &header, &who, name).await {
            Ok(()) => {
                let s = self.scheduler.clone();
                tokio::task::spawn_blocking(move || s.verifier.verify(&path, false, true))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))
                    .and_then(|r| r.map_err(|e| Error::ModelLoadFailed(format!("{name}: {e}"))))
            }
            Err(e) => Err(e),
        };
        audit_admin(&who, "verify-model", name, result.as_ref().err());
        let v = result?;
        Ok(dict([
            ("manifest", Value::from(v.manifest)),
            ("files", Value::from(v.files as u32)),
            ("bytes", Value::from(v.hashed)),
        ]))
    }

    async fn unload_model(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
        name: &str,
    ) -> Result<(), Error> {
        check_name(name)?;
        let who = identify(&self.identities, conn, &header).await?;
        let result = match self.check_admin(conn, &header, &who, name).await {
            Ok(()) => {
                // dropping a model frees (unmaps) its weights: off the runtime
                let (s, n) = (self.scheduler.clone(), name.to_string());
                blocking(move || s.unload(&n)).await
            }
            Err(e) => Err(e),
        };
        audit_admin(&who, "unload-model", name, result.as_ref().err());
        result
    }

    #[zbus(out_args("request"))]
    async fn generate(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
        model: &str,
        prompt: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<u64, Error> {
        if prompt.is_empty() {
            return Err(Error::InvalidArgs("prompt: empty".into()));
        }
        self.start(conn, header, model, Prompt::Text(prompt.to_string()), options).await
    }

    #[zbus(out_args("request"))]
    async fn chat(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
        model: &str,
        messages: Vec<WireMessage>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<u64, Error> {
        let mut msgs = Vec::with_capacity(messages.len());
        for (i, (role, content)) in messages.into_iter().enumerate() {
            let role = match role.as_str() {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(Error::InvalidArgs(format!(
                        "messages[{i}]: role {other:?} (system, user or assistant)"
                    )));
                }
            };
            msgs.push(Message::new(role, content));
        }
        crate::engine::chat::validate(&msgs).map_err(|e| Error::InvalidArgs(e.to_string()))?;
        self.start(conn, header, model, Prompt::Chat(msgs), options).await
    }

    /// A chat whose messages are `aa{sv}`: they may carry tool calls and results (see the
    /// API doc); options as `Chat`'s, with `tools` and `tool_choice`.
    #[zbus(out_args("request"))]
    async fn chat_messages(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
        model: &str,
        messages: Vec<HashMap<String, OwnedValue>>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<u64, Error> {
        let msgs = options::messages(&messages)?;
        crate::engine::chat::validate(&msgs).map_err(|e| Error::InvalidArgs(e.to_string()))?;
        self.start(conn, header, model, Prompt::Chat(msgs), options).await
    }

    #[zbus(out_args("estimate"))]
    async fn estimate(
        &self,
        model: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<llamad_api::EstimateInfo, Error> {
        check_name(model)?;
        let (backend, context, parallel) = options::estimate(&options)?;
        let (s, name) = (self.scheduler.clone(), model.to_string());
        tokio::task::spawn_blocking(move || s.estimate(&name, backend, context, parallel))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Opens a session on `model` for the caller: options `ttl` (u, seconds idle before it
    /// closes). Returns its object path.
    #[zbus(out_args("session"))]
    async fn open_session(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        model: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<OwnedObjectPath, Error> {
        let owner = caller(&header)?;
        check_name(model)?;
        let cfg = &self.scheduler.config.sessions;
        let ttl = options::session(&options, cfg.ttl)?;
        self.scheduler.model_path(model)?;
        let session = self
            .scheduler
            .sessions
            .open(&owner, model, ttl, cfg.max_per_client)
            .map_err(super::session::session_error)?;
        let path = llamad_api::session_path(session.id);
        let object = super::session::SessionObject {
            session: session.clone(),
            scheduler: self.scheduler.clone(),
            identities: self.identities.clone(),
            usage: self.usage.clone(),
        };
        if let Err(e) = conn.object_server().at(path.as_str(), object).await {
            self.scheduler.sessions.remove(session.id);
            return Err(Error::Internal(e.to_string()));
        }
        tracing::info!(session = session.id, client = %owner, model, "session opened");
        OwnedObjectPath::try_from(path).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Every open session: `id` (t), `path` (o), `owner` (s), `model` (s), `tokens` (u),
    /// `kv_bytes` (t), `turns` (u), `idle_seconds` (t), `busy` (b).
    #[zbus(out_args("sessions"))]
    async fn list_sessions(&self) -> Vec<HashMap<String, OwnedValue>> {
        self.scheduler.sessions.all().iter().map(|s| session_info(&s.summary())).collect()
    }

    /// Requests queued or running, oldest first: who runs each (never what): `id` (t),
    /// `model` (s), `state` (s: queued, running), `client` (s: unique name), `uid` (u),
    /// and where known `pid` (u), `unit` (s), `slice` (s), `app_id` (s: flatpak:ID,
    /// snap:NAME), `session` (t).
    #[zbus(out_args("requests"))]
    async fn list_requests(&self) -> Vec<HashMap<String, OwnedValue>> {
        self.scheduler.list_requests().iter().map(request_info).collect()
    }

    /// What each account (an app id, or `uid:N`) used: `account` s, `running` u,
    /// `tokens_last_minute` t, `tokens_today` t, `requests_today` u (UTC day).
    #[zbus(out_args("usage"))]
    async fn list_usage(&self) -> Vec<HashMap<String, OwnedValue>> {
        let row = |a: &crate::policy::usage::AccountUsage| {
            dict([
                ("account", Value::from(a.account.as_str())),
                ("running", Value::from(a.running)),
                ("tokens_last_minute", Value::from(a.tokens_last_minute)),
                ("tokens_today", Value::from(a.tokens_today)),
                ("requests_today", Value::from(a.requests_today)),
            ])
        };
        self.usage.snapshot().iter().map(row).collect()
    }

    async fn cancel(&self, #[zbus(header)] header: Header<'_>, request: u64) -> Result<(), Error> {
        let owner = caller(&header)?;
        self.scheduler.cancel(&owner, request)
    }

    #[zbus(signal)]
    pub async fn token(emitter: &SignalEmitter<'_>, request: u64, text: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn finished(emitter: &SignalEmitter<'_>, request: u64, stats: FinishStats) -> zbus::Result<()>;

    /// To the caller only, before `Finished`: a tool call of the answer (`arguments` a JSON
    /// object's text). The daemon runs nothing: the app does and sends a `tool` message back.
    #[zbus(signal)]
    pub async fn tool_call(
        emitter: &SignalEmitter<'_>,
        request: u64,
        call_id: &str,
        name: &str,
        arguments: &str,
    ) -> zbus::Result<()>;

    /// Broadcast: a model was loaded (`reason`: request, preload, admin).
    #[zbus(signal)]
    pub async fn model_loaded(emitter: &SignalEmitter<'_>, model: &str, reason: &str) -> zbus::Result<()>;

    /// Broadcast: a model was unloaded (`reason`: request, idle, evicted, pressure, fault).
    #[zbus(signal)]
    pub async fn model_unloaded(emitter: &SignalEmitter<'_>, model: &str, reason: &str) -> zbus::Result<()>;

    /// Broadcast: memory pressure began (`active`, with the reason) or ended.
    #[zbus(signal)]
    pub async fn memory_pressure(emitter: &SignalEmitter<'_>, active: bool, reason: &str) -> zbus::Result<()>;

    #[zbus(property)]
    fn under_memory_pressure(&self) -> bool {
        self.scheduler.under_pressure()
    }

    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    #[zbus(property)]
    fn backends(&self) -> Vec<String> {
        self.scheduler.backends()
    }

    /// ONNX Runtime execution providers available in the loaded library (`cpu`, `qnn`, ...).
    /// The first read may load the library and set the runtime up: off the async runtime.
    #[zbus(property)]
    async fn providers(&self) -> Vec<String> {
        let s = self.scheduler.clone();
        blocking(move || Ok(s.providers())).await.unwrap_or_default()
    }

    #[zbus(property)]
    fn loaded_models(&self) -> Vec<String> {
        self.scheduler.loaded_names()
    }

    #[zbus(property)]
    fn requests_running(&self) -> u32 {
        self.scheduler.running()
    }

    #[zbus(property)]
    fn requests_queued(&self) -> u32 {
        self.scheduler.queued()
    }

    /// The memory budget, where its parts come from, and what is in use.
    #[zbus(property)]
    fn memory(&self) -> llamad_api::MemoryStatus {
        self.scheduler.memory_status()
    }

    /// The power governor's state and what it limits (`docs/dbus-api.md` lists the keys).
    #[zbus(property)]
    fn power_state(&self) -> HashMap<String, OwnedValue> {
        power_info(&self.scheduler.power.state())
    }

    /// The daemon's metrics in Prometheus' text format (the node_exporter textfile's text).
    #[zbus(property(emits_changed_signal = "false"))]
    fn metrics(&self) -> String {
        self.scheduler.metrics_text()
    }
}

/// `PowerState`'s dictionary.
fn power_info(p: &crate::power::PowerState) -> HashMap<String, OwnedValue> {
    let mut m = HashMap::new();
    let mut put = |k: &str, v: Value<'_>| {
        if let Ok(v) = v.try_to_owned() {
            m.insert(k.to_string(), v);
        }
    };
    put("state", Value::from(p.state));
    put("limiting", Value::from(p.limiting()));
    put("reasons", Value::from(p.reasons.clone()));
    put("threads", Value::from(p.limits.threads as u32));
    put("max_parallel", Value::from(p.limits.max_parallel as u32));
    put("background", Value::from(p.limits.background.as_str()));
    put("cores", Value::from(p.cores.iter().map(|&c| c as u32).collect::<Vec<u32>>()));
    let since = p.since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    put("since", Value::from(since));
    if let Some(b) = &p.battery {
        put("on_battery", Value::from(b.on_battery));
        if let Some(pct) = b.percent {
            put("battery_percent", Value::from(pct));
        }
        put("battery_warning", Value::from(b.warning()));
    }
    if let Some(z) = &p.zone {
        put("zone", Value::from(z.name.as_str()));
        put("zone_type", Value::from(z.kind.as_str()));
        put("temperature_c", Value::from(z.celsius));
        put("hot_at_c", Value::from(z.hot_at));
        put("critical_at_c", Value::from(z.critical_at));
    }
    m
}
