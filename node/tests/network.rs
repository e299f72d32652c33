//! The node's user-facing API over real swarms on 127.0.0.1: rooms and
//! tickets, the offline queue and delivery states, typing and presence,
//! a partition that heals, a circuit relay, and connection limits.

mod common;

use std::time::Duration;

use common::{clock, config, open, peer, snapshot, until, until_converged};
use concord_core::{Anchor, DeliveryState, SignalKind};
use concord_node::{Node, NodeEvent};

fn loopback() -> concord_node::Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

async fn state_of(room: &concord_node::Room<concord_core::SledStore>, text: &str) -> DeliveryState {
    let items = room.timeline().await.unwrap();
    let item = items.iter().find(|i| i.message.body.as_deref() == Some(text)).unwrap();
    item.delivery.expect("own message has a delivery state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_offline_send_is_saved_then_reached_then_seen_and_the_state_survives_restart() {
    let clock = clock();
    let a = peer(1, &clock, config());
    let room = a.node.create_room("delivery").await.unwrap();
    a.node.listen(loopback()).await.unwrap();
    let mut events = a.node.events();

    // Alone: the send is durable and acknowledged, and saved only here.
    let id = room.send("sent while alone").await.unwrap();
    assert_eq!(state_of(&room, "sent while alone").await, DeliveryState::Saved);
    let page = room.page(Anchor::Latest, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].delivery, Some(DeliveryState::Saved));

    // A peer joins by ticket: catch-up delivers the queued message and the
    // state moves to reached, with an event.
    let b = peer(2, &clock, config());
    let ticket = room.ticket().await.unwrap();
    assert!(!ticket.addresses().is_empty());
    let b_room = b.node.join_ticket(&ticket).await.unwrap();
    until_converged(&[&a.node, &b.node], room.id(), 1).await;
    until("reached", || async {
        state_of(&room, "sent while alone").await == DeliveryState::Reached
    })
    .await;
    let delivered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(NodeEvent::Delivered { room: r, .. }) = events.recv().await {
                break r;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(delivered, room.id());
    // Others' messages carry no state; B's own does.
    let b_items = b_room.timeline().await.unwrap();
    assert_eq!(b_items[0].delivery, None);

    // B reads it: A sees "seen by 1".
    clock.advance(100);
    b_room.mark_read(id).await.unwrap();
    until("seen by one", || async {
        state_of(&room, "sent while alone").await == DeliveryState::SeenBy(1)
    })
    .await;

    // A message sent while connected reaches B by gossip and is confirmed.
    clock.advance(100);
    room.send("sent while connected").await.unwrap();
    until("live reached", || async {
        state_of(&room, "sent while connected").await == DeliveryState::Reached
    })
    .await;

    // The watermark is durable: after a restart, nothing falls back to saved.
    a.node.shutdown().await.unwrap();
    b.node.shutdown().await.unwrap();
    let again = Node::start(open(a.dir.path(), 1, &clock), clock.clone(), config()).unwrap();
    let room = again.room(room.id()).await.unwrap();
    assert_eq!(state_of(&room, "sent while connected").await, DeliveryState::Reached);
    assert_eq!(state_of(&room, "sent while alone").await, DeliveryState::SeenBy(1));
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_typing_and_presence_arrive_by_gossip_and_are_never_stored() {
    let clock = clock();
    let a = peer(1, &clock, config().presence_interval(Duration::from_millis(200)));
    let b = peer(2, &clock, config().presence_interval(Duration::from_millis(200)));
    let room = a.node.create_room("typing").await.unwrap();
    a.node.listen(loopback()).await.unwrap();
    let b_room = b.node.join_ticket(&room.ticket().await.unwrap()).await.unwrap();
    room.send("hello").await.unwrap();
    until_converged(&[&a.node, &b.node], room.id(), 1).await;
    let before = (snapshot(&a.node, room.id()).await, deliveries(&a.node, room.id()).await);

    let mut events = a.node.events();
    // Gossip needs the mesh: say it until A hears it.
    let b_author = b.node.author();
    until("typing signal", || async {
        b_room.typing(true).await.unwrap();
        room.presence().await.unwrap().iter().any(|p| p.author == b_author && p.typing)
    })
    .await;
    let mut saw_typing = false;
    while let Ok(event) = events.try_recv() {
        if let NodeEvent::Signal { author, kind: SignalKind::Typing, .. } = event {
            saw_typing |= author == b_author;
        }
    }
    assert!(saw_typing, "no typing event");
    until("online", || async {
        room.presence().await.unwrap().iter().any(|p| p.author == b_author && p.online)
    })
    .await;
    b_room.typing(false).await.unwrap();
    until("stopped typing", || async {
        room.presence().await.unwrap().iter().any(|p| p.author == b_author && !p.typing)
    })
    .await;

    // Nothing of it was stored: the room and its envelopes are unchanged.
    let after = (snapshot(&a.node, room.id()).await, deliveries(&a.node, room.id()).await);
    assert_eq!(before, after);

    // Going offline is announced.
    b.node.shutdown().await.unwrap();
    until("offline", || async {
        room.presence().await.unwrap().iter().any(|p| p.author == b_author && !p.online)
    })
    .await;
    a.node.shutdown().await.unwrap();
}

async fn deliveries(node: &Node, room: concord_core::RoomId) -> usize {
    node.replica().try_call(move |r| r.deliveries(&room)).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_two_groups_partitioned_at_the_transport_then_healed_converge() {
    let clock = clock();
    let peers: Vec<_> = (1..=4).map(|s| peer(s, &clock, config())).collect();
    let room = peers[0].node.create_room("partition").await.unwrap();
    let mut addrs = Vec::new();
    for p in &peers {
        addrs.push(p.node.listen(loopback()).await.unwrap());
    }
    let ticket = room.ticket().await.unwrap();
    let mut rooms = vec![room.clone()];
    for p in &peers[1..] {
        rooms.push(p.node.join_ticket(&ticket).await.unwrap());
    }
    // Links inside each group {0,1} {2,3}, and across them.
    peers[3].node.dial(addrs[2].clone()).await.unwrap();
    peers[3].node.dial(addrs[1].clone()).await.unwrap();
    let doomed = rooms[2].send("posted before the split").await.unwrap();
    let nodes: Vec<&Node> = peers.iter().map(|p| &p.node).collect();
    until_converged(&nodes, room.id(), 1).await;

    // Split: each side blocks the other at the transport.
    let (left, right) = peers.split_at(2);
    for l in left {
        for r in right {
            l.node.block(r.node.peer_id()).await.unwrap();
            r.node.block(l.node.peer_id()).await.unwrap();
        }
    }
    until("split", || async {
        let lp = left[0].node.peers().await.unwrap();
        let rp = right[0].node.peers().await.unwrap();
        !right.iter().any(|r| lp.contains(&r.node.peer_id()))
            && !left.iter().any(|l| rp.contains(&l.node.peer_id()))
    })
    .await;
    for (i, r) in rooms.iter().enumerate() {
        clock.advance(50);
        r.send(&format!("side message {i}")).await.unwrap();
    }
    clock.advance(50);
    rooms[2].delete(doomed).await.unwrap();
    let edited = rooms[0].send("to be edited").await.unwrap();
    clock.advance(50);
    rooms[0].edit(edited, "edited during the split").await.unwrap();
    // Each side converges on its own and lacks the other's messages.
    until_converged(&nodes[..2], room.id(), 4).await;
    until_converged(&nodes[2..], room.id(), 2).await;

    // Heal: unblock and reconnect; catch-up on connect merges the sides.
    for l in left {
        for r in right {
            l.node.unblock(r.node.peer_id()).await.unwrap();
            r.node.unblock(l.node.peer_id()).await.unwrap();
        }
    }
    peers[2].node.dial(addrs[0].clone()).await.unwrap();
    peers[3].node.dial(addrs[1].clone()).await.unwrap();
    let healed = until_converged(&nodes, room.id(), 5).await;
    let bodies: Vec<_> = healed.messages.iter().filter_map(|m| m.body.clone()).collect();
    assert!(bodies.contains(&"edited during the split".to_owned()), "{bodies:?}");
    assert!(!bodies.contains(&"posted before the split".to_owned()), "{bodies:?}");
    for p in &peers {
        p.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_peers_behind_a_circuit_relay_converge() {
    let clock = clock();
    let relay = peer(9, &clock, config().relay_server(true));
    let relay_addr = relay.node.listen(loopback()).await.unwrap();
    let relay_addr = relay_addr.with(concord_node::Protocol::P2p(relay.node.peer_id()));
    let a = peer(1, &clock, config());
    let b = peer(2, &clock, config());
    let room = a.node.create_room("relayed").await.unwrap();
    // A listens only through the relay: no direct address of its own.
    let circuit = a.node.listen_via_relay(relay_addr).await.unwrap();
    assert!(circuit.to_string().contains("p2p-circuit"), "{circuit}");
    let ticket = room.ticket().await.unwrap();
    assert!(ticket.addresses().iter().all(|a| a.to_string().contains("p2p-circuit")));
    let b_room = b.node.join_ticket(&ticket).await.unwrap();
    room.send("through the relay").await.unwrap();
    clock.advance(10);
    b_room.send("and back").await.unwrap();
    until_converged(&[&a.node, &b.node], room.id(), 2).await;
    // The relay itself holds no room.
    assert!(relay.node.rooms().await.unwrap().is_empty());
    for p in [&a, &b, &relay] {
        p.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_limit_refuses_peers_beyond_it() {
    let clock = clock();
    let hub = peer(1, &clock, config().connection_limits(2, 1));
    let addr = hub.node.listen(loopback()).await.unwrap();
    let others: Vec<_> = (2..=5).map(|s| peer(s, &clock, config())).collect();
    for o in &others {
        o.node.dial(addr.clone()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = hub.node.peers().await.unwrap();
    assert_eq!(connected.len(), 2, "{connected:?}");
    for p in others.iter().chain([&hub]) {
        p.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_windowed_peer_fetches_older_history_when_it_pages_back() {
    let clock = clock();
    let a = peer(1, &clock, config());
    let b = peer(2, &clock, config());
    // B joins after three days of messages: a room that shares its history
    // with new members (encrypted ones withhold it otherwise).
    let shared = concord_core::RoomOptions::default().share_history(true);
    let room = a.node.create_room_opts("history", shared).await.unwrap();
    for day in 0..3 {
        for i in 0..4 {
            room.send(&format!("day {day} message {i}")).await.unwrap();
            clock.advance(10);
        }
        clock.advance(concord_core::BUCKET_SPAN_MILLIS);
    }
    a.node.listen(loopback()).await.unwrap();
    let b_room = b.node.join_ticket(&room.ticket().await.unwrap()).await.unwrap();
    until_converged(&[&a.node, &b.node], room.id(), 12).await;

    // B keeps only the newest day, as a phone short of space would.
    let id = room.id();
    let newest = b
        .node
        .replica()
        .try_call(move |r| {
            let last = r.snapshot(&id)?.messages.last().map(|m| m.hlc).unwrap();
            let bucket = concord_core::bucket_of(last);
            r.evict_before(&id, bucket)?;
            Ok(bucket)
        })
        .await
        .unwrap();
    let page = b_room.page(Anchor::Latest, 50).await.unwrap();
    assert_eq!(page.items.len(), 4, "only the newest day is kept");
    assert!(page.fetching_older);
    let window = move |n: &Node| {
        let n = n.clone();
        async move { n.replica().call(move |r| r.window(&id)).await.unwrap() }
    };
    assert_eq!(window(&b.node).await, Some(newest));

    // Paging back asked a peer; the older days arrive.
    until("older history", || async {
        b_room.page(Anchor::Latest, 50).await.unwrap().items.len() == 12
    })
    .await;
    assert_eq!(snapshot(&b.node, id).await, snapshot(&a.node, id).await);
    for p in [&a, &b] {
        p.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_wrong_config_is_a_typed_error_and_starts_nothing() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        config().sync_interval(Duration::ZERO),
        config().presence_interval(Duration::ZERO),
        config().connection_limits(0, 1),
        config().sync_strikes(0, Duration::from_secs(1)),
    ] {
        let err = Node::start(open(dir.path(), 1, &clock), clock.clone(), bad).unwrap_err();
        assert!(matches!(err, concord_node::NodeError::InvalidConfig(_)), "{err}");
    }
    // The store was never taken: a good config opens it.
    let node = Node::start(open(dir.path(), 1, &clock), clock.clone(), config()).unwrap();
    node.shutdown().await.unwrap();
}
