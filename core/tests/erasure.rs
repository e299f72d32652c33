//! Erasure: after a delete (or an edit), the old content is gone from every
//! query, from everything the store would send, and from every logical record
//! of the store, also after a flush and a reopen. Whether the bytes linger in
//! sled's files on disk is measured and printed (see docs/architecture.md).

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

    // Measured, not asserted: sled is log-structured and leaves old versions
    // of pages in its segment files until segments are reused.
    drop(alice);
    let mut on_disk = 0;
    for f in common::files(&path) {
        let bytes = std::fs::read(&f).unwrap();
        on_disk +=
            usize::from(contains(&bytes, CANARY)) + usize::from(contains(&bytes, EDITED_CANARY));
    }
    println!("erasure: canary bytes remain in {on_disk} place(s) of sled's files after delete, flush and reopen");
}
