//! End-to-end encryption in the replica: Megolm sessions per room bucket,
//! room keys shared with each reader's device, and decryption
//! (`docs/architecture.md`, End-to-end encryption). Messages that wait for
//! a key, room keys received and key requests are in `key_share.rs`.
//!
//! **Sending.** Before this device writes content into a bucket of an
//! encrypted room, [`Replica::encrypt_content`] makes sure its outbound
//! session for that bucket may be used: a new one when there is none, when
//! it has encrypted [`ROTATE_AFTER_MESSAGES`] messages, or when anyone it
//! was shared with is no longer a reader (removed, banned, new keys). The
//! session (or its next index, for readers it was not yet shared with) goes
//! to every reader that published device keys, as room keys written into
//! this device's own document of the bucket in the same change as the
//! content: whoever integrates the content has integrated its keys.
//!
//! **Receiving.** Room keys addressed to this device are opened when the
//! document carrying them is integrated, before its bucket renders, and
//! kept in `inbound-1`. Content whose session is not held waits: its body
//! shows "waiting for key", the message is listed in `key-waits-1`, and
//! this device asks the session's owner for the key with a request in its
//! own document of that bucket. The owner answers with a room key from the
//! asked index, or from the first of its messages stamped after the
//! requester published its keys, whichever is later, unless the room shares
//! history. When a key arrives, the waiting messages render, once.
//!
//! Own changes made here in answer to what peers sent (room keys, requests,
//! published device keys) are kept as announcements for the node to gossip.

use std::collections::BTreeMap;

use super::tx::{stage_envelope, Tx};
use super::{corrupt, Replica};
use crate::base::{DeviceKeys, MAX_CITED_HEADS};
use crate::blob;
use crate::crypto::megolm::{
    self, ContentKind, Decrypted, Inbound, Outbound, RoomKeyContext, SessionId,
};
use crate::crypto::olm::DeviceCrypto;
use crate::doc::DocChange;
use crate::envelope::{Delivery, Envelope, EnvelopeFields};
use crate::error::{Error, Result};
use crate::governance::{Action, GovChange, Governance};
use crate::ids::{AuthorId, MessageId, RoomId};
use crate::store::tables::{self, META_OLM_ACCOUNT};
use crate::store::{Store, Tree, WriteBatch};

/// Messages one Megolm session encrypts before a new one replaces it, as
/// Matrix clients do by default: it bounds what one leaked session key
/// reads.
pub const ROTATE_AFTER_MESSAGES: u32 = 100;

/// How long before a reader published its device keys its history begins,
/// in a room that does not share history. A device that joins with a
/// ticket publishes its keys only once the room's governance reached it,
/// which can be a while after it joined (and clocks differ); messages sent
/// in that span are meant for it. Ten minutes of messages is what a new
/// reader may read from before its publication: the price of not losing
/// the first messages of everyone who joins.
pub const JOIN_GRACE_MILLIS: i64 = 10 * 60 * 1000;

/// The room setting that shares history with new members: `"shared"` gives
/// a new reader room keys from each session's first index, anything else
/// (the default) from its key publication on.
pub const HISTORY_SETTING: &str = "history";

const CONTEXT_PICKLE: &str = "concord 2026 olm and megolm pickles v1";
const CONTEXT_REACTION_TAG: &str = "concord 2026 reaction tag v1";

/// An own change the replica made in answer to peers, for the node to
/// gossip (catch-up carries it too).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Announcement {
    /// A delivery: room keys or key requests in this device's document.
    Delivery(RoomId, Box<Delivery>),
    /// A governance change: this device's published keys.
    Governance(RoomId, Box<GovChange>),
}

/// What decrypting one piece of content gave.
#[derive(Debug)]
pub(super) enum Opened {
    /// The plaintext.
    Plain(Vec<u8>),
    /// The session is not held here (yet): the message waits for it.
    Waiting { session: SessionId, index: u32 },
    /// The content is not what the post says (another author's session,
    /// another message, another kind) or does not decrypt: never shown.
    Invalid,
}

/// The session this device encrypts with in one bucket, and whom it was
/// shared with from which index.
pub(super) struct OutboundState {
    pub(super) session: Outbound,
    pub(super) recipients: Recipients,
}

/// The replica's encryption state.
#[derive(Default)]
pub(super) struct E2ee {
    device: Option<DeviceCrypto>,
    pub(super) outbound: BTreeMap<(RoomId, u32), OutboundState>,
    /// A relay: it never holds a key, publishes none, decrypts nothing.
    pub(super) blind: bool,
    announcements: Vec<Announcement>,
}

pub(super) fn encode_recipients(session: &SessionId, recipients: &Recipients) -> Vec<u8> {
    let mut out = Vec::with_capacity(34 + recipients.len() * 100);
    out.extend_from_slice(session);
    out.extend_from_slice(&(recipients.len() as u16).to_be_bytes());
    for (author, (keys, index)) in recipients {
        out.extend_from_slice(author.as_bytes());
        out.extend_from_slice(&keys.to_bytes());
        out.extend_from_slice(&index.to_be_bytes());
    }
    out
}

/// Whom a session was shared with: each reader's keys, and the index it
/// got the session from.
pub(super) type Recipients = BTreeMap<AuthorId, (DeviceKeys, u32)>;

pub(super) fn decode_recipients(bytes: &[u8]) -> Option<(SessionId, Recipients)> {
    let session: SessionId = bytes.get(..32)?.try_into().ok()?;
    let count = u16::from_be_bytes(bytes.get(32..34)?.try_into().ok()?) as usize;
    let mut out = BTreeMap::new();
    let entries = bytes.get(34..)?;
    if entries.len() != count * 100 {
        return None;
    }
    for e in entries.chunks(100) {
        let author = AuthorId::from_bytes(e[..32].try_into().ok()?);
        let keys = DeviceKeys::from_bytes(&e[32..96]).ok()?;
        let index = u32::from_be_bytes(e[96..100].try_into().ok()?);
        out.insert(author, (keys, index));
    }
    Some((session, out))
}

impl<S: Store> Replica<S> {
    /// Makes this replica a relay's: it never holds a room key, never
    /// publishes device keys and never decrypts, and keeps encrypted
    /// content it cannot read as it is (blind).
    pub fn set_blind(&mut self, blind: bool) {
        self.e2ee.blind = blind;
    }

    /// Whether this replica is a relay's ([`Replica::set_blind`]).
    pub fn is_blind(&self) -> bool {
        self.e2ee.blind
    }

    /// Whether a room's content is end-to-end encrypted.
    pub fn is_encrypted(&self, room: &RoomId) -> Result<bool> {
        Ok(self.genesis(room)?.is_encrypted())
    }

    /// This device's encryption keys, made on first use (`None` for a
    /// blind replica).
    pub fn device_keys(&mut self) -> Result<Option<DeviceKeys>> {
        if self.e2ee.blind {
            return Ok(None);
        }
        Ok(Some(self.device_crypto()?.keys()))
    }

    /// Own changes made in answer to peers since the last call (room keys,
    /// key requests, published device keys), for gossip.
    pub fn take_announcements(&mut self) -> Vec<Announcement> {
        std::mem::take(&mut self.e2ee.announcements)
    }

    pub(super) fn pickle_key(&self) -> [u8; 32] {
        self.key.derive(CONTEXT_PICKLE, &[])
    }

    /// The Olm account, loaded or made (and stored) on first use.
    pub(super) fn device_crypto(&mut self) -> Result<&mut DeviceCrypto> {
        if self.e2ee.device.is_none() {
            let pickle_key = self.pickle_key();
            let device = match self.store.get(Tree::Meta, META_OLM_ACCOUNT)? {
                Some(raw) => DeviceCrypto::from_stored(&raw, &pickle_key)
                    .map_err(|e| corrupt(Tree::Meta, e))?,
                None => {
                    let device = DeviceCrypto::generate()?;
                    let mut batch = WriteBatch::new();
                    batch.put(Tree::Meta, META_OLM_ACCOUNT, device.to_stored(&pickle_key));
                    self.store.commit(batch)?;
                    device
                }
            };
            self.e2ee.device = Some(device);
        }
        self.e2ee.device.as_mut().ok_or_else(|| corrupt(Tree::Meta, "olm account"))
    }

    /// The Olm account if this device has one (it is made only by the
    /// device's own actions, never by what peers send).
    pub(super) fn device_crypto_if_made(&mut self) -> Result<Option<&mut DeviceCrypto>> {
        if self.e2ee.device.is_none() && self.store.get(Tree::Meta, META_OLM_ACCOUNT)?.is_none() {
            return Ok(None);
        }
        self.device_crypto().map(Some)
    }

    /// The readers of a room with published keys, other than this device.
    pub(super) fn key_readers(&self, room: &RoomId) -> Result<BTreeMap<AuthorId, DeviceKeys>> {
        let me = self.author();
        let gov = self.govs.get(room).ok_or(Error::UnknownRoom(*room))?;
        Ok(gov.state().readers_with_keys().into_iter().filter(|(a, _)| *a != me).collect())
    }

    /// Publishes this device's keys in an encrypted room it may read and
    /// has not published them in (or published others), as a governance
    /// change to announce. Called when a room is made and whenever its
    /// governance changes.
    pub(super) fn publish_keys_if_needed(&mut self, room: &RoomId) -> Result<Option<GovChange>> {
        if self.e2ee.blind || !self.is_encrypted(room)? {
            return Ok(None);
        }
        let me = self.author();
        let state = self.governance(room)?;
        if !state.founded() || state.role(&me).is_none() {
            return Ok(None);
        }
        let published = state.device_keys(&me);
        let mine = self.device_crypto()?.keys();
        if published == Some(mine) {
            return Ok(None);
        }
        Ok(Some(self.act(room, Action::PublishKeys(mine))?))
    }

    pub(super) fn load_outbound(
        &self,
        room: &RoomId,
        bucket: u32,
    ) -> Result<Option<OutboundState>> {
        let k = tables::bucket_prefix(room, bucket);
        let (Some(pickle), Some(recipients)) =
            (self.store.get(Tree::Outbound, &k)?, self.store.get(Tree::Recipients, &k)?)
        else {
            return Ok(None);
        };
        let session = Outbound::from_stored(&pickle, &self.pickle_key())
            .map_err(|e| corrupt(Tree::Outbound, e))?;
        let (id, recipients) = decode_recipients(&recipients)
            .ok_or_else(|| corrupt(Tree::Recipients, "bad record"))?;
        if id != session.id() {
            return Err(corrupt(Tree::Recipients, "another session's recipients"));
        }
        Ok(Some(OutboundState { session, recipients }))
    }

    /// A room key for `recipient` of session `session` (owned by `owner`:
    /// this device, or a removed member whose key this device forwards)
    /// from `index` on, as a change of this device's document in `bucket`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn share_change(
        &mut self,
        room: &RoomId,
        bucket: u32,
        owner: &AuthorId,
        session: &mut Inbound,
        recipient: &AuthorId,
        keys: &DeviceKeys,
        index: u32,
    ) -> Result<Option<DocChange>> {
        let Some(exported) = session.export_at(index) else { return Ok(None) };
        let context = RoomKeyContext { room: *room, bucket, sender: *owner, recipient: *recipient };
        let plaintext = megolm::room_key(&context, &exported);
        let sealed = self.device_crypto()?.seal_to(keys, &plaintext)?;
        Ok(Some(DocChange::Share { session: session.id(), recipient: *recipient, sealed }))
    }

    /// Makes the outbound session of `bucket` ready to encrypt with: new if
    /// needed, shared with every current reader.
    pub(super) fn ensure_outbound(
        &mut self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
    ) -> Result<()> {
        let readers = self.key_readers(room)?;
        let mut state = match self.e2ee.outbound.remove(&(*room, bucket)) {
            Some(state) => Some(state),
            None => self.load_outbound(room, bucket)?,
        };
        let stale = state.as_ref().is_none_or(|s| {
            s.session.index() >= ROTATE_AFTER_MESSAGES
                || s.recipients.iter().any(|(a, (k, _))| readers.get(a) != Some(k))
        });
        if stale {
            // A new session: the old one stays readable to whom it went.
            let session = Outbound::generate()?;
            let copy = session.inbound();
            self.stage_inbound(tx, room, &self.author(), bucket, &copy);
            state = Some(OutboundState { session, recipients: BTreeMap::new() });
        }
        let mut state = state.ok_or_else(|| corrupt(Tree::Outbound, "no session"))?;
        let index = state.session.index();
        let mut shares = Vec::new();
        let new_readers: Vec<(AuthorId, DeviceKeys)> = readers
            .iter()
            .filter(|(a, _)| !state.recipients.contains_key(a))
            .map(|(a, k)| (*a, *k))
            .collect();
        if !new_readers.is_empty() {
            // Exporting the session signs its key: only when shared.
            let me = self.author();
            let mut copy = state.session.inbound();
            for (author, keys) in &new_readers {
                if let Some(change) =
                    self.share_change(room, bucket, &me, &mut copy, author, keys, index)?
                {
                    shares.push(change);
                }
                state.recipients.insert(*author, (*keys, index));
            }
        }
        if stale || !new_readers.is_empty() {
            let k = tables::bucket_prefix(room, bucket);
            tx.batch.put(
                Tree::Recipients,
                k,
                encode_recipients(&state.session.id(), &state.recipients),
            );
        }
        tx.own_changes.entry((*room, bucket)).or_default().extend(shares);
        tx.outbound.insert((*room, bucket));
        self.e2ee.outbound.insert((*room, bucket), state);
        Ok(())
    }

    /// Encrypts content this device writes into `bucket` of an encrypted
    /// room, with its outbound session there (made ready first).
    pub(super) fn encrypt_content(
        &mut self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        kind: ContentKind,
        id: &MessageId,
        content: &[u8],
    ) -> Result<Vec<u8>> {
        if self.e2ee.blind {
            return Err(Error::InvalidInput("a blind replica writes no encrypted content".into()));
        }
        self.ensure_outbound(tx, room, bucket)?;
        let state = self
            .e2ee
            .outbound
            .get_mut(&(*room, bucket))
            .ok_or_else(|| corrupt(Tree::Outbound, "no session"))?;
        let blob = state.session.encrypt(kind, id, content);
        if kind == ContentKind::Body {
            tx.own_bodies.insert(blob::hash(&blob), content.to_vec());
        }
        Ok(blob)
    }

    /// Stages the pickles of the outbound sessions a transaction used.
    pub(super) fn stage_outbound(&self, tx: &mut Tx) {
        let key = self.pickle_key();
        for (room, bucket) in std::mem::take(&mut tx.outbound) {
            if let Some(state) = self.e2ee.outbound.get(&(room, bucket)) {
                tx.batch.put(
                    Tree::Outbound,
                    tables::bucket_prefix(&room, bucket),
                    state.session.to_stored(&key),
                );
            }
        }
    }

    /// The changes this transaction queued for this device's document in
    /// `bucket` (room keys, requests), to write with the next own change.
    pub(super) fn take_own_changes(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
    ) -> Vec<DocChange> {
        tx.own_changes.remove(&(*room, bucket)).unwrap_or_default()
    }

    /// The tag an own reaction's key carries in an encrypted room: only
    /// this device can make it, and the same emoji always gives the same
    /// tag, so withdrawing overwrites the same entry.
    pub(super) fn reaction_tag(&self, room: &RoomId, id: &MessageId, emoji: &str) -> String {
        let mut input = room.as_bytes().to_vec();
        input.extend_from_slice(id.as_bytes());
        input.extend_from_slice(emoji.as_bytes());
        hex::encode(&self.key.derive(CONTEXT_REACTION_TAG, &input)[..8])
    }

    pub(super) fn stage_inbound(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        owner: &AuthorId,
        bucket: u32,
        session: &Inbound,
    ) {
        let mut value = owner.as_bytes().to_vec();
        value.extend_from_slice(&bucket.to_be_bytes());
        value.extend(session.to_stored(&self.pickle_key()));
        tx.batch.put(Tree::Inbound, tables::session_key(room, &session.id()), value);
    }

    /// A session this device decrypts with: its owner, bucket and copy.
    pub(super) fn inbound(
        &self,
        tx: Option<&Tx>,
        room: &RoomId,
        session: &SessionId,
    ) -> Result<Option<(AuthorId, u32, Inbound)>> {
        let k = tables::session_key(room, session);
        let Some(v) = self.staged_get(tx.map(|t| &t.batch), Tree::Inbound, &k)? else {
            return Ok(None);
        };
        let bad = || corrupt(Tree::Inbound, "bad record");
        let owner =
            AuthorId::from_bytes(v.get(..32).and_then(|b| b.try_into().ok()).ok_or_else(bad)?);
        let bucket = v
            .get(32..36)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(bad)?;
        let copy = Inbound::from_stored(&v[36..], &self.pickle_key())
            .map_err(|e| corrupt(Tree::Inbound, e))?;
        Ok(Some((owner, bucket, copy)))
    }

    /// Decrypts content `owner` wrote for message `id`.
    pub(super) fn open_content(
        &self,
        tx: Option<&Tx>,
        room: &RoomId,
        owner: &AuthorId,
        id: &MessageId,
        kind: ContentKind,
        blob: &[u8],
    ) -> Result<Opened> {
        let Ok((session, index)) = megolm::blob_session(blob) else { return Ok(Opened::Invalid) };
        if self.e2ee.blind {
            return Ok(Opened::Waiting { session, index });
        }
        let Some((session_owner, _, mut copy)) = self.inbound(tx, room, &session)? else {
            return Ok(Opened::Waiting { session, index });
        };
        if session_owner != *owner {
            return Ok(Opened::Invalid);
        }
        if index < copy.first_index() {
            // Shared with this device only from a later index.
            return Ok(Opened::Waiting { session, index });
        }
        Ok(match copy.decrypt(blob) {
            Ok(Decrypted { kind: k, id: i, content }) if k == kind && i == *id => {
                Opened::Plain(content)
            }
            _ => Opened::Invalid,
        })
    }

    /// An attachment of an encrypted room, decrypted: `None` while this
    /// device holds no key for it, and for content that is not an
    /// attachment of a live message by the session's owner.
    pub(super) fn open_attachment(&self, room: &RoomId, blob: &[u8]) -> Result<Option<Vec<u8>>> {
        let Ok((session, _)) = megolm::blob_session(blob) else { return Ok(None) };
        if self.e2ee.blind {
            return Ok(None);
        }
        let Some((owner, _, mut copy)) = self.inbound(None, room, &session)? else {
            return Ok(None);
        };
        let Ok(Decrypted { kind: ContentKind::Attachment(_), id, content }) = copy.decrypt(blob)
        else {
            return Ok(None);
        };
        let live = self.message_by_id(room, &id)?;
        Ok(live.filter(|m| m.author == owner).map(|_| content))
    }

    /// Writes the changes this transaction queued for this device's own
    /// documents (room keys and requests made in answer to peers) as own
    /// envelopes, announced for gossip once committed.
    pub(super) fn write_queued_changes(&mut self, tx: &mut Tx) -> Result<()> {
        let queued: Vec<((RoomId, u32), Vec<DocChange>)> =
            std::mem::take(&mut tx.own_changes).into_iter().collect();
        for ((room, bucket), changes) in queued {
            // Never into a bucket this replica no longer keeps: its own
            // document there is gone from here, and writing it anew would
            // sign a second history for it.
            if changes.is_empty() || bucket < self.window_in(tx, &room) {
                continue;
            }
            // Nor while this device holds no role: peers would refuse the
            // envelope. What it held back is asked or answered again once
            // it is a reader again (`renew_key_requests`).
            if !self.may_read(&room, &self.author())? {
                continue;
            }
            let delivery = self.own_doc_change(tx, room, bucket, changes)?;
            tx.announce.push(Announcement::Delivery(room, Box::new(delivery)));
        }
        Ok(())
    }

    /// Writes `changes` into this device's document of `bucket`, signs the
    /// update and stages it.
    pub(super) fn own_doc_change(
        &mut self,
        tx: &mut Tx,
        room: RoomId,
        bucket: u32,
        changes: Vec<DocChange>,
    ) -> Result<Delivery> {
        let hlc = self.hlc.tick(self.clock.now_millis());
        let author = self.key.author();
        let dk = (room, bucket, author);
        self.load_doc(tx, dk)?;
        let doc = self.docs.get_mut(&dk).ok_or_else(|| corrupt(Tree::Docs, "document vanished"))?;
        let update = doc.change(&changes);
        tx.affect(dk, doc.take_changes());
        tx.docs.insert(dk);
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
                blobs: &[],
                gov_heads: &gov_heads,
            },
        )?;
        stage_envelope(tx, &envelope);
        Ok(Delivery { envelope, blobs: Vec::new() })
    }

    /// After a commit: what it announced joins the announcements.
    pub(super) fn keep_announcements(&mut self, tx: &mut Tx) {
        self.e2ee.announcements.append(&mut tx.announce);
    }

    /// After a failed commit: sessions it touched reload from the store.
    pub(super) fn drop_outbound(&mut self, tx: &Tx) {
        for key in &tx.outbound {
            self.e2ee.outbound.remove(key);
        }
    }

    /// Announces a governance change this replica made in answer to peers.
    pub(super) fn announce_governance(&mut self, room: RoomId, change: GovChange) {
        self.e2ee.announcements.push(Announcement::Governance(room, Box::new(change)));
    }
}
