//! [`Room`]: one room of a client, and the foreign timeline listener.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use concord_node::core::SledStore;
use concord_node::{Anchor, RoomId};

use crate::error::{self, Result};
use crate::records::{
    AuditEntry, MemberRole, MessageItem, Page, RoomGovernance, RoomInfo, TimelineDiff,
};
use crate::runtime::run;
use crate::subscription::{Inner, Subscription};

/// Receives a room's timeline changes. It is called on the replica's own
/// thread, right after each change is saved, so it must be quick and must
/// not wait for the client (hand the diffs to the UI thread instead).
#[uniffi::export(foreign)]
pub trait TimelineListener: Send + Sync {
    /// The diffs of one saved change, in timeline order. An exception it
    /// throws is logged and dropped; later changes are still delivered.
    fn on_diffs(&self, room_id: String, diffs: Vec<TimelineDiff>) -> Result<()>;
}

/// Adapts a foreign [`TimelineListener`] to the node's listener trait.
struct Forward(Arc<dyn TimelineListener>);

impl concord_node::TimelineListener for Forward {
    fn on_diffs(&self, room: &RoomId, diffs: &[concord_node::TimelineDiff]) {
        let diffs: Vec<_> = diffs.iter().filter_map(TimelineDiff::from_node).collect();
        if diffs.is_empty() {
            return;
        }
        // The listener's exceptions come back as errors; the unwind guard is
        // for anything else in the foreign call, which must never unwind
        // through the replica thread.
        match catch_unwind(AssertUnwindSafe(|| self.0.on_diffs(room.to_string(), diffs))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%room, error = %e, "a timeline listener threw"),
            Err(_) => tracing::warn!(%room, "a timeline listener call panicked"),
        }
    }
}

/// One room of a `Client`. Every change is saved on this device
/// when the call returns, and reaches peers now or whenever one connects.
/// Message ids and cursors are the strings [`MessageItem`] gives.
#[derive(uniffi::Object)]
pub struct Room {
    room: concord_node::Room<SledStore>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room").field("id", &self.room.id()).finish()
    }
}

impl Room {
    pub(crate) fn new(room: concord_node::Room<SledStore>) -> Self {
        Self { room }
    }
}

#[uniffi::export]
impl Room {
    /// The room id (64 hex digits).
    pub fn id(&self) -> String {
        self.room.id().to_string()
    }

    /// Name, creator and creation time.
    pub async fn info(&self) -> Result<RoomInfo> {
        let room = self.room.clone();
        run(async move { Ok(room.info().await?.into()) }).await
    }

    /// A ticket others can join with: the room and this device's addresses.
    pub async fn ticket(&self) -> Result<String> {
        let room = self.room.clone();
        run(async move { Ok(room.ticket().await?.to_string()) }).await
    }

    /// Sends a text message; returns its id.
    pub async fn send(&self, text: String) -> Result<String> {
        let room = self.room.clone();
        run(async move { Ok(room.send(&text).await?.to_string()) }).await
    }

    /// Sends a text message in reply to `reply_to`; returns its id.
    pub async fn reply(&self, reply_to: String, text: String) -> Result<String> {
        let (room, to) = (self.room.clone(), error::message_id(&reply_to)?);
        run(async move { Ok(room.reply(to, &text).await?.to_string()) }).await
    }

    /// Replaces the text of an own message.
    pub async fn edit(&self, message_id: String, text: String) -> Result<()> {
        let (room, id) = (self.room.clone(), error::message_id(&message_id)?);
        run(async move { Ok(room.edit(id, &text).await?) }).await
    }

    /// Deletes an own message for everyone: its content is erased here and
    /// on every device it reaches.
    pub async fn delete(&self, message_id: String) -> Result<()> {
        let (room, id) = (self.room.clone(), error::message_id(&message_id)?);
        run(async move { Ok(room.delete(id).await?) }).await
    }

    /// The room's governance now.
    pub async fn governance(&self) -> Result<RoomGovernance> {
        let room = self.room.clone();
        run(async move { Ok(RoomGovernance::from(&room.governance().await?)) }).await
    }

    /// The audit trail: who changed the room's governance, what and when,
    /// oldest first.
    pub async fn audit(&self) -> Result<Vec<AuditEntry>> {
        let room = self.room.clone();
        run(async move { Ok(room.audit().await?.into_iter().map(AuditEntry::from).collect()) })
            .await
    }

    /// Adds a member with `role`, or changes a member's role.
    pub async fn set_role(&self, author_id: String, role: MemberRole) -> Result<()> {
        let (room, author) = (self.room.clone(), error::author_id(&author_id)?);
        run(async move { Ok(room.set_role(author, role.into()).await?) }).await
    }

    /// Removes a member (this device's own id: leaves the room).
    pub async fn kick(&self, author_id: String) -> Result<()> {
        let (room, author) = (self.room.clone(), error::author_id(&author_id)?);
        run(async move { Ok(room.kick(author).await?) }).await
    }

    /// Bans an author id: removes it and keeps it out.
    pub async fn ban(&self, author_id: String) -> Result<()> {
        let (room, author) = (self.room.clone(), error::author_id(&author_id)?);
        run(async move { Ok(room.ban(author).await?) }).await
    }

    /// Lifts a ban.
    pub async fn unban(&self, author_id: String) -> Result<()> {
        let (room, author) = (self.room.clone(), error::author_id(&author_id)?);
        run(async move { Ok(room.unban(author).await?) }).await
    }

    /// Renames the room.
    pub async fn set_name(&self, name: String) -> Result<()> {
        let room = self.room.clone();
        run(async move { Ok(room.set_name(&name).await?) }).await
    }

    /// Sets the room's topic.
    pub async fn set_topic(&self, topic: String) -> Result<()> {
        let room = self.room.clone();
        run(async move { Ok(room.set_topic(&topic).await?) }).await
    }

    /// Issues and registers an invite with `role`, for `invitee_id` only or
    /// for whoever redeems it first, valid until `expires_ms` if given.
    /// Returns it as hex, to hand to the invitee.
    pub async fn invite(
        &self,
        role: MemberRole,
        invitee_id: Option<String>,
        expires_ms: Option<u64>,
    ) -> Result<String> {
        let invitee = invitee_id.as_deref().map(error::author_id).transpose()?;
        let room = self.room.clone();
        run(async move {
            let invite = room.invite(role.into(), invitee, expires_ms).await?;
            Ok(hex::encode(invite.as_bytes()))
        })
        .await
    }

    /// Issues and registers an invite like [`Room::invite`], and returns
    /// this room's ticket carrying it: whoever joins with it
    /// (`Client::join_room`) becomes a member by itself once the room's
    /// governance reaches them.
    pub async fn invite_ticket(
        &self,
        role: MemberRole,
        invitee_id: Option<String>,
        expires_ms: Option<u64>,
    ) -> Result<String> {
        let invitee = invitee_id.as_deref().map(error::author_id).transpose()?;
        let room = self.room.clone();
        run(async move {
            Ok(room.invite_ticket(role.into(), invitee, expires_ms).await?.to_string())
        })
        .await
    }

    /// Joins this room as a member by redeeming an invite (hex, as
    /// `invite` gives). The room's governance must have arrived: a
    /// catch-up with any member brings it.
    pub async fn redeem(&self, invite: String) -> Result<()> {
        let (room, invite) = (self.room.clone(), error::invite(&invite)?);
        run(async move { Ok(room.redeem(invite).await?) }).await
    }

    /// Adds a reaction.
    pub async fn react(&self, message_id: String, emoji: String) -> Result<()> {
        let (room, id) = (self.room.clone(), error::message_id(&message_id)?);
        run(async move { Ok(room.react(id, &emoji).await?) }).await
    }

    /// Removes a reaction.
    pub async fn unreact(&self, message_id: String, emoji: String) -> Result<()> {
        let (room, id) = (self.room.clone(), error::message_id(&message_id)?);
        run(async move { Ok(room.unreact(id, &emoji).await?) }).await
    }

    /// Marks everything up to `message_id` read (other members see it as
    /// "seen").
    pub async fn mark_read(&self, message_id: String) -> Result<()> {
        let (room, id) = (self.room.clone(), error::message_id(&message_id)?);
        run(async move { Ok(room.mark_read(id).await?) }).await
    }

    /// Tells other members this device is typing (or stopped).
    pub async fn typing(&self, typing: bool) -> Result<()> {
        let room = self.room.clone();
        run(async move { Ok(room.typing(typing).await?) }).await
    }

    /// Up to `limit` messages, newest first: the newest ones when `before`
    /// is none, else those older than the cursor `before` (a
    /// [`Page::older`] or a [`MessageItem::cursor`]).
    pub async fn page(&self, before: Option<String>, limit: u32) -> Result<Page> {
        let anchor = match before {
            Some(c) => Anchor::Before(error::cursor(&c)?),
            None => Anchor::Latest,
        };
        let room = self.room.clone();
        run(async move { Ok(room.page(anchor, limit as usize).await?.into()) }).await
    }

    /// One live message by id, or none if it does not exist (or was
    /// deleted).
    pub async fn message(&self, message_id: String) -> Result<Option<MessageItem>> {
        let (room, id) = (self.room.clone(), error::message_id(&message_id)?);
        run(async move { Ok(room.message(id).await?.map(Into::into)) }).await
    }

    /// Messages by others after this device's read marker.
    pub async fn unread_count(&self) -> Result<u64> {
        let room = self.room.clone();
        run(async move { Ok(room.unread_count().await?) }).await
    }

    /// Delivers this room's timeline diffs to `listener` until the returned
    /// subscription is cancelled or dropped.
    pub async fn subscribe(
        &self,
        listener: Arc<dyn TimelineListener>,
    ) -> Result<Arc<Subscription>> {
        let room = self.room.clone();
        run(async move {
            let sub = room.subscribe(Arc::new(Forward(listener))).await?;
            Ok(Arc::new(Subscription::new(Inner::Timeline { _held: sub })))
        })
        .await
    }
}
