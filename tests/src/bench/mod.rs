//! The benchmark harness: command line, sizes, and the list of benchmarks.
//! Each benchmark runs Concord and a raw baseline on the same seeded
//! workload, several runs each, and returns a [`report::Report`].

mod alloc;
mod append;
mod breakdown;
mod cold_open;
mod crypto;
mod disk;
mod memory;
mod net;
mod page;
mod relay;
#[cfg(feature = "dynamodb")]
mod relay_dynamo;
mod report;
mod stats;
mod stores;
mod workload;

use anyhow::{bail, Context, Result};

/// The seed when `--seed` is not given: fixed, so runs on different commits
/// measure the same workload.
const DEFAULT_SEED: u64 = 42;
const DEFAULT_RUNS: usize = 7;

/// Workload sizes, full or `--quick`.
pub struct Sizes {
    /// `append`: messages posted with group commit.
    pub append_group: usize,
    /// `append`: messages posted one commit each (each costs an fsync).
    pub append_single: usize,
    /// `page`: messages in the warm room.
    pub page_room: usize,
    /// `page`: cursors paged from.
    pub page_cursors: usize,
    /// `cold-open`: the small and the large room.
    pub cold_small: usize,
    pub cold_large: usize,
    /// `memory`: messages in the hot bucket.
    pub memory: usize,
    /// `disk`: messages posted, then deleted.
    pub disk: usize,
    /// `gossip`: messages per run, for each network size.
    pub gossip_messages: usize,
    /// `partition`: messages each half writes while partitioned.
    pub partition_messages: usize,
    /// `catchup-net`: messages in the room.
    pub catchup_room: usize,
    /// `relay-ingest-*`: envelopes a relay receives.
    pub relay_envelopes: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                append_group: 2_000,
                append_single: 200,
                page_room: 2_000,
                page_cursors: 200,
                cold_small: 1_000,
                cold_large: 20_000,
                memory: 1_000,
                disk: 2_000,
                gossip_messages: 20,
                partition_messages: 20,
                catchup_room: 2_000,
                relay_envelopes: 2_000,
            }
        } else {
            Self {
                append_group: 20_000,
                append_single: 2_000,
                page_room: 20_000,
                page_cursors: 1_000,
                cold_small: 10_000,
                cold_large: 1_000_000,
                memory: 10_000,
                disk: 20_000,
                gossip_messages: 150,
                partition_messages: 100,
                catchup_room: 10_000,
                relay_envelopes: 20_000,
            }
        }
    }
}

/// What every benchmark gets.
pub struct Ctx {
    pub seed: u64,
    pub runs: usize,
    pub sizes: Sizes,
}

type Bench = fn(&Ctx) -> Result<report::Report>;

/// The benchmarks run when none is named.
const BENCHES: [(&str, Bench); 8] = [
    ("append", append::run),
    ("page", page::run),
    ("cold-open", cold_open::run),
    ("memory", memory::run),
    ("disk", disk::run),
    ("gossip", net::run_gossip),
    ("partition", net::run_partition),
    ("catchup-net", net::run_catchup),
];

/// The relay's benchmarks, run only when named: they measure the relay
/// node rather than a device, and the DynamoDB one starts a Java server.
const RELAY_BENCHES: &[(&str, Bench)] = &[
    ("relay-ingest-sled", relay::run_sled),
    #[cfg(feature = "dynamodb")]
    ("relay-ingest-dynamodb", relay_dynamo::run),
];

/// Diagnostics of the storage format (bytes and writes per message, tree
/// by tree), run only when named.
const DIAGNOSTICS: &[(&str, Bench)] =
    &[("breakdown", breakdown::run), ("breakdown-e2ee", breakdown::run_e2ee)];

/// The benchmarks in end-to-end encrypted rooms, run only when named.
const E2EE_BENCHES: &[(&str, Bench)] = &[
    ("append-e2ee", append::run_e2ee),
    ("page-e2ee", page::run_e2ee),
    ("gossip-e2ee", net::run_gossip_e2ee),
    ("relay-ingest-sled-e2ee", relay::run_sled_e2ee),
    #[cfg(feature = "dynamodb")]
    ("relay-ingest-dynamodb-e2ee", relay_dynamo::run_e2ee),
];

/// The DynamoDB half of `relay-ingest`, which needs the feature.
const RELAY_DYNAMODB: &str = "relay-ingest-dynamodb";
const RELAY_DYNAMODB_E2EE: &str = "relay-ingest-dynamodb-e2ee";

/// Names that stand for several benchmarks.
const GROUPS: [(&str, &[&str]); 2] = [
    ("relay-ingest", &["relay-ingest-sled", RELAY_DYNAMODB]),
    (
        "e2ee",
        &["append-e2ee", "page-e2ee", "gossip-e2ee", "relay-ingest-sled-e2ee", RELAY_DYNAMODB_E2EE],
    ),
];

const USAGE: &str = "usage: concord-bench [NAME...] [--seed N] [--runs R] [--quick] [--large N]
names: append, page, cold-open, memory, disk, gossip, partition, catchup-net (default: these eight);
       relay-ingest-sled, relay-ingest-dynamodb (needs --features dynamodb),
       relay-ingest (both relay halves), run only when named;
       append-e2ee, page-e2ee, gossip-e2ee, relay-ingest-sled-e2ee, relay-ingest-dynamodb-e2ee
       (the same in end-to-end encrypted rooms), or e2ee for all five, run only when named;
       breakdown, breakdown-e2ee (bytes and writes per message, tree by tree), only when named";

pub fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut names = Vec::new();
    let (mut seed, mut runs, mut quick, mut large) = (DEFAULT_SEED, DEFAULT_RUNS, false, None);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match arg.as_str() {
            cold_open::PROBE_FLAG => {
                let (kind, path) = (value("kind")?, value("path")?);
                return cold_open::probe(&kind, path.as_ref());
            }
            "--seed" => seed = value("--seed")?.parse().context("--seed")?,
            "--runs" => runs = value("--runs")?.parse().context("--runs")?,
            "--large" => large = Some(value("--large")?.parse().context("--large")?),
            "--quick" => quick = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            name if all_benches().any(|(n, _)| *n == name) => {
                names.push(name.to_owned());
            }
            name if GROUPS.iter().any(|(n, _)| *n == name) => {
                let (_, members) = GROUPS.iter().find(|(n, _)| *n == name).expect("a group");
                names.extend(members.iter().map(|m| (*m).to_owned()));
            }
            name @ (RELAY_DYNAMODB | RELAY_DYNAMODB_E2EE) => bail!(
                "{name} needs the dynamodb feature: cargo run --release \
                 -p concord-tests --features dynamodb --bin concord-bench -- {name}"
            ),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut sizes = Sizes::new(quick);
    if let Some(large) = large {
        sizes.cold_large = large;
    }
    let ctx = Ctx { seed, runs, sizes };
    println!("## Results\n");
    println!(
        "Seed {seed}, {runs} runs per benchmark, {} sizes, on {}.\n",
        if quick { "quick" } else { "full" },
        machine()
    );
    let named = |name: &str| names.iter().any(|n| n == name);
    for name in [RELAY_DYNAMODB, RELAY_DYNAMODB_E2EE] {
        if named(name) && !all_benches().any(|(n, _)| *n == name) {
            eprintln!(
                "{name} skipped: built without the dynamodb feature \
                 (cargo run --release -p concord-tests --features dynamodb --bin concord-bench)"
            );
        }
    }
    let chosen = BENCHES.iter().filter(|(name, _)| names.is_empty() || named(name)).chain(
        RELAY_BENCHES.iter().chain(E2EE_BENCHES).chain(DIAGNOSTICS).filter(|(name, _)| named(name)),
    );
    for (_, bench) in chosen {
        let report = bench(&ctx)?;
        println!("{}", report.markdown(seed, runs));
    }
    Ok(())
}

/// Every benchmark this build has.
fn all_benches() -> impl Iterator<Item = &'static (&'static str, Bench)> {
    BENCHES.iter().chain(RELAY_BENCHES).chain(E2EE_BENCHES).chain(DIAGNOSTICS)
}

/// CPU model, core count and memory, from /proc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    format!("{model}, {cores} cores, {:.1} GiB RAM", mem_kib / (1024.0 * 1024.0))
}

/// The rooms a benchmark runs in. The eight default benchmarks run in
/// unencrypted rooms, as the results recorded in `docs/benchmarks.md` were
/// first measured; the `-e2ee` benchmarks run the same workloads in
/// end-to-end encrypted rooms (the default for new rooms), beside a
/// baseline that does the same cryptographic work (`crypto.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rooms {
    Unencrypted,
    Encrypted,
}

impl Rooms {
    pub fn options(self) -> concord_core::RoomOptions {
        concord_core::RoomOptions::default().encrypted(self == Rooms::Encrypted)
    }

    /// A report's name: `name`, or `encrypted` for encrypted rooms.
    pub fn name(self, name: &'static str, encrypted: &'static str) -> &'static str {
        match self {
            Rooms::Unencrypted => name,
            Rooms::Encrypted => encrypted,
        }
    }
}
