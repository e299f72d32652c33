//! The replica: one device's copy of all its rooms, the engine behind every
//! operation and query. [`Replica`] is one struct; its methods are split by
//! concern:
//!
//! - `mod.rs`: opening a store, identity, rooms (create, join, genesis);
//! - `local.rs`: what this device writes (post, edit, delete, react, mark
//!   read; group commit);
//! - `apply.rs`: what peers send (verify, judge, integrate), and the verdict
//!   on a gossiped message;
//! - `pending.rs`: what waits for its author's earlier changes or for
//!   governance, and the limits on it;
//! - `tx.rs`: one transaction's staged writes and its commit;
//! - `render.rs`: rendering the ids a transaction changed, and erasure;
//! - `doc_cache.rs`: the bounded cache of author documents;
//! - `query.rs`: pages, messages, attachments, read markers, snapshots;
//! - `subscription.rs`: timeline listeners;
//! - `delivery.rs`: delivery states of own messages;
//! - `governance.rs`: each room's governance document;
//! - `history.rs`: what catch-up asks of a replica, and windows.
//!
//! Each operation runs as a transaction ([`Tx`]): it changes in-memory author
//! documents, stages every write in one [`WriteBatch`], renders each touched
//! bucket once, stages the timeline rows and blob erasures that follow, then
//! commits the batch (atomic and flushed) and only then tells listeners. If
//! the commit fails, the touched documents are dropped from memory and reload
//! from the store, so memory never runs ahead of what is durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::base::MAX_ROOM_NAME_BYTES;
use crate::clock::{Clock, HlcState};
use crate::doc::AuthorDoc;
use crate::envelope::Genesis;
use crate::error::{Error, Result, StoreError};
use crate::governance::Governance;
use crate::ids::{AuthorId, Hlc, RoomId};
use crate::keys::DeviceKey;
use crate::store::migrations;
use crate::store::tables::{META_DEVICE_KEY, META_HLC};
use crate::store::{KeyRange, Order, Store, Tree, WriteBatch};

mod apply;
mod delivery;
mod doc_cache;
mod e2ee;
mod governance;
mod history;
mod key_share;
mod local;
mod pending;
mod query;
mod render;
mod rest;
mod subscription;
mod tx;

pub use apply::{Applied, GossipVerdict, Judged};
pub use delivery::{DeliveryState, TimelineItem, TimelinePage};
pub use doc_cache::{DEFAULT_DOC_CACHE, DEFAULT_DOC_CACHE_ITEMS};
pub use e2ee::{Announcement, HISTORY_SETTING, JOIN_GRACE_MILLIS, ROTATE_AFTER_MESSAGES};
pub use governance::InviteReadiness;
pub use local::{Draft, Op, Sent};
pub use pending::{DEFAULT_PENDING_BYTES_PER_ROOM, DEFAULT_PENDING_PER_ROOM};
pub use query::{Anchor, Page, RoomSnapshot, MAX_PAGE};
pub use subscription::{Subscription, TimelineListener};

use doc_cache::DocUse;
use pending::RoomPending;
use subscription::{lock, Listeners};
use tx::{DocKey, Tx};

const CONTEXT_ROOM_NONCE: &str = "concord 2026 room genesis nonce v1";
const CONTEXT_NETWORK_KEY: &str = "concord 2026 network identity v1";

/// How a room is made: who may join, and whether its content is end-to-end
/// encrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomOptions {
    members: Option<Vec<(AuthorId, crate::base::Role)>>,
    encrypted: bool,
    share_history: bool,
}

impl Default for RoomOptions {
    /// An open room, end-to-end encrypted, history not shared with new members.
    fn default() -> Self {
        Self { members: None, encrypted: true, share_history: false }
    }
}

impl RoomOptions {
    /// A room of members only: the creator is admin, `members` have their
    /// roles, everyone else joins by invite.
    pub fn members_only(mut self, members: Vec<(AuthorId, crate::base::Role)>) -> Self {
        self.members = Some(members);
        self
    }
    /// End-to-end encrypted (the default) or not. An unencrypted room's
    /// content travels and is served in the clear, to every reader and to
    /// relays; choose it only for rooms that are public anyway.
    pub fn encrypted(mut self, on: bool) -> Self {
        self.encrypted = on;
        self
    }
    /// Whether a new member gets room keys for history from before it
    /// joined (off by default: keys for messages from its joining on).
    pub fn share_history(mut self, on: bool) -> Self {
        self.share_history = on;
        self
    }
    /// Whether the room is open (anyone not banned may join).
    pub fn is_open(&self) -> bool {
        self.members.is_none()
    }
    /// Whether the room is end-to-end encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }
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
    /// Whether its content is end-to-end encrypted.
    pub encrypted: bool,
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
    /// The keys content at rest is sealed under (`rest.rs`).
    rest: rest::RestKeys,
    /// End-to-end encryption state (`e2ee.rs`).
    e2ee: e2ee::E2ee,
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
        let rest = rest::RestKeys::open(&store)?;
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
            rest,
            e2ee: e2ee::E2ee::default(),
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

    /// Creates an open, end-to-end encrypted room (anyone holding its
    /// ticket who is not banned may join and post), with this device as its
    /// admin, and returns its id. For a room of members only, see
    /// [`Replica::create_room_with`]; for other choices (unencrypted,
    /// shared history), [`Replica::create_room_opts`].
    pub fn create_room(&mut self, name: &str) -> Result<RoomId> {
        self.create_room_opts(name, &RoomOptions::default())
    }

    fn sign_genesis(&mut self, name: &str, open: bool, encrypted: bool) -> Result<Genesis> {
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
        Ok(Genesis::sign(&self.key, hlc, name, nonce, open, encrypted)?)
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
                encrypted: g.is_encrypted(),
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
}
