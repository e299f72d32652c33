//! Catch-up sync, sans IO: [`SyncSession`] takes sync messages and the
//! current time and returns the messages to send. The node drives it over
//! the network; tests drive it directly between replicas.

mod message;
mod session;
mod step;

pub use message::{
    BucketDigest, BucketVersions, DigestSet, Flight, History, OlderDigest, RawDelivery,
    SyncMessage, CHUNK_BYTES, DIGEST_LEN, MAX_AUTHORS_PER_BUCKET, MAX_BUCKETS_PER_MESSAGE,
    MAX_SYNC_MESSAGE_BYTES, MAX_WANTED_BLOBS, SYNC_VERSION,
};
pub use session::{SyncSession, SyncStats, MAX_FLIGHTS, RECENT_DIGESTS, SESSION_TIMEOUT_MILLIS};
pub use step::{serve_sync, start_sync, InboundFlight, Served, Start, Started, Step};
