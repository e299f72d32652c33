//! Room governance through the replica on real sled stores: a room is
//! founded with its members, invites are issued and redeemed, changes cross
//! between replicas in any order, refusals change nothing on disk, and a
//! reopened store holds the same governance and audit trail.
//!
//! The rooms here are unencrypted: these tests count governance changes,
//! heads and what waits exactly, and in an encrypted room every device adds
//! a change of its own (its published keys). What encryption adds to
//! governance is tested in `e2ee.rs`.

mod common;

use std::sync::Arc;

use concord_core::{
    Action, Applied, Clock, Delivery, Denied, DeviceKey, Draft, EnvelopeError, Error, GovApplied,
    GovChange, GovError, ManualClock, MemoryStore, Replica, Role, RoomId, Sent, SledStore,
    SyncMessage, SyncSession, MAX_PENDING_GOV_CHANGES,
};
use yrs::updates::decoder::Decode;
use yrs::{Any, Map, ReadTxn, Transact};

/// The options of these tests' rooms: unencrypted (see above).
fn plain() -> concord_core::RoomOptions {
    concord_core::RoomOptions::default().encrypted(false)
}

fn create_with<S: concord_core::Store>(
    r: &mut Replica<S>,
    name: &str,
    members: &[(concord_core::AuthorId, Role)],
) -> RoomId {
    r.create_room_opts(name, &plain().members_only(members.to_vec())).unwrap()
}

fn sled_replica(dir: &std::path::Path, seed: u8, clock: &Arc<ManualClock>) -> Replica<SledStore> {
    Replica::open_with_seed(SledStore::open(dir).unwrap(), clock.clone(), [seed; 32]).unwrap()
}

#[test]
fn test_governance_is_founded_shared_refused_and_kept_across_restarts() {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut alice = sled_replica(dirs[0].path(), 1, &clock);
    let mut bob = sled_replica(dirs[1].path(), 2, &clock);
    let mut carol = sled_replica(dirs[2].path(), 3, &clock);

    let room = create_with(&mut alice, "crew", &[(bob.author(), Role::Moderator)]);
    assert_eq!(alice.governance(&room).unwrap().role(&alice.author()), Some(Role::Admin));
    clock.advance(5);
    let (invite, _) = alice.invite(&room, Role::Member, Some(carol.author()), None).unwrap();

    // Bob joins and receives Alice's governance, newest first, one change
    // at a time: it waits, then lands whole.
    bob.join_room(alice.genesis(&room).unwrap().as_bytes()).unwrap();
    let changes = alice.governance_since(&room, &[]).unwrap();
    assert_eq!(changes.len(), 2);
    let outcomes = bob.apply_governance(&room, vec![changes[1].clone()]).unwrap();
    assert!(matches!(outcomes[0], Ok(GovApplied::Pending { .. })));
    let outcomes = bob.apply_governance(&room, vec![changes[0].clone()]).unwrap();
    assert!(matches!(&outcomes[0], Ok(GovApplied::Applied { accepted }) if accepted.len() == 2));
    assert_eq!(bob.governance(&room).unwrap(), alice.governance(&room).unwrap());
    assert_eq!(bob.governance(&room).unwrap().role(&bob.author()), Some(Role::Moderator));

    // Carol redeems her invite, and Alice and Bob accept her join.
    carol.join_room(alice.genesis(&room).unwrap().as_bytes()).unwrap();
    carol.apply_governance(&room, alice.governance_since(&room, &[]).unwrap()).unwrap();
    clock.advance(5);
    let join = carol.govern(&room, Action::Join(invite)).unwrap();
    for r in [&mut alice, &mut bob] {
        let out = r.apply_governance(&room, vec![join.clone()]).unwrap();
        assert!(matches!(out[0], Ok(GovApplied::Applied { .. })));
        assert_eq!(r.governance(&room).unwrap().role(&carol.author()), Some(Role::Member));
    }

    // Refusals are typed and write nothing.
    let before = common::dump(carol.store());
    assert!(matches!(
        carol.govern(&room, Action::SetName("mine".into())),
        Err(Error::Governance(GovError::Denied(Denied::Role { role: Role::Member, .. })))
    ));
    assert!(matches!(
        carol.govern(&room, Action::SetRole { member: carol.author(), role: Role::Admin }),
        Err(Error::Governance(GovError::Denied(_)))
    ));
    assert_eq!(common::dump(carol.store()), before);

    // A moderator's change reaches everyone.
    clock.advance(5);
    let topic = bob.govern(&room, Action::SetTopic("launch day".into())).unwrap();
    alice.apply_governance(&room, vec![topic.clone()]).unwrap();
    carol.apply_governance(&room, vec![topic]).unwrap();
    let state = alice.governance(&room).unwrap().clone();
    let history = alice.governance_history(&room).unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[3].author, bob.author());
    assert_eq!(state.topic(), "launch day");
    assert_eq!(carol.governance(&room).unwrap(), &state);

    // Reopened, every store holds the same governance and trail.
    let heads = alice.governance_heads(&room).unwrap();
    drop((alice, bob, carol));
    for (i, dir) in dirs.iter().enumerate() {
        let r = sled_replica(dir.path(), i as u8 + 1, &clock);
        assert_eq!(r.governance(&room).unwrap(), &state, "replica {i}");
        assert_eq!(r.governance_heads(&room).unwrap(), heads, "replica {i}");
        assert_eq!(r.governance_history(&room).unwrap(), history, "replica {i}");
    }
}

#[test]
fn test_a_corrupt_governance_record_is_a_typed_error_on_open() {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let dir = tempfile::tempdir().unwrap();
    let room = {
        let mut r = sled_replica(dir.path(), 1, &clock);
        r.create_room_opts("crew", &plain()).unwrap()
    };
    {
        // The replica's store lets go of its lock shortly after the drop.
        let db = (0..100)
            .find_map(|_| {
                sled::open(dir.path())
                    .map_err(|_| std::thread::sleep(std::time::Duration::from_millis(20)))
                    .ok()
            })
            .unwrap();
        let tree = db.open_tree("governance-1").unwrap();
        let (key, mut value) = tree.iter().next().unwrap().unwrap();
        assert_eq!(&key[..32], room.as_bytes());
        let mut bytes = value.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        value = bytes.into();
        tree.insert(key, value).unwrap();
        db.flush().unwrap();
    }
    let reopened = Replica::open_with_seed(SledStore::open(dir.path()).unwrap(), clock, [1; 32]);
    assert!(
        matches!(
            reopened,
            Err(Error::Store(concord_core::StoreError::Corrupt { tree: "governance-1", .. }))
        ),
        "{reopened:?}"
    );
}

/// An invite-only room on memory stores: Alice (admin), Mod (moderator),
/// Mia (member), Rob (read-only), and Eve, who is not a member. Everyone
/// holds the room's genesis and governance.
struct Crew {
    clock: Arc<ManualClock>,
    alice: Replica<MemoryStore>,
    moderator: Replica<MemoryStore>,
    mia: Replica<MemoryStore>,
    rob: Replica<MemoryStore>,
    eve: Replica<MemoryStore>,
    room: RoomId,
}

fn crew() -> Crew {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let mut moderator = common::memory_replica(2, &clock);
    let mut mia = common::memory_replica(3, &clock);
    let mut rob = common::memory_replica(4, &clock);
    let mut eve = common::memory_replica(5, &clock);
    let room = create_with(
        &mut alice,
        "crew",
        &[
            (moderator.author(), Role::Moderator),
            (mia.author(), Role::Member),
            (rob.author(), Role::ReadOnly),
        ],
    );
    for r in [&mut moderator, &mut mia, &mut rob, &mut eve] {
        common::join(r, &mut alice, &room);
    }
    clock.advance(10);
    Crew { clock, alice, moderator, mia, rob, eve, room }
}

fn denied(outcome: &Result<Applied, EnvelopeError>) -> bool {
    matches!(outcome, Err(EnvelopeError::Denied(_)))
}

/// One entry (`key` → `value` in root map `root`) written by hand into the
/// document of `seed`'s key, after `prior` (that key's earlier envelopes in
/// the bucket), in the bucket of `like`, citing `heads`, and signed by that
/// key: what a device must forge to get around its own replica's refusals.
fn forged_write(
    seed: u8,
    like: &Sent,
    prior: &[&Delivery],
    (root, key, value): (&str, String, Vec<u8>),
    heads: Vec<[u8; 32]>,
) -> Delivery {
    let author = DeviceKey::from_seed([seed; 32]).author();
    let client = concord_core::client_id(&author);
    let doc = yrs::Doc::with_client_id(client);
    let map = doc.get_or_insert_map(root);
    for d in prior {
        let update = yrs::Update::decode_v1(d.envelope.update()).unwrap();
        doc.transact_mut().apply_update(update).unwrap();
    }
    let before = doc.transact().state_vector();
    let start = prior.iter().map(|d| d.envelope.clock_range().1).max().unwrap_or(0);
    map.insert(&mut doc.transact_mut(), key, Any::Buffer(value.into()));
    let update = doc.transact().encode_state_as_update_v1(&before);
    let envelope = common::RawEnvelope {
        room: *like.delivery.envelope.room().as_bytes(),
        bucket: like.delivery.envelope.bucket(),
        author: *author.as_bytes(),
        client,
        clock_start: start,
        clock_end: start + 1,
        hlc: like.delivery.envelope.hlc().as_u64() + 1,
        update,
        blobs: vec![],
        gov_heads: heads,
    }
    .sign(&common::signing_key(seed));
    Delivery::from_bytes(&common::delivery_bytes(&envelope, &[])).unwrap()
}

/// A moderator's delete of `post` (root map `k`, docs/protocol.md), forged
/// by `seed`'s key.
fn forged_moderation(seed: u8, post: &Sent, prior: &[&Delivery], heads: Vec<[u8; 32]>) -> Delivery {
    let mut record = post.delivery.envelope.hlc().as_u64().to_be_bytes().to_vec();
    record.extend_from_slice(&(post.delivery.envelope.hlc().as_u64() + 1).to_be_bytes());
    let entry = ("k", post.id.as_uuid().simple().to_string(), record);
    forged_write(seed, post, prior, entry, heads)
}

/// A post (root map `m`) by `seed`'s key in the bucket of `like`, forged.
fn forged_post(seed: u8, like: &Sent, heads: Vec<[u8; 32]>) -> Delivery {
    let entry = ("m", "0192542eb4807eac881f0fb7637983b8".to_owned(), vec![1u8; 41]);
    forged_write(seed, like, &[], entry, heads)
}

#[test]
fn test_messages_are_judged_by_the_authors_role_at_the_heads_they_cite() {
    let mut c = crew();
    let room = c.room;
    // Members post; a read-only member and a non-member are refused at
    // home and, if they forge around that, by every receiver.
    let hello = c.mia.post(&room, Draft::text("hello from Mia")).unwrap();
    assert!(matches!(
        c.rob.post(&room, Draft::text("may I?")),
        Err(Error::Governance(GovError::Denied(Denied::Role { role: Role::ReadOnly, .. })))
    ));
    assert!(matches!(
        c.eve.post(&room, Draft::text("let me in")),
        Err(Error::Governance(GovError::Denied(Denied::NotMember)))
    ));
    for r in [&mut c.alice, &mut c.moderator, &mut c.rob, &mut c.eve] {
        assert_eq!(
            r.apply(&room, vec![hello.delivery.clone()]).unwrap(),
            vec![Ok(Applied::Applied)]
        );
    }
    // Eve and Rob get around their own replicas: they sign posts for this
    // room by hand, in the shape of Mia's, citing the current heads.
    let heads = c.alice.governance_heads(&room).unwrap();
    for (seed, who) in [(5u8, "a non-member"), (4u8, "a read-only member")] {
        let forged = forged_post(seed, &hello, heads.clone());
        let before = common::dump(c.alice.store());
        let out = c.alice.apply(&room, vec![forged]).unwrap();
        assert!(denied(&out[0]), "{who}'s post: {out:?}");
        assert_eq!(common::dump(c.alice.store()), before, "{who}'s post changed the store");
    }
    // Rob may still mark read.
    let read = c.rob.mark_read(&room, &hello.id).unwrap();
    assert_eq!(c.alice.apply(&room, vec![read.delivery]).unwrap(), vec![Ok(Applied::Applied)]);

    // A member deleting someone else's message: refused at home, and the
    // forged moderation tombstone is refused by receivers.
    let alices = c.alice.post(&room, Draft::text("Alice's own words")).unwrap();
    c.mia.apply(&room, vec![alices.delivery.clone()]).unwrap();
    assert!(
        matches!(c.mia.delete(&room, &alices.id), Err(Error::NotAuthor(id)) if id == alices.id)
    );
    let forged = forged_moderation(3, &alices, &[&hello.delivery], heads.clone());
    assert!(denied(&c.alice.apply(&room, vec![forged]).unwrap()[0]));
    assert!(c.alice.message_by_id(&room, &alices.id).unwrap().is_some());

    // A moderator's delete erases the message on every replica.
    c.moderator.apply(&room, vec![alices.delivery.clone()]).unwrap();
    c.clock.advance(10);
    let removal = c.moderator.delete(&room, &alices.id).unwrap();
    for r in [&mut c.alice, &mut c.mia] {
        assert_eq!(
            r.apply(&room, vec![removal.delivery.clone()]).unwrap(),
            vec![Ok(Applied::Applied)]
        );
        assert!(r.message_by_id(&room, &alices.id).unwrap().is_none());
        assert!(r.tombstones(&room).unwrap().iter().any(|t| t.id == alices.id));
        let canary = b"Alice's own words";
        assert!(
            !common::dump(r.store())
                .iter()
                .any(|(_, _, v)| v.windows(canary.len()).any(|w| w == canary)),
            "the moderated body is still stored"
        );
    }
    assert!(c.moderator.message_by_id(&room, &alices.id).unwrap().is_none());
}

#[test]
fn test_a_removed_members_later_messages_are_refused_and_concurrent_ones_stand() {
    let mut c = crew();
    let room = c.room;
    // Mia writes offline, citing the heads where she is a member...
    let concurrent = c.mia.post(&room, Draft::text("written before I knew")).unwrap();
    // ...while Alice removes her.
    c.clock.advance(10);
    let removal = c.alice.govern(&room, Action::Remove { member: c.mia.author() }).unwrap();
    // The concurrent post was allowed where it was made, and stands.
    assert_eq!(
        c.alice.apply(&room, vec![concurrent.delivery]).unwrap(),
        vec![Ok(Applied::Applied)]
    );
    // Once Mia's replica holds the removal, it refuses her posts, and a post
    // citing the removal (forged around that) is refused by everyone.
    c.mia.apply_governance(&room, vec![removal.clone()]).unwrap();
    assert!(matches!(
        c.mia.post(&room, Draft::text("still here")),
        Err(Error::Governance(GovError::Denied(Denied::NotMember)))
    ));
    let heads = c.alice.governance_heads(&room).unwrap();
    assert_eq!(heads, vec![removal.head()]);
    let like = c.alice.post(&room, Draft::text("a shape to copy")).unwrap();
    let later = forged_post(3, &like, heads);
    assert!(denied(&c.alice.apply(&room, vec![later]).unwrap()[0]));
    // A ban works the same, for a member and for a key that never was one.
    let ban = c.alice.govern(&room, Action::Ban { member: c.rob.author() }).unwrap();
    c.rob.apply_governance(&room, vec![removal, ban]).unwrap();
    assert!(c.rob.mark_read(&room, &like.id).is_err());
}

#[test]
fn test_a_key_outside_a_room_of_members_waits_for_nothing() {
    let mut c = crew();
    let room = c.room;
    // Alice admits Eve; Eve posts citing the admission, which Mia lacks.
    let admit = c
        .alice
        .govern(&room, Action::SetRole { member: c.eve.author(), role: Role::Member })
        .unwrap();
    c.eve.apply_governance(&room, vec![admit.clone()]).unwrap();
    c.clock.advance(10);
    let post = c.eve.post(&room, Draft::text("just admitted")).unwrap();
    // To Mia, Eve is no member: her post is not kept waiting for governance
    // that may never come (anyone could send such posts), and says nothing
    // against the sender.
    assert_eq!(
        c.mia.apply(&room, vec![post.delivery.clone()]).unwrap(),
        vec![Err(EnvelopeError::UnknownGovernance)]
    );
    assert_eq!(c.mia.pending_use(&room).unwrap(), (0, 0));
    // Catch-up brings governance before envelopes, and then it applies.
    c.mia.apply_governance(&room, vec![admit]).unwrap();
    assert_eq!(c.mia.apply(&room, vec![post.delivery]).unwrap(), vec![Ok(Applied::Applied)]);
}

#[test]
fn test_governance_from_a_stranger_waits_for_nothing_and_batches_apply_in_causal_order() {
    let mut c = crew();
    let room = c.room;
    // Alice invites Eve; Eve redeems it, so her Join depends on the invite.
    let (invite, registered) =
        c.alice.invite(&room, Role::Member, Some(c.eve.author()), None).unwrap();
    c.eve.apply_governance(&room, vec![registered.clone()]).unwrap();
    let join = c.eve.govern(&room, Action::Join(invite)).unwrap();
    // To Mia, who lacks the invite, Eve is no reader: her Join is not kept.
    let outcome = c.mia.apply_governance(&room, vec![join.clone()]).unwrap();
    assert_eq!(outcome, vec![Err(GovError::MissingDependencies)]);
    assert!(!outcome[0].as_ref().unwrap_err().is_senders_fault());
    // Both in one batch, the Join first (a store's order is by hash): the
    // batch is applied dependencies first, outcomes in the order given.
    let outcomes = c.mia.apply_governance(&room, vec![join.clone(), registered]).unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Ok(GovApplied::Applied { .. }))), "{outcomes:?}");
    assert_eq!(c.mia.governance(&room).unwrap().role(&c.eve.author()), Some(Role::Member));
    assert_eq!(c.mia.governance_heads(&room).unwrap(), vec![join.head()]);
}

#[test]
fn test_one_key_fills_only_its_share_of_the_governance_that_waits() {
    let mut c = crew();
    let room = c.room;
    // Alice renames the room's topic many times, each change on the last;
    // Mia misses the first, so all the others wait for it.
    let share = MAX_PENDING_GOV_CHANGES / concord_core::PENDING_AUTHOR_SHARE as usize;
    let changes: Vec<GovChange> = (0..share + 2)
        .map(|i| c.alice.govern(&room, Action::SetTopic(format!("topic {i}"))).unwrap())
        .collect();
    let outcomes = c.mia.apply_governance(&room, changes[1..].to_vec()).unwrap();
    let waiting = outcomes.iter().filter(|o| matches!(o, Ok(GovApplied::Pending { .. }))).count();
    assert_eq!(waiting, share, "one author's share waits");
    assert_eq!(outcomes.last(), Some(&Err(GovError::TooManyPending)));
    assert!(!GovError::TooManyPending.is_senders_fault());
    // The missing one arrives: everything waiting applies, and the refused
    // one, offered again, too.
    c.mia.apply_governance(&room, vec![changes[0].clone()]).unwrap();
    let last = changes.last().unwrap().clone();
    let outcomes = c.mia.apply_governance(&room, vec![last.clone()]).unwrap();
    assert!(matches!(outcomes[0], Ok(GovApplied::Applied { .. })), "{outcomes:?}");
    assert_eq!(c.mia.governance_heads(&room).unwrap(), vec![last.head()]);
}

#[test]
fn test_envelopes_wait_for_the_governance_they_cite_and_sync_carries_it() {
    let mut c = crew();
    let room = c.room;
    // Alice promotes Rob; Rob, now a member, posts citing that change.
    let promote = c
        .alice
        .govern(&room, Action::SetRole { member: c.rob.author(), role: Role::Member })
        .unwrap();
    c.rob.apply_governance(&room, vec![promote.clone()]).unwrap();
    c.clock.advance(10);
    let post = c.rob.post(&room, Draft::text("promoted")).unwrap();
    assert_eq!(post.delivery.envelope.gov_heads(), &[promote.head()]);
    // Mia has not seen the promotion: the post waits for it...
    assert_eq!(
        c.mia.apply(&room, vec![post.delivery.clone()]).unwrap(),
        vec![Ok(Applied::Pending)]
    );
    assert!(c.mia.message_by_id(&room, &post.id).unwrap().is_none());
    // ...and lands when it arrives.
    c.mia.apply_governance(&room, vec![promote]).unwrap();
    assert_eq!(
        c.mia.message_by_id(&room, &post.id).unwrap().unwrap().body.as_deref(),
        Some("promoted")
    );

    // A new device that holds only the genesis gets governance and messages
    // from one catch-up session, in either direction.
    for initiate in [true, false] {
        let mut fresh = common::memory_replica(if initiate { 9 } else { 10 }, &c.clock);
        fresh.join_room(c.alice.genesis(&room).unwrap().as_bytes()).unwrap();
        // A member (only readers are served the room's messages).
        c.alice
            .govern(&room, Action::SetRole { member: fresh.author(), role: Role::Member })
            .unwrap();
        c.alice.apply(&room, vec![post.delivery.clone()]).unwrap();
        let run = if initiate {
            common::sync_pair(&mut fresh, &mut c.alice, &room, c.clock.now_millis())
        } else {
            common::sync_pair(&mut c.alice, &mut fresh, &room, c.clock.now_millis())
        };
        assert_eq!(run.rejected, 0);
        assert_eq!(fresh.governance(&room).unwrap(), c.alice.governance(&room).unwrap());
        assert_eq!(fresh.snapshot(&room).unwrap(), c.alice.snapshot(&room).unwrap());
    }
}

/// Both directions of one catch-up between `a` and `b`.
fn sync_both(
    a: &mut Replica<MemoryStore>,
    b: &mut Replica<MemoryStore>,
    room: &RoomId,
    now: u64,
) -> u32 {
    let there = common::sync_pair(a, b, room, now);
    let back = common::sync_pair(b, a, room, now);
    assert_eq!(there.rejected + back.rejected, 0);
    there.withheld + back.withheld
}

fn bodies(r: &Replica<MemoryStore>, room: &RoomId) -> Vec<String> {
    let shown = r.snapshot(room).unwrap().messages;
    shown.into_iter().filter_map(|m| m.body).collect()
}

#[test]
fn test_catch_up_serves_messages_to_readers_only_and_governance_to_everyone() {
    let mut c = crew();
    let room = c.room;
    let now = c.clock.now_millis();
    c.alice.post(&room, Draft::text("for members")).unwrap();

    // Eve holds the genesis but no role: whichever side starts, she gets the
    // governance and none of the messages.
    let withheld = sync_both(&mut c.eve, &mut c.alice, &room, now);
    assert!(withheld >= 2, "withheld {withheld}");
    assert!(bodies(&c.eve, &room).is_empty());
    assert_eq!(c.eve.governance(&room).unwrap(), c.alice.governance(&room).unwrap());

    // A read-only member reads; a member reads.
    assert_eq!(sync_both(&mut c.rob, &mut c.alice, &room, now), 0);
    assert_eq!(bodies(&c.rob, &room), ["for members"]);
    assert_eq!(sync_both(&mut c.alice, &mut c.mia, &room, now), 0);
    assert_eq!(bodies(&c.mia, &room), ["for members"]);

    // Mia is removed: she learns of it by catch-up, and nothing posted
    // after it reaches her, from Alice or from Rob, whoever starts.
    c.clock.advance(10);
    c.alice.govern(&room, Action::Remove { member: c.mia.author() }).unwrap();
    c.alice.post(&room, Draft::text("after the removal")).unwrap();
    assert_eq!(sync_both(&mut c.rob, &mut c.alice, &room, now), 0);
    assert!(sync_both(&mut c.mia, &mut c.alice, &room, now) >= 2);
    assert!(sync_both(&mut c.rob, &mut c.mia, &room, now) >= 1);
    assert_eq!(bodies(&c.mia, &room), ["for members"]);
    assert_eq!(c.mia.governance(&room).unwrap(), c.alice.governance(&room).unwrap());
    assert!(c.mia.governance(&room).unwrap().role(&c.mia.author()).is_none());
    assert_eq!(bodies(&c.rob, &room), ["for members", "after the removal"]);

    // An invitee is served as soon as its join arrives, within one session:
    // the join travels in its flight and is applied before the answer.
    let invite = c.alice.invite(&room, Role::Member, Some(c.eve.author()), None).unwrap().0;
    assert_eq!(sync_both(&mut c.eve, &mut c.alice, &room, now) % 2, 0);
    c.clock.advance(10);
    c.eve.govern(&room, Action::Join(invite)).unwrap();
    let run = common::sync_pair(&mut c.eve, &mut c.alice, &room, c.clock.now_millis());
    assert_eq!((run.rejected, run.withheld), (0, 0));
    assert_eq!(bodies(&c.eve, &room), ["for members", "after the removal"]);
}

#[test]
fn test_a_session_that_does_not_know_its_peer_serves_governance_only() {
    let mut c = crew();
    let room = c.room;
    let now = c.clock.now_millis();
    c.alice.post(&room, Draft::text("members only")).unwrap();
    let (mut mia, mut to_alice) = SyncSession::initiate(&c.mia, &room, now).unwrap();
    mia.set_peer(c.alice.author());
    // Alice's side is never told who Mia is.
    let mut alice = SyncSession::respond(&c.alice, &room, now);
    for _ in 0..8 {
        let mut to_mia = Vec::new();
        for m in to_alice.drain(..) {
            to_mia.extend(alice.handle(&mut c.alice, &m, now).unwrap());
        }
        for m in to_mia {
            to_alice.extend(mia.handle(&mut c.mia, &m, now).unwrap());
        }
    }
    assert!(mia.is_done() && alice.is_done());
    assert!(alice.stats().flights_withheld >= 1);
    assert_eq!(alice.stats().envelopes_sent, 0);
    assert!(bodies(&c.mia, &room).is_empty());

    // Nor is history, to Eve (no role) or to a peer nobody named; Mia gets it.
    let fetch = SyncMessage::Fetch { room, before: u32::MAX, min_envelopes: 1 }.to_bytes();
    for peer in [Some(c.eve.author()), None, Some(c.mia.author())] {
        let mut alice = SyncSession::respond(&c.alice, &room, now);
        if let Some(peer) = peer {
            alice.set_peer(peer);
        }
        let replies = alice.handle(&mut c.alice, &fetch, now).unwrap();
        let Ok(SyncMessage::History { history, .. }) = SyncMessage::from_bytes(&replies[0]) else {
            panic!("not a history answer");
        };
        let reader = peer == Some(c.mia.author());
        assert_eq!(history.deliveries.is_empty(), !reader);
        assert_eq!(alice.stats().flights_withheld, u32::from(!reader));
        assert!(reader || !history.exhausted);
    }
}

#[test]
fn test_an_open_room_serves_everyone_but_the_banned() {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let mut bob = common::memory_replica(2, &clock);
    let mut stranger = common::memory_replica(3, &clock);
    let room = alice.create_room_opts("open", &plain()).unwrap();
    common::join(&mut bob, &mut alice, &room);
    stranger.join_room(alice.genesis(&room).unwrap().as_bytes()).unwrap();
    alice.post(&room, Draft::text("hello all")).unwrap();
    let now = clock.now_millis();
    assert_eq!(sync_both(&mut bob, &mut alice, &room, now), 0);
    assert_eq!(bodies(&bob, &room), ["hello all"]);
    clock.advance(10);
    alice.govern(&room, Action::Ban { member: bob.author() }).unwrap();
    alice.post(&room, Draft::text("bob is gone")).unwrap();
    assert!(sync_both(&mut bob, &mut alice, &room, now) >= 2);
    assert_eq!(bodies(&bob, &room), ["hello all"]);
    assert_eq!(sync_both(&mut stranger, &mut alice, &room, now), 0);
    assert_eq!(bodies(&stranger, &room), ["hello all", "bob is gone"]);
}
