//! End-to-end encryption between replicas, without a network: a removed
//! device reads nothing sent after its removal, a message whose key comes
//! late waits and then shows once, a key that never comes leaves it
//! waiting, and a new reader gets history from its keys on unless the room
//! shares it. Keys travel only as the replicas write them (announcements
//! and their own documents); the tests hand them over like a peer would.

mod common;

use std::sync::Arc;

use concord_core::{
    Action, Announcement, Delivery, Draft, ManualClock, MemoryStore, Replica, Role, RoomId,
    RoomOptions, JOIN_GRACE_MILLIS,
};

type R = Replica<MemoryStore>;

fn replicas(n: u8) -> (Arc<ManualClock>, Vec<R>) {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let all = (1..=n).map(|seed| common::memory_replica(seed, &clock)).collect();
    (clock, all)
}

/// What `r` announced for peers (room keys and key requests it wrote in
/// answer to what it received), as deliveries.
fn announced(r: &mut R) -> Vec<Delivery> {
    r.take_announcements()
        .into_iter()
        .filter_map(|a| match a {
            Announcement::Delivery(_, d) => Some(*d),
            _ => None,
        })
        .collect()
}

/// `to` applies every delivery `from` holds; each must be taken.
fn hand_over(from: &R, to: &mut R, room: &RoomId) {
    for outcome in to.apply(room, from.deliveries(room).unwrap()).unwrap() {
        outcome.unwrap();
    }
}

fn bodies(r: &R, room: &RoomId) -> Vec<Option<String>> {
    r.snapshot(room).unwrap().messages.into_iter().map(|m| m.body).collect()
}

#[test]
fn test_a_removed_device_decrypts_nothing_sent_after_its_removal() {
    let (clock, mut rs) = replicas(3);
    let members = vec![(rs[1].author(), Role::Member), (rs[2].author(), Role::Member)];
    let room =
        rs[0].create_room_opts("crew", &RoomOptions::default().members_only(members)).unwrap();
    let (a, rest) = rs.split_at_mut(1);
    for r in rest.iter_mut() {
        common::join(r, &mut a[0], &room);
    }
    let [a, b, c] = &mut rs[..] else { unreachable!() };
    common::spread_governance(a, b, &room);
    common::spread_governance(a, c, &room);
    let c_author = c.author();

    clock.advance(10);
    c.post(&room, Draft::text("C, while a member")).unwrap();
    a.post(&room, Draft::text("A, before the removal")).unwrap();
    for (from, to) in [(0, 1), (0, 2), (2, 0), (2, 1), (1, 0)] {
        let (from, to) = pick(&mut rs, from, to);
        hand_over(from, to, &room);
        let _ = announced(to);
    }
    let [a, b, c] = &mut rs[..] else { unreachable!() };
    assert_eq!(bodies(c, &room).iter().flatten().count(), 2, "{:?}", bodies(c, &room));

    // A removes C; B holds the removal before it writes again.
    clock.advance(10);
    a.govern(&room, Action::Remove { member: c_author }).unwrap();
    common::spread_governance(a, b, &room);
    clock.advance(10);
    a.post(&room, Draft::text("A, after the removal")).unwrap();
    b.post(&room, Draft::text("B, after the removal")).unwrap();
    hand_over(a, b, &room);
    hand_over(b, a, &room);

    // A dishonest member passes C everything: governance and envelopes.
    common::spread_governance(a, c, &room);
    hand_over(a, c, &room);
    hand_over(b, c, &room);
    for requests in [announced(c), c.deliveries(&room).unwrap()] {
        // C's requests, if any, reach A and B: neither answers a non-member.
        let _ = a.apply(&room, requests.clone()).unwrap();
        let _ = b.apply(&room, requests).unwrap();
    }
    for answers in [announced(a), announced(b)] {
        let _ = c.apply(&room, answers).unwrap();
    }
    let view = c.snapshot(&room).unwrap();
    let after: Vec<_> = view.messages.iter().filter(|m| m.body.is_none()).collect();
    assert_eq!(after.len(), 2, "C holds the two later messages, unreadable: {view:?}");
    assert!(after.iter().all(|m| m.waiting_for_key));
    // What C wrote as a member still renders for the others.
    for r in [&*a, &*b] {
        let shown: Vec<_> = bodies(r, &room).into_iter().flatten().collect();
        assert!(shown.contains(&"C, while a member".to_owned()), "{shown:?}");
        assert!(shown.contains(&"B, after the removal".to_owned()), "{shown:?}");
        assert_eq!(shown.len(), 4, "{shown:?}");
    }
}

fn pick(rs: &mut [R], from: usize, to: usize) -> (&R, &mut R) {
    assert_ne!(from, to);
    if from < to {
        let (l, r) = rs.split_at_mut(to);
        (&l[from], &mut r[0])
    } else {
        let (l, r) = rs.split_at_mut(from);
        (&r[0], &mut l[to])
    }
}

#[test]
fn test_a_late_key_shows_the_waiting_message_once_and_a_missing_one_keeps_it_waiting() {
    let (clock, mut rs) = replicas(3);
    let room = rs[0].create_room("late keys").unwrap();
    let [a, b, c] = &mut rs[..] else { unreachable!() };
    // B and C join without A hearing of them: A shares its key with nobody.
    common::join_quietly(b, a, &room);
    common::join_quietly(c, a, &room);
    clock.advance(10);
    let sent = a.post(&room, Draft::text("before A knew B")).unwrap();
    for r in [&mut *b, &mut *c] {
        r.apply(&room, vec![sent.delivery.clone()]).unwrap()[0].as_ref().unwrap();
        let view = r.snapshot(&room).unwrap();
        assert_eq!(view.messages.len(), 1);
        assert!(view.messages[0].waiting_for_key && view.messages[0].body.is_none());
        assert_eq!(r.waiting_for_keys(&room).unwrap(), 1);
    }

    // B's keys and its request reach A; A's answer reaches B.
    common::spread_governance(b, a, &room);
    let request = announced(b);
    assert!(!request.is_empty(), "B asked for the key");
    let mut answers = announced(a);
    for outcome in a.apply(&room, request.clone()).unwrap() {
        outcome.unwrap();
    }
    answers.extend(announced(a));
    assert!(!answers.is_empty(), "A answered");
    for outcome in b.apply(&room, answers.clone()).unwrap() {
        outcome.unwrap();
    }
    let view = b.snapshot(&room).unwrap();
    assert_eq!(view.messages.len(), 1, "shown once: {view:?}");
    assert_eq!(view.messages[0].body.as_deref(), Some("before A knew B"));
    assert!(!view.messages[0].waiting_for_key);
    assert_eq!(b.waiting_for_keys(&room).unwrap(), 0);
    // The same answer again, and A's whole room again: nothing changes.
    let _ = b.apply(&room, answers.clone()).unwrap();
    hand_over(a, b, &room);
    assert_eq!(b.snapshot(&room).unwrap(), view);

    // A room key addressed to B opens nothing for C, and C, whose keys
    // never reached A, keeps waiting however much else it receives.
    let _ = c.apply(&room, answers).unwrap();
    clock.advance(10);
    let more = a.post(&room, Draft::text("still before A knew C")).unwrap();
    // It cites B's published keys: C takes the governance first.
    common::spread_governance(a, c, &room);
    c.apply(&room, vec![more.delivery]).unwrap()[0].as_ref().unwrap();
    let view = c.snapshot(&room).unwrap();
    assert_eq!(view.messages.len(), 2);
    assert!(view.messages.iter().all(|m| m.waiting_for_key && m.body.is_none()), "{view:?}");
    assert_eq!(c.waiting_for_keys(&room).unwrap(), 2);
}

/// A posts, time passes beyond the join grace, B joins and asks: what B
/// reads of A's earlier message.
fn history_for_a_late_reader(options: &RoomOptions) -> (Option<String>, Option<String>) {
    let (clock, mut rs) = replicas(2);
    let room = rs[0].create_room_opts("history", options).unwrap();
    let [a, b] = &mut rs[..] else { unreachable!() };
    a.post(&room, Draft::text("long before B")).unwrap();
    clock.advance(JOIN_GRACE_MILLIS as u64 + 60_000);
    common::join(b, a, &room);
    hand_over(a, b, &room);
    let requests = announced(b);
    let _ = a.apply(&room, requests).unwrap();
    let answers = announced(a);
    let _ = b.apply(&room, answers).unwrap();
    clock.advance(10);
    let later = a.post(&room, Draft::text("after B joined")).unwrap();
    b.apply(&room, vec![later.delivery]).unwrap()[0].as_ref().unwrap();
    let view = b.snapshot(&room).unwrap();
    assert_eq!(view.messages.len(), 2, "{view:?}");
    (view.messages[0].body.clone(), view.messages[1].body.clone())
}

#[test]
fn test_a_new_reader_gets_history_from_its_keys_on_unless_the_room_shares_it() {
    let (old, new) = history_for_a_late_reader(&RoomOptions::default());
    assert_eq!(old, None, "a message from before B's keys and the grace is withheld");
    assert_eq!(new.as_deref(), Some("after B joined"));
    let (old, new) = history_for_a_late_reader(&RoomOptions::default().share_history(true));
    assert_eq!(old.as_deref(), Some("long before B"), "the room shares its history");
    assert_eq!(new.as_deref(), Some("after B joined"));
}

#[test]
fn test_a_removed_members_earlier_message_reaches_a_later_reader_through_another_member() {
    let (clock, mut rs) = replicas(3);
    let members = vec![(rs[1].author(), Role::Member), (rs[2].author(), Role::Member)];
    let options = RoomOptions::default().members_only(members);
    let room = rs[0].create_room_opts("forward", &options).unwrap();
    let (a, rest) = rs.split_at_mut(1);
    common::join(&mut rest[0], &mut a[0], &room);
    let [a, b, c] = &mut rs[..] else { unreachable!() };
    let b_author = b.author();
    clock.advance(10);
    b.post(&room, Draft::text("B, before it left")).unwrap();
    hand_over(b, a, &room);
    let _ = announced(a);
    assert_eq!(bodies(a, &room), vec![Some("B, before it left".to_owned())]);

    // C joins; its keys reach A but never B, and C's request for B's
    // session reaches A while B is still a member: A leaves it to B.
    clock.advance(10);
    common::join(c, a, &room);
    hand_over(a, c, &room);
    let requests: Vec<_> = announced(c).into_iter().chain(c.deliveries(&room).unwrap()).collect();
    let _ = a.apply(&room, requests).unwrap();
    let early = announced(a);
    let _ = c.apply(&room, early).unwrap();
    assert_eq!(bodies(c, &room), vec![None], "B's message waits on C");

    // A removes B. B will never answer; A forwards B's session to C.
    clock.advance(10);
    a.govern(&room, Action::Remove { member: b_author }).unwrap();
    let forwarded = announced(a);
    assert!(!forwarded.is_empty(), "A forwarded the key once B left");
    common::spread_governance(a, c, &room);
    for outcome in c.apply(&room, forwarded.clone()).unwrap() {
        outcome.unwrap();
    }
    hand_over(a, c, &room);
    let view = c.snapshot(&room).unwrap();
    assert_eq!(view.messages.len(), 1, "shown once: {view:?}");
    assert_eq!(view.messages[0].body.as_deref(), Some("B, before it left"));
    assert_eq!(view.messages[0].author, b_author, "still B's message");
    assert_eq!(c.waiting_for_keys(&room).unwrap(), 0);
    // Applying the forward again changes nothing, and A forwards once.
    let _ = c.apply(&room, forwarded).unwrap();
    assert_eq!(c.snapshot(&room).unwrap(), view);
    hand_over(c, a, &room);
    assert!(announced(a).is_empty(), "nothing forwarded twice");
}
