//! Forged governance over the network: a hostile peer gossips, and sends in
//! catch-up flights, governance changes no honest replica may accept (rooms
//! "founded" by someone other than their creator, changes built on such a
//! founding, real changes with one bit flipped, another room's changes).
//! The honest node's governance never moves, the gossiping peer is scored
//! down, the syncing one is struck and banned, and honest governance keeps
//! spreading. The same kinds and many more are refused by direct apply in
//! `core/src/governance/tests.rs` (10,000 of them). And a removed member's
//! client that ignores its removal and stays subscribed hears nothing new.

mod common;

use std::time::Duration;

use common::{clock, config, peer, until};
use concord_core::{Action, DeviceKey, Flight, GovChange, Governance, Role, RoomId, SyncMessage};
use concord_node::{NodeEvent, SyncRequest};
use futures::StreamExt;
use libp2p::gossipsub::IdentTopic;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;

const T0: i64 = common::EPOCH_MILLIS as i64;

/// splitmix64: the forgeries' only randomness, seeded.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` forged governance changes for `room`, made with `seed`: a third
/// founded by impostors, a third built on those impostor foundings (their
/// dependencies never arrive), a third real changes with a bit flipped (one
/// in five: a real change of another room).
fn forgeries(
    seed: u64,
    room: RoomId,
    creator: concord_core::AuthorId,
    real: &[GovChange],
    elsewhere: &GovChange,
    n: usize,
) -> Vec<Vec<u8>> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&next(&mut state).to_le_bytes());
        }
        let impostor = DeviceKey::from_seed(key);
        // The impostor keeps a governance in which it founded the room.
        let mut fake = Governance::new(room, impostor.author(), false);
        let init = Action::Init { name: "mine".into(), members: vec![] };
        let founding = fake.act(&impostor, init, T0).unwrap();
        out.push(founding.as_bytes().to_vec());
        let promote = Action::SetRole { member: creator, role: Role::ReadOnly };
        out.push(fake.act(&impostor, promote, T0 + 1).unwrap().as_bytes().to_vec());
        let pick = next(&mut state) as usize;
        let mut flipped = real[pick % real.len()].as_bytes().to_vec();
        let at = (pick >> 8) % flipped.len();
        flipped[at] ^= 1 << ((pick >> 40) % 8);
        out.push(if !pick.is_multiple_of(5) { flipped } else { elsewhere.as_bytes().to_vec() });
    }
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_forged_governance_by_gossip_and_sync_is_refused_and_changes_nothing() {
    let clock = clock();
    let a = peer(1, &clock, config().sync_strikes(3, Duration::from_secs(600)));
    let b = peer(2, &clock, config());
    let addr = a.node.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    let room =
        a.node.create_room_with("guarded", vec![(b.node.author(), Role::Moderator)]).await.unwrap();
    room.set_topic("before").await.unwrap();
    let b_room = b.node.join_ticket(&room.ticket().await.unwrap()).await.unwrap();
    until("B holds the governance", || async {
        b_room.governance().await.unwrap().topic() == "before"
    })
    .await;
    let id = room.id();
    let real = a.node.replica().try_call(move |r| r.governance_since(&id, &[])).await.unwrap();
    let other = b.node.create_room("elsewhere").await.unwrap().id();
    let elsewhere =
        b.node.replica().try_call(move |r| r.governance_since(&other, &[])).await.unwrap();
    let creator = a.node.author();
    let before = (room.governance().await.unwrap(), room.audit().await.unwrap());

    // Gossip: a plain gossipsub peer publishes 300 forgeries on the room's topic.
    let topic = IdentTopic::new(format!("concord/room/{id}"));
    let mut hostile = common::gossip_attacker(&topic);
    let hostile_id = *hostile.local_peer_id();
    hostile.dial(addr.clone()).unwrap();
    let payloads = forgeries(7, id, creator, &real, &elsewhere[0], 300);
    let every = Duration::from_millis(10);
    let attack = common::gossip_attack(hostile, topic, payloads, every, Duration::from_secs(20));
    let published = attack.await.unwrap();
    assert_eq!(published, 300, "the attack published only {published} forgeries");
    until("the gossiping peer is scored down", || async {
        a.node.peer_score(hostile_id).await.unwrap().is_some_and(|s| s < 0.0)
    })
    .await;
    assert_eq!((room.governance().await.unwrap(), room.audit().await.unwrap()), before);

    // Sync: 4 requests of 50 forgeries each in a flight; each is struck,
    // and at three strikes the peer is banned.
    let mut events = a.node.events();
    let mut syncer = common::sync_attacker();
    let syncer_id = *syncer.local_peer_id();
    syncer.dial(addr).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(syncer.select_next_some().await, SwarmEvent::ConnectionEstablished { .. }) {
        }
    })
    .await
    .unwrap();
    let forged = forgeries(8, id, creator, &real, &elsewhere[0], 200);
    for (i, chunk) in forged.chunks(50).enumerate() {
        let flight = Flight { gov_changes: chunk.to_vec(), ..Flight::default() };
        let message = SyncMessage::Flight { room: id, flight }.to_bytes();
        let request = SyncRequest {
            session: i as u64 + 1,
            room: id,
            messages: vec![message],
            genesis: None,
            cert: Vec::new(),
            refused: None,
        };
        syncer.behaviour_mut().send_request(&a.node.peer_id(), request);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match syncer.select_next_some().await {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { .. },
                        ..
                    })
                    | SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. })
                    | SwarmEvent::ConnectionClosed { .. } => break,
                    _ => {}
                }
            }
        })
        .await;
    }
    let banned = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(NodeEvent::Banned(peer)) = events.recv().await {
                break peer;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(banned, syncer_id);
    assert_eq!((room.governance().await.unwrap(), room.audit().await.unwrap()), before);

    // Honest governance still spreads both ways.
    room.set_topic("after").await.unwrap();
    b_room.set_role(a.node.author(), Role::Admin).await.unwrap_err();
    until("B sees the new topic", || async {
        b_room.governance().await.unwrap().topic() == "after"
    })
    .await;
    assert_eq!(room.governance().await.unwrap(), b_room.governance().await.unwrap());
    for p in [a, b] {
        p.node.shutdown().await.unwrap();
    }
}

/// A client that speaks gossipsub and the sync protocol and ignores
/// governance: a removed member's device modified to stay in the room.
#[derive(libp2p::swarm::NetworkBehaviour)]
struct Stayer {
    gossipsub: libp2p::gossipsub::Behaviour,
    sync: request_response::Behaviour<concord_node::SyncCodec>,
}

fn stayer(topic: &IdentTopic) -> libp2p::Swarm<Stayer> {
    let mut swarm = common::attacker_swarm(|key| Stayer {
        gossipsub: common::attacker_gossip(key),
        sync: common::attacker_sync(),
    });
    swarm.behaviour_mut().gossipsub.subscribe(topic).unwrap();
    swarm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_removed_members_client_that_stays_subscribed_hears_nothing_new() {
    let clock = clock();
    let a = peer(1, &clock, config());
    let b = peer(2, &clock, config());
    // M's key, used by a client that never leaves.
    let m = concord_core::Replica::open_with_seed(
        concord_core::MemoryStore::new(),
        clock.clone(),
        [9; 32],
    )
    .unwrap();
    let addr = a.node.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    let members = vec![(b.node.author(), Role::Member), (m.author(), Role::Member)];
    let room = a.node.create_room_with("crew", members).await.unwrap();
    let b_room = b.node.join_ticket(&room.ticket().await.unwrap()).await.unwrap();
    until("B is a member", || async {
        b_room.governance().await.unwrap().role(&b.node.author()) == Some(Role::Member)
    })
    .await;

    // The client joins A's gossip for the room, and tells A who it is with
    // M's certificate for its own peer id.
    let topic = IdentTopic::new(format!("concord/room/{}", room.id()));
    let mut client = stayer(&topic);
    let client_id = *client.local_peer_id();
    let cert = m.device_cert(&client_id.to_bytes()).unwrap();
    client.dial(addr).unwrap();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let a_peer = a.node.peer_id();
    let room_id = room.id();
    let driver = tokio::spawn({
        let heard = heard.clone();
        async move {
            loop {
                match client.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => {
                        let request = SyncRequest {
                            session: 1,
                            room: room_id,
                            messages: Vec::new(),
                            genesis: None,
                            cert: cert.clone(),
                            refused: None,
                        };
                        client.behaviour_mut().sync.send_request(&a_peer, request);
                    }
                    SwarmEvent::Behaviour(StayerEvent::Gossipsub(
                        libp2p::gossipsub::Event::Message { message, .. },
                    )) => heard.lock().unwrap().push(message.data),
                    _ => {}
                }
            }
        }
    });
    // While M is a member, A's gossip reaches the client (so the check
    // below can fail).
    let mut sent = 0;
    for i in 0.. {
        clock.advance(10);
        b_room.send(&format!("while M is in {i}")).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !heard.lock().unwrap().is_empty() {
            break;
        }
        assert!(i < 100, "the client never heard the room while M was a member");
    }

    // A removes M; the client stays subscribed. From A's next heartbeat
    // on, A's gossip leaves it out.
    clock.advance(10);
    room.kick(m.author()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    heard.lock().unwrap().clear();
    for i in 0..5 {
        clock.advance(10);
        b_room.send(&format!("after M left {i}")).await.unwrap();
        room.send(&format!("A after M left {i}")).await.unwrap();
        sent += 2;
    }
    until("A holds B's messages", || async {
        common::snapshot(&a.node, room.id()).await.messages.len() == sent
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = heard.lock().unwrap().len();
    assert_eq!(after, 0, "the removed member's client heard {after} gossip messages");
    let score = a.node.peer_score(client_id).await.unwrap().unwrap();
    assert!(score < -50.0, "the client's score at A is {score}");
    driver.abort();
    for p in [a, b] {
        p.node.shutdown().await.unwrap();
    }
}
