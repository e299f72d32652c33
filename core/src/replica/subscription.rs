//! Timeline subscriptions: listeners that receive each committed
//! transaction's diffs, on the replica's thread, after the commit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::Replica;
use crate::ids::{Cursor, RoomId};
use crate::store::Store;
use crate::view::TimelineDiff;

/// Receives a room's timeline changes. Called on the thread that applied the
/// change, after it is durable; keep it quick (hand off to a channel).
pub trait TimelineListener: Send + Sync {
    /// Diffs of one committed change, in timeline order.
    fn on_diffs(&self, room: &RoomId, diffs: &[TimelineDiff]);
}

pub(super) type Listeners = Mutex<BTreeMap<u64, (RoomId, Arc<dyn TimelineListener>)>>;

/// A live timeline subscription; dropping it stops the deliveries.
pub struct Subscription {
    id: u64,
    listeners: Weak<Listeners>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("id", &self.id).finish()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(listeners) = self.listeners.upgrade() {
            lock(&listeners).remove(&self.id);
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Listeners run outside this lock, so a poisoned lock holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a diff sits in the timeline.
pub(super) fn diff_cursor(diff: &TimelineDiff) -> Cursor {
    match diff {
        TimelineDiff::Insert(m) | TimelineDiff::Update(m) => m.cursor,
        TimelineDiff::Remove { cursor, .. } => *cursor,
    }
}

impl<S: Store> Replica<S> {
    pub(super) fn announce(&self, diffs: BTreeMap<RoomId, Vec<TimelineDiff>>) {
        if diffs.is_empty() {
            return;
        }
        let listeners: Vec<(RoomId, Arc<dyn TimelineListener>)> =
            lock(&self.listeners).values().cloned().collect();
        for (room, mut diffs) in diffs {
            diffs.sort_by_key(diff_cursor);
            for (wanted, listener) in &listeners {
                if *wanted == room {
                    // A panicking listener must not take the replica down with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        listener.on_diffs(&room, &diffs)
                    }));
                }
            }
        }
    }

    /// Subscribes to a room's timeline diffs until the subscription is dropped.
    pub fn subscribe(
        &mut self,
        room: &RoomId,
        listener: Arc<dyn TimelineListener>,
    ) -> Subscription {
        let id = self.next_listener;
        self.next_listener += 1;
        lock(&self.listeners).insert(id, (*room, listener));
        Subscription { id, listeners: Arc::downgrade(&self.listeners) }
    }
}
