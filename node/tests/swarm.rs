//! Real libp2p swarms on 127.0.0.1: three nodes converge by gossip, a
//! change that gossip never carried is healed by catch-up sync, and a peer
//! that was offline catches up on connect and then periodically.

use std::sync::Arc;
use std::time::Duration;

use concord_core::Op;
use concord_core::{Draft, ManualClock, Replica, RoomId, SledStore};
use concord_node::{Node, NodeConfig, ReplicaHandle};

const EPOCH_MILLIS: u64 = 1_750_000_000_000;

struct Peer {
    node: Node,
    replica: ReplicaHandle<SledStore>,
    _dir: tempfile::TempDir,
}

async fn peer(seed: u8, clock: &Arc<ManualClock>) -> Peer {
    peer_with(seed, clock, NodeConfig::default()).await
}

async fn peer_with(seed: u8, clock: &Arc<ManualClock>, config: NodeConfig) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let replica =
        Replica::open_with_seed(SledStore::open(dir.path()).unwrap(), clock.clone(), [seed; 32])
            .unwrap();
    let node = Node::start(replica, clock.clone(), config.mdns(false)).unwrap();
    Peer { replica: node.replica().clone(), node, _dir: dir }
}

async fn bodies(p: &Peer, room: RoomId) -> Vec<String> {
    let snapshot = p.replica.try_call(move |r| r.snapshot(&room)).await.unwrap();
    snapshot.messages.into_iter().filter_map(|m| m.body).collect()
}

/// Polls until every peer shows `want` messages, or fails after 20 s.
async fn until_all_show(peers: &[&Peer], room: RoomId, want: usize) {
    for _ in 0..200 {
        let mut ok = true;
        for p in peers {
            ok &= bodies(p, room).await.len() == want;
        }
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("peers did not converge to {want} messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_three_peers_converge_by_gossip_and_catch_up_heals_a_gap() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let a = peer(1, &clock).await;
    let b = peer(2, &clock).await;
    let c = peer(3, &clock).await;
    let room = a.replica.try_call(|r| r.create_room("swarm")).await.unwrap();
    let genesis =
        a.replica.try_call(move |r| Ok(r.genesis(&room)?.as_bytes().to_vec())).await.unwrap();
    for p in [&b, &c] {
        let g = genesis.clone();
        p.replica.try_call(move |r| r.join_room(&g)).await.unwrap();
    }
    let addr = a.node.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    for p in [&a, &b, &c] {
        p.node.join(room).await.unwrap();
    }
    b.node.dial(addr.clone()).await.unwrap();
    c.node.dial(addr).await.unwrap();

    // Gossip needs the mesh: publish until the first message is seen everywhere.
    let first =
        a.replica.try_call(move |r| r.post(&room, Draft::text("hello mesh"))).await.unwrap();
    for _ in 0..100 {
        let _ = a.node.publish(room, &first.delivery).await;
        if bodies(&b, room).await.len() == 1 && bodies(&c, room).await.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, p) in [&b, &c].into_iter().enumerate() {
        clock.advance(1_000);
        let text = format!("from peer {i}");
        let sent = p.replica.try_call(move |r| r.post(&room, Draft::text(text))).await.unwrap();
        p.node.publish(room, &sent.delivery).await.unwrap();
    }
    until_all_show(&[&a, &b, &c], room, 3).await;

    // C posts without gossiping (a dropped message); catch-up heals it.
    clock.advance(1_000);
    c.replica.try_call(move |r| r.post(&room, Draft::text("never gossiped"))).await.unwrap();
    let stats = c.node.sync(a.node.peer_id(), room).await.unwrap();
    assert!(stats.envelopes_sent >= 1, "{stats:?}");
    assert!(bodies(&a, room).await.contains(&"never gossiped".to_owned()));
    let stats = b.node.sync(a.node.peer_id(), room).await.unwrap();
    assert!(stats.envelopes_applied >= 1, "{stats:?}");
    until_all_show(&[&a, &b, &c], room, 4).await;
    let snapshots = futures_snapshots(&[&a, &b, &c], room).await;
    assert!(snapshots.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    for p in [&a, &b, &c] {
        p.node.shutdown().await.unwrap();
    }
}

async fn futures_snapshots(peers: &[&Peer], room: RoomId) -> Vec<concord_core::RoomSnapshot> {
    let mut out = Vec::new();
    for p in peers {
        out.push(p.replica.try_call(move |r| r.snapshot(&room)).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_offline_peer_catches_up_on_connect_and_periodically() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let often = NodeConfig::default().sync_interval(Duration::from_millis(300));
    let a = peer_with(1, &clock, often.clone()).await;
    let b = peer_with(2, &clock, often).await;
    let room = a.replica.try_call(|r| r.create_room("offline")).await.unwrap();
    let genesis =
        a.replica.try_call(move |r| Ok(r.genesis(&room)?.as_bytes().to_vec())).await.unwrap();
    b.replica.try_call(move |r| r.join_room(&genesis)).await.unwrap();
    // A writes twenty messages while B is offline; nothing is gossiped.
    a.replica
        .call(move |r| {
            let ops = (0..20).map(|i| Op::Post { room, draft: Draft::text(format!("m{i}")) });
            r.commit(ops.collect()).unwrap();
        })
        .await
        .unwrap();
    for p in [&a, &b] {
        p.node.join(room).await.unwrap();
    }
    let addr = a.node.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    b.node.dial(addr).await.unwrap();
    until_all_show(&[&a, &b], room, 20).await;
    // Connected now, A writes one more without gossip: the period heals it.
    clock.advance(1_000);
    a.replica.try_call(move |r| r.post(&room, Draft::text("between gossip"))).await.unwrap();
    until_all_show(&[&a, &b], room, 21).await;
    let (sa, sb) = (snapshot(&a, room).await, snapshot(&b, room).await);
    assert_eq!(sa, sb);
}

async fn snapshot(p: &Peer, room: RoomId) -> concord_core::RoomSnapshot {
    p.replica.try_call(move |r| r.snapshot(&room)).await.unwrap()
}

/// A room's genesis as bytes, from the peer that created it.
async fn genesis_of(p: &Peer, room: RoomId) -> Vec<u8> {
    p.replica.try_call(move |r| Ok(r.genesis(&room)?.as_bytes().to_vec())).await.unwrap()
}

/// Posts on `p` and gossips the delivery (the send may find no mesh yet:
/// the post is durable and catch-up carries it).
async fn post(p: &Peer, room: RoomId, text: String) -> concord_core::MessageId {
    let sent = p.replica.try_call(move |r| r.post(&room, Draft::text(text))).await.unwrap();
    let _ = p.node.publish(room, &sent.delivery).await;
    sent.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ten_peers_converge() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let config = NodeConfig::default().sync_interval(Duration::from_millis(500));
    let mut peers = Vec::new();
    for seed in 1..=10 {
        peers.push(peer_with(seed, &clock, config.clone()).await);
    }
    let room = peers[0].replica.try_call(|r| r.create_room("ten")).await.unwrap();
    let genesis = genesis_of(&peers[0], room).await;
    for p in &peers[1..] {
        let g = genesis.clone();
        p.replica.try_call(move |r| r.join_room(&g)).await.unwrap();
    }
    let mut addrs = Vec::new();
    for p in &peers {
        p.node.join(room).await.unwrap();
        addrs.push(p.node.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap());
    }
    // A chain: each peer dials the previous one, so most pairs are indirect.
    for i in 1..peers.len() {
        peers[i].node.dial(addrs[i - 1].clone()).await.unwrap();
    }
    for (i, p) in peers.iter().enumerate() {
        clock.advance(100);
        post(p, room, format!("hello from {i}")).await;
    }
    let all: Vec<&Peer> = peers.iter().collect();
    until_all_show(&all, room, 10).await;
    let first = snapshot(&peers[0], room).await;
    for p in &peers[1..] {
        assert_eq!(snapshot(p, room).await, first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_stopped_peer_restarts_and_converges_with_edits_and_deletes() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let config = NodeConfig::default().sync_interval(Duration::from_millis(300));
    let a = peer_with(1, &clock, config.clone()).await;
    let b = peer_with(2, &clock, config.clone()).await;
    let room = a.replica.try_call(|r| r.create_room("restart")).await.unwrap();
    let genesis = genesis_of(&a, room).await;
    let dir = tempfile::tempdir().unwrap();
    let open_c = |clock: &Arc<ManualClock>| {
        Replica::open_with_seed(SledStore::open(dir.path()).unwrap(), clock.clone(), [3; 32])
            .unwrap()
    };
    let c_node = Node::start(open_c(&clock), clock.clone(), config.clone().mdns(false)).unwrap();
    let g = genesis.clone();
    c_node.replica().try_call(move |r| r.join_room(&g)).await.unwrap();
    let g = genesis.clone();
    b.replica.try_call(move |r| r.join_room(&g)).await.unwrap();
    let addr = a.node.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    for node in [&a.node, &b.node, &c_node] {
        node.join(room).await.unwrap();
    }
    b.node.dial(addr.clone()).await.unwrap();
    c_node.dial(addr.clone()).await.unwrap();
    let doomed = post(&a, room, "to be deleted".into()).await;
    let edited = post(&b, room, "to be edited".into()).await;
    let c = Peer {
        replica: c_node.replica().clone(),
        node: c_node,
        _dir: tempfile::tempdir().unwrap(),
    };
    until_all_show(&[&a, &b, &c], room, 2).await;

    // C stops; the others post, edit and delete; C also writes while offline.
    c.node.shutdown().await.unwrap();
    clock.advance(1_000);
    post(&a, room, "while C is away".into()).await;
    let d = a.replica.try_call(move |r| r.delete(&room, &doomed)).await.unwrap();
    let _ = a.node.publish(room, &d.delivery).await;
    let e = b.replica.try_call(move |r| r.edit(&room, &edited, "edited while away")).await.unwrap();
    let _ = b.node.publish(room, &e.delivery).await;
    let mut offline = open_c(&clock);
    offline.post(&room, Draft::text("C wrote offline")).unwrap();
    drop(offline);

    // C comes back with its store and a new node, which serves its stored
    // rooms at once and catches up on connect.
    let node = Node::start(open_c(&clock), clock.clone(), config.mdns(false)).unwrap();
    node.dial(addr).await.unwrap();
    let c = Peer { replica: node.replica().clone(), node, _dir: tempfile::tempdir().unwrap() };
    until_all_show(&[&a, &b, &c], room, 3).await;
    let shown = bodies(&c, room).await;
    assert!(shown.contains(&"edited while away".to_owned()), "{shown:?}");
    assert!(!shown.contains(&"to be deleted".to_owned()), "{shown:?}");
    let sa = snapshot(&a, room).await;
    assert_eq!(snapshot(&b, room).await, sa);
    assert_eq!(snapshot(&c, room).await, sa);
    c.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_two_peers_converge_over_quic() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let config = NodeConfig::default().sync_interval(Duration::from_millis(300));
    let a = peer_with(1, &clock, config.clone()).await;
    let b = peer_with(2, &clock, config).await;
    let room = a.replica.try_call(|r| r.create_room("quic")).await.unwrap();
    let genesis = genesis_of(&a, room).await;
    b.replica.try_call(move |r| r.join_room(&genesis)).await.unwrap();
    for p in [&a, &b] {
        p.node.join(room).await.unwrap();
    }
    let addr = a.node.listen("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()).await.unwrap();
    assert!(addr.to_string().contains("quic-v1"), "{addr}");
    b.node.dial(addr).await.unwrap();
    post(&a, room, "over quic".into()).await;
    clock.advance(100);
    post(&b, room, "and back".into()).await;
    until_all_show(&[&a, &b], room, 2).await;
    assert_eq!(snapshot(&a, room).await, snapshot(&b, room).await);
}
