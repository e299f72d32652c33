//! The node: one actor task owns the libp2p swarm; a cloneable [`Node`]
//! handle sends it commands over a bounded channel. Gossipsub carries live
//! envelopes (one topic per room, each validated by the replica before it is
//! accepted or forwarded); request-response carries catch-up sync flights.
//!
//! The actor never waits for the replica: replica work runs as tasks against
//! the [`ReplicaHandle`], and their outcomes come back to the actor on an
//! internal bounded channel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use concord_core::{Clock, Delivery, RoomId, Store, SyncSession, SyncStats};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use crate::error::{NodeError, Result};
use crate::replica_actor::ReplicaHandle;
use crate::sync_codec::{SyncCodec, SyncRequest, SyncResponse, SYNC_PROTOCOL};

/// Commands waiting for the swarm actor. Callers wait when it is full.
pub const COMMAND_QUEUE: usize = 64;
/// Replica outcomes waiting for the swarm actor (validations, sync steps).
const INTERNAL_QUEUE: usize = 256;
/// Largest gossip message: gossipsub's 64 KiB, which every envelope fits.
const MAX_GOSSIP_BYTES: usize = 64 * 1024;

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

enum Command {
    Listen(Multiaddr, oneshot::Sender<Result<Multiaddr>>),
    Dial(Multiaddr, oneshot::Sender<Result<()>>),
    Join(RoomId, oneshot::Sender<Result<()>>),
    Publish(RoomId, Vec<u8>, oneshot::Sender<Result<()>>),
    Sync(PeerId, RoomId, oneshot::Sender<Result<SyncStats>>),
    Peers(oneshot::Sender<Vec<PeerId>>),
    Score(PeerId, oneshot::Sender<Option<f64>>),
    Shutdown(oneshot::Sender<()>),
}

/// What a replica task reports back to the actor.
enum Internal {
    Validated(gossipsub::MessageId, PeerId, MessageAcceptance),
    Outbound(Outbound, Vec<Vec<u8>>),
    Inbound(PeerId, u64, SyncSession, Vec<Vec<u8>>, ResponseChannel<SyncResponse>),
    Failed(Outbound, NodeError),
    /// A catch-up ended before it had a session.
    Ended(PeerId, RoomId),
}

/// An initiated catch-up, between flights.
struct Outbound {
    peer: PeerId,
    room: RoomId,
    session_id: u64,
    session: SyncSession,
    reply: Option<oneshot::Sender<Result<SyncStats>>>,
}

/// How often a node runs catch-up with every connected peer, by default.
/// Catch-up also runs on every new connection; the period heals what gossip
/// dropped while connected.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Settings of a node.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Period of catch-up with every connected peer, per joined room.
    pub sync_interval: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { sync_interval: DEFAULT_SYNC_INTERVAL }
    }
}

impl NodeConfig {
    /// Sets the catch-up period.
    pub fn sync_interval(mut self, every: Duration) -> Self {
        self.sync_interval = every;
        self
    }
}

/// A cloneable handle to a running node.
#[derive(Clone, Debug)]
pub struct Node {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
}

fn topic(room: &RoomId) -> IdentTopic {
    IdentTopic::new(format!("concord/room/{room}"))
}

/// Scoring of a room topic: invalid envelopes cost a peer dearly; the
/// delivery-rate penalties stay off, since a quiet room is not a fault.
fn topic_score() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.9,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        ..gossipsub::TopicScoreParams::default()
    }
}

impl Node {
    /// Starts a node over `replica` with a new network identity and the
    /// default settings.
    pub fn spawn<S: Store + 'static>(
        replica: ReplicaHandle<S>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        Self::spawn_with(replica, clock, NodeConfig::default())
    }

    /// Starts a node with `config`.
    pub fn spawn_with<S: Store + 'static>(
        replica: ReplicaHandle<S>,
        clock: Arc<dyn Clock>,
        config: NodeConfig,
    ) -> Result<Self> {
        let swarm = build_swarm()?;
        let peer_id = *swarm.local_peer_id();
        let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
        let (internal_tx, internal) = mpsc::channel(INTERNAL_QUEUE);
        let actor = Actor {
            swarm,
            replica,
            clock,
            inbox,
            internal,
            internal_tx,
            rooms: HashSet::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            next_session: 0,
            pending_listen: Vec::new(),
            syncing: HashSet::new(),
            config,
        };
        tokio::spawn(actor.run());
        Ok(Self { commands, peer_id })
    }

    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| NodeError::Closed)?;
        rx.await.map_err(|_| NodeError::Closed)
    }

    /// Listens on `addr` (port 0 picks one); returns the address bound.
    pub async fn listen(&self, addr: Multiaddr) -> Result<Multiaddr> {
        self.ask(|tx| Command::Listen(addr, tx)).await?
    }

    /// Connects to a peer.
    pub async fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Subscribes to a room's gossip topic (the replica must hold the room).
    pub async fn join(&self, room: RoomId) -> Result<()> {
        self.ask(|tx| Command::Join(room, tx)).await?
    }

    /// Gossips a delivery to the room.
    pub async fn publish(&self, room: RoomId, delivery: &Delivery) -> Result<()> {
        let bytes = delivery.to_bytes();
        self.ask(|tx| Command::Publish(room, bytes, tx)).await?
    }

    /// Runs one catch-up with `peer` about `room`.
    pub async fn sync(&self, peer: PeerId, room: RoomId) -> Result<SyncStats> {
        self.ask(|tx| Command::Sync(peer, room, tx)).await?
    }

    /// A peer's gossip score (negative once it sent envelopes the replica
    /// rejected), if the peer is known.
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>> {
        self.ask(|tx| Command::Score(peer, tx)).await
    }

    /// Peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerId>> {
        self.ask(Command::Peers).await
    }

    /// Stops the actor and closes its connections.
    pub async fn shutdown(&self) -> Result<()> {
        self.ask(Command::Shutdown).await
    }
}

fn build_swarm() -> Result<Swarm<Behaviour>> {
    let net = |e: &dyn std::fmt::Display| NodeError::Network(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .map_err(|e| net(&e))?
        .with_quic()
        .with_behaviour(|key| {
            let gossip = gossipsub::ConfigBuilder::default()
                .validation_mode(ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(MAX_GOSSIP_BYTES)
                .heartbeat_interval(Duration::from_millis(500))
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
                })
                .build()
                .map_err(|e| e.to_string())?;
            let mut gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip)?;
            // Peer scoring, so that peers sending envelopes the replica
            // rejects lose standing and, past the thresholds, are ignored.
            gossipsub.with_peer_score(
                gossipsub::PeerScoreParams::default(),
                gossipsub::PeerScoreThresholds::default(),
            )?;
            Ok(Behaviour {
                gossipsub,
                sync: request_response::Behaviour::new(
                    [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60)),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/concord/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
            })
        })
        .map_err(|e| net(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

struct Actor<S: Store> {
    swarm: Swarm<Behaviour>,
    replica: ReplicaHandle<S>,
    clock: Arc<dyn Clock>,
    inbox: mpsc::Receiver<Command>,
    internal: mpsc::Receiver<Internal>,
    internal_tx: mpsc::Sender<Internal>,
    rooms: HashSet<RoomId>,
    outbound: HashMap<OutboundRequestId, Outbound>,
    inbound: HashMap<(PeerId, u64), SyncSession>,
    next_session: u64,
    /// Listen requests waiting for their bound address.
    pending_listen: Vec<oneshot::Sender<Result<Multiaddr>>>,
    /// Catch-ups running, so that a period does not stack a second one.
    syncing: HashSet<(PeerId, RoomId)>,
    config: NodeConfig,
}

impl<S: Store + 'static> Actor<S> {
    async fn run(mut self) {
        let mut period = tokio::time::interval(self.config.sync_interval);
        period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                command = self.inbox.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.command(command),
                    None => return,
                },
                Some(internal) = self.internal.recv() => self.internal(internal),
                event = self.swarm.select_next_some() => self.event(event),
                _ = period.tick() => self.sync_everyone(),
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Listen(addr, reply) => {
                let result =
                    self.swarm.listen_on(addr).map_err(|e| NodeError::Network(e.to_string()));
                // The bound address arrives as an event; answer with it then.
                match result {
                    Ok(_) => self.pending_listen.push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Dial(addr, reply) => {
                let _ = reply
                    .send(self.swarm.dial(addr).map_err(|e| NodeError::Network(e.to_string())));
            }
            Command::Join(room, reply) => {
                let gossip = &mut self.swarm.behaviour_mut().gossipsub;
                let _ = gossip.set_topic_params(topic(&room), topic_score());
                let result = gossip
                    .subscribe(&topic(&room))
                    .map(|_| ())
                    .map_err(|e| NodeError::Network(e.to_string()));
                if result.is_ok() {
                    self.rooms.insert(room);
                }
                let _ = reply.send(result);
            }
            Command::Publish(room, bytes, reply) => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic(&room), bytes)
                    .map(|_| ())
                    .map_err(|e| NodeError::Network(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Sync(peer, room, reply) => self.start_sync(peer, room, Some(reply)),
            Command::Score(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Runs a replica job off the actor and reports its outcome on the
    /// internal channel.
    fn spawn_job<T, F>(
        &self,
        job: F,
        report: impl FnOnce(Result<T>) -> Option<Internal> + Send + 'static,
    ) where
        T: Send + 'static,
        F: FnOnce(&mut concord_core::Replica<S>) -> T + Send + 'static,
    {
        let replica = self.replica.clone();
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            if let Some(message) = report(replica.call(job).await) {
                let _ = internal.send(message).await;
            }
        });
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
        let session_id = self.next_session;
        self.next_session += 1;
        let now = self.clock.now_millis();
        self.spawn_job(
            move |r| SyncSession::initiate(r, &room, now),
            move |result| {
                let (session, messages) =
                    match result.and_then(|r| r.map_err(|e| NodeError::Sync(e.to_string()))) {
                        Ok(started) => started,
                        Err(e) => {
                            if let Some(reply) = reply {
                                let _ = reply.send(Err(e));
                            }
                            return Some(Internal::Ended(peer, room));
                        }
                    };
                Some(Internal::Outbound(
                    Outbound { peer, room, session_id, session, reply },
                    messages,
                ))
            },
        );
    }

    fn internal(&mut self, internal: Internal) {
        match internal {
            Internal::Validated(id, source, acceptance) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Internal::Outbound(mut out, messages) => {
                if messages.is_empty() || out.session.is_done() {
                    self.syncing.remove(&(out.peer, out.room));
                    if let Some(reply) = out.reply.take() {
                        let _ = reply.send(Ok(*out.session.stats()));
                    }
                    return;
                }
                let request = SyncRequest { session: out.session_id, room: out.room, messages };
                let id = self.swarm.behaviour_mut().sync.send_request(&out.peer, request);
                self.outbound.insert(id, out);
            }
            Internal::Inbound(peer, session_id, session, messages, channel) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, SyncResponse { messages });
                if !session.is_done() && !session.is_failed() {
                    self.inbound.insert((peer, session_id), session);
                }
            }
            Internal::Ended(peer, room) => {
                self.syncing.remove(&(peer, room));
            }
            Internal::Failed(mut out, e) => {
                self.syncing.remove(&(out.peer, out.room));
                if let Some(reply) = out.reply.take() {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            // A new peer: catch up with it about every joined room.
            SwarmEvent::ConnectionEstablished { peer_id, num_established, .. }
                if num_established.get() == 1 =>
            {
                self.sync_peer(peer_id);
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                for reply in self.pending_listen.drain(..) {
                    let _ = reply.send(Ok(address.clone()));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.serve_sync(peer, request, channel)
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(out) = self.outbound.remove(&request_id) {
                        self.continue_sync(out, response);
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Sync(
                request_response::Event::OutboundFailure { request_id, error, .. },
            )) => {
                if let Some(mut out) = self.outbound.remove(&request_id) {
                    self.syncing.remove(&(out.peer, out.room));
                    if let Some(reply) = out.reply.take() {
                        let _ = reply.send(Err(NodeError::Network(error.to_string())));
                    }
                }
            }
            _ => {}
        }
    }

    /// Validates a gossiped delivery by applying it: accepted (and
    /// forwarded) only if the replica accepts it, rejected (scored down) if
    /// it is invalid.
    fn gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let rooms = self.rooms.clone();
        self.spawn_job(
            move |r| {
                let Ok(delivery) = Delivery::from_bytes(&message.data) else {
                    return MessageAcceptance::Reject;
                };
                let room = delivery.envelope.room();
                if !rooms.contains(&room) || message.topic != topic(&room).hash() {
                    return MessageAcceptance::Reject;
                }
                match r.apply(&room, vec![delivery]).map(|mut v| v.pop()) {
                    Ok(Some(Ok(_))) => MessageAcceptance::Accept,
                    Ok(Some(Err(_))) => MessageAcceptance::Reject,
                    // A store failure is ours, not the sender's fault.
                    _ => MessageAcceptance::Ignore,
                }
            },
            move |result| {
                let acceptance = result.unwrap_or(MessageAcceptance::Ignore);
                Some(Internal::Validated(id, source, acceptance))
            },
        );
    }

    fn serve_sync(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        let session = self.inbound.remove(&(peer, request.session));
        let now = self.clock.now_millis();
        let room = request.room;
        let session_id = request.session;
        self.spawn_job(
            move |r| {
                let mut session = session.unwrap_or_else(|| SyncSession::respond(r, &room, now));
                let mut out = Vec::new();
                for m in &request.messages {
                    match session.handle(r, m, now) {
                        Ok(replies) => out.extend(replies),
                        Err(_) => break,
                    }
                }
                (session, out)
            },
            move |result| {
                let (session, out) = result.ok()?;
                Some(Internal::Inbound(peer, session_id, session, out, channel))
            },
        );
    }

    fn continue_sync(&mut self, out: Outbound, response: SyncResponse) {
        let now = self.clock.now_millis();
        let Outbound { peer, room, session_id, mut session, reply } = out;
        self.spawn_job(
            move |r| {
                let mut next = Vec::new();
                for m in &response.messages {
                    match session.handle(r, m, now) {
                        Ok(replies) => next.extend(replies),
                        Err(e) => return (session, Err(NodeError::Sync(e.to_string()))),
                    }
                }
                (session, Ok(next))
            },
            move |result| match result {
                Ok((session, Ok(next))) => Some(Internal::Outbound(
                    Outbound { peer, room, session_id, session, reply },
                    next,
                )),
                Ok((session, Err(e))) => {
                    Some(Internal::Failed(Outbound { peer, room, session_id, session, reply }, e))
                }
                Err(e) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e));
                    }
                    Some(Internal::Ended(peer, room))
                }
            },
        );
    }
}
