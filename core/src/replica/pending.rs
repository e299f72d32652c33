//! What waits: envelopes that arrived before their author's earlier changes
//! or before the governance they cite, kept durably in `pending-1` and
//! integrated as soon as the gap fills, within limits per room and per
//! author so that no key can fill them for everyone.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::tx::{DocKey, Tx};
use super::{corrupt, Replica};
use crate::base::PENDING_AUTHOR_SHARE;
use crate::crypto::rest::pending_len;
use crate::doc::AuthorDoc;
use crate::envelope::Delivery;
use crate::error::Result;
use crate::ids::{AuthorId, RoomId};
use crate::store::tables;
use crate::store::{KeyRange, Order, Store, Tree};

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
pub(super) struct PendingUse {
    pub(super) count: i64,
    pub(super) bytes: i64,
}

impl PendingUse {
    pub(super) fn add(&mut self, other: PendingUse) {
        self.count += other.count;
        self.bytes += other.bytes;
    }

    pub(super) fn within(&self, count: u64, bytes: u64) -> bool {
        let limit = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.count <= limit(count) && self.bytes <= limit(bytes)
    }
}

/// What one room keeps waiting in `pending-1`, in all and per author.
#[derive(Clone, Debug, Default)]
pub(super) struct RoomPending {
    pub(super) total: PendingUse,
    pub(super) authors: HashMap<AuthorId, PendingUse>,
}

impl RoomPending {
    pub(super) fn add(&mut self, author: AuthorId, delta: PendingUse) {
        self.total.add(delta);
        let mine = self.authors.entry(author).or_default();
        mine.add(delta);
        if mine.count <= 0 {
            self.authors.remove(&author);
        }
    }
}

impl<S: Store> Replica<S> {
    /// Retries the room's pending deliveries after governance changes
    /// arrived: those that waited only for them integrate now.
    pub(super) fn retry_pending(&mut self, room: &RoomId) -> Result<()> {
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
    pub(super) fn drain_pending(&mut self, tx: &mut Tx, dk: DocKey) -> Result<()> {
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
            let len = pending_len(v.len());
            let opened = self.open_pending(Some(tx), &room, &k, &v)?;
            match Delivery::from_bytes(&opened) {
                Ok(d) => {
                    waiting.insert(k, (d, len));
                }
                // A record that no longer decodes can never apply; drop it.
                Err(_) => {
                    tx.pending_delta
                        .entry((room, author))
                        .or_default()
                        .add(PendingUse { count: -1, bytes: -(len as i64) });
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

    /// Sets how much one room may keep waiting in `pending-1`: at most
    /// `deliveries` records and `bytes` bytes (defaults
    /// [`DEFAULT_PENDING_PER_ROOM`] and [`DEFAULT_PENDING_BYTES_PER_ROOM`]),
    /// and one author at most a [`PENDING_AUTHOR_SHARE`]th of each.
    /// A delivery that would wait beyond these is refused with
    /// [`crate::EnvelopeError::PendingFull`], which is nobody's fault: it is
    /// offered again by a later catch-up, once what it waits for is held.
    pub fn set_pending_limit(&mut self, deliveries: usize, bytes: u64) {
        self.pending_limit = (deliveries.max(1), bytes.max(1));
    }

    /// How many deliveries of `room` wait in `pending-1`, and their bytes.
    pub fn pending_use(&mut self, room: &RoomId) -> Result<(usize, u64)> {
        let used = self.committed_pending(room)?.total;
        Ok((used.count.max(0) as usize, used.bytes.max(0) as u64))
    }

    /// The room's committed pending use, counted from the store once.
    pub(super) fn committed_pending(&mut self, room: &RoomId) -> Result<&RoomPending> {
        if !self.pending_use.contains_key(room) {
            let mut used = RoomPending::default();
            for (k, v) in self.room_records(Tree::Pending, room)? {
                // `pending-1` keys are envelope keys: room, bucket, author, clock.
                let author = tables::doc_key_author(&k)
                    .ok_or_else(|| corrupt(Tree::Pending, format!("key of {} bytes", k.len())))?;
                used.add(author, PendingUse { count: 1, bytes: pending_len(v.len()) as i64 });
            }
            self.pending_use.insert(*room, used);
        }
        Ok(&self.pending_use[room])
    }

    /// Whether `grows` more from `author` fits in the room's pending, in all
    /// and in the author's share, counting what the transaction already
    /// staged.
    pub(super) fn pending_fits(
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
}
