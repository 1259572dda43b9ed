//! `org.llamad.Llama1.Session`: one object per open session, at
//! `/org/llamad/Llama1/session/N`, usable by the client that opened it only.
//! `Chat` queues a turn on the scheduler like the manager's `Chat` (its text and
//! result come as the manager's `Token`/`Finished` signals, to the caller); the
//! session's state is in `session/`.

use std::collections::HashMap;
use std::sync::Arc;

use llamad_api::{Error, session_path};
use zbus::interface;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedValue;

use super::manager::{blocking, caller};
use super::options;
use crate::engine::Prompt;
use crate::scheduler::{Scheduler, Turn};
use crate::session::{CloseReason, Session, SessionError};

pub struct SessionObject {
    pub session: Arc<Session>,
    pub scheduler: Arc<Scheduler>,
    pub identities: Arc<crate::identity::Identities>,
    pub usage: Arc<crate::policy::usage::Usage>,
}

/// D-Bus error for a session error.
pub fn session_error(e: SessionError) -> Error {
    match e {
        SessionError::Unknown(_) => Error::UnknownSession(e.to_string()),
        SessionError::NotOwner(_) => Error::PermissionDenied(e.to_string()),
        SessionError::Busy(_) | SessionError::TooMany(_) => Error::Busy(e.to_string()),
        SessionError::Rewind { .. } => Error::InvalidArgs(e.to_string()),
    }
}

impl SessionObject {
    /// The session, if `header`'s sender owns it and it is still open.
    fn mine(&self, header: &Header<'_>) -> Result<Arc<Session>, Error> {
        let who = caller(header)?;
        self.scheduler.sessions.get(self.session.id, &who).map_err(session_error)
    }
}

/// Takes session `id` out of the registry and off the bus, and tells its owner why.
pub async fn close(conn: &zbus::Connection, scheduler: &Scheduler, id: u64, owner: &str, reason: CloseReason) {
    if let Some(s) = scheduler.sessions.remove(id) {
        // its KV cache is freed off the runtime
        let cache = std::mem::take(&mut s.state().cache);
        s.state().kv_bytes = 0;
        tokio::task::spawn_blocking(move || drop(cache));
    }
    let path = session_path(id);
    if let Ok(dest) = zbus::names::BusName::try_from(owner.to_string())
        && let Ok(emitter) = SignalEmitter::new(conn, path.clone())
    {
        let _ = SessionObject::closed(&emitter.set_destination(dest), reason.as_str()).await;
    }
    let _ = conn.object_server().remove::<SessionObject, _>(path.as_str()).await;
}

#[interface(name = "org.llamad.Llama1.Session")]
impl SessionObject {
    /// Appends `messages` (`aa{sv}`: `role`, `content`) to the conversation and answers; the
    /// answer joins the conversation when the turn completes. Options as the manager's `Chat`.
    #[zbus(out_args("request"))]
    async fn chat(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
        messages: Vec<HashMap<String, OwnedValue>>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<u64, Error> {
        let session = self.mine(&header)?;
        let new = options::messages(&messages)?;
        if new.is_empty() {
            return Err(Error::InvalidArgs("messages: none".into()));
        }
        let mut conversation = session.state().messages.clone();
        conversation.extend(new.iter().cloned());
        crate::engine::chat::validate(&conversation).map_err(|e| Error::InvalidArgs(e.to_string()))?;
        // formats and tools compile their grammars: off the runtime
        let (options::Request { params, keep_alive, priority }, prompt) = blocking(move || {
            let mut r = options::request(&options)?;
            let prompt = super::manager::with_tools(Prompt::Chat(conversation), &mut r.params, &options)?;
            Ok((r, prompt))
        })
        .await?;
        let who = super::manager::identify(&self.identities, conn, &header).await?;
        let ticket = super::manager::admit(&self.scheduler, &self.usage, &who, &session.model, priority);
        if let Err(e) = &ticket {
            super::manager::refused(&self.scheduler, &who, &session.model, Some(session.id), priority, e);
        }
        let (ticket, class) = ticket?;
        // busy until the turn ends, however it ends (the guard is dropped with it)
        let guard = session.begin_turn().map_err(session_error)?;
        let model = session.model.clone();
        let queued = match super::manager::prepare(&self.scheduler, &model, prompt).await {
            Ok((pinned, ids)) => {
                let turn = Turn { guard, messages: new };
                let (s, w) = (self.scheduler.clone(), who.clone());
                blocking(move || s.submit(&w, ticket, class, &model, pinned, ids, params, keep_alive, Some(turn))).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &queued {
            super::manager::refused(&self.scheduler, &who, &session.model, Some(session.id), Some(class), e);
        }
        queued
    }

    /// Drops the last `turns` turns (each: the messages one `Chat` added and its answer).
    async fn rewind(&self, #[zbus(header)] header: Header<'_>, turns: u32) -> Result<(), Error> {
        self.mine(&header)?.rewind(turns).map_err(session_error)
    }

    /// Closes the session and frees its KV cache (`Closed("closed")` follows).
    async fn close(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), Error> {
        let session = self.mine(&header)?;
        if session.state().busy {
            return Err(session_error(SessionError::Busy(session.id)));
        }
        let (conn, s, owner) = (conn.clone(), self.scheduler.clone(), session.owner.clone());
        let id = session.id;
        // Removing this object from inside its own method call waits for the call: later.
        tokio::spawn(async move { close(&conn, &s, id, &owner, CloseReason::Closed).await });
        Ok(())
    }

    /// `reason`: closed, idle (past its TTL) or owner-left.
    #[zbus(signal)]
    pub async fn closed(emitter: &SignalEmitter<'_>, reason: &str) -> zbus::Result<()>;

    #[zbus(property)]
    fn model(&self) -> String {
        self.session.model.clone()
    }

    /// Tokens whose KV cache the session holds.
    #[zbus(property)]
    fn tokens(&self) -> u32 {
        self.session.summary().tokens
    }

    #[zbus(property)]
    fn kv_bytes(&self) -> u64 {
        self.session.summary().kv_bytes
    }

    #[zbus(property)]
    fn turns(&self) -> u32 {
        self.session.summary().turns
    }

    #[zbus(property)]
    fn idle_seconds(&self) -> u64 {
        self.session.summary().idle_seconds
    }
}
