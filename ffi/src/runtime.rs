//! The one tokio runtime of the library. The node's swarm actor, its
//! replica tasks and every async call from the foreign side run here.
//!
//! Async exports do not use UniFFI's `async_runtime = "tokio"` adapter: that
//! adapter (async-compat) polls futures inside a second, hidden runtime of
//! its own whenever the caller is not on a tokio thread, which is always the
//! case for Kotlin, Swift and Python. Instead each call is spawned onto this
//! runtime and the foreign executor awaits its `JoinHandle`, which needs no
//! runtime to be polled. So there is exactly one runtime, and work keeps
//! running on it even while the foreign event loop is busy.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

use crate::error::ConcordError;

/// Name of the runtime's worker threads, as seen in debuggers and `top -H`.
const THREAD_NAME: &str = "concord-rt";

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The library's runtime, started on first use. Worker threads default to
/// one per core, which suits phones and desktops alike.
pub(crate) fn runtime() -> Result<&'static Runtime, ConcordError> {
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .enable_all()
                .thread_name(THREAD_NAME)
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ConcordError::Internal(format!("cannot start the tokio runtime: {e}")))
}

/// Runs `task` on the library's runtime and waits for it from whatever
/// executor the caller uses. A panic in the task comes back as
/// [`ConcordError::Internal`] instead of unwinding into foreign code.
pub(crate) async fn run<T, F>(task: F) -> Result<T, ConcordError>
where
    F: Future<Output = Result<T, ConcordError>> + Send + 'static,
    T: Send + 'static,
{
    match runtime()?.spawn(task).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(ConcordError::Internal(format!("a task panicked: {e}"))),
        Err(_) => Err(ConcordError::Closed),
    }
}
