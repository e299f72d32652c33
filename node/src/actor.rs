//! The swarm actor: the one task that owns the libp2p swarm. It takes
//! commands from [`crate::Node`] handles over a bounded channel, and never
//! waits for the replica: replica work runs as tasks against the
//! [`ReplicaHandle`], and their outcomes come back on an internal bounded
//! channel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_core::{
    AuthorId, Clock, Delivery, DeviceCert, GovApplied, GovChange, Hlc, Replica, RoomId, Signal,
    SignalKind, Store, SyncSession, SyncStats, GOV_MAGIC,
};
use futures::future::BoxFuture;
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, PublishError};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{mdns, Multiaddr, PeerId, Swarm};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::behaviour::{topic_score, Behaviour, BehaviourEvent};
use crate::config::NodeConfig;
use crate::error::{NodeError, Result};
use crate::events::NodeEvent;
use crate::replica_actor::ReplicaHandle;
use crate::sync_codec::{SyncRequest, SyncResponse};

/// Replica outcomes waiting for the swarm actor (validations, sync steps).
const INTERNAL_QUEUE: usize = 256;
/// Envelopes asked for per history fetch (whole buckets until at least this
/// many): about a screenful of older messages and their changes.
const HISTORY_ENVELOPES: u32 = 500;
/// How long shutdown keeps driving the swarm so that the last messages
/// published (the "offline" signals) are written out.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(150);
/// How long a typing signal shows without a newer one.
pub(crate) const TYPING_SHOWS: Duration = Duration::from_secs(6);
/// How often every gossip peer's right to the rooms it subscribes to is
/// reviewed, besides the reviews when a peer's author is learned, a peer
/// subscribes, or a governance change is made or gossiped: this one picks
/// up governance that arrived by catch-up.
const REVIEW_PERIOD: Duration = Duration::from_secs(1);
/// The application score of a gossip peer that subscribes to a room whose
/// messages it may not read (not a member, removed, banned), or whose
/// author is not known yet. gossipsub weighs it by 10, and room topics give
/// no positive score ([`topic_score`]), so such a peer sits at about -65:
/// below the publish threshold (-50), so nothing is published to it, and
/// negative, so the next heartbeat prunes it from every mesh and nothing is
/// forwarded to it; above the graylist threshold (-80), so what it sends (an
/// invitee's join, a concurrent post) is still received and judged.
const NON_READER_SCORE: f64 = -6.5;

/// Commands from the handles.
pub(crate) enum Command {
    Listen(Multiaddr, oneshot::Sender<Result<Multiaddr>>),
    Dial(Multiaddr, oneshot::Sender<Result<()>>),
    Join(RoomId, oneshot::Sender<Result<()>>),
    /// Gossips envelope bytes; answers whether any peer was sent them.
    Publish(RoomId, Vec<u8>, oneshot::Sender<Result<bool>>),
    Signal(RoomId, Vec<u8>, oneshot::Sender<Result<bool>>),
    Sync(PeerId, RoomId, oneshot::Sender<Result<SyncStats>>),
    Peers(oneshot::Sender<Vec<PeerId>>),
    Addresses(oneshot::Sender<Vec<Multiaddr>>),
    Score(PeerId, oneshot::Sender<Option<f64>>),
    Strikes(PeerId, oneshot::Sender<u32>),
    Block(PeerId, bool, oneshot::Sender<()>),
    Presence(RoomId, oneshot::Sender<Vec<Presence>>),
    FetchHistory(oneshot::Sender<()>),
    Stats(oneshot::Sender<NetStats>),
    /// The node's metrics in Prometheus text format.
    Metrics(oneshot::Sender<String>),
    Shutdown(oneshot::Sender<()>),
}

/// What another member's device last said about itself in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    /// The member.
    pub author: AuthorId,
    /// An "online" signal arrived within three presence periods, and no
    /// "offline" after it.
    pub online: bool,
    /// A typing signal arrived within the last few seconds, and no "stopped"
    /// after it.
    pub typing: bool,
}

/// Counters of a node's network traffic since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetStats {
    /// Bytes written to every connection (after encryption and muxing).
    pub bytes_sent: u64,
    /// Bytes read from every connection.
    pub bytes_received: u64,
    /// Gossip messages received, duplicates included.
    pub gossip_received: u64,
    /// Gossip messages received that were already seen.
    pub gossip_duplicates: u64,
    /// Peers connected now.
    pub peers: u64,
}

/// Copies what the replica committed to a mirror (a relay's wide-column
/// store) before the node acts on it: a sync flight is answered, and a
/// gossiped envelope accepted and forwarded, only once `flush` succeeded, so
/// "reached the relay" means "in the relay's store".
pub(crate) trait Persist: Send + Sync + 'static {
    /// Writes out everything committed so far.
    fn flush(&self) -> BoxFuture<'static, std::result::Result<(), String>>;
}

/// Counters every node keeps, in its metrics registry.
#[derive(Clone, Default)]
struct Counters {
    envelopes_rejected: Counter,
    sync_sessions: Counter,
    rooms_taken_up: Counter,
}

impl Counters {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "concord_envelopes_rejected",
            "Envelopes from peers that failed validation (gossip and sync)",
            self.envelopes_rejected.clone(),
        );
        registry.register(
            "concord_sync_sessions",
            "Catch-up sessions peers started with this node",
            self.sync_sessions.clone(),
        );
        registry.register(
            "concord_rooms_taken_up",
            "Rooms this node took up on a peer's request",
            self.rooms_taken_up.clone(),
        );
    }
}

/// What a replica task reports back to the actor.
enum Internal {
    /// A gossiped message judged: the room whose topic it came on, and
    /// whether it is a governance change.
    Validated(gossipsub::MessageId, PeerId, MessageAcceptance, Option<RoomId>, bool),
    Outbound(Outbound, Vec<Vec<u8>>),
    Inbound(Served),
    Failed(Outbound, NodeError),
    /// A catch-up ended before it had a session.
    Ended(PeerId, RoomId),
    Delivered(RoomId, Hlc),
    /// Gossip peers, and whether each may read every room it subscribes
    /// to; with a review of every peer, also whether this device may read
    /// each of its rooms.
    Reviewed(Vec<(PeerId, bool)>, Option<Vec<(RoomId, bool)>>),
    Confirm(RoomId),
    HistoryWanted(Vec<RoomId>),
    PublishSignal(RoomId, Vec<u8>),
    Unban(PeerId),
}

/// An answered sync request, ready to go back.
struct Served {
    peer: PeerId,
    session_id: u64,
    session: Option<SyncSession>,
    response: SyncResponse,
    channel: ResponseChannel<SyncResponse>,
    /// The request broke the protocol or carried invalid envelopes.
    bad: bool,
    /// A room taken up on this request.
    joined: Option<RoomId>,
}

/// An initiated catch-up, between flights.
struct Outbound {
    peer: PeerId,
    room: RoomId,
    session_id: u64,
    session: SyncSession,
    /// The room's genesis, sent with the first request.
    genesis: Option<Vec<u8>>,
    /// The newest stamp when a catch-up began: once it ends, every own
    /// envelope up to here is held by the peer. `None` for history fetches.
    watermark: Option<Hlc>,
    reply: Option<oneshot::Sender<Result<SyncStats>>>,
}

pub(crate) fn room_topic(room: &RoomId) -> IdentTopic {
    IdentTopic::new(format!("concord/room/{room}"))
}

pub(crate) fn signal_topic(room: &RoomId) -> IdentTopic {
    IdentTopic::new(format!("concord/signal/{room}"))
}

pub(crate) struct Actor<S: Store> {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) replica: ReplicaHandle<S>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) inbox: mpsc::Receiver<Command>,
    pub(crate) events: broadcast::Sender<NodeEvent>,
    pub(crate) metrics: Registry,
    pub(crate) config: NodeConfig,
    pub(crate) rooms: Vec<RoomId>,
    pub(crate) persist: Option<Arc<dyn Persist>>,
    /// This device's certificate for its peer id, sent with every sync
    /// request and response.
    pub(crate) cert: Vec<u8>,
}

struct State<S: Store> {
    swarm: Swarm<Behaviour>,
    replica: ReplicaHandle<S>,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<NodeEvent>,
    metrics: Registry,
    config: NodeConfig,
    internal_tx: mpsc::Sender<Internal>,
    rooms: HashSet<RoomId>,
    outbound: HashMap<OutboundRequestId, Outbound>,
    inbound: HashMap<(PeerId, u64), SyncSession>,
    next_session: u64,
    /// Listen requests waiting for their bound address.
    pending_listen: HashMap<ListenerId, oneshot::Sender<Result<Multiaddr>>>,
    /// Catch-ups running, so that a period does not stack a second one.
    syncing: HashSet<(PeerId, RoomId)>,
    /// Rooms with a confirming catch-up scheduled.
    confirming: HashSet<RoomId>,
    /// Bad sync requests per peer.
    strikes: HashMap<PeerId, u32>,
    /// Last signal per member and room, with when it arrived.
    signals: HashMap<(RoomId, AuthorId), (SignalKind, Instant)>,
    /// Peers found by mDNS, announced once.
    discovered: HashSet<PeerId>,
    persist: Option<Arc<dyn Persist>>,
    counters: Counters,
    cert: Vec<u8>,
    /// The author behind each connected peer, with the certificate that
    /// proved it.
    authors: HashMap<PeerId, (Vec<u8>, AuthorId)>,
    /// Gossip peers kept from the rooms' messages (scored down), and since
    /// when.
    non_readers: HashMap<PeerId, Instant>,
    /// When each room last had gossip published or forwarded: a peer let
    /// back in after that catches up on what it was not sent.
    activity: HashMap<RoomId, Instant>,
    /// Catch-ups to run again once the running one with that peer ends.
    again: HashSet<(PeerId, RoomId)>,
    /// Rooms this device may not read (removed, banned, not yet admitted):
    /// it stays off their gossip topics, and catches up on their
    /// governance only.
    unread: HashSet<RoomId>,
}

impl<S: Store + 'static> Actor<S> {
    pub(crate) async fn run(self) {
        let Actor {
            swarm,
            replica,
            clock,
            mut inbox,
            events,
            mut metrics,
            config,
            rooms,
            persist,
            cert,
        } = self;
        let counters = Counters::default();
        counters.register(&mut metrics);
        let (internal_tx, mut internal) = mpsc::channel(INTERNAL_QUEUE);
        let mut sync_period = tokio::time::interval(config.sync_interval);
        sync_period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut presence_period = tokio::time::interval(config.presence_interval);
        presence_period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut review_period = tokio::time::interval(REVIEW_PERIOD);
        review_period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = State {
            swarm,
            replica,
            clock,
            events,
            metrics,
            config,
            internal_tx,
            rooms: HashSet::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            next_session: 0,
            pending_listen: HashMap::new(),
            syncing: HashSet::new(),
            confirming: HashSet::new(),
            strikes: HashMap::new(),
            signals: HashMap::new(),
            discovered: HashSet::new(),
            persist,
            counters,
            cert,
            authors: HashMap::new(),
            non_readers: HashMap::new(),
            activity: HashMap::new(),
            again: HashSet::new(),
            unread: HashSet::new(),
        };
        for room in rooms {
            if let Err(e) = state.join(room) {
                tracing::warn!(%room, error = %e, "cannot subscribe to a stored room");
            }
        }
        loop {
            tokio::select! {
                biased;
                command = inbox.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        // Let what was just published (the "offline"
                        // signals) reach the connections before they close.
                        let flush = tokio::time::sleep(SHUTDOWN_FLUSH);
                        tokio::pin!(flush);
                        loop {
                            tokio::select! {
                                _ = &mut flush => break,
                                _ = state.swarm.select_next_some() => {}
                            }
                        }
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => state.command(command),
                    None => return,
                },
                Some(message) = internal.recv() => state.internal(message),
                event = state.swarm.select_next_some() => state.event(event),
                _ = sync_period.tick() => {
                    state.sync_everyone();
                    state.fetch_wanted_history();
                }
                _ = presence_period.tick() => state.announce(SignalKind::Online),
                _ = review_period.tick() => state.review(None),
            }
        }
    }
}

impl<S: Store + 'static> State<S> {
    fn emit(&self, event: NodeEvent) {
        // No receiver is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    fn join(&mut self, room: RoomId) -> Result<()> {
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        let _ = gossip.set_topic_params(room_topic(&room), topic_score());
        let _ = gossip.set_topic_params(signal_topic(&room), topic_score());
        let net = |e: gossipsub::SubscriptionError| NodeError::Network(e.to_string());
        gossip.subscribe(&room_topic(&room)).map_err(net)?;
        gossip.subscribe(&signal_topic(&room)).map_err(net)?;
        self.rooms.insert(room);
        // Listening now; the next review leaves again if it may not read.
        self.unread.remove(&room);
        Ok(())
    }

    fn publish(&mut self, topic: IdentTopic, bytes: Vec<u8>) -> Result<bool> {
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) => Ok(true),
            // Nobody to send to (offline): the change is durable and goes
            // out by catch-up when a peer is reachable.
            Err(PublishError::NoPeersSubscribedToTopic | PublishError::Duplicate) => Ok(false),
            Err(e) => Err(NodeError::Network(e.to_string())),
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Listen(addr, reply) => match self.swarm.listen_on(addr) {
                // The bound address arrives as an event; answer with it then.
                Ok(id) => {
                    self.pending_listen.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(NodeError::Network(e.to_string())));
                }
            },
            Command::Dial(addr, reply) => {
                let _ = reply
                    .send(self.swarm.dial(addr).map_err(|e| NodeError::Network(e.to_string())));
            }
            Command::Join(room, reply) => {
                let _ = reply.send(self.join(room));
            }
            Command::Publish(room, bytes, reply) => {
                self.activity.insert(room, Instant::now());
                let governance = bytes.starts_with(GOV_MAGIC);
                let result = self.publish(room_topic(&room), bytes);
                if governance {
                    self.review(None);
                }
                if let Ok(true) = result {
                    self.schedule_confirm(room);
                }
                let _ = reply.send(result);
            }
            Command::Signal(room, bytes, reply) => {
                let _ = reply.send(self.publish(signal_topic(&room), bytes));
            }
            Command::Sync(peer, room, reply) => self.start_sync(peer, room, Some(reply)),
            Command::Score(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::Strikes(peer, reply) => {
                let _ = reply.send(self.strikes.get(&peer).copied().unwrap_or(0));
            }
            Command::Block(peer, on, reply) => {
                let blocked = &mut self.swarm.behaviour_mut().blocked;
                if on {
                    blocked.block_peer(peer);
                } else {
                    blocked.unblock_peer(peer);
                }
                let _ = reply.send(());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Addresses(reply) => {
                let me = *self.swarm.local_peer_id();
                let mut out: Vec<Multiaddr> = self
                    .swarm
                    .listeners()
                    .chain(self.swarm.external_addresses())
                    .map(|a| with_peer(a.clone(), me))
                    .collect();
                out.dedup();
                let _ = reply.send(out);
            }
            Command::FetchHistory(reply) => {
                self.fetch_wanted_history();
                let _ = reply.send(());
            }
            Command::Presence(room, reply) => {
                let _ = reply.send(self.presence(&room));
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::Metrics(reply) => {
                let mut text = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut text, &self.metrics);
                let _ = reply.send(text);
            }
            Command::Shutdown(_) => {}
        }
    }

    fn presence(&self, room: &RoomId) -> Vec<Presence> {
        let online_for = self.config.presence_interval * 3;
        let mut out: Vec<Presence> = self
            .signals
            .iter()
            .filter(|((r, _), _)| r == room)
            .map(|((_, author), (kind, at))| {
                let age = at.elapsed();
                Presence {
                    author: *author,
                    online: *kind != SignalKind::Offline && age < online_for,
                    typing: *kind == SignalKind::Typing && age < TYPING_SHOWS,
                }
            })
            .collect();
        out.sort_by_key(|p| p.author);
        out
    }

    fn stats(&self) -> NetStats {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.metrics).is_err() {
            return NetStats::default();
        }
        let mut stats =
            NetStats { peers: self.swarm.connected_peers().count() as u64, ..NetStats::default() };
        let mut unique = 0u64;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let value = value as u64;
            if name.starts_with("libp2p_bandwidth_bytes_total") {
                if name.contains("direction=\"Outbound\"") {
                    stats.bytes_sent += value;
                } else if name.contains("direction=\"Inbound\"") {
                    stats.bytes_received += value;
                }
            } else if name.starts_with("concord_gossip_topic_msg_recv_counts_unfiltered_total") {
                stats.gossip_received += value;
            } else if name.starts_with("concord_gossip_topic_msg_recv_counts_total") {
                unique += value;
            }
        }
        stats.gossip_duplicates = stats.gossip_received.saturating_sub(unique);
        stats
    }

    /// Runs a replica job off the actor and reports its outcome on the
    /// internal channel. On a node with a mirror, what the job committed is
    /// written out first; if that fails the job's outcome is an error.
    fn spawn_job<T, F>(
        &self,
        job: F,
        report: impl FnOnce(Result<T>) -> Option<Internal> + Send + 'static,
    ) where
        T: Send + 'static,
        F: FnOnce(&mut Replica<S>) -> T + Send + 'static,
    {
        let replica = self.replica.clone();
        let internal = self.internal_tx.clone();
        let persist = self.persist.clone();
        tokio::spawn(async move {
            let mut outcome = replica.call(job).await;
            if let (Some(persist), true) = (persist, outcome.is_ok()) {
                if let Err(e) = persist.flush().await {
                    tracing::warn!(error = %e, "cannot write to the relay store");
                    outcome = Err(NodeError::Mirror(e));
                }
            }
            if let Some(message) = report(outcome) {
                let _ = internal.send(message).await;
            }
        });
    }

    /// Sends `message` to the actor itself after `delay`.
    fn later(&self, delay: Duration, message: Internal) {
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = internal.send(message).await;
        });
    }

    /// Signs and gossips `kind` in every joined room.
    fn announce(&mut self, kind: SignalKind) {
        for room in self.rooms.clone() {
            self.spawn_job(
                move |r| r.signal(&room, kind),
                move |signed| Some(Internal::PublishSignal(room, signed.ok()?.ok()?)),
            );
        }
    }

    /// A gossiped message went out: confirm it by catch-up shortly, once per
    /// burst.
    fn schedule_confirm(&mut self, room: RoomId) {
        if self.confirming.insert(room) {
            self.later(self.config.confirm_delay, Internal::Confirm(room));
        }
    }

    /// Catch-up with every connected peer about every joined room.
    fn sync_everyone(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            self.sync_peer(peer);
        }
    }

    /// Catch-up with one peer about every joined room not already syncing.
    fn sync_peer(&mut self, peer: PeerId) {
        let rooms: Vec<RoomId> = self.rooms.iter().copied().collect();
        for room in rooms {
            if self.syncing.insert((peer, room)) {
                self.start_sync(peer, room, None);
            }
        }
    }

    fn start_sync(
        &mut self,
        peer: PeerId,
        room: RoomId,
        reply: Option<oneshot::Sender<Result<SyncStats>>>,
    ) {
        self.start_session(peer, room, false, reply);
    }

    /// Starts a catch-up with `peer`, or with `history` a fetch of the
    /// history older than this replica's window.
    fn start_session(
        &mut self,
        peer: PeerId,
        room: RoomId,
        history: bool,
        reply: Option<oneshot::Sender<Result<SyncStats>>>,
    ) {
        let session_id = self.next_session;
        self.next_session += 1;
        let now = self.clock.now_millis();
        self.spawn_job(
            move |r| {
                let genesis = r.genesis(&room)?.as_bytes().to_vec();
                if history {
                    let (session, message) =
                        SyncSession::fetch_history(r, &room, HISTORY_ENVELOPES, now)
                            .ok_or_else(|| NodeError::Sync("no history to fetch".into()))?;
                    return Ok((session, vec![message], None, genesis));
                }
                let (session, messages) = SyncSession::initiate(r, &room, now)
                    .map_err(|e| NodeError::Sync(e.to_string()))?;
                Ok((session, messages, Some(r.last_stamp()), genesis))
            },
            move |result| {
                let (session, messages, watermark, genesis) = match result.and_then(|r| r) {
                    Ok(started) => started,
                    Err(e) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(e));
                        }
                        return Some(Internal::Ended(peer, room));
                    }
                };
                Some(Internal::Outbound(
                    Outbound {
                        peer,
                        room,
                        session_id,
                        session,
                        genesis: Some(genesis),
                        watermark,
                        reply,
                    },
                    messages,
                ))
            },
        );
    }

    /// Fetches older history for every room whose pages reached the window,
    /// from one peer in the room.
    fn fetch_wanted_history(&mut self) {
        let rooms = self.rooms.clone();
        self.spawn_job(
            move |r| {
                r.history_wanted()
                    .into_iter()
                    .map(|(room, _)| room)
                    .filter(|room| rooms.contains(room))
                    .collect()
            },
            |wanted| Some(Internal::HistoryWanted(wanted.ok()?)),
        );
    }

    /// A connected peer in `room`'s gossip mesh, or else any connected peer
    /// subscribed to it.
    fn peer_in(&self, room: &RoomId) -> Option<PeerId> {
        let topic = room_topic(room).hash();
        let gossip = &self.swarm.behaviour().gossipsub;
        let mesh = gossip.mesh_peers(&topic).next().copied();
        mesh.or_else(|| gossip.all_peers().find(|(_, t)| t.contains(&&topic)).map(|(p, _)| *p))
    }

    fn internal(&mut self, internal: Internal) {
        match internal {
            Internal::Validated(id, source, acceptance, room, governance) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
                if acceptance == MessageAcceptance::Accept {
                    if let Some(room) = room {
                        self.activity.insert(room, Instant::now());
                    }
                    if governance {
                        self.review(None);
                    }
                }
            }
            Internal::Outbound(mut out, messages) => {
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
            Internal::Inbound(served) => {
                let Served { peer, session_id, session, response, channel, bad, joined } = served;
                if let Some(room) = joined {
                    match self.join(room) {
                        Ok(()) => {
                            tracing::info!(%room, %peer, "took up a room on a peer's request");
                            self.counters.rooms_taken_up.inc();
                            self.emit(NodeEvent::RoomTakenUp { room, peer });
                        }
                        Err(e) => tracing::warn!(%room, error = %e, "cannot subscribe to a room"),
                    }
                }
                let _ = self.swarm.behaviour_mut().sync.send_response(channel, response);
                if bad {
                    self.strike(peer);
                } else if let Some(session) = session {
                    if !session.is_done() && !session.is_failed() {
                        self.inbound.insert((peer, session_id), session);
                    }
                }
            }
            Internal::Ended(peer, room) => self.sync_ended(peer, room),
            Internal::Failed(out, e) => {
                let strike = matches!(e, NodeError::Sync(_));
                self.end_outbound(out, e, strike);
            }
            Internal::Delivered(room, upto) => self.emit(NodeEvent::Delivered { room, upto }),
            Internal::Reviewed(verdicts, own) => {
                for (peer, reads) in verdicts {
                    self.score_reader(peer, reads);
                }
                for (room, reads) in own.unwrap_or_default() {
                    self.listen_to(room, reads);
                }
            }
            Internal::HistoryWanted(rooms) => {
                for room in rooms {
                    if let Some(peer) = self.peer_in(&room) {
                        if self.syncing.insert((peer, room)) {
                            self.start_session(peer, room, true, None);
                        }
                    }
                }
            }
            Internal::Confirm(room) => {
                self.confirming.remove(&room);
                match self.peer_in(&room) {
                    Some(peer) if self.syncing.insert((peer, room)) => {
                        self.start_sync(peer, room, None)
                    }
                    // A catch-up with that peer is running; it may have
                    // begun before the message. Confirm again after it.
                    Some(_) => self.schedule_confirm(room),
                    // Nobody to confirm with now: the next connection's
                    // catch-up does it.
                    None => {}
                }
            }
            Internal::PublishSignal(room, bytes) => {
                let _ = self.publish(signal_topic(&room), bytes);
            }
            Internal::Unban(peer) => {
                self.strikes.remove(&peer);
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
        }
    }

    /// A catch-up this node started failed: report it, and with `strike`
    /// count it against the peer.
    fn end_outbound(&mut self, mut out: Outbound, error: NodeError, strike: bool) {
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

    fn finish_sync(&mut self, mut out: Outbound) {
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
        self.spawn_job(
            move |r| r.mark_reached(&room, watermark),
            move |moved| match moved {
                Ok(Ok(true)) => Some(Internal::Delivered(room, watermark)),
                _ => None,
            },
        );
    }

    /// Counts a bad sync request; past the limit the peer is disconnected
    /// and banned for a while.
    fn strike(&mut self, peer: PeerId) {
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

    /// The author behind `peer`, from a device certificate it sent (`None`
    /// if it sent none). A certificate that is forged or names another peer
    /// is an error: the sender's fault.
    fn learn_author(
        &mut self,
        peer: PeerId,
        cert: &[u8],
    ) -> std::result::Result<Option<AuthorId>, String> {
        if cert.is_empty() {
            return Ok(None);
        }
        if let Some((known, author)) = self.authors.get(&peer) {
            if known.as_slice() == cert {
                return Ok(Some(*author));
            }
        }
        let author = DeviceCert::verify(cert, &peer.to_bytes())
            .map_err(|e| format!("device certificate is refused: {e}"))?
            .author;
        self.authors.insert(peer, (cert.to_vec(), author));
        tracing::debug!(%peer, %author, "learned a peer's author");
        self.review(Some(peer));
        Ok(Some(author))
    }

    /// Reviews whether gossip peers (all, or `only`) may read every room of
    /// ours they subscribe to, and scores them for it; reviewing all, also
    /// whether this device may read each of its rooms.
    fn review(&mut self, only: Option<PeerId>) {
        let mut topics = HashMap::new();
        for room in &self.rooms {
            topics.insert(room_topic(room).hash(), *room);
            topics.insert(signal_topic(room).hash(), *room);
        }
        let gossip = &self.swarm.behaviour().gossipsub;
        let mut asks = Vec::new();
        for (peer, subscribed) in gossip.all_peers() {
            if only.is_some_and(|p| p != *peer) {
                continue;
            }
            let mut rooms: Vec<RoomId> =
                subscribed.iter().filter_map(|t| topics.get(*t)).copied().collect();
            rooms.sort_unstable();
            rooms.dedup();
            let author = self.authors.get(peer).map(|(_, a)| *a);
            asks.push((*peer, author, rooms));
        }
        let mine: Option<Vec<RoomId>> =
            only.is_none().then(|| self.rooms.iter().copied().collect());
        if asks.is_empty() && mine.is_none() {
            return;
        }
        self.spawn_job(
            move |r| {
                let reads = |author: &AuthorId, room: &RoomId| r.may_read(room, author);
                let verdicts = asks
                    .into_iter()
                    .map(|(peer, author, rooms)| {
                        let ok = rooms.is_empty()
                            || author.is_some_and(|a| {
                                rooms.iter().all(|room| reads(&a, room).unwrap_or(false))
                            });
                        (peer, ok)
                    })
                    .collect();
                let me = r.author();
                let own = mine.map(|rooms| {
                    rooms
                        .into_iter()
                        .map(|room| (room, reads(&me, &room).unwrap_or(true)))
                        .collect()
                });
                (verdicts, own)
            },
            |reviewed| {
                let (verdicts, own) = reviewed.ok()?;
                Some(Internal::Reviewed(verdicts, own))
            },
        );
    }

    /// Joins or leaves a room's gossip topics as this device may or may not
    /// read the room: a removed device stops asking for the room's gossip
    /// (which honest peers would not send it) and keeps catching up, which
    /// brings the governance that may admit it again.
    fn listen_to(&mut self, room: RoomId, reads: bool) {
        if !self.rooms.contains(&room) || reads != self.unread.contains(&room) {
            return;
        }
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        if reads {
            let joined =
                gossip.subscribe(&room_topic(&room)).and(gossip.subscribe(&signal_topic(&room)));
            if let Err(e) = joined {
                tracing::warn!(%room, error = %e, "cannot subscribe to a room");
                return;
            }
            self.unread.remove(&room);
            tracing::info!(%room, "may read the room again: joined its gossip");
        } else {
            gossip.unsubscribe(&room_topic(&room));
            gossip.unsubscribe(&signal_topic(&room));
            self.unread.insert(room);
            tracing::info!(%room, "may not read the room: left its gossip");
        }
    }

    /// Lets `peer` have the rooms' gossip, or keeps it from them.
    fn score_reader(&mut self, peer: PeerId, reads: bool) {
        let score = if reads { 0.0 } else { NON_READER_SCORE };
        // gossipsub keeps a disconnected peer's score for a while, so the
        // score is set on every verdict, not only on changes.
        self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, score);
        if !reads {
            if let std::collections::hash_map::Entry::Vacant(e) = self.non_readers.entry(peer) {
                tracing::debug!(%peer, "kept a gossip peer from its rooms' gossip");
                e.insert(Instant::now());
            }
            return;
        }
        let Some(since) = self.non_readers.remove(&peer) else { return };
        tracing::debug!(%peer, "let a gossip peer have its rooms' gossip");
        // What gossip it was not sent meanwhile (a new peer is kept out
        // until its certificate arrives) it gets by catch-up.
        let topics: HashSet<gossipsub::TopicHash> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(p, _)| **p == peer)
            .flat_map(|(_, t)| t.into_iter().cloned())
            .collect();
        let missed: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|r| topics.contains(&room_topic(r).hash()))
            .filter(|r| self.activity.get(r).is_some_and(|at| *at >= since))
            .copied()
            .collect();
        for room in missed {
            if self.syncing.insert((peer, room)) {
                self.start_sync(peer, room, None);
            } else {
                self.again.insert((peer, room));
            }
        }
    }

    /// A catch-up with `peer` about `room` ended; runs one more if one was
    /// asked for meanwhile.
    fn sync_ended(&mut self, peer: PeerId, room: RoomId) {
        self.syncing.remove(&(peer, room));
        if self.again.remove(&(peer, room))
            && self.swarm.is_connected(&peer)
            && self.syncing.insert((peer, room))
        {
            self.start_sync(peer, room, None);
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            // A new peer: catch up with it about every joined room.
            SwarmEvent::ConnectionEstablished { peer_id, num_established, .. }
                if num_established.get() == 1 =>
            {
                self.emit(NodeEvent::PeerConnected(peer_id));
                self.sync_peer(peer_id);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                // Sessions the peer started and left unfinished end with it.
                self.inbound.retain(|(peer, _), _| *peer != peer_id);
                self.authors.remove(&peer_id);
                self.non_readers.remove(&peer_id);
                self.again.retain(|(peer, _)| *peer != peer_id);
                self.emit(NodeEvent::PeerLost(peer_id));
            }
            SwarmEvent::NewListenAddr { listener_id, address } => {
                // A relay runs where it can be reached: what it listens on
                // is what it offers reserving peers.
                if self.config.relay_server && !is_circuit(&address) {
                    self.swarm.add_external_address(address.clone());
                }
                if let Some(reply) = self.pending_listen.remove(&listener_id) {
                    let _ = reply.send(Ok(address));
                }
            }
            SwarmEvent::ListenerError { listener_id, error }
            | SwarmEvent::ListenerClosed { listener_id, reason: Err(error), .. } => {
                if let Some(reply) = self.pending_listen.remove(&listener_id) {
                    let _ = reply.send(Err(NodeError::Network(error.to_string())));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if self.swarm.is_connected(&peer) {
                        continue;
                    }
                    if self.discovered.insert(peer) {
                        self.emit(NodeEvent::Discovered(peer));
                    }
                    // Both sides discover each other at once and dial: with
                    // the listening port reused, two TCP dials meet as one
                    // simultaneous open that neither handshake survives.
                    let opts =
                        DialOpts::peer_id(peer).addresses(vec![addr]).allocate_new_port().build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!(%peer, error = %e, "cannot dial a discovered peer");
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.gossip(propagation_source, message_id, message),
            // A peer joining a room's topic: kept from the room's gossip at
            // once if its author is not known yet, and reviewed otherwise.
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                peer_id,
                topic,
            })) => {
                let ours = self.rooms.iter().any(|r| room_topic(r).hash() == topic);
                if ours && !self.authors.contains_key(&peer_id) {
                    self.score_reader(peer_id, false);
                } else if ours {
                    self.review(Some(peer_id));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.serve_sync(peer, request, channel)
                }
                request_response::Message::Response { request_id, response } => {
                    let Some(out) = self.outbound.remove(&request_id) else { return };
                    match self.learn_author(out.peer, &response.cert) {
                        Err(why) => {
                            let e = NodeError::Sync(format!("the peer's {why}"));
                            self.end_outbound(out, e, true);
                        }
                        Ok(_) if response.not_served => {
                            let e = NodeError::Sync(format!(
                                "the peer does not serve room {}",
                                out.room
                            ));
                            self.end_outbound(out, e, false);
                        }
                        Ok(author) => self.continue_sync(out, response, author),
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Sync(
                request_response::Event::OutboundFailure { request_id, error, .. },
            )) => {
                if let Some(out) = self.outbound.remove(&request_id) {
                    self.end_outbound(out, NodeError::Network(error.to_string()), false);
                }
            }
            // A request that could not be read (malformed or oversized
            // frames) is the sender's fault.
            SwarmEvent::Behaviour(BehaviourEvent::Sync(
                request_response::Event::InboundFailure {
                    peer,
                    error: request_response::InboundFailure::Io(_),
                    ..
                },
            )) => self.strike(peer),
            _ => {}
        }
    }

    /// Validates a gossiped message. Envelopes are validated by applying
    /// them: accepted (and forwarded) only if the replica accepts them,
    /// rejected (scored down) if invalid. Signals are verified here and
    /// never stored.
    fn gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let is_signal = self.rooms.iter().find(|r| signal_topic(r).hash() == message.topic);
        if let Some(room) = is_signal.copied() {
            let acceptance = match Signal::verify(&message.data, self.clock.now_millis()) {
                Ok(signal) if signal.room == room => {
                    self.signals.insert((room, signal.author), (signal.kind, Instant::now()));
                    self.emit(NodeEvent::Signal { room, author: signal.author, kind: signal.kind });
                    MessageAcceptance::Accept
                }
                _ => MessageAcceptance::Reject,
            };
            self.internal(Internal::Validated(id, source, acceptance, None, false));
            return;
        }
        let rooms = self.rooms.clone();
        let rejected = self.counters.envelopes_rejected.clone();
        let governance = message.data.starts_with(GOV_MAGIC);
        let topic_room = self.rooms.iter().find(|r| room_topic(r).hash() == message.topic).copied();
        self.spawn_job(
            move |r| {
                if message.data.starts_with(GOV_MAGIC) {
                    // A governance change: judged at its causal past, like
                    // everywhere else.
                    let Ok(change) = GovChange::from_bytes(&message.data) else {
                        return MessageAcceptance::Reject;
                    };
                    let room = change.room();
                    if !rooms.contains(&room) || message.topic != room_topic(&room).hash() {
                        return MessageAcceptance::Reject;
                    }
                    return match r.apply_governance(&room, vec![change]).map(|mut v| v.pop()) {
                        // One whose dependencies are missing is kept, not
                        // forwarded: catch-up brings honest ones in order.
                        Ok(Some(Ok(GovApplied::Pending { .. }))) => MessageAcceptance::Ignore,
                        Ok(Some(Ok(_))) => MessageAcceptance::Accept,
                        Ok(Some(Err(e))) if e.is_senders_fault() => MessageAcceptance::Reject,
                        _ => MessageAcceptance::Ignore,
                    };
                }
                let Ok(delivery) = Delivery::from_bytes(&message.data) else {
                    return MessageAcceptance::Reject;
                };
                let room = delivery.envelope.room();
                if !rooms.contains(&room) || message.topic != room_topic(&room).hash() {
                    return MessageAcceptance::Reject;
                }
                match r.apply(&room, vec![delivery]).map(|mut v| v.pop()) {
                    Ok(Some(Ok(_))) => MessageAcceptance::Accept,
                    // Kept back for now (too much of the room waits, or
                    // it cites governance not held yet from a key that is
                    // no reader here), not the sender's fault; catch-up
                    // brings it in order.
                    Ok(Some(Err(e))) if !e.is_senders_fault() => MessageAcceptance::Ignore,
                    Ok(Some(Err(_))) => MessageAcceptance::Reject,
                    // A store failure is ours, not the sender's fault.
                    _ => MessageAcceptance::Ignore,
                }
            },
            move |result| {
                let acceptance = result.unwrap_or(MessageAcceptance::Ignore);
                if acceptance == MessageAcceptance::Reject {
                    rejected.inc();
                }
                Some(Internal::Validated(id, source, acceptance, topic_room, governance))
            },
        );
    }

    fn serve_sync(
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
        let counters = self.counters.clone();
        let cert = self.cert.clone();
        self.spawn_job(
            move |r| {
                let mut served = Served {
                    peer,
                    session_id,
                    session: None,
                    response: SyncResponse::answer(cert, Vec::new()),
                    channel,
                    bad: false,
                    joined: None,
                };
                if take_up {
                    let genesis = request.genesis.as_deref().unwrap_or_default();
                    match r.join_room(genesis) {
                        Ok(joined) if joined == room => served.joined = Some(room),
                        // A genesis that fails to verify or names another
                        // room is the sender's fault.
                        _ => {
                            served.bad = true;
                            return served;
                        }
                    }
                }
                let mut session = session.unwrap_or_else(|| SyncSession::respond(r, &room, now));
                // The room's messages go only to an author that may read it.
                if let Some(author) = author {
                    session.set_peer(author);
                }
                let rejected = session.stats().envelopes_rejected;
                for m in &request.messages {
                    match session.handle(r, m, now) {
                        Ok(replies) => served.response.messages.extend(replies),
                        Err(_) => {
                            served.response.messages.clear();
                            served.bad = true;
                            return served;
                        }
                    }
                }
                // Forged or foreign envelopes are the sender's fault too.
                let forged = session.stats().envelopes_rejected - rejected;
                counters.envelopes_rejected.inc_by(forged);
                served.bad = forged > 0;
                served.session = Some(session);
                served
            },
            // A failed job (the replica closed, the mirror unreachable)
            // drops the channel: the peer sees the request fail, and nothing
            // counts as delivered.
            move |result| Some(Internal::Inbound(result.ok()?)),
        );
    }

    fn continue_sync(&mut self, out: Outbound, response: SyncResponse, author: Option<AuthorId>) {
        let now = self.clock.now_millis();
        let Outbound { peer, room, session_id, mut session, genesis, watermark, reply } = out;
        if let Some(author) = author {
            session.set_peer(author);
        }
        self.spawn_job(
            move |r| {
                let rejected = session.stats().envelopes_rejected;
                let mut next = Vec::new();
                for m in &response.messages {
                    match session.handle(r, m, now) {
                        Ok(replies) => next.extend(replies),
                        Err(e) => return (session, Err(NodeError::Sync(e.to_string()))),
                    }
                }
                if session.stats().envelopes_rejected > rejected {
                    let e = NodeError::Sync("the peer sent envelopes that fail validation".into());
                    return (session, Err(e));
                }
                (session, Ok(next))
            },
            move |result| {
                let (session, next) = match result {
                    Ok(stepped) => stepped,
                    Err(e) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(e));
                        }
                        return Some(Internal::Ended(peer, room));
                    }
                };
                let out = Outbound { peer, room, session_id, session, genesis, watermark, reply };
                Some(match next {
                    Ok(next) => Internal::Outbound(out, next),
                    Err(e) => Internal::Failed(out, e),
                })
            },
        );
    }
}

fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// `addr` ending in `/p2p/<peer>`, so that a dialer checks who answers.
pub(crate) fn with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr
    } else {
        addr.with(Protocol::P2p(peer))
    }
}
