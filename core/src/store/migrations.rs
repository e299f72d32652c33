//! Numbered schema migrations. A fresh store is stamped with the current
//! version; an older store runs each migration above its version, in order,
//! each in its own atomic batch; a newer store is refused with a typed error.

use super::tables::META_SCHEMA;
use super::{Store, Tree, WriteBatch};
use crate::error::StoreError;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

type Migration = fn(&dyn Store, &mut WriteBatch) -> Result<(), StoreError>;

/// `MIGRATIONS[i]` takes a store from version `i` to `i + 1`. Version 1 is the
/// first layout: it has nothing to convert.
const MIGRATIONS: [Migration; SCHEMA_VERSION as usize] = [initial_layout];

fn initial_layout(_store: &dyn Store, _batch: &mut WriteBatch) -> Result<(), StoreError> {
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
