//! Numbered schema migrations. A fresh store is stamped with the current
//! version; an older store runs each migration above its version, in order,
//! each in its own atomic batch; a newer store is refused with a typed error.

use std::collections::HashMap;

use super::tables::{self, META_SCHEMA};
use super::{KeyRange, Order, Store, Tree, WriteBatch};
use crate::crypto::rest;
use crate::error::StoreError;
use crate::ids::{RoomId, SortKey};
use crate::view::{bucket_of, Row};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 4;

type Migration = fn(&dyn Store, &mut WriteBatch) -> Result<(), StoreError>;

/// `MIGRATIONS[i]` takes a store from version `i` to `i + 1`. Version 1 is the
/// first layout: it has nothing to convert.
const MIGRATIONS: [Migration; SCHEMA_VERSION as usize] =
    [initial_layout, index_wanted_blobs, copy_bodies, seal_content];

fn initial_layout(_store: &dyn Store, _batch: &mut WriteBatch) -> Result<(), StoreError> {
    Ok(())
}

/// Calls `f` with the room, sort key and row of every stored timeline row.
fn for_each_row(
    store: &dyn Store,
    mut f: impl FnMut(RoomId, SortKey, Row) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { tree: Tree::Timeline.name(), reason };
    for (k, v) in
        store.scan(Tree::Timeline, &KeyRange::prefix(&[]), Order::Ascending, usize::MAX)?
    {
        let room: [u8; 32] = k
            .get(..32)
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| corrupt("short key".into()))?;
        let key = SortKey::from_bytes(&k[32..]).map_err(|e| corrupt(e.to_string()))?;
        let row = Row::decode(&v).map_err(|e| corrupt(e.to_string()))?;
        f(RoomId::from_bytes(room), key, row)?;
    }
    Ok(())
}

/// Version 2 adds `wanted-blobs-1` (and `windows-1`, empty until a room is
/// windowed): list every blob a stored timeline row references but the store
/// lacks, so catch-up sync can ask peers for it.
fn index_wanted_blobs(store: &dyn Store, batch: &mut WriteBatch) -> Result<(), StoreError> {
    for_each_row(store, |room, key, row| {
        for (i, hash) in row.blobs().enumerate() {
            if store.get(Tree::LegacyBlobs, &tables::blob_key(&room, hash))?.is_none() {
                let mut value = key.to_bytes().to_vec();
                value.push(u8::from(i > 0));
                batch.put(
                    Tree::WantedBlobs,
                    tables::wanted_blob_key(&room, bucket_of(key.hlc), hash),
                    value,
                );
            }
        }
        Ok(())
    })
}

/// Version 3 adds `bodies-1`: the body text of every live message whose body
/// blob is held, keyed like its timeline row.
fn copy_bodies(store: &dyn Store, batch: &mut WriteBatch) -> Result<(), StoreError> {
    for_each_row(store, |room, key, row| {
        let blob = store.get(Tree::LegacyBlobs, &tables::blob_key(&room, &row.body))?;
        if let Some(text) = blob.as_deref().and_then(crate::blob::body_text) {
            batch.put(Tree::LegacyBodies, tables::timeline_key(&room, &key), text.as_bytes());
        }
        Ok(())
    })
}

/// Version 4 seals content at rest (`replica/rest.rs`): every blob moves
/// from `blobs-1` to `blobs-2` under a new content key, every body text from
/// `bodies-1` to `bodies-2`, with bucket keys under a new key-encryption key
/// in the store's secret slots. The clear copies are deleted; the first
/// shred after opening makes what lingers of them in old segments the only
/// clear copies left, as with any store written before sealing (the
/// migration cannot reach into sled's segments).
fn seal_content(store: &dyn Store, batch: &mut WriteBatch) -> Result<(), StoreError> {
    let keys = |e: crate::error::Error| match e {
        crate::error::Error::Store(e) => e,
        other => StoreError::Io(other.to_string()),
    };
    let (_, kek) = rest::open_kek(store).map_err(keys)?;
    let mut bucket_keys: HashMap<(RoomId, u32), [u8; 32]> = HashMap::new();
    for_each_row(store, |room, key, row| {
        let bucket = bucket_of(key.hlc);
        let bucket_key = match bucket_keys.get(&(room, bucket)) {
            Some(k) => *k,
            None => {
                let k = rest::random_key().map_err(keys)?;
                let bk = tables::bucket_prefix(&room, bucket);
                batch.put(
                    Tree::BucketKeys,
                    bk.clone(),
                    rest::bucket_key_value(&bk, &k, &kek).map_err(keys)?,
                );
                bucket_keys.insert((room, bucket), k);
                k
            }
        };
        for (i, hash) in row.blobs().enumerate() {
            let legacy = tables::blob_key(&room, hash);
            let Some(blob) = store.get(Tree::LegacyBlobs, &legacy)? else { continue };
            let content_key = rest::random_key().map_err(keys)?;
            let ck = tables::content_key_key(&room, bucket, hash);
            batch.put(
                Tree::ContentKeys,
                ck.clone(),
                rest::content_key_value(&ck, &bucket_key, &content_key).map_err(keys)?,
            );
            let sealed = rest::blob_value(&legacy, bucket, &content_key, &blob).map_err(keys)?;
            batch.put_sealed(Tree::Blobs, legacy, sealed, blob);
            let tk = tables::timeline_key(&room, &key);
            if i == 0 {
                if let Some(text) = store.get(Tree::LegacyBodies, &tk)? {
                    let value =
                        rest::body_value(&tk, &bucket_key, &content_key, &text).map_err(keys)?;
                    batch.put(Tree::Bodies, tk, value);
                }
            }
        }
        Ok(())
    })?;
    let all = KeyRange::prefix(&[]);
    for (k, delivery) in store.scan(Tree::LegacyPending, &all, Order::Ascending, usize::MAX)? {
        let (Some(room), Some(bucket)) = (
            k.get(..32).and_then(|r| <[u8; 32]>::try_from(r).ok()).map(RoomId::from_bytes),
            tables::key_bucket(&k),
        ) else {
            continue;
        };
        let bucket_key = match bucket_keys.get(&(room, bucket)) {
            Some(key) => *key,
            None => {
                let key = rest::random_key().map_err(keys)?;
                let bk = tables::bucket_prefix(&room, bucket);
                let value = rest::bucket_key_value(&bk, &key, &kek).map_err(keys)?;
                batch.put(Tree::BucketKeys, bk, value);
                bucket_keys.insert((room, bucket), key);
                key
            }
        };
        let value = rest::pending_value(&k, &bucket_key, &delivery).map_err(keys)?;
        batch.put_sealed(Tree::Pending, k, value, delivery);
    }
    for tree in [Tree::LegacyBlobs, Tree::LegacyBodies, Tree::LegacyPending] {
        for (k, _) in store.scan(tree, &KeyRange::prefix(&[]), Order::Ascending, usize::MAX)? {
            batch.delete(tree, k);
        }
    }
    Ok(())
}

/// Brings `store` to [`SCHEMA_VERSION`].
pub(crate) fn migrate(store: &dyn Store) -> Result<(), StoreError> {
    let found = match store.get(Tree::Meta, META_SCHEMA)? {
        None => 0,
        Some(raw) => {
            let bytes: [u8; 4] = raw.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                tree: Tree::Meta.name(),
                reason: "schema version is not 4 bytes".into(),
            })?;
            u32::from_be_bytes(bytes)
        }
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { found, supported: SCHEMA_VERSION });
    }
    for version in found..SCHEMA_VERSION {
        let mut batch = WriteBatch::new();
        MIGRATIONS[version as usize](store, &mut batch)?;
        batch.put(Tree::Meta, META_SCHEMA, (version + 1).to_be_bytes());
        store.commit(batch)?;
    }
    Ok(())
}
