//! Erasure: after a delete (or an edit), the old content is gone from every
//! query, from everything the store would send, and from every logical record
//! of the store, also after a flush and a reopen; content never reaches
//! sled's files in the clear; and after a shred, the keys that sealed erased
//! content are gone from every file (see docs/architecture.md,
//! "Crypto-shredding").

mod common;

use std::sync::Arc;

use concord_core::{Anchor, Draft, ManualClock, Replica, SledStore};

const CANARY: &str = "CANARY-0b5e7c1d-do-not-keep";
const EDITED_CANARY: &str = "CANARY-edited-away-93f1";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every place a replica could show or send the canary.
fn assert_gone(replica: &Replica<SledStore>, room: &concord_core::RoomId, canary: &str) {
    let snapshot = replica.snapshot(room).unwrap();
    assert!(!contains(format!("{snapshot:?}").as_bytes(), canary), "a query shows the canary");
    let page = replica.page(room, Anchor::Latest, 100).unwrap();
    assert!(!contains(format!("{page:?}").as_bytes(), canary), "a page shows the canary");
    for d in replica.deliveries(room).unwrap() {
        assert!(!contains(&d.to_bytes(), canary), "a delivery would send the canary");
    }
    for (tree, k, v) in common::dump(replica.store()) {
        assert!(!contains(&k, canary) && !contains(&v, canary), "tree {tree:?} holds the canary");
    }
}

#[test]
fn test_deleted_and_edited_away_content_is_erased_from_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let path = dir.path().join("alice");
    let (room, secret_id, attachment_hash) = {
        let mut alice =
            Replica::open_with_seed(SledStore::open(&path).unwrap(), clock.clone(), [1; 32])
                .unwrap();
        let room = alice.create_room("erasure").unwrap();
        alice.post(&room, Draft::text("an ordinary message")).unwrap();
        let secret = alice
            .post(
                &room,
                Draft {
                    text: CANARY.into(),
                    attachments: vec![CANARY.as_bytes().repeat(3)],
                    ..Draft::default()
                },
            )
            .unwrap();
        let attachment_hash =
            alice.message_by_id(&room, &secret.id).unwrap().unwrap().attachments[0];
        assert_eq!(
            alice.attachment(&room, &attachment_hash).unwrap(),
            Some(CANARY.as_bytes().repeat(3))
        );
        let typo = alice.post(&room, Draft::text(EDITED_CANARY)).unwrap();
        clock.advance(1_000);
        alice.edit(&room, &typo.id, "fixed text").unwrap();
        alice.delete(&room, &secret.id).unwrap();
        (room, secret.id, attachment_hash)
    };

    // Reopen: the commit flushed, so what we see now is what is durable.
    let alice = Replica::open_with_seed(SledStore::open(&path).unwrap(), clock, [1; 32]).unwrap();
    assert_eq!(alice.message_by_id(&room, &secret_id).unwrap(), None);
    assert_eq!(alice.attachment(&room, &attachment_hash).unwrap(), None);
    assert_eq!(alice.tombstones(&room).unwrap().len(), 1);
    assert_gone(&alice, &room, CANARY);
    assert_gone(&alice, &room, EDITED_CANARY);
    let texts: Vec<_> =
        alice.snapshot(&room).unwrap().messages.into_iter().filter_map(|m| m.body).collect();
    assert_eq!(texts, vec!["an ordinary message", "fixed text"]);

    // Content is sealed at rest, so neither canary ever reached sled's files
    // in the clear, although sled keeps old versions of pages in its segments.
    drop(alice);
    for canary in [CANARY, EDITED_CANARY] {
        assert_eq!(files_hold(&path, canary.as_bytes()), 0, "{canary} is on disk in the clear");
    }
}

/// The key in the active secret slot of a sled store's secret file
/// (`docs/protocol.md`: two slots of seq u64 ‖ key ‖ check).
fn secret_keys(dir: &std::path::Path) -> Vec<[u8; 32]> {
    let bytes = std::fs::read(dir.join(concord_core::SECRET_FILE)).unwrap();
    assert_eq!(bytes.len(), 96);
    bytes
        .chunks(48)
        .filter(|slot| slot.iter().any(|b| *b != 0))
        .map(|slot| slot[8..40].try_into().unwrap())
        .collect()
}

fn files_hold(dir: &std::path::Path, needle: &[u8]) -> usize {
    common::files(dir)
        .iter()
        .filter(|f| {
            let bytes = std::fs::read(f).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
        .count()
}

#[test]
fn test_a_delete_leaves_nothing_readable_on_disk_after_shred() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let path = dir.path().join("alice");
    let mut alice =
        Replica::open_with_seed(SledStore::open(&path).unwrap(), clock.clone(), [1; 32]).unwrap();
    let room = alice.create_room("shred").unwrap();
    alice.post(&room, Draft::text("an ordinary message")).unwrap();
    let secret = alice
        .post(
            &room,
            Draft {
                text: CANARY.into(),
                attachments: vec![CANARY.as_bytes().repeat(3)],
                ..Draft::default()
            },
        )
        .unwrap();
    let message = alice.message_by_id(&room, &secret.id).unwrap().unwrap();
    let hashes: Vec<_> = secret.delivery.envelope.blob_hashes().to_vec();
    assert_eq!(hashes.len(), 2);
    let keys: Vec<[u8; 32]> =
        hashes.iter().map(|h| alice.content_key_of(&room, h).unwrap().unwrap()).collect();
    let old_secrets = secret_keys(&path);
    assert_eq!(old_secrets.len(), 1);
    assert_eq!(message.body.as_deref(), Some(CANARY));
    // Content is sealed from the start: the canary and its keys never reach
    // the disk in the clear.
    assert_eq!(files_hold(&path, CANARY.as_bytes()), 0);
    for key in &keys {
        assert_eq!(files_hold(&path, key), 0);
    }

    alice.delete(&room, &secret.id).unwrap();
    assert!(alice.shred_pending().unwrap());
    assert_eq!(alice.shred().unwrap(), 1);
    assert!(!alice.shred_pending().unwrap());
    assert_eq!(alice.shred().unwrap(), 0, "nothing left to shred");
    for h in &hashes {
        assert_eq!(alice.content_key_of(&room, h).unwrap(), None);
    }
    drop(alice);

    // The key-encryption key that sealed the canary's bucket key is gone
    // from every file: the sealed copies sled may keep in old segments open
    // under no key that exists.
    let new_secrets = secret_keys(&path);
    assert_eq!(new_secrets.len(), 1);
    assert_ne!(new_secrets, old_secrets);
    assert_eq!(files_hold(&path, &old_secrets[0]), 0, "the old key-encryption key remains");
    assert_eq!(files_hold(&path, CANARY.as_bytes()), 0);
    for key in &keys {
        assert_eq!(files_hold(&path, key), 0);
    }
    // And the rest of the room reads as before.
    let alice = Replica::open_with_seed(SledStore::open(&path).unwrap(), clock, [1; 32]).unwrap();
    let texts: Vec<_> =
        alice.snapshot(&room).unwrap().messages.into_iter().filter_map(|m| m.body).collect();
    assert_eq!(texts, vec!["an ordinary message"]);
}

#[test]
fn test_a_shred_interrupted_before_its_commit_leaves_the_store_readable() {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let store = std::sync::Arc::new(concord_core::MemoryStore::new());
    let mut alice = Replica::open_with_seed(store.clone(), clock.clone(), [1; 32]).unwrap();
    let room = alice.create_room("interrupted").unwrap();
    alice.post(&room, Draft::text("still here")).unwrap();
    drop(alice);
    // A shred writes the new key into the free slot first; a crash right
    // after leaves both slots full and the trees sealed under the old key.
    use concord_core::{SecretSlot, Store};
    let slots = store.secret_slots().unwrap();
    let free = slots.iter().position(Option::is_none).unwrap();
    let active = slots[1 - free].unwrap();
    store
        .write_secret_slot(free, Some(SecretSlot { seq: active.seq + 1, key: [0x5a; 32] }))
        .unwrap();
    let alice = Replica::open_with_seed(store.clone(), clock, [1; 32]).unwrap();
    let texts: Vec<_> =
        alice.snapshot(&room).unwrap().messages.into_iter().filter_map(|m| m.body).collect();
    assert_eq!(texts, vec!["still here"]);
    // Opening finished the interrupted rotation: the stray key is gone.
    assert_eq!(store.secret_slots().unwrap()[free], None);
}
