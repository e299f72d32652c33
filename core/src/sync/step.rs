//! The policy of catch-up that a transport must not decide by itself: how a
//! peer's request or response is stepped through a session, and whether the
//! peer is at fault for what it sent (a strike, in the node).
//!
//! A transport carries one flight (one or more messages) per request and
//! per response. [`SyncSession::step`] handles them in order and says what
//! to send back and whether the peer misbehaved; [`serve_sync`] does the same for
//! a responder, taking up the room first when the node serves rooms on
//! request. Both are plain functions of the replica, the messages and the
//! time, so the policy is tested here without a network.

use super::session::SyncSession;
use crate::envelope::Genesis;
use crate::error::{Error, SyncError};
use crate::ids::{AuthorId, Hlc, RoomId};
use crate::replica::Replica;
use crate::store::Store;

/// What one request's or response's messages did to a session.
#[derive(Debug, Default)]
#[must_use]
pub struct Step {
    /// The messages to send back. Empty when the session failed.
    pub replies: Vec<Vec<u8>>,
    /// Why the session failed, if it did.
    pub error: Option<SyncError>,
    /// Envelopes in these messages that failed verification or validation
    /// (refusals that are nobody's fault, such as a full pending, are not
    /// counted).
    pub forged: u64,
}

impl Step {
    /// Whether the peer is at fault for these messages: they did not decode,
    /// broke the protocol, or carried forged envelopes. A transport counts a
    /// strike against the peer for each such step and drops the session.
    pub fn peer_at_fault(&self) -> bool {
        self.forged > 0 || self.error.as_ref().is_some_and(SyncError::is_peers_fault)
    }

    /// Whether the session can go on after this step (no error, nothing
    /// forged).
    pub fn is_ok(&self) -> bool {
        self.error.is_none() && self.forged == 0
    }
}

impl SyncSession {
    /// Handles every message of one request or response from the peer, in
    /// order, and returns the replies and the verdict on the peer. The first
    /// message that fails ends the session: what came before it stays
    /// applied, and nothing is sent back.
    pub fn step<S: Store>(
        &mut self,
        replica: &mut Replica<S>,
        messages: &[Vec<u8>],
        now: u64,
    ) -> Step {
        let rejected = self.stats().envelopes_rejected;
        let mut step = Step::default();
        for message in messages {
            match self.handle(replica, message, now) {
                Ok(replies) => step.replies.extend(replies),
                Err(e) => {
                    step.replies.clear();
                    step.error = Some(e);
                    break;
                }
            }
        }
        step.forged = self.stats().envelopes_rejected - rejected;
        step
    }
}

/// A peer's catch-up request, as the responding side received it.
#[derive(Debug)]
pub struct InboundFlight<'a> {
    /// The room it is about.
    pub room: RoomId,
    /// The room's signed genesis, which a peer sends with a session's first
    /// request.
    pub genesis: Option<&'a [u8]>,
    /// Whether to take up the room from `genesis` if this replica does not
    /// hold it (a relay serves rooms on request).
    pub take_up: bool,
    /// The author behind the peer, from its verified device certificate:
    /// the room's messages are served only to a reader.
    pub peer: Option<AuthorId>,
    /// The flight's messages.
    pub messages: &'a [Vec<u8>],
}

/// A request served.
#[derive(Debug)]
#[must_use]
pub struct Served {
    /// The session, to keep for the peer's next request while it goes on
    /// (`None` once it ended, failed, or the peer was at fault).
    pub session: Option<SyncSession>,
    /// The replies and the verdict on the peer.
    pub step: Step,
    /// Whether the room was taken up for this request.
    pub joined: bool,
}

/// Serves one request of a peer's catch-up: takes up the room if asked and
/// needed, continues `session` (or starts one), names the peer's author, and
/// steps the request's messages. A genesis that does not verify or names
/// another room is the peer's fault.
pub fn serve_sync<S: Store>(
    replica: &mut Replica<S>,
    session: Option<SyncSession>,
    request: InboundFlight<'_>,
    now: u64,
) -> Served {
    let room = request.room;
    let mut joined = false;
    if request.take_up && replica.genesis(&room).is_err() {
        // The genesis must be genuine and found the room asked about before
        // anything is stored: a genesis of another room is not taken up.
        let genesis = request.genesis.unwrap_or_default();
        let taken = Genesis::from_bytes(genesis).map_err(Error::from).and_then(|g| {
            if g.room_id() == room {
                replica.join_room(genesis)
            } else {
                Err(Error::InvalidInput(format!("a genesis of room {}", g.room_id())))
            }
        });
        if let Err(e) = taken {
            return Served { session: None, step: failed(SyncError::BadGenesis(e)), joined };
        }
        joined = true;
    }
    let mut session = session.unwrap_or_else(|| SyncSession::respond(replica, &room, now));
    if let Some(author) = request.peer {
        session.set_peer(author);
    }
    let step = session.step(replica, request.messages, now);
    let goes_on = step.is_ok() && !session.is_done() && !session.is_failed();
    Served { session: goes_on.then_some(session), step, joined }
}

fn failed(error: SyncError) -> Step {
    Step { replies: Vec::new(), error: Some(error), forged: 0 }
}

/// What a transport starts with a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Catch-up: both sides end holding every envelope either held.
    CatchUp,
    /// A fetch of whole buckets older than this replica's window, at least
    /// `min_envelopes` envelopes in all.
    History {
        /// Envelopes to ask for at least.
        min_envelopes: u32,
    },
}

/// A started session, with what the transport sends first.
#[derive(Debug)]
#[must_use]
pub struct Started {
    /// The session.
    pub session: SyncSession,
    /// The first messages to send.
    pub messages: Vec<Vec<u8>>,
    /// The room's signed genesis, sent with the first request so that a
    /// relay can take the room up.
    pub genesis: Vec<u8>,
    /// For a catch-up, the newest stamp when it began: once it ends with
    /// nothing withheld, every own envelope up to here is held by the peer
    /// ([`Replica::mark_reached`]).
    pub watermark: Option<Hlc>,
}

/// Starts a catch-up or a history fetch about `room`. `Ok(None)`: there is
/// no older history to fetch (the replica keeps all of it).
pub fn start_sync<S: Store>(
    replica: &Replica<S>,
    room: &RoomId,
    start: Start,
    now: u64,
) -> Result<Option<Started>, SyncError> {
    let genesis = replica.genesis(room)?.as_bytes().to_vec();
    Ok(match start {
        Start::CatchUp => {
            let (session, messages) = SyncSession::initiate(replica, room, now)?;
            Some(Started { session, messages, genesis, watermark: Some(replica.last_stamp()) })
        }
        Start::History { min_envelopes } => {
            SyncSession::fetch_history(replica, room, min_envelopes, now).map(
                |(session, message)| Started {
                    session,
                    messages: vec![message],
                    genesis,
                    watermark: None,
                },
            )
        }
    })
}
