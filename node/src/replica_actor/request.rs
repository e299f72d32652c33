//! The contract between the node and its replica: every request the node
//! makes of the replica thread, each answered by one core method.
//!
//! Handles ([`crate::Node`], [`crate::Room`], the invite redemption) wait for
//! room in the queue ([`ReplicaHandle::ask`]); the swarm actor never waits
//! and is turned away when the queue is full ([`ReplicaHandle::try_ask`]).

use std::sync::Arc;

use concord_core::{
    serve_sync, start_sync, Action, Anchor, AuditEntry, AuthorId, Genesis, GovChange, GovState,
    Hlc, InboundFlight, Invite, InviteReadiness, Judged, MessageId, Op, Replica, Role, RoomId,
    RoomInfo, RoomOptions, Sent, Served, SignalKind, Start, Started, Step, Store, Subscription,
    SyncError, SyncSession, TimelineItem, TimelineListener, TimelinePage,
};
use tokio::sync::oneshot;

use super::{respond, ReplicaHandle};
use crate::error::Result;

/// Where a request's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A request to the replica thread.
pub(crate) enum Request {
    // ----- rooms ---------------------------------------------------------------
    /// [`Replica::create_room_opts`].
    CreateRoom { name: String, options: RoomOptions, reply: Reply<RoomId> },
    /// [`Replica::join_room`].
    JoinRoom { genesis: Vec<u8>, reply: Reply<RoomId> },
    /// [`Replica::genesis`].
    Genesis { room: RoomId, reply: Reply<Genesis> },
    /// [`Replica::rooms`].
    Rooms { reply: Reply<Vec<RoomInfo>> },

    // ----- local changes ---------------------------------------------------------
    /// [`Replica::commit`]: changes queued together share one commit.
    Commit { op: Op, reply: Reply<Sent> },
    /// [`Replica::signal`].
    Signal { room: RoomId, kind: SignalKind, reply: Reply<Vec<u8>> },
    /// [`Replica::govern`].
    Govern { room: RoomId, action: Action, reply: Reply<GovChange> },
    /// [`Replica::invite`].
    Invite {
        room: RoomId,
        role: Role,
        invitee: Option<AuthorId>,
        expires_millis: Option<u64>,
        reply: Reply<(Invite, GovChange)>,
    },

    // ----- queries ---------------------------------------------------------------
    /// [`Replica::timeline_page`].
    TimelinePage { room: RoomId, anchor: Anchor, limit: usize, reply: Reply<TimelinePage> },
    /// [`Replica::timeline`].
    Timeline { room: RoomId, reply: Reply<Vec<TimelineItem>> },
    /// [`Replica::timeline_item`].
    TimelineItem { room: RoomId, id: MessageId, reply: Reply<Option<TimelineItem>> },
    /// [`Replica::subscribe`].
    Subscribe { room: RoomId, listener: Arc<dyn TimelineListener>, reply: Reply<Subscription> },
    /// [`Replica::unread_count`].
    UnreadCount { room: RoomId, reply: Reply<u64> },
    /// [`Replica::governance`].
    Governance { room: RoomId, reply: Reply<GovState> },
    /// [`Replica::governance_history`].
    Audit { room: RoomId, reply: Reply<Vec<AuditEntry>> },
    /// [`Replica::invite_readiness`].
    InviteReadiness { room: RoomId, invite: Invite, reply: Reply<InviteReadiness> },

    // ----- the network -------------------------------------------------------------
    /// [`Replica::judge_gossip`].
    JudgeGossip { topic: RoomId, bytes: Vec<u8>, reply: Reply<Judged> },
    /// [`start_sync`].
    StartSync {
        room: RoomId,
        start: Start,
        now: u64,
        reply: Reply<std::result::Result<Option<Started>, SyncError>>,
    },
    /// [`serve_sync`].
    ServeSync { session: Option<SyncSession>, flight: OwnedFlight, now: u64, reply: Reply<Served> },
    /// [`SyncSession::step`].
    StepSync {
        session: SyncSession,
        messages: Vec<Vec<u8>>,
        now: u64,
        reply: Reply<(SyncSession, Step)>,
    },
    /// [`Replica::mark_reached`].
    MarkReached { room: RoomId, upto: Hlc, reply: Reply<bool> },
    /// [`Replica::history_wanted`].
    HistoryWanted { reply: Reply<Vec<RoomId>> },
    /// [`Replica::reads_all`] for each peer, [`Replica::may_read`] for this
    /// device in each of `own` (a room whose governance cannot be read
    /// counts as readable, so the device keeps listening).
    Readers { peers: Vec<ReaderAsk>, own: Vec<RoomId>, reply: Reply<Readers> },
}

/// A gossip peer's author (if known) and the rooms of ours it subscribes to.
pub(crate) type ReaderAsk = (Option<AuthorId>, Vec<RoomId>);

/// Who may read what: per peer asked, whether it may read every room it
/// subscribes to; per own room, whether this device may read it.
pub(crate) struct Readers {
    pub(crate) peers: Vec<bool>,
    pub(crate) own: Vec<(RoomId, bool)>,
}

/// A peer's catch-up request with its bytes owned, for the replica thread
/// ([`InboundFlight`] borrows them).
pub(crate) struct OwnedFlight {
    pub(crate) room: RoomId,
    pub(crate) genesis: Option<Vec<u8>>,
    pub(crate) take_up: bool,
    pub(crate) peer: Option<AuthorId>,
    pub(crate) messages: Vec<Vec<u8>>,
}

impl Request {
    /// Answers the request on the replica thread.
    pub(super) fn answer<S: Store>(self, r: &mut Replica<S>) {
        match self {
            Request::CreateRoom { name, options, reply } => {
                respond(reply, || Ok(r.create_room_opts(&name, &options)?))
            }
            Request::JoinRoom { genesis, reply } => respond(reply, || Ok(r.join_room(&genesis)?)),
            Request::Genesis { room, reply } => respond(reply, || Ok(r.genesis(&room)?.clone())),
            Request::Rooms { reply } => respond(reply, || Ok(r.rooms())),
            // The replica thread batches commits itself; one alone commits here.
            Request::Commit { op, reply } => super::commit(r, vec![(op, reply)]),
            Request::Signal { room, kind, reply } => respond(reply, || Ok(r.signal(&room, kind)?)),
            Request::Govern { room, action, reply } => {
                respond(reply, || Ok(r.govern(&room, action)?))
            }
            Request::Invite { room, role, invitee, expires_millis, reply } => {
                respond(reply, || Ok(r.invite(&room, role, invitee, expires_millis)?))
            }
            Request::TimelinePage { room, anchor, limit, reply } => {
                respond(reply, || Ok(r.timeline_page(&room, anchor, limit)?))
            }
            Request::Timeline { room, reply } => respond(reply, || Ok(r.timeline(&room)?)),
            Request::TimelineItem { room, id, reply } => {
                respond(reply, || Ok(r.timeline_item(&room, &id)?))
            }
            Request::Subscribe { room, listener, reply } => {
                respond(reply, || Ok(r.subscribe(&room, listener)))
            }
            Request::UnreadCount { room, reply } => respond(reply, || Ok(r.unread_count(&room)?)),
            Request::Governance { room, reply } => {
                respond(reply, || Ok(r.governance(&room)?.clone()))
            }
            Request::Audit { room, reply } => respond(reply, || Ok(r.governance_history(&room)?)),
            Request::InviteReadiness { room, invite, reply } => {
                respond(reply, || Ok(r.invite_readiness(&room, &invite)?))
            }
            Request::JudgeGossip { topic, bytes, reply } => {
                respond(reply, || Ok(r.judge_gossip(&topic, &bytes)))
            }
            Request::StartSync { room, start, now, reply } => {
                respond(reply, || Ok(start_sync(r, &room, start, now)))
            }
            Request::ServeSync { session, flight, now, reply } => respond(reply, || {
                let inbound = InboundFlight {
                    room: flight.room,
                    genesis: flight.genesis.as_deref(),
                    take_up: flight.take_up,
                    peer: flight.peer,
                    messages: &flight.messages,
                };
                Ok(serve_sync(r, session, inbound, now))
            }),
            Request::StepSync { mut session, messages, now, reply } => respond(reply, || {
                let step = session.step(r, &messages, now);
                Ok((session, step))
            }),
            Request::MarkReached { room, upto, reply } => {
                respond(reply, || Ok(r.mark_reached(&room, upto)?))
            }
            Request::HistoryWanted { reply } => respond(reply, || {
                Ok(r.history_wanted().into_iter().map(|(room, _)| room).collect())
            }),
            Request::Readers { peers, own, reply } => respond(reply, || {
                let verdicts = peers.iter().map(|(a, rooms)| r.reads_all(a.as_ref(), rooms));
                let me = r.author();
                let mine = own.iter().map(|room| (*room, r.may_read(room, &me).unwrap_or(true)));
                Ok(Readers { peers: verdicts.collect(), own: mine.collect() })
            }),
        }
    }
}

/// The typed requests the node's handles make, one method each.
impl<S: Store + 'static> ReplicaHandle<S> {
    pub(crate) async fn create_room(&self, name: String, options: RoomOptions) -> Result<RoomId> {
        self.ask(|reply| Request::CreateRoom { name, options, reply }).await
    }

    pub(crate) async fn join_room(&self, genesis: Vec<u8>) -> Result<RoomId> {
        self.ask(|reply| Request::JoinRoom { genesis, reply }).await
    }

    pub(crate) async fn genesis(&self, room: RoomId) -> Result<Genesis> {
        self.ask(|reply| Request::Genesis { room, reply }).await
    }

    pub(crate) async fn rooms(&self) -> Result<Vec<RoomInfo>> {
        self.ask(|reply| Request::Rooms { reply }).await
    }

    pub(crate) async fn commit(&self, op: Op) -> Result<Sent> {
        self.ask(|reply| Request::Commit { op, reply }).await
    }

    pub(crate) async fn signal(&self, room: RoomId, kind: SignalKind) -> Result<Vec<u8>> {
        self.ask(|reply| Request::Signal { room, kind, reply }).await
    }

    pub(crate) async fn govern(&self, room: RoomId, action: Action) -> Result<GovChange> {
        self.ask(|reply| Request::Govern { room, action, reply }).await
    }

    pub(crate) async fn invite(
        &self,
        room: RoomId,
        role: Role,
        invitee: Option<AuthorId>,
        expires_millis: Option<u64>,
    ) -> Result<(Invite, GovChange)> {
        self.ask(|reply| Request::Invite { room, role, invitee, expires_millis, reply }).await
    }

    pub(crate) async fn timeline_page(
        &self,
        room: RoomId,
        anchor: Anchor,
        limit: usize,
    ) -> Result<TimelinePage> {
        self.ask(|reply| Request::TimelinePage { room, anchor, limit, reply }).await
    }

    pub(crate) async fn timeline(&self, room: RoomId) -> Result<Vec<TimelineItem>> {
        self.ask(|reply| Request::Timeline { room, reply }).await
    }

    pub(crate) async fn timeline_item(
        &self,
        room: RoomId,
        id: MessageId,
    ) -> Result<Option<TimelineItem>> {
        self.ask(|reply| Request::TimelineItem { room, id, reply }).await
    }

    pub(crate) async fn subscribe(
        &self,
        room: RoomId,
        listener: Arc<dyn TimelineListener>,
    ) -> Result<Subscription> {
        self.ask(|reply| Request::Subscribe { room, listener, reply }).await
    }

    pub(crate) async fn unread_count(&self, room: RoomId) -> Result<u64> {
        self.ask(|reply| Request::UnreadCount { room, reply }).await
    }

    pub(crate) async fn governance(&self, room: RoomId) -> Result<GovState> {
        self.ask(|reply| Request::Governance { room, reply }).await
    }

    pub(crate) async fn audit(&self, room: RoomId) -> Result<Vec<AuditEntry>> {
        self.ask(|reply| Request::Audit { room, reply }).await
    }

    pub(crate) async fn invite_readiness(
        &self,
        room: RoomId,
        invite: Invite,
    ) -> Result<InviteReadiness> {
        self.ask(|reply| Request::InviteReadiness { room, invite, reply }).await
    }
}
