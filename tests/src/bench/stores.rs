//! The two systems under test, each on a real sled store in its own
//! temporary directory: a Concord replica with one room, and a raw sled tree.
//! Both are driven from a [`Workload`] with the same commit policy.

use std::cell::RefCell;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use concord_core::{
    Anchor, Cursor, Delivery, Draft, ManualClock, MessageId, Op, Replica, RoomId, SledStore, Store,
    MAX_PAGE,
};
use sled::IVec;
use tempfile::TempDir;

use super::crypto::Sender;
use super::workload::{KeyLayout, Msg, Workload, START_MILLIS};
use super::Rooms;

/// Messages per commit for group commit, unless a benchmark says otherwise.
pub const GROUP: usize = 100;

/// A Concord replica holding one room, on a ManualClock the workload moves.
pub struct ConcordRoom {
    pub replica: Replica<SledStore>,
    pub room: RoomId,
    /// Bytes of the deliveries (envelope and blobs) posted so far.
    pub sent_bytes: usize,
    clock: Arc<ManualClock>,
    dir: TempDir,
}

impl ConcordRoom {
    /// A new replica with the workload's device key, and an empty,
    /// unencrypted room.
    pub fn create(w: &Workload) -> Result<Self> {
        Self::create_in(w, Rooms::Unencrypted)
    }

    /// A new replica with the workload's device key, and an empty room of
    /// the kind `rooms` names.
    pub fn create_in(w: &Workload, rooms: Rooms) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let clock = Arc::new(ManualClock::new(START_MILLIS));
        let mut replica =
            Replica::open_with_seed(open_store(dir.path())?, clock.clone(), w.device_seed)?;
        let room = replica.create_room_opts("bench", &rooms.options())?;
        Ok(Self { replica, room, sent_bytes: 0, clock, dir })
    }

    /// Reopens a store left by [`ConcordRoom::close`].
    pub fn reopen(w: &Workload, dir: TempDir) -> Result<Self> {
        let clock = Arc::new(ManualClock::new(START_MILLIS));
        let replica =
            Replica::open_with_seed(open_store(dir.path())?, clock.clone(), w.device_seed)?;
        let room =
            replica.rooms().first().map(|r| r.id).ok_or_else(|| anyhow::anyhow!("no room"))?;
        Ok(Self { replica, room, sent_bytes: 0, clock, dir })
    }

    /// Posts `msgs`, `group` per commit (`post` when it is 1), the clock set
    /// to each commit's first message; returns the ids in order.
    pub fn post(&mut self, msgs: &[Msg], group: usize) -> Result<Vec<MessageId>> {
        let mut ids = Vec::with_capacity(msgs.len());
        for chunk in msgs.chunks(group) {
            self.clock.set(chunk[0].at);
            if let [one] = chunk {
                let sent = self.replica.post(&self.room, Draft::text(one.body.clone()))?;
                self.sent_bytes += delivery_bytes(&sent.delivery);
                ids.push(sent.id);
            } else {
                let ops = chunk
                    .iter()
                    .map(|m| Op::Post { room: self.room, draft: Draft::text(m.body.clone()) })
                    .collect();
                for sent in self.replica.commit(ops)? {
                    let sent = sent?;
                    self.sent_bytes += delivery_bytes(&sent.delivery);
                    ids.push(sent.id);
                }
            }
        }
        Ok(ids)
    }

    /// Deletes `ids`, `group` per commit, the clock past the last message.
    pub fn delete(&mut self, ids: &[MessageId], end: u64, group: usize) -> Result<()> {
        self.clock.set(end);
        for chunk in ids.chunks(group) {
            let ops = chunk.iter().map(|&id| Op::Delete { room: self.room, id }).collect();
            for sent in self.replica.commit(ops)? {
                sent?;
            }
        }
        Ok(())
    }

    /// Every message's cursor, oldest first.
    pub fn cursors(&self) -> Result<Vec<Cursor>> {
        let mut out = Vec::new();
        let mut anchor = Anchor::Latest;
        loop {
            let page = self.replica.page(&self.room, anchor, MAX_PAGE)?;
            out.extend(page.messages.iter().map(|m| m.cursor));
            match page.messages.last() {
                Some(last) if page.has_more => anchor = Anchor::Before(last.cursor),
                _ => break,
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Closes the replica and its store, keeping the directory.
    pub fn close(self) -> TempDir {
        self.dir
    }
}

/// `to` takes the governance changes of `room` that `from` holds and it
/// lacks, as the governance half of a catch-up does.
pub fn take_governance<S: Store, T: Store>(
    from: &Replica<S>,
    to: &mut Replica<T>,
    room: &RoomId,
) -> Result<()> {
    let changes = from.governance_since(room, &to.governance_heads(room)?)?;
    for outcome in to.apply_governance(room, changes)? {
        outcome?;
    }
    Ok(())
}

/// `joiner` joins `host`'s room as a first catch-up each way would leave
/// it: it takes the room's governance and publishes its device keys (in an
/// encrypted room), which the host then holds, so the host's posts are
/// encrypted for it.
pub fn join_with_keys<S: Store, T: Store>(
    joiner: &mut Replica<S>,
    host: &mut Replica<T>,
    room: &RoomId,
) -> Result<()> {
    joiner.join_room(host.genesis(room)?.as_bytes())?;
    take_governance(host, joiner, room)?;
    take_governance(joiner, host, room)
}

/// Bytes of a delivery as it travels: the envelope and its blobs.
pub fn delivery_bytes(d: &Delivery) -> usize {
    d.envelope.as_bytes().len() + d.blobs.iter().map(Vec::len).sum::<usize>()
}

/// A raw sled database with one tree of messages, opened like Concord's
/// store (no timed flushes; durability from explicit flushes). For
/// encrypted rooms it also does an encrypting device's work per message
/// ([`Sender::post`]) and stores what that gives.
pub struct RawSled {
    pub db: sled::Db,
    pub tree: sled::Tree,
    crypto: Option<RefCell<Sender>>,
    dir: TempDir,
}

impl RawSled {
    pub fn create() -> Result<Self> {
        Self::reopen(tempfile::tempdir()?)
    }

    /// A raw database for rooms of the kind `rooms` names; encrypted ones
    /// get a [`Sender`] seeded from `seed`.
    pub fn create_for(rooms: Rooms, seed: u64) -> Result<Self> {
        let mut raw = Self::create()?;
        if rooms == Rooms::Encrypted {
            raw.crypto = Some(RefCell::new(Sender::new(seed)));
        }
        Ok(raw)
    }

    pub fn reopen(dir: TempDir) -> Result<Self> {
        let (db, tree) = open_raw(dir.path())?;
        Ok(Self { db, tree, crypto: None, dir })
    }

    /// The value stored for `m` at `key`: its body, or for encrypted rooms
    /// the travelling ciphertext and the sealed body.
    fn value(&self, key: &[u8], m: &Msg) -> Result<IVec> {
        match &self.crypto {
            None => Ok(IVec::from(m.body.as_bytes())),
            Some(sender) => Ok(sender.borrow_mut().post(key, m.body.as_bytes())?.into()),
        }
    }

    /// The body of a stored entry of an encrypted room, its seal opened.
    pub fn body(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        match &self.crypto {
            None => anyhow::bail!("a raw store without encryption holds bodies as values"),
            Some(sender) => sender.borrow().open(key, value),
        }
    }

    /// Inserts `msgs` (key in `layout`, value the body), flushing after every
    /// `group` inserts; groups larger than one go in one sled batch.
    pub fn append(
        &self,
        w: &Workload,
        msgs: &[Msg],
        layout: KeyLayout,
        group: usize,
    ) -> Result<()> {
        for chunk in msgs.chunks(group) {
            if let [one] = chunk {
                let key = w.key(layout, one);
                let value = self.value(&key, one)?;
                self.tree.insert(key, value)?;
            } else {
                let mut batch = sled::Batch::default();
                for m in chunk {
                    let key = w.key(layout, m);
                    let value = self.value(&key, m)?;
                    batch.insert(key, value);
                }
                self.tree.apply_batch(batch)?;
            }
            self.db.flush()?;
        }
        Ok(())
    }

    /// Removes `msgs`, `group` per flushed batch.
    pub fn remove(
        &self,
        w: &Workload,
        msgs: &[Msg],
        layout: KeyLayout,
        group: usize,
    ) -> Result<()> {
        for chunk in msgs.chunks(group) {
            let mut batch = sled::Batch::default();
            for m in chunk {
                batch.remove(w.key(layout, m));
            }
            self.tree.apply_batch(batch)?;
            self.db.flush()?;
        }
        Ok(())
    }

    pub fn close(self) -> TempDir {
        self.dir
    }
}

/// Opens a raw baseline database at `path` and its tree of messages.
pub fn open_raw(path: &Path) -> Result<(sled::Db, sled::Tree)> {
    let db = open_sled(path)?;
    let tree = db.open_tree("messages")?;
    Ok((db, tree))
}

/// The raw page query: up to `limit` entries below `upper`, newest first.
pub fn newest(tree: &sled::Tree, upper: Bound<&[u8]>, limit: usize) -> Result<Vec<(IVec, IVec)>> {
    Ok(tree
        .range::<&[u8], _>((Bound::Unbounded, upper))
        .rev()
        .take(limit)
        .collect::<Result<_, _>>()?)
}

/// Opens a sled database the way `SledStore` does.
pub fn open_sled(path: &Path) -> Result<sled::Db> {
    when_unlocked(|| sled::Config::new().path(path).flush_every_ms(None).open())
}

/// Opens a Concord store.
pub fn open_store(path: &Path) -> Result<SledStore> {
    when_unlocked(|| SledStore::open(path))
}

/// How long to wait for a just-closed sled database to release its lock.
const UNLOCK_WAIT: Duration = Duration::from_secs(10);

/// Runs `open` until it stops failing on the directory lock. sled releases
/// the lock when its last background write of a closed database finishes,
/// which may be a moment after the database was dropped.
fn when_unlocked<T, E>(mut open: impl FnMut() -> Result<T, E>) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let start = Instant::now();
    loop {
        match open() {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                if start.elapsed() > UNLOCK_WAIT {
                    return Err(e.into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

/// Total bytes of the files under `path` (their lengths, as `ls` shows them).
pub fn dir_bytes(path: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_bytes(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

/// What a closed store holds.
pub struct StoreSize {
    /// Bytes of the files in its directory.
    pub files: u64,
    /// Bytes of every key and value in every tree: what the store logically
    /// holds, before sled's log and page overhead.
    pub entries: u64,
}

/// Sizes a closed sled directory: sled reopens it (recovery may rewrite or
/// reclaim segments), its entries are summed, it closes, and then its files
/// are measured.
pub fn settle(path: &Path) -> Result<StoreSize> {
    let db = open_sled(path)?;
    let mut entries = 0;
    for name in db.tree_names() {
        for entry in db.open_tree(name)?.iter() {
            let (k, v) = entry?;
            entries += (k.len() + v.len()) as u64;
        }
    }
    drop(db);
    Ok(StoreSize { files: dir_bytes(path)?, entries })
}

/// Checks that two systems returned the same number of messages.
pub fn same_count(what: &str, concord: usize, baseline: usize) -> Result<()> {
    ensure!(
        concord == baseline,
        "{what}: Concord returned {concord} messages, baseline {baseline}"
    );
    Ok(())
}
