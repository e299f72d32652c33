//! Delivery state of this device's own messages, and ephemeral signals.
//!
//! Nothing is queued apart from the store: every own change is durable the
//! moment its call returns, and the node hands it to any peer it reaches
//! (live by gossip, later by catch-up). What the replica remembers is one
//! watermark per room in `reached-1`: the newest own stamp that a finished
//! catch-up proved another device holds. Own messages stamped at or before it
//! have reached a peer or relay; read markers of other authors at or past a
//! message say who has seen it.

use super::{read_u64, Anchor, Replica};
use crate::error::Result;
use crate::ids::{Cursor, Hlc, MessageId, RoomId};
use crate::signal::{Signal, SignalKind};
use crate::store::{Store, Tree, WriteBatch};
use crate::view::Message;

/// Where one of this device's own messages has got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeliveryState {
    /// Durable on this device only.
    Saved,
    /// Held by at least one other device (a peer or a relay).
    Reached,
    /// Marked read by this many other members.
    SeenBy(u32),
}

impl<S: Store> Replica<S> {
    /// The newest stamp this replica has issued or observed. A catch-up that
    /// starts now and finishes proves every own envelope up to it delivered.
    pub fn last_stamp(&self) -> Hlc {
        self.hlc.last()
    }

    /// The newest own stamp known to have reached another device.
    pub fn reached(&self, room: &RoomId) -> Result<Option<Hlc>> {
        self.check_room(room)?;
        Ok(read_u64(self.store.get(Tree::Reached, room.as_bytes())?, Tree::Reached)?
            .map(Hlc::from_u64))
    }

    /// Records that every own envelope of `room` stamped at or before `upto`
    /// is held by another device. The watermark only moves forward; returns
    /// whether it moved.
    pub fn mark_reached(&mut self, room: &RoomId, upto: Hlc) -> Result<bool> {
        if self.reached(room)?.is_some_and(|r| r >= upto) {
            return Ok(false);
        }
        let mut batch = WriteBatch::new();
        batch.put(Tree::Reached, room.as_bytes().to_vec(), upto.as_u64().to_be_bytes());
        self.store.commit(batch)?;
        Ok(true)
    }

    /// The delivery state of each message, `None` for other authors'
    /// messages.
    pub fn delivery_states(
        &self,
        room: &RoomId,
        messages: &[Message],
    ) -> Result<Vec<Option<DeliveryState>>> {
        let me = self.author();
        if messages.iter().all(|m| m.author != me) {
            return Ok(vec![None; messages.len()]);
        }
        let reached = self.reached(room)?;
        let markers = self.read_markers(room)?;
        Ok(messages
            .iter()
            .map(|m| {
                if m.author != me {
                    return None;
                }
                let seen = markers.iter().filter(|(a, c)| **a != me && **c >= m.cursor).count();
                Some(if seen > 0 {
                    DeliveryState::SeenBy(u32::try_from(seen).unwrap_or(u32::MAX))
                } else if reached.is_some_and(|r| m.hlc <= r) {
                    DeliveryState::Reached
                } else {
                    DeliveryState::Saved
                })
            })
            .collect())
    }

    /// A signed ephemeral signal from this device about `room`, to gossip.
    /// It is not stored.
    pub fn signal(&self, room: &RoomId, kind: SignalKind) -> Result<Vec<u8>> {
        self.check_room(room)?;
        Ok(Signal::sign(&self.key, *room, kind, self.clock.now_millis()))
    }
}

/// A message as a timeline shows it: the rendered message, and for this
/// device's own messages how far it has got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineItem {
    /// The message.
    pub message: Message,
    /// Delivery state, for own messages only.
    pub delivery: Option<DeliveryState>,
}

/// A page of the timeline, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelinePage {
    /// The items, newest first.
    pub items: Vec<TimelineItem>,
    /// Whether more messages lie beyond this page in the direction asked.
    pub has_more: bool,
    /// Whether older history is being fetched from peers (it reaches the
    /// timeline subscription as it arrives).
    pub fetching_older: bool,
}

impl TimelinePage {
    /// The cursor to ask for the next older page with, if there is one.
    pub fn older(&self) -> Option<Cursor> {
        self.has_more.then(|| self.items.last().map(|i| i.message.cursor)).flatten()
    }
}

impl<S: Store> Replica<S> {
    /// `messages` as timeline items, with their delivery states.
    fn timeline_items(&self, room: &RoomId, messages: Vec<Message>) -> Result<Vec<TimelineItem>> {
        let states = self.delivery_states(room, &messages)?;
        Ok(messages
            .into_iter()
            .zip(states)
            .map(|(message, delivery)| TimelineItem { message, delivery })
            .collect())
    }

    /// A page of up to `limit` timeline items ([`Replica::page`] with the
    /// delivery states of own messages).
    pub fn timeline_page(
        &self,
        room: &RoomId,
        anchor: Anchor,
        limit: usize,
    ) -> Result<TimelinePage> {
        let page = self.page(room, anchor, limit)?;
        Ok(TimelinePage {
            items: self.timeline_items(room, page.messages)?,
            has_more: page.has_more,
            fetching_older: page.fetching_older,
        })
    }

    /// Every live message as a timeline item, oldest first.
    pub fn timeline(&self, room: &RoomId) -> Result<Vec<TimelineItem>> {
        let messages = self.snapshot(room)?.messages;
        self.timeline_items(room, messages)
    }

    /// One live message as a timeline item.
    pub fn timeline_item(&self, room: &RoomId, id: &MessageId) -> Result<Option<TimelineItem>> {
        let message = self.message_by_id(room, id)?;
        Ok(self.timeline_items(room, message.into_iter().collect())?.pop())
    }
}
