//! The protocol policy a transport follows, tested without one: the verdict
//! on a gossiped message (`Replica::judge_gossip`: forward, drop quietly or
//! blame the sender) and the verdict on a catch-up flight
//! (`SyncSession::step`, `serve_sync`: what to answer, and whether the peer
//! earns a strike).

mod common;

use std::sync::Arc;

use common::{join, memory_replica, EPOCH_MILLIS};
use concord_core::{
    serve_sync, Action, Clock, Draft, Flight, GossipVerdict, InboundFlight, ManualClock,
    MemoryStore, RawDelivery, Replica, RoomId, SyncError, SyncMessage, SyncSession,
    SESSION_TIMEOUT_MILLIS,
};

struct World {
    clock: Arc<ManualClock>,
    alice: Replica<MemoryStore>,
    bob: Replica<MemoryStore>,
    room: RoomId,
}

/// Alice's open room, which Bob holds with its governance.
fn world() -> World {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let mut alice = memory_replica(1, &clock);
    let mut bob = memory_replica(2, &clock);
    let room = alice.create_room("policy").unwrap();
    join(&mut bob, &mut alice, &room);
    World { clock, alice, bob, room }
}

#[test]
fn test_gossiped_post_is_accepted_and_shown() {
    let mut w = world();
    let sent = w.alice.post(&w.room, Draft::text("hello")).unwrap();
    let judged = w.bob.judge_gossip(&w.room, &sent.delivery.to_bytes());
    assert_eq!(judged.verdict, GossipVerdict::Accept);
    assert!(!judged.governance);
    assert_eq!(w.bob.snapshot(&w.room).unwrap().messages.len(), 1);
}

#[test]
fn test_gossiped_garbage_and_forgeries_are_rejected_and_change_nothing() {
    let mut w = world();
    let before = common::dump(w.bob.store());
    let sent = w.alice.post(&w.room, Draft::text("hello")).unwrap();
    let mut forged = sent.delivery.to_bytes();
    // The envelope's signature sits just before the blobs; flip a bit in
    // the body instead, which the signature covers.
    let i = forged.len() / 3;
    forged[i] ^= 0x40;
    for bytes in [b"garbage".to_vec(), Vec::new(), forged] {
        assert_eq!(w.bob.judge_gossip(&w.room, &bytes).verdict, GossipVerdict::Reject);
    }
    assert_eq!(common::dump(w.bob.store()), before);
}

#[test]
fn test_gossip_on_another_rooms_topic_is_rejected() {
    let mut w = world();
    let other = w.bob.create_room("elsewhere").unwrap();
    let sent = w.alice.post(&w.room, Draft::text("hello")).unwrap();
    let judged = w.bob.judge_gossip(&other, &sent.delivery.to_bytes());
    assert_eq!(judged.verdict, GossipVerdict::Reject);
    assert!(w.bob.snapshot(&w.room).unwrap().messages.is_empty());
}

#[test]
fn test_gossip_for_a_room_not_held_is_rejected() {
    let mut w = world();
    let room = w.alice.create_room("not shared").unwrap();
    let sent = w.alice.post(&room, Draft::text("hello")).unwrap();
    assert_eq!(w.bob.judge_gossip(&room, &sent.delivery.to_bytes()).verdict, GossipVerdict::Reject);
}

#[test]
fn test_gossiped_post_that_would_wait_beyond_the_pending_limit_is_ignored() {
    let mut w = world();
    w.bob.set_pending_limit(4, 1 << 20);
    let mut sent = Vec::new();
    for i in 0..8 {
        w.clock.advance(10);
        sent.push(w.alice.post(&w.room, Draft::text(format!("m{i}"))).unwrap().delivery);
    }
    // Everything after the first waits for it; one author fills a quarter of
    // a limit of four, so the second waiting delivery is refused for now.
    let verdicts: Vec<GossipVerdict> =
        sent[1..].iter().map(|d| w.bob.judge_gossip(&w.room, &d.to_bytes()).verdict).collect();
    assert_eq!(verdicts[0], GossipVerdict::Accept, "{verdicts:?}");
    assert!(verdicts[1..].iter().all(|v| *v == GossipVerdict::Ignore), "{verdicts:?}");
    // The refused ones were nobody's fault: offered again in order, they apply.
    for d in &sent {
        assert_eq!(w.bob.judge_gossip(&w.room, &d.to_bytes()).verdict, GossipVerdict::Accept);
    }
    assert_eq!(w.bob.snapshot(&w.room).unwrap().messages.len(), 8);
}

#[test]
fn test_gossiped_governance_is_judged_and_flagged() {
    let mut w = world();
    let topic = w.alice.govern(&w.room, Action::SetTopic("lunch at noon".into())).unwrap();
    let later = w.alice.govern(&w.room, Action::SetTopic("lunch at one".into())).unwrap();
    // A change whose dependency is missing is kept, not forwarded.
    let judged = w.bob.judge_gossip(&w.room, later.as_bytes());
    assert_eq!(judged.verdict, GossipVerdict::Ignore);
    assert!(judged.governance);
    // Its dependency arrives: accepted, and the waiting one with it.
    assert_eq!(w.bob.judge_gossip(&w.room, topic.as_bytes()).verdict, GossipVerdict::Accept);
    assert_eq!(w.bob.governance(&w.room).unwrap().topic(), "lunch at one");
    // A forged change (a bit flipped) is the sender's fault.
    let mut forged = w.alice.govern(&w.room, Action::SetName("renamed".into())).unwrap();
    let mut bytes = forged.as_bytes().to_vec();
    let i = bytes.len() - 10;
    bytes[i] ^= 1;
    assert_eq!(w.bob.judge_gossip(&w.room, &bytes).verdict, GossipVerdict::Reject);
    // On another room's topic, even a genuine change is rejected.
    let other = w.bob.create_room("elsewhere").unwrap();
    forged = w.alice.govern(&w.room, Action::SetTopic("again".into())).unwrap();
    assert_eq!(w.bob.judge_gossip(&other, forged.as_bytes()).verdict, GossipVerdict::Reject);
}

/// A flight from Alice carrying `deliveries`, as a catch-up request holds it.
fn flight(room: RoomId, deliveries: Vec<RawDelivery>) -> Vec<u8> {
    SyncMessage::Flight { room, flight: Flight { deliveries, ..Flight::default() } }.to_bytes()
}

#[test]
fn test_honest_catch_up_steps_without_fault() {
    let mut w = world();
    for i in 0..5 {
        w.clock.advance(10);
        w.alice.post(&w.room, Draft::text(format!("m{i}"))).unwrap();
    }
    let now = w.clock.now_millis();
    let (mut initiator, mut to_bob) = SyncSession::initiate(&w.alice, &w.room, now).unwrap();
    initiator.set_peer(w.bob.author());
    let mut responder = None;
    for _ in 0..8 {
        let request = InboundFlight {
            room: w.room,
            genesis: None,
            take_up: false,
            peer: Some(w.alice.author()),
            messages: &to_bob,
        };
        let served = serve_sync(&mut w.bob, responder.take(), request, now);
        assert!(!served.step.peer_at_fault(), "{:?}", served.step);
        assert!(!served.joined);
        responder = served.session;
        let step = initiator.step(&mut w.alice, &served.step.replies, now);
        assert!(step.is_ok() && !step.peer_at_fault(), "{step:?}");
        to_bob = step.replies;
        if to_bob.is_empty() {
            break;
        }
    }
    assert!(initiator.is_done());
    assert_eq!(w.bob.snapshot(&w.room).unwrap(), w.alice.snapshot(&w.room).unwrap());
}

#[test]
fn test_undecodable_or_foreign_flight_is_the_peers_fault() {
    let mut w = world();
    let now = w.clock.now_millis();
    let other = w.bob.create_room("elsewhere").unwrap();
    for messages in [vec![b"CNCS\x01garbage".to_vec()], vec![flight(other, Vec::new())]] {
        let mut session = SyncSession::respond(&w.bob, &w.room, now);
        let step = session.step(&mut w.bob, &messages, now);
        assert!(step.peer_at_fault(), "{step:?}");
        assert!(step.replies.is_empty() && session.is_failed());
    }
    // A message after the session failed breaks the protocol too.
    let mut session = SyncSession::respond(&w.bob, &w.room, now);
    let _ = session.step(&mut w.bob, &[b"junk".to_vec()], now);
    let step = session.step(&mut w.bob, &[flight(w.room, Vec::new())], now);
    assert_eq!(step.error, Some(SyncError::Closed));
    assert!(step.peer_at_fault());
}

#[test]
fn test_forged_envelopes_in_a_flight_are_the_peers_fault_and_the_rest_applies() {
    let mut w = world();
    let honest = w.alice.post(&w.room, Draft::text("hello")).unwrap().delivery;
    w.clock.advance(10);
    let second = w.alice.post(&w.room, Draft::text("second")).unwrap().delivery;
    let mut forged = second.envelope.as_bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let raw = |envelope: Vec<u8>, blobs: Vec<Vec<u8>>| RawDelivery { envelope, blobs };
    let messages = vec![flight(
        w.room,
        vec![raw(honest.envelope.as_bytes().to_vec(), honest.blobs), raw(forged, second.blobs)],
    )];
    let now = w.clock.now_millis();
    let request = InboundFlight {
        room: w.room,
        genesis: None,
        take_up: false,
        peer: Some(w.alice.author()),
        messages: &messages,
    };
    let served = serve_sync(&mut w.bob, None, request, now);
    assert_eq!(served.step.forged, 1);
    assert!(served.step.peer_at_fault() && served.session.is_none());
    assert_eq!(w.bob.snapshot(&w.room).unwrap().messages.len(), 1);
}

#[test]
fn test_envelopes_refused_for_now_in_a_flight_are_nobodys_fault() {
    let mut w = world();
    w.bob.set_pending_limit(4, 1 << 20);
    let mut raw = Vec::new();
    for i in 0..8 {
        w.clock.advance(10);
        let d = w.alice.post(&w.room, Draft::text(format!("m{i}"))).unwrap().delivery;
        raw.push(RawDelivery { envelope: d.envelope.as_bytes().to_vec(), blobs: d.blobs });
    }
    // Without the first, every other one would wait; most are refused as
    // the pending limit is full, which is not a strike.
    raw.remove(0);
    let now = w.clock.now_millis();
    let mut session = SyncSession::respond(&w.bob, &w.room, now);
    let step = session.step(&mut w.bob, &[flight(w.room, raw)], now);
    assert!(step.is_ok() && !step.peer_at_fault(), "{step:?}");
    assert_eq!(w.bob.pending_use(&w.room).unwrap().0, 1);
}

#[test]
fn test_a_session_that_timed_out_is_nobodys_fault() {
    let mut w = world();
    let now = w.clock.now_millis();
    let (mut session, _) = SyncSession::initiate(&w.bob, &w.room, now).unwrap();
    let late = now + SESSION_TIMEOUT_MILLIS + 1;
    let step = session.step(&mut w.bob, &[flight(w.room, Vec::new())], late);
    assert_eq!(step.error, Some(SyncError::TimedOut));
    assert!(!step.peer_at_fault());
}

#[test]
fn test_taking_up_a_room_needs_its_genuine_genesis() {
    let w = world();
    let clock = w.clock.clone();
    let mut relay = memory_replica(9, &clock);
    let now = clock.now_millis();
    let genesis = w.alice.genesis(&w.room).unwrap().as_bytes().to_vec();
    let (_, messages) = SyncSession::initiate(&w.alice, &w.room, now).unwrap();
    let mut bad = genesis.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let other = w.bob.genesis(&w.room).unwrap().as_bytes().to_vec();
    let mut elsewhere = memory_replica(8, &clock);
    let foreign_room = elsewhere.create_room("foreign").unwrap();
    let foreign = elsewhere.genesis(&foreign_room).unwrap().as_bytes().to_vec();
    for wrong in [None, Some(bad.as_slice()), Some(foreign.as_slice())] {
        let request = InboundFlight {
            room: w.room,
            genesis: wrong,
            take_up: true,
            peer: Some(w.alice.author()),
            messages: &messages,
        };
        let served = serve_sync(&mut relay, None, request, now);
        assert!(served.step.peer_at_fault(), "{:?}", served.step);
        assert!(!served.joined && served.session.is_none());
        assert!(relay.rooms().is_empty());
    }
    let request = InboundFlight {
        room: w.room,
        genesis: Some(&other),
        take_up: true,
        peer: Some(w.alice.author()),
        messages: &messages,
    };
    let served = serve_sync(&mut relay, None, request, now);
    assert!(served.joined && !served.step.peer_at_fault(), "{:?}", served.step);
    assert_eq!(relay.rooms().len(), 1);
}
