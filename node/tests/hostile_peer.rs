//! A hostile peer on the room's gossip topic: garbage, forged, replayed and
//! oversized messages are rejected by the honest node's replica, the peer's
//! gossip score goes negative, nothing it sent shows up, and the honest peers
//! keep converging. A hostile peer on the sync protocol (garbage, oversized,
//! forged and replayed flights) is struck for each request, then banned and
//! disconnected, and plants nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use concord_core::{
    Draft, Flight, ManualClock, RawDelivery, Replica, SledStore, SyncMessage,
    MAX_SYNC_MESSAGE_BYTES,
};
use concord_node::{Node, NodeConfig, NodeEvent, ReplicaHandle, SyncRequest};
use futures::StreamExt;
use libp2p::gossipsub::IdentTopic;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;

const EPOCH_MILLIS: u64 = 1_750_000_000_000;

struct Peer {
    node: Node,
    replica: ReplicaHandle<SledStore>,
    _dir: tempfile::TempDir,
}

fn peer(seed: u8, clock: &Arc<ManualClock>) -> Peer {
    peer_with(seed, clock, NodeConfig::default().mdns(false))
}

fn peer_with(seed: u8, clock: &Arc<ManualClock>, config: NodeConfig) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let replica =
        Replica::open_with_seed(SledStore::open(dir.path()).unwrap(), clock.clone(), [seed; 32])
            .unwrap();
    let node = Node::start(replica, clock.clone(), config).unwrap();
    Peer { replica: node.replica().clone(), node, _dir: dir }
}

/// What the hostile peer publishes: noise, a forged delivery (a valid one
/// with one signature bit flipped), a delivery of another room (a replay),
/// and messages above the gossip size cap.
fn hostile_payloads(real: &[u8], other_room: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..10u8 {
        out.push(vec![i; 100 + usize::from(i) * 37]);
        let mut forged = real.to_vec();
        let last = forged.len() - 1 - usize::from(i);
        forged[last] ^= 0x01;
        out.push(forged);
        out.push(other_room.to_vec());
        out.push(vec![0xAB; 70 * 1024]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_hostile_gossip_is_rejected_scored_down_and_changes_nothing() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let a = peer(1, &clock);
    let b = peer(2, &clock);
    let room = a.replica.try_call(|r| r.create_room("guarded")).await.unwrap();
    let genesis =
        a.replica.try_call(move |r| Ok(r.genesis(&room)?.as_bytes().to_vec())).await.unwrap();
    b.replica.try_call(move |r| r.join_room(&genesis)).await.unwrap();
    // Material for the attacker: a real delivery it could have sniffed, and
    // a delivery of a room of its own.
    let real = a.replica.try_call(move |r| r.post(&room, Draft::text("real"))).await.unwrap();
    let other = b.replica.try_call(|r| r.create_room("elsewhere")).await.unwrap();
    let elsewhere =
        b.replica.try_call(move |r| r.post(&other, Draft::text("elsewhere"))).await.unwrap();

    for p in [&a, &b] {
        p.node.join(room).await.unwrap();
    }
    let addr = a.node.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    b.node.dial(addr.clone()).await.unwrap();

    // The hostile peer: a plain gossipsub swarm that validates nothing.
    let topic = IdentTopic::new(format!("concord/room/{room}"));
    let mut hostile = common::gossip_attacker(&topic);
    let hostile_id = *hostile.local_peer_id();
    hostile.dial(addr.clone()).unwrap();
    let payloads = hostile_payloads(&real.delivery.to_bytes(), &elsewhere.delivery.to_bytes());
    let every = Duration::from_millis(50);
    let attack = common::gossip_attack(hostile, topic, payloads, every, Duration::from_secs(15));

    // The hostile peer loses standing with the honest node it talks to.
    let mut score = None;
    for _ in 0..150 {
        score = a.node.peer_score(hostile_id).await.unwrap();
        if score.is_some_and(|s| s < 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(score.is_some_and(|s| s < 0.0), "hostile peer's score: {score:?}");

    // Honest peers keep converging, and nothing of the attack shows.
    let sent = b.replica.try_call(move |r| r.post(&room, Draft::text("still fine"))).await.unwrap();
    for _ in 0..100 {
        let _ = b.node.publish(room, &sent.delivery).await;
        let shown = a.replica.try_call(move |r| r.snapshot(&room)).await.unwrap();
        if shown.messages.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sa = a.replica.try_call(move |r| r.snapshot(&room)).await.unwrap();
    let sb = b.replica.try_call(move |r| r.snapshot(&room)).await.unwrap();
    let bodies: Vec<_> = sa.messages.iter().filter_map(|m| m.body.clone()).collect();
    assert_eq!(bodies, vec!["real".to_owned(), "still fine".to_owned()]);
    assert_eq!(sa, sb);
    let published = attack.await.unwrap();
    assert!(published >= 20, "the attack published only {published} messages");
}

/// What the sync attacker sends, one request per kind, in order.
fn hostile_sync_requests(
    room: concord_core::RoomId,
    real: &concord_core::Delivery,
    elsewhere: &concord_core::Delivery,
) -> Vec<(&'static str, SyncRequest)> {
    let flight = |deliveries: Vec<RawDelivery>| {
        SyncMessage::Flight { room, flight: Flight { deliveries, ..Flight::default() } }.to_bytes()
    };
    let raw = |d: &concord_core::Delivery| RawDelivery {
        envelope: d.envelope.as_bytes().to_vec(),
        blobs: d.blobs.clone(),
    };
    // A real envelope with one signature bit flipped.
    let mut forged = raw(real);
    let last = forged.envelope.len() - 1;
    forged.envelope[last] ^= 0x01;
    let request = |session, messages| SyncRequest {
        session,
        room,
        messages,
        genesis: None,
        cert: Vec::new(),
        refused: None,
    };
    // A device certificate that is not one (it cannot name the attacker's
    // peer id under a valid signature).
    let mut forged_cert = request(5, Vec::new());
    forged_cert.cert = b"CNCD\x01".iter().copied().chain([0x42; 100]).collect();
    vec![
        ("garbage", request(1, vec![vec![0x5A; 300], b"CNCS\x01 not a flight".to_vec()])),
        ("oversized", request(2, vec![vec![0u8; MAX_SYNC_MESSAGE_BYTES + 1]])),
        ("forged", request(3, vec![flight(vec![forged])])),
        // An envelope of another room replayed into this one.
        ("replayed", request(4, vec![flight(vec![raw(elsewhere)])])),
        ("forged certificate", forged_cert),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_hostile_sync_requests_are_refused_struck_and_banned() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let config = NodeConfig::default()
        .mdns(false)
        .sync_interval(Duration::from_millis(300))
        .sync_strikes(5, Duration::from_secs(600));
    let a = peer_with(1, &clock, config);
    let b = peer(2, &clock);
    let room = a.replica.try_call(|r| r.create_room("guarded")).await.unwrap();
    let genesis =
        a.replica.try_call(move |r| Ok(r.genesis(&room)?.as_bytes().to_vec())).await.unwrap();
    b.replica.try_call(move |r| r.join_room(&genesis)).await.unwrap();
    let real = b.replica.try_call(move |r| r.post(&room, Draft::text("real"))).await.unwrap();
    let other = b.replica.try_call(|r| r.create_room("elsewhere")).await.unwrap();
    let elsewhere =
        b.replica.try_call(move |r| r.post(&other, Draft::text("elsewhere"))).await.unwrap();
    a.node.join(room).await.unwrap();
    let addr = a.node.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    let mut events = a.node.events();

    // The attacker: a plain request-response swarm speaking the sync protocol.
    let mut hostile = common::sync_attacker();
    let hostile_id = *hostile.local_peer_id();
    hostile.dial(addr.clone()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(hostile.select_next_some().await, SwarmEvent::ConnectionEstablished { .. })
        {
        }
    })
    .await
    .unwrap();
    let requests = hostile_sync_requests(room, &real.delivery, &elsewhere.delivery);
    for (i, (kind, request)) in requests.into_iter().enumerate() {
        hostile.behaviour_mut().send_request(&a.node.peer_id(), request);
        // Drive the attacker until its request is answered or fails.
        let outcome = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match hostile.select_next_some().await {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { .. },
                        ..
                    }) => break "answered",
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                        break "failed"
                    }
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or("timed out");
        let want = u32::try_from(i + 1).unwrap();
        let mut strikes = 0;
        for _ in 0..100 {
            strikes = a.node.sync_strikes(hostile_id).await.unwrap();
            if strikes >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(strikes, want, "{kind} request ({outcome}) was not struck");
    }

    // Five strikes: banned and disconnected.
    let banned = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(NodeEvent::Banned(peer)) = events.recv().await {
                break peer;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(banned, hostile_id);
    for _ in 0..100 {
        if !a.node.peers().await.unwrap().contains(&hostile_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!a.node.peers().await.unwrap().contains(&hostile_id), "banned peer still connected");

    // Nothing was planted, and an honest peer still catches up with A.
    b.node.join(room).await.unwrap();
    b.node.dial(addr).await.unwrap();
    for _ in 0..200 {
        let shown = a.replica.try_call(move |r| r.snapshot(&room)).await.unwrap();
        if shown.messages.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sa = a.replica.try_call(move |r| r.snapshot(&room)).await.unwrap();
    let sb = b.replica.try_call(move |r| r.snapshot(&room)).await.unwrap();
    let bodies: Vec<_> = sa.messages.iter().filter_map(|m| m.body.clone()).collect();
    assert_eq!(bodies, vec!["real".to_owned()]);
    assert_eq!(sa, sb);
    assert_eq!(a.node.sync_strikes(b.node.peer_id()).await.unwrap(), 0);
}
