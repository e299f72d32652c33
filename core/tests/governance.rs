//! Room governance through the replica on real sled stores: a room is
//! founded with its members, invites are issued and redeemed, changes cross
//! between replicas in any order, refusals change nothing on disk, and a
//! reopened store holds the same governance and audit trail.

mod common;

use std::sync::Arc;

use concord_core::{
    Action, Denied, Error, GovApplied, GovError, ManualClock, Replica, Role, SledStore,
};

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

    let room = alice.create_room_with("crew", &[(bob.author(), Role::Moderator)]).unwrap();
    assert_eq!(alice.governance(&room).unwrap().role(&alice.author()), Some(Role::Admin));
    clock.advance(5);
    let invite = alice.invite(&room, Role::Member, Some(carol.author()), None).unwrap();

    // Bob joins and receives Alice's governance, newest first: it waits,
    // then lands whole.
    bob.join_room(alice.genesis(&room).unwrap().as_bytes()).unwrap();
    let mut changes = alice.governance_since(&room, &[]).unwrap();
    assert_eq!(changes.len(), 2);
    changes.reverse();
    let outcomes = bob.apply_governance(&room, changes).unwrap();
    assert!(matches!(outcomes[0], Ok(GovApplied::Pending { .. })));
    assert!(matches!(&outcomes[1], Ok(GovApplied::Applied { accepted }) if accepted.len() == 2));
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
        let mut r = sled_replica(dir.path(), i as u8 + 1, &clock);
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
        r.create_room("crew").unwrap()
    };
    {
        let db = sled::open(dir.path()).unwrap();
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
