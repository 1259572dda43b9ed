//! The D-Bus service: owns the bus connection, serves the manager object,
//! turns worker events into signals addressed to the requesting client,
//! cancels the requests of clients that leave the bus, and talks to systemd
//! (READY/STATUS/STOPPING, watchdog pings). Shuts down cleanly on SIGTERM.

mod manager;
mod options;
mod session;

use std::time::Duration;

use futures_util::StreamExt;
use llamad_api::{BUS_NAME, MANAGER_PATH};
use sd_notify::NotifyState;
use tokio::sync::mpsc::UnboundedReceiver;
use zbus::names::BusName;
use zbus::object_server::SignalEmitter;

use crate::config::Config;
use crate::scheduler::{Event, Scheduler};
pub use manager::Manager;

/// Which bus to serve on.
#[derive(Clone, Debug)]
pub enum Bus {
    System,
    Session,
    Address(String),
}

fn notify(state: &[NotifyState<'_>]) {
    // Not under systemd: NOTIFY_SOCKET is unset and this does nothing.
    let _ = sd_notify::notify(state);
}

pub async fn run(config: Config, bus: Bus) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let scheduler = Scheduler::start(config.clone(), tx);
    let builder = match &bus {
        Bus::System => zbus::connection::Builder::system()?,
        Bus::Session => zbus::connection::Builder::session()?,
        Bus::Address(a) => zbus::connection::Builder::address(a.as_str())?,
    };
    let identities = std::sync::Arc::new(crate::identity::Identities::default());
    let usage = std::sync::Arc::new(crate::policy::usage::Usage::default());
    let manager = Manager { scheduler: scheduler.clone(), identities: identities.clone(), usage };
    let conn = builder.serve_at(MANAGER_PATH, manager)?.build().await?;

    for name in &config.preload {
        notify(&[NotifyState::Status(&format!("loading {name}"))]);
        let (s, n) = (scheduler.clone(), name.clone());
        tokio::task::spawn_blocking(move || s.get_or_load(&n, None, "preload"))
            .await?
            .map_err(|e| anyhow::anyhow!("preloading {name}: {e}"))?;
    }

    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let mut owners = dbus.receive_name_owner_changed().await?;
    conn.request_name(BUS_NAME).await?;
    tracing::info!(name = BUS_NAME, models_dir = %config.models_dir.display(), "serving");
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);

    let events = tokio::spawn(forward_events(conn.clone(), scheduler.clone(), rx));
    let power = tokio::spawn(crate::power::watch::run(scheduler.power.clone(), scheduler.events()));
    let textfile = config.metrics.textfile.clone().map(|path| {
        let s = scheduler.clone();
        tokio::spawn(write_metrics(s, path, Duration::from_secs(config.metrics.interval)))
    });
    let s = scheduler.clone();
    let conn2 = conn.clone();
    // Ends when the bus connection does (the bus closed it, or died): the daemon then stops
    // with an error, for systemd to start it again, instead of serving no one.
    let mut watch = tokio::spawn(async move {
        while let Some(signal) = owners.next().await {
            let Ok(args) = signal.args() else { continue };
            if args.new_owner().is_none() && args.name().starts_with(':') {
                identities.forget(args.name());
                let n = s.cancel_owner(args.name());
                if n > 0 {
                    tracing::info!(client = %args.name(), requests = n, "client left the bus: its requests are cancelled");
                }
                for id in s.sessions.of_owner(args.name()) {
                    tracing::info!(client = %args.name(), session = id, "client left the bus: its session is closed");
                    session::close(&conn2, &s, id, args.name(), crate::session::CloseReason::OwnerLeft).await;
                }
            }
        }
    });
    if let Some(interval) = sd_notify::watchdog_enabled() {
        let period = interval / 2;
        tokio::spawn(async move {
            loop {
                notify(&[NotifyState::Watchdog]);
                tokio::time::sleep(period).await;
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut lost = false;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = &mut watch => {
            tracing::error!("the bus connection was closed: stopping");
            lost = true;
        }
    }
    tracing::info!("stopping: cancelling running requests");
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    scheduler.cancel_all();
    // Cancelled requests stop within a token and send their final message.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while scheduler.outstanding() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the last Finished signals reach the bus.
    tokio::time::sleep(Duration::from_millis(100)).await;
    events.abort();
    power.abort();
    if let Some(t) = textfile {
        t.abort();
        // the last counts, for the collector to keep
        if let Some(path) = &config.metrics.textfile {
            let _ = crate::metrics::textfile::write(path, &scheduler.metrics_text());
        }
    }
    if lost {
        anyhow::bail!("lost the connection to the bus");
    }
    Ok(())
}

/// Writes the metrics' textfile every `every` (the first at once); a failure is logged
/// once until a write succeeds again.
async fn write_metrics(s: std::sync::Arc<Scheduler>, path: std::path::PathBuf, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let (s, p) = (s.clone(), path.clone());
        let r = tokio::task::spawn_blocking(move || crate::metrics::textfile::write(&p, &s.metrics_text())).await;
        match r {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) if !failing => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics textfile");
                failing = true;
            }
            _ => {}
        }
    }
}

/// Worker events → signals (to the request's owner only) and property changes.
/// Text as a D-Bus string may carry it: a model can generate U+0000 (Llama's byte token
/// `<0x00>`), which no D-Bus string may hold; the bus disconnects a sender of one (every
/// client of the daemon lost it: found by the chaos suite). It is sent as U+FFFD.
fn wire_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') { text.replace('\0', "\u{FFFD}").into() } else { text.into() }
}

async fn forward_events(
    conn: zbus::Connection,
    scheduler: std::sync::Arc<Scheduler>,
    mut rx: UnboundedReceiver<Event>,
) {
    let iface = match conn.object_server().interface::<_, Manager>(MANAGER_PATH).await {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "manager interface missing");
            return;
        }
    };
    let to = |owner: String| -> Option<SignalEmitter<'static>> {
        let dest = BusName::try_from(owner).ok()?;
        Some(SignalEmitter::new(&conn, MANAGER_PATH).ok()?.set_destination(dest))
    };
    while let Some(ev) = rx.recv().await {
        let result = match ev {
            Event::Token { id, owner, text } => match to(owner) {
                Some(e) => Manager::token(&e, id, &wire_text(&text)).await,
                None => Ok(()),
            },
            Event::ToolCall { id, owner, call } => match to(owner) {
                Some(e) => {
                    let (name, arguments) = (wire_text(&call.name), wire_text(&call.arguments));
                    Manager::tool_call(&e, id, &call.id, &name, &arguments).await
                }
                None => Ok(()),
            },
            Event::Finished { id, owner, mut stats } => {
                if let Some(error) = &mut stats.error {
                    *error = wire_text(error).into_owned();
                }
                let r = match to(owner) {
                    Some(e) => Manager::finished(&e, id, *stats).await,
                    None => Ok(()),
                };
                let m = iface.get().await;
                let _ = m.requests_running_changed(iface.signal_emitter()).await;
                let _ = m.requests_queued_changed(iface.signal_emitter()).await;
                r
            }
            Event::Started => {
                let m = iface.get().await;
                let _ = m.requests_running_changed(iface.signal_emitter()).await;
                m.requests_queued_changed(iface.signal_emitter()).await
            }
            Event::ModelLoaded { name, reason } => {
                let _ = Manager::model_loaded(iface.signal_emitter(), &name, reason).await;
                iface.get().await.loaded_models_changed(iface.signal_emitter()).await
            }
            Event::ModelUnloaded { name, reason } => {
                let _ = Manager::model_unloaded(iface.signal_emitter(), &name, reason).await;
                iface.get().await.loaded_models_changed(iface.signal_emitter()).await
            }
            Event::SessionClosed { id, owner, reason } => {
                session::close(&conn, &scheduler, id, &owner, reason).await;
                Ok(())
            }
            Event::MemoryPressure { active, reason } => {
                let _ = Manager::memory_pressure(iface.signal_emitter(), active, &reason).await;
                iface.get().await.under_memory_pressure_changed(iface.signal_emitter()).await
            }
            Event::PowerState => iface.get().await.power_state_changed(iface.signal_emitter()).await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "signal not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_with_nul_is_sent_with_a_replacement_character() {
        assert_eq!(super::wire_text("a\0b"), "a\u{FFFD}b");
        assert!(matches!(super::wire_text("plain"), std::borrow::Cow::Borrowed("plain")));
    }
}
