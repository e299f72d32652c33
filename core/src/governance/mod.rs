//! Room governance: members and roles, invites, bans, and the room's name,
//! topic and settings, kept in one automerge document per room.
//!
//! Every change to the document carries exactly one [`Action`] (in the
//! automerge change's message) and travels signed by its author in a
//! [`GovChange`]. A replica accepts a change only if
//! - it is signed by its author, whose key is the change's automerge actor;
//! - every change it depends on is already accepted (else it waits);
//! - the author held the right to the action in the governance state at
//!   the change's causal past (its dependencies), see [`Denied`];
//! - its operations are exactly the ones the action writes on that state:
//!   the replica writes the action itself, on a fork of the document at the
//!   change's dependencies, and the change must hash to the same value.
//!
//! So every replica reaches the same verdict on every change, whatever the
//! order of arrival, and the accepted changes merge as automerge merges
//! them. The change history is the room's audit trail ([`Governance::history`]).

mod action;
mod invite;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::transaction::CommitOptions;
use automerge::{ActorId, AutoCommit, Change, ChangeHash};

pub use crate::base::GovHead;
use crate::base::FORMAT_VERSION;
use crate::base::{DecodeError, PENDING_AUTHOR_SHARE};
use crate::codec::{check_header, Reader, Writer};
use crate::error::EnvelopeError;
pub use crate::error::GovError;
use crate::ids::{AuthorId, RoomId};
use crate::keys::{self, DeviceKey};

pub use action::{
    Action, Denied, Role, MAX_INITIAL_MEMBERS, MAX_SETTING_KEY_BYTES, MAX_SETTING_VALUE_BYTES,
    MAX_TOPIC_BYTES,
};
pub use invite::{Invite, InviteId, INVITE_BYTES};
pub use state::{GovState, Member};

/// The first bytes of every encoded governance change, which tell it apart
/// from a delivery on a room's gossip topic.
pub const GOV_MAGIC: &[u8; 4] = b"CNCV";

/// Largest encoded governance change.
pub const MAX_GOV_CHANGE_BYTES: usize = 32 * 1024;

/// Most changes a room keeps waiting for their dependencies.
pub const MAX_PENDING_GOV_CHANGES: usize = 1024;

/// Most dependencies one change may name.
pub const MAX_GOV_DEPS: usize = 64;

/// One signed governance change: a room, its author, and one automerge
/// change by that author carrying one action.
#[derive(Clone, Debug)]
pub struct GovChange {
    room: RoomId,
    author: AuthorId,
    change: Change,
    action: Action,
    bytes: Vec<u8>,
}

impl PartialEq for GovChange {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for GovChange {}

impl GovChange {
    fn sign(key: &DeviceKey, room: RoomId, change: Change, action: Action) -> Self {
        let raw = change.raw_bytes();
        let mut bytes = Vec::with_capacity(4 + 1 + 64 + 4 + raw.len() + 64);
        bytes.extend_from_slice(GOV_MAGIC);
        bytes.put_u8(FORMAT_VERSION);
        bytes.extend_from_slice(room.as_bytes());
        bytes.extend_from_slice(key.author().as_bytes());
        bytes.put_bytes_u32(raw);
        let signature = key.sign(&bytes);
        bytes.extend_from_slice(&signature);
        Self { room, author: key.author(), change, action, bytes }
    }

    /// Decodes and verifies a governance change from untrusted bytes: size,
    /// structure, signature, then the automerge change (its actor must be the
    /// author) and the action it carries. Whether the author may perform the
    /// action is judged when a [`Governance`] receives it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_GOV_CHANGE_BYTES {
            return Err(DecodeError::TooLarge {
                what: "governance change",
                len: bytes.len(),
                max: MAX_GOV_CHANGE_BYTES,
            }
            .into());
        }
        let mut r = Reader::new(bytes);
        check_header(&mut r, GOV_MAGIC, "governance change")?;
        let room = RoomId(r.array("room")?);
        let author = AuthorId(r.array("author")?);
        let raw = r.bytes_u32(MAX_GOV_CHANGE_BYTES, "automerge change")?;
        let signed_len = r.position();
        let signature: [u8; 64] = r.array("signature")?;
        r.finish()?;
        keys::verify(&author, &bytes[..signed_len], &signature)?;
        let change = Change::from_bytes(raw.to_vec())
            .map_err(|_| DecodeError::InvalidValue("automerge change"))?;
        let actor = change.actor_id().to_bytes();
        if actor.len() != 32 + ACTOR_SUFFIX_BYTES || actor[..32] != author.as_bytes()[..] {
            return Err(DecodeError::InvalidValue("change actor is not the author").into());
        }
        if change.deps().len() > MAX_GOV_DEPS {
            return Err(DecodeError::TooLarge {
                what: "change dependencies",
                len: change.deps().len(),
                max: MAX_GOV_DEPS,
            }
            .into());
        }
        let action = Action::from_message(change.message())?;
        Ok(Self { room, author, change, action, bytes: bytes.to_vec() })
    }

    /// The room.
    pub fn room(&self) -> RoomId {
        self.room
    }
    /// Who signed it.
    pub fn author(&self) -> AuthorId {
        self.author
    }
    /// The action it carries.
    pub fn action(&self) -> &Action {
        &self.action
    }
    /// The time its author stamped on it (Unix milliseconds).
    pub fn time_millis(&self) -> i64 {
        self.change.timestamp()
    }
    /// Its head: the automerge change hash.
    pub fn head(&self) -> GovHead {
        self.change.hash().0
    }
    /// The heads it depends on.
    pub fn deps(&self) -> Vec<GovHead> {
        self.change.deps().iter().map(|h| h.0).collect()
    }
    /// The signed encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// What receiving a governance change did.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum GovApplied {
    /// Accepted, with the waiting changes it let in.
    Applied {
        /// The heads accepted: this change's first, then those it unblocked.
        accepted: Vec<GovHead>,
    },
    /// Already accepted.
    Duplicate,
    /// Waiting for changes it depends on.
    Pending {
        /// The missing heads.
        missing: Vec<GovHead>,
    },
}

fn doc_error(e: automerge::AutomergeError) -> GovError {
    GovError::Document(e.to_string())
}

/// One entry of a room's audit trail.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditEntry {
    /// The change.
    pub head: GovHead,
    /// Who made it.
    pub author: AuthorId,
    /// When, as its author stamped it (Unix milliseconds).
    pub time_millis: i64,
    /// What it did.
    pub action: Action,
}

/// One room's governance: the automerge document of accepted changes, the
/// signed changes themselves (to serve to peers), changes waiting for their
/// dependencies, and the current state.
pub struct Governance {
    room: RoomId,
    /// The state before any change, from the room's genesis.
    base: GovState,
    doc: AutoCommit,
    changes: HashMap<GovHead, GovChange>,
    /// Accepted changes in the order they were accepted: dependencies first.
    order: Vec<GovHead>,
    pending: BTreeMap<GovHead, GovChange>,
    state: GovState,
    heads: Vec<GovHead>,
    /// States at past heads, which never change once read (most recent last).
    past: Vec<(Vec<GovHead>, GovState)>,
}

/// Past states kept for judging envelopes that cite older heads.
const PAST_STATES: usize = 8;

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governance")
            .field("room", &self.room)
            .field("changes", &self.changes.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Governance {
    /// An empty governance for a room created by `creator`, open or not
    /// (the genesis says): no governance action is allowed until the
    /// creator's founding change ([`Action::Init`]) is in.
    pub fn new(room: RoomId, creator: AuthorId, open: bool) -> Self {
        let base = GovState::unfounded(room, creator, open);
        Self {
            room,
            state: base.clone(),
            base,
            doc: AutoCommit::new(),
            changes: HashMap::new(),
            order: Vec::new(),
            pending: BTreeMap::new(),
            heads: Vec::new(),
            past: Vec::new(),
        }
    }

    /// Rebuilds a room's governance from changes this replica accepted
    /// before (its store): they are applied without being judged again.
    /// Fails if they do not form a complete history.
    pub fn restore(
        room: RoomId,
        creator: AuthorId,
        open: bool,
        changes: Vec<GovChange>,
    ) -> Result<Self, GovError> {
        let mut gov = Self::new(room, creator, open);
        if changes.iter().any(|c| c.room != room) {
            return Err(GovError::Document("a stored change belongs to another room".into()));
        }
        gov.doc.apply_changes(changes.iter().map(|c| c.change.clone())).map_err(doc_error)?;
        let heads: Vec<ChangeHash> = changes.iter().map(|c| c.change.hash()).collect();
        if !gov.doc.get_missing_deps(&heads).is_empty() {
            return Err(GovError::Document("stored changes miss part of their history".into()));
        }
        gov.order = gov.doc.get_changes(&[]).iter().map(|c| c.hash().0).collect();
        gov.changes = changes.into_iter().map(|c| (c.head(), c)).collect();
        gov.refresh()?;
        Ok(gov)
    }

    /// The room.
    pub fn room(&self) -> RoomId {
        self.room
    }

    /// The current state: every accepted change merged.
    pub fn state(&self) -> &GovState {
        &self.state
    }

    /// The current heads, which a message envelope cites.
    pub fn heads(&self) -> Vec<GovHead> {
        self.heads.clone()
    }

    /// Whether every one of `heads` is an accepted change.
    pub fn knows(&self, heads: &[GovHead]) -> bool {
        heads.iter().all(|h| self.changes.contains_key(h))
    }

    /// The state as of `heads`: what an envelope citing them is judged by.
    pub fn state_at(&self, heads: &[GovHead]) -> Result<GovState, GovError> {
        if !self.knows(heads) {
            return Err(GovError::UnknownHeads);
        }
        let heads: Vec<ChangeHash> = heads.iter().map(|h| ChangeHash(*h)).collect();
        GovState::read(&self.base, &self.doc, Some(&heads)).map_err(doc_error)
    }

    /// A key's role as of `heads` (see [`GovState::role`]): what an envelope
    /// citing them is judged by. Fast for the current heads and for recently
    /// judged ones.
    pub fn role_at(
        &mut self,
        heads: &[GovHead],
        author: &AuthorId,
    ) -> Result<Option<Role>, GovError> {
        let mut sorted = heads.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut current = self.heads.clone();
        current.sort();
        if sorted == current {
            return Ok(self.state.role(author));
        }
        if let Some(i) = self.past.iter().position(|(h, _)| *h == sorted) {
            let entry = self.past.remove(i);
            let role = entry.1.role(author);
            self.past.push(entry);
            return Ok(role);
        }
        let state = self.state_at(&sorted)?;
        let role = state.role(author);
        if self.past.len() >= PAST_STATES {
            self.past.remove(0);
        }
        self.past.push((sorted, state));
        Ok(role)
    }

    /// Performs `action` as `key`'s author at `time_millis`: checks the right
    /// against the current state, writes it, and returns the signed change
    /// to send to peers.
    pub fn act(
        &mut self,
        key: &DeviceKey,
        action: Action,
        time_millis: i64,
    ) -> Result<GovChange, GovError> {
        action.check()?;
        let author = key.author();
        action::authorize(&self.state, &author, &action, time_millis)?;
        let change = commit(&mut self.doc, &author, &action, time_millis)?;
        let signed = GovChange::sign(key, self.room, change, action);
        self.order.push(signed.head());
        self.changes.insert(signed.head(), signed.clone());
        self.refresh()?;
        Ok(signed)
    }

    /// Receives a change from a peer or the store: judges it against the
    /// state at its causal past and applies it, or keeps it until its
    /// dependencies arrive. Changes it unblocks are judged and applied too;
    /// those refused are dropped.
    pub fn receive(&mut self, change: GovChange) -> Result<GovApplied, GovError> {
        if change.room != self.room {
            return Err(GovError::WrongRoom { expected: self.room, found: change.room });
        }
        let head = change.head();
        if self.changes.contains_key(&head) {
            return Ok(GovApplied::Duplicate);
        }
        let missing: Vec<GovHead> =
            change.deps().into_iter().filter(|d| !self.changes.contains_key(d)).collect();
        if !missing.is_empty() {
            if self.pending.contains_key(&head) {
                return Ok(GovApplied::Pending { missing });
            }
            // Only a key that may read the room now gets to wait (an
            // invitee's Join comes after the invite it redeems in honest
            // catch-up), and only up to its share, so that junk from keys
            // never admitted, or from one key, cannot crowd out the rest.
            let author = change.author();
            if self.state.role(&author).is_none() {
                return Err(GovError::MissingDependencies);
            }
            let share = MAX_PENDING_GOV_CHANGES / PENDING_AUTHOR_SHARE as usize;
            let mine = self.pending.values().filter(|c| c.author() == author).count();
            if self.pending.len() >= MAX_PENDING_GOV_CHANGES || mine >= share {
                return Err(GovError::TooManyPending);
            }
            self.pending.insert(head, change);
            return Ok(GovApplied::Pending { missing });
        }
        self.judge_and_apply(change)?;
        let mut accepted = vec![head];
        loop {
            let ready: Vec<GovHead> = self
                .pending
                .iter()
                .filter(|(_, c)| c.deps().iter().all(|d| self.changes.contains_key(d)))
                .map(|(h, _)| *h)
                .collect();
            if ready.is_empty() {
                break;
            }
            for head in ready {
                if let Some(change) = self.pending.remove(&head) {
                    if self.judge_and_apply(change).is_ok() {
                        accepted.push(head);
                    }
                }
            }
        }
        Ok(GovApplied::Applied { accepted })
    }

    fn judge_and_apply(&mut self, change: GovChange) -> Result<(), GovError> {
        let deps: Vec<ChangeHash> = change.change.deps().to_vec();
        // Most changes build on the current heads, whose state is at hand.
        let mut sorted = deps.clone();
        sorted.sort();
        let mut current = self.doc.get_heads();
        current.sort();
        let past = if sorted == current {
            self.state.clone()
        } else {
            GovState::read(&self.base, &self.doc, Some(&deps)).map_err(doc_error)?
        };
        let time = change.time_millis();
        change.action.check()?;
        action::authorize(&past, &change.author, &change.action, time)?;
        // Write the action ourselves on the change's causal past: an honest
        // author's change is exactly that, byte for byte.
        let mut fork = self.doc.fork_at(&deps).map_err(doc_error)?;
        let expected = commit(&mut fork, &change.author, &change.action, time)?;
        if expected.hash() != change.change.hash() {
            return Err(GovError::Forged);
        }
        self.doc.apply_changes([change.change.clone()]).map_err(doc_error)?;
        self.order.push(change.head());
        self.changes.insert(change.head(), change);
        self.refresh()
    }

    fn refresh(&mut self) -> Result<(), GovError> {
        self.state = GovState::read(&self.base, &self.doc, None).map_err(doc_error)?;
        self.heads = self.doc.get_heads().iter().map(|h| h.0).collect();
        Ok(())
    }

    /// Every accepted change, dependencies first: what a peer or the store
    /// is given.
    pub fn changes(&self) -> Vec<GovChange> {
        self.order.iter().filter_map(|h| self.changes.get(h).cloned()).collect()
    }

    /// Accepted changes a peer with `have` lacks, dependencies first (heads
    /// of `have` unknown here are skipped, so a peer ahead of us may be sent
    /// some changes it holds).
    pub fn changes_since(&self, have: &[GovHead]) -> Vec<GovChange> {
        let mut past: HashSet<GovHead> = HashSet::new();
        let mut stack: Vec<GovHead> =
            have.iter().filter(|h| self.changes.contains_key(*h)).copied().collect();
        while let Some(head) = stack.pop() {
            if past.insert(head) {
                if let Some(c) = self.changes.get(&head) {
                    stack.extend(c.deps());
                }
            }
        }
        self.order
            .iter()
            .filter(|h| !past.contains(*h))
            .filter_map(|h| self.changes.get(h).cloned())
            .collect()
    }

    /// An accepted change.
    pub fn change(&self, head: &GovHead) -> Option<GovChange> {
        self.changes.get(head).cloned()
    }

    /// Changes waiting for their dependencies.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The audit trail: who changed what, when, in causal order.
    pub fn history(&self) -> Vec<AuditEntry> {
        self.changes()
            .into_iter()
            .map(|c| AuditEntry {
                head: c.head(),
                author: c.author,
                time_millis: c.time_millis(),
                action: c.action,
            })
            .collect()
    }
}

/// The automerge actor of a change: the author's key, then 16 bytes of a
/// hash of what the change is made of (its dependencies, time and action).
/// Every change is its actor's only one, so two changes by one author that
/// share a causal past (the same key on two devices, or an author signing
/// two versions) never collide in automerge's per-actor sequence; and two
/// different valid changes never share an actor, as the operations of a
/// valid change follow from its dependencies, time and action.
fn actor_for(author: &AuthorId, deps: &[ChangeHash], time: i64, message: &str) -> ActorId {
    let mut deps = deps.to_vec();
    deps.sort();
    let mut hasher = blake3::Hasher::new_derive_key("concord governance actor v1");
    for dep in &deps {
        hasher.update(&dep.0);
    }
    hasher.update(&time.to_be_bytes());
    hasher.update(message.as_bytes());
    let mut actor = author.as_bytes().to_vec();
    actor.extend_from_slice(&hasher.finalize().as_bytes()[..ACTOR_SUFFIX_BYTES]);
    ActorId::from(actor)
}

const ACTOR_SUFFIX_BYTES: usize = 16;

/// Writes `action` into `doc` as `author` and commits it as one change
/// stamped `time`, on the document's current heads.
fn commit(
    doc: &mut AutoCommit,
    author: &AuthorId,
    action: &Action,
    time: i64,
) -> Result<Change, GovError> {
    commit_as(doc, author, action, action, time)
}

/// [`commit`], with the operations of `ops_of` under the message of
/// `action` (they differ only in tests, which forge such changes).
fn commit_as(
    doc: &mut AutoCommit,
    author: &AuthorId,
    action: &Action,
    ops_of: &Action,
    time: i64,
) -> Result<Change, GovError> {
    let message = action.to_message();
    let heads = doc.get_heads();
    doc.set_actor(actor_for(author, &heads, time, &message));
    if let Err(e) = state::write(doc, author, ops_of, time) {
        doc.rollback();
        return Err(doc_error(e));
    }
    doc.commit_with(CommitOptions::default().with_message(message).with_time(time))
        .ok_or_else(|| GovError::Document("the action wrote nothing".into()))?;
    doc.get_last_local_change().ok_or_else(|| GovError::Document("no change committed".into()))
}
