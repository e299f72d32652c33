//! `relay-ingest`: a relay storing the sync flights it receives. For each
//! flight Concord decodes and verifies every envelope (as a sync session
//! verifies what it receives), makes its row with `StoredEnvelope::of`, and
//! writes the flight with one `RelayStore::put_envelopes`; the baseline is
//! the raw store writing the same rows the same way. The sled half is here;
//! the DynamoDB half (feature `dynamodb`) is in `relay_dynamo.rs`.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use concord_core::{Draft, Envelope, ManualClock, MemoryStore, Op, Replica, RoomId, CHUNK_BYTES};
use concord_node::relay::{RelayStore, SledRelayStore, StoredEnvelope};
use rand::RngCore;

use super::report::{thousands, Goal, Metric, Report, Unit};
use super::stats::{column, runs, timed};
use super::workload::{busy_span, rng, Stream, Workload, START_MILLIS};
use super::Ctx;

/// Authors posting into the room, taking turns by commit.
const AUTHORS: usize = 4;

/// Messages per commit while the envelopes are made: one envelope each.
const COMMIT: usize = 100;

/// The sled relay store's trees (`node/src/relay/sled_backend.rs`), which
/// the raw baseline writes too.
const SLED_ENVELOPES: &str = "relay-envelopes-1";
const SLED_BUCKETS: &str = "relay-buckets-1";

/// The envelopes a relay receives, cut into the flights that carry them.
pub struct Ingest {
    /// The room they belong to.
    pub room: RoomId,
    /// Signed envelopes, oldest first.
    pub envelopes: Vec<Vec<u8>>,
    /// Flights: consecutive envelopes of up to [`CHUNK_BYTES`] (1 MiB), the
    /// size a sender cuts a catch-up flight into.
    pub flights: Vec<Range<usize>>,
    /// Each envelope's row, made once up front for the runs that store
    /// ready rows and for the raw baselines.
    pub rows: Vec<StoredEnvelope>,
}

impl Ingest {
    /// `count` posts of the seeded workload (times and bodies as every
    /// benchmark's) by [`AUTHORS`] authors in one room, [`COMMIT`] per
    /// commit, the authors taking turns by commit.
    pub fn generate(seed: u64, count: usize) -> Result<Self> {
        let w = Workload::generate(seed, count, busy_span(count));
        let mut keys = rng(seed, Stream::Authors);
        let clock = Arc::new(ManualClock::new(START_MILLIS));
        let mut replicas = Vec::with_capacity(AUTHORS);
        for i in 0..AUTHORS {
            let mut device = w.device_seed;
            if i > 0 {
                keys.fill_bytes(&mut device);
            }
            replicas.push(Replica::open_with_seed(MemoryStore::new(), clock.clone(), device)?);
        }
        let room = replicas[0].create_room_opts("relay bench", &super::unencrypted())?;
        let genesis = replicas[0].genesis(&room)?.as_bytes().to_vec();
        for replica in &mut replicas[1..] {
            replica.join_room(&genesis)?;
        }
        let mut envelopes = Vec::with_capacity(count);
        for (i, chunk) in w.messages.chunks(COMMIT).enumerate() {
            clock.set(chunk[0].at);
            let ops = chunk
                .iter()
                .map(|m| Op::Post { room, draft: Draft::text(m.body.clone()) })
                .collect();
            for sent in replicas[i % AUTHORS].commit(ops)? {
                envelopes.push(sent?.delivery.envelope.as_bytes().to_vec());
            }
        }
        let mut flights = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, e) in envelopes.iter().enumerate() {
            if bytes + e.len() > CHUNK_BYTES && i > start {
                flights.push(start..i);
                (start, bytes) = (i, 0);
            }
            bytes += e.len();
        }
        if start < envelopes.len() {
            flights.push(start..envelopes.len());
        }
        let rows = flights
            .iter()
            .map(|f| verify_flight(room, &envelopes[f.clone()]))
            .collect::<Result<Vec<_>>>()?
            .concat();
        Ok(Self { room, envelopes, flights, rows })
    }

    /// Bytes of all the envelopes.
    pub fn bytes(&self) -> usize {
        self.envelopes.iter().map(Vec::len).sum()
    }

    /// The workload, for a report.
    pub fn describe(&self) -> String {
        let buckets: BTreeSet<u32> = self.rows.iter().map(|r| r.bucket).collect();
        format!(
            "{} signed envelopes (one post each; bodies of 20–200 bytes, {AUTHORS} authors, \
             {COMMIT} posts per commit) in one room over {} one-day buckets, {:.1} MiB \
             (about {} bytes each), in {} flights of up to 1 MiB, stored one flight at a \
             time into a fresh store per run",
            thousands(self.envelopes.len() as f64),
            buckets.len(),
            self.bytes() as f64 / (1024.0 * 1024.0),
            thousands(self.bytes() as f64 / self.envelopes.len() as f64),
            self.flights.len(),
        )
    }
}

/// What a relay does with a received flight before it stores it: decode
/// each envelope and verify its signature (`Envelope::from_bytes`, as a
/// sync session validates what it receives), check it is for the room,
/// and make its row.
pub fn verify_flight(room: RoomId, envelopes: &[Vec<u8>]) -> Result<Vec<StoredEnvelope>> {
    envelopes
        .iter()
        .map(|bytes| {
            let envelope = Envelope::from_bytes(bytes).context("envelope verifies")?;
            ensure!(envelope.room() == room, "an envelope of another room");
            Ok(StoredEnvelope::of(&envelope))
        })
        .collect()
}

/// Concord's relay ingest: verify then `put_envelopes`, flight by flight.
pub async fn ingest<S: RelayStore>(store: &S, w: &Ingest) -> Result<()> {
    for flight in &w.flights {
        let rows = verify_flight(w.room, &w.envelopes[flight.clone()])?;
        store.put_envelopes(&rows).await?;
    }
    Ok(())
}

/// `put_envelopes` of the ready rows, flight by flight: the store alone.
pub async fn store_only<S: RelayStore>(store: &S, w: &Ingest) -> Result<()> {
    for flight in &w.flights {
        store.put_envelopes(&w.rows[flight.clone()]).await?;
    }
    Ok(())
}

/// Rows a relay store holds for the workload's room, read back through
/// its API.
pub async fn stored<S: RelayStore>(store: &S, room: RoomId) -> Result<usize> {
    let mut total = 0;
    for bucket in store.buckets(room).await? {
        total += store.envelopes(room, bucket, None, usize::MAX).await?.len();
    }
    Ok(total)
}

/// The distinct `room ‖ bucket` partitions of some rows: the bucket
/// entries a flight records.
pub fn partitions(rows: &[StoredEnvelope]) -> BTreeSet<(RoomId, u32)> {
    rows.iter().map(|r| (r.room, r.bucket)).collect()
}

/// Phases of one run; each run starts from a different one, so that the
/// machine's drift falls on all of them alike.
#[derive(Clone, Copy, Debug)]
pub enum Phase {
    /// Verify and store.
    Ingest,
    /// Store ready rows.
    StoreOnly,
    /// The raw baseline.
    Raw,
    /// Verify without storing.
    Verify,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::Ingest, Phase::StoreOnly, Phase::Raw, Phase::Verify];

    /// The phases of run `i` (from 0), rotated by `i`.
    pub fn order(i: usize) -> [Phase; 4] {
        let mut all = Self::ALL;
        all.rotate_left(i % Self::ALL.len());
        all
    }

    /// Where this phase's rate goes in a run's row.
    pub fn column(self) -> usize {
        self as usize
    }
}

/// Times decode and verify of every flight, storing nothing.
pub fn time_verify(w: &Ingest) -> Result<f64> {
    let (count, secs) = timed(|| {
        let mut count = 0;
        for flight in &w.flights {
            count += verify_flight(w.room, &w.envelopes[flight.clone()])?.len();
        }
        Ok(count)
    })?;
    ensure!(count == w.envelopes.len(), "verified {count} of {}", w.envelopes.len());
    Ok(secs)
}

/// The report of one half, from per-run rates in [`Phase`] columns.
pub fn report(
    name: &'static str,
    w: &Ingest,
    rows: &[[f64; 4]],
    baseline_name: &'static str,
    baseline: String,
) -> Report {
    let raw = column(rows, Phase::Raw.column());
    let ingest = Metric::compared(
        "relay ingest: decode, verify and store",
        Unit::EnvelopesPerSecond,
        &column(rows, Phase::Ingest.column()),
        &raw,
    );
    let store = Metric::compared(
        "store alone: `put_envelopes` of ready rows",
        Unit::EnvelopesPerSecond,
        &column(rows, Phase::StoreOnly.column()),
        &raw,
    );
    let verify = Metric::alone(
        "decode and verify alone, nothing stored",
        Unit::EnvelopesPerSecond,
        &column(rows, Phase::Verify.column()),
    );
    let ratio = ingest.ratio().unwrap_or(0.0);
    let store_ratio = store.ratio().unwrap_or(0.0);
    Report {
        name,
        workload: w.describe(),
        baseline_name,
        baseline,
        metrics: vec![ingest, store, verify],
        goals: vec![Goal::new(
            format!("relay ingest at least 0.8x {baseline_name}"),
            format!("{ratio:.2}x; the store alone {store_ratio:.2}x"),
            ratio >= 0.8,
        )],
    }
}

/// Envelopes in the full and the `--quick` workload.
pub fn size(ctx: &Ctx) -> usize {
    ctx.sizes.relay_envelopes
}

/// `relay-ingest-sled`: into [`SledRelayStore`], against raw sled.
///
/// Baseline: raw sled opened as the relay store opens it (`sled::open`,
/// default settings), the same two trees, the same keys and values; per
/// flight one `apply_batch` of the envelope rows, one of the flight's
/// bucket entries, and `flush_async`, as the store flushes once per
/// `put_envelopes`.
pub fn run_sled(ctx: &Ctx) -> Result<Report> {
    let w = Ingest::generate(ctx.seed, size(ctx))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let n = w.envelopes.len() as f64;
    let mut run = 0;
    let rows = runs("relay-ingest-sled", ctx.runs, || {
        let mut out = [0.0; 4];
        for phase in Phase::order(run) {
            let secs = match phase {
                Phase::Ingest | Phase::StoreOnly => {
                    let dir = tempfile::tempdir()?;
                    let store = SledRelayStore::open(dir.path())?;
                    let (_, secs) = timed(|| {
                        rt.block_on(async {
                            match phase {
                                Phase::Ingest => ingest(&store, &w).await,
                                _ => store_only(&store, &w).await,
                            }
                        })
                    })?;
                    let held = rt.block_on(stored(&store, w.room))?;
                    ensure!(held == w.rows.len(), "{phase:?}: {held} rows stored");
                    secs
                }
                Phase::Raw => {
                    let dir = tempfile::tempdir()?;
                    let db = sled::open(dir.path())?;
                    let envelopes = db.open_tree(SLED_ENVELOPES)?;
                    let buckets = db.open_tree(SLED_BUCKETS)?;
                    let (_, secs) = timed(|| rt.block_on(raw_sled(&db, &envelopes, &buckets, &w)))?;
                    ensure!(envelopes.len() == w.rows.len(), "raw: {} rows", envelopes.len());
                    secs
                }
                Phase::Verify => time_verify(&w)?,
            };
            out[phase.column()] = n / secs;
        }
        run += 1;
        Ok(out)
    })?;
    Ok(report(
        "relay-ingest-sled",
        &w,
        &rows,
        "raw sled",
        "sled opened as the relay store opens it, its two trees, the same keys \
         (room ‖ bucket ‖ hlc ‖ author ‖ blake3) and values; per flight one batch of \
         the envelope rows, one of its bucket entries, and a flush"
            .into(),
    ))
}

/// The raw sled baseline's writes: the relay store's keys and values,
/// one batch per tree and a flush per flight.
async fn raw_sled(
    db: &sled::Db,
    envelopes: &sled::Tree,
    buckets: &sled::Tree,
    w: &Ingest,
) -> Result<()> {
    for flight in &w.flights {
        let rows = &w.rows[flight.clone()];
        let mut index = sled::Batch::default();
        for (room, bucket) in partitions(rows) {
            index.insert([room.as_bytes().as_slice(), &bucket.to_be_bytes()].concat(), &[][..]);
        }
        let mut batch = sled::Batch::default();
        for r in rows {
            let key = [r.room.as_bytes().as_slice(), &r.bucket.to_be_bytes(), &r.key.to_bytes()];
            batch.insert(key.concat(), r.bytes.as_slice());
        }
        buckets.apply_batch(index)?;
        envelopes.apply_batch(batch)?;
        db.flush_async().await?;
    }
    Ok(())
}
