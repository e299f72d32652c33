//! Room governance over real swarms on 127.0.0.1: a room of members only,
//! an invite redeemed by a device that joined with a ticket, roles and
//! topic changes spreading by gossip and catch-up, a moderator's delete
//! erasing a member's message everywhere, and a removed member whose posts
//! every peer refuses and whose device stops receiving the room. Tickets
//! that carry an invite make their holder a member by themselves, once, and
//! never when the invite is for another key, used, revoked or expired.

mod common;

use std::time::Duration;

use common::{clock, config, peer, until, until_converged, until_event};
use concord_core::{Action, Clock, Denied, Error, GovError, Role, RoomId};
use concord_node::{NodeError, NodeEvent, RoomTicket};

fn loopback() -> concord_node::Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_members_invites_roles_and_removal_over_the_network() {
    let clock = clock();
    let a = peer(1, &clock, config());
    let b = peer(2, &clock, config());
    let c = peer(3, &clock, config());
    a.node.listen(loopback()).await.unwrap();
    let room =
        a.node.create_room_with("crew", vec![(b.node.author(), Role::Member)]).await.unwrap();
    let ticket = room.ticket().await.unwrap();

    // B, a founding member, joins with the ticket; catch-up brings the
    // governance, and B posts.
    let b_room = b.node.join_ticket(&ticket).await.unwrap();
    until("B sees the governance", || async {
        b_room.governance().await.unwrap().role(&b.node.author()) == Some(Role::Member)
    })
    .await;
    b_room.send("B is here").await.unwrap();
    until_converged(&[&a.node, &b.node], room.id(), 1).await;

    // C holds the ticket but no invite: it may not post.
    let c_room = c.node.join_ticket(&ticket).await.unwrap();
    until("C sees the governance", || async { c_room.governance().await.unwrap().founded() }).await;
    assert!(matches!(
        c_room.send("let me in").await,
        Err(NodeError::Core(Error::Governance(GovError::Denied(Denied::NotMember))))
    ));
    // A invites C's key; the invite reaches C by gossip or catch-up, and
    // C redeems it.
    clock.advance(10);
    let invite = room.invite(Role::Member, Some(c.node.author()), None).await.unwrap();
    until("C sees the invite", || async {
        c_room.governance().await.unwrap().invite(&invite.id()).is_some()
    })
    .await;
    c_room.redeem(invite).await.unwrap();
    until("everyone sees C join", || async {
        room.governance().await.unwrap().role(&c.node.author()) == Some(Role::Member)
            && b_room.governance().await.unwrap().role(&c.node.author()) == Some(Role::Member)
    })
    .await;
    clock.advance(10);
    let hello = c_room.send("C joined").await.unwrap();
    until_converged(&[&a.node, &b.node, &c.node], room.id(), 2).await;

    // A makes B a moderator and sets the topic; B deletes C's message, and
    // it is gone from every replica.
    clock.advance(10);
    room.set_role(b.node.author(), Role::Moderator).await.unwrap();
    room.set_topic("launch").await.unwrap();
    until("B is a moderator", || async {
        b_room.governance().await.unwrap().role(&b.node.author()) == Some(Role::Moderator)
    })
    .await;
    clock.advance(10);
    b_room.delete(hello).await.unwrap();
    until_converged(&[&a.node, &b.node, &c.node], room.id(), 1).await;
    assert_eq!(c_room.governance().await.unwrap().topic(), "launch");

    // A removes C: once C's replica holds the removal it refuses C's
    // posts, and the audit trail on every replica says who did what.
    clock.advance(10);
    room.kick(c.node.author()).await.unwrap();
    until("C sees the removal", || async {
        c_room.governance().await.unwrap().role(&c.node.author()).is_none()
    })
    .await;
    assert!(matches!(
        c_room.send("still here?").await,
        Err(NodeError::Core(Error::Governance(GovError::Denied(Denied::NotMember))))
    ));

    // C's device stops receiving the room: A's gossip leaves C out (from
    // A's next gossip heartbeat after the removal, 0.5 s), and A's
    // catch-up sends C governance only, whoever starts it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    clock.advance(10);
    room.send("after C left").await.unwrap();
    clock.advance(10);
    b_room.send("B answers").await.unwrap();
    until_converged(&[&a.node, &b.node], room.id(), 3).await;
    let from_c = c.node.sync(a.node.peer_id(), room.id()).await.unwrap();
    assert_eq!(from_c.envelopes_applied, 0, "{from_c:?}");
    let to_c = a.node.sync(c.node.peer_id(), room.id()).await.unwrap();
    assert_eq!((to_c.envelopes_sent, to_c.flights_withheld > 0), (0, true), "{to_c:?}");
    // Several catch-up periods later C still holds only what it had.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held: Vec<String> = common::snapshot(&c.node, room.id())
        .await
        .messages
        .into_iter()
        .filter_map(|m| m.body)
        .collect();
    assert_eq!(held, ["B is here"], "the removed device received new messages");

    let trail = room.audit().await.unwrap();
    // The room is encrypted: each device published its keys once, beside
    // the changes made by hand.
    let (published, actions): (Vec<&Action>, Vec<&Action>) =
        trail.iter().map(|e| &e.action).partition(|a| matches!(a, Action::PublishKeys(_)));
    let publishers: std::collections::BTreeSet<_> = trail
        .iter()
        .filter(|e| matches!(e.action, Action::PublishKeys(_)))
        .map(|e| e.author)
        .collect();
    assert_eq!(published.len(), 3, "{published:?}");
    assert_eq!(publishers.len(), 3, "{publishers:?}");
    assert!(matches!(
        actions.as_slice(),
        [
            Action::Init { .. },
            Action::Invite(_),
            Action::Join(_),
            Action::SetRole { .. },
            Action::SetTopic(_),
            Action::Remove { .. },
        ]
    ));
    until("the same trail everywhere", || async {
        b_room.audit().await.unwrap() == trail && c_room.audit().await.unwrap() == trail
    })
    .await;
    for p in [a, b, c] {
        p.node.shutdown().await.unwrap();
    }
}

/// Waits for the outcome of redeeming a ticket's invite in `room`: `Ok`
/// once redeemed, `Err` with the reason it failed.
async fn invite_outcome(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    room: RoomId,
) -> Result<(), String> {
    until_event("the invite's outcome", events, |event| match event {
        NodeEvent::InviteRedeemed { room: r } if r == room => Some(Ok(())),
        NodeEvent::InviteFailed { room: r, error } if r == room => Some(Err(error)),
        _ => None,
    })
    .await
}

fn joins(trail: &[concord_core::AuditEntry]) -> usize {
    trail.iter().filter(|e| matches!(e.action, Action::Join(_))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_invite_tickets_make_their_holder_a_member_once() {
    let clock = clock();
    let a = peer(1, &clock, config());
    let b = peer(2, &clock, config());
    let c = peer(3, &clock, config());
    let d = peer(4, &clock, config());
    a.node.listen(loopback()).await.unwrap();
    let room = a.node.create_room_with("crew", Vec::new()).await.unwrap();

    // A ticket with an invite for B's key, as text: B joins with it alone
    // and becomes a member by itself once the governance arrives, posts,
    // and A receives the post.
    let for_b =
        room.invite_ticket(Role::Member, Some(b.node.author()), None).await.unwrap().to_string();
    let for_b: RoomTicket = for_b.parse().unwrap();
    let mut b_events = b.node.events();
    let b_room = b.node.join_ticket(&for_b).await.unwrap();
    assert_eq!(invite_outcome(&mut b_events, room.id()).await, Ok(()));
    assert_eq!(b_room.governance().await.unwrap().role(&b.node.author()), Some(Role::Member));
    clock.advance(10);
    b_room.send("B joined by ticket").await.unwrap();
    until_converged(&[&a.node, &b.node], room.id(), 1).await;
    assert_eq!(room.governance().await.unwrap().role(&b.node.author()), Some(Role::Member));

    // Joining with the same ticket again is harmless: B is a member
    // already, and no second Join is made.
    b.node.join_ticket(&for_b).await.unwrap();
    assert_eq!(invite_outcome(&mut b_events, room.id()).await, Ok(()));
    assert_eq!(joins(&b_room.audit().await.unwrap()), 1);

    // A ticket for anyone, used once: C becomes a member.
    clock.advance(10);
    let for_anyone = room.invite_ticket(Role::Member, None, None).await.unwrap();
    let mut c_events = c.node.events();
    c.node.join_ticket(&for_anyone).await.unwrap();
    assert_eq!(invite_outcome(&mut c_events, room.id()).await, Ok(()));
    until("A sees C join", || async {
        room.governance().await.unwrap().role(&c.node.author()) == Some(Role::Member)
    })
    .await;

    // D, with the same ticket after C used it (the catch-up that brings
    // the invite brings C's Join too): refused. B's ticket is for B only.
    let mut d_events = d.node.events();
    let d_room = d.node.join_ticket(&for_anyone).await.unwrap();
    let used = invite_outcome(&mut d_events, room.id()).await.unwrap_err();
    assert!(used.contains("already used"), "{used}");
    d.node.join_ticket(&for_b).await.unwrap();
    let other = invite_outcome(&mut d_events, room.id()).await.unwrap_err();
    assert!(other.contains("another key"), "{other}");

    // A revokes an invite before D uses its ticket: once D holds the
    // revocation, the ticket does not make D a member.
    clock.advance(10);
    let revoked = room.invite_ticket(Role::Member, None, None).await.unwrap();
    room.govern(Action::Revoke { invite: revoked.invite().unwrap().id() }).await.unwrap();
    until("D holds A's governance", || async {
        d_room.governance().await.unwrap() == room.governance().await.unwrap()
    })
    .await;
    d.node.join_ticket(&revoked).await.unwrap();
    let why = invite_outcome(&mut d_events, room.id()).await.unwrap_err();
    assert!(why.contains("revoked"), "{why}");

    // An invite that expired before D's Join does not make D a member.
    clock.advance(10);
    let expires = clock.now_millis() + 1_000;
    let expiring = room.invite_ticket(Role::Member, None, Some(expires)).await.unwrap();
    clock.advance(2_000);
    d.node.join_ticket(&expiring).await.unwrap();
    let why = invite_outcome(&mut d_events, room.id()).await.unwrap_err();
    assert!(why.contains("expired"), "{why}");

    // D is a member nowhere and may not post; A's trail has two Joins.
    assert!(matches!(
        d_room.send("let me in").await,
        Err(NodeError::Core(Error::Governance(GovError::Denied(Denied::NotMember))))
    ));
    assert_eq!(room.governance().await.unwrap().role(&d.node.author()), None);
    assert_eq!(joins(&room.audit().await.unwrap()), 2);
    for p in [a, b, c, d] {
        p.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_invite_redemption_gives_up_when_the_governance_never_arrives() {
    let clock = clock();
    // A listens nowhere, so its ticket carries no address and B never
    // receives the room's governance.
    let a = peer(1, &clock, config());
    let room = a.node.create_room_with("hidden", Vec::new()).await.unwrap();
    let ticket = room.invite_ticket(Role::Member, None, None).await.unwrap();
    assert!(ticket.addresses().is_empty());
    let b = peer(2, &clock, config().invite_wait(Duration::from_millis(500)));
    let mut events = b.node.events();
    let b_room = b.node.join_ticket(&ticket).await.unwrap();
    let why = invite_outcome(&mut events, room.id()).await.unwrap_err();
    assert!(why.contains("did not bring the invite"), "{why}");
    assert!(!b_room.governance().await.unwrap().founded());
    for p in [a, b] {
        p.node.shutdown().await.unwrap();
    }
}
