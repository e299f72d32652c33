//! The node handle: a cloneable [`Node`] over the swarm actor and the
//! replica thread. It is what a desktop app holds: open a data directory,
//! create or join rooms (each a [`Room`] handle), watch [`NodeEvent`]s, and
//! shut down cleanly.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_core::{
    AuthorId, Clock, Delivery, Replica, Role, RoomId, RoomInfo, RoomOptions, SignalKind, SledStore,
    Store, SyncStats, SystemClock,
};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::actor::{Actor, Command, NetStats, Persist, Presence};
use crate::behaviour::build_swarm;
use crate::config::NodeConfig;
use crate::error::{NodeError, Result};
use crate::events::{NodeEvent, EVENT_QUEUE};
use crate::redeem::{self, Redeeming};
use crate::replica_actor::{ReplicaHandle, ReplicaThread};
use crate::room::Room;
use crate::ticket::{RoomTicket, MAX_TICKET_ADDRESSES};

/// Commands waiting for the swarm actor. Callers wait when it is full.
pub const COMMAND_QUEUE: usize = 64;

/// A cloneable handle to a running node: the swarm actor, and the replica
/// on its own thread. Generic over the store; apps use the sled default.
pub struct Node<S: Store = SledStore> {
    commands: mpsc::Sender<Command>,
    replica: ReplicaHandle<S>,
    events: broadcast::Sender<NodeEvent>,
    peer_id: PeerId,
    author: AuthorId,
    thread: Arc<Mutex<Option<ReplicaThread>>>,
    /// Invites of joined tickets being redeemed in the background.
    redeeming: Redeeming,
    /// [`NodeConfig::invite_wait`].
    invite_wait: Duration,
}

impl<S: Store> Clone for Node<S> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            replica: self.replica.clone(),
            events: self.events.clone(),
            peer_id: self.peer_id,
            author: self.author,
            thread: self.thread.clone(),
            redeeming: self.redeeming.clone(),
            invite_wait: self.invite_wait,
        }
    }
}

impl<S: Store> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.peer_id)
            .field("author", &self.author)
            .finish_non_exhaustive()
    }
}

impl Node<SledStore> {
    /// Opens (or creates) the data directory `dir` with a sled store and the
    /// system clock, and starts a node on it. Must be called within a tokio
    /// runtime. Rooms already in the store are served again at once.
    pub fn open(dir: impl AsRef<Path>, config: NodeConfig) -> Result<Self> {
        config.validate()?;
        let store = SledStore::open_with_cache(dir.as_ref(), config.store_cache_bytes)
            .map_err(concord_core::Error::from)?;
        let mut replica = Replica::open(store, Arc::new(SystemClock))?;
        replica.set_doc_cache_items(config.doc_cache_items);
        Self::start(replica, Arc::new(SystemClock), config)
    }
}

impl<S: Store + 'static> Node<S> {
    /// Starts a node over `replica`: moves the replica to its own thread and
    /// spawns the swarm actor on the current tokio runtime. The network
    /// identity is derived from the device key, so the peer id is stable
    /// across restarts.
    pub fn start(replica: Replica<S>, clock: Arc<dyn Clock>, config: NodeConfig) -> Result<Self> {
        Self::start_with(replica, clock, config, None)
    }

    /// [`Node::start`], with a mirror that every replica job's commits are
    /// written to before the node acts on them (the relay's store).
    pub(crate) fn start_with(
        replica: Replica<S>,
        clock: Arc<dyn Clock>,
        config: NodeConfig,
        persist: Option<Arc<dyn Persist>>,
    ) -> Result<Self> {
        config.validate()?;
        let mut metrics = Registry::default();
        let swarm = build_swarm(replica.network_secret(), &config, &mut metrics)?;
        let peer_id = *swarm.local_peer_id();
        let author = replica.author();
        let cert = replica.device_cert(&peer_id.to_bytes())?;
        let rooms = replica.rooms().into_iter().map(|r| r.id).collect();
        let (replica, thread, announcements) =
            ReplicaHandle::spawn(replica).map_err(|e| NodeError::Network(e.to_string()))?;
        let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let invite_wait = config.invite_wait;
        let actor = Actor {
            swarm,
            replica: replica.clone(),
            clock,
            inbox,
            announcements,
            events: events.clone(),
            metrics,
            config,
            rooms,
            persist,
            cert,
        };
        tokio::spawn(actor.run());
        Ok(Self {
            commands,
            replica,
            events,
            peer_id,
            author,
            thread: Arc::new(Mutex::new(Some(thread))),
            redeeming: Redeeming::default(),
            invite_wait,
        })
    }

    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This device's author id.
    pub fn author(&self) -> AuthorId {
        self.author
    }

    /// The replica, for operations the node does not wrap.
    pub fn replica(&self) -> &ReplicaHandle<S> {
        &self.replica
    }

    /// A receiver of this node's events from now on.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Tells whoever listens.
    pub(crate) fn emit(&self, event: NodeEvent) {
        // No receiver is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| NodeError::Closed)?;
        rx.await.map_err(|_| NodeError::Closed)
    }

    // ----- network -------------------------------------------------------------

    /// Listens on `addr` (port 0 picks one); returns the address bound.
    pub async fn listen(&self, addr: Multiaddr) -> Result<Multiaddr> {
        self.ask(|tx| Command::Listen(addr, tx)).await?
    }

    /// Listens through a circuit relay (v2) at `relay`, an address ending in
    /// the relay's `/p2p/<peer id>`, for when this device is behind NAT.
    /// Returns the relayed address peers can dial; DCUtR then tries to
    /// upgrade such connections to direct ones.
    pub async fn listen_via_relay(&self, relay: Multiaddr) -> Result<Multiaddr> {
        self.listen(relay.with(Protocol::P2pCircuit)).await
    }

    /// Connects to a peer.
    pub async fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerId>> {
        self.ask(Command::Peers).await
    }

    /// The addresses this node can be reached at, each ending in its peer id.
    pub async fn addresses(&self) -> Result<Vec<Multiaddr>> {
        self.ask(Command::Addresses).await
    }

    /// Refuses and closes every connection with `peer` until unblocked.
    pub async fn block(&self, peer: PeerId) -> Result<()> {
        self.ask(|tx| Command::Block(peer, true, tx)).await
    }

    /// Lifts [`Node::block`].
    pub async fn unblock(&self, peer: PeerId) -> Result<()> {
        self.ask(|tx| Command::Block(peer, false, tx)).await
    }

    /// A peer's gossip score (negative once it sent envelopes the replica
    /// rejected), if the peer is known.
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>> {
        self.ask(|tx| Command::Score(peer, tx)).await
    }

    /// Bad sync requests counted against `peer` (it is banned at
    /// [`NodeConfig::max_sync_strikes`]).
    pub async fn sync_strikes(&self, peer: PeerId) -> Result<u32> {
        self.ask(|tx| Command::Strikes(peer, tx)).await
    }

    /// Traffic counters.
    pub async fn stats(&self) -> Result<NetStats> {
        self.ask(Command::Stats).await
    }

    /// The node's metrics (libp2p's and Concord's counters) in Prometheus
    /// text format.
    pub async fn metrics_text(&self) -> Result<String> {
        self.ask(Command::Metrics).await
    }

    // ----- rooms ---------------------------------------------------------------

    /// Serves a room the replica holds: subscribes to its gossip and
    /// includes it in catch-up.
    pub async fn join(&self, room: RoomId) -> Result<()> {
        self.ask(|tx| Command::Join(room, tx)).await?
    }

    /// Creates an open, end-to-end encrypted room and serves it.
    pub async fn create_room(&self, name: &str) -> Result<Room<S>> {
        self.create_room_opts(name, RoomOptions::default()).await
    }

    /// Creates a room of members only: this device is its admin and
    /// `members` have their roles; others join by invite. Encrypted.
    pub async fn create_room_with(
        &self,
        name: &str,
        members: Vec<(AuthorId, Role)>,
    ) -> Result<Room<S>> {
        self.create_room_opts(name, RoomOptions::default().members_only(members)).await
    }

    /// Creates a room as `options` say (members only or open, encrypted or
    /// not, history shared with new members or not) and serves it.
    pub async fn create_room_opts(&self, name: &str, options: RoomOptions) -> Result<Room<S>> {
        let id = self.replica.create_room(name.to_owned(), options).await?;
        self.join(id).await?;
        Ok(Room::new(self.clone(), id))
    }

    /// Joins the room a ticket names, serves it, and dials the ticket's
    /// addresses (those that fail are skipped: any one reachable peer is
    /// enough, and mDNS or later dials may find others).
    ///
    /// When the ticket carries an invite, the node redeems it by itself in
    /// the background as soon as the room's governance (with the invite's
    /// registration) arrives, and tells how that ended with
    /// [`NodeEvent::InviteRedeemed`] or [`NodeEvent::InviteFailed`]; the
    /// device may post in a room of members once redeemed. Joining with the
    /// same ticket again is harmless: a listed member has nothing to redeem,
    /// and a redemption already waiting is not started twice. A waiting
    /// redemption lives in memory only: after a restart, call this again
    /// with the ticket to resume it.
    pub async fn join_ticket(&self, ticket: &RoomTicket) -> Result<Room<S>> {
        let genesis = ticket.genesis().as_bytes().to_vec();
        let id = self.replica.join_room(genesis).await?;
        self.join(id).await?;
        let room = Room::new(self.clone(), id);
        if let Some(invite) = ticket.invite() {
            // Subscribed before dialing, so the first catch-up is seen.
            let events = self.events();
            redeem::spawn(room.clone(), invite.clone(), events, &self.redeeming, self.invite_wait);
        }
        for addr in ticket.addresses() {
            if let Err(e) = self.dial(addr.clone()).await {
                tracing::debug!(%addr, error = %e, "ticket address not dialable");
            }
        }
        Ok(room)
    }

    /// A room the replica holds.
    pub async fn room(&self, id: RoomId) -> Result<Room<S>> {
        self.replica.genesis(id).await?;
        Ok(Room::new(self.clone(), id))
    }

    /// Every room the replica holds.
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>> {
        self.replica.rooms().await
    }

    /// A ticket for `room` with this node's addresses.
    pub async fn ticket(&self, room: RoomId) -> Result<RoomTicket> {
        let genesis = self.replica.genesis(room).await?;
        let mut addresses = self.addresses().await?;
        addresses.truncate(MAX_TICKET_ADDRESSES);
        Ok(RoomTicket::new(genesis, addresses)?)
    }

    /// What other members' devices last said about themselves in `room`.
    pub async fn presence(&self, room: RoomId) -> Result<Vec<Presence>> {
        self.ask(|tx| Command::Presence(room, tx)).await
    }

    // ----- lower level -----------------------------------------------------------

    /// Gossips a delivery to the room; answers whether any peer was sent it.
    /// [`Room`]'s operations do this after each change.
    pub async fn publish(&self, room: RoomId, delivery: &Delivery) -> Result<bool> {
        let bytes = delivery.to_bytes();
        self.ask(|tx| Command::Publish(room, bytes, tx)).await?
    }

    /// Gossips a signed governance change to the room. A network failure is
    /// not an error: the change is stored, and catch-up carries it.
    pub async fn publish_governance(&self, room: RoomId, change: Vec<u8>) -> Result<()> {
        match self.ask(|tx| Command::Publish(room, change, tx)).await? {
            Ok(_) => Ok(()),
            Err(NodeError::Network(e)) => {
                tracing::debug!(%room, error = %e, "governance gossip failed");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Signs and gossips an ephemeral signal.
    pub async fn signal(&self, room: RoomId, kind: SignalKind) -> Result<bool> {
        let bytes = self.replica.signal(room, kind).await?;
        self.ask(|tx| Command::Signal(room, bytes, tx)).await?
    }

    /// Asks peers for history older than what the replica keeps, for every
    /// room whose pages reached its window (a page says so with
    /// `fetching_older`; [`Room::page`] calls this itself). The history
    /// reaches timeline subscriptions as it arrives. Retried every
    /// `sync_interval` while wanted.
    pub async fn fetch_history(&self) -> Result<()> {
        self.ask(Command::FetchHistory).await
    }

    /// Runs one catch-up with `peer` about `room`.
    pub async fn sync(&self, peer: PeerId, room: RoomId) -> Result<SyncStats> {
        self.ask(|tx| Command::Sync(peer, room, tx)).await?
    }

    /// Says "offline" in every room, stops the swarm (closing its
    /// connections), then closes the replica after the jobs already queued
    /// and waits for its thread. Other handles fail with
    /// [`NodeError::Closed`] afterwards.
    pub async fn shutdown(&self) -> Result<()> {
        // Best effort: a second shutdown finds the replica already closed.
        for room in self.rooms().await.unwrap_or_default() {
            let _ = self.signal(room.id, SignalKind::Offline).await;
        }
        // The swarm may already be gone; the replica still closes.
        let _ = self.ask(Command::Shutdown).await;
        let closed = self.replica.shutdown().await;
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| NodeError::Panicked(e.to_string()))?;
        }
        closed
    }
}
