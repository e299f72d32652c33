//! Two replicas on disk converge after exchanging their envelopes out of
//! order, with a delete that arrives before the post it deletes, and then
//! after a catch-up sync session.
//!
//! Run: `cargo run -p concord-examples --bin two-replicas` (add
//! `-- --data-dir DIR` to keep the stores instead of using temporary ones).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use concord_core::{Clock, Delivery, Draft, Replica, RoomId, SledStore, SyncSession, SystemClock};

/// The last eight hex digits of an id: UUIDv7s share their leading time bits.
fn short(id: impl std::fmt::Display) -> String {
    let s = id.to_string();
    s[s.len().saturating_sub(8)..].to_owned()
}

fn print_timeline(name: &str, replica: &Replica<SledStore>, room: &RoomId) -> Result<()> {
    let snapshot = replica.snapshot(room)?;
    println!(
        "\n{name}'s timeline ({} messages, {} deleted):",
        snapshot.messages.len(),
        snapshot.tombstones.len()
    );
    for m in &snapshot.messages {
        let who = &m.author.to_string()[..8];
        let body = m.body.as_deref().unwrap_or("<body not yet received>");
        let edited = if m.edited.is_some() { " (edited)" } else { "" };
        let reactions: Vec<String> =
            m.reactions.iter().map(|r| format!("{}x{}", r.emoji, r.authors.len())).collect();
        let reply = m.reply_to.map(|r| format!(" (reply to {})", short(r))).unwrap_or_default();
        println!("  [{}] {who}: {body}{edited}{reply} {}", short(m.id), reactions.join(" "));
    }
    for t in &snapshot.tombstones {
        println!("  [{}] {}: <deleted>", short(t.id), &t.author.to_string()[..8]);
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut data_dir: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--data-dir" => data_dir = Some(args.next().context("--data-dir needs a path")?.into()),
            "-h" | "--help" => {
                println!("usage: two-replicas [--data-dir DIR]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let temp = tempfile::tempdir()?;
    let base = data_dir.unwrap_or_else(|| temp.path().to_path_buf());
    let clock = Arc::new(SystemClock);
    let mut alice = Replica::open(SledStore::open(base.join("alice"))?, clock.clone())?;
    let mut bob = Replica::open(SledStore::open(base.join("bob"))?, clock)?;
    println!("stores in {}", base.display());

    let room = alice.create_room("plane trip")?;
    bob.join_room(alice.genesis(&room)?.as_bytes())?;
    // The room's governance (Alice founded it; it is an open room) travels
    // with the first catch-up; here Bob is handed it with the genesis.
    bob.apply_governance(&room, alice.governance_since(&room, &[])?)?;
    // The room is end-to-end encrypted: joining, Bob published his device's
    // keys in governance. Alice learns them as the first catch-up would tell
    // her, and from then on shares her room key with Bob's device.
    alice.apply_governance(&room, bob.governance_since(&room, &alice.governance_heads(&room)?)?)?;
    println!("room {room} (end-to-end encrypted: {})", alice.is_encrypted(&room)?);

    // Both write while offline from each other.
    let mut from_alice: Vec<Delivery> = Vec::new();
    let mut from_bob: Vec<Delivery> = Vec::new();
    let boarding = alice.post(&room, Draft::text("Boarding now, wifi off"))?;
    from_alice.push(boarding.delivery.clone());
    let secret = alice.post(&room, Draft::text("the door code is 4711"))?;
    from_alice.push(secret.delivery.clone());
    from_alice.push(alice.delete(&room, &secret.id)?.delivery);
    let seat = alice.post(&room, Draft::text("Seat 12A"))?;
    from_alice.push(seat.delivery.clone());
    from_alice.push(alice.edit(&room, &seat.id, "Seat 14C, they moved me")?.delivery);

    let safe = bob.post(&room, Draft::text("Safe flight!"))?;
    from_bob.push(safe.delivery.clone());
    let snack = bob.post(&room, Draft::text("Bring me a snack"))?;
    from_bob.push(snack.delivery);

    // Online again: Bob receives Alice's changes newest first, so the delete
    // of the secret arrives before the secret itself.
    println!("\nBob receives Alice's envelopes one at a time, newest first:");
    from_alice.reverse();
    for delivery in from_alice {
        let (start, end) = delivery.envelope.clock_range();
        let outcome = bob.apply(&room, vec![delivery])?;
        println!("  envelope for clocks {start}..{end}: {:?}", outcome[0]);
    }
    alice.apply(&room, from_bob)?;

    // Apart again: a reaction, a reply and a read marker, then one catch-up
    // session (digests, versions, missing envelopes) reconciles them.
    bob.react(&room, &boarding.id, "✈")?;
    alice.post(&room, Draft { reply_to: Some(safe.id), ..Draft::text("Thanks!") })?;
    alice.mark_read(&room, &safe.id)?;
    let now = SystemClock.now_millis();
    let (mut session_a, mut to_bob) = SyncSession::initiate(&alice, &room, now)?;
    let mut session_b = SyncSession::respond(&bob, &room, now);
    // Each side serves the room's messages only to an author with a role
    // there; over the network a node learns who the peer is from its
    // device certificate.
    session_a.set_peer(bob.author());
    session_b.set_peer(alice.author());
    while !to_bob.is_empty() {
        let mut to_alice = Vec::new();
        for message in &to_bob {
            to_alice.extend(session_b.handle(&mut bob, message, now)?);
        }
        to_bob.clear();
        for message in &to_alice {
            to_bob.extend(session_a.handle(&mut alice, message, now)?);
        }
    }
    let (a, b) = (session_a.stats(), session_b.stats());
    println!(
        "\ncatch-up session: {} flights, {} bytes, {} envelopes to Alice, {} to Bob",
        a.flights_sent + b.flights_sent,
        a.bytes_sent + b.bytes_sent,
        b.envelopes_sent,
        a.envelopes_sent
    );

    print_timeline("Alice", &alice, &room)?;
    print_timeline("Bob", &bob, &room)?;

    let converged = alice.snapshot(&room)? == bob.snapshot(&room)?;
    let leaked = bob
        .deliveries(&room)?
        .iter()
        .flat_map(|d| d.blobs.iter())
        .any(|b| b.windows(b"4711".len()).any(|w| w == b"4711"));
    println!("\nconverged: {converged}; deleted text still held by Bob: {leaked}");
    println!("unread for Bob: {}", bob.unread_count(&room)?);
    if !converged || leaked {
        bail!("the replicas did not converge cleanly");
    }
    Ok(())
}
