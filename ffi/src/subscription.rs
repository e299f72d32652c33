//! The handle every listener registration returns: delivery stops when it
//! is cancelled or when the foreign side drops it.

use std::sync::{Mutex, MutexGuard};

use tokio::task::AbortHandle;

/// What a subscription keeps alive.
pub(crate) enum Inner {
    /// A timeline subscription of the replica, held only for its `Drop`,
    /// which unregisters the listener.
    Timeline {
        /// The replica's subscription.
        _held: concord_node::Subscription,
    },
    /// The task forwarding node events; aborting it drops the listener.
    Events(AbortHandle),
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Inner::Events(task) = self {
            task.abort();
        }
    }
}

/// A live listener registration. Delivery stops when [`Subscription::cancel`]
/// is called or the object is dropped (garbage-collected in Kotlin and
/// Python, released in Swift; `close()` in Kotlin); call `cancel` to stop at
/// a known point.
#[derive(uniffi::Object)]
pub struct Subscription {
    inner: Mutex<Option<Inner>>,
}

impl Subscription {
    pub(crate) fn new(inner: Inner) -> Self {
        Self { inner: Mutex::new(Some(inner)) }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Inner>> {
        // The guarded value is only ever taken whole, so a poisoned lock still
        // holds a consistent value.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[uniffi::export]
impl Subscription {
    /// Stops delivery. A listener call already under way (on another
    /// thread) may still complete. Cancelling twice does nothing.
    pub fn cancel(&self) {
        let inner = self.lock().take();
        drop(inner);
    }

    /// Whether [`Subscription::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.lock().is_none()
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("cancelled", &self.is_cancelled()).finish()
    }
}
