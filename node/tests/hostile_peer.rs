//! A hostile peer on the room's gossip topic: garbage, forged, replayed and
//! oversized messages are rejected by the honest node's replica, the peer's
//! gossip score goes negative, nothing it sent shows up, and the honest peers
//! keep converging.

use std::sync::Arc;
use std::time::Duration;

use concord_core::{Draft, ManualClock, Replica, SledStore};
use concord_node::{Node, ReplicaHandle};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::{noise, tcp, yamux};

const EPOCH_MILLIS: u64 = 1_750_000_000_000;

struct Peer {
    node: Node,
    replica: ReplicaHandle<SledStore>,
    _dir: tempfile::TempDir,
}

fn peer(seed: u8, clock: &Arc<ManualClock>) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let replica =
        Replica::open_with_seed(SledStore::open(dir.path()).unwrap(), clock.clone(), [seed; 32])
            .unwrap();
    let (replica, _thread) = ReplicaHandle::spawn(replica).unwrap();
    let node = Node::spawn(replica.clone(), clock.clone()).unwrap();
    Peer { node, replica, _dir: dir }
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
    let mut hostile = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default()
                .validation_mode(ValidationMode::Strict)
                .max_transmit_size(128 * 1024)
                .heartbeat_interval(Duration::from_millis(200))
                .build()
                .unwrap();
            gossipsub::Behaviour::<gossipsub::IdentityTransform>::new(
                MessageAuthenticity::Signed(key.clone()),
                config,
            )
            .unwrap()
        })
        .unwrap()
        .build();
    let hostile_id = *hostile.local_peer_id();
    let topic = IdentTopic::new(format!("concord/room/{room}"));
    hostile.behaviour_mut().subscribe(&topic).unwrap();
    hostile.dial(addr.clone()).unwrap();
    let payloads = hostile_payloads(&real.delivery.to_bytes(), &elsewhere.delivery.to_bytes());
    let attack = tokio::spawn(async move {
        let mut sent = 0;
        let mut deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = hostile.select_next_some() => {}
                _ = tick.tick() => {
                    if sent < payloads.len()
                        && hostile.behaviour_mut().publish(topic.clone(), payloads[sent].clone()).is_ok()
                    {
                        sent += 1;
                        if sent == payloads.len() {
                            // Everything is out: linger a moment so it flushes.
                            deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                        }
                    }
                }
            }
        }
        sent
    });

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
