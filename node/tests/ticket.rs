//! Room tickets: round trips, caps, a ticket in the format before invites,
//! and hostile text (random, mutated, oversized) that never panics and never
//! yields a room its genesis did not found or an invite its issuer did not
//! sign.

use std::sync::Arc;

use concord_core::{Invite, ManualClock, MemoryStore, Replica, Role};
use concord_node::{Multiaddr, RoomTicket, TicketError, MAX_TICKET_CHARS, TICKET_PREFIX};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

fn genesis() -> concord_core::Genesis {
    genesis_and_invite().0
}

/// The room's genesis, and an invite to it for whoever redeems it first.
fn genesis_and_invite() -> (concord_core::Genesis, Invite) {
    let clock = Arc::new(ManualClock::new(1_750_000_000_000));
    let mut r = Replica::open_with_seed(MemoryStore::new(), clock, [3; 32]).unwrap();
    // Unencrypted, as every room was when version 1 tickets were written.
    let options = concord_core::RoomOptions::default().encrypted(false);
    let room = r.create_room_opts("ticketed", &options).unwrap();
    let (invite, _) = r.invite(&room, Role::Member, None, None).unwrap();
    (r.genesis(&room).unwrap().clone(), invite)
}

/// What `RoomTicket::new(genesis(), addresses())` printed before tickets
/// carried invites (format version 1).
const VERSION_ONE_TICKET: &str = "concord1aeaioq2oindqf3kjfddcruocy3vosazysbmzkyjjlettuxdd7e3dnqkgcswion6raglxiig4aaaaacdunfrwwzlumvsaclba2oxni5rl4a4xeffirxoglt6vrtgu5djoknpe7d4iot4wwnatqd4xzvrdt5ntgozwf4t3nhrtc7m2m7pssbg3df4p6dw54eujpfin3krfgtc4ujrezylnmdar7qmqqayabach6aaaaeda7iiac4uqaaaaaaaaaaaaaaaaaaaaaaaadeicb6q42ayacy3bc4tfnrqxsltfpbqw24dmmuxg64thaya3w";

fn addresses() -> Vec<Multiaddr> {
    vec![
        "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
        "/ip6/::1/udp/4001/quic-v1".parse().unwrap(),
        "/dns4/relay.example.org/tcp/443".parse().unwrap(),
    ]
}

/// Cases per property, with a fixed seed printed for replay (`CONCORD_SEED`).
fn runner(name: &str) -> TestRunner {
    let seed =
        std::env::var("CONCORD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        });
    println!("{name}: seed {seed}");
    TestRunner::new(Config {
        cases: 10_000,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn test_ticket_round_trips_and_names_its_room() {
    let g = genesis();
    let ticket = RoomTicket::new(g.clone(), addresses()).unwrap();
    let text = ticket.to_string();
    assert!(text.starts_with(TICKET_PREFIX));
    assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{text}");
    let parsed: RoomTicket = text.parse().unwrap();
    assert_eq!(parsed, ticket);
    assert_eq!(parsed.room_id(), g.room_id());
    assert_eq!(parsed.addresses(), addresses().as_slice());
    // Whitespace from copy and paste is forgiven; a ticket without addresses is fine.
    assert_eq!(format!("  {text}\n").parse::<RoomTicket>().unwrap(), ticket);
    let bare = RoomTicket::new(g, Vec::new()).unwrap();
    assert_eq!(bare.to_string().parse::<RoomTicket>().unwrap(), bare);
}

#[test]
fn test_a_ticket_from_before_invites_still_parses_and_is_still_written() {
    let ticket = RoomTicket::new(genesis(), addresses()).unwrap();
    assert_eq!(VERSION_ONE_TICKET.parse::<RoomTicket>().unwrap(), ticket);
    // Without an invite, a ticket is written as before, so older builds
    // still read it.
    assert_eq!(ticket.to_string(), VERSION_ONE_TICKET);
    assert!(ticket.invite().is_none());
}

#[test]
fn test_ticket_with_an_invite_round_trips_as_text() {
    let (g, invite) = genesis_and_invite();
    let ticket = RoomTicket::new(g, addresses()).unwrap().with_invite(invite.clone()).unwrap();
    let text = ticket.to_string();
    assert!(text.starts_with(TICKET_PREFIX) && text.len() <= MAX_TICKET_CHARS, "{text}");
    let parsed: RoomTicket = text.parse().unwrap();
    assert_eq!(parsed, ticket);
    assert_eq!(parsed.invite(), Some(&invite));
    assert_eq!(parsed.addresses(), addresses().as_slice());
}

#[test]
fn test_bad_tickets_are_typed_errors() {
    let ticket = RoomTicket::new(genesis(), addresses()).unwrap().to_string();
    assert_eq!("hello".parse::<RoomTicket>(), Err(TicketError::Prefix));
    assert_eq!(
        ticket.to_uppercase().parse::<RoomTicket>(),
        Err(TicketError::Prefix),
        "the prefix is lowercase"
    );
    let upper = format!("{TICKET_PREFIX}{}", ticket[TICKET_PREFIX.len()..].to_uppercase());
    assert_eq!(upper.parse::<RoomTicket>(), Err(TicketError::Encoding));
    assert_eq!(format!("{ticket}!").parse::<RoomTicket>(), Err(TicketError::Encoding));
    let long = format!("{TICKET_PREFIX}{}", "a".repeat(MAX_TICKET_CHARS));
    assert!(matches!(long.parse::<RoomTicket>(), Err(TicketError::TooLong(_))));
    let cut = &ticket[..ticket.len() - 8];
    assert!(cut.parse::<RoomTicket>().is_err());
    let many = vec![addresses()[0].clone(); 17];
    assert!(matches!(RoomTicket::new(genesis(), many), Err(TicketError::Malformed(_))));
}

#[test]
fn test_random_text_never_panics_and_is_refused() {
    let mut runner = runner("test_random_text_never_panics_and_is_refused");
    let strategy = prop_oneof![
        any::<String>(),
        "[a-z2-7]{0,400}".prop_map(|s| format!("{TICKET_PREFIX}{s}")),
    ];
    runner
        .run(&strategy, |text| {
            // Nothing random carries a valid signature.
            prop_assert!(text.parse::<RoomTicket>().is_err());
            Ok(())
        })
        .unwrap();
}

#[test]
fn test_mutated_tickets_never_yield_another_room_or_invite() {
    let (g, invite) = genesis_and_invite();
    let text = RoomTicket::new(g.clone(), addresses())
        .unwrap()
        .with_invite(invite.clone())
        .unwrap()
        .to_string();
    let body = text[TICKET_PREFIX.len()..].to_owned();
    let mut runner = runner("test_mutated_tickets_never_yield_another_room_or_invite");
    let strategy = prop::collection::vec((any::<prop::sample::Index>(), "[a-z2-7]"), 1..6);
    runner
        .run(&strategy, |edits| {
            let mut chars: Vec<char> = body.chars().collect();
            for (at, c) in &edits {
                let i = at.index(chars.len());
                chars[i] = c.chars().next().unwrap_or('a');
            }
            let mutated = format!("{TICKET_PREFIX}{}", chars.iter().collect::<String>());
            if let Ok(t) = mutated.parse::<RoomTicket>() {
                // Only the addresses can change; the genesis and the
                // invite are signed.
                prop_assert_eq!(t.room_id(), g.room_id());
                prop_assert_eq!(t.invite(), Some(&invite));
            }
            Ok(())
        })
        .unwrap();
}
