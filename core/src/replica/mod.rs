//! The replica: one device's copy of all its rooms, the engine behind every
//! operation and query.
//!
//! Each operation runs as a transaction ([`Tx`]): it changes in-memory author
//! documents, stages every write in one [`WriteBatch`], renders each touched
//! bucket once, stages the timeline rows and blob erasures that follow, then
//! commits the batch (atomic and flushed) and only then tells listeners. If
//! the commit fails, the touched documents are dropped from memory and reload
//! from the store, so memory never runs ahead of what is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::base::{Denied, Role};
use crate::base::{MAX_CITED_HEADS, MAX_ROOM_NAME_BYTES, PENDING_AUTHOR_SHARE};
use crate::blob::{self, BLOB_NONCE_LEN, MAX_BLOB_BYTES, MAX_BODY_BYTES};
use crate::clock::{Clock, HlcState};
use crate::doc::{
    self, AuthorDoc, Changes, DocChange, PostRecord, TombstoneRecord, MAX_ATTACHMENTS,
    MAX_REACTION_BYTES,
};
use crate::envelope::{Delivery, Envelope, EnvelopeFields, Genesis};
use crate::error::GovError;
use crate::error::{EnvelopeError, Error, Result, StoreError};
use crate::governance::Governance;
use crate::ids::{AuthorId, BlobHash, Cursor, Hlc, MessageId, RoomId, SortKey};
use crate::keys::{self, DeviceKey};
use crate::store::migrations;
use crate::store::tables::{self, META_DEVICE_KEY, META_HLC};
use crate::store::{KeyRange, Order, Store, Tree, WriteBatch};
use crate::view::{self, bucket_of, Message, MessageRender, Row, TimelineDiff, Tombstone};

mod delivery;
mod governance;
mod history;

pub use delivery::DeliveryState;

/// Key derivation contexts (blake3 `derive_key`), one per purpose.
const CONTEXT_BLOB_NONCE: &str = "concord 2026 blob nonce v1";
const CONTEXT_MESSAGE_ID: &str = "concord 2026 message id entropy v1";
const CONTEXT_ROOM_NONCE: &str = "concord 2026 room genesis nonce v1";
const CONTEXT_NETWORK_KEY: &str = "concord 2026 network identity v1";

/// Largest page a query returns; larger requests are clamped.
pub const MAX_PAGE: usize = 1000;

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

/// What became of a remote envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Integrated now.
    Applied,
    /// Stored durably; integrates once the author's earlier changes arrive.
    Pending,
    /// Already integrated (any blobs it carried were still offered).
    Duplicate,
    /// Valid, but for a bucket older than the history this replica keeps
    /// (see [`Replica::evict_before`]); not stored.
    OutsideWindow,
}

/// Where a page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// The newest messages.
    Latest,
    /// Messages strictly before the cursor.
    Before(Cursor),
    /// Messages strictly after the cursor.
    After(Cursor),
}

/// A page of messages, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The messages, newest first.
    pub messages: Vec<Message>,
    /// Whether more messages lie beyond this page in the direction asked.
    pub has_more: bool,
    /// Whether older history lies beyond what this replica keeps: it has
    /// been asked of peers (see [`Replica::history_wanted`]), and its
    /// messages will reach the timeline subscription as they arrive.
    pub fetching_older: bool,
}

/// A room this replica holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomInfo {
    /// The room id.
    pub id: RoomId,
    /// The name given at creation.
    pub name: String,
    /// Who created it.
    pub creator: AuthorId,
    /// When it was created.
    pub created: Hlc,
}

/// Everything a room renders to, for comparing replicas: all live messages
/// (oldest first), all tombstones, and every author's read marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomSnapshot {
    /// Live messages, oldest first.
    pub messages: Vec<Message>,
    /// Tombstones, in timeline order.
    pub tombstones: Vec<Tombstone>,
    /// Each author's read marker.
    pub read_markers: BTreeMap<AuthorId, Cursor>,
}

/// Receives a room's timeline changes. Called on the thread that applied the
/// change, after it is durable; keep it quick (hand off to a channel).
pub trait TimelineListener: Send + Sync {
    /// Diffs of one committed change, in timeline order.
    fn on_diffs(&self, room: &RoomId, diffs: &[TimelineDiff]);
}

type Listeners = Mutex<BTreeMap<u64, (RoomId, Arc<dyn TimelineListener>)>>;

/// A live timeline subscription; dropping it stops the deliveries.
pub struct Subscription {
    id: u64,
    listeners: Weak<Listeners>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("id", &self.id).finish()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(listeners) = self.listeners.upgrade() {
            lock(&listeners).remove(&self.id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Listeners run outside this lock, so a poisoned lock holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type DocKey = (RoomId, u32, AuthorId);

/// What a transaction must re-render in one bucket.
#[derive(Default, Debug)]
struct Affected {
    /// Messages whose post, tombstones or reactions changed.
    ids: BTreeSet<MessageId>,
    /// Authors whose read marker changed.
    reads: BTreeSet<AuthorId>,
}

/// One transaction's staged state.
#[derive(Default)]
struct Tx {
    batch: WriteBatch,
    /// What to re-render, per (room, bucket).
    affected: BTreeMap<(RoomId, u32), Affected>,
    /// Documents changed in memory (dropped from the cache if the commit fails).
    docs: HashSet<DocKey>,
    /// Documents created in this transaction (not yet listed in `docs-1`).
    new_docs: BTreeSet<DocKey>,
    /// Documents this transaction loaded or used: the cache keeps them.
    used: HashSet<DocKey>,
    /// Blobs offered by local posts, remote deliveries or sync, per (room,
    /// bucket), kept only if a live message there references them.
    blobs: BTreeMap<(RoomId, u32), HashMap<BlobHash, Vec<u8>>>,
    /// Windows lowered by this transaction (history fetched from a peer).
    windows: HashMap<RoomId, u32>,
    /// Messages posted, and deleted, earlier in this transaction.
    posted: HashMap<(RoomId, MessageId), SortKey>,
    deleted: HashSet<(RoomId, MessageId)>,
    /// Pending deliveries staged in this transaction, by `pending-1` key.
    pending: BTreeMap<Vec<u8>, Delivery>,
    /// How this transaction changes each room's pending use, per author.
    pending_delta: HashMap<(RoomId, AuthorId), PendingUse>,
    /// Timeline diffs to announce after the commit.
    diffs: BTreeMap<RoomId, Vec<TimelineDiff>>,
}

impl Tx {
    fn affect(&mut self, dk: DocKey, changes: Changes) {
        if changes.ids.is_empty() && !changes.read {
            return;
        }
        let entry = self.affected.entry((dk.0, dk.1)).or_default();
        entry.ids.extend(changes.ids);
        if changes.read {
            entry.reads.insert(dk.2);
        }
    }

    fn offer(&mut self, room: RoomId, bucket: u32, blobs: Vec<Vec<u8>>) {
        if blobs.is_empty() {
            return;
        }
        let offered = self.blobs.entry((room, bucket)).or_default();
        for b in blobs {
            offered.insert(blob::hash(&b), b);
        }
    }
}

/// Author documents kept in memory at most, by default. Each holds one
/// author's changes in one bucket; the least recently used are dropped first
/// and rebuilt from their envelopes when needed again.
pub const DEFAULT_DOC_CACHE: usize = 256;

/// Items the cached author documents may hold in all, by default: each item
/// one change an author wrote (a post, edit, delete, reaction or read
/// marker), about 400 bytes in memory while it is live, so about 25 MiB.
/// The documents a transaction used stay whatever their size (a busy day's
/// document is the one every message touches); the least recently used of
/// the others go first.
pub const DEFAULT_DOC_CACHE_ITEMS: u64 = 1 << 16;

/// When a cached document was last used, and how many items it holds.
#[derive(Clone, Copy, Debug)]
struct DocUse {
    tick: u64,
    items: u64,
}

/// Most deliveries one room keeps waiting in `pending-1` by default (for
/// their author's earlier changes, or for the governance they cite). Honest
/// catch-up sends governance first and each author's changes in order, so
/// little waits; what waits for something that never comes (a gap never
/// filled, heads that do not exist) would otherwise stay forever.
pub const DEFAULT_PENDING_PER_ROOM: usize = 16_384;
/// Most bytes of deliveries one room keeps waiting, by default.
pub const DEFAULT_PENDING_BYTES_PER_ROOM: u64 = 64 << 20;

/// What a room keeps waiting in `pending-1`: records and bytes (signed, so
/// that a transaction's changes can be added).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PendingUse {
    count: i64,
    bytes: i64,
}

impl PendingUse {
    fn add(&mut self, other: PendingUse) {
        self.count += other.count;
        self.bytes += other.bytes;
    }

    fn within(&self, count: u64, bytes: u64) -> bool {
        let limit = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.count <= limit(count) && self.bytes <= limit(bytes)
    }
}

/// What one room keeps waiting in `pending-1`, in all and per author.
#[derive(Clone, Debug, Default)]
struct RoomPending {
    total: PendingUse,
    authors: HashMap<AuthorId, PendingUse>,
}

impl RoomPending {
    fn add(&mut self, author: AuthorId, delta: PendingUse) {
        self.total.add(delta);
        let mine = self.authors.entry(author).or_default();
        mine.add(delta);
        if mine.count <= 0 {
            self.authors.remove(&author);
        }
    }
}

/// One device's replica of its rooms, over a [`Store`].
pub struct Replica<S: Store> {
    store: S,
    clock: Arc<dyn Clock>,
    key: DeviceKey,
    hlc: HlcState,
    rooms: HashMap<RoomId, Genesis>,
    /// Oldest bucket held, for rooms that keep only recent history.
    windows: HashMap<RoomId, u32>,
    /// Rooms whose history was paged past the window: the oldest bucket held
    /// there, for sync to fetch what lies before it.
    history_wanted: Mutex<BTreeMap<RoomId, u32>>,
    docs: HashMap<DocKey, AuthorDoc>,
    /// Last use of each cached document (a logical tick) and its size, for
    /// eviction.
    doc_use: HashMap<DocKey, DocUse>,
    doc_tick: u64,
    /// Most documents and most items (in all) the cache keeps.
    doc_cache: usize,
    doc_cache_items: u64,
    listeners: Arc<Listeners>,
    next_listener: u64,
    /// Each room's governance.
    govs: HashMap<RoomId, Governance>,
    /// Each room's committed pending use, counted from the store when first
    /// needed and kept up to date by every commit.
    pending_use: HashMap<RoomId, RoomPending>,
    /// The pending limits per room: records and bytes.
    pending_limit: (usize, u64),
}

impl<S: Store> std::fmt::Debug for Replica<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("author", &self.key.author()).finish_non_exhaustive()
    }
}

fn corrupt(tree: Tree, reason: impl std::fmt::Display) -> Error {
    Error::Store(StoreError::Corrupt { tree: tree.name(), reason: reason.to_string() })
}

fn read_u64(raw: Option<Vec<u8>>, tree: Tree) -> Result<Option<u64>> {
    raw.map(|v| {
        <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt(tree, "expected 8 bytes"))
    })
    .transpose()
}

impl<S: Store> Replica<S> {
    /// Opens a replica over `store`, creating a device key on first open.
    pub fn open(store: S, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open_inner(store, clock, None)
    }

    /// Opens a replica whose device key, on first open, is made from `seed`
    /// (for reproducible tests and simulations). A store that already has a
    /// different key is refused.
    pub fn open_with_seed(store: S, clock: Arc<dyn Clock>, seed: [u8; 32]) -> Result<Self> {
        Self::open_inner(store, clock, Some(DeviceKey::from_seed(seed)))
    }

    fn open_inner(store: S, clock: Arc<dyn Clock>, wanted: Option<DeviceKey>) -> Result<Self> {
        migrations::migrate(&store)?;
        let key = match store.get(Tree::Meta, META_DEVICE_KEY)? {
            Some(raw) => {
                let seed: [u8; 32] = raw
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt(Tree::Meta, "device key length"))?;
                let key = DeviceKey::from_seed(seed);
                if wanted.as_ref().is_some_and(|w| w.author() != key.author()) {
                    return Err(Error::InvalidInput(
                        "the store already holds a different device key".into(),
                    ));
                }
                key
            }
            None => {
                let key = match wanted {
                    Some(k) => k,
                    None => DeviceKey::generate()?,
                };
                let mut batch = WriteBatch::new();
                batch.put(Tree::Meta, META_DEVICE_KEY, key.seed());
                store.commit(batch)?;
                key
            }
        };
        let last = read_u64(store.get(Tree::Meta, META_HLC)?, Tree::Meta)?.unwrap_or(0);
        let mut rooms = HashMap::new();
        for (k, v) in
            store.scan(Tree::Rooms, &KeyRange::prefix(&[]), Order::Ascending, usize::MAX)?
        {
            let genesis = Genesis::from_bytes(&v).map_err(|e| corrupt(Tree::Rooms, e))?;
            if genesis.room_id().as_bytes().as_slice() != k.as_slice() {
                return Err(corrupt(Tree::Rooms, "genesis does not hash to its key"));
            }
            rooms.insert(genesis.room_id(), genesis);
        }
        let mut windows = HashMap::new();
        for (k, v) in
            store.scan(Tree::Windows, &KeyRange::prefix(&[]), Order::Ascending, usize::MAX)?
        {
            let room: [u8; 32] =
                k.as_slice().try_into().map_err(|_| corrupt(Tree::Windows, "key length"))?;
            let bucket: [u8; 4] =
                v.as_slice().try_into().map_err(|_| corrupt(Tree::Windows, "value length"))?;
            windows.insert(RoomId::from_bytes(room), u32::from_be_bytes(bucket));
        }
        let govs = governance::load(&store, &rooms)?;
        Ok(Self {
            govs,
            store,
            clock,
            key,
            hlc: HlcState::new(Hlc::from_u64(last)),
            rooms,
            windows,
            history_wanted: Mutex::new(BTreeMap::new()),
            docs: HashMap::new(),
            doc_use: HashMap::new(),
            doc_tick: 0,
            doc_cache: DEFAULT_DOC_CACHE,
            doc_cache_items: DEFAULT_DOC_CACHE_ITEMS,
            listeners: Arc::new(Mutex::new(BTreeMap::new())),
            next_listener: 0,
            pending_use: HashMap::new(),
            pending_limit: (DEFAULT_PENDING_PER_ROOM, DEFAULT_PENDING_BYTES_PER_ROOM),
        })
    }

    /// This device's author id (its public key).
    pub fn author(&self) -> AuthorId {
        self.key.author()
    }

    /// The device key's secret seed, to keep a copy of the device's
    /// identity apart from its store (a relay's key file). Whoever holds it
    /// can sign as this device; [`Replica::open_with_seed`] opens a fresh
    /// store as this device again.
    pub fn device_seed(&self) -> [u8; 32] {
        self.key.seed()
    }

    /// A secret derived from the device key for the device's network
    /// identity (its libp2p key), so the device keeps one peer id across
    /// restarts without the signing key itself leaving the core.
    pub fn network_secret(&self) -> [u8; 32] {
        self.key.derive(CONTEXT_NETWORK_KEY, &[])
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    // ----- rooms -------------------------------------------------------------

    /// Creates an open room (anyone holding its ticket who is not banned may
    /// post), with this device as its admin, and returns its id. For a room
    /// of members only, see [`Replica::create_room_with`].
    pub fn create_room(&mut self, name: &str) -> Result<RoomId> {
        self.found_room(name, &[], true)
    }

    fn sign_genesis(&mut self, name: &str, open: bool) -> Result<Genesis> {
        if name.len() > MAX_ROOM_NAME_BYTES {
            return Err(Error::InvalidInput(format!(
                "room name longer than {MAX_ROOM_NAME_BYTES} bytes"
            )));
        }
        let hlc = self.hlc.tick(self.clock.now_millis());
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(
            &self.key.derive(CONTEXT_ROOM_NONCE, &hlc.as_u64().to_be_bytes())[..16],
        );
        Ok(Genesis::sign(&self.key, hlc, name, nonce, open)?)
    }

    /// Joins a room from its genesis bytes (as a ticket carries them).
    pub fn join_room(&mut self, genesis: &[u8]) -> Result<RoomId> {
        let genesis = Genesis::from_bytes(genesis)?;
        self.add_room_with(genesis, WriteBatch::new())
    }

    /// Adds a room, committing `batch` with it.
    fn add_room_with(&mut self, genesis: Genesis, mut batch: WriteBatch) -> Result<RoomId> {
        let id = genesis.room_id();
        if !self.rooms.contains_key(&id) {
            batch.put(Tree::Rooms, id.as_bytes().to_vec(), genesis.as_bytes().to_vec());
            batch.put(Tree::Meta, META_HLC, self.hlc.last().as_u64().to_be_bytes());
            self.store.commit(batch)?;
            self.govs
                .entry(id)
                .or_insert_with(|| Governance::new(id, genesis.creator(), genesis.is_open()));
            self.rooms.insert(id, genesis);
        }
        Ok(id)
    }

    /// The genesis of a room, to share with people who should join it.
    pub fn genesis(&self, room: &RoomId) -> Result<&Genesis> {
        self.rooms.get(room).ok_or(Error::UnknownRoom(*room))
    }

    /// Every room this replica holds, oldest first.
    pub fn rooms(&self) -> Vec<RoomInfo> {
        let mut out: Vec<RoomInfo> = self
            .rooms
            .values()
            .map(|g| RoomInfo {
                id: g.room_id(),
                name: g.name().to_owned(),
                creator: g.creator(),
                created: g.created(),
            })
            .collect();
        out.sort_by_key(|r| (r.created, r.id));
        out
    }

    fn check_room(&self, room: &RoomId) -> Result<()> {
        if self.rooms.contains_key(room) {
            Ok(())
        } else {
            Err(Error::UnknownRoom(*room))
        }
    }

    // ----- local operations --------------------------------------------------

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

    fn commit_one(&mut self, op: Op) -> Result<Sent> {
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
    fn check_role(&self, room: &RoomId, needed: Role, what: &'static str) -> Result<()> {
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

    fn local_op(&mut self, tx: &mut Tx, op: Op) -> Result<Sent> {
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
                let body = self.seal_blob(&id, hlc, 0, text.as_bytes());
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
                self.local_change(
                    tx,
                    room,
                    key,
                    hlc,
                    DocChange::React { id, emoji, hlc, on },
                    Vec::new(),
                )
            }
            Op::MarkRead { room, id } => {
                let key = self.live_message(tx, &room, &id)?;
                let hlc = self.hlc.tick(self.clock.now_millis());
                self.local_change(tx, room, key, hlc, DocChange::MarkRead { key, hlc }, Vec::new())
            }
        }
    }

    fn local_post(&mut self, tx: &mut Tx, room: RoomId, draft: Draft) -> Result<Sent> {
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
        let body = self.seal_blob(&id, hlc, 0, draft.text.as_bytes());
        let mut blobs = vec![body];
        for (i, a) in draft.attachments.iter().enumerate() {
            blobs.push(self.seal_blob(&id, hlc, i as u8 + 1, a));
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
    fn local_change(
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
        let doc = self.docs.get_mut(&dk).ok_or_else(|| corrupt(Tree::Docs, "document vanished"))?;
        let update = doc.change(&change);
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

    fn seal_blob(&self, id: &MessageId, hlc: Hlc, index: u8, content: &[u8]) -> Vec<u8> {
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
    fn new_message_id(&self, hlc: Hlc) -> MessageId {
        let entropy = self.key.derive(CONTEXT_MESSAGE_ID, &hlc.as_u64().to_be_bytes());
        let mut random = [0u8; 10];
        random.copy_from_slice(&entropy[..10]);
        MessageId(uuid::Builder::from_unix_timestamp_millis(hlc.millis(), &random).into_uuid())
    }

    /// The sort key of a live message, seeing this transaction's own changes.
    fn live_message(&self, tx: &Tx, room: &RoomId, id: &MessageId) -> Result<SortKey> {
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
    fn own_live_post(
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

    fn is_tombstoned(&self, room: &RoomId, id: &MessageId) -> Result<bool> {
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

    // ----- remote envelopes --------------------------------------------------

    /// Verifies, validates and applies envelopes from peers, in any order.
    /// Each has its own outcome; a rejected one changes nothing. The outer
    /// error means the store failed and nothing of this call was kept.
    pub fn apply(
        &mut self,
        room: &RoomId,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<Result<Applied, EnvelopeError>>> {
        self.check_room(room)?;
        let mut tx = Tx::default();
        let results = self.apply_in(&mut tx, room, deliveries)?;
        self.finish(tx)?;
        Ok(results)
    }

    fn apply_in(
        &mut self,
        tx: &mut Tx,
        room: &RoomId,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<Result<Applied, EnvelopeError>>> {
        // Apply each author document's changes in clock order, so a batch that
        // holds a whole history integrates without detours through pending.
        let mut order: Vec<usize> = (0..deliveries.len()).collect();
        order.sort_by_key(|&i| {
            let e = &deliveries[i].envelope;
            (e.bucket(), e.author(), e.clock_range().0)
        });
        let mut slots: Vec<Option<Delivery>> = deliveries.into_iter().map(Some).collect();
        let mut results: Vec<Result<Applied, EnvelopeError>> =
            vec![Ok(Applied::Duplicate); slots.len()];
        for i in order {
            if let Some(d) = slots[i].take() {
                results[i] = self.apply_one(tx, room, d)?;
            }
        }
        Ok(results)
    }

    /// Applies one delivery, then whatever of its document's pending
    /// deliveries it unblocks. The outer error is a store failure; the inner
    /// one is this envelope's rejection.
    fn apply_one(
        &mut self,
        tx: &mut Tx,
        room: &RoomId,
        d: Delivery,
    ) -> Result<Result<Applied, EnvelopeError>> {
        let dk = (*room, d.envelope.bucket(), d.envelope.author());
        let outcome = self.integrate(tx, room, d)?;
        if outcome == Ok(Applied::Applied) {
            self.drain_pending(tx, dk)?;
        }
        Ok(outcome)
    }

    /// Verifies and integrates one delivery, or stores it as pending. Never
    /// drains, so integrating a long pending chain does not recurse.
    fn integrate(
        &mut self,
        tx: &mut Tx,
        room: &RoomId,
        d: Delivery,
    ) -> Result<Result<Applied, EnvelopeError>> {
        let env = &d.envelope;
        if env.room() != *room {
            return Ok(Err(EnvelopeError::WrongRoom { expected: *room, found: env.room() }));
        }
        let author = env.author();
        let (start, end) = env.clock_range();
        let update = match doc::validate_update(env.update(), keys::client_id(&author), start, end)
        {
            Ok(u) => u,
            Err(e) => return Ok(Err(e)),
        };
        if env.bucket() < self.window_in(tx, room) {
            return Ok(Ok(Applied::OutsideWindow));
        }
        // The author must be a member at the governance heads it cites; an
        // envelope citing governance not held yet waits for it.
        let role = match self.govs.get_mut(room).map(|g| g.role_at(env.gov_heads(), &author)) {
            Some(Ok(Some(role))) => Some(role),
            Some(Ok(None)) => return Ok(Err(EnvelopeError::Denied(Denied::NotMember))),
            Some(Err(_)) => None,
            None => return Ok(Err(EnvelopeError::UnknownRoom(*room))),
        };
        let dk = (*room, env.bucket(), author);
        self.load_doc(tx, dk)?;
        let next = self.docs.get(&dk).map_or(0, AuthorDoc::next_clock);
        let ekey = tables::envelope_key(room, env.bucket(), &author, start);
        if start < next {
            // Honest envelopes of a document tile its clock: each starts where
            // the previous ended, and each is stored under its start. Anything
            // else starting inside the integrated range is the author signing
            // two histories (equivocation); the first one seen stays.
            let stored = self.staged_get(Some(&tx.batch), Tree::Envelopes, &ekey)?;
            if stored.as_deref() != Some(env.as_bytes()) {
                return Ok(Err(EnvelopeError::Equivocation));
            }
            tx.offer(*room, env.bucket(), d.blobs);
            return Ok(Ok(Applied::Duplicate));
        }
        let Some(role) = role.filter(|_| start == next) else {
            // A gap in the author's clock, or governance not held yet.
            let stored = self.staged_get(Some(&tx.batch), Tree::Pending, &ekey)?;
            let waiting = stored
                .as_deref()
                .and_then(|raw| Delivery::from_bytes(raw).ok())
                .map(|p| p.envelope.as_bytes().to_vec());
            if waiting.as_ref().is_some_and(|w| w.as_slice() != env.as_bytes()) {
                return Ok(Err(EnvelopeError::Equivocation));
            }
            // Governance this replica lacks may yet make the author a
            // member; meanwhile only a key that may read the room now gets
            // to wait for it, so keys that were never admitted cannot fill a
            // room of members with deliveries that wait for nothing.
            if role.is_none()
                && stored.is_none()
                && self.govs.get(room).is_none_or(|g| g.state().role(&author).is_none())
            {
                return Ok(Err(EnvelopeError::UnknownGovernance));
            }
            let bytes = d.to_bytes();
            let grows = PendingUse {
                count: i64::from(stored.is_none()),
                bytes: bytes.len() as i64 - stored.as_ref().map_or(0, |s| s.len() as i64),
            };
            if stored.is_none() && !self.pending_fits(tx, room, &author, grows)? {
                return Ok(Err(EnvelopeError::PendingFull));
            }
            tx.pending_delta.entry((*room, author)).or_default().add(grows);
            tx.batch.put(Tree::Pending, ekey.clone(), bytes);
            tx.pending.insert(ekey, d);
            return Ok(Ok(Applied::Pending));
        };
        if let Some(doc) = self.docs.get_mut(&dk) {
            let judged = doc.apply(update).and_then(|()| {
                // What the update wrote decides the role it needs.
                let changes = doc.take_changes();
                let (needed, what) = if changes.moderated {
                    (Role::Moderator, "delete others' messages")
                } else if changes.posting {
                    (Role::Member, "post, edit, delete or react")
                } else {
                    (Role::ReadOnly, "mark read")
                };
                if role < needed {
                    return Err(EnvelopeError::Denied(Denied::Role { role, what }));
                }
                Ok(changes)
            });
            match judged {
                Ok(changes) => tx.affect(dk, changes),
                Err(e) => {
                    // yrs may have half-integrated, or integrated what the
                    // author may not write: reload this document from the store.
                    self.docs.remove(&dk);
                    tx.docs.remove(&dk);
                    return Ok(Err(e));
                }
            }
        }
        tx.docs.insert(dk);
        self.hlc.observe(env.hlc(), self.clock.now_millis());
        stage_envelope(tx, env);
        tx.offer(*room, env.bucket(), d.blobs);
        Ok(Ok(Applied::Applied))
    }

    /// Retries the room's pending deliveries after governance changes
    /// arrived: those that waited only for them integrate now.
    fn retry_pending(&mut self, room: &RoomId) -> Result<()> {
        let mut dks: BTreeSet<DocKey> = BTreeSet::new();
        for (k, _) in self.room_records(Tree::Pending, room)? {
            if let (Some(bucket), Some(author)) =
                (tables::key_bucket(&k), tables::doc_key_author(&k))
            {
                dks.insert((*room, bucket, author));
            }
        }
        if dks.is_empty() {
            return Ok(());
        }
        let mut tx = Tx::default();
        for dk in dks {
            self.load_doc(&mut tx, dk)?;
            self.drain_pending(&mut tx, dk)?;
        }
        self.finish(tx)
    }

    /// Integrates pending deliveries of a document whose clock just advanced.
    fn drain_pending(&mut self, tx: &mut Tx, dk: DocKey) -> Result<()> {
        let (room, bucket, author) = dk;
        let prefix = tables::doc_key(&room, bucket, &author);
        // Each waiting delivery with the bytes its record takes.
        let mut waiting: BTreeMap<Vec<u8>, (Delivery, usize)> = BTreeMap::new();
        for (k, v) in self.store.scan(
            Tree::Pending,
            &KeyRange::prefix(&prefix),
            Order::Ascending,
            usize::MAX,
        )? {
            if tx.batch.get(Tree::Pending, &k) == Some(None) {
                continue;
            }
            match Delivery::from_bytes(&v) {
                Ok(d) => {
                    waiting.insert(k, (d, v.len()));
                }
                // A record that no longer decodes can never apply; drop it.
                Err(_) => {
                    tx.pending_delta
                        .entry((room, author))
                        .or_default()
                        .add(PendingUse { count: -1, bytes: -(v.len() as i64) });
                    tx.batch.delete(Tree::Pending, k);
                }
            }
        }
        for (k, d) in tx.pending.range(prefix.clone()..) {
            if !k.starts_with(&prefix) {
                break;
            }
            waiting.insert(k.clone(), (d.clone(), d.to_bytes().len()));
        }
        // Keys end in the big-endian clock_start, so `waiting` is in clock
        // order and the ready deliveries are always at its front.
        while let Some(entry) = waiting.first_entry() {
            let next = self.docs.get(&dk).map_or(0, AuthorDoc::next_clock);
            if entry.get().0.envelope.clock_range().0 > next {
                return Ok(());
            }
            let (k, (d, len)) = entry.remove_entry();
            tx.pending_delta
                .entry((room, author))
                .or_default()
                .add(PendingUse { count: -1, bytes: -(len as i64) });
            tx.batch.delete(Tree::Pending, k.clone());
            tx.pending.remove(&k);
            // Its outcome was reported when it arrived; a late rejection (for
            // example equivocation) just drops it.
            let _ = self.integrate(tx, &room, d)?;
        }
        Ok(())
    }

    // ----- documents and rendering -------------------------------------------

    /// Ensures the document is in memory, rebuilding it from stored envelopes.
    fn load_doc(&mut self, tx: &mut Tx, dk: DocKey) -> Result<()> {
        self.doc_tick += 1;
        tx.used.insert(dk);
        if self.docs.contains_key(&dk) {
            if let Some(used) = self.doc_use.get_mut(&dk) {
                used.tick = self.doc_tick;
            }
            return Ok(());
        }
        let (room, bucket, author) = dk;
        let mut doc = AuthorDoc::new(&author);
        let prefix = tables::doc_key(&room, bucket, &author);
        let stored = self.store.scan(
            Tree::Envelopes,
            &KeyRange::prefix(&prefix),
            Order::Ascending,
            usize::MAX,
        )?;
        if stored.is_empty() && self.store.get(Tree::Docs, &prefix)?.is_none() {
            tx.new_docs.insert(dk);
        }
        for (_, v) in stored {
            let env = Envelope::from_stored_bytes(&v).map_err(|e| corrupt(Tree::Envelopes, e))?;
            let (start, end) = env.clock_range();
            doc.apply_bytes(env.update(), start, end).map_err(|e| corrupt(Tree::Envelopes, e))?;
        }
        // What the stored envelopes say is already rendered.
        doc.take_changes();
        let items = u64::from(doc.next_clock());
        self.doc_use.insert(dk, DocUse { tick: self.doc_tick, items });
        self.docs.insert(dk, doc);
        Ok(())
    }

    /// Drops the least recently used documents while the cache holds more
    /// documents or more items than it may, sparing those in `keep` (the
    /// ones the last transaction used, which its next likely uses again).
    /// Dropped documents are durable in `envelopes-1` and reload on their
    /// next use.
    fn trim_doc_cache(&mut self, keep: &HashSet<DocKey>) {
        let mut items: u64 = self.doc_use.values().map(|u| u.items).sum();
        if self.docs.len() <= self.doc_cache && items <= self.doc_cache_items {
            return;
        }
        let mut by_use: Vec<(u64, DocKey)> = self
            .doc_use
            .iter()
            .filter(|(k, _)| !keep.contains(k))
            .map(|(k, u)| (u.tick, *k))
            .collect();
        by_use.sort_unstable();
        for (_, dk) in by_use {
            if self.docs.len() <= self.doc_cache && items <= self.doc_cache_items {
                break;
            }
            self.docs.remove(&dk);
            if let Some(u) = self.doc_use.remove(&dk) {
                items -= u.items;
            }
        }
    }

    /// Sets how many author documents stay in memory (at least one).
    pub fn set_doc_cache(&mut self, docs: usize) {
        self.doc_cache = docs.max(1);
        self.trim_doc_cache(&HashSet::new());
    }

    /// Sets how many items the cached author documents may hold in all
    /// (default [`DEFAULT_DOC_CACHE_ITEMS`]). The documents the last
    /// transaction used stay, even if they alone hold more; the least
    /// recently used of the others go first.
    pub fn set_doc_cache_items(&mut self, items: u64) {
        self.doc_cache_items = items;
        self.trim_doc_cache(&HashSet::new());
    }

    /// How many items the cached author documents hold in all.
    pub fn cached_doc_items(&self) -> u64 {
        self.doc_use.values().map(|u| u.items).sum()
    }

    /// Sets how much one room may keep waiting in `pending-1`: at most
    /// `deliveries` records and `bytes` bytes (defaults
    /// [`DEFAULT_PENDING_PER_ROOM`] and [`DEFAULT_PENDING_BYTES_PER_ROOM`]),
    /// and one author at most a [`PENDING_AUTHOR_SHARE`]th of each.
    /// A delivery that would wait beyond these is refused with
    /// [`EnvelopeError::PendingFull`], which is nobody's fault: it is
    /// offered again by a later catch-up, once what it waits for is held.
    pub fn set_pending_limit(&mut self, deliveries: usize, bytes: u64) {
        self.pending_limit = (deliveries.max(1), bytes.max(1));
    }

    /// How many deliveries of `room` wait in `pending-1`, and their bytes.
    pub fn pending_use(&mut self, room: &RoomId) -> Result<(usize, u64)> {
        let used = self.committed_pending(room)?.total;
        Ok((used.count.max(0) as usize, used.bytes.max(0) as u64))
    }

    /// Every record of `room` in `tree` (keys begin with the room id).
    fn room_records(&self, tree: Tree, room: &RoomId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.store.scan(
            tree,
            &KeyRange::prefix(room.as_bytes()),
            Order::Ascending,
            usize::MAX,
        )?)
    }

    /// The room's committed pending use, counted from the store once.
    fn committed_pending(&mut self, room: &RoomId) -> Result<&RoomPending> {
        if !self.pending_use.contains_key(room) {
            let mut used = RoomPending::default();
            for (k, v) in self.room_records(Tree::Pending, room)? {
                // `pending-1` keys are envelope keys: room, bucket, author, clock.
                let author = tables::doc_key_author(&k)
                    .ok_or_else(|| corrupt(Tree::Pending, format!("key of {} bytes", k.len())))?;
                used.add(author, PendingUse { count: 1, bytes: v.len() as i64 });
            }
            self.pending_use.insert(*room, used);
        }
        Ok(&self.pending_use[room])
    }

    /// Whether `grows` more from `author` fits in the room's pending, in all
    /// and in the author's share, counting what the transaction already
    /// staged.
    fn pending_fits(
        &mut self,
        tx: &Tx,
        room: &RoomId,
        author: &AuthorId,
        grows: PendingUse,
    ) -> Result<bool> {
        let counted = self.committed_pending(room)?;
        let mut total = counted.total;
        let mut mine = counted.authors.get(author).copied().unwrap_or_default();
        for ((r, a), delta) in &tx.pending_delta {
            if r == room {
                total.add(*delta);
                if a == author {
                    mine.add(*delta);
                }
            }
        }
        total.add(grows);
        mine.add(grows);
        let (count, bytes) = self.pending_limit;
        let share = |n: u64| (n / PENDING_AUTHOR_SHARE).max(1);
        Ok(total.within(count as u64, bytes) && mine.within(share(count as u64), share(bytes)))
    }

    /// How many author documents are in memory now.
    pub fn cached_docs(&self) -> usize {
        self.docs.len()
    }

    fn bucket_authors(&self, tx: &Tx, room: &RoomId, bucket: u32) -> Result<BTreeSet<AuthorId>> {
        let prefix = tables::bucket_prefix(room, bucket);
        let mut authors = BTreeSet::new();
        for (k, _) in
            self.store.scan(Tree::Docs, &KeyRange::prefix(&prefix), Order::Ascending, usize::MAX)?
        {
            authors.insert(
                tables::doc_key_author(&k).ok_or_else(|| corrupt(Tree::Docs, "short key"))?,
            );
        }
        // Documents this transaction changed may not be listed in `docs-1` yet.
        for (r, b, a) in tx.new_docs.iter().chain(tx.docs.iter()) {
            if r == room && *b == bucket {
                authors.insert(*a);
            }
        }
        Ok(authors)
    }

    /// Renders every affected message and read marker, stages the resulting
    /// rows, blob keeps and erasures, commits, and announces the diffs.
    fn finish(&mut self, mut tx: Tx) -> Result<()> {
        let mut buckets: BTreeSet<(RoomId, u32)> = tx.affected.keys().copied().collect();
        buckets.extend(tx.blobs.keys().copied());
        for (room, bucket) in buckets {
            if let Err(e) = self.refresh_bucket(&mut tx, &room, bucket) {
                self.abandon(&tx);
                return Err(e);
            }
        }
        for dk in &tx.docs {
            if let Some(doc) = self.docs.get(dk) {
                let next = doc.next_clock();
                tx.batch.put(Tree::Docs, tables::doc_key(&dk.0, dk.1, &dk.2), next.to_be_bytes());
                if let Some(used) = self.doc_use.get_mut(dk) {
                    used.items = u64::from(next);
                }
            }
        }
        for (room, bucket) in &tx.windows {
            tx.batch.put(Tree::Windows, room.as_bytes().to_vec(), bucket.to_be_bytes());
        }
        tx.batch.put(Tree::Meta, META_HLC, self.hlc.last().as_u64().to_be_bytes());
        let batch = std::mem::take(&mut tx.batch);
        if let Err(e) = self.store.commit(batch) {
            self.abandon(&tx);
            return Err(e.into());
        }
        for (room, bucket) in std::mem::take(&mut tx.windows) {
            self.windows.insert(room, bucket);
        }
        for ((room, author), delta) in std::mem::take(&mut tx.pending_delta) {
            if let Some(used) = self.pending_use.get_mut(&room) {
                used.add(author, delta);
            }
        }
        self.trim_doc_cache(&tx.used);
        self.announce(std::mem::take(&mut tx.diffs));
        Ok(())
    }

    fn abandon(&mut self, tx: &Tx) {
        for dk in tx.docs.iter().chain(&tx.new_docs) {
            self.docs.remove(dk);
            self.doc_use.remove(dk);
        }
    }

    /// Re-renders what a transaction affected in one bucket: only the changed
    /// messages and read markers, so its cost does not grow with the bucket.
    fn refresh_bucket(&mut self, tx: &mut Tx, room: &RoomId, bucket: u32) -> Result<()> {
        let affected = tx.affected.remove(&(*room, bucket)).unwrap_or_default();
        let listening = lock(&self.listeners).values().any(|(r, _)| r == room);
        let mut diffs = DiffSink { listening, diffs: Vec::new() };
        if !affected.ids.is_empty() || !affected.reads.is_empty() {
            let authors = self.bucket_authors(tx, room, bucket)?;
            for author in &authors {
                self.load_doc(tx, (*room, bucket, *author))?;
            }
            let docs: Vec<(AuthorId, &AuthorDoc)> = authors
                .iter()
                .filter_map(|a| self.docs.get(&(*room, bucket, *a)).map(|d| (*a, d)))
                .collect();
            let renders: Vec<(MessageId, MessageRender)> = affected
                .ids
                .iter()
                .map(|id| (*id, view::render_message(bucket, id, &docs)))
                .collect();
            let reads: Vec<(AuthorId, Option<SortKey>)> = affected
                .reads
                .iter()
                .map(|a| {
                    let doc = docs.iter().find(|(author, _)| author == a);
                    (*a, doc.and_then(|(_, d)| view::render_read(bucket, d)))
                })
                .collect();
            for (id, render) in renders {
                self.stage_message(tx, room, bucket, &id, render, &mut diffs)?;
            }
            for (author, read) in reads {
                let key = tables::read_key(room, &author, bucket);
                match read {
                    Some(k) => tx.batch.put(Tree::Reads, key, k.to_bytes()),
                    None => tx.batch.delete(Tree::Reads, key),
                }
            }
        }
        // Blobs offered for messages that were already rendered (a duplicate
        // delivery, or blobs fetched by sync) fill what those messages want.
        if let Some(offered) = tx.blobs.remove(&(*room, bucket)) {
            for (hash, b) in offered {
                let wkey = tables::wanted_blob_key(room, bucket, &hash);
                let Some(wanted) = self.staged_get(Some(&tx.batch), Tree::WantedBlobs, &wkey)?
                else {
                    continue;
                };
                let (key, is_body) = decode_wanted(&wanted)?;
                if is_body && !valid_body(&b) {
                    continue;
                }
                let tkey = tables::timeline_key(room, &key);
                if let Some(text) = blob::body_text(&b).filter(|_| is_body) {
                    tx.batch.put(Tree::Bodies, tkey.clone(), text.as_bytes());
                }
                tx.batch.put(Tree::Blobs, tables::blob_key(room, &hash), b);
                tx.batch.delete(Tree::WantedBlobs, wkey);
                if let Some(raw) = self.staged_get(Some(&tx.batch), Tree::Timeline, &tkey)? {
                    let row = Row::decode(&raw).map_err(|e| corrupt(Tree::Timeline, e))?;
                    diffs.push(|| {
                        Ok(TimelineDiff::Update(self.message(Some(&tx.batch), room, key, &row)?))
                    })?;
                }
            }
        }
        if !diffs.diffs.is_empty() {
            tx.diffs.entry(*room).or_default().extend(diffs.diffs);
        }
        Ok(())
    }

    /// Stages one message's new rendering against what the store holds: its
    /// timeline row, id index, blobs (kept, wanted or erased) and tombstones.
    fn stage_message(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        id: &MessageId,
        render: MessageRender,
        diffs: &mut DiffSink,
    ) -> Result<()> {
        let idkey = tables::message_id_key(room, id);
        let old_key = self
            .staged_get(Some(&tx.batch), Tree::MessageIds, &idkey)?
            .map(|raw| SortKey::from_bytes(&raw).map_err(|e| corrupt(Tree::MessageIds, e)))
            .transpose()?;
        let old = match old_key {
            Some(k) => {
                let raw = self
                    .staged_get(Some(&tx.batch), Tree::Timeline, &tables::timeline_key(room, &k))?
                    .ok_or_else(|| corrupt(Tree::Timeline, "message id points at no row"))?;
                Some((k, Row::decode(&raw).map_err(|e| corrupt(Tree::Timeline, e))?))
            }
            None => None,
        };
        match (old, render.row) {
            (None, None) => {}
            (Some((k, row)), None) => {
                self.erase_row(tx, room, bucket, &k, &row, &BTreeSet::new());
                tx.batch.delete(Tree::MessageIds, idkey);
                diffs.push(|| Ok(TimelineDiff::Remove { id: *id, cursor: Cursor(k) }))?;
            }
            (Some((ok, orow)), Some((nk, nrow))) if ok == nk => {
                if orow != nrow {
                    let keep: BTreeSet<BlobHash> = nrow.blobs().copied().collect();
                    self.erase_row(tx, room, bucket, &ok, &orow, &keep);
                    self.stage_row(tx, room, bucket, &nk, &nrow)?;
                    diffs.push(|| {
                        Ok(TimelineDiff::Update(self.message(Some(&tx.batch), room, nk, &nrow)?))
                    })?;
                }
            }
            (old, Some((nk, nrow))) => {
                // A smaller claim on the id took it over: the old row leaves.
                if let Some((ok, orow)) = old {
                    self.erase_row(tx, room, bucket, &ok, &orow, &BTreeSet::new());
                    diffs.push(|| Ok(TimelineDiff::Remove { id: *id, cursor: Cursor(ok) }))?;
                }
                tx.batch.put(Tree::MessageIds, idkey, nk.to_bytes());
                self.stage_row(tx, room, bucket, &nk, &nrow)?;
                diffs.push(|| {
                    Ok(TimelineDiff::Insert(self.message(Some(&tx.batch), room, nk, &nrow)?))
                })?;
            }
        }
        // Tombstones: exactly the rendered ones stay.
        let prefix = tables::tombstone_prefix(room, bucket, id);
        let stored = self.store.scan(
            Tree::Tombstones,
            &KeyRange::prefix(&prefix),
            Order::Ascending,
            usize::MAX,
        )?;
        for (k, v) in stored {
            let t = decode_tombstone(&k, &v)?;
            if !render.tombstones.contains(&t) {
                tx.batch.delete(Tree::Tombstones, k);
            }
        }
        for t in &render.tombstones {
            let mut value = Vec::with_capacity(16);
            value.extend_from_slice(&t.posted.as_u64().to_be_bytes());
            value.extend_from_slice(&t.deleted.as_u64().to_be_bytes());
            tx.batch.put(
                Tree::Tombstones,
                tables::tombstone_key(room, bucket, id, &t.author),
                value,
            );
        }
        Ok(())
    }

    /// Stages a row and its blobs: each blob is kept if already stored, stored
    /// if this transaction offered it (a body only if it is valid text), and
    /// otherwise listed as wanted.
    fn stage_row(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        key: &SortKey,
        row: &Row,
    ) -> Result<()> {
        tx.batch.put(Tree::Timeline, tables::timeline_key(room, key), row.encode());
        for (i, hash) in row.blobs().enumerate() {
            let is_body = i == 0;
            let bkey = tables::blob_key(room, hash);
            if self.staged_get(Some(&tx.batch), Tree::Blobs, &bkey)?.is_some() {
                continue;
            }
            let offered = tx.blobs.get_mut(&(*room, bucket)).and_then(|m| m.remove(hash));
            let wkey = tables::wanted_blob_key(room, bucket, hash);
            match offered {
                Some(b) if !is_body || valid_body(&b) => {
                    tx.batch.put(Tree::Blobs, bkey, b);
                    tx.batch.delete(Tree::WantedBlobs, wkey);
                }
                _ => {
                    let mut value = key.to_bytes().to_vec();
                    value.push(u8::from(!is_body));
                    tx.batch.put(Tree::WantedBlobs, wkey, value);
                }
            }
        }
        let tkey = tables::timeline_key(room, key);
        let body =
            self.staged_get(Some(&tx.batch), Tree::Blobs, &tables::blob_key(room, &row.body))?;
        match body.as_deref().and_then(blob::body_text) {
            Some(text) => tx.batch.put(Tree::Bodies, tkey, text.as_bytes()),
            None => tx.batch.delete(Tree::Bodies, tkey),
        }
        Ok(())
    }

    /// Removes a row and erases its blobs, except those in `keep` (still
    /// referenced by the row's next version).
    fn erase_row(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        key: &SortKey,
        row: &Row,
        keep: &BTreeSet<BlobHash>,
    ) {
        tx.batch.delete(Tree::Timeline, tables::timeline_key(room, key));
        tx.batch.delete(Tree::Bodies, tables::timeline_key(room, key));
        for hash in row.blobs().filter(|h| !keep.contains(h)) {
            tx.batch.delete(Tree::Blobs, tables::blob_key(room, hash));
            tx.batch.delete(Tree::WantedBlobs, tables::wanted_blob_key(room, bucket, hash));
            if let Some(offered) = tx.blobs.get_mut(&(*room, bucket)) {
                offered.remove(hash);
            }
        }
    }

    fn announce(&self, diffs: BTreeMap<RoomId, Vec<TimelineDiff>>) {
        if diffs.is_empty() {
            return;
        }
        let listeners: Vec<(RoomId, Arc<dyn TimelineListener>)> =
            lock(&self.listeners).values().cloned().collect();
        for (room, mut diffs) in diffs {
            diffs.sort_by_key(diff_cursor);
            for (wanted, listener) in &listeners {
                if *wanted == room {
                    // A panicking listener must not take the replica down with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        listener.on_diffs(&room, &diffs)
                    }));
                }
            }
        }
    }

    // ----- queries -----------------------------------------------------------

    /// Subscribes to a room's timeline diffs until the subscription is dropped.
    pub fn subscribe(
        &mut self,
        room: &RoomId,
        listener: Arc<dyn TimelineListener>,
    ) -> Subscription {
        let id = self.next_listener;
        self.next_listener += 1;
        lock(&self.listeners).insert(id, (*room, listener));
        Subscription { id, listeners: Arc::downgrade(&self.listeners) }
    }

    /// A page of up to `limit` messages, newest first.
    pub fn page(&self, room: &RoomId, anchor: Anchor, limit: usize) -> Result<Page> {
        self.check_room(room)?;
        let limit = limit.min(MAX_PAGE);
        let prefix = room.as_bytes().to_vec();
        let with = |k: &SortKey| [prefix.as_slice(), &k.to_bytes()].concat();
        let (range, order) = match anchor {
            Anchor::Latest => (KeyRange::prefix(&prefix), Order::Descending),
            Anchor::Before(c) => (
                KeyRange {
                    start: std::ops::Bound::Included(prefix.clone()),
                    end: std::ops::Bound::Excluded(with(&c.0)),
                },
                Order::Descending,
            ),
            Anchor::After(c) => {
                let mut r = KeyRange::prefix(&prefix);
                r.start = std::ops::Bound::Excluded(with(&c.0));
                (r, Order::Ascending)
            }
        };
        let mut rows = self.store.scan(Tree::Timeline, &range, order, limit + 1)?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let fetching_older = order == Order::Descending && !has_more && self.want_history(room);
        // The bodies of exactly these rows: one scan, in the rows' order, over
        // the keys they span, merged with the rows as both are sorted.
        let mut bodies = Vec::new();
        if let (Some((first, _)), Some((last, _))) = (rows.first(), rows.last()) {
            let (lo, hi) = if first <= last { (first, last) } else { (last, first) };
            let span = KeyRange {
                start: std::ops::Bound::Included(lo.clone()),
                end: std::ops::Bound::Included(hi.clone()),
            };
            bodies = self.store.scan(Tree::Bodies, &span, order, rows.len())?;
        }
        let mut bodies = bodies.into_iter().peekable();
        let mut messages = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let key = SortKey::from_bytes(&k[32..]).map_err(|e| corrupt(Tree::Timeline, e))?;
            let row = Row::decode(&v).map_err(|e| corrupt(Tree::Timeline, e))?;
            // Entries without a row (none in a consistent store) are skipped.
            let ahead = |bk: &Vec<u8>| if order == Order::Ascending { *bk < k } else { *bk > k };
            while bodies.next_if(|(bk, _)| ahead(bk)).is_some() {}
            let text = bodies.next_if(|(bk, _)| *bk == k).map(|(_, text)| text);
            messages.push(message_from(key, &row, text));
        }
        if order == Order::Ascending {
            messages.reverse();
        }
        Ok(Page { messages, has_more, fetching_older })
    }

    /// A live message by id.
    pub fn message_by_id(&self, room: &RoomId, id: &MessageId) -> Result<Option<Message>> {
        self.check_room(room)?;
        let Some(raw) = self.store.get(Tree::MessageIds, &tables::message_id_key(room, id))? else {
            return Ok(None);
        };
        let key = SortKey::from_bytes(&raw).map_err(|e| corrupt(Tree::MessageIds, e))?;
        let Some(row) = self.store.get(Tree::Timeline, &tables::timeline_key(room, &key))? else {
            return Err(corrupt(Tree::Timeline, "message id points at no row"));
        };
        let row = Row::decode(&row).map_err(|e| corrupt(Tree::Timeline, e))?;
        Ok(Some(self.message(None, room, key, &row)?))
    }

    /// An attachment's content, while its message lives.
    pub fn attachment(&self, room: &RoomId, hash: &BlobHash) -> Result<Option<Vec<u8>>> {
        self.check_room(room)?;
        match self.store.get(Tree::Blobs, &tables::blob_key(room, hash))? {
            Some(b) => Ok(Some(blob::content(&b).map_err(|e| corrupt(Tree::Blobs, e))?.to_vec())),
            None => Ok(None),
        }
    }

    /// The value at `key` as it will be once `staged` (if any) commits.
    fn staged_get(
        &self,
        staged: Option<&WriteBatch>,
        tree: Tree,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        match staged.and_then(|b| b.get(tree, key)) {
            Some(value) => Ok(value.map(<[u8]>::to_vec)),
            None => Ok(self.store.get(tree, key)?),
        }
    }

    /// Builds a message from its row, reading the body from `staged` writes
    /// first (while a transaction announces its diffs) and then the store.
    fn message(
        &self,
        staged: Option<&WriteBatch>,
        room: &RoomId,
        key: SortKey,
        row: &Row,
    ) -> Result<Message> {
        let text = self.staged_get(staged, Tree::Bodies, &tables::timeline_key(room, &key))?;
        Ok(message_from(key, row, text))
    }

    /// Each author's read marker: the furthest message they marked read.
    pub fn read_markers(&self, room: &RoomId) -> Result<BTreeMap<AuthorId, Cursor>> {
        self.check_room(room)?;
        let mut out: BTreeMap<AuthorId, Cursor> = BTreeMap::new();
        for (k, v) in self.room_records(Tree::Reads, room)? {
            let author =
                k.get(32..64).and_then(|a| <[u8; 32]>::try_from(a).ok()).map(AuthorId::from_bytes);
            let author = author.ok_or_else(|| corrupt(Tree::Reads, "short key"))?;
            let key = Cursor(SortKey::from_bytes(&v).map_err(|e| corrupt(Tree::Reads, e))?);
            let entry = out.entry(author).or_insert(key);
            if key > *entry {
                *entry = key;
            }
        }
        Ok(out)
    }

    /// Messages by others after our read marker.
    pub fn unread_count(&self, room: &RoomId) -> Result<u64> {
        let me = self.key.author();
        let marker = self.read_markers(room)?.get(&me).copied();
        let prefix = room.as_bytes().to_vec();
        let mut range = KeyRange::prefix(&prefix);
        if let Some(m) = marker {
            range.start = std::ops::Bound::Excluded([prefix.as_slice(), &m.0.to_bytes()].concat());
        }
        let rows = self.store.scan(Tree::Timeline, &range, Order::Ascending, usize::MAX)?;
        Ok(rows.iter().filter(|(k, _)| k.get(40..72) != Some(me.as_bytes().as_slice())).count()
            as u64)
    }

    /// Every tombstone in the room, in timeline order.
    pub fn tombstones(&self, room: &RoomId) -> Result<Vec<Tombstone>> {
        self.check_room(room)?;
        let mut out = Vec::new();
        for (k, v) in self.room_records(Tree::Tombstones, room)? {
            out.push(decode_tombstone(&k, &v)?);
        }
        out.sort();
        Ok(out)
    }

    /// The whole rendered room, for comparing replicas.
    pub fn snapshot(&self, room: &RoomId) -> Result<RoomSnapshot> {
        let mut messages = Vec::new();
        let mut anchor = Anchor::Latest;
        loop {
            let page = self.page(room, anchor, MAX_PAGE)?;
            let Some(last) = page.messages.last() else { break };
            anchor = Anchor::Before(last.cursor);
            let more = page.has_more;
            messages.extend(page.messages);
            if !more {
                break;
            }
        }
        messages.reverse();
        Ok(RoomSnapshot {
            messages,
            tombstones: self.tombstones(room)?,
            read_markers: self.read_markers(room)?,
        })
    }

    /// Every envelope this replica holds for a room, applied and pending, with
    /// the blobs it still holds, for handing to a peer. Blobs of deleted and
    /// edited-away content are gone and so never included.
    pub fn deliveries(&self, room: &RoomId) -> Result<Vec<Delivery>> {
        self.check_room(room)?;
        let mut out = Vec::new();
        for (_, v) in self.room_records(Tree::Envelopes, room)? {
            let envelope =
                Envelope::from_stored_bytes(&v).map_err(|e| corrupt(Tree::Envelopes, e))?;
            let blobs = self.blobs(room, envelope.blob_hashes())?;
            out.push(Delivery { envelope, blobs });
        }
        for (_, v) in self.room_records(Tree::Pending, room)? {
            out.push(Delivery::from_bytes(&v).map_err(|e| corrupt(Tree::Pending, e))?);
        }
        Ok(out)
    }
}

/// Whether blob bytes hold a body a message may show.
fn valid_body(blob: &[u8]) -> bool {
    blob::body_text(blob).is_some()
}

fn check_text(text: &str) -> Result<()> {
    if text.len() > MAX_BODY_BYTES {
        return Err(Error::InvalidInput(format!(
            "message text longer than {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(())
}

fn stage_envelope(tx: &mut Tx, env: &Envelope) {
    let (start, _) = env.clock_range();
    let key = tables::envelope_key(&env.room(), env.bucket(), &env.author(), start);
    tx.batch.put(Tree::Envelopes, key, env.as_bytes().to_vec());
}

/// The diffs of one bucket's refresh, built only while someone listens to
/// the room (building one reads the message's body).
struct DiffSink {
    listening: bool,
    diffs: Vec<TimelineDiff>,
}

impl DiffSink {
    fn push(&mut self, make: impl FnOnce() -> Result<TimelineDiff>) -> Result<()> {
        if self.listening {
            self.diffs.push(make()?);
        }
        Ok(())
    }
}

/// A message from its row and its stored body text. Text is checked before
/// it is stored; text that still is not UTF-8 reads as absent rather than
/// failing the whole query.
fn message_from(key: SortKey, row: &Row, text: Option<Vec<u8>>) -> Message {
    Message {
        id: key.id,
        author: key.author,
        hlc: key.hlc,
        cursor: Cursor(key),
        body: text.and_then(|t| String::from_utf8(t).ok()),
        attachments: row.attachments.clone(),
        reply_to: row.reply_to,
        edited: row.edited,
        reactions: row.reactions.clone(),
    }
}

/// Where a diff sits in the timeline.
fn diff_cursor(diff: &TimelineDiff) -> Cursor {
    match diff {
        TimelineDiff::Insert(m) | TimelineDiff::Update(m) => m.cursor,
        TimelineDiff::Remove { cursor, .. } => *cursor,
    }
}

/// Decodes a `wanted-blobs-1` value: the wanting message and whether the
/// blob is its body.
fn decode_wanted(value: &[u8]) -> Result<(SortKey, bool)> {
    match value.split_last() {
        Some((&kind, key)) if kind <= 1 => {
            Ok((SortKey::from_bytes(key).map_err(|e| corrupt(Tree::WantedBlobs, e))?, kind == 0))
        }
        _ => Err(corrupt(Tree::WantedBlobs, "bad record")),
    }
}

fn decode_tombstone(key: &[u8], value: &[u8]) -> Result<Tombstone> {
    let bad = || corrupt(Tree::Tombstones, "bad record");
    let id: [u8; 16] = key.get(36..52).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    let author: [u8; 32] = key.get(52..84).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    let posted: [u8; 8] = value.get(..8).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    let deleted: [u8; 8] = value.get(8..16).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    Ok(Tombstone {
        posted: Hlc::from_u64(u64::from_be_bytes(posted)),
        author: AuthorId::from_bytes(author),
        id: MessageId::from_bytes(id),
        deleted: Hlc::from_u64(u64::from_be_bytes(deleted)),
    })
}
