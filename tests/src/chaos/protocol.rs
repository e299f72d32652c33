//! The control protocol between `concord-chaos` and each `concord-chaos-node`
//! child: one JSON object per line, requests on the child's stdin, replies
//! and the one `ready` event on its stdout (documented in
//! `docs/reliability.md`).
//!
//! A request is `{"req": N, "cmd": "<name>", ...arguments}`; its reply is
//! `{"req": N, "ok": true, "data": {...}}` or `{"req": N, "ok": false,
//! "error": "..."}`. The child answers requests in any order (each runs on
//! its own task), so the number pairs them. A write (`post`, `edit`, `delete`,
//! `react`, governance) is answered `ok` only once the node's call returned,
//! which the node promises is after the change is durable: that reply is
//! the acknowledgement the checker holds the node to.

use serde::{Deserialize, Serialize};

/// A request to a child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// Pairs the reply with the request.
    pub req: u64,
    /// What to do.
    #[serde(flatten)]
    pub cmd: Cmd,
}

/// The commands a child understands. The relay child answers `dial`,
/// `block` and `shutdown` only.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Cmd {
    /// Creates the chaos room: members only, with `members` (author ids,
    /// hex) as members and this device as admin; encrypted, history shared
    /// with new members. Replies `{"room", "ticket"}`.
    CreateRoom {
        /// Author ids of the other initial members (the relay's included).
        members: Vec<String>,
    },
    /// Joins the room a ticket names (redeeming its invite, if any).
    Join {
        /// The ticket.
        ticket: String,
    },
    /// Dials a multiaddr.
    Dial {
        /// The address, ending in `/p2p/<peer id>`.
        addr: String,
    },
    /// Blocks (`on`) or unblocks a peer: the partition mechanism.
    Block {
        /// The peer id.
        peer: String,
        /// Block or unblock.
        on: bool,
    },
    /// Posts a message. Replies `{"id", "members"}`: the message id and the
    /// members this device's governance listed just before the post.
    Post {
        /// The text.
        text: String,
        /// The message replied to.
        reply_to: Option<String>,
        /// Attachment sizes; the bytes are [`attachment_bytes`] of the text.
        attachments: Vec<u32>,
    },
    /// Edits an own message.
    Edit {
        /// The message.
        id: String,
        /// The new text.
        text: String,
    },
    /// Deletes an own message.
    Delete {
        /// The message.
        id: String,
    },
    /// Posts a message and deletes it at once, before anyone can have seen
    /// it. Replies `{"id", "members"}` once both are durable.
    PostDelete {
        /// The text.
        text: String,
    },
    /// Reacts to a message.
    React {
        /// The message.
        id: String,
        /// The emoji.
        emoji: String,
    },
    /// Issues an invite for `author` and replies `{"ticket"}` carrying it.
    Invite {
        /// The invitee's author id.
        author: String,
    },
    /// Sets a member's role (`member`, `moderator`).
    SetRole {
        /// The member's author id.
        author: String,
        /// The role.
        role: String,
    },
    /// Removes a member.
    Remove {
        /// The member's author id.
        author: String,
    },
    /// Replies `{"members": [author ids], "keyed": [author ids]}` of this
    /// device's governance: its listed members, and those of them whose
    /// device keys it holds.
    Members,
    /// Reads the timeline through the API: `{"items": [Item]}` and, for
    /// each id of `probe`, whether `Room::message` still returns it.
    Read {
        /// Message ids to look up one by one.
        probe: Vec<String>,
    },
    /// Sets the clock's offset from the system clock.
    Skew {
        /// Milliseconds, positive ahead.
        millis: i64,
    },
    /// Shuts the node down cleanly, replies, and exits.
    Shutdown,
}

/// A reply from a child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    /// The request's number.
    pub req: u64,
    /// Whether the command succeeded.
    pub ok: bool,
    /// What it answered.
    #[serde(default)]
    pub data: serde_json::Value,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// The first line a child prints, once it listens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ready {
    /// Always `"ready"`.
    pub event: String,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Its author id.
    pub author: String,
    /// The address it listens on, ending in `/p2p/<peer id>`.
    pub addr: String,
}

/// One timeline item as `read` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The message id.
    pub id: String,
    /// Its author.
    pub author: String,
    /// The text, if readable.
    pub body: Option<String>,
    /// Whether the body waits for its room key.
    pub waiting: bool,
    /// The message replied to.
    pub reply_to: Option<String>,
    /// Whether it was edited.
    pub edited: bool,
    /// Reactions: (emoji, authors).
    pub reactions: Vec<(String, Vec<String>)>,
    /// Per attachment, blake3 (hex) of the bytes `Replica::attachment`
    /// returned, or `None` if it returned none.
    pub attachments: Vec<Option<String>>,
}

/// The bytes of attachment `index` of a message with `text`, `len` long:
/// both sides compute them, so the checker knows what each must read back.
pub fn attachment_bytes(text: &str, index: usize, len: u32) -> Vec<u8> {
    let seed = format!("{text}#{index}");
    seed.bytes().cycle().take(len as usize).collect()
}
