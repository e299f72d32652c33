//! Catch-up sync over request-response: sessions this node starts (with
//! every new peer, periodically, to confirm delivery after gossip, and
//! history fetches) and requests it serves. The policy (stepping a session,
//! whether a peer is at fault) is the core's ([`concord_core::serve_sync`],
//! [`concord_core::SyncSession::step`]); this file moves the bytes, keeps the
//! sessions between flights, and counts strikes.

use concord_core::{
    AuthorId, Hlc, RoomId, Served, Start, Started, Step, Store, SyncSession, SyncStats,
};
use libp2p::request_response::ResponseChannel;
use libp2p::PeerId;
use tokio::sync::oneshot;

use super::{Internal, State};
use crate::actor::room_topic;
use crate::error::{NodeError, Result};
use crate::events::NodeEvent;
use crate::replica_actor::{OwnedFlight, Request};
use crate::sync_codec::{SyncRequest, SyncResponse};

/// Envelopes asked for per history fetch (whole buckets until at least this
/// many): about a screenful of older messages and their changes.
const HISTORY_ENVELOPES: u32 = 500;

/// An initiated catch-up, between flights.
pub(super) struct Outbound {
    pub(super) peer: PeerId,
    pub(super) room: RoomId,
    pub(super) session_id: u64,
    pub(super) session: SyncSession,
    /// The room's genesis, sent with the first request.
    pub(super) genesis: Option<Vec<u8>>,
    /// The newest stamp when a catch-up began: once it ends, every own
    /// envelope up to here is held by the peer. `None` for history fetches.
    pub(super) watermark: Option<Hlc>,
    pub(super) reply: Option<oneshot::Sender<Result<SyncStats>>>,
}

/// A served request, ready to go back.
pub(super) struct Inbound {
    pub(super) peer: PeerId,
    pub(super) room: RoomId,
    pub(super) session_id: u64,
    pub(super) served: Served,
    pub(super) channel: ResponseChannel<SyncResponse>,
}

impl<S: Store + 'static> State<S> {
    /// Answers a peer's catch-up request: checks its device certificate,
    /// then has the replica serve the flight ([`concord_core::serve_sync`]:
    /// take up the room if this node serves rooms on request, step the
    /// session, judge the peer).
    pub(super) fn serve_sync(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        let author = match &request.refused {
            Some(why) => Err(why.clone()),
            None => self.learn_author(peer, &request.cert),
        };
        let author = match author {
            Ok(author) => author,
            Err(why) => {
                tracing::debug!(%peer, why, "refused a sync request");
                let answer = SyncResponse::answer(self.cert.clone(), Vec::new());
                let _ = self.swarm.behaviour_mut().sync.send_response(channel, answer);
                self.strike(peer);
                return;
            }
        };
        let room = request.room;
        let held = self.rooms.contains(&room);
        let take_up = !held && self.config.serve_rooms_on_request && request.genesis.is_some();
        if !held && !take_up {
            // Not a fault: peers offer every room they hold to everyone.
            let answer = SyncResponse::not_served(self.cert.clone());
            let _ = self.swarm.behaviour_mut().sync.send_response(channel, answer);
            return;
        }
        let session = self.inbound.remove(&(peer, request.session));
        if session.is_none() {
            self.counters.sync_sessions.inc();
        }
        let now = self.clock.now_millis();
        let session_id = request.session;
        let flight = OwnedFlight {
            room,
            genesis: request.genesis,
            take_up,
            peer: author,
            messages: request.messages,
        };
        let rejected = self.counters.envelopes_rejected.clone();
        self.submit(
            |reply| Request::ServeSync { session, flight, now, reply },
            // A request that could not be served (the replica busy or
            // closed, the mirror unreachable) drops the channel: the peer
            // sees the request fail, and nothing counts as delivered.
            move |served| {
                let served = served.ok()?;
                rejected.inc_by(served.step.forged);
                Some(Internal::Inbound(Box::new(Inbound {
                    peer,
                    room,
                    session_id,
                    served,
                    channel,
                })))
            },
        );
    }

    /// Sends the answer to a served request, or strikes the peer.
    pub(super) fn answer_inbound(&mut self, inbound: Inbound) {
        let Inbound { peer, room, session_id, served, channel } = inbound;
        if served.joined {
            match self.join(room) {
                Ok(()) => {
                    tracing::info!(%room, %peer, "took up a room on a peer's request");
                    self.counters.rooms_taken_up.inc();
                    self.emit(NodeEvent::RoomTakenUp { room, peer });
                }
                Err(e) => tracing::warn!(%room, error = %e, "cannot subscribe to a room"),
            }
        }
        let Step { replies, error, .. } = &served.step;
        let at_fault = served.step.peer_at_fault();
        if error.is_some() && !at_fault {
            // Our own failure (the store): no answer, so that the peer's
            // catch-up does not end as if everything had been exchanged.
            tracing::warn!(%peer, %room, error = ?error, "could not serve a sync request");
            return;
        }
        let response = SyncResponse::answer(self.cert.clone(), replies.clone());
        let _ = self.swarm.behaviour_mut().sync.send_response(channel, response);
        if at_fault {
            self.strike(peer);
        } else if let Some(session) = served.session {
            self.inbound.insert((peer, session_id), session);
        }
    }

    /// Steps a catch-up this node started with the peer's response.
    pub(super) fn continue_sync(
        &mut self,
        out: Outbound,
        response: SyncResponse,
        author: Option<AuthorId>,
    ) {
        let now = self.clock.now_millis();
        let Outbound { peer, room, session_id, mut session, genesis, watermark, reply } = out;
        if let Some(author) = author {
            session.set_peer(author);
        }
        let messages = response.messages;
        self.submit(
            |answer| Request::StepSync { session, messages, now, reply: answer },
            move |result| {
                let (session, step) = match result {
                    Ok(stepped) => stepped,
                    Err(e) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(e));
                        }
                        return Some(Internal::Ended(peer, room));
                    }
                };
                let out = Outbound { peer, room, session_id, session, genesis, watermark, reply };
                Some(if step.is_ok() {
                    Internal::Outbound(out, step.replies)
                } else {
                    let strike = step.peer_at_fault();
                    let e = match step.error {
                        Some(e) => NodeError::Sync(e.to_string()),
                        None => {
                            NodeError::Sync("the peer sent envelopes that fail validation".into())
                        }
                    };
                    Internal::Failed(out, e, strike)
                })
            },
        );
    }

    /// A gossiped message went out: confirm it by catch-up shortly, once per
    /// burst.
    pub(super) fn schedule_confirm(&mut self, room: RoomId) {
        if self.confirming.insert(room) {
            self.later(self.config.confirm_delay, Internal::Confirm(room));
        }
    }

    /// Catch-up with every connected peer about every joined room.
    pub(super) fn sync_everyone(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            self.sync_peer(peer);
        }
    }

    /// Catch-up with one peer about every joined room not already syncing.
    pub(super) fn sync_peer(&mut self, peer: PeerId) {
        let rooms: Vec<RoomId> = self.rooms.iter().copied().collect();
        for room in rooms {
            if self.syncing.insert((peer, room)) {
                self.start_sync(peer, room, None);
            }
        }
    }

    pub(super) fn start_sync(
        &mut self,
        peer: PeerId,
        room: RoomId,
        reply: Option<oneshot::Sender<Result<SyncStats>>>,
    ) {
        self.start_session(peer, room, false, reply);
    }

    /// Starts a catch-up with `peer`, or with `history` a fetch of the
    /// history older than this replica's window.
    pub(super) fn start_session(
        &mut self,
        peer: PeerId,
        room: RoomId,
        history: bool,
        reply: Option<oneshot::Sender<Result<SyncStats>>>,
    ) {
        let session_id = self.next_session;
        self.next_session += 1;
        let now = self.clock.now_millis();
        let start = if history {
            Start::History { min_envelopes: HISTORY_ENVELOPES }
        } else {
            Start::CatchUp
        };
        self.submit(
            |answer| Request::StartSync { room, start, now, reply: answer },
            move |result| {
                let started = match result {
                    Ok(Ok(Some(started))) => Ok(started),
                    Ok(Ok(None)) => Err(NodeError::Sync("no history to fetch".into())),
                    Ok(Err(e)) => Err(NodeError::Sync(e.to_string())),
                    Err(e) => Err(e),
                };
                let Started { session, messages, genesis, watermark } = match started {
                    Ok(started) => started,
                    Err(e) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(e));
                        }
                        return Some(Internal::Ended(peer, room));
                    }
                };
                let out = Outbound {
                    peer,
                    room,
                    session_id,
                    session,
                    genesis: Some(genesis),
                    watermark,
                    reply,
                };
                Some(Internal::Outbound(out, messages))
            },
        );
    }

    /// Fetches older history for every room whose pages reached the window,
    /// from one peer in the room.
    pub(super) fn fetch_wanted_history(&mut self) {
        let rooms = self.rooms.clone();
        self.submit(
            |reply| Request::HistoryWanted { reply },
            move |wanted| {
                let wanted = wanted.ok()?.into_iter().filter(|room| rooms.contains(room)).collect();
                Some(Internal::HistoryWanted(wanted))
            },
        );
    }

    /// A connected peer in `room`'s gossip mesh, or else any connected peer
    /// subscribed to it.
    pub(super) fn peer_in(&self, room: &RoomId) -> Option<PeerId> {
        let topic = room_topic(room).hash();
        let gossip = &self.swarm.behaviour().gossipsub;
        let mesh = gossip.mesh_peers(&topic).next().copied();
        mesh.or_else(|| gossip.all_peers().find(|(_, t)| t.contains(&&topic)).map(|(p, _)| *p))
    }

    /// Sends the next flight of a catch-up this node started, or finishes it.
    pub(super) fn send_flight(&mut self, mut out: Outbound, messages: Vec<Vec<u8>>) {
        if messages.is_empty() || out.session.is_done() {
            self.finish_sync(out);
            return;
        }
        let request = SyncRequest {
            session: out.session_id,
            room: out.room,
            messages,
            genesis: out.genesis.take(),
            cert: self.cert.clone(),
            refused: None,
        };
        let id = self.swarm.behaviour_mut().sync.send_request(&out.peer, request);
        self.outbound.insert(id, out);
    }

    /// A catch-up this node started failed: report it, and with `strike`
    /// count it against the peer.
    pub(super) fn end_outbound(&mut self, mut out: Outbound, error: NodeError, strike: bool) {
        self.sync_ended(out.peer, out.room);
        self.emit(NodeEvent::SyncFailed {
            peer: out.peer,
            room: out.room,
            error: error.to_string(),
        });
        if strike {
            self.strike(out.peer);
        }
        if let Some(reply) = out.reply.take() {
            let _ = reply.send(Err(error));
        }
    }

    pub(super) fn finish_sync(&mut self, mut out: Outbound) {
        self.sync_ended(out.peer, out.room);
        let stats = *out.session.stats();
        if let Some(reply) = out.reply.take() {
            let _ = reply.send(Ok(stats));
        }
        self.emit(NodeEvent::Synced { peer: out.peer, room: out.room, stats });
        let room = out.room;
        let Some(watermark) = out.watermark else { return };
        // A peer that may not read the room was sent none of it: nothing
        // reached it.
        if stats.flights_withheld > 0 {
            return;
        }
        self.submit(
            |reply| Request::MarkReached { room, upto: watermark, reply },
            move |moved| match moved {
                Ok(true) => Some(Internal::Delivered(room, watermark)),
                _ => None,
            },
        );
    }

    /// Counts a bad sync request; past the limit the peer is disconnected
    /// and banned for a while.
    pub(super) fn strike(&mut self, peer: PeerId) {
        let strikes = self.strikes.entry(peer).or_insert(0);
        *strikes += 1;
        tracing::debug!(%peer, strikes = *strikes, "bad sync request");
        if *strikes == self.config.max_sync_strikes {
            tracing::warn!(%peer, "banning a peer that misbehaved over sync");
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            self.emit(NodeEvent::Banned(peer));
            self.later(self.config.ban_time, Internal::Unban(peer));
        }
    }

    /// A catch-up with `peer` about `room` ended; runs one more if one was
    /// asked for meanwhile.
    pub(super) fn sync_ended(&mut self, peer: PeerId, room: RoomId) {
        self.syncing.remove(&(peer, room));
        if self.again.remove(&(peer, room))
            && self.swarm.is_connected(&peer)
            && self.syncing.insert((peer, room))
        {
            self.start_sync(peer, room, None);
        }
    }
}
