//! The room handle: one room of a running node. Every change is durable
//! when the call returns (the offline queue is the store itself) and is
//! gossiped at once if any peer is connected; otherwise catch-up delivers it
//! when one is.

use std::sync::Arc;

use concord_core::{
    Action, Anchor, AuditEntry, AuthorId, Draft, GovState, Invite, MessageId, Op, Role, RoomId,
    RoomInfo, SignalKind, Store, Subscription, TimelineItem, TimelineListener, TimelinePage,
};

use crate::actor::Presence;
use crate::error::{NodeError, Result};
use crate::node::Node;
use crate::ticket::RoomTicket;

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
    async fn change(&self, op: Op) -> Result<MessageId> {
        let room = self.id;
        let sent = self.node.replica().commit(op).await?;
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
        self.change(Op::Post { room: self.id, draft }).await
    }

    /// Sends a text message in reply to `to`.
    pub async fn reply(&self, to: MessageId, text: &str) -> Result<MessageId> {
        self.send_draft(Draft { reply_to: Some(to), ..Draft::text(text) }).await
    }

    /// Edits an own message.
    pub async fn edit(&self, id: MessageId, text: &str) -> Result<()> {
        self.change(Op::Edit { room: self.id, id, text: text.to_owned() }).await.map(drop)
    }

    /// Deletes an own message: its content is erased here and everywhere it
    /// arrives.
    pub async fn delete(&self, id: MessageId) -> Result<()> {
        self.change(Op::Delete { room: self.id, id }).await.map(drop)
    }

    /// Adds a reaction.
    pub async fn react(&self, id: MessageId, emoji: &str) -> Result<()> {
        let emoji = emoji.to_owned();
        self.change(Op::React { room: self.id, id, emoji, on: true }).await.map(drop)
    }

    /// Removes a reaction.
    pub async fn unreact(&self, id: MessageId, emoji: &str) -> Result<()> {
        let emoji = emoji.to_owned();
        self.change(Op::React { room: self.id, id, emoji, on: false }).await.map(drop)
    }

    /// Marks everything up to `id` read (other members see it as "seen").
    pub async fn mark_read(&self, id: MessageId) -> Result<()> {
        self.change(Op::MarkRead { room: self.id, id }).await.map(drop)
    }

    /// Says this device is typing (or stopped).
    pub async fn typing(&self, on: bool) -> Result<()> {
        let kind = if on { SignalKind::Typing } else { SignalKind::StoppedTyping };
        self.node.signal(self.id, kind).await.map(drop)
    }

    /// A page of up to `limit` messages, with delivery states.
    pub async fn page(&self, anchor: Anchor, limit: usize) -> Result<TimelinePage> {
        let page = self.node.replica().timeline_page(self.id, anchor, limit).await?;
        if page.fetching_older {
            self.node.fetch_history().await?;
        }
        Ok(page)
    }

    /// Every live message, oldest first, with delivery states.
    pub async fn timeline(&self) -> Result<Vec<TimelineItem>> {
        self.node.replica().timeline(self.id).await
    }

    /// One message by id, with its delivery state.
    pub async fn message(&self, id: MessageId) -> Result<Option<TimelineItem>> {
        self.node.replica().timeline_item(self.id, id).await
    }

    /// Subscribes to timeline diffs until the subscription is dropped. The
    /// listener runs on the replica thread: keep it quick.
    pub async fn subscribe(&self, listener: Arc<dyn TimelineListener>) -> Result<Subscription> {
        self.node.replica().subscribe(self.id, listener).await
    }

    /// Messages by others after this device's read marker.
    pub async fn unread_count(&self) -> Result<u64> {
        self.node.replica().unread_count(self.id).await
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
        let change = self.node.replica().govern(room, action).await?;
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
        let (invite, change) =
            self.node.replica().invite(room, role, invitee, expires_millis).await?;
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
        self.node.replica().governance(self.id).await
    }

    /// The audit trail: who changed the room's governance, what and when.
    pub async fn audit(&self) -> Result<Vec<AuditEntry>> {
        self.node.replica().audit(self.id).await
    }
}
