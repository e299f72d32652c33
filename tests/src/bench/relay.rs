//! `relay-ingest`: a relay storing the sync flights it receives. For each
//! flight Concord decodes and verifies every envelope (as a sync session
//! verifies what it receives, `Envelope::from_bytes_many`, over the
//! cores), makes its row with `StoredEnvelope::of`, and writes the flight
//! with one `RelayStore::put_envelopes`; the baseline checks the same
//! signatures the same way with ed25519-dalek alone ([`raw_verify`]) and
//! has the raw store write the same rows the same way. The sled half is here;
//! the DynamoDB half (feature `dynamodb`) is in `relay_dynamo.rs`.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use concord_core::{Draft, Envelope, ManualClock, MemoryStore, Op, Replica, RoomId, CHUNK_BYTES};
use concord_node::relay::{RelayStore, SledRelayStore, StoredEnvelope};
use ed25519_dalek::{Signature, VerifyingKey};
use rand::RngCore;

use super::report::{thousands, Goal, Metric, Report, Unit};
use super::stats::{column, runs, timed};
use super::stores::{join_with_keys, take_governance};
use super::workload::{busy_span, rng, Stream, Workload, START_MILLIS};
use super::{Ctx, Rooms};

/// Authors posting into the room, taking turns by commit.
const AUTHORS: usize = 4;

/// Messages per commit while the envelopes are made: one envelope each.
const COMMIT: usize = 100;

/// The sled relay store's trees (`node/src/relay/sled_backend.rs`), which
/// the raw baseline writes too.
const SLED_ENVELOPES: &str = "relay-envelopes-1";
const SLED_BUCKETS: &str = "relay-buckets-1";

/// What an envelope's signature covers and where its signer is
/// (`docs/protocol.md`, Envelope): Concord's signing context, then every
/// byte before the last 64, which are the signature; the author's key is
/// bytes 41 to 73.
const SIGNING_CONTEXT: &[u8] = b"concord signed envelope v1\0";
const AUTHOR_AT: std::ops::Range<usize> = 41..73;

/// The envelopes a relay receives, cut into the flights that carry them.
pub struct Ingest {
    /// Whether the room is end-to-end encrypted.
    pub rooms: Rooms,
    /// The room they belong to.
    pub room: RoomId,
    /// Bytes of the posts' blobs (their bodies), which travel beside the
    /// envelopes and are not part of this ingest.
    pub blob_bytes: usize,
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
    /// benchmark's) by [`AUTHORS`] authors in one room of the kind `rooms`
    /// names, [`COMMIT`] per commit, the authors taking turns by commit. In
    /// an encrypted room every author is a member whose device keys the
    /// others hold, so each post is encrypted for all of them.
    pub fn generate(seed: u64, count: usize, rooms: Rooms) -> Result<Self> {
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
        let room = replicas[0].create_room_opts("relay bench", &rooms.options())?;
        let genesis = replicas[0].genesis(&room)?.as_bytes().to_vec();
        let (host, joiners) = replicas.split_at_mut(1);
        for replica in joiners.iter_mut() {
            match rooms {
                Rooms::Unencrypted => replica.join_room(&genesis).map(drop)?,
                Rooms::Encrypted => join_with_keys(replica, &mut host[0], &room)?,
            }
        }
        if rooms == Rooms::Encrypted {
            // Later joiners' keys reach the earlier ones through the host.
            for replica in joiners.iter_mut() {
                take_governance(&host[0], replica, &room)?;
            }
        }
        let mut envelopes = Vec::with_capacity(count);
        let mut blob_bytes = 0;
        for (i, chunk) in w.messages.chunks(COMMIT).enumerate() {
            clock.set(chunk[0].at);
            let ops = chunk
                .iter()
                .map(|m| Op::Post { room, draft: Draft::text(m.body.clone()) })
                .collect();
            for sent in replicas[i % AUTHORS].commit(ops)? {
                let delivery = sent?.delivery;
                blob_bytes += delivery.blobs.iter().map(Vec::len).sum::<usize>();
                envelopes.push(delivery.envelope.as_bytes().to_vec());
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
        Ok(Self { rooms, room, blob_bytes, envelopes, flights, rows })
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
             {COMMIT} posts per commit) in one {} room over {} one-day buckets, {:.1} MiB \
             (about {} bytes each), in {} flights of up to 1 MiB, stored one flight at a \
             time into a fresh store per run; the posts' body blobs travel beside them and \
             are not part of this ingest",
            thousands(self.envelopes.len() as f64),
            match self.rooms {
                Rooms::Unencrypted => "unencrypted",
                Rooms::Encrypted => "end-to-end encrypted",
            },
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
    Envelope::from_bytes_many(envelopes)
        .into_iter()
        .map(|envelope| {
            let envelope = envelope.context("envelope verifies")?;
            ensure!(envelope.room() == room, "an envelope of another room");
            Ok(StoredEnvelope::of(&envelope))
        })
        .collect()
}

/// The raw baselines' verification: each envelope's Ed25519 signature
/// checked with ed25519-dalek directly, nothing else decoded, the flight
/// split over every core as Concord splits it. Strict verification, as
/// Concord's: batch verification (`verify_batch`) checks the cofactored
/// equation and can accept a crafted signature that `verify_strict`
/// refuses, and replicas that disagree on what is signed would diverge,
/// so it is no honest substitute.
pub fn raw_verify(envelopes: &[Vec<u8>]) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = envelopes.len().div_ceil(cores).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> =
            envelopes.chunks(per).map(|part| scope.spawn(move || raw_verify_part(part))).collect();
        parts.into_iter().try_for_each(|p| p.join().map_err(|_| anyhow::anyhow!("panicked"))?)
    })
}

fn raw_verify_part(envelopes: &[Vec<u8>]) -> Result<()> {
    let mut signed = Vec::new();
    for bytes in envelopes {
        let author = bytes.get(AUTHOR_AT).context("short envelope")?;
        let key = VerifyingKey::from_bytes(author.try_into()?)?;
        let (message, signature) = bytes.split_at(bytes.len() - 64);
        signed.clear();
        signed.extend_from_slice(SIGNING_CONTEXT);
        signed.extend_from_slice(message);
        key.verify_strict(&signed, &Signature::from_slice(signature)?)?;
    }
    Ok(())
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
    // The baseline verifies as well: the store alone has no counterpart.
    let store = Metric::alone(
        "store alone: `put_envelopes` of ready rows",
        Unit::EnvelopesPerSecond,
        &column(rows, Phase::StoreOnly.column()),
    );
    let verify = Metric::alone(
        "decode and verify alone, nothing stored",
        Unit::EnvelopesPerSecond,
        &column(rows, Phase::Verify.column()),
    );
    let ratio = ingest.ratio().unwrap_or(0.0);
    Report {
        name,
        workload: w.describe(),
        baseline_name,
        baseline,
        metrics: vec![ingest, store, verify],
        goals: vec![Goal::new(
            format!("relay ingest at least 0.8x {baseline_name}"),
            format!("{ratio:.2}x"),
            ratio >= 0.8,
        )],
    }
}

/// What encryption itself costs a relay, for an `-e2ee` report: the same
/// posts in an unencrypted room, and per run the decode-and-verify rates
/// of both workloads.
pub struct EncryptionCost {
    clear: Ingest,
    /// Per run: [encrypted, unencrypted] envelopes per second.
    verify: Vec<[f64; 2]>,
}

impl EncryptionCost {
    /// For a run over `w`: `None` unless its room is encrypted.
    pub fn of(ctx: &Ctx, w: &Ingest) -> Result<Option<Self>> {
        Ok(match w.rooms {
            Rooms::Unencrypted => None,
            Rooms::Encrypted => Some(Self {
                clear: Ingest::generate(ctx.seed, w.envelopes.len(), Rooms::Unencrypted)?,
                verify: Vec::new(),
            }),
        })
    }

    /// Records a run: the encrypted workload's measured decode-and-verify
    /// rate, and the unencrypted one's, measured now.
    pub fn record(&mut self, encrypted_verify_rate: f64) -> Result<()> {
        let rate = self.clear.envelopes.len() as f64 / time_verify(&self.clear)?;
        self.verify.push([encrypted_verify_rate, rate]);
        Ok(())
    }

    /// The report's rows: bytes per message of `w` against the unencrypted
    /// posts, and the two verification rates.
    pub fn metrics(&self, w: &Ingest) -> Vec<Metric> {
        let (clear, verify) = (&self.clear, &self.verify);
        let per = |bytes: usize, of: &Ingest| vec![bytes as f64 / of.envelopes.len() as f64];
        vec![
            Metric::side_by_side(
                "encryption's cost: envelope bytes per message (baseline column: unencrypted room)",
                Unit::Bytes,
                &per(w.bytes(), w),
                &per(clear.bytes(), clear),
            ),
            Metric::side_by_side(
                "encryption's cost: body blob bytes per message, not ingested here \
             (baseline column: unencrypted room)",
                Unit::Bytes,
                &per(w.blob_bytes, w),
                &per(clear.blob_bytes, clear),
            ),
            Metric::side_by_side(
                "encryption's cost: decode and verify (baseline column: unencrypted room)",
                Unit::EnvelopesPerSecond,
                &column(verify, 0),
                &column(verify, 1),
            ),
        ]
    }
}

/// The baseline's description: its writes, and the same verification.
pub fn baseline_text(w: &Ingest, raw: &str) -> String {
    format!(
        "{raw}; before each flight's writes, every envelope's Ed25519 signature checked \
         with ed25519-dalek's verify_strict, the flight split over every core as Concord \
         splits it{}",
        match w.rooms {
            Rooms::Unencrypted => "",
            Rooms::Encrypted =>
                " (a relay decrypts nothing, so this is all the cryptography it does)",
        }
    )
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
    run_sled_in(ctx, Rooms::Unencrypted)
}

/// `relay-ingest-sled-e2ee`: the same with an encrypted room's envelopes,
/// the baseline checking each signature before it writes.
pub fn run_sled_e2ee(ctx: &Ctx) -> Result<Report> {
    run_sled_in(ctx, Rooms::Encrypted)
}

fn run_sled_in(ctx: &Ctx, rooms: Rooms) -> Result<Report> {
    let name = rooms.name("relay-ingest-sled", "relay-ingest-sled-e2ee");
    let w = Ingest::generate(ctx.seed, size(ctx), rooms)?;
    let mut cost = EncryptionCost::of(ctx, &w)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let n = w.envelopes.len() as f64;
    let mut run = 0;
    let rows = runs(name, ctx.runs, || {
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
        if let Some(cost) = &mut cost {
            cost.record(out[Phase::Verify.column()])?;
        }
        run += 1;
        Ok(out)
    })?;
    let mut report = report(
        name,
        &w,
        &rows,
        "raw sled + the same verification",
        baseline_text(
            &w,
            "sled opened as the relay store opens it, its two trees, the same keys \
             (room ‖ bucket ‖ hlc ‖ author ‖ blake3) and values; per flight one batch of \
             the envelope rows, one of its bucket entries, and a flush",
        ),
    );
    if let Some(cost) = &cost {
        report.metrics.extend(cost.metrics(&w));
    }
    Ok(report)
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
        raw_verify(&w.envelopes[flight.clone()])?;
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
