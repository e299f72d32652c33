//! The catch-up session: a state machine that takes sync messages (as bytes)
//! and the current time and returns the messages to send.
//!
//! Catch-up between an initiator `I` and a responder `R` runs in flights
//! (each one or more chunks sent back to back):
//!
//! 1. `I`: digests of its recent buckets, one combined digest of the older ones;
//! 2. `R`: its versions of every bucket whose digest differs;
//! 3. `I`: the envelopes and blobs `R` lacks, and its own versions of those buckets;
//! 4. `R`: the envelopes and blobs `I` lacks.
//!
//! Every flight also carries the sender's governance heads and the
//! governance changes the receiver lacks by the heads it announced, which
//! are applied before the flight's envelopes (they are what the envelopes
//! are judged by). A side that lacks governance the other announced says
//! so, and is answered even if it asks nothing else.
//!
//! That is two round trips after the first message. When the combined
//! digest of older buckets differs, `R` answers it with per-bucket digests
//! and the difference heals one round trip later. A flight that asks
//! nothing (no digests, no versions) is never answered, which ends the
//! session on both sides. Windowed history is a separate exchange: `Fetch`
//! answered by `History`.

use std::collections::{BTreeMap, BTreeSet};

use super::message::{
    chunk_flight, chunk_history, BucketDigest, BucketVersions, DigestSet, Flight, History,
    OlderDigest, RawDelivery, SyncMessage, DIGEST_LEN,
};
use crate::envelope::{Delivery, Envelope};
use crate::error::SyncError;
use crate::governance::{GovChange, GovHead};
use crate::ids::{AuthorId, RoomId};
use crate::replica::{Applied, Replica};
use crate::store::Store;

/// A session with no message for this long has failed.
pub const SESSION_TIMEOUT_MILLIS: u64 = 60_000;
/// Digests sent one by one in the first flight: about two months of daily
/// buckets, where nearly all differences are. Older buckets share one digest.
pub const RECENT_DIGESTS: usize = 64;
/// Flights a session answers at most. Honest catch-up needs at most five;
/// the cap ends a peer's attempt to keep a session alive forever.
pub const MAX_FLIGHTS: u32 = 8;

/// Counts of what a session sent and received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Bytes of every message sent.
    pub bytes_sent: u64,
    /// Bytes of every message received.
    pub bytes_received: u64,
    /// Messages (chunks) sent.
    pub messages_sent: u32,
    /// Flights sent.
    pub flights_sent: u32,
    /// Flights received.
    pub flights_received: u32,
    /// Envelopes sent.
    pub envelopes_sent: u64,
    /// Envelopes received that were applied or stored as pending.
    pub envelopes_applied: u64,
    /// Envelopes received that failed verification or validation.
    pub envelopes_rejected: u64,
    /// Blobs sent on their own (blobs travel with their envelopes otherwise).
    pub blobs_sent: u64,
    /// Flights in which the peer asked for envelopes or blobs and was
    /// answered with governance only, because its author may not read the
    /// room (or is not known).
    pub flights_withheld: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Initiator,
    Responder,
    Fetcher,
}

/// One catch-up (or history fetch) with one peer about one room.
#[derive(Debug)]
pub struct SyncSession {
    room: RoomId,
    role: Role,
    /// The author behind the peer, once its certificate is verified: the
    /// room's messages are served only to a reader.
    peer: Option<AuthorId>,
    done: bool,
    failed: bool,
    deadline: u64,
    /// The oldest bucket we keep, and the peer's.
    my_from: u32,
    peer_from: Option<u32>,
    /// The older-digest cut we announced, if any.
    my_cut: Option<u32>,
    /// Buckets whose versions we already sent.
    sent_versions: BTreeSet<u32>,
    /// Governance changes we already sent.
    sent_gov: BTreeSet<GovHead>,
    /// Chunks of the flight (or history) being received.
    inbox: Flight,
    history: History,
    stats: SyncStats,
}

impl SyncSession {
    fn new(room: RoomId, role: Role, my_from: u32, now: u64) -> Self {
        Self {
            room,
            role,
            peer: None,
            done: false,
            failed: false,
            deadline: now.saturating_add(SESSION_TIMEOUT_MILLIS),
            my_from,
            peer_from: None,
            my_cut: None,
            sent_versions: BTreeSet::new(),
            sent_gov: BTreeSet::new(),
            inbox: Flight::default(),
            history: History::default(),
            stats: SyncStats::default(),
        }
    }

    /// Starts catch-up about `room`; returns the session and the first
    /// message to send.
    pub fn initiate<S: Store>(
        replica: &Replica<S>,
        room: &RoomId,
        now: u64,
    ) -> Result<(Self, Vec<Vec<u8>>), SyncError> {
        let my_from = replica.window(room).unwrap_or(0);
        let mut session = Self::new(*room, Role::Initiator, my_from, now);
        let digests = replica.bucket_digests(room)?;
        let cut = digests.len().checked_sub(RECENT_DIGESTS).map(|i| digests[i].bucket);
        let (older, recent): (Vec<BucketDigest>, Vec<BucketDigest>) =
            digests.into_iter().partition(|d| cut.is_some_and(|c| d.bucket < c));
        let recent_from = cut.unwrap_or(my_from);
        let flight = Flight {
            from_bucket: my_from,
            older: cut.map(|below| OlderDigest { below, digest: combine(&older) }),
            digests: Some(DigestSet { from: recent_from, to: u32::MAX, entries: recent }),
            gov_heads: Some(replica.governance_heads(room)?),
            ..Flight::default()
        };
        session.my_cut = cut;
        let out = session.send_flight(vec![flight]);
        Ok((session, out))
    }

    /// A session answering a peer's first message about `room`.
    pub fn respond<S: Store>(replica: &Replica<S>, room: &RoomId, now: u64) -> Self {
        Self::new(*room, Role::Responder, replica.window(room).unwrap_or(0), now)
    }

    /// Asks a peer for history older than what this replica keeps of
    /// `room`, in whole buckets of at least `min_envelopes` envelopes in
    /// all. `None` if the replica keeps the whole history.
    pub fn fetch_history<S: Store>(
        replica: &Replica<S>,
        room: &RoomId,
        min_envelopes: u32,
        now: u64,
    ) -> Option<(Self, Vec<u8>)> {
        let before = replica.window(room)?;
        let mut session = Self::new(*room, Role::Fetcher, before, now);
        let msg = SyncMessage::Fetch { room: *room, before, min_envelopes }.to_bytes();
        session.count_sent(&msg);
        Some((session, msg))
    }

    /// Names the author behind the peer (verified by the caller, e.g. from
    /// the peer's device certificate). Until it is named, and whenever that
    /// author holds no role in the room at this replica's current
    /// governance, the session sends the peer governance only: no
    /// envelopes, no blobs, no history. Governance still flows both ways,
    /// so an invitee can learn the invite it redeems, and a member's
    /// governance changes reach whoever it syncs with.
    pub fn set_peer(&mut self, author: AuthorId) {
        self.peer = Some(author);
    }

    /// The author behind the peer, if named.
    pub fn peer(&self) -> Option<AuthorId> {
        self.peer
    }

    /// Whether the peer may be sent the room's messages now.
    fn serves_peer<S: Store>(&self, replica: &Replica<S>) -> Result<bool, SyncError> {
        match &self.peer {
            Some(author) => Ok(replica.may_read(&self.room, author)?),
            None => Ok(false),
        }
    }

    /// The room this session is about.
    pub fn room(&self) -> RoomId {
        self.room
    }

    /// Whether the session ended well.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the session ended badly (bad input or timeout).
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// What the session sent and received so far.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// Fails the session if no message came for [`SESSION_TIMEOUT_MILLIS`].
    pub fn poll(&mut self, now: u64) -> Result<(), SyncError> {
        if !self.done && !self.failed && now > self.deadline {
            self.failed = true;
        }
        if self.failed {
            return Err(SyncError::TimedOut);
        }
        Ok(())
    }

    /// Takes one message from the peer and returns the messages to send back
    /// (often none: a flight can take several messages). Any error fails the
    /// session; nothing the peer sent before it is lost, since each flight
    /// is applied as it completes.
    pub fn handle<S: Store>(
        &mut self,
        replica: &mut Replica<S>,
        bytes: &[u8],
        now: u64,
    ) -> Result<Vec<Vec<u8>>, SyncError> {
        if self.done || self.failed {
            return Err(SyncError::Closed);
        }
        let result = self.handle_inner(replica, bytes, now);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn handle_inner<S: Store>(
        &mut self,
        replica: &mut Replica<S>,
        bytes: &[u8],
        now: u64,
    ) -> Result<Vec<Vec<u8>>, SyncError> {
        self.poll(now)?;
        self.deadline = now.saturating_add(SESSION_TIMEOUT_MILLIS);
        self.stats.bytes_received += bytes.len() as u64;
        let message = SyncMessage::from_bytes(bytes)?;
        if message.room() != self.room {
            return Err(SyncError::WrongRoom { expected: self.room, found: message.room() });
        }
        match (self.role, message) {
            (Role::Initiator | Role::Responder, SyncMessage::Flight { flight, .. }) => {
                self.take_chunk(flight);
                if self.inbox.more {
                    return Ok(Vec::new());
                }
                let flight = std::mem::take(&mut self.inbox);
                self.stats.flights_received += 1;
                if self.stats.flights_received > MAX_FLIGHTS {
                    return Err(SyncError::Unexpected("too many flights"));
                }
                self.answer(replica, flight)
            }
            (Role::Responder, SyncMessage::Fetch { before, min_envelopes, .. })
                if self.stats.flights_received == 0 =>
            {
                self.done = true;
                self.serve_history(replica, before, min_envelopes)
            }
            (Role::Fetcher, SyncMessage::History { history, .. }) => {
                self.history.deliveries.extend(history.deliveries);
                if history.more {
                    return Ok(Vec::new());
                }
                let deliveries = std::mem::take(&mut self.history.deliveries);
                let deliveries = self.verify(deliveries);
                let results = replica.apply_history(
                    &self.room,
                    history.from,
                    history.exhausted,
                    deliveries,
                )?;
                self.count_applied(&results);
                self.done = true;
                Ok(Vec::new())
            }
            _ => Err(SyncError::Unexpected("message out of turn")),
        }
    }

    /// Adds a chunk to the flight being received.
    fn take_chunk(&mut self, chunk: Flight) {
        let inbox = &mut self.inbox;
        if inbox.older.is_none() {
            inbox.older = chunk.older;
        }
        if inbox.digests.is_none() {
            inbox.digests = chunk.digests;
        }
        if inbox.gov_heads.is_none() {
            inbox.gov_heads = chunk.gov_heads;
        }
        inbox.gov_wanted |= chunk.gov_wanted;
        inbox.gov_changes.extend(chunk.gov_changes);
        inbox.from_bucket = chunk.from_bucket;
        inbox.more = chunk.more;
        inbox.versions.extend(chunk.versions);
        inbox.deliveries.extend(chunk.deliveries);
        inbox.blobs.extend(chunk.blobs);
    }

    /// Verifies each delivery on its own (a large flight over the cores,
    /// [`Envelope::from_bytes_many`]); forged ones are counted and dropped.
    fn verify(&mut self, raw: Vec<RawDelivery>) -> Vec<Delivery> {
        let envelopes: Vec<&[u8]> = raw.iter().map(|d| d.envelope.as_slice()).collect();
        let verified = Envelope::from_bytes_many(&envelopes);
        let mut out = Vec::with_capacity(raw.len());
        for (envelope, d) in verified.into_iter().zip(raw) {
            match envelope.and_then(|e| Delivery::new(e, d.blobs)) {
                Ok(d) => out.push(d),
                Err(_) => self.stats.envelopes_rejected += 1,
            }
        }
        out
    }

    fn count_applied(&mut self, results: &[Result<Applied, crate::error::EnvelopeError>]) {
        for r in results {
            match r {
                Ok(Applied::Applied | Applied::Pending) => self.stats.envelopes_applied += 1,
                Ok(_) => {}
                // Dropped for now, nobody's fault: offered again later.
                Err(e) if !e.is_senders_fault() => {}
                Err(_) => self.stats.envelopes_rejected += 1,
            }
        }
    }

    /// Applies a complete flight from the peer and builds the answer.
    fn answer<S: Store>(
        &mut self,
        replica: &mut Replica<S>,
        flight: Flight,
    ) -> Result<Vec<Vec<u8>>, SyncError> {
        let peer_from = *self.peer_from.get_or_insert(flight.from_bucket);
        let asked = flight.has_requests();
        let room = self.room;

        // What the peer sent: governance first, which its envelopes cite.
        let mut changes = Vec::with_capacity(flight.gov_changes.len());
        for raw in &flight.gov_changes {
            match GovChange::from_bytes(raw) {
                Ok(c) => changes.push(c),
                Err(_) => self.stats.envelopes_rejected += 1,
            }
        }
        if !changes.is_empty() {
            for outcome in replica.apply_governance(&room, changes)? {
                if outcome.is_err_and(|e| e.is_senders_fault()) {
                    self.stats.envelopes_rejected += 1;
                }
            }
        }
        let deliveries = self.verify(flight.deliveries);
        if !deliveries.is_empty() {
            let results = replica.apply(&room, deliveries)?;
            self.count_applied(&results);
        }
        let mut by_bucket: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        for (bucket, b) in flight.blobs {
            by_bucket.entry(bucket).or_default().push(b);
        }
        for (bucket, blobs) in by_bucket {
            replica.offer_blobs(&room, bucket, blobs)?;
        }
        if !asked {
            self.done = true;
            return Ok(Vec::new());
        }

        // The governance the peer lacks, by the heads it announced, and
        // whether we lack some of its own.
        let mut gov_changes = Vec::new();
        let mut gov_wanted = false;
        if let Some(theirs) = &flight.gov_heads {
            for c in replica.governance_since(&room, theirs)? {
                if self.sent_gov.insert(c.head()) {
                    gov_changes.push(c.as_bytes().to_vec());
                }
            }
            gov_wanted = !replica.knows_governance(&room, theirs)?;
        }

        // What the peer lacks, by the versions it sent, if it may read the
        // room (judged after its own governance changes are applied, so an
        // invitee's join counts at once).
        let serves = self.serves_peer(replica)?;
        if !serves && !flight.versions.is_empty() {
            self.stats.flights_withheld += 1;
        }
        let mut out_deliveries = Vec::new();
        let mut out_blobs = Vec::new();
        let mut want: BTreeSet<u32> = BTreeSet::new();
        for theirs in &flight.versions {
            if theirs.bucket < peer_from {
                continue;
            }
            want.insert(theirs.bucket);
            if !serves {
                continue;
            }
            for d in replica.deliveries_since(&room, theirs)? {
                out_deliveries
                    .push(RawDelivery { envelope: d.envelope.as_bytes().to_vec(), blobs: d.blobs });
            }
            for b in replica.blobs(&room, &theirs.wanted_blobs)? {
                out_blobs.push((theirs.bucket, b));
            }
        }

        // Which buckets differ, by the digests it sent.
        let floor = self.my_from.max(peer_from);
        let mine: BTreeMap<u32, BucketDigest> =
            replica.bucket_digests(&room)?.into_iter().map(|d| (d.bucket, d)).collect();
        if let Some(set) = &flight.digests {
            let theirs: BTreeMap<u32, &BucketDigest> =
                set.entries.iter().map(|d| (d.bucket, d)).collect();
            let lo = set.from.max(floor);
            let hi = set.to;
            for (bucket, d) in &theirs {
                let same = mine.get(bucket).is_some_and(|m| m.digest == d.digest);
                if *bucket >= lo && *bucket < hi && (!same || d.wants_blobs) {
                    want.insert(*bucket);
                }
            }
            for (bucket, m) in mine.range(lo..hi.max(lo)) {
                if !theirs.contains_key(bucket) || m.wants_blobs {
                    want.insert(*bucket);
                }
            }
        }
        // An older range answered with our own per-bucket digests.
        let mut digests = None;
        if let Some(older) = flight.older {
            let ours: Vec<BucketDigest> =
                mine.range(floor..older.below.max(floor)).map(|(_, d)| *d).collect();
            if peer_from != floor || combine(&ours) != older.digest {
                digests = Some(DigestSet { from: floor, to: older.below, entries: ours });
            }
        }

        let mut versions: Vec<BucketVersions> = Vec::new();
        for bucket in want {
            if bucket >= self.my_from && self.sent_versions.insert(bucket) {
                versions.push(replica.bucket_versions(&room, bucket)?);
            }
        }
        self.stats.envelopes_sent += out_deliveries.len() as u64;
        self.stats.blobs_sent += out_blobs.len() as u64;
        let head = Flight {
            from_bucket: self.my_from,
            digests,
            versions,
            gov_heads: Some(replica.governance_heads(&room)?),
            gov_wanted,
            gov_changes,
            ..Flight::default()
        };
        if !head.has_requests() {
            // Nothing more to ask: the peer will not answer this flight.
            self.done = true;
        }
        Ok(self.send_flight(chunk_flight(head, out_deliveries, out_blobs)))
    }

    /// Answers a history fetch with whole buckets below `before`.
    fn serve_history<S: Store>(
        &mut self,
        replica: &mut Replica<S>,
        before: u32,
        min_envelopes: u32,
    ) -> Result<Vec<Vec<u8>>, SyncError> {
        let room = self.room;
        if !self.serves_peer(replica)? {
            // Nothing for a peer that may not read the room, and no claim
            // that nothing is older.
            self.stats.flights_withheld += 1;
            let history = History { from: before, exhausted: false, ..History::default() };
            let msg = SyncMessage::History { room, history }.to_bytes();
            self.count_sent(&msg);
            self.stats.flights_sent += 1;
            return Ok(vec![msg]);
        }
        let (buckets, none_older) =
            replica.buckets_before(&room, before, min_envelopes as usize)?;
        // A replica that keeps a window cannot vouch that nothing is older.
        let exhausted = none_older && replica.window(&room).is_none();
        let from = buckets.iter().copied().min().unwrap_or(before);
        let mut deliveries = Vec::new();
        for bucket in buckets {
            let all = BucketVersions { bucket, ..BucketVersions::default() };
            for d in replica.deliveries_since(&room, &all)? {
                deliveries
                    .push(RawDelivery { envelope: d.envelope.as_bytes().to_vec(), blobs: d.blobs });
            }
        }
        self.stats.envelopes_sent += deliveries.len() as u64;
        let mut out = Vec::new();
        for history in chunk_history(from, exhausted, deliveries) {
            let msg = SyncMessage::History { room, history }.to_bytes();
            self.count_sent(&msg);
            out.push(msg);
        }
        self.stats.flights_sent += 1;
        Ok(out)
    }

    fn send_flight(&mut self, chunks: Vec<Flight>) -> Vec<Vec<u8>> {
        self.stats.flights_sent += 1;
        let room = self.room;
        chunks
            .into_iter()
            .map(|flight| {
                let msg = SyncMessage::Flight { room, flight }.to_bytes();
                self.count_sent(&msg);
                msg
            })
            .collect()
    }

    fn count_sent(&mut self, msg: &[u8]) {
        self.stats.bytes_sent += msg.len() as u64;
        self.stats.messages_sent += 1;
    }
}

/// One digest over a run of bucket digests.
fn combine(digests: &[BucketDigest]) -> [u8; DIGEST_LEN] {
    let mut h = blake3::Hasher::new_derive_key("concord 2026 older buckets digest v1");
    for d in digests {
        h.update(&d.bucket.to_be_bytes());
        h.update(&d.digest);
        h.update(&[u8::from(d.wants_blobs)]);
    }
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..DIGEST_LEN]);
    out
}
