//! The room handle: one room of a running node. Every change is durable
//! when the call returns (the offline queue is the store itself) and is
//! gossiped at once if any peer is connected; otherwise catch-up delivers it
//! when one is.

use std::sync::Arc;

use concord_core::{
    Action, Anchor, AuditEntry, AuthorId, Cursor, DeliveryState, Draft, GovState, Invite, Message,
    MessageId, Role, RoomId, RoomInfo, Sent, SignalKind, Store, Subscription, TimelineListener,
};

use crate::actor::Presence;
use crate::error::{NodeError, Result};
use crate::node::Node;
use crate::ticket::RoomTicket;

/// A message as the timeline shows it: the rendered message, and for this
/// device's own messages how far it has got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineItem {
    /// The message.
    pub message: Message,
    /// Delivery state, for own messages only.
    pub delivery: Option<DeliveryState>,
}

/// `messages` as timeline items, with their delivery states.
fn items<S: Store>(
    replica: &concord_core::Replica<S>,
    room: &RoomId,
    messages: Vec<Message>,
) -> concord_core::Result<Vec<TimelineItem>> {
    let states = replica.delivery_states(room, &messages)?;
    Ok(messages
        .into_iter()
        .zip(states)
        .map(|(message, delivery)| TimelineItem { message, delivery })
        .collect())
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

/// One room of a running node. Cheap to clone.
pub struct Room<S: Store> {
    node: Node<S>,
    id: RoomId,
}

impl<S: Store> Clone for Room<S> {
    fn clone(&self) -> Self {
        Self { node: self.node.clone(), id: self.id }
    }
}

impl<S: Store> std::fmt::Debug for Room<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<S: Store + 'static> Room<S> {
    pub(crate) fn new(node: Node<S>, id: RoomId) -> Self {
        Self { node, id }
    }

    /// The room id.
    pub fn id(&self) -> RoomId {
        self.id
    }

    /// The node this room belongs to.
    pub fn node(&self) -> &Node<S> {
        &self.node
    }

    /// Runs a change on the replica (durable when it returns), then gossips
    /// it. A network failure does not fail the change: it is saved, and
    /// catch-up delivers it.
    async fn change<F>(&self, op: F) -> Result<MessageId>
    where
        F: FnOnce(&mut concord_core::Replica<S>, &RoomId) -> concord_core::Result<Sent>
            + Send
            + 'static,
    {
        let room = self.id;
        let sent = self.node.replica().try_call(move |r| op(r, &room)).await?;
        match self.node.publish(room, &sent.delivery).await {
            Ok(_) => {}
            Err(NodeError::Network(e)) => tracing::debug!(%room, error = %e, "gossip failed"),
            Err(e) => return Err(e),
        }
        Ok(sent.id)
    }

    /// Sends a text message.
    pub async fn send(&self, text: &str) -> Result<MessageId> {
        self.send_draft(Draft::text(text)).await
    }

    /// Sends a message with replies or attachments.
    pub async fn send_draft(&self, draft: Draft) -> Result<MessageId> {
        self.change(move |r, room| r.post(room, draft)).await
    }

    /// Sends a text message in reply to `to`.
    pub async fn reply(&self, to: MessageId, text: &str) -> Result<MessageId> {
        self.send_draft(Draft { reply_to: Some(to), ..Draft::text(text) }).await
    }

    /// Edits an own message.
    pub async fn edit(&self, id: MessageId, text: &str) -> Result<()> {
        let text = text.to_owned();
        self.change(move |r, room| r.edit(room, &id, &text)).await.map(drop)
    }

    /// Deletes an own message: its content is erased here and everywhere it
    /// arrives.
    pub async fn delete(&self, id: MessageId) -> Result<()> {
        self.change(move |r, room| r.delete(room, &id)).await.map(drop)
    }

    /// Adds a reaction.
    pub async fn react(&self, id: MessageId, emoji: &str) -> Result<()> {
        let emoji = emoji.to_owned();
        self.change(move |r, room| r.react(room, &id, &emoji)).await.map(drop)
    }

    /// Removes a reaction.
    pub async fn unreact(&self, id: MessageId, emoji: &str) -> Result<()> {
        let emoji = emoji.to_owned();
        self.change(move |r, room| r.unreact(room, &id, &emoji)).await.map(drop)
    }

    /// Marks everything up to `id` read (other members see it as "seen").
    pub async fn mark_read(&self, id: MessageId) -> Result<()> {
        self.change(move |r, room| r.mark_read(room, &id)).await.map(drop)
    }

    /// Says this device is typing (or stopped).
    pub async fn typing(&self, on: bool) -> Result<()> {
        let kind = if on { SignalKind::Typing } else { SignalKind::StoppedTyping };
        self.node.signal(self.id, kind).await.map(drop)
    }

    /// A page of up to `limit` messages, with delivery states.
    pub async fn page(&self, anchor: Anchor, limit: usize) -> Result<TimelinePage> {
        let room = self.id;
        let page = self
            .node
            .replica()
            .try_call(move |r| {
                let page = r.page(&room, anchor, limit)?;
                Ok(TimelinePage {
                    items: items(r, &room, page.messages)?,
                    has_more: page.has_more,
                    fetching_older: page.fetching_older,
                })
            })
            .await?;
        if page.fetching_older {
            self.node.fetch_history().await?;
        }
        Ok(page)
    }

    /// Every live message, oldest first, with delivery states.
    pub async fn timeline(&self) -> Result<Vec<TimelineItem>> {
        let room = self.id;
        self.node
            .replica()
            .try_call(move |r| {
                let messages = r.snapshot(&room)?.messages;
                items(r, &room, messages)
            })
            .await
    }

    /// One message by id, with its delivery state.
    pub async fn message(&self, id: MessageId) -> Result<Option<TimelineItem>> {
        let room = self.id;
        self.node
            .replica()
            .try_call(move |r| {
                let message = r.message_by_id(&room, &id)?;
                Ok(items(r, &room, message.into_iter().collect())?.pop())
            })
            .await
    }

    /// Subscribes to timeline diffs until the subscription is dropped. The
    /// listener runs on the replica thread: keep it quick.
    pub async fn subscribe(&self, listener: Arc<dyn TimelineListener>) -> Result<Subscription> {
        let room = self.id;
        self.node.replica().call(move |r| r.subscribe(&room, listener)).await
    }

    /// Messages by others after this device's read marker.
    pub async fn unread_count(&self) -> Result<u64> {
        let room = self.id;
        self.node.replica().try_call(move |r| r.unread_count(&room)).await
    }

    /// Name, creator and creation time.
    pub async fn info(&self) -> Result<RoomInfo> {
        let room = self.id;
        let rooms = self.node.rooms().await?;
        rooms
            .into_iter()
            .find(|r| r.id == room)
            .ok_or(NodeError::Core(concord_core::Error::UnknownRoom(room)))
    }

    /// A ticket others can join with.
    pub async fn ticket(&self) -> Result<RoomTicket> {
        self.node.ticket(self.id).await
    }

    /// Other members' presence and typing.
    pub async fn presence(&self) -> Result<Vec<Presence>> {
        self.node.presence(self.id).await
    }

    // ----- governance ----------------------------------------------------------

    /// Performs a governance action if this device's role allows it, and
    /// gossips the signed change (catch-up carries it otherwise).
    pub async fn govern(&self, action: Action) -> Result<()> {
        let room = self.id;
        let change = self.node.replica().try_call(move |r| r.govern(&room, action)).await?;
        self.node.publish_governance(room, change.as_bytes().to_vec()).await
    }

    /// Adds a member with `role`, or changes a member's role.
    pub async fn set_role(&self, member: AuthorId, role: Role) -> Result<()> {
        self.govern(Action::SetRole { member, role }).await
    }

    /// Removes a member (or, for this device's own key, leaves).
    pub async fn kick(&self, member: AuthorId) -> Result<()> {
        self.govern(Action::Remove { member }).await
    }

    /// Bans a key: removes it and keeps it out.
    pub async fn ban(&self, member: AuthorId) -> Result<()> {
        self.govern(Action::Ban { member }).await
    }

    /// Lifts a ban.
    pub async fn unban(&self, member: AuthorId) -> Result<()> {
        self.govern(Action::Unban { member }).await
    }

    /// Renames the room.
    pub async fn set_name(&self, name: &str) -> Result<()> {
        self.govern(Action::SetName(name.to_owned())).await
    }

    /// Sets the room's topic.
    pub async fn set_topic(&self, topic: &str) -> Result<()> {
        self.govern(Action::SetTopic(topic.to_owned())).await
    }

    /// Issues and registers an invite: for `invitee` only, or for whoever
    /// redeems it first; valid until `expires_millis` if given.
    pub async fn invite(
        &self,
        role: Role,
        invitee: Option<AuthorId>,
        expires_millis: Option<u64>,
    ) -> Result<Invite> {
        let room = self.id;
        let (invite, change) = self
            .node
            .replica()
            .try_call(move |r| r.invite(&room, role, invitee, expires_millis))
            .await?;
        self.node.publish_governance(room, change.as_bytes().to_vec()).await?;
        Ok(invite)
    }

    /// Issues and registers an invite like [`Room::invite`], and returns
    /// this room's ticket ([`Room::ticket`]) carrying it: whoever joins with
    /// the ticket ([`Node::join_ticket`]) becomes a member by itself.
    pub async fn invite_ticket(
        &self,
        role: Role,
        invitee: Option<AuthorId>,
        expires_millis: Option<u64>,
    ) -> Result<RoomTicket> {
        // The ticket first: an invite is registered only if its ticket can
        // be made.
        let ticket = self.ticket().await?;
        let invite = self.invite(role, invitee, expires_millis).await?;
        Ok(ticket.with_invite(invite)?)
    }

    /// Joins this room by redeeming an invite (its governance must have
    /// arrived: a catch-up with any member brings it).
    pub async fn redeem(&self, invite: Invite) -> Result<()> {
        self.govern(Action::Join(invite)).await
    }

    /// The room's governance now: members and roles, bans, open invites,
    /// name, topic, settings.
    pub async fn governance(&self) -> Result<GovState> {
        let room = self.id;
        self.node.replica().try_call(move |r| Ok(r.governance(&room)?.clone())).await
    }

    /// The audit trail: who changed the room's governance, what and when.
    pub async fn audit(&self) -> Result<Vec<AuditEntry>> {
        let room = self.id;
        self.node.replica().try_call(move |r| r.governance_history(&room)).await
    }
}
