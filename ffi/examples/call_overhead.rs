//! The Rust side of the bindings benchmark (`ffi/bench/bench_bindings.py`):
//! the same operations the Python script runs through the generated
//! bindings, called from Rust without a foreign boundary.
//!
//! ```sh
//! cargo run --release -p concord-ffi --features cli --example call_overhead -- \
//!     calls --api node --calls 2000 --seed 42
//! cargo run --release -p concord-ffi --features cli --example call_overhead -- \
//!     messages --messages 10000 --seed 42
//! ```
//!
//! (`--features cli` only makes the build share its artifacts with
//! `ffi/build-bindings.sh`; the example does not need the generator.)
//!
//! - `calls`: one client alone (mDNS off, listening nowhere) in a fresh data
//!   directory; one room; `--calls` timed calls each of `peer_id`,
//!   `unread_count` and `send` (seeded texts), after 100 untimed ones of
//!   each. `--api node` calls `concord_node` directly, as a Rust app would;
//!   `--api ffi` calls the `concord-ffi` wrappers (the code behind the
//!   bindings, string conversions and the hop onto the library's runtime
//!   included) from Rust, so no foreign language is involved.
//! - `messages`: two nodes on 127.0.0.1 in one process; A creates a room, B
//!   joins it by ticket and counts A's messages arriving in its timeline
//!   listener; A sends `--messages` seeded texts one after the other, and
//!   every `--every` messages the run waits until B has them all and
//!   samples the process's resident memory (VmRSS).
//!
//! - `docs`: the raw baseline of what `messages` must keep: raw yrs holding
//!   the same messages as the room's author document does, twice (A's
//!   document in A, and its copy in B). Each message is one transaction on
//!   A's document that sets a map key of 32 hex digits (a UUIDv7, as a
//!   message id) to a 43-byte record (the size of a post record of a text
//!   message), and B's document applies the update it produces. Every
//!   `--every` messages the run samples VmRSS and the live heap.
//!
//! `--store-cache-mib` sets the store's page cache of every node (default:
//! the node's, `DEFAULT_STORE_CACHE_BYTES`).
//!
//! Output is one JSON object per line on stdout, for the Python script to
//! read; `calls` ends with the process's VmRSS after the calls, which shows
//! what one node alone keeps per message sent (compare `--calls 2000` with
//! `--calls 20000`). Every VmRSS comes with the live heap (`heap_kib`),
//! counted by this program's global allocator: VmRSS above it is memory the
//! allocator keeps without it being in use (and the heap above VmRSS is
//! memory allocated but never touched). The texts come from the same seeded
//! generator as the script's (splitmix64; see `Texts`), and each mode prints
//! a digest of the texts it sent so that the script can check that both
//! sides sent the same bytes.

// Counting the live heap takes a global allocator that wraps the system's,
// and implementing `GlobalAlloc` is unsafe; `Counting` is the only unsafe
// code here.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::error::Error;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_ffi::node::{
    AuthorId, Node, NodeConfig, RoomId, TimelineDiff, TimelineListener, DEFAULT_STORE_CACHE_BYTES,
};
use concord_ffi::{Client, ClientConfig};
use tokio::runtime::{Builder, Runtime};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The system allocator, counting the bytes allocated and not yet freed.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

fn count(delta: usize, sign: i64) {
    LIVE_BYTES.fetch_add(sign * delta as i64, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; the counter does
// not touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The live heap, in KiB.
fn heap_kib() -> i64 {
    LIVE_BYTES.load(Ordering::Relaxed) / 1024
}

/// Untimed calls of each operation before the timed ones: the first calls
/// pay for lazily built state (the room's documents, sled's pages, the
/// runtime's threads).
const WARMUP_CALLS: usize = 100;
/// Catch-up period of every client. The Python script uses the same; it
/// only matters in `messages`, where it bounds how long a message gossip
/// dropped takes to arrive.
const SYNC_INTERVAL: Duration = Duration::from_millis(2_000);
/// How long `messages` waits for B to catch up with A at a checkpoint
/// before it gives up.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(60);
/// The loopback listen address of the `messages` nodes.
const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, rest) = args.split_first().ok_or(USAGE)?;
    let opts = Options::parse(rest)?;
    let scratch = Scratch::new(opts.dir.clone())?;
    match mode.as_str() {
        "calls" => match opts.api.as_str() {
            "node" => calls_node(&opts, scratch.path()),
            "ffi" => calls_ffi(&opts, scratch.path()),
            other => Err(format!("unknown --api {other:?} (node or ffi)").into()),
        },
        "messages" => messages(&opts, scratch.path()),
        "docs" => docs(&opts),
        other => Err(format!("unknown mode {other:?}\n{USAGE}").into()),
    }
}

const USAGE: &str = "usage: call_overhead calls [--api node|ffi] [--calls N] [--seed S] [--dir D]
                            [--store-cache-mib C]
       call_overhead messages [--messages M] [--every K] [--rate R] [--seed S]
                              [--dir D] [--store-cache-mib C]
       call_overhead docs [--messages M] [--every K] [--seed S]";

/// Command-line options (the same names as the Python script's).
struct Options {
    api: String,
    calls: usize,
    messages: usize,
    every: usize,
    rate: f64,
    seed: u64,
    dir: Option<PathBuf>,
    store_cache_mib: u32,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options {
            api: "node".into(),
            calls: 2_000,
            messages: 10_000,
            every: 1_000,
            rate: 0.0,
            seed: 42,
            dir: None,
            store_cache_mib: u32::try_from(DEFAULT_STORE_CACHE_BYTES >> 20)?,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            match flag.as_str() {
                "--api" => o.api = value.clone(),
                "--calls" => o.calls = value.parse()?,
                "--messages" => o.messages = value.parse()?,
                "--every" => o.every = value.parse()?,
                "--rate" => o.rate = value.parse()?,
                "--seed" => o.seed = value.parse()?,
                "--dir" => o.dir = Some(PathBuf::from(value)),
                "--store-cache-mib" => o.store_cache_mib = value.parse()?,
                _ => return Err(format!("unknown option {flag}\n{USAGE}").into()),
            }
        }
        if !(o.rate.is_finite() && o.rate >= 0.0) {
            return Err("--rate must be a number of messages per second, 0 for no pacing".into());
        }
        if o.calls == 0 || o.messages == 0 || o.every == 0 || o.store_cache_mib == 0 {
            return Err(
                "--calls, --messages, --every and --store-cache-mib must be more than zero".into(),
            );
        }
        Ok(o)
    }

    /// When message `i` (from 0) is due after the first send, if `--rate`
    /// paces the sends.
    fn due(&self, i: usize) -> Option<Duration> {
        (self.rate > 0.0).then(|| Duration::from_secs_f64(i as f64 / self.rate))
    }

    /// The node settings of every run.
    fn node_config(&self) -> NodeConfig {
        NodeConfig::default()
            .mdns(false)
            .sync_interval(SYNC_INTERVAL)
            .store_cache_bytes(u64::from(self.store_cache_mib) << 20)
    }
}

/// A directory for the data directories, removed at the end when this
/// program made it.
struct Scratch {
    path: PathBuf,
    owned: bool,
}

impl Scratch {
    fn new(given: Option<PathBuf>) -> Result<Self> {
        let (path, owned) = match given {
            Some(path) => (path, false),
            None => {
                let name = format!("concord-call-overhead-{}", std::process::id());
                (std::env::temp_dir().join(name), true)
            }
        };
        std::fs::create_dir_all(&path)?;
        Ok(Self { path, owned })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Seeded message texts, the same in Python (`texts` in the script):
/// splitmix64, a length of 20 to 200 bytes, lowercase letters with about
/// one space in five, never a space first, last or twice in a row.
struct Texts {
    state: u64,
}

impl Texts {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Iterator for Texts {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let len = 20 + (self.next_u64() % 181) as usize;
        let mut text = String::with_capacity(len);
        let mut previous_space = true;
        for i in 0..len {
            let c = (self.next_u64() % 32) as u8;
            if c >= 26 && !previous_space && i + 1 < len {
                text.push(' ');
                previous_space = true;
            } else {
                text.push(char::from(b'a' + c % 26));
                previous_space = false;
            }
        }
        Some(text)
    }
}

/// FNV-1a over the texts, each followed by a newline.
struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Self(0xCBF2_9CE4_8422_2325)
    }
}

impl Digest {
    fn add(&mut self, text: &str) {
        for b in text.bytes().chain(std::iter::once(b'\n')) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Median and 90th percentile of per-call times, in nanoseconds.
fn summary(api: &str, op: &str, mut times: Vec<u64>) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        r#"{{"api":"{api}","op":"{op}","calls":{},"p50_ns":{},"p90_ns":{}}}"#,
        times.len(),
        at(0.5),
        at(0.9)
    );
}

fn elapsed_ns(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn runtime() -> Result<Runtime> {
    Ok(Builder::new_multi_thread().enable_all().build()?)
}

/// `calls --api node`: `concord_node` directly.
fn calls_node(opts: &Options, dir: &Path) -> Result<()> {
    let rt = runtime()?;
    let config = opts.node_config();
    let node = rt.block_on(async { Node::open(dir.join("node"), config) })?;
    let room = rt.block_on(node.create_room("bench"))?;
    let mut digest = Digest::default();
    rt.block_on(async {
        for i in 0..WARMUP_CALLS.min(opts.calls) {
            black_box(node.peer_id());
            room.unread_count().await?;
            room.send(&format!("warm-up {i}")).await?;
        }
        let mut times = Vec::with_capacity(opts.calls);
        for _ in 0..opts.calls {
            let t = Instant::now();
            black_box(node.peer_id());
            times.push(elapsed_ns(t));
        }
        summary("node", "peer_id", std::mem::take(&mut times));
        for _ in 0..opts.calls {
            let t = Instant::now();
            black_box(room.unread_count().await?);
            times.push(elapsed_ns(t));
        }
        summary("node", "unread_count", std::mem::take(&mut times));
        for text in Texts::new(opts.seed).take(opts.calls) {
            digest.add(&text);
            let t = Instant::now();
            black_box(room.send(&text).await?);
            times.push(elapsed_ns(t));
        }
        summary("node", "send", times);
        Ok::<_, Box<dyn Error>>(())
    })?;
    println!(
        r#"{{"api":"node","texts_digest":"{}","rss_kib":{},"heap_kib":{}}}"#,
        digest.hex(),
        rss_kib()?,
        heap_kib()
    );
    rt.block_on(node.shutdown())?;
    Ok(())
}

/// `calls --api ffi`: the `concord-ffi` wrappers, awaited from a
/// current-thread executor as the foreign side awaits them (the work runs
/// on the library's own runtime).
fn calls_ffi(opts: &Options, dir: &Path) -> Result<()> {
    let rt = Builder::new_current_thread().build()?;
    let config = ClientConfig {
        mdns: false,
        sync_interval_ms: SYNC_INTERVAL.as_millis() as u64,
        listen_addresses: Vec::new(),
        store_cache_mib: opts.store_cache_mib,
        doc_cache_items: concord_ffi::node::core::DEFAULT_DOC_CACHE_ITEMS,
    };
    let data_dir = dir.join("ffi").to_string_lossy().into_owned();
    let client = rt.block_on(Client::open(data_dir, config))?;
    let room = rt.block_on(client.create_room("bench".into()))?;
    let mut digest = Digest::default();
    rt.block_on(async {
        for i in 0..WARMUP_CALLS.min(opts.calls) {
            black_box(client.peer_id());
            room.unread_count().await?;
            room.send(format!("warm-up {i}")).await?;
        }
        let mut times = Vec::with_capacity(opts.calls);
        for _ in 0..opts.calls {
            let t = Instant::now();
            black_box(client.peer_id());
            times.push(elapsed_ns(t));
        }
        summary("ffi", "peer_id", std::mem::take(&mut times));
        for _ in 0..opts.calls {
            let t = Instant::now();
            black_box(room.unread_count().await?);
            times.push(elapsed_ns(t));
        }
        summary("ffi", "unread_count", std::mem::take(&mut times));
        for text in Texts::new(opts.seed).take(opts.calls) {
            digest.add(&text);
            let t = Instant::now();
            black_box(room.send(text).await?);
            times.push(elapsed_ns(t));
        }
        summary("ffi", "send", times);
        Ok::<_, Box<dyn Error>>(())
    })?;
    println!(
        r#"{{"api":"ffi","texts_digest":"{}","rss_kib":{},"heap_kib":{}}}"#,
        digest.hex(),
        rss_kib()?,
        heap_kib()
    );
    rt.block_on(client.shutdown())?;
    Ok(())
}

/// Counts the messages of one author inserted into a timeline.
struct Arrivals {
    from: AuthorId,
    count: Arc<AtomicU64>,
}

impl TimelineListener for Arrivals {
    fn on_diffs(&self, _room: &RoomId, diffs: &[TimelineDiff]) {
        let n = diffs
            .iter()
            .filter(|d| matches!(d, TimelineDiff::Insert(m) if m.author == self.from))
            .count();
        self.count.fetch_add(n as u64, Ordering::SeqCst);
    }
}

/// The process's resident set (VmRSS), in KiB.
fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or("no VmRSS line in /proc/self/status")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// Polls `count` until it reaches `want`, or fails after
/// [`ARRIVAL_TIMEOUT`].
fn wait_for(count: &AtomicU64, want: u64, what: &str) -> Result<()> {
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    while count.load(Ordering::SeqCst) < want {
        if Instant::now() > deadline {
            let got = count.load(Ordering::SeqCst);
            return Err(format!("timed out waiting for {what}: {got} of {want} arrived").into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// `messages`: two nodes, A sends, B's listener counts.
fn messages(opts: &Options, dir: &Path) -> Result<()> {
    let rt = runtime()?;
    let (a, b) = rt.block_on(async {
        let a = Node::open(dir.join("a"), opts.node_config())?;
        let b = Node::open(dir.join("b"), opts.node_config())?;
        a.listen(LOOPBACK.parse()?).await?;
        b.listen(LOOPBACK.parse()?).await?;
        Ok::<_, Box<dyn Error>>((a, b))
    })?;
    let room_a = rt.block_on(a.create_room("bench"))?;
    let ticket = rt.block_on(room_a.ticket())?;
    let room_b = rt.block_on(b.join_ticket(&ticket))?;
    let count = Arc::new(AtomicU64::new(0));
    let listener = Arrivals { from: a.author(), count: count.clone() };
    let subscription = rt.block_on(room_b.subscribe(Arc::new(listener)))?;

    // One message first, so that B is connected and in the room's mesh
    // before the timed sends.
    rt.block_on(room_a.send("hello"))?;
    wait_for(&count, 1, "the first message")?;
    let base = count.load(Ordering::SeqCst);

    let mut digest = Digest::default();
    let start = Instant::now();
    for (i, text) in Texts::new(opts.seed).take(opts.messages).enumerate() {
        digest.add(&text);
        if let Some(due) = opts.due(i) {
            std::thread::sleep(due.saturating_sub(start.elapsed()));
        }
        rt.block_on(room_a.send(&text))?;
        let sent = i + 1;
        if sent % opts.every == 0 || sent == opts.messages {
            wait_for(&count, base + sent as u64, "B to receive A's messages")?;
            println!(
                r#"{{"api":"node","sent":{sent},"received":{},"rss_kib":{},"heap_kib":{},"elapsed_s":{:.3}}}"#,
                count.load(Ordering::SeqCst) - base,
                rss_kib()?,
                heap_kib(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    println!(r#"{{"api":"node","texts_digest":"{}"}}"#, digest.hex());
    drop(subscription);
    rt.block_on(async {
        a.shutdown().await?;
        b.shutdown().await?;
        Ok::<_, Box<dyn Error>>(())
    })?;
    Ok(())
}

/// `docs`: raw yrs holding A's messages twice, as the two nodes of
/// `messages` do (see the module's documentation).
fn docs(opts: &Options) -> Result<()> {
    use yrs::updates::decoder::Decode;
    use yrs::{Any, Doc, Map, Options as DocOptions, Transact, Update};

    let doc = |client| {
        let options = DocOptions { client_id: yrs::ClientID::new(client), ..DocOptions::default() };
        let doc = Doc::with_options(options);
        let map = doc.get_or_insert_map("m");
        (doc, map)
    };
    let (a, map_a) = doc(1);
    let (b, _map_b) = doc(2);
    // Ids and records are drawn from the seeded generator, one after another.
    let mut bits = Texts::new(opts.seed);
    let start = Instant::now();
    for i in 0..opts.messages {
        let millis = 1_800_000_000_000 + i as u64;
        // A UUIDv7's 32 hex digits: the time, the version, 12 bits of
        // sequence, then 64 random bits with the variant's top bits 10.
        let id = format!("{millis:012x}7{:03x}{:016x}", i & 0xfff, bits.next_u64() >> 2 | 1 << 63);
        let mut record = vec![1u8];
        record.extend_from_slice(&millis.to_be_bytes());
        for _ in 0..4 {
            record.extend_from_slice(&bits.next_u64().to_le_bytes());
        }
        record.extend_from_slice(&[0, 0]);
        let update = {
            let mut txn = a.transact_mut();
            map_a.insert(&mut txn, id, Any::Buffer(record.into()));
            txn.encode_update_v1()
        };
        b.transact_mut().apply_update(Update::decode_v1(&update)?)?;
        let sent = i + 1;
        if sent % opts.every == 0 || sent == opts.messages {
            println!(
                r#"{{"api":"yrs","sent":{sent},"received":{sent},"rss_kib":{},"heap_kib":{},"elapsed_s":{:.3}}}"#,
                rss_kib()?,
                heap_kib(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    black_box((&a, &b));
    Ok(())
}
