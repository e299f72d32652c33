//! The author document: what one author wrote in one bucket of one room, as a
//! yrs `Doc` only that author writes to.
//!
//! Layout inside the document (root maps, all values are `Any::Buffer` in the
//! record formats below, documented byte by byte in `docs/protocol.md`):
//!
//! | root | key | value |
//! |---|---|---|
//! | `m` | message id (32 hex digits) | [`PostRecord`]: the author's live posts |
//! | `d` | message id | [`TombstoneRecord`]: the author's deletes |
//! | `k` | message id | [`TombstoneRecord`]: a moderator's deletes of others' messages |
//! | `x` | message id ‖ emoji (or, in an encrypted room, ‖ tag) | reaction stamp (8 bytes), in an encrypted room followed by the encrypted emoji; empty once withdrawn |
//! | `r` | `read` | the read marker: sort key (56 bytes) ‖ stamp (8 bytes) |
//! | `s` | session id ‖ recipient (128 hex digits) | a room key for that recipient's device: an Olm pre-key message |
//! | `q` | session id ‖ session owner (128 hex digits) | a request for that room key from message index u32 on |
//!
//! Every change inserts at least one item, so every envelope advances the
//! author's clock and `[clock_start, clock_end)` names it exactly. Withdrawing a
//! reaction therefore writes an empty value instead of removing the key.
//!
//! Just over the house's 600 lines: the document's schema, its record
//! formats and their observers change together and stay in one file.

use std::collections::{BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use yrs::updates::decoder::Decode;
use yrs::{Any, ClientID, Doc, Map, MapRef, Observable, Options, Out, ReadTxn, Transact, Update};

use crate::codec::{Reader, Writer};
use crate::error::{DecodeError, EnvelopeError};
use crate::ids::{AuthorId, BlobHash, Hlc, MessageId, SortKey};
use crate::keys;

const MESSAGES: &str = "m";
const TOMBSTONES: &str = "d";
const MODERATED: &str = "k";
const REACTIONS: &str = "x";
const READ: &str = "r";
const SHARES: &str = "s";
const REQUESTS: &str = "q";
const READ_KEY: &str = "read";
const RECORD_VERSION: u8 = 1;

/// Most attachments on one message (the body takes the 16th blob slot).
pub const MAX_ATTACHMENTS: usize = 15;
/// Longest reaction key (an emoji or short code), in bytes of UTF-8.
pub const MAX_REACTION_BYTES: usize = 64;

/// A post as its author's document holds it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct PostRecord {
    pub hlc: Hlc,
    pub body: BlobHash,
    pub reply_to: Option<MessageId>,
    pub attachments: Vec<BlobHash>,
    pub edited: Option<Hlc>,
}

impl PostRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 32 * self.attachments.len());
        out.put_u8(RECORD_VERSION);
        out.put_u64(self.hlc.as_u64());
        out.extend_from_slice(self.body.as_bytes());
        let flags = u8::from(self.reply_to.is_some()) | (u8::from(self.edited.is_some()) << 1);
        out.put_u8(flags);
        if let Some(reply) = &self.reply_to {
            out.extend_from_slice(reply.as_bytes());
        }
        if let Some(edited) = self.edited {
            out.put_u64(edited.as_u64());
        }
        out.put_u8(self.attachments.len() as u8);
        for a in &self.attachments {
            out.extend_from_slice(a.as_bytes());
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u8("record version")? != RECORD_VERSION {
            return Err(DecodeError::InvalidValue("post record version"));
        }
        let hlc = Hlc(r.u64("post hlc")?);
        let body = BlobHash(r.array("post body")?);
        let flags = r.u8("post flags")?;
        if flags & !0b11 != 0 {
            return Err(DecodeError::InvalidValue("post flags"));
        }
        let reply_to =
            if flags & 1 != 0 { Some(MessageId::from_bytes(r.array("reply to")?)) } else { None };
        let edited = if flags & 2 != 0 { Some(Hlc(r.u64("edited")?)) } else { None };
        let count = r.u8("attachments")? as usize;
        if count > MAX_ATTACHMENTS {
            return Err(DecodeError::TooLarge {
                what: "attachments",
                len: count,
                max: MAX_ATTACHMENTS,
            });
        }
        let mut attachments = Vec::with_capacity(count);
        for _ in 0..count {
            attachments.push(BlobHash(r.array("attachment")?));
        }
        r.finish()?;
        Ok(Self { hlc, body, reply_to, attachments, edited })
    }
}

/// A delete as its author's document holds it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TombstoneRecord {
    pub posted: Hlc,
    pub deleted: Hlc,
}

impl TombstoneRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.put_u64(self.posted.as_u64());
        out.put_u64(self.deleted.as_u64());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let posted = Hlc(r.u64("tombstone posted")?);
        let deleted = Hlc(r.u64("tombstone deleted")?);
        r.finish()?;
        Ok(Self { posted, deleted })
    }
}

/// One local change to the author's own document.
#[derive(Clone, Debug)]
pub(crate) enum DocChange {
    Post {
        id: MessageId,
        record: PostRecord,
    },
    Delete {
        id: MessageId,
        tombstone: TombstoneRecord,
    },
    /// A moderator's delete of someone else's message.
    Moderate {
        id: MessageId,
        tombstone: TombstoneRecord,
    },
    React {
        id: MessageId,
        emoji: String,
        hlc: Hlc,
        on: bool,
    },
    MarkRead {
        key: SortKey,
        hlc: Hlc,
    },
    /// A reaction in an encrypted room: `tag` stands for the emoji (a keyed
    /// hash only its author can make), `sealed` is the encrypted emoji.
    ReactSealed {
        id: MessageId,
        tag: String,
        hlc: Hlc,
        sealed: Option<Vec<u8>>,
    },
    /// A room key for `recipient`'s device.
    Share {
        session: [u8; 32],
        recipient: AuthorId,
        sealed: Vec<u8>,
    },
    /// A request for a room key from `index` on.
    Request {
        session: [u8; 32],
        owner: AuthorId,
        index: u32,
    },
}

/// The key of a share or request entry: session id ‖ author, in hex.
pub(crate) fn pair_key(session: &[u8; 32], author: &AuthorId) -> String {
    format!("{}{}", hex::encode(session), hex::encode(author.as_bytes()))
}

/// Parses [`pair_key`]; `None` for any other spelling.
pub(crate) fn parse_pair_key(key: &str) -> Option<([u8; 32], AuthorId)> {
    if key.len() != 128 || key.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut session = [0u8; 32];
    hex::decode_to_slice(&key[..64], &mut session).ok()?;
    let mut author = [0u8; 32];
    hex::decode_to_slice(&key[64..], &mut author).ok()?;
    Some((session, AuthorId::from_bytes(author)))
}

/// What a local change produced: the update and the clock range it inserted.
pub(crate) struct LocalUpdate {
    pub update: Vec<u8>,
    pub clock_start: u32,
    pub clock_end: u32,
}

/// What a transaction on an author document changed: the messages whose
/// records, tombstones or reactions moved, and whether the read marker did.
/// Rendering then revisits only these.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub(crate) struct Changes {
    pub ids: BTreeSet<MessageId>,
    pub read: bool,
    /// Posts, edits, own deletes or reactions were written.
    pub posting: bool,
    /// A moderator's delete was written.
    pub moderated: bool,
    /// Room-key entries written (`s` keys).
    pub shares: BTreeSet<String>,
    /// Room-key requests written (`q` keys).
    pub requests: BTreeSet<String>,
}

/// Root-map keys touched by transactions since the last [`AuthorDoc::take_changes`],
/// collected by observers on the four root maps.
type Touched = Arc<Mutex<Vec<(Root, Arc<str>)>>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Root {
    Messages,
    Tombstones,
    Moderated,
    Reactions,
    Read,
    Shares,
    Requests,
}

/// One author's document in one bucket.
///
/// Lookups are by message id, so rendering one message costs the same in a
/// bucket of ten messages as in one of ten thousand. Reaction keys are
/// `id ‖ emoji` in a yrs map, which has no prefix lookup, so the document
/// keeps an index of each message's active reactions, maintained from the
/// same change observers that drive rendering.
pub(crate) struct AuthorDoc {
    doc: Doc,
    client: ClientID,
    messages: MapRef,
    tombstones: MapRef,
    moderated: MapRef,
    reactions: MapRef,
    read: MapRef,
    shares: MapRef,
    requests: MapRef,
    touched: Touched,
    reaction_index: HashMap<MessageId, BTreeSet<String>>,
}

fn buffer(out: Option<Out>) -> Option<std::sync::Arc<[u8]>> {
    match out {
        Some(Out::Any(Any::Buffer(b))) => Some(b),
        _ => None,
    }
}

/// The message id a key starts with, only in its canonical form (32 lowercase
/// hex digits), so one id cannot hide under two spellings.
fn parse_id(key: &str) -> Option<MessageId> {
    let head = key.get(..32)?;
    let id = uuid::Uuid::try_parse(head).ok().map(MessageId)?;
    (id.simple() == head).then_some(id)
}

impl AuthorDoc {
    pub(crate) fn new(author: &AuthorId) -> Self {
        let client = ClientID::new(keys::client_id(author));
        // GC stays on (skip_gc: false): a removed post's record is dropped from
        // memory when the delete is integrated.
        let doc =
            Doc::with_options(Options { client_id: client, skip_gc: false, ..Options::default() });
        let touched: Touched = Arc::default();
        let observed = |name: &str, root: Root| {
            let map = doc.get_or_insert_map(name);
            let sink = touched.clone();
            map.observe("concord", move |txn, event| {
                let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
                sink.extend(event.keys(txn).keys().map(|k| (root, k.clone())));
            });
            map
        };
        Self {
            messages: observed(MESSAGES, Root::Messages),
            tombstones: observed(TOMBSTONES, Root::Tombstones),
            moderated: observed(MODERATED, Root::Moderated),
            reactions: observed(REACTIONS, Root::Reactions),
            read: observed(READ, Root::Read),
            shares: observed(SHARES, Root::Shares),
            requests: observed(REQUESTS, Root::Requests),
            doc,
            client,
            touched,
            reaction_index: HashMap::new(),
        }
    }

    /// What changed since the last call, with the reaction index brought up
    /// to date. Call after every [`AuthorDoc::apply`] and [`AuthorDoc::change`].
    pub(crate) fn take_changes(&mut self) -> Changes {
        let touched = {
            let mut sink = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *sink)
        };
        let mut out = Changes::default();
        for (root, key) in touched {
            match root {
                Root::Read => {
                    out.read = true;
                    continue;
                }
                Root::Shares => {
                    out.shares.insert(key.to_string());
                    continue;
                }
                Root::Requests => {
                    out.requests.insert(key.to_string());
                    continue;
                }
                Root::Moderated => out.moderated = true,
                _ => out.posting = true,
            }
            let Some(id) = parse_id(&key) else { continue };
            out.ids.insert(id);
            if root == Root::Reactions {
                let emoji = &key[32..];
                let txn = self.doc.transact();
                // A stamp alone, or (encrypted) a stamp and the sealed emoji.
                let active = buffer(self.reactions.get(&txn, &key)).is_some_and(|b| b.len() >= 8);
                let entry = self.reaction_index.entry(id).or_default();
                if active && !emoji.is_empty() && emoji.len() <= MAX_REACTION_BYTES {
                    entry.insert(emoji.to_owned());
                } else {
                    entry.remove(emoji);
                }
                if entry.is_empty() {
                    self.reaction_index.remove(&id);
                }
            }
        }
        out
    }

    /// The next clock the author will write: everything below it is integrated.
    pub(crate) fn next_clock(&self) -> u32 {
        self.doc.transact().state_vector().get(&self.client)
    }

    /// Integrates an update that [`validate_update`] accepted (or that the store
    /// holds, having accepted it before).
    /// A panic inside yrs is caught and reported; the caller then discards
    /// this document and reloads it from the store.
    pub(crate) fn apply(&self, update: Update) -> Result<(), EnvelopeError> {
        catch_unwind(AssertUnwindSafe(|| {
            let mut txn = self.doc.transact_mut();
            txn.apply_update(update)
        }))
        .map_err(|_| EnvelopeError::BadUpdate("integration panicked".into()))?
        .map_err(|e| EnvelopeError::BadUpdate(e.to_string()))
    }

    /// Decodes, validates and integrates update bytes from the store.
    pub(crate) fn apply_bytes(
        &self,
        bytes: &[u8],
        start: u32,
        end: u32,
    ) -> Result<(), EnvelopeError> {
        let update = validate_update(bytes, self.client.get(), start, end)?;
        self.apply(update)
    }

    /// Applies local changes in one transaction and returns the update
    /// that describes them.
    pub(crate) fn change(&self, changes: &[DocChange]) -> LocalUpdate {
        let clock_start = self.next_clock();
        let mut txn = self.doc.transact_mut();
        for change in changes {
            self.write(&mut txn, change);
        }
        let update = txn.encode_update_v1();
        drop(txn);
        LocalUpdate { update, clock_start, clock_end: self.next_clock() }
    }

    fn write(&self, txn: &mut yrs::TransactionMut<'_>, change: &DocChange) {
        match change {
            DocChange::Post { id, record } => {
                self.messages.insert(txn, id.simple(), Any::Buffer(record.encode().into()));
            }
            DocChange::Delete { id, tombstone } => {
                self.messages.remove(txn, &id.simple());
                self.tombstones.insert(txn, id.simple(), Any::Buffer(tombstone.encode().into()));
            }
            DocChange::Moderate { id, tombstone } => {
                self.moderated.insert(txn, id.simple(), Any::Buffer(tombstone.encode().into()));
            }
            DocChange::React { id, emoji, hlc, on } => {
                let value: Vec<u8> =
                    if *on { hlc.as_u64().to_be_bytes().to_vec() } else { Vec::new() };
                self.reactions.insert(
                    txn,
                    format!("{}{}", id.simple(), emoji),
                    Any::Buffer(value.into()),
                );
            }
            DocChange::MarkRead { key, hlc } => {
                let mut value = key.to_bytes().to_vec();
                value.put_u64(hlc.as_u64());
                self.read.insert(txn, READ_KEY, Any::Buffer(value.into()));
            }
            DocChange::ReactSealed { id, tag, hlc, sealed } => {
                let value: Vec<u8> = match sealed {
                    Some(sealed) => [hlc.as_u64().to_be_bytes().as_slice(), sealed].concat(),
                    None => Vec::new(),
                };
                self.reactions.insert(
                    txn,
                    format!("{}{tag}", id.simple()),
                    Any::Buffer(value.into()),
                );
            }
            DocChange::Share { session, recipient, sealed } => {
                self.shares.insert(
                    txn,
                    pair_key(session, recipient),
                    Any::Buffer(sealed.clone().into()),
                );
            }
            DocChange::Request { session, owner, index } => {
                let value = index.to_be_bytes().to_vec();
                self.requests.insert(txn, pair_key(session, owner), Any::Buffer(value.into()));
            }
        }
    }

    /// The author's live post with this id, if any. A record that does not
    /// decode (only its misbehaving author can write one) reads as absent on
    /// every replica alike.
    pub(crate) fn post(&self, id: &MessageId) -> Option<PostRecord> {
        let txn = self.doc.transact();
        buffer(self.messages.get(&txn, &id.simple())).and_then(|b| PostRecord::decode(&b).ok())
    }

    /// The author's tombstone for a message, if they deleted it.
    pub(crate) fn tombstone(&self, id: &MessageId) -> Option<TombstoneRecord> {
        let txn = self.doc.transact();
        buffer(self.tombstones.get(&txn, &id.simple()))
            .and_then(|b| TombstoneRecord::decode(&b).ok())
    }

    /// The author's delete, as a moderator, of someone else's message.
    pub(crate) fn moderation(&self, id: &MessageId) -> Option<TombstoneRecord> {
        let txn = self.doc.transact();
        buffer(self.moderated.get(&txn, &id.simple()))
            .and_then(|b| TombstoneRecord::decode(&b).ok())
    }

    /// Whether the author deleted the message with this id (even with a
    /// malformed record).
    pub(crate) fn is_deleted(&self, id: &MessageId) -> bool {
        let txn = self.doc.transact();
        self.tombstones.get(&txn, &id.simple()).is_some()
    }

    /// The emoji the author currently reacts to a message with.
    pub(crate) fn reactions(&self, id: &MessageId) -> Option<&BTreeSet<String>> {
        self.reaction_index.get(id)
    }

    /// The value of the author's reaction to `id` under `suffix` (an emoji,
    /// or in an encrypted room a tag): the stamp, then in an encrypted room
    /// the encrypted emoji.
    pub(crate) fn reaction_value(&self, id: &MessageId, suffix: &str) -> Option<Arc<[u8]>> {
        let txn = self.doc.transact();
        buffer(self.reactions.get(&txn, &format!("{}{suffix}", id.simple())))
    }

    /// The room key entry under `key` (session id ‖ recipient).
    pub(crate) fn share(&self, key: &str) -> Option<Arc<[u8]>> {
        let txn = self.doc.transact();
        buffer(self.shares.get(&txn, key))
    }

    /// The keys of every request entry of the document.
    pub(crate) fn request_keys(&self) -> Vec<String> {
        let txn = self.doc.transact();
        self.requests.keys(&txn).map(str::to_owned).collect()
    }

    /// The index a request under `key` (session id ‖ owner) asks from.
    pub(crate) fn request(&self, key: &str) -> Option<u32> {
        let txn = self.doc.transact();
        buffer(self.requests.get(&txn, key))
            .and_then(|b| <[u8; 4]>::try_from(&b[..]).ok())
            .map(u32::from_be_bytes)
    }

    /// The author's live posts: id and record.
    pub(crate) fn posts(&self) -> Vec<(MessageId, PostRecord)> {
        let txn = self.doc.transact();
        self.messages
            .iter(&txn)
            .filter_map(|(k, v)| {
                let id = parse_id(k)?;
                match v {
                    Out::Any(Any::Buffer(b)) => PostRecord::decode(&b).ok().map(|p| (id, p)),
                    _ => None,
                }
            })
            .collect()
    }

    /// The author's read marker.
    pub(crate) fn read(&self) -> Option<SortKey> {
        let txn = self.doc.transact();
        buffer(self.read.get(&txn, READ_KEY))
            .filter(|b| b.len() == SortKey::LEN + 8)
            .and_then(|b| SortKey::from_bytes(&b[..SortKey::LEN]).ok())
    }
}

/// Reads one lib0 unsigned varint (7 bits a byte, low groups first) as a u32.
fn read_var_u32(bytes: &[u8], pos: &mut usize) -> Option<u32> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value).ok();
        }
    }
    None
}

/// Checks the counts at the head of a v1 update before yrs reads them: yrs
/// reserves memory for the declared number of clients and of blocks up front,
/// so four hostile bytes could make it reserve gigabytes. A valid update from
/// one author declares exactly one client and no more blocks than bytes left.
fn precheck_update(bytes: &[u8]) -> Result<(), EnvelopeError> {
    let bad = |why: &str| EnvelopeError::BadUpdate(why.to_owned());
    let mut pos = 0;
    match read_var_u32(bytes, &mut pos) {
        Some(1) => {}
        Some(0) => return Err(EnvelopeError::EmptyUpdate),
        Some(_) => return Err(EnvelopeError::ForeignClient),
        None => return Err(bad("truncated client count")),
    }
    let blocks = read_var_u32(bytes, &mut pos).ok_or_else(|| bad("truncated block count"))?;
    if blocks as usize > bytes.len().saturating_sub(pos) {
        return Err(bad("block count exceeds the update's length"));
    }
    Ok(())
}

/// Decodes untrusted update bytes and checks that they only insert into and
/// delete from `client`'s own items, inserting exactly `[start, end)`.
///
/// yrs's decoder is third-party code fed hostile bytes. [`precheck_update`]
/// bounds the counts it pre-allocates for, the envelope cap bounds the rest,
/// and a panic inside it (yrs asserts on some malformed updates) is caught and
/// turned into a typed error, so a bad peer cannot take the replica down. This
/// needs `panic = "unwind"`, the default, in every build that embeds the core.
pub(crate) fn validate_update(
    bytes: &[u8],
    client: u64,
    start: u32,
    end: u32,
) -> Result<Update, EnvelopeError> {
    precheck_update(bytes)?;
    let decoded = catch_unwind(AssertUnwindSafe(|| Update::decode_v1(bytes)))
        .map_err(|_| EnvelopeError::BadUpdate("decoder panicked".into()))?
        .map_err(|e| EnvelopeError::BadUpdate(e.to_string()))?;
    let insertions = decoded.insertions(true);
    let mut lo = u32::MAX;
    let mut hi = 0u32;
    let mut total = 0u64;
    for (id, ranges) in insertions.iter() {
        if id.get() != client {
            return Err(EnvelopeError::ForeignClient);
        }
        for r in ranges.iter() {
            lo = lo.min(r.start);
            hi = hi.max(r.end);
            total += u64::from(r.end.saturating_sub(r.start));
        }
    }
    if total == 0 {
        return Err(EnvelopeError::EmptyUpdate);
    }
    if lo != start || hi != end || total != u64::from(end - start) {
        return Err(EnvelopeError::ClockMismatch);
    }
    if decoded.delete_set().client_ids().any(|id| id.get() != client) {
        return Err(EnvelopeError::ForeignClient);
    }
    Ok(decoded)
}
