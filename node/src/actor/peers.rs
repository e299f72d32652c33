//! Peers: connections coming and going, mDNS discovery, the listen
//! addresses, and who is behind each connection (its device certificate).
//! Swarm events are dispatched here to gossip and sync.

use concord_core::{AuthorId, DeviceCert, Store};
use libp2p::request_response;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, mdns, PeerId};

use super::{is_circuit, room_topic, State};
use crate::behaviour::BehaviourEvent;
use crate::error::NodeError;
use crate::events::NodeEvent;

impl<S: Store + 'static> State<S> {
    pub(super) fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
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

    /// The author behind `peer`, from a device certificate it sent (`None`
    /// if it sent none). A certificate that is forged or names another peer
    /// is an error: the sender's fault.
    pub(super) fn learn_author(
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
}
