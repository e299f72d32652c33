//! The sled backend: one sled tree per [`Tree`], multi-tree transactions for
//! atomic batches, and a flush before [`Store::commit`] returns.
//!
//! sled 0.34 may panic on some corrupt files instead of returning an error;
//! opening is wrapped so a corrupt store is a typed [`StoreError::Open`].
//!
//! The two secret slots live beside sled's files in [`SECRET_FILE`], a file
//! of fixed size whose slots are overwritten in place and synced: unlike a
//! value in sled's log, a slot's old bytes do not survive its overwrite in
//! the file's contents.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{Entry, KeyRange, Order, SecretSlot, Store, Tree, WriteBatch, SECRET_SLOT_BYTES};
use crate::error::StoreError;

/// How long [`SledStore::open`] waits for a lock a just-closed database
/// still holds.
pub const SLED_LOCK_WAIT: Duration = Duration::from_secs(5);

/// sled's page cache for [`SledStore::open`]: sled's own default (1 GiB)
/// is far more than a phone should give a chat store; 64 MiB holds the
/// recent buckets of busy rooms. [`SledStore::open_with_cache`] sets another.
pub const DEFAULT_SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The file, in the store's directory, that holds the two secret slots.
pub const SECRET_FILE: &str = "concord-secret";

/// A store in a sled database on disk.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// The secret file, opened once; writes to it are serialized.
    secret: Arc<Mutex<File>>,
    path: PathBuf,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the database in `path`.
    ///
    /// sled holds an exclusive file lock while a database is open, and a
    /// dropped database releases it only when sled's background thread has
    /// let go, a moment later. A reopen in that moment (an app restarting
    /// its store) waits up to [`SLED_LOCK_WAIT`] for the lock instead of failing;
    /// a lock held by another process fails after that wait.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_SLED_CACHE_BYTES)
    }

    /// Like [`SledStore::open`], with a page cache of about `cache_bytes`.
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: u64) -> Result<Self, StoreError> {
        let start = Instant::now();
        loop {
            match Self::open_once(path.as_ref(), cache_bytes) {
                Err(StoreError::Open(e))
                    if e.contains("could not acquire lock") && start.elapsed() < SLED_LOCK_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let opened = catch_unwind(AssertUnwindSafe(|| -> Result<Self, StoreError> {
            let db = sled::Config::new()
                .path(&path)
                // Durability comes from the explicit flush in commit, not a timer.
                .flush_every_ms(None)
                .cache_capacity(cache_bytes)
                .open()
                .map_err(|e| StoreError::Open(e.to_string()))?;
            let trees = Tree::ALL
                .iter()
                .map(|t| db.open_tree(t.name()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Open(e.to_string()))?;
            let secret = open_secret_file(&path)?;
            Ok(Self { db, trees, secret: Arc::new(Mutex::new(secret)), path: path.clone() })
        }));
        match opened {
            Ok(result) => result,
            Err(_) => Err(StoreError::Open(format!(
                "sled panicked while opening {}: the store is corrupt",
                path.display()
            ))),
        }
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(io)
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens (creating it with two empty slots) the secret file in `dir`.
fn open_secret_file(dir: &Path) -> Result<File, StoreError> {
    let open = |e: std::io::Error| StoreError::Open(format!("secret file: {e}"));
    let path = dir.join(SECRET_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(open)?;
    let len = file.metadata().map_err(open)?.len();
    if len == 0 {
        file.write_all(&[0u8; 2 * SECRET_SLOT_BYTES]).map_err(open)?;
        file.sync_all().map_err(open)?;
    } else if len != 2 * SECRET_SLOT_BYTES as u64 {
        return Err(StoreError::Open(format!(
            "secret file {} is {len} bytes, not {}",
            path.display(),
            2 * SECRET_SLOT_BYTES
        )));
    }
    Ok(file)
}

impl Store for SledStore {
    fn secret_slots(&self) -> Result<[Option<SecretSlot>; 2], StoreError> {
        let mut file = self.secret.lock().unwrap_or_else(|p| p.into_inner());
        let mut bytes = [0u8; 2 * SECRET_SLOT_BYTES];
        file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::Io(e.to_string()))?;
        file.read_exact(&mut bytes).map_err(|e| StoreError::Io(e.to_string()))?;
        Ok([
            SecretSlot::decode(&bytes[..SECRET_SLOT_BYTES])?,
            SecretSlot::decode(&bytes[SECRET_SLOT_BYTES..])?,
        ])
    }

    fn write_secret_slot(&self, index: usize, slot: Option<SecretSlot>) -> Result<(), StoreError> {
        if index > 1 {
            return Err(StoreError::Io(format!("no secret slot {index}")));
        }
        let io = |e: std::io::Error| StoreError::Io(format!("secret file: {e}"));
        let mut file = self.secret.lock().unwrap_or_else(|p| p.into_inner());
        // In place: the same bytes of the same file, then synced, so the
        // slot's old key is gone from the file once this returns.
        file.seek(SeekFrom::Start((index * SECRET_SLOT_BYTES) as u64)).map_err(io)?;
        file.write_all(&SecretSlot::encode(slot.as_ref())).map_err(io)?;
        file.sync_data().map_err(io)
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.trees[tree.index()].get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        tree: Tree,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let iter = self.trees[tree.index()].range::<&[u8], _>(range.as_refs());
        let pair = |r: sled::Result<(sled::IVec, sled::IVec)>| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io)
        };
        match order {
            Order::Ascending => iter.take(limit).map(pair).collect(),
            Order::Descending => iter.rev().take(limit).map(pair).collect(),
        }
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut per_tree: Vec<sled::Batch> =
            Tree::ALL.iter().map(|_| sled::Batch::default()).collect();
        for (tree, key, value) in batch.into_writes() {
            match value {
                Some(v) => per_tree[tree.index()].insert(key, v),
                None => per_tree[tree.index()].remove(key),
            }
        }
        self.trees
            .as_slice()
            .transaction(|views| {
                for (view, batch) in views.iter().zip(&per_tree) {
                    view.apply_batch(batch)?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| match e {
                TransactionError::Storage(e) => io(e),
                TransactionError::Abort(()) => StoreError::Io("transaction aborted".into()),
            })?;
        // Acknowledged means durable: the flush writes and fsyncs sled's log.
        self.db.flush().map_err(io)?;
        Ok(())
    }
}
