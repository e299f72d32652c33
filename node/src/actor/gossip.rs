//! Gossip: one topic per room for deliveries and governance changes, and
//! who gets it. gossipsub cannot leave one peer out of one topic, so a peer
//! that may not read a room it subscribes to is scored below the publish
//! threshold ([`NON_READER_SCORE`]); this device leaves the topics of rooms
//! it may not read itself.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use concord_core::{Announcement, GossipVerdict, RoomId, Store, GOV_MAGIC};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, PublishError};
use libp2p::PeerId;

use super::{room_topic, signal_topic, Internal, State};
use crate::behaviour::topic_score;
use crate::error::{NodeError, Result};
use crate::replica_actor::{ReaderAsk, Request};

/// How often every gossip peer's right to the rooms it subscribes to is
/// reviewed, besides the reviews when a peer's author is learned, a peer
/// subscribes, or a governance change is made or gossiped: this one picks
/// up governance that arrived by catch-up.
pub(super) const REVIEW_PERIOD: Duration = Duration::from_secs(1);
/// The application score of a gossip peer that subscribes to a room whose
/// messages it may not read (not a member, removed, banned), or whose
/// author is not known yet. gossipsub weighs it by 10, and room topics give
/// no positive score ([`topic_score`]), so such a peer sits at about -65:
/// below the publish threshold (-50), so nothing is published to it, and
/// negative, so the next heartbeat prunes it from every mesh and nothing is
/// forwarded to it; above the graylist threshold (-80), so what it sends (an
/// invitee's join, a concurrent post) is still received and judged.
const NON_READER_SCORE: f64 = -6.5;

impl<S: Store + 'static> State<S> {
    pub(super) fn join(&mut self, room: RoomId) -> Result<()> {
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

    pub(super) fn publish(&mut self, topic: IdentTopic, bytes: Vec<u8>) -> Result<bool> {
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) => Ok(true),
            // Nobody to send to (offline): the change is durable and goes
            // out by catch-up when a peer is reachable.
            Err(PublishError::NoPeersSubscribedToTopic | PublishError::Duplicate) => Ok(false),
            Err(e) => Err(NodeError::Network(e.to_string())),
        }
    }

    /// Gossips a stored change of this device (a delivery or a governance
    /// change) to its room. `Ok(false)`: nobody to send it to yet.
    pub(super) fn publish_change(&mut self, room: RoomId, bytes: Vec<u8>) -> Result<bool> {
        self.activity.insert(room, Instant::now());
        let governance = bytes.starts_with(GOV_MAGIC);
        let result = self.publish(room_topic(&room), bytes);
        if governance {
            self.review(None);
        }
        if let Ok(true) = result {
            self.schedule_confirm(room);
        }
        result
    }

    /// Gossips what the replica announced in answer to peers: room keys and
    /// key requests in this device's documents, its published device keys.
    /// A failure loses nothing: the change is stored and catch-up carries it.
    pub(super) fn announced(&mut self, announcement: Announcement) {
        let (room, bytes) = match announcement {
            Announcement::Delivery(room, delivery) => (room, delivery.to_bytes()),
            Announcement::Governance(room, change) => (room, change.as_bytes().to_vec()),
            _ => return,
        };
        if let Err(e) = self.publish_change(room, bytes) {
            tracing::debug!(%room, error = %e, "announcement gossip failed");
        }
    }

    /// Validates a gossiped message. Envelopes and governance changes are
    /// judged by the replica ([`concord_core::Replica::judge_gossip`]):
    /// accepted (and forwarded) only if it keeps them, rejected (scored down)
    /// if the sender is at fault, ignored otherwise. Signals are verified here
    /// and never stored.
    pub(super) fn gossip(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let is_signal = self.rooms.iter().find(|r| signal_topic(r).hash() == message.topic);
        if let Some(room) = is_signal.copied() {
            self.signal_received(room, source, id, &message.data);
            return;
        }
        let topic = self.rooms.iter().find(|r| room_topic(r).hash() == message.topic).copied();
        let Some(topic) = topic else {
            // Not a topic of a room we serve.
            self.internal(Internal::Validated(id, source, MessageAcceptance::Reject, None, false));
            return;
        };
        let rejected = self.counters.envelopes_rejected.clone();
        let governance = message.data.starts_with(GOV_MAGIC);
        self.submit(
            |reply| Request::JudgeGossip { topic, bytes: message.data, reply },
            move |judged| {
                // Turned away (the replica is busy) or our own failure: not
                // the sender's fault, and catch-up brings it later.
                let acceptance = match judged.map(|j| j.verdict) {
                    Ok(GossipVerdict::Accept) => MessageAcceptance::Accept,
                    Ok(GossipVerdict::Reject) => {
                        rejected.inc();
                        MessageAcceptance::Reject
                    }
                    _ => MessageAcceptance::Ignore,
                };
                Some(Internal::Validated(id, source, acceptance, Some(topic), governance))
            },
        );
    }

    /// Reviews whether gossip peers (all, or `only`) may read every room of
    /// ours they subscribe to, and scores them for it; reviewing all, also
    /// whether this device may read each of its rooms.
    pub(super) fn review(&mut self, only: Option<PeerId>) {
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
        let (peers, asks): (Vec<PeerId>, Vec<ReaderAsk>) =
            asks.into_iter().map(|(peer, author, rooms)| (peer, (author, rooms))).unzip();
        let own = mine.unwrap_or_default();
        let reviewed_all = only.is_none();
        self.submit(
            |reply| Request::Readers { peers: asks, own, reply },
            move |reviewed| {
                let readers = reviewed.ok()?;
                let verdicts = peers.into_iter().zip(readers.peers).collect();
                Some(Internal::Reviewed(verdicts, reviewed_all.then_some(readers.own)))
            },
        );
    }

    /// Joins or leaves a room's gossip topics as this device may or may not
    /// read the room: a removed device stops asking for the room's gossip
    /// (which honest peers would not send it) and keeps catching up, which
    /// brings the governance that may admit it again.
    pub(super) fn listen_to(&mut self, room: RoomId, reads: bool) {
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
    pub(super) fn score_reader(&mut self, peer: PeerId, reads: bool) {
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
}
