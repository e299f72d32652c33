//! Migration from a store the previous release wrote. `fixtures/store-schema-3.txt`
//! is every record of a sled store written by the release before content was
//! sealed at rest (schema 3): a room with an edit, a delete, an attachment,
//! a reaction, a read marker, two buckets and a delivery waiting for its
//! predecessor. Each line is `tree key value` in hex; `# missing` is the
//! delivery the waiting one needs.

mod common;

use std::sync::Arc;

use concord_core::{
    Delivery, Draft, KeyRange, ManualClock, Order, Replica, RoomId, SledStore, Store, Tree,
    WriteBatch,
};

const FIXTURE: &str = include_str!("fixtures/store-schema-3.txt");
/// Every body and attachment of the fixture holds one of these.
const CANARIES: [&str; 7] = [
    "canary-one",
    "canary-two",
    "canary-three",
    "canary-four",
    "canary-five",
    "canary-six",
    "canary-seven",
];

struct Fixture {
    room: RoomId,
    missing: Delivery,
}

/// Writes the fixture's records into a fresh sled store in `dir`.
fn load(dir: &std::path::Path) -> Fixture {
    let store = SledStore::open(dir).unwrap();
    let mut batch = WriteBatch::new();
    let mut room = None;
    let mut missing = None;
    for line in FIXTURE.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["#", "room", id] => room = Some(id.parse::<RoomId>().unwrap()),
            ["#", "missing", bytes] => {
                missing = Some(Delivery::from_bytes(&hex::decode(bytes).unwrap()).unwrap())
            }
            [tree, key, value] => {
                let tree = Tree::ALL.into_iter().find(|t| t.name() == *tree).unwrap();
                batch.put(tree, hex::decode(key).unwrap(), hex::decode(value).unwrap());
            }
            _ => panic!("bad fixture line {line}"),
        }
    }
    store.commit(batch).unwrap();
    Fixture { room: room.unwrap(), missing: missing.unwrap() }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn test_a_schema_3_store_migrates_and_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = load(dir.path());
    let room = fixture.room;
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS + 3 * 86_400_000));
    let store = SledStore::open(dir.path()).unwrap();
    let mut alice = Replica::open_with_seed(store, clock.clone(), [1; 32]).unwrap();

    // Its room was made before encryption and stays unencrypted, and says so.
    assert!(!alice.is_encrypted(&room).unwrap());
    let listed = alice.rooms();
    assert_eq!(listed.iter().map(|r| (r.id, r.encrypted)).collect::<Vec<_>>(), [(room, false)]);

    // Everything the old store showed, the new one shows.
    let shown = alice.snapshot(&room).unwrap();
    let bodies: Vec<&str> = shown.messages.iter().filter_map(|m| m.body.as_deref()).collect();
    assert_eq!(bodies, ["first edited canary-four", "with attachment", "bob one canary-five"]);
    let with_attachment = &shown.messages[1];
    assert_eq!(with_attachment.reply_to, Some(shown.messages[0].id));
    assert_eq!(with_attachment.reactions.len(), 1);
    assert_eq!(with_attachment.reactions[0].emoji, "👍");
    assert_eq!(
        alice.attachment(&room, &with_attachment.attachments[0]).unwrap().as_deref(),
        Some(b"attachment canary-two bytes".as_slice())
    );
    assert_eq!(shown.tombstones.len(), 1);
    assert_eq!(shown.read_markers.len(), 1);

    // Content is sealed now: no tree holds any of it in the clear, and the
    // trees of the old layout are empty.
    let records = common::dump(alice.store());
    for (tree, k, v) in &records {
        for canary in CANARIES {
            assert!(
                !contains(v, canary.as_bytes()) && !contains(k, canary.as_bytes()),
                "{canary} in the clear in {}",
                tree.name()
            );
        }
    }
    let all = KeyRange::prefix(&[]);
    for tree in [Tree::LegacyBlobs, Tree::LegacyBodies] {
        assert!(alice.store().scan(tree, &all, Order::Ascending, 1).unwrap().is_empty());
    }
    let schema = alice.store().get(Tree::Meta, b"schema").unwrap().unwrap();
    assert_eq!(schema, 4u32.to_be_bytes());

    // It keeps working: the waiting delivery applies once its predecessor
    // arrives, new posts and deletes work, and it reopens.
    alice.apply(&room, vec![fixture.missing]).unwrap().pop().unwrap().unwrap();
    let sent = alice.post(&room, Draft::text("after the migration")).unwrap();
    alice.delete(&room, &shown.messages[0].id).unwrap();
    alice.shred().unwrap();
    drop(alice);
    let store = SledStore::open(dir.path()).unwrap();
    let alice = Replica::open_with_seed(store, clock, [1; 32]).unwrap();
    let bodies: Vec<String> =
        alice.snapshot(&room).unwrap().messages.into_iter().filter_map(|m| m.body).collect();
    assert_eq!(
        bodies,
        [
            "with attachment",
            "bob one canary-five",
            "bob two canary-six",
            "bob three waits canary-seven",
            "after the migration"
        ]
    );
    assert!(alice.message_by_id(&room, &sent.id).unwrap().is_some());
}
