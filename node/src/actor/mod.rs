//! The swarm actor: the one task that owns the libp2p swarm. It takes
//! commands from [`crate::Node`] handles over a bounded channel, and never
//! waits for the replica: replica work is sent as typed requests
//! ([`crate::replica_actor::Request`]) whose answers the actor polls beside
//! the swarm, at most [`ACTOR_JOBS`] at a time.
//!
//! - `gossip.rs`: room topics, judging gossiped messages, who gets gossip;
//! - `sync.rs`: catch-up sessions started and served, strikes;
//! - `peers.rs`: swarm events, connections, discovery, device certificates;
//! - `signals.rs`: typing and presence;
//! - `metrics.rs`: counters and traffic statistics.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_core::{AuthorId, Clock, Hlc, RoomId, SignalKind, Store, SyncSession, SyncStats};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::OutboundRequestId;
use libp2p::{Multiaddr, PeerId, Swarm};
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::behaviour::Behaviour;
use crate::config::NodeConfig;
use crate::error::{NodeError, Result};
use crate::events::NodeEvent;
use crate::replica_actor::{Announcements, ReplicaHandle, Reply, Request};

mod gossip;
mod metrics;
mod peers;
mod signals;
mod sync;

pub use metrics::NetStats;
pub use signals::Presence;

use gossip::REVIEW_PERIOD;
use metrics::Counters;
use sync::{Inbound, Outbound};

/// Replica requests the network side has in flight at most (queued for the
/// replica thread or running). Each holds at most one sync flight or one
/// gossiped message, so this bounds the memory they hold; it is below
/// [`crate::REPLICA_QUEUE`] so the app's own requests still find room.
const ACTOR_JOBS: usize = 48;
/// How long shutdown keeps driving the swarm so that the last messages
/// published (the "offline" signals) are written out.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(150);

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

/// Copies what the replica committed to a mirror (a relay's wide-column
/// store) before the node acts on it: a sync flight is answered, and a
/// gossiped envelope accepted and forwarded, only once `flush` succeeded, so
/// "reached the relay" means "in the relay's store".
pub(crate) trait Persist: Send + Sync + 'static {
    /// Writes out everything committed so far.
    fn flush(&self) -> BoxFuture<'static, std::result::Result<(), String>>;
}

/// What a replica task reports back to the actor.
enum Internal {
    /// A gossiped message judged: the room whose topic it came on, and
    /// whether it is a governance change.
    Validated(gossipsub::MessageId, PeerId, MessageAcceptance, Option<RoomId>, bool),
    Outbound(Outbound, Vec<Vec<u8>>),
    Inbound(Box<Inbound>),
    /// A catch-up this node started failed; with `true`, the peer is at
    /// fault.
    Failed(Outbound, NodeError, bool),
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
    /// What the replica announced in answer to peers, to gossip.
    pub(crate) announcements: Announcements,
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
    /// Replica requests in flight, with what each reports when answered
    /// (after the relay's mirror is flushed): at most [`ACTOR_JOBS`].
    jobs: FuturesUnordered<BoxFuture<'static, Option<Internal>>>,
    /// Messages to the actor itself, due later (confirmations, unbans).
    timers: FuturesUnordered<BoxFuture<'static, Internal>>,
    /// Reports of requests turned away, handled after the current event.
    backlog: VecDeque<Internal>,
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
            mut announcements,
            events,
            mut metrics,
            config,
            rooms,
            persist,
            cert,
        } = self;
        let counters = Counters::default();
        counters.register(&mut metrics);
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
            jobs: FuturesUnordered::new(),
            timers: FuturesUnordered::new(),
            backlog: VecDeque::new(),
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
                Some(announcement) = announcements.recv() => state.announced(announcement),
                Some(report) = state.jobs.next(), if !state.jobs.is_empty() => {
                    if let Some(message) = report {
                        state.internal(message);
                    }
                }
                Some(message) = state.timers.next(), if !state.timers.is_empty() => {
                    state.internal(message);
                }
                event = state.swarm.select_next_some() => state.event(event),
                _ = sync_period.tick() => {
                    state.sync_everyone();
                    state.fetch_wanted_history();
                }
                _ = presence_period.tick() => state.announce(SignalKind::Online),
                _ = review_period.tick() => state.review(None),
            }
            // What was turned away while handling this event reports now.
            while let Some(message) = state.backlog.pop_front() {
                state.internal(message);
            }
        }
    }
}

impl<S: Store + 'static> State<S> {
    fn emit(&self, event: NodeEvent) {
        // No receiver is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    pub(super) fn command(&mut self, command: Command) {
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
                let _ = reply.send(self.publish_change(room, bytes));
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

    /// Sends a request to the replica without waiting, and reports its
    /// answer (after the relay's mirror is flushed, on a node with one)
    /// through `report`. The one place that bounds the replica work the
    /// network side has in flight: beyond [`ACTOR_JOBS`], or when the
    /// replica's queue is full, the request is not made and `report` gets
    /// [`NodeError::Busy`] at once (a gossiped message is then ignored, a
    /// sync request left unanswered, a catch-up not started; catch-up heals
    /// all of them later).
    fn submit<T: Send + 'static>(
        &mut self,
        make: impl FnOnce(Reply<T>) -> Request,
        report: impl FnOnce(Result<T>) -> Option<Internal> + Send + 'static,
    ) {
        let answer = if self.jobs.len() < ACTOR_JOBS {
            self.replica.try_ask(make)
        } else {
            Err(NodeError::Busy)
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(error = %e, "replica request turned away");
                if let Some(message) = report(Err(e)) {
                    self.backlog.push_back(message);
                }
                return;
            }
        };
        let persist = self.persist.clone();
        self.jobs.push(Box::pin(async move {
            let mut outcome = answer.await.unwrap_or(Err(NodeError::Closed));
            if let (Some(persist), true) = (persist, outcome.is_ok()) {
                if let Err(e) = persist.flush().await {
                    tracing::warn!(error = %e, "cannot write to the relay store");
                    outcome = Err(NodeError::Mirror(e));
                }
            }
            report(outcome)
        }));
    }

    /// Sends `message` to the actor itself after `delay`.
    fn later(&mut self, delay: Duration, message: Internal) {
        self.timers.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            message
        }));
    }

    pub(super) fn internal(&mut self, internal: Internal) {
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
            Internal::Outbound(out, messages) => self.send_flight(out, messages),
            Internal::Inbound(inbound) => self.answer_inbound(*inbound),
            Internal::Ended(peer, room) => self.sync_ended(peer, room),
            Internal::Failed(out, e, strike) => self.end_outbound(out, e, strike),
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
}

pub(super) fn is_circuit(addr: &Multiaddr) -> bool {
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
