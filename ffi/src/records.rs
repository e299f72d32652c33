//! Flat records and enums that cross the boundary, and their conversions
//! from the node's types. Ids, cursors and addresses travel as strings (the
//! node's `Display` forms, parsed back by `error.rs`); times as Unix
//! milliseconds.

use concord_node::core::{Reaction, SyncStats};
use concord_node::{Message, NodeEvent, TimelineItem, TimelinePage};

/// How a `Client` runs. Every field has a default, so
/// `ClientConfig()` in Python or Kotlin is what a phone or desktop app
/// wants.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ClientConfig {
    /// Find peers on the local network by mDNS. Tests turn it off so that
    /// unrelated clients on one machine do not find each other.
    #[uniffi(default = true)]
    pub mdns: bool,
    /// Period of catch-up with every connected peer, in milliseconds (more
    /// than zero). Catch-up also runs on every new connection.
    #[uniffi(default = 30000)]
    pub sync_interval_ms: u64,
    /// Multiaddrs to listen on once open, like `/ip4/0.0.0.0/tcp/0`.
    #[uniffi(default)]
    pub listen_addresses: Vec<String>,
    /// The store's page cache, in MiB (more than zero). It bounds what the
    /// store keeps in memory: with the default, 4 (the node's
    /// `DEFAULT_STORE_CACHE_BYTES`), about 7 MiB once full. A desktop app
    /// with big rooms may give it more, for fewer reads from the file.
    #[uniffi(default = 4)]
    pub store_cache_mib: u32,
    /// Items the room documents kept in memory may hold in all (each item
    /// one post, edit, delete, reaction or read marker, about 400 bytes):
    /// with the default, 65536, about 25 MiB. The documents in use stay
    /// whatever their size; the least recently used others go first and
    /// are rebuilt from the store when needed again.
    #[uniffi(default = 65536)]
    pub doc_cache_items: u64,
}

// `store_cache_mib`'s and `doc_cache_items`' defaults are the node's.
const _: () = assert!(concord_node::DEFAULT_STORE_CACHE_BYTES == 4 << 20);
const _: () = assert!(concord_node::core::DEFAULT_DOC_CACHE_ITEMS == 65536);

/// A room this device holds.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RoomInfo {
    /// The room id (64 hex digits).
    pub id: String,
    /// The name given at creation.
    pub name: String,
    /// The creator's author id (64 hex digits).
    pub creator_id: String,
    /// When it was created, in Unix milliseconds.
    pub created_ms: u64,
    /// Whether its content is end-to-end encrypted: relays store it and
    /// cannot read it. Fixed when the room is created.
    pub encrypted: bool,
}

/// How a new room is made ([`crate::Client::create_room_with_options`]).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RoomOptions {
    /// End-to-end encrypted (what `create_room` makes). False makes a room
    /// that relays and anyone holding its ticket can read.
    pub encrypted: bool,
    /// In an encrypted room, whether new members get keys for messages
    /// sent before they joined. Off by default.
    pub share_history: bool,
    /// None for an open room (anyone with the ticket who is not banned may
    /// post); otherwise a room of members only, with these members beside
    /// this device, its admin.
    pub members: Option<Vec<Member>>,
}

impl From<concord_node::RoomInfo> for RoomInfo {
    fn from(r: concord_node::RoomInfo) -> Self {
        Self {
            id: r.id.to_string(),
            name: r.name,
            creator_id: r.creator.to_string(),
            created_ms: r.created.millis(),
            encrypted: r.encrypted,
        }
    }
}

/// Where one of this device's own messages has got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum DeliveryState {
    /// Durable on this device only.
    Saved,
    /// Held by at least one other device (a peer or a relay).
    Reached,
    /// Marked read by this many other members.
    SeenBy {
        /// How many.
        count: u32,
    },
}

impl From<concord_node::DeliveryState> for DeliveryState {
    fn from(d: concord_node::DeliveryState) -> Self {
        match d {
            concord_node::DeliveryState::Saved => Self::Saved,
            concord_node::DeliveryState::Reached => Self::Reached,
            concord_node::DeliveryState::SeenBy(count) => Self::SeenBy { count },
        }
    }
}

/// The authors who reacted to a message with one emoji.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ReactionItem {
    /// The emoji (or short code).
    pub emoji: String,
    /// Who reacted (author ids).
    pub author_ids: Vec<String>,
}

impl From<Reaction> for ReactionItem {
    fn from(r: Reaction) -> Self {
        Self { emoji: r.emoji, author_ids: r.authors.iter().map(ToString::to_string).collect() }
    }
}

/// A live message as the timeline shows it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct MessageItem {
    /// The message id (a UUID string).
    pub id: String,
    /// The author id (64 hex digits).
    pub author_id: String,
    /// When it was posted, in Unix milliseconds.
    pub timestamp_ms: u64,
    /// Its place in the timeline, for `Room::page`.
    pub cursor: String,
    /// The text, or none while its body has not arrived from a peer or
    /// while it waits for its key.
    pub body: Option<String>,
    /// In an encrypted room: the message arrived but the key to read it
    /// has not yet; it has been asked for, and the message is shown (once,
    /// through the timeline listener) when it comes.
    pub waiting_for_key: bool,
    /// The id of the message it replies to.
    pub reply_to: Option<String>,
    /// When it was last edited, in Unix milliseconds.
    pub edited_ms: Option<u64>,
    /// Reactions, by emoji.
    pub reactions: Vec<ReactionItem>,
    /// Hashes of its attachments (64 hex digits each).
    pub attachments: Vec<String>,
    /// For this device's own messages, how far it has got; none for others'
    /// messages and in timeline diffs.
    pub delivery: Option<DeliveryState>,
}

impl MessageItem {
    pub(crate) fn new(m: Message, delivery: Option<concord_node::DeliveryState>) -> Self {
        Self {
            id: m.id.to_string(),
            author_id: m.author.to_string(),
            timestamp_ms: m.hlc.millis(),
            cursor: m.cursor.to_string(),
            body: m.body,
            waiting_for_key: m.waiting_for_key,
            reply_to: m.reply_to.map(|id| id.to_string()),
            edited_ms: m.edited.map(|h| h.millis()),
            reactions: m.reactions.into_iter().map(Into::into).collect(),
            attachments: m.attachments.iter().map(ToString::to_string).collect(),
            delivery: delivery.map(Into::into),
        }
    }
}

impl From<TimelineItem> for MessageItem {
    fn from(i: TimelineItem) -> Self {
        Self::new(i.message, i.delivery)
    }
}

/// A page of the timeline, newest first.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Page {
    /// The messages, newest first.
    pub items: Vec<MessageItem>,
    /// Whether older messages lie beyond this page.
    pub has_more: bool,
    /// Whether older history is being fetched from peers (it reaches the
    /// timeline listener as it arrives).
    pub fetching_older: bool,
    /// The cursor to ask for the next older page with, if there is one.
    pub older: Option<String>,
}

impl From<TimelinePage> for Page {
    fn from(p: TimelinePage) -> Self {
        let older = p.older().map(|c| c.to_string());
        Self {
            items: p.items.into_iter().map(Into::into).collect(),
            has_more: p.has_more,
            fetching_older: p.fetching_older,
            older,
        }
    }
}

/// A change to a room's timeline.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum TimelineDiff {
    /// A message appeared.
    Insert {
        /// The message.
        item: MessageItem,
    },
    /// A message changed (edit, reaction, body arrived).
    Update {
        /// The message as it is now.
        item: MessageItem,
    },
    /// A message was deleted; its content is gone.
    Remove {
        /// Its id.
        id: String,
        /// Where it was.
        cursor: String,
    },
}

impl TimelineDiff {
    /// The diff, or none for a kind of diff these bindings do not know.
    pub(crate) fn from_node(d: &concord_node::TimelineDiff) -> Option<Self> {
        Some(match d {
            concord_node::TimelineDiff::Insert(m) => {
                Self::Insert { item: MessageItem::new(m.clone(), None) }
            }
            concord_node::TimelineDiff::Update(m) => {
                Self::Update { item: MessageItem::new(m.clone(), None) }
            }
            concord_node::TimelineDiff::Remove { id, cursor } => {
                Self::Remove { id: id.to_string(), cursor: cursor.to_string() }
            }
            _ => return None,
        })
    }
}

/// What another member's device said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum SignalKind {
    /// Started typing.
    Typing,
    /// Stopped typing.
    StoppedTyping,
    /// Is online (sent periodically).
    Online,
    /// Is going offline.
    Offline,
}

impl SignalKind {
    fn from_node(k: concord_node::SignalKind) -> Option<Self> {
        Some(match k {
            concord_node::SignalKind::Typing => Self::Typing,
            concord_node::SignalKind::StoppedTyping => Self::StoppedTyping,
            concord_node::SignalKind::Online => Self::Online,
            concord_node::SignalKind::Offline => Self::Offline,
            _ => return None,
        })
    }
}

/// What a client tells its app: peers, sync progress, delivery, presence,
/// and how redeeming a ticket's invite ended.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum ClientEvent {
    /// A connection to a new peer was established.
    PeerConnected {
        /// The peer id.
        peer_id: String,
    },
    /// The last connection to a peer closed.
    PeerLost {
        /// The peer id.
        peer_id: String,
    },
    /// mDNS found a peer on the local network (the client dials it).
    Discovered {
        /// The peer id.
        peer_id: String,
    },
    /// A catch-up with a peer about a room finished.
    Synced {
        /// The peer id.
        peer_id: String,
        /// The room id.
        room_id: String,
        /// Envelopes received and applied.
        envelopes_applied: u64,
        /// Envelopes sent.
        envelopes_sent: u64,
        /// Envelopes received and refused (forged or malformed).
        envelopes_rejected: u64,
        /// Flights answered with governance only, because the peer's author
        /// may not read the room (not a member, removed or banned): nothing
        /// of the room was sent to it.
        flights_withheld: u32,
    },
    /// A catch-up failed (the peer went away, timed out, or misbehaved).
    SyncFailed {
        /// The peer id.
        peer_id: String,
        /// The room id.
        room_id: String,
        /// Why.
        error: String,
    },
    /// Own messages of a room posted at or before `upto_ms` reached another
    /// device: their delivery state moved from saved to reached.
    Delivered {
        /// The room id.
        room_id: String,
        /// The new watermark, in Unix milliseconds.
        upto_ms: u64,
    },
    /// Another member typed, stopped, came online or went offline.
    Signal {
        /// The room id.
        room_id: String,
        /// Who (an author id).
        author_id: String,
        /// What.
        kind: SignalKind,
    },
    /// A peer was banned for misbehaving over sync.
    Banned {
        /// The peer id.
        peer_id: String,
    },
    /// This device is a member of a room it joined with a ticket carrying
    /// an invite (or was one already).
    InviteRedeemed {
        /// The room id.
        room_id: String,
    },
    /// The invite of a ticket this device joined a room with did not make
    /// it a member: refused (used, revoked, expired, for another key), or
    /// the room's governance did not arrive in time.
    InviteFailed {
        /// The room id.
        room_id: String,
        /// Why.
        error: String,
    },
    /// The listener fell behind and this many events were dropped.
    Lagged {
        /// How many.
        missed: u64,
    },
}

impl ClientEvent {
    /// The event, or none for a kind of event these bindings do not know.
    pub(crate) fn from_node(e: NodeEvent) -> Option<Self> {
        Some(match e {
            NodeEvent::PeerConnected(p) => Self::PeerConnected { peer_id: p.to_string() },
            NodeEvent::PeerLost(p) => Self::PeerLost { peer_id: p.to_string() },
            NodeEvent::Discovered(p) => Self::Discovered { peer_id: p.to_string() },
            NodeEvent::Synced { peer, room, stats } => {
                let SyncStats {
                    envelopes_applied,
                    envelopes_sent,
                    envelopes_rejected,
                    flights_withheld,
                    ..
                } = stats;
                Self::Synced {
                    peer_id: peer.to_string(),
                    room_id: room.to_string(),
                    envelopes_applied,
                    envelopes_sent,
                    envelopes_rejected,
                    flights_withheld,
                }
            }
            NodeEvent::SyncFailed { peer, room, error } => {
                Self::SyncFailed { peer_id: peer.to_string(), room_id: room.to_string(), error }
            }
            NodeEvent::Delivered { room, upto } => {
                Self::Delivered { room_id: room.to_string(), upto_ms: upto.millis() }
            }
            NodeEvent::Signal { room, author, kind } => Self::Signal {
                room_id: room.to_string(),
                author_id: author.to_string(),
                kind: SignalKind::from_node(kind)?,
            },
            NodeEvent::Banned(p) => Self::Banned { peer_id: p.to_string() },
            NodeEvent::InviteRedeemed { room } => {
                Self::InviteRedeemed { room_id: room.to_string() }
            }
            NodeEvent::InviteFailed { room, error } => {
                Self::InviteFailed { room_id: room.to_string(), error }
            }
            _ => return None,
        })
    }
}

/// A member's role in a room's governance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum MemberRole {
    /// Reads and marks read; posts nothing.
    ReadOnly,
    /// Posts, edits and deletes own messages, reacts.
    Member,
    /// A member who also deletes anyone's message, sets the topic, and
    /// adds, removes and bans members.
    Moderator,
    /// Every right.
    Admin,
}

impl From<concord_node::Role> for MemberRole {
    fn from(r: concord_node::Role) -> Self {
        match r {
            concord_node::Role::ReadOnly => Self::ReadOnly,
            concord_node::Role::Member => Self::Member,
            concord_node::Role::Moderator => Self::Moderator,
            concord_node::Role::Admin => Self::Admin,
        }
    }
}

impl From<MemberRole> for concord_node::Role {
    fn from(r: MemberRole) -> Self {
        match r {
            MemberRole::ReadOnly => Self::ReadOnly,
            MemberRole::Member => Self::Member,
            MemberRole::Moderator => Self::Moderator,
            MemberRole::Admin => Self::Admin,
        }
    }
}

/// A member of a room and their role.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Member {
    /// The member's author id (64 hex digits).
    pub author_id: String,
    /// Their role.
    pub role: MemberRole,
}

/// A room's governance: name, topic, who is a member with which role, who is
/// banned, and the ids of open invites.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RoomGovernance {
    /// The room's name.
    pub name: String,
    /// The room's topic.
    pub topic: String,
    /// Whether anyone who is not banned may post (an open room), rather than
    /// listed members only.
    pub open: bool,
    /// Listed members, in author id order.
    pub members: Vec<Member>,
    /// Banned author ids.
    pub banned: Vec<String>,
    /// Ids of invites registered and not yet used or revoked.
    pub pending_invites: Vec<String>,
}

impl From<&concord_node::GovState> for RoomGovernance {
    fn from(s: &concord_node::GovState) -> Self {
        Self {
            name: s.name().to_owned(),
            topic: s.topic().to_owned(),
            open: s.is_open(),
            members: s
                .members()
                .iter()
                .map(|(a, m)| Member { author_id: a.to_string(), role: m.role.into() })
                .collect(),
            banned: s.bans().keys().map(ToString::to_string).collect(),
            pending_invites: s.pending_invites().map(|i| i.id().to_string()).collect(),
        }
    }
}

/// One entry of a room's audit trail.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct AuditEntry {
    /// Who made the change (64 hex digits).
    pub author_id: String,
    /// When, as its author stamped it, in Unix milliseconds.
    pub time_ms: i64,
    /// What it did, in a sentence.
    pub description: String,
}

impl From<concord_node::AuditEntry> for AuditEntry {
    fn from(e: concord_node::AuditEntry) -> Self {
        Self {
            author_id: e.author.to_string(),
            time_ms: e.time_millis,
            description: e.action.describe(),
        }
    }
}
