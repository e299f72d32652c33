//! # concord-core
//!
//! The sans-IO core of Concord, a CRDT offline-first chat sync engine. It owns
//! identity (Ed25519 device keys, UUIDv7 message ids, a hybrid logical clock
//! fed by an injected [`Clock`]), signed [`Envelope`]s, the room log (one yrs
//! document per author per time bucket), the tombstone-aware merge that
//! renders a room, and durable storage behind the [`Store`] trait.
//!
//! It performs no network I/O and needs no async runtime: the node crate
//! drives it, and tests drive it directly.
//!
//! Two replicas converge by exchanging deliveries in any order:
//!
//! ```
//! use std::sync::Arc;
//! use concord_core::{Draft, ManualClock, MemoryStore, Replica};
//!
//! let clock = Arc::new(ManualClock::new(1_700_000_000_000));
//! let mut alice = Replica::open_with_seed(MemoryStore::new(), clock.clone(), [1; 32])?;
//! let mut bob = Replica::open_with_seed(MemoryStore::new(), clock.clone(), [2; 32])?;
//!
//! let room = alice.create_room("lunch")?;
//! bob.join_room(alice.genesis(&room)?.as_bytes())?;
//! // The room's governance, which messages cite (catch-up carries it).
//! bob.apply_governance(&room, alice.governance_since(&room, &[])?)?;
//!
//! let hello = alice.post(&room, Draft::text("hello"))?;
//! clock.advance(10);
//! let bye = alice.delete(&room, &hello.id)?;
//!
//! // The delete arrives first; the post never shows and its body is never stored.
//! bob.apply(&room, vec![bye.delivery, hello.delivery])?;
//! assert_eq!(alice.snapshot(&room)?, bob.snapshot(&room)?);
//! assert!(bob.snapshot(&room)?.messages.is_empty());
//! # Ok::<(), concord_core::Error>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod base;
mod blob;
mod cert;
mod clock;
mod codec;
mod crypto;
mod doc;
mod envelope;
mod error;
mod governance;
mod ids;
mod keys;
mod replica;
mod signal;
mod store;
mod sync;
#[cfg(test)]
mod test_support;
mod view;

pub use base::{
    DeviceKeys, FORMAT_VERSION, GENESIS_FORMAT_VERSION, MAX_CITED_HEADS, MAX_ROOM_NAME_BYTES,
    PENDING_AUTHOR_SHARE, ROOM_FORMAT_VERSION,
};
pub use blob::{MAX_BLOB_BYTES, MAX_BODY_BYTES, MAX_WIRE_BLOB_BYTES};
pub use cert::{DeviceCert, MAX_CERT_BYTES, MAX_TRANSPORT_ID_BYTES};
pub use clock::{Clock, ManualClock, SystemClock, MAX_HLC_DRIFT_MILLIS};
pub use doc::{MAX_ATTACHMENTS, MAX_REACTION_BYTES};
pub use envelope::{
    Delivery, Envelope, Genesis, MAX_BLOBS_PER_ENVELOPE, MAX_DELIVERY_BYTES, MAX_ENVELOPE_BYTES,
    MAX_UPDATE_BYTES, PARALLEL_VERIFY_MIN,
};
pub use error::{DecodeError, EnvelopeError, Error, Result, StoreError, SyncError};
pub use governance::{
    Action, AuditEntry, Denied, GovApplied, GovChange, GovError, GovHead, GovState, Governance,
    Invite, InviteId, Member, Role, GOV_MAGIC, INVITE_BYTES, MAX_GOV_CHANGE_BYTES, MAX_GOV_DEPS,
    MAX_INITIAL_MEMBERS, MAX_PENDING_GOV_CHANGES, MAX_SETTING_KEY_BYTES, MAX_SETTING_VALUE_BYTES,
    MAX_TOPIC_BYTES,
};
pub use ids::{AuthorId, BlobHash, Cursor, Hlc, MessageId, RoomId, SortKey};
pub use keys::{client_id, DeviceKey};
pub use replica::{
    Anchor, Announcement, Applied, DeliveryState, Draft, GossipVerdict, InviteReadiness, Judged,
    Op, Page, Replica, RoomInfo, RoomOptions, RoomSnapshot, Sent, Subscription, TimelineItem,
    TimelineListener, TimelinePage, DEFAULT_DOC_CACHE, DEFAULT_DOC_CACHE_ITEMS,
    DEFAULT_PENDING_BYTES_PER_ROOM, DEFAULT_PENDING_PER_ROOM, HISTORY_SETTING, JOIN_GRACE_MILLIS,
    MAX_PAGE, ROTATE_AFTER_MESSAGES,
};
pub use signal::{Signal, SignalKind, SIGNAL_BYTES, SIGNAL_FRESH_MILLIS};
pub use store::{
    KeyRange, MemoryStore, Order, Outbox, OutboxRecord, OutboxStore, SecretSlot, SledStore, Store,
    Tree, WriteBatch, DEFAULT_SLED_CACHE_BYTES, SECRET_FILE, SLED_LOCK_WAIT,
};
pub use sync::{
    serve_sync, start_sync, BucketDigest, BucketVersions, DigestSet, Flight, History,
    InboundFlight, OlderDigest, RawDelivery, Served, Start, Started, Step, SyncMessage,
    SyncSession, SyncStats, CHUNK_BYTES, DIGEST_LEN, MAX_AUTHORS_PER_BUCKET,
    MAX_BUCKETS_PER_MESSAGE, MAX_FLIGHTS, MAX_SYNC_MESSAGE_BYTES, MAX_WANTED_BLOBS, RECENT_DIGESTS,
    SESSION_TIMEOUT_MILLIS, SYNC_VERSION,
};
pub use view::{bucket_of, Message, Reaction, TimelineDiff, Tombstone, BUCKET_SPAN_MILLIS};
