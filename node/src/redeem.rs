//! Redeeming the invite a room ticket carried, in the background.
//!
//! A Join is judged at its own causal past, where the invite's registration
//! (an `Invite` governance change) must be, so a device that joined a room
//! by ticket redeems the ticket's invite only once the room's governance has
//! reached it, by catch-up or gossip. [`crate::Node::join_ticket`] starts one task
//! per invite that looks at the room's governance after every catch-up
//! about the room and every [`INVITE_POLL`] (governance also arrives by
//! gossip and by catch-ups a peer starts), redeems the invite as soon as it
//! is registered, and reports the outcome as [`NodeEvent::InviteRedeemed`]
//! or [`NodeEvent::InviteFailed`]. It gives up after
//! [`crate::NodeConfig::invite_wait`].
//!
//! A redemption waiting here is kept in memory only: after a restart it
//! resumes when the app calls [`crate::Node::join_ticket`] with the ticket again,
//! which is harmless once the device is a member.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use concord_core::{Invite, InviteId, InviteReadiness, Store};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use crate::error::{NodeError, Result};
use crate::events::NodeEvent;
use crate::room::Room;

/// How often a waiting redemption looks at the room's governance besides
/// after each catch-up: governance that came by gossip, or by a catch-up a
/// peer started, emits no event. One read of the state in memory.
pub const INVITE_POLL: Duration = Duration::from_secs(1);

/// Invites being redeemed by a node's tasks, so that joining with the same
/// ticket again while one waits does not start a second.
#[derive(Clone, Default)]
pub(crate) struct Redeeming(Arc<Mutex<HashSet<InviteId>>>);

impl Redeeming {
    /// Claims `id`; `None` if a task holds it already.
    fn claim(&self, id: InviteId) -> Option<Claim> {
        let mut ids = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        ids.insert(id).then(|| Claim { redeeming: self.clone(), id })
    }
}

/// A claimed invite, released when its task ends however it ends.
struct Claim {
    redeeming: Redeeming,
    id: InviteId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut ids = self.redeeming.0.lock().unwrap_or_else(PoisonError::into_inner);
        ids.remove(&self.id);
    }
}

/// Starts redeeming `invite` in `room` in the background, unless a task of
/// this node is at it already. `events` must be subscribed before the
/// ticket's addresses are dialed, so that no catch-up goes unseen.
pub(crate) fn spawn<S: Store + 'static>(
    room: Room<S>,
    invite: Invite,
    events: broadcast::Receiver<NodeEvent>,
    redeeming: &Redeeming,
    wait: Duration,
) {
    let Some(claim) = redeeming.claim(invite.id()) else {
        tracing::debug!(room = %room.id(), invite = %invite.id(), "invite already being redeemed");
        return;
    };
    tokio::spawn(async move {
        let _claim = claim;
        let id = room.id();
        let outcome = redeem(&room, invite, events, wait).await;
        let event = match outcome {
            Ok(()) => NodeEvent::InviteRedeemed { room: id },
            // The node shut down: nobody is left to tell.
            Err(NodeError::Closed) => return,
            Err(e) => NodeEvent::InviteFailed { room: id, error: e.to_string() },
        };
        tracing::info!(room = %id, ?event, "invite redemption ended");
        room.node().emit(event);
    });
}

/// Waits until the invite can be redeemed and redeems it.
async fn redeem<S: Store + 'static>(
    room: &Room<S>,
    invite: Invite,
    mut events: broadcast::Receiver<NodeEvent>,
    wait: Duration,
) -> Result<()> {
    let deadline = Instant::now() + wait;
    let id = room.id();
    loop {
        match room.node().replica().invite_readiness(id, invite.clone()).await? {
            InviteReadiness::Member => return Ok(()),
            InviteReadiness::Redeem => return room.redeem(invite).await,
            InviteReadiness::Refused(why) => return Err(NodeError::Invite(why.to_owned())),
            // Not arrived yet; the enum may grow, and waiting is harmless.
            _ => {}
        }
        let poll = Instant::now() + INVITE_POLL;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(NodeError::Invite(format!(
                        "the room's governance did not bring the invite within {wait:?}"
                    )));
                }
                _ = tokio::time::sleep_until(poll) => break,
                event = events.recv() => match event {
                    Ok(NodeEvent::Synced { room, .. }) if room == id => break,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return Err(NodeError::Closed),
                },
            }
        }
    }
}
