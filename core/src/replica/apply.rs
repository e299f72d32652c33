//! Remote envelopes: verifying, judging and integrating what peers send.
//!
//! An envelope is integrated only if its author signed it, its update
//! touches only the author's own document and inserts exactly the clock
//! range it declares, and its author held the role the update needs at the
//! governance heads it cites. One that arrives before its author's earlier
//! changes (or before the governance it cites) waits in `pending-1`
//! (`pending.rs`).

use super::pending::PendingUse;
use super::tx::stage_envelope;
use super::tx::Tx;
use super::Replica;
use crate::base::{Denied, Role};
use crate::doc::{self, AuthorDoc};
use crate::envelope::Delivery;
use crate::error::{EnvelopeError, Result};
use crate::governance::{GovApplied, GovChange, GOV_MAGIC};
use crate::ids::RoomId;
use crate::keys;
use crate::store::tables;
use crate::store::{Store, Tree};

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

impl<S: Store> Replica<S> {
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

    pub(super) fn apply_in(
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
    pub(super) fn apply_one(
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
    pub(super) fn integrate(
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
            let stored = self.staged_pending(tx, room, &ekey)?;
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
            self.stage_pending(tx, room, env.bucket(), ekey.clone(), bytes)?;
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
}

/// What a replica says of a message gossiped on a room's topic, which tells
/// gossip whether to forward it and whether its sender misbehaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GossipVerdict {
    /// Valid and kept (integrated, or waiting durably in `pending-1`):
    /// forward it.
    Accept,
    /// Not kept for now, and nobody's fault (too much of the room waits, it
    /// cites governance this replica lacks, a governance change waits for
    /// its dependencies, or our own store failed): do not forward it, do
    /// not blame the sender; catch-up brings it in order later.
    Ignore,
    /// Malformed, forged, for another room or topic, or refused by the
    /// room's governance: the sender is at fault.
    Reject,
}

/// A gossiped message judged: the verdict, and whether it was a governance
/// change (which may change who may read the room).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judged {
    /// Forward, drop quietly, or blame the sender.
    pub verdict: GossipVerdict,
    /// Whether the message was a governance change.
    pub governance: bool,
}

impl<S: Store> Replica<S> {
    /// Judges bytes gossiped on the topic of room `topic`, by applying them:
    /// a message is accepted (and forwarded) only if this replica keeps it.
    /// Deliveries and governance changes are told apart by their magic; each
    /// must be for a room this replica holds, and for the room whose topic
    /// it came on.
    pub fn judge_gossip(&mut self, topic: &RoomId, bytes: &[u8]) -> Judged {
        let governance = bytes.starts_with(GOV_MAGIC);
        let verdict = if governance {
            self.judge_gossiped_change(topic, bytes)
        } else {
            self.judge_gossiped_delivery(topic, bytes)
        };
        Judged { verdict, governance }
    }

    fn judge_gossiped_change(&mut self, topic: &RoomId, bytes: &[u8]) -> GossipVerdict {
        let Ok(change) = GovChange::from_bytes(bytes) else { return GossipVerdict::Reject };
        let room = change.room();
        if room != *topic || self.check_room(&room).is_err() {
            return GossipVerdict::Reject;
        }
        match self.apply_governance(&room, vec![change]).map(|mut v| v.pop()) {
            // One whose dependencies are missing is kept, not forwarded:
            // catch-up brings honest ones in order.
            Ok(Some(Ok(GovApplied::Pending { .. }))) => GossipVerdict::Ignore,
            Ok(Some(Ok(_))) => GossipVerdict::Accept,
            Ok(Some(Err(e))) if e.is_senders_fault() => GossipVerdict::Reject,
            // Refused for now, or our own store failed: not the sender's fault.
            _ => GossipVerdict::Ignore,
        }
    }

    fn judge_gossiped_delivery(&mut self, topic: &RoomId, bytes: &[u8]) -> GossipVerdict {
        let Ok(delivery) = Delivery::from_bytes(bytes) else { return GossipVerdict::Reject };
        let room = delivery.envelope.room();
        if room != *topic || self.check_room(&room).is_err() {
            return GossipVerdict::Reject;
        }
        match self.apply(&room, vec![delivery]).map(|mut v| v.pop()) {
            Ok(Some(Ok(_))) => GossipVerdict::Accept,
            // Kept back for now (too much of the room waits, or it cites
            // governance not held yet from a key that is no reader here).
            Ok(Some(Err(e))) if !e.is_senders_fault() => GossipVerdict::Ignore,
            Ok(Some(Err(_))) => GossipVerdict::Reject,
            // A store failure is ours, not the sender's fault.
            _ => GossipVerdict::Ignore,
        }
    }
}
