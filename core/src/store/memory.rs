//! The in-memory twin of the sled store: the same trait, a `BTreeMap` per tree.
//! Used by tests and simulations, and by apps that want an ephemeral replica.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::{Entry, KeyRange, Order, SecretSlot, Store, Tree, WriteBatch};
use crate::error::StoreError;

type Trees = [BTreeMap<Vec<u8>, Vec<u8>>; Tree::ALL.len()];

/// A store that lives in memory; "durable" means committed under its lock.
#[derive(Default, Debug)]
pub struct MemoryStore {
    trees: Mutex<Trees>,
    secrets: Mutex<[Option<SecretSlot>; 2]>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An independent copy of everything committed so far: forks a replica
    /// for simulations (open the copy with the same device seed).
    pub fn snapshot(&self) -> Self {
        let secrets = *self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        Self { trees: Mutex::new(self.lock().clone()), secrets: Mutex::new(secrets) }
    }

    fn lock(&self) -> MutexGuard<'_, Trees> {
        // A panic while holding the lock cannot leave a tree half-written:
        // commit builds nothing in place before it has the lock, and BTreeMap
        // inserts are complete or absent. So a poisoned lock is still usable.
        self.trees.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()[tree.index()].get(key).cloned())
    }

    fn scan(
        &self,
        tree: Tree,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let trees = self.lock();
        let iter = trees[tree.index()].range::<[u8], _>(range.as_refs());
        let clone = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(match order {
            Order::Ascending => iter.take(limit).map(clone).collect(),
            Order::Descending => iter.rev().take(limit).map(clone).collect(),
        })
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut trees = self.lock();
        for (tree, key, value) in batch.into_writes() {
            match value {
                Some(v) => trees[tree.index()].insert(key, v),
                None => trees[tree.index()].remove(&key),
            };
        }
        Ok(())
    }

    fn secret_slots(&self) -> Result<[Option<SecretSlot>; 2], StoreError> {
        Ok(*self.secrets.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn write_secret_slot(&self, index: usize, slot: Option<SecretSlot>) -> Result<(), StoreError> {
        let mut secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let entry = secrets.get_mut(index).ok_or_else(|| StoreError::Io("no such slot".into()))?;
        *entry = slot;
        Ok(())
    }
}
