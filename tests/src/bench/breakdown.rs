//! `breakdown` and `breakdown-e2ee`: where a message's bytes and writes go,
//! tree by tree. Not a race: a diagnostic of the storage format, beside raw
//! sled holding the same messages as its baseline.
//!
//! A device posts the workload (100 per commit) into a room, a second
//! device applies every delivery (100 per call), and the first deletes
//! every message (100 per commit). A [`Counting`] store under each replica
//! counts what each commit writes, per tree: puts, deletes, key and value
//! bytes. After each phase the store is closed and every tree's keys and
//! values are summed from disk. Everything is per message.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use concord_core::{
    Draft, KeyRange, ManualClock, Op, Order, Replica, SecretSlot, SledStore, Store, StoreError,
    Tree, WriteBatch,
};

use super::report::{thousands, Metric, Report, Unit};
use super::stores::{join_with_keys, open_sled, open_store, settle, RawSled, GROUP};
use super::workload::{busy_span, KeyLayout, Workload, START_MILLIS};
use super::{Ctx, Rooms};

/// What commits wrote into one tree.
#[derive(Clone, Copy, Default, Debug)]
struct Written {
    puts: u64,
    deletes: u64,
    bytes: u64,
}

/// A store that counts what every commit writes, per tree, and passes
/// everything on to the store it wraps.
struct Counting<S> {
    inner: S,
    written: Counts,
}

impl<S: Store> Store for Counting<S> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }

    fn scan(
        &self,
        tree: Tree,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner.scan(tree, range, order, limit)
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            for (tree, key, value) in batch.iter() {
                let w = written.entry(tree.name()).or_default();
                match value {
                    Some(v) => {
                        w.puts += 1;
                        w.bytes += (key.len() + v.len()) as u64;
                    }
                    None => {
                        w.deletes += 1;
                        w.bytes += key.len() as u64;
                    }
                }
            }
        }
        self.inner.commit(batch)
    }

    fn secret_slots(&self) -> Result<[Option<SecretSlot>; 2], StoreError> {
        self.inner.secret_slots()
    }

    fn write_secret_slot(&self, index: usize, slot: Option<SecretSlot>) -> Result<(), StoreError> {
        self.inner.write_secret_slot(index, slot)
    }
}

type Counts = Arc<Mutex<BTreeMap<&'static str, Written>>>;

/// A replica on a counting sled store in `dir`, and its counters.
fn counted(
    dir: &Path,
    clock: &Arc<ManualClock>,
    seed: [u8; 32],
) -> Result<(Replica<Counting<SledStore>>, Counts)> {
    let written: Counts = Arc::default();
    let store = Counting { inner: open_store(dir)?, written: written.clone() };
    Ok((Replica::open_with_seed(store, clock.clone(), seed)?, written))
}

/// Key and value bytes every tree of the closed store at `path` holds.
fn held(path: &Path) -> Result<BTreeMap<String, u64>> {
    let db = open_sled(path)?;
    let mut out = BTreeMap::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name)?;
        let mut bytes = 0;
        for entry in tree.iter() {
            let (k, v) = entry?;
            bytes += (k.len() + v.len()) as u64;
        }
        if bytes > 0 {
            out.insert(String::from_utf8_lossy(&name).into_owned(), bytes);
        }
    }
    Ok(out)
}

/// One run's measurements, per message.
struct Measured {
    /// Phase name → tree → what its commits wrote.
    written: Vec<(&'static str, BTreeMap<&'static str, Written>)>,
    /// Phase name → tree → key and value bytes held after it.
    held: Vec<(&'static str, BTreeMap<String, u64>)>,
    /// File bytes after posting, and the same for raw sled.
    files: (u64, u64),
    /// Key and value bytes raw sled holds after the same posts, and its
    /// keys alone.
    raw_entries: u64,
    raw_keys: u64,
}

fn measure(w: &Workload, rooms: Rooms) -> Result<Measured> {
    let clock = Arc::new(ManualClock::new(START_MILLIS));
    let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut b_seed = w.device_seed;
    b_seed[0] ^= 0xff;
    let (mut a, a_written) = counted(a_dir.path(), &clock, w.device_seed)?;
    let (mut b, b_written) = counted(b_dir.path(), &clock, b_seed)?;
    let room = a.create_room_opts("breakdown", &rooms.options())?;
    join_with_keys(&mut b, &mut a, &room)?;
    let reset = |c: &Counts| std::mem::take(&mut *c.lock().unwrap_or_else(|e| e.into_inner()));
    reset(&a_written);
    reset(&b_written);

    let mut ids = Vec::with_capacity(w.messages.len());
    let mut deliveries = Vec::with_capacity(w.messages.len());
    for chunk in w.messages.chunks(GROUP) {
        clock.set(chunk[0].at);
        let ops =
            chunk.iter().map(|m| Op::Post { room, draft: Draft::text(m.body.clone()) }).collect();
        for sent in a.commit(ops)? {
            let sent = sent?;
            ids.push(sent.id);
            deliveries.push(sent.delivery);
        }
    }
    let posted = reset(&a_written);
    for chunk in deliveries.chunks(GROUP) {
        b.apply(&room, chunk.to_vec())?.into_iter().try_for_each(|o| o.map(drop))?;
    }
    let applied = reset(&b_written);
    drop(b);
    let b_held = held(b_dir.path())?;
    drop(a);
    let a_held = held(a_dir.path())?;
    let files = settle(a_dir.path())?.files;

    let (mut a, a_written) = counted(a_dir.path(), &clock, w.device_seed)?;
    clock.set(w.messages.last().map_or(START_MILLIS, |m| m.at + 1));
    for chunk in ids.chunks(GROUP) {
        let ops = chunk.iter().map(|&id| Op::Delete { room, id }).collect();
        a.commit(ops)?.into_iter().try_for_each(|o| o.map(drop))?;
    }
    a.shred()?;
    let deleted = reset(&a_written);
    drop(a);
    let dead_held = held(a_dir.path())?;

    let raw = RawSled::create()?;
    raw.append(w, &w.messages, KeyLayout::IdFirst, GROUP)?;
    let raw_dir = raw.close();
    let raw_size = settle(raw_dir.path())?;
    Ok(Measured {
        written: vec![
            ("posting (author)", posted),
            ("applying (receiver)", applied),
            ("deleting all (author, then one shred)", deleted),
        ],
        held: vec![
            ("after posting (author)", a_held),
            ("after applying (receiver)", b_held),
            ("after deleting all (author)", dead_held),
        ],
        files: (files, raw_size.files),
        raw_entries: raw_size.entries,
        raw_keys: w.messages.iter().map(|m| w.key(KeyLayout::IdFirst, m).len() as u64).sum(),
    })
}

/// `breakdown`: an unencrypted room.
pub fn run(ctx: &Ctx) -> Result<Report> {
    run_in(ctx, Rooms::Unencrypted)
}

/// `breakdown-e2ee`: an end-to-end encrypted room.
pub fn run_e2ee(ctx: &Ctx) -> Result<Report> {
    run_in(ctx, Rooms::Encrypted)
}

fn run_in(ctx: &Ctx, rooms: Rooms) -> Result<Report> {
    let n = ctx.sizes.disk;
    let w = Workload::generate(ctx.seed, n, busy_span(n));
    eprintln!("{}: one run (the counts do not vary)", rooms.name("breakdown", "breakdown-e2ee"));
    let m = measure(&w, rooms)?;
    let per = |v: u64| vec![v as f64 / n as f64];
    let mut metrics = Vec::new();
    for (phase, trees) in &m.written {
        let (mut puts, mut deletes, mut bytes) = (0, 0, 0);
        for (tree, t) in trees {
            metrics.push(Metric::alone(
                format!("{phase}: `{tree}` writes (puts + deletes) per message"),
                Unit::Ratio,
                &per(t.puts + t.deletes),
            ));
            metrics.push(Metric::alone(
                format!("{phase}: `{tree}` key + value bytes written per message"),
                Unit::Bytes,
                &per(t.bytes),
            ));
            (puts, deletes, bytes) = (puts + t.puts, deletes + t.deletes, bytes + t.bytes);
        }
        // Raw sled writes each message once: its entry, or its key removed.
        let raw_bytes = if phase.starts_with("deleting") { m.raw_keys } else { m.raw_entries };
        metrics.push(Metric::compared(
            format!("{phase}: all writes per message"),
            Unit::Ratio,
            &per(puts + deletes),
            &[1.0],
        ));
        metrics.push(Metric::compared(
            format!("{phase}: all key + value bytes written per message"),
            Unit::Bytes,
            &per(bytes),
            &per(raw_bytes),
        ));
    }
    for (phase, trees) in &m.held {
        let mut total = 0;
        for (tree, bytes) in trees {
            metrics.push(Metric::alone(
                format!("{phase}: `{tree}` key + value bytes held per message"),
                Unit::Bytes,
                &per(*bytes),
            ));
            total += bytes;
        }
        metrics.push(Metric::compared(
            format!("{phase}: all key + value bytes held per message"),
            Unit::Bytes,
            &per(total),
            &per(m.raw_entries),
        ));
    }
    let posted_held: u64 = m.held[0].1.values().sum();
    metrics.push(Metric::compared(
        "sled's amplification after posting: file bytes / key + value bytes",
        Unit::Ratio,
        &[m.files.0 as f64 / posted_held.max(1) as f64],
        &[m.files.1 as f64 / m.raw_entries.max(1) as f64],
    ));
    Ok(Report {
        name: rooms.name("breakdown", "breakdown-e2ee"),
        workload: format!(
            "{} messages of 20–200 bytes (4,000 per day of clock time) posted {GROUP} per \
             commit into one {} room by one device, applied {GROUP} per call by a second \
             device that joined first, then all deleted {GROUP} per commit by the first and \
             one shred; a store wrapper counts every commit's writes per tree, and each \
             closed store's trees are summed from disk (one run: the counts are the same \
             every run)",
            thousands(n as f64),
            match rooms {
                Rooms::Unencrypted => "unencrypted",
                Rooms::Encrypted => "end-to-end encrypted",
            }
        ),
        baseline_name: "raw sled",
        baseline: "one tree, key id ‖ author ‖ time, value the body: one write per message \
                   posted (and one per message deleted)"
            .into(),
        metrics,
        goals: Vec::new(),
    })
}
