//! Typed D-Bus errors, named `org.llamad.Llama1.Error.<Name>`. Append-only:
//! a name, once released, is never removed or renamed. The message says what
//! went wrong with the numbers a client needs (context sizes, queue bounds).

use zbus::DBusError;

#[derive(Debug, DBusError, PartialEq)]
#[zbus(prefix = "org.llamad.Llama1.Error")]
pub enum Error {
    /// Transport-level failure (not sent by the daemon).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No model of that name in the models directory.
    UnknownModel(String),
    /// The model exists but could not be loaded (the reason follows).
    ModelLoadFailed(String),
    /// The prompt (plus what must be generated) does not fit the context.
    ContextOverflow(String),
    /// The request queue is full; retry later.
    Busy(String),
    /// An argument or option is invalid; the message names the field.
    InvalidArgs(String),
    /// The caller may not do this.
    PermissionDenied(String),
    /// No such request (finished, cancelled or never existed), or not the caller's.
    UnknownRequest(String),
    /// A bug or an unexpected failure inside the daemon.
    Internal(String),
    /// The model or the request's KV cache does not fit the memory budget, even after
    /// unloading idle models (the message has the numbers).
    OutOfBudget(String),
    /// No such session (closed, expired, or never opened).
    UnknownSession(String),
    /// The caller's app has used its token quota (`[[apps]]` rules): the message begins
    /// `retry in N s:`, N being the seconds until the quota allows a request again.
    QuotaExceeded(String),
    /// The request's work failed inside the daemon (a backend error, or a fault that was
    /// contained): in `Finished`'s `error_name`; the request ended, others go on.
    GenerationFailed(String),
    /// The power governor refuses background work now (low battery, heat): the message
    /// begins `retry in N s` and says why.
    PowerSaving(String),
}

pub type Result<T> = std::result::Result<T, Error>;
