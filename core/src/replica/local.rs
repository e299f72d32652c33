//! Local operations: what this device writes. Each operation (post, edit,
//! delete, react, mark read) is checked against the room's governance as
//! every peer would check it, written as one change into this author's
//! document in the bucket of the message it concerns, signed into an
//! envelope and staged in the caller's transaction; [`Replica::commit`]
//! runs many of them under one flush (group commit).

use super::tx::stage_envelope;
use super::tx::Tx;
use super::{corrupt, Replica};
use crate::base::{Denied, Role, MAX_CITED_HEADS};
use crate::blob::{self, BLOB_NONCE_LEN, MAX_BLOB_BYTES, MAX_BODY_BYTES};
use crate::crypto::megolm::ContentKind;
use crate::doc::{DocChange, PostRecord, TombstoneRecord, MAX_ATTACHMENTS, MAX_REACTION_BYTES};
use crate::envelope::{Delivery, Envelope, EnvelopeFields};
use crate::error::GovError;
use crate::error::{Error, Result};
use crate::governance::Governance;
use crate::ids::{BlobHash, Hlc, MessageId, RoomId, SortKey};
use crate::store::tables;
use crate::store::{KeyRange, Order, Store, Tree};
use crate::view::bucket_of;

/// Key derivation contexts (blake3 `derive_key`), one per purpose.
pub(super) const CONTEXT_BLOB_NONCE: &str = "concord 2026 blob nonce v1";

pub(super) const CONTEXT_MESSAGE_ID: &str = "concord 2026 message id entropy v1";

/// What a message is made of when posted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Draft {
    /// The text (at most [`MAX_BODY_BYTES`] bytes of UTF-8).
    pub text: String,
    /// The message this one replies to.
    pub reply_to: Option<MessageId>,
    /// Attachment contents (each at most [`MAX_BLOB_BYTES`]).
    pub attachments: Vec<Vec<u8>>,
}

impl Draft {
    /// A text-only message.
    pub fn text(text: impl Into<String>) -> Self {
        Self { text: text.into(), ..Self::default() }
    }
}

/// A local operation, for [`Replica::commit`] (many operations, one flush).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Op {
    /// Post a message.
    Post {
        /// The room.
        room: RoomId,
        /// The message.
        draft: Draft,
    },
    /// Replace the text of one of our messages.
    Edit {
        /// The room.
        room: RoomId,
        /// Our message.
        id: MessageId,
        /// The new text.
        text: String,
    },
    /// Delete one of our messages for everyone.
    Delete {
        /// The room.
        room: RoomId,
        /// Our message.
        id: MessageId,
    },
    /// Add (`on`) or withdraw a reaction.
    React {
        /// The room.
        room: RoomId,
        /// Any live message.
        id: MessageId,
        /// The emoji or short code.
        emoji: String,
        /// Add or withdraw.
        on: bool,
    },
    /// Move our read marker to a message.
    MarkRead {
        /// The room.
        room: RoomId,
        /// Any live message.
        id: MessageId,
    },
}

/// The result of a local operation: the message it concerns and the delivery
/// to hand to peers.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The message posted, or the message the operation targeted.
    pub id: MessageId,
    /// The signed envelope and its blobs.
    pub delivery: Delivery,
}

pub(super) fn check_text(text: &str) -> Result<()> {
    if text.len() > MAX_BODY_BYTES {
        return Err(Error::InvalidInput(format!(
            "message text longer than {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(())
}

impl<S: Store> Replica<S> {
    /// Posts a message; returns once it is durable.
    pub fn post(&mut self, room: &RoomId, draft: Draft) -> Result<Sent> {
        self.commit_one(Op::Post { room: *room, draft })
    }

    /// Replaces the text of one of our messages; the old text is erased.
    pub fn edit(&mut self, room: &RoomId, id: &MessageId, text: &str) -> Result<Sent> {
        self.commit_one(Op::Edit { room: *room, id: *id, text: text.to_owned() })
    }

    /// Deletes one of our messages for everyone; its content is erased.
    pub fn delete(&mut self, room: &RoomId, id: &MessageId) -> Result<Sent> {
        self.commit_one(Op::Delete { room: *room, id: *id })
    }

    /// Adds a reaction to a live message.
    pub fn react(&mut self, room: &RoomId, id: &MessageId, emoji: &str) -> Result<Sent> {
        self.commit_one(Op::React { room: *room, id: *id, emoji: emoji.to_owned(), on: true })
    }

    /// Withdraws a reaction.
    pub fn unreact(&mut self, room: &RoomId, id: &MessageId, emoji: &str) -> Result<Sent> {
        self.commit_one(Op::React { room: *room, id: *id, emoji: emoji.to_owned(), on: false })
    }

    /// Moves our read marker to a message.
    pub fn mark_read(&mut self, room: &RoomId, id: &MessageId) -> Result<Sent> {
        self.commit_one(Op::MarkRead { room: *room, id: *id })
    }

    pub(super) fn commit_one(&mut self, op: Op) -> Result<Sent> {
        self.commit(vec![op])?
            .pop()
            .unwrap_or_else(|| Err(Error::InvalidInput("empty batch".into())))
    }

    /// Group commit: applies many operations with one atomic, flushed write.
    /// The outer error means nothing was stored; otherwise each operation has
    /// its own result, and the failed ones changed nothing.
    pub fn commit(&mut self, ops: Vec<Op>) -> Result<Vec<Result<Sent>>> {
        let mut tx = Tx::default();
        let results: Vec<Result<Sent>> =
            ops.into_iter().map(|op| self.local_op(&mut tx, op)).collect();
        self.finish(tx)?;
        Ok(results)
    }

    /// Refuses a local change the room's governance would make every peer
    /// refuse: writing needs `needed` at the current heads.
    pub(super) fn check_role(&self, room: &RoomId, needed: Role, what: &'static str) -> Result<()> {
        self.check_room(room)?;
        let role = self.govs.get(room).and_then(|g| g.state().role(&self.key.author()));
        match role {
            None => Err(Error::Governance(GovError::Denied(Denied::NotMember))),
            Some(role) if role < needed => {
                Err(Error::Governance(GovError::Denied(Denied::Role { role, what })))
            }
            Some(_) => Ok(()),
        }
    }

    pub(super) fn local_op(&mut self, tx: &mut Tx, op: Op) -> Result<Sent> {
        match &op {
            Op::Post { room, .. } => self.check_role(room, Role::Member, "post")?,
            Op::Edit { room, .. } => self.check_role(room, Role::Member, "edit")?,
            Op::React { room, .. } => self.check_role(room, Role::Member, "react")?,
            Op::Delete { room, .. } => self.check_role(room, Role::Member, "delete")?,
            Op::MarkRead { room, .. } => self.check_role(room, Role::ReadOnly, "mark read")?,
        }
        match op {
            Op::Post { room, draft } => self.local_post(tx, room, draft),
            Op::Edit { room, id, text } => {
                check_text(&text)?;
                let (key, post) = self.own_live_post(tx, &room, &id)?;
                let hlc = self.hlc.tick(self.clock.now_millis());
                let bucket = bucket_of(key.hlc);
                let body = self.content_blob(
                    tx,
                    room,
                    bucket,
                    ContentKind::Body,
                    &id,
                    hlc,
                    text.as_bytes(),
                )?;
                let record = PostRecord { body: blob::hash(&body), edited: Some(hlc), ..post };
                let blobs = vec![body];
                self.local_change(tx, room, key, hlc, DocChange::Post { id, record }, blobs)
            }
            Op::Delete { room, id } => {
                let (key, change): (SortKey, fn(MessageId, TombstoneRecord) -> DocChange) =
                    match self.own_live_post(tx, &room, &id) {
                        Ok((key, _)) => (key, |id, tombstone| DocChange::Delete { id, tombstone }),
                        // Someone else's message: a moderator's delete.
                        Err(Error::NotAuthor(_)) => {
                            self.check_role(&room, Role::Moderator, "delete others' messages")
                                .map_err(|_| Error::NotAuthor(id))?;
                            let key = self.live_message(tx, &room, &id)?;
                            (key, |id, tombstone| DocChange::Moderate { id, tombstone })
                        }
                        Err(e) => return Err(e),
                    };
                let hlc = self.hlc.tick(self.clock.now_millis());
                let tombstone = TombstoneRecord { posted: key.hlc, deleted: hlc };
                tx.deleted.insert((room, id));
                self.local_change(tx, room, key, hlc, change(id, tombstone), Vec::new())
            }
            Op::React { room, id, emoji, on } => {
                if emoji.is_empty() || emoji.len() > MAX_REACTION_BYTES {
                    return Err(Error::InvalidInput(format!(
                        "a reaction is 1 to {MAX_REACTION_BYTES} bytes"
                    )));
                }
                let key = self.live_message(tx, &room, &id)?;
                let hlc = self.hlc.tick(self.clock.now_millis());
                let change = if self.is_encrypted(&room)? {
                    // The emoji travels encrypted; the entry's key is a tag
                    // only this device makes, the same for the same emoji.
                    let tag = self.reaction_tag(&room, &id, &emoji);
                    let sealed = if on {
                        let bucket = bucket_of(key.hlc);
                        Some(self.encrypt_content(
                            tx,
                            &room,
                            bucket,
                            ContentKind::Reaction,
                            &id,
                            emoji.as_bytes(),
                        )?)
                    } else {
                        None
                    };
                    DocChange::ReactSealed { id, tag, hlc, sealed }
                } else {
                    DocChange::React { id, emoji, hlc, on }
                };
                self.local_change(tx, room, key, hlc, change, Vec::new())
            }
            Op::MarkRead { room, id } => {
                let key = self.live_message(tx, &room, &id)?;
                let hlc = self.hlc.tick(self.clock.now_millis());
                self.local_change(tx, room, key, hlc, DocChange::MarkRead { key, hlc }, Vec::new())
            }
        }
    }

    pub(super) fn local_post(&mut self, tx: &mut Tx, room: RoomId, draft: Draft) -> Result<Sent> {
        self.check_room(&room)?;
        check_text(&draft.text)?;
        if draft.attachments.len() > MAX_ATTACHMENTS {
            return Err(Error::InvalidInput(format!("at most {MAX_ATTACHMENTS} attachments")));
        }
        if draft.attachments.iter().any(|a| a.len() > MAX_BLOB_BYTES) {
            return Err(Error::InvalidInput(format!(
                "attachments are at most {MAX_BLOB_BYTES} bytes"
            )));
        }
        if let Some(target) = &draft.reply_to {
            self.live_message(tx, &room, target)?;
        }
        let hlc = self.hlc.tick(self.clock.now_millis());
        let id = self.new_message_id(hlc);
        let bucket = bucket_of(hlc);
        let body = self.content_blob(
            tx,
            room,
            bucket,
            ContentKind::Body,
            &id,
            hlc,
            draft.text.as_bytes(),
        )?;
        let mut blobs = vec![body];
        for (i, a) in draft.attachments.iter().enumerate() {
            let kind = ContentKind::Attachment(i as u8 + 1);
            blobs.push(self.content_blob(tx, room, bucket, kind, &id, hlc, a)?);
        }
        let record = PostRecord {
            hlc,
            body: blob::hash(&blobs[0]),
            reply_to: draft.reply_to,
            attachments: blobs[1..].iter().map(|b| blob::hash(b)).collect(),
            edited: None,
        };
        let key = SortKey { hlc, author: self.key.author(), id };
        tx.posted.insert((room, id), key);
        self.local_change(tx, room, key, hlc, DocChange::Post { id, record }, blobs)
    }

    /// Writes `change` into our document in the bucket of the message at
    /// `target`, signs the update and stages it.
    pub(super) fn local_change(
        &mut self,
        tx: &mut Tx,
        room: RoomId,
        target: SortKey,
        hlc: Hlc,
        change: DocChange,
        blobs: Vec<Vec<u8>>,
    ) -> Result<Sent> {
        let bucket = bucket_of(target.hlc);
        let author = self.key.author();
        let dk = (room, bucket, author);
        self.load_doc(tx, dk)?;
        // Room keys this change's content needs go in the same update.
        let mut changes = self.take_own_changes(tx, &room, bucket);
        changes.push(change);
        let doc = self.docs.get_mut(&dk).ok_or_else(|| corrupt(Tree::Docs, "document vanished"))?;
        let update = doc.change(&changes);
        tx.affect(dk, doc.take_changes());
        tx.docs.insert(dk);
        let hashes: Vec<BlobHash> = blobs.iter().map(|b| blob::hash(b)).collect();
        let mut gov_heads = self.govs.get(&room).map(Governance::heads).unwrap_or_default();
        gov_heads.truncate(MAX_CITED_HEADS);
        let envelope = Envelope::sign(
            &self.key,
            EnvelopeFields {
                room,
                bucket,
                clock_start: update.clock_start,
                clock_end: update.clock_end,
                hlc,
                update: &update.update,
                blobs: &hashes,
                gov_heads: &gov_heads,
            },
        )?;
        stage_envelope(tx, &envelope);
        tx.offer(room, bucket, blobs.clone());
        Ok(Sent { id: target.id, delivery: Delivery { envelope, blobs } })
    }

    /// The blob of one piece of content of message `id` in `bucket`:
    /// encrypted in an encrypted room, else nonce-sealed.
    #[allow(clippy::too_many_arguments)]
    fn content_blob(
        &mut self,
        tx: &mut Tx,
        room: RoomId,
        bucket: u32,
        kind: ContentKind,
        id: &MessageId,
        hlc: Hlc,
        content: &[u8],
    ) -> Result<Vec<u8>> {
        if self.is_encrypted(&room)? {
            return self.encrypt_content(tx, &room, bucket, kind, id, content);
        }
        let index = match kind {
            ContentKind::Attachment(n) => n,
            _ => 0,
        };
        Ok(self.seal_blob(id, hlc, index, content))
    }

    pub(super) fn seal_blob(&self, id: &MessageId, hlc: Hlc, index: u8, content: &[u8]) -> Vec<u8> {
        let mut input = Vec::with_capacity(25);
        input.extend_from_slice(id.as_bytes());
        input.extend_from_slice(&hlc.as_u64().to_be_bytes());
        input.push(index);
        let mut nonce = [0u8; BLOB_NONCE_LEN];
        nonce.copy_from_slice(&self.key.derive(CONTEXT_BLOB_NONCE, &input)[..BLOB_NONCE_LEN]);
        blob::seal(&nonce, content)
    }

    /// A UUIDv7 whose time is the stamp's and whose random bits come from the
    /// device key and the stamp: unique per device (stamps never repeat) and
    /// reproducible under a seeded key and a manual clock.
    pub(super) fn new_message_id(&self, hlc: Hlc) -> MessageId {
        let entropy = self.key.derive(CONTEXT_MESSAGE_ID, &hlc.as_u64().to_be_bytes());
        let mut random = [0u8; 10];
        random.copy_from_slice(&entropy[..10]);
        MessageId(uuid::Builder::from_unix_timestamp_millis(hlc.millis(), &random).into_uuid())
    }

    /// The sort key of a live message, seeing this transaction's own changes.
    pub(super) fn live_message(&self, tx: &Tx, room: &RoomId, id: &MessageId) -> Result<SortKey> {
        self.check_room(room)?;
        if tx.deleted.contains(&(*room, *id)) {
            return Err(Error::MessageDeleted(*id));
        }
        if let Some(key) = tx.posted.get(&(*room, *id)) {
            return Ok(*key);
        }
        match self.store.get(Tree::MessageIds, &tables::message_id_key(room, id))? {
            Some(raw) => Ok(SortKey::from_bytes(&raw).map_err(|e| corrupt(Tree::MessageIds, e))?),
            None if self.is_tombstoned(room, id)? => Err(Error::MessageDeleted(*id)),
            None => Err(Error::UnknownMessage(*id)),
        }
    }

    /// One of our own live posts, with its record.
    pub(super) fn own_live_post(
        &mut self,
        tx: &mut Tx,
        room: &RoomId,
        id: &MessageId,
    ) -> Result<(SortKey, PostRecord)> {
        let key = self.live_message(tx, room, id)?;
        if key.author != self.key.author() {
            return Err(Error::NotAuthor(*id));
        }
        let dk = (*room, bucket_of(key.hlc), key.author);
        self.load_doc(tx, dk)?;
        let doc = self.docs.get(&dk).ok_or_else(|| corrupt(Tree::Docs, "document vanished"))?;
        match doc.post(id) {
            Some(post) => Ok((key, post)),
            None if doc.is_deleted(id) => Err(Error::MessageDeleted(*id)),
            None => Err(Error::UnknownMessage(*id)),
        }
    }

    pub(super) fn is_tombstoned(&self, room: &RoomId, id: &MessageId) -> Result<bool> {
        // Honest ids carry their post's time, so look in that bucket first.
        let millis = id
            .as_uuid()
            .get_timestamp()
            .map(|t| t.to_unix())
            .map(|(s, n)| s * 1000 + u64::from(n) / 1_000_000);
        let Some(millis) = millis else { return Ok(false) };
        let bucket = bucket_of(Hlc::new(millis, 0));
        let mut prefix = tables::bucket_prefix(room, bucket);
        prefix.extend_from_slice(id.as_bytes());
        Ok(!self
            .store
            .scan(Tree::Tombstones, &KeyRange::prefix(&prefix), Order::Ascending, 1)?
            .is_empty())
    }
}
