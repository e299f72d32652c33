//! [`Client`]: a node on a data directory, as the foreign side sees it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use concord_node::{Node, NodeConfig};
use tokio::sync::broadcast::error::RecvError;

use crate::error::{self, ConcordError, Result};
use crate::records::{ClientConfig, ClientEvent, Member, RoomInfo, RoomOptions};
use crate::room::Room;
use crate::runtime::{run, runtime};
use crate::subscription::{Inner, Subscription};

/// Receives a client's events (peers, sync, delivery, presence), on a Rust
/// thread of the library's runtime. Keep it quick: events are delivered one
/// at a time, and a listener that falls far behind is told how many it
/// missed ([`ClientEvent::Lagged`]).
#[uniffi::export(foreign)]
pub trait EventListener: Send + Sync {
    /// One event. An exception it throws is logged and dropped; later
    /// events are still delivered.
    fn on_event(&self, event: ClientEvent) -> Result<()>;
}

/// One device: a data directory (its identity and rooms) and the network
/// node that syncs it. Open it once per data directory and call
/// [`Client::shutdown`] before the app exits; afterwards every method fails
/// with [`ConcordError::Closed`].
#[derive(uniffi::Object)]
pub struct Client {
    node: Node,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("node", &self.node).finish()
    }
}

#[uniffi::export]
impl Client {
    /// Opens (or creates) the data directory `data_dir` and starts the
    /// node, listening on `config.listen_addresses`. Rooms already in the
    /// directory are served again at once.
    #[uniffi::constructor]
    pub async fn open(data_dir: String, config: ClientConfig) -> Result<Arc<Self>> {
        let listen = config
            .listen_addresses
            .iter()
            .map(|a| error::address(a))
            .collect::<Result<Vec<_>>>()?;
        let node_config = NodeConfig::default()
            .mdns(config.mdns)
            .sync_interval(Duration::from_millis(config.sync_interval_ms))
            .store_cache_bytes(u64::from(config.store_cache_mib) << 20)
            .doc_cache_items(config.doc_cache_items);
        run(async move {
            // Opening sled reads and may recover the store: blocking work, on
            // a blocking thread (which is inside the runtime, as `Node::open`
            // needs).
            let node = tokio::task::spawn_blocking(move || Node::open(data_dir, node_config))
                .await
                .map_err(|e| ConcordError::Internal(e.to_string()))??;
            for addr in listen {
                if let Err(e) = node.listen(addr).await {
                    // Do not leave a half-started node holding the directory.
                    let _ = node.shutdown().await;
                    return Err(e.into());
                }
            }
            Ok(Arc::new(Self { node }))
        })
        .await
    }

    /// This device's author id (64 hex digits): who its messages are from.
    pub fn author_id(&self) -> String {
        self.node.author().to_string()
    }

    /// This device's network peer id, stable across restarts.
    pub fn peer_id(&self) -> String {
        self.node.peer_id().to_string()
    }

    /// Listens on a multiaddr (port 0 picks one); returns the address bound.
    pub async fn listen(&self, address: String) -> Result<String> {
        let (node, addr) = (self.node.clone(), error::address(&address)?);
        run(async move { Ok(node.listen(addr).await?.to_string()) }).await
    }

    /// Listens through a circuit relay at `relay_address` (ending in the
    /// relay's `/p2p/<peer id>`), for a device behind NAT; returns the
    /// relayed address peers can dial.
    pub async fn listen_via_relay(&self, relay_address: String) -> Result<String> {
        let (node, addr) = (self.node.clone(), error::address(&relay_address)?);
        run(async move { Ok(node.listen_via_relay(addr).await?.to_string()) }).await
    }

    /// Connects to a peer or a relay at a multiaddr.
    pub async fn dial(&self, address: String) -> Result<()> {
        let (node, addr) = (self.node.clone(), error::address(&address)?);
        run(async move { Ok(node.dial(addr).await?) }).await
    }

    /// The addresses this device can be reached at, each ending in its peer
    /// id.
    pub async fn addresses(&self) -> Result<Vec<String>> {
        let node = self.node.clone();
        run(async move { Ok(node.addresses().await?.iter().map(ToString::to_string).collect()) })
            .await
    }

    /// Peers connected now (peer ids).
    pub async fn peers(&self) -> Result<Vec<String>> {
        let node = self.node.clone();
        run(async move { Ok(node.peers().await?.iter().map(ToString::to_string).collect()) }).await
    }

    /// Creates a room named `name`.
    pub async fn create_room(&self, name: String) -> Result<Arc<Room>> {
        let node = self.node.clone();
        run(async move { Ok(Arc::new(Room::new(node.create_room(&name).await?))) }).await
    }

    /// Creates a room of members only: this device is its admin, `members`
    /// have their roles, and others join by invite.
    pub async fn create_room_with(&self, name: String, members: Vec<Member>) -> Result<Arc<Room>> {
        let members = members
            .into_iter()
            .map(|m| Ok((error::author_id(&m.author_id)?, m.role.into())))
            .collect::<Result<Vec<_>>>()?;
        let node = self.node.clone();
        run(async move { Ok(Arc::new(Room::new(node.create_room_with(&name, members).await?))) })
            .await
    }

    /// Creates a room as `options` say: encrypted or not, sharing its
    /// history with new members or not, open or of members only.
    pub async fn create_room_with_options(
        &self,
        name: String,
        options: RoomOptions,
    ) -> Result<Arc<Room>> {
        let mut made = concord_node::RoomOptions::default()
            .encrypted(options.encrypted)
            .share_history(options.share_history);
        if let Some(members) = options.members {
            let members = members
                .into_iter()
                .map(|m| Ok((error::author_id(&m.author_id)?, m.role.into())))
                .collect::<Result<Vec<_>>>()?;
            made = made.members_only(members);
        }
        let node = self.node.clone();
        run(async move { Ok(Arc::new(Room::new(node.create_room_opts(&name, made).await?))) }).await
    }

    /// Joins the room a ticket names and connects to the peers it lists.
    /// A ticket with an invite (`Room::invite_ticket`) is redeemed in the
    /// background once the room's governance arrives, and
    /// [`ClientEvent::InviteRedeemed`] or [`ClientEvent::InviteFailed`]
    /// tells how it ended. Joining with it again is harmless; a redemption
    /// still waiting when the app exits resumes when it joins with the
    /// ticket again.
    pub async fn join_room(&self, ticket: String) -> Result<Arc<Room>> {
        let (node, ticket) = (self.node.clone(), error::ticket(&ticket)?);
        run(async move { Ok(Arc::new(Room::new(node.join_ticket(&ticket).await?))) }).await
    }

    /// A room this device holds, by id.
    pub async fn room(&self, room_id: String) -> Result<Arc<Room>> {
        let (node, id) = (self.node.clone(), error::room_id(&room_id)?);
        run(async move { Ok(Arc::new(Room::new(node.room(id).await?))) }).await
    }

    /// Every room this device holds.
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>> {
        let node = self.node.clone();
        run(async move { Ok(node.rooms().await?.into_iter().map(Into::into).collect()) }).await
    }

    /// Delivers this client's events to `listener` until the returned
    /// subscription is cancelled or dropped.
    pub fn subscribe_events(&self, listener: Arc<dyn EventListener>) -> Result<Arc<Subscription>> {
        let mut events = self.node.events();
        let task = runtime()?.spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => ClientEvent::from_node(event),
                    Err(RecvError::Lagged(missed)) => Some(ClientEvent::Lagged { missed }),
                    Err(RecvError::Closed) => break,
                };
                let Some(event) = event else { continue };
                match catch_unwind(AssertUnwindSafe(|| listener.on_event(event))) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "an event listener threw"),
                    Err(_) => tracing::warn!("an event listener call panicked"),
                }
            }
        });
        Ok(Arc::new(Subscription::new(Inner::Events(task.abort_handle()))))
    }

    /// Says "offline" in every room, closes connections and the data
    /// directory. Every later call fails with [`ConcordError::Closed`].
    pub async fn shutdown(&self) -> Result<()> {
        let node = self.node.clone();
        run(async move { Ok(node.shutdown().await?) }).await
    }
}
