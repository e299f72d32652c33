//! One conformance suite for every [`Store`](super::Store) backend, invoked by
//! a macro per backend. It checks the contract the replica relies on: ordered
//! ranges in both directions, last-write-wins within a batch, atomic batches,
//! durability across reopen, and agreement with a `BTreeMap` model under
//! random operation sequences.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{KeyRange, Order, SecretSlot, Store, Tree, WriteBatch};

/// A backend under test: a way to open it, and to reopen the same data.
pub(crate) trait Backend {
    type S: Store;
    fn open(&mut self) -> Self::S;
}

pub(crate) fn check_get_put_delete<B: Backend>(mut b: B) {
    let s = b.open();
    assert_eq!(s.get(Tree::Meta, b"k").unwrap(), None);
    let mut batch = WriteBatch::new();
    batch.put(Tree::Meta, b"k".to_vec(), b"v1".to_vec());
    batch.put(Tree::Rooms, b"k".to_vec(), b"other tree".to_vec());
    s.commit(batch).unwrap();
    assert_eq!(s.get(Tree::Meta, b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(s.get(Tree::Rooms, b"k").unwrap().as_deref(), Some(&b"other tree"[..]));
    let mut batch = WriteBatch::new();
    batch.put(Tree::Meta, b"k".to_vec(), b"v2".to_vec());
    batch.delete(Tree::Meta, b"k".to_vec());
    batch.put(Tree::Meta, b"k".to_vec(), b"v3".to_vec());
    s.commit(batch).unwrap();
    assert_eq!(s.get(Tree::Meta, b"k").unwrap().as_deref(), Some(&b"v3"[..]));
    let mut batch = WriteBatch::new();
    batch.delete(Tree::Meta, b"k".to_vec());
    s.commit(batch).unwrap();
    assert_eq!(s.get(Tree::Meta, b"k").unwrap(), None);
    assert_eq!(s.get(Tree::Rooms, b"k").unwrap().as_deref(), Some(&b"other tree"[..]));
}

pub(crate) fn check_scan_order_and_limits<B: Backend>(mut b: B) {
    let s = b.open();
    let mut batch = WriteBatch::new();
    for k in [[1u8, 0], [1, 5], [1, 255], [2, 0], [0, 9]] {
        batch.put(Tree::Timeline, k.to_vec(), vec![k[1]]);
    }
    s.commit(batch).unwrap();
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let p = KeyRange::prefix(&[1]);
    assert_eq!(
        keys(s.scan(Tree::Timeline, &p, Order::Ascending, 10).unwrap()),
        vec![vec![1, 0], vec![1, 5], vec![1, 255]]
    );
    assert_eq!(
        keys(s.scan(Tree::Timeline, &p, Order::Descending, 2).unwrap()),
        vec![vec![1, 255], vec![1, 5]]
    );
    let r = KeyRange::between(&[1, 1], &[2, 0]);
    assert_eq!(
        keys(s.scan(Tree::Timeline, &r, Order::Ascending, 10).unwrap()),
        vec![vec![1, 5], vec![1, 255]]
    );
    assert!(s.scan(Tree::Timeline, &p, Order::Ascending, 0).unwrap().is_empty());
}

pub(crate) fn check_secret_slots<B: Backend>(mut b: B) {
    let s = b.open();
    assert_eq!(s.secret_slots().unwrap(), [None, None]);
    let one = SecretSlot { seq: 1, key: [7; 32] };
    let two = SecretSlot { seq: 2, key: [9; 32] };
    s.write_secret_slot(0, Some(one)).unwrap();
    assert_eq!(s.secret_slots().unwrap(), [Some(one), None]);
    s.write_secret_slot(1, Some(two)).unwrap();
    s.write_secret_slot(0, None).unwrap();
    assert_eq!(s.secret_slots().unwrap(), [None, Some(two)]);
    assert!(s.write_secret_slot(2, Some(one)).is_err());
    drop(s);
    // The slots are durable, and independent of the trees.
    let s = b.open();
    assert_eq!(s.secret_slots().unwrap(), [None, Some(two)]);
    assert_eq!(s.get(Tree::Meta, b"kek-seq").unwrap(), None);
}

pub(crate) fn check_reopen_keeps_committed<B: Backend>(mut b: B) {
    {
        let s = b.open();
        let mut batch = WriteBatch::new();
        for i in 0..100u32 {
            batch.put(Tree::Envelopes, i.to_be_bytes().to_vec(), vec![i as u8; 10]);
        }
        s.commit(batch).unwrap();
    }
    let s = b.open();
    let all =
        s.scan(Tree::Envelopes, &KeyRange::prefix(&[]), Order::Ascending, usize::MAX).unwrap();
    assert_eq!(all.len(), 100);
    assert_eq!(all[42], (42u32.to_be_bytes().to_vec(), vec![42u8; 10]));
}

#[derive(Debug, Clone)]
pub(crate) enum ModelOp {
    Put(u8, Vec<u8>, Vec<u8>),
    Delete(u8, Vec<u8>),
    Commit,
}

pub(crate) fn model_ops() -> impl Strategy<Value = Vec<ModelOp>> {
    let key = proptest::collection::vec(0u8..4, 0..4);
    let op = prop_oneof![
        4 => (0u8..3, key.clone(), proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(t, k, v)| ModelOp::Put(t, k, v)),
        2 => (0u8..3, key).prop_map(|(t, k)| ModelOp::Delete(t, k)),
        1 => Just(ModelOp::Commit),
    ];
    proptest::collection::vec(op, 0..60)
}

/// Runs `ops` against the store and a `BTreeMap` model; every committed state
/// must agree on every tree, for every prefix scan in both directions.
pub(crate) fn check_against_model<S: Store>(s: &S, ops: &[ModelOp]) {
    let trees = [Tree::Meta, Tree::Envelopes, Tree::Timeline];
    let mut staged: [BTreeMap<Vec<u8>, Vec<u8>>; 3] = Default::default();
    let mut batch = WriteBatch::new();
    let compare = |model: &[BTreeMap<Vec<u8>, Vec<u8>>; 3]| {
        for (i, tree) in trees.iter().enumerate() {
            for prefix in [&[][..], &[0], &[1, 2], &[3]] {
                let want: Vec<_> = model[i]
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let range = KeyRange::prefix(prefix);
                assert_eq!(s.scan(*tree, &range, Order::Ascending, usize::MAX).unwrap(), want);
                let mut rev = want.clone();
                rev.reverse();
                rev.truncate(3);
                assert_eq!(s.scan(*tree, &range, Order::Descending, 3).unwrap(), rev);
            }
        }
    };
    for op in ops {
        match op {
            ModelOp::Put(t, k, v) => {
                batch.put(trees[*t as usize], k.clone(), v.clone());
                staged[*t as usize].insert(k.clone(), v.clone());
            }
            ModelOp::Delete(t, k) => {
                batch.delete(trees[*t as usize], k.clone());
                staged[*t as usize].remove(k);
            }
            ModelOp::Commit => {
                s.commit(std::mem::take(&mut batch)).unwrap();
                compare(&staged);
            }
        }
    }
    s.commit(batch).unwrap();
    compare(&staged);
}

/// Instantiates the suite for a backend: `$backend` builds a fresh [`Backend`].
macro_rules! store_conformance {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn test_get_put_delete() {
                check_get_put_delete($backend);
            }
            #[test]
            fn test_scan_order_and_limits() {
                check_scan_order_and_limits($backend);
            }
            #[test]
            fn test_secret_slots_are_durable_and_overwritten_in_place() {
                check_secret_slots($backend);
            }
            #[test]
            fn test_reopen_keeps_committed() {
                check_reopen_keeps_committed($backend);
            }
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(64))]
                #[test]
                fn test_agrees_with_btreemap_model(ops in model_ops()) {
                    let mut b = $backend;
                    let s = b.open();
                    check_against_model(&s, &ops);
                }
            }
        }
    };
}

/// The memory store "reopens" by sharing the same instance.
struct Memory(std::sync::Arc<super::MemoryStore>);

impl Backend for Memory {
    type S = std::sync::Arc<super::MemoryStore>;
    fn open(&mut self) -> Self::S {
        self.0.clone()
    }
}

/// The sled store reopens the same directory.
struct Sled(tempfile::TempDir);

impl Backend for Sled {
    type S = super::SledStore;
    fn open(&mut self) -> Self::S {
        super::SledStore::open(self.0.path().join("db")).unwrap()
    }
}

store_conformance!(memory, Memory(Default::default()));
store_conformance!(sled, Sled(tempfile::tempdir().unwrap()));

#[test]
fn test_a_torn_slot_reads_as_empty_and_an_intact_one_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = super::SledStore::open(dir.path()).unwrap();
    let one = SecretSlot { seq: 5, key: [3; 32] };
    s.write_secret_slot(0, Some(one)).unwrap();
    drop(s);
    // A crash while writing slot 1 leaves it half written.
    let path = dir.path().join(super::SECRET_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[48..60].copy_from_slice(&[0xab; 12]);
    std::fs::write(&path, &bytes).unwrap();
    let s = super::SledStore::open(dir.path()).unwrap();
    assert_eq!(s.secret_slots().unwrap(), [Some(one), None]);
}

#[test]
fn test_a_secret_file_of_the_wrong_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(super::SledStore::open(dir.path()).unwrap());
    std::fs::write(dir.path().join(super::SECRET_FILE), b"short").unwrap();
    assert!(matches!(super::SledStore::open(dir.path()), Err(crate::error::StoreError::Open(_))));
}
