//! `concord demo`: the README's main job over real nodes. N peers, each a
//! full node (sled store, system clock, libp2p over TCP on 127.0.0.1, mDNS
//! off) in this process, play a scripted story:
//!
//! 1. every peer says hello and all converge;
//! 2. one peer goes offline (its node shuts down); the others post, edit,
//!    delete, reply and react;
//! 3. the offline peer reopens its store with networking off (no listener,
//!    no dials) and writes: a post, an edit, a reaction, and a post it then
//!    deletes; then it closes again;
//! 4. the delete of that post is handed to one online peer before the post
//!    (as a relay that had only the delete would), which holds it pending;
//! 5. the offline peer comes back on its data directory and dials the
//!    others; the demo waits until every timeline is identical, checks that
//!    the deleted post never showed anywhere, and prints the timelines and a
//!    summary (messages, bytes sent, time to converge per peer).
//!
//! Every choice (who goes offline, who edits, deletes and reacts, what is
//! said) comes from one seeded generator whose seed is printed, so
//! `--seed` replays the same story; network timing is real and varies.
//!
//! One file over the house's 600 lines: the demo is one scripted story
//! (peers, an offline stretch, the report), kept in the order it runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use concord_node::core::{Applied, SledStore};
use concord_node::{
    AuthorId, Draft, Message, MessageId, Multiaddr, Node, NodeConfig, Room, RoomId, TimelineDiff,
    TimelineListener,
};

use crate::common::{open_node, short, CliError, CliResult, Context};

/// Catch-up period of the demo's peers: short, so that what gossip misses
/// (a message published before a new connection learned the room's topic)
/// is healed within the story rather than after the phone default of 30 s.
const DEMO_SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// How long the peers get to connect to each other at the start.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// How long the online peers get to agree before the offline peer returns.
const PHASE_DEADLINE: Duration = Duration::from_secs(15);
/// Period of polling the timelines while waiting for convergence: the
/// resolution of the measured convergence times.
const POLL: Duration = Duration::from_millis(20);
/// Where every peer listens.
const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

/// What the online peers say while one peer is away.
const CHATTER: &[&str] = &[
    "who is bringing snacks on friday?",
    "the build is green again",
    "meeting moved to 3pm",
    "did anyone read the release notes?",
    "lunch at noon?",
    "pushing the fix now",
    "the train is late, start without me",
];
/// Reactions to pick from.
const EMOJI: &[&str] = &["👍", "🎉", "❤️", "😂", "👀"];

/// Arguments of `concord demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Number of peers (2 to 16).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(2..=16))]
    peers: u16,
    /// Keep the peers' stores in DIR/peer-0, DIR/peer-1, … [default: a
    /// temporary directory, removed at the end].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Seed of the story's choices [default: from the clock; printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds to wait for the peers to converge once the offline peer is
    /// back.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    deadline: u64,
}

/// Runs `concord demo`.
pub async fn run(args: DemoArgs) -> CliResult<ExitCode> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    let count = usize::from(args.peers);
    let dirs = DataDirs::new(args.data_dir.as_deref())?;
    say!(
        "concord demo: {count} peers on 127.0.0.1, stores in {}, seed {seed} \
         (replay the story with --seed {seed})",
        dirs.base.display()
    );
    let config = NodeConfig::default().mdns(false).sync_interval(DEMO_SYNC_INTERVAL);
    let mut demo = Demo {
        peers: (0..count)
            .map(|i| Peer {
                dir: dirs.base.join(format!("peer-{i}")),
                node: None,
                addr: None,
                bytes_sent: 0,
            })
            .collect(),
        room: None,
        names: HashMap::new(),
        rng: Rng(seed),
        start: Instant::now(),
        config,
    };
    let played = demo.play(Duration::from_secs(args.deadline)).await;
    let closed = demo.shutdown_all().await;
    let outcome = played?;
    closed?;
    demo.log("every node shut down cleanly");
    drop(dirs);

    say!("");
    say!(
        "{:<6} {:<9} {:>8} {:>11} {:>13}",
        "peer",
        "author",
        "messages",
        "bytes sent",
        "converged at"
    );
    for (i, row) in outcome.rows.iter().enumerate() {
        let at = row
            .converged_at
            .map_or_else(|| "-".to_owned(), |d| format!("{:.3} s", d.as_secs_f64()));
        say!("{:<6} {:<9} {:>8} {:>11} {:>13}", i, row.author, row.messages, row.bytes_sent, at);
    }
    say!("(converged at: last change of the peer's timeline after the offline peer came back)");
    match outcome.converged {
        Some(took) if outcome.checks_passed => {
            say!("all {count} peers converged in {:.3} s", took.as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        Some(took) => {
            say!(
                "NOT converged: the timelines agree after {:.3} s, but a check above failed",
                took.as_secs_f64()
            );
            Ok(ExitCode::FAILURE)
        }
        None => {
            say!("NOT converged: the {count} peers still differ after {} s", args.deadline);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The peers' data directories: a given directory (kept), or a fresh
/// temporary one removed on drop.
struct DataDirs {
    base: PathBuf,
    temporary: bool,
}

impl DataDirs {
    fn new(given: Option<&Path>) -> CliResult<Self> {
        match given {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .context(format_args!("cannot create {}", dir.display()))?;
                Ok(Self { base: dir.to_path_buf(), temporary: false })
            }
            None => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or_default();
                let base = std::env::temp_dir()
                    .join(format!("concord-demo-{}-{nanos}", std::process::id()));
                std::fs::create_dir(&base)
                    .context(format_args!("cannot create {}", base.display()))?;
                Ok(Self { base, temporary: true })
            }
        }
    }
}

impl Drop for DataDirs {
    fn drop(&mut self) {
        if self.temporary {
            if let Err(e) = std::fs::remove_dir_all(&self.base) {
                tracing::warn!(dir = %self.base.display(), error = %e, "cannot remove");
            }
        }
    }
}

fn clock_seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // Keep it short enough to type back in.
    (nanos as u64 ^ u64::from(std::process::id())) % 1_000_000
}

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// One of `items`, or `fallback` if there are none.
    fn pick<T: Copy>(&mut self, items: &[T], fallback: T) -> T {
        if items.is_empty() {
            return fallback;
        }
        let i = (self.next() % items.len() as u64) as usize;
        items.get(i).copied().unwrap_or(fallback)
    }
}

struct Peer {
    dir: PathBuf,
    /// The running node; `None` while the peer is offline.
    node: Option<Node>,
    /// Where the running node listens (with its peer id).
    addr: Option<Multiaddr>,
    /// Bytes sent by the peer's earlier nodes (counters restart with a node).
    bytes_sent: u64,
}

struct Row {
    author: String,
    messages: usize,
    bytes_sent: u64,
    converged_at: Option<Duration>,
}

struct Outcome {
    converged: Option<Duration>,
    checks_passed: bool,
    rows: Vec<Row>,
}

/// Records whether a message ever rendered on a peer.
struct Watch {
    id: MessageId,
    seen: Arc<AtomicBool>,
}

impl TimelineListener for Watch {
    fn on_diffs(&self, _room: &RoomId, diffs: &[TimelineDiff]) {
        for diff in diffs {
            if let TimelineDiff::Insert(m) | TimelineDiff::Update(m) = diff {
                if m.id == self.id {
                    self.seen.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Records when a peer's timeline last changed, in microseconds since
/// `since`: the per-peer convergence time, measured on the replica thread
/// rather than at the resolution of polling.
struct LastChange {
    since: Instant,
    micros: Arc<AtomicU64>,
}

impl TimelineListener for LastChange {
    fn on_diffs(&self, _room: &RoomId, _diffs: &[TimelineDiff]) {
        let micros = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_max(micros, Ordering::SeqCst);
    }
}

/// Timelines of several peers once they agree, and when each got there.
struct Agreement {
    took: Duration,
    per_peer: Vec<Duration>,
    timeline: Vec<Message>,
}

struct Demo {
    peers: Vec<Peer>,
    room: Option<RoomId>,
    names: HashMap<AuthorId, String>,
    rng: Rng,
    start: Instant,
    config: NodeConfig,
}

impl Demo {
    fn log(&self, text: impl std::fmt::Display) {
        say!("[{:>6.2} s] {text}", self.start.elapsed().as_secs_f64());
    }

    fn node(&self, i: usize) -> CliResult<&Node> {
        self.peers
            .get(i)
            .and_then(|p| p.node.as_ref())
            .ok_or_else(|| CliError::new(format!("peer {i} is not running")))
    }

    fn room_id(&self) -> CliResult<RoomId> {
        self.room.ok_or_else(|| CliError::new("no room yet"))
    }

    async fn room(&self, i: usize) -> CliResult<Room<SledStore>> {
        let id = self.room_id()?;
        self.node(i)?.room(id).await.context(format_args!("peer {i} cannot open the room"))
    }

    /// Opens peer `i`'s store, and unless `offline`, listens on loopback.
    async fn open(&mut self, i: usize, offline: bool) -> CliResult<()> {
        let peer = self.peers.get_mut(i).ok_or_else(|| CliError::new("no such peer"))?;
        let node = open_node(&peer.dir, self.config.clone())?;
        peer.node = Some(node.clone());
        self.names.insert(node.author(), format!("peer {i}"));
        if offline {
            return Ok(());
        }
        let addr = LOOPBACK.parse().context("bad listen address")?;
        node.listen(addr).await.context(format_args!("peer {i} cannot listen"))?;
        let addrs = node.addresses().await.context("cannot read addresses")?;
        peer.addr = addrs.into_iter().next();
        Ok(())
    }

    /// Closes peer `i`'s node, keeping its byte count.
    async fn close(&mut self, i: usize) -> CliResult<()> {
        let peer = self.peers.get_mut(i).ok_or_else(|| CliError::new("no such peer"))?;
        if let Some(node) = peer.node.take() {
            if let Ok(stats) = node.stats().await {
                peer.bytes_sent += stats.bytes_sent;
            }
            peer.addr = None;
            node.shutdown().await.context(format_args!("peer {i} did not shut down cleanly"))?;
        }
        Ok(())
    }

    /// Shuts down every running node; the first failure is returned after
    /// all were tried.
    async fn shutdown_all(&mut self) -> CliResult<()> {
        let mut first = Ok(());
        for i in 0..self.peers.len() {
            let closed = self.close(i).await;
            if first.is_ok() {
                first = closed;
            }
        }
        first
    }

    /// Dials every other running peer from peer `i`.
    async fn dial_others(&self, i: usize) -> CliResult<()> {
        let node = self.node(i)?;
        for (j, peer) in self.peers.iter().enumerate() {
            if j == i {
                continue;
            }
            if let Some(addr) = &peer.addr {
                node.dial(addr.clone()).await.context(format_args!("peer {i} cannot dial {j}"))?;
            }
        }
        Ok(())
    }

    async fn wait_connected(&self, who: &[usize], want: usize) -> CliResult<()> {
        let until = Instant::now() + CONNECT_DEADLINE;
        loop {
            let mut all = true;
            for &i in who {
                all &= self.node(i)?.peers().await.context("cannot list peers")?.len() >= want;
            }
            if all {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(CliError::new(format!(
                    "the peers did not connect within {} s",
                    CONNECT_DEADLINE.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn timeline(&self, i: usize) -> CliResult<Vec<Message>> {
        let items = self.room(i).await?.timeline().await.context("cannot read a timeline")?;
        Ok(items.into_iter().map(|item| item.message).collect())
    }

    /// Polls until the timelines of `who` are identical with every body
    /// present, for at most `deadline`. Each peer's time is when its final
    /// timeline was first seen.
    async fn agree(&self, who: &[usize], deadline: Duration) -> CliResult<Option<Agreement>> {
        let since = Instant::now();
        let mut last: Vec<Option<Vec<Message>>> = vec![None; who.len()];
        let mut changed = vec![Duration::ZERO; who.len()];
        loop {
            let now = since.elapsed();
            for (k, &i) in who.iter().enumerate() {
                let timeline = Some(self.timeline(i).await?);
                if last[k] != timeline {
                    last[k] = timeline;
                    changed[k] = now;
                }
            }
            let first = last.first().cloned().flatten().unwrap_or_default();
            let same = last.iter().all(|t| t.as_ref() == Some(&first));
            if same && first.iter().all(|m| m.body.is_some()) {
                return Ok(Some(Agreement { took: now, per_peer: changed, timeline: first }));
            }
            if now > deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn name(&self, author: &AuthorId) -> String {
        self.names.get(author).cloned().unwrap_or_else(|| short(author))
    }

    fn render(&self, m: &Message, timeline: &[Message]) -> String {
        let secs = m.hlc.millis() / 1000;
        let mut out = format!(
            "{:02}:{:02}:{:02}.{:03}  {}: {}",
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60,
            m.hlc.millis() % 1000,
            self.name(&m.author),
            m.body.as_deref().unwrap_or("(text not arrived)"),
        );
        if m.edited.is_some() {
            out.push_str(" (edited)");
        }
        if let Some(to) = m.reply_to {
            let whose = timeline.iter().find(|t| t.id == to).map(|t| self.name(&t.author));
            out.push_str(&format!(
                "  (a reply to {})",
                whose.map_or_else(|| "a message".to_owned(), |w| format!("{w}'s message"))
            ));
        }
        if !m.reactions.is_empty() {
            let r: Vec<String> = m
                .reactions
                .iter()
                .map(|r| {
                    let who: Vec<String> = r.authors.iter().map(|a| self.name(a)).collect();
                    format!("{} {}", r.emoji, who.join(", "))
                })
                .collect();
            out.push_str(&format!("  [{}]", r.join("; ")));
        }
        out
    }

    async fn play(&mut self, deadline: Duration) -> CliResult<Outcome> {
        let n = self.peers.len();
        let all: Vec<usize> = (0..n).collect();

        // 1. Start, connect (a full mesh), say hello, converge.
        for i in 0..n {
            self.open(i, false).await?;
        }
        let room = self.node(0)?.create_room("demo").await.context("cannot create the room")?;
        let room_id = room.id();
        self.room = Some(room_id);
        let ticket = room.ticket().await.context("cannot make a ticket")?;
        self.log(format!("peer 0 creates room {}; its ticket: {ticket}", short_room(&room.id())));
        for i in 1..n {
            self.node(i)?.join_ticket(&ticket).await.context("cannot join")?;
            for j in 1..i {
                let addr = self.peers[j].addr.clone();
                if let Some(addr) = addr {
                    self.node(i)?.dial(addr).await.context("cannot dial")?;
                }
            }
        }
        for i in 0..n {
            let node = self.node(i)?;
            let addr = self.peers[i].addr.clone().map(|a| a.to_string()).unwrap_or_default();
            self.log(format!("peer {i}: author {}, listening on {addr}", short(&node.author())));
        }
        self.wait_connected(&all, n - 1).await?;
        self.log(format!("all {n} peers are connected to each other"));
        let mut hellos = Vec::with_capacity(n);
        for i in 0..n {
            let text = format!("hello from peer {i}");
            hellos.push(self.room(i).await?.send(&text).await.context("cannot send")?);
            self.log(format!("peer {i} posts {text:?}"));
        }
        let Some(a) = self.agree(&all, PHASE_DEADLINE).await? else {
            return Err(CliError::new("the peers did not agree on their hellos"));
        };
        self.log(format!("all {n} peers show {} messages", a.timeline.len()));

        // 2. One peer goes offline; the others write.
        let offline = self.rng.pick(&all, 0);
        let online: Vec<usize> = all.iter().copied().filter(|&i| i != offline).collect();
        self.close(offline).await?;
        self.log(format!("peer {offline} goes offline (its node shuts down)"));
        for &i in &online {
            let text = self.rng.pick(CHATTER, "hi");
            self.room(i).await?.send(text).await.context("cannot send")?;
            self.log(format!("peer {i} posts {text:?}"));
        }
        let editor = self.rng.pick(&online, 0);
        let text = format!("hello from peer {editor}, reworded while peer {offline} was away");
        self.room(editor).await?.edit(hellos[editor], &text).await.context("cannot edit")?;
        self.log(format!("peer {editor} edits its hello to {text:?}"));
        let deleter = self.rng.pick(&online, 0);
        let oops = format!("peer {deleter}: oops, wrong room");
        let r = self.room(deleter).await?;
        let id = r.send(&oops).await.context("cannot send")?;
        r.delete(id).await.context("cannot delete")?;
        self.log(format!("peer {deleter} posts {oops:?} and deletes it"));
        let replier = self.rng.pick(&online, 0);
        let reply = format!("welcome back soon, peer {offline}");
        self.room(replier).await?.reply(hellos[offline], &reply).await.context("cannot reply")?;
        self.log(format!("peer {replier} replies {reply:?} to peer {offline}'s hello"));
        for _ in 0..2 {
            let (who, target, emoji) =
                (self.rng.pick(&online, 0), self.rng.pick(&all, 0), self.rng.pick(EMOJI, "👍"));
            self.room(who).await?.react(hellos[target], emoji).await.context("cannot react")?;
            self.log(format!("peer {who} reacts {emoji} to peer {target}'s hello"));
        }
        let Some(a) = self.agree(&online, PHASE_DEADLINE).await? else {
            return Err(CliError::new("the online peers did not agree"));
        };
        self.log(format!(
            "the {} online peers agree on {} messages; peer {offline} has seen none of it",
            online.len(),
            a.timeline.len()
        ));

        // 3. The offline peer writes with networking off.
        self.open(offline, true).await?;
        self.log(format!(
            "peer {offline} reopens its store with networking off (no listener, no dials)"
        ));
        let r = self.room(offline).await?;
        let text = format!("peer {offline} here, writing offline");
        r.send(&text).await.context("cannot send")?;
        self.log(format!("peer {offline} posts {text:?}"));
        let text = format!("hello from peer {offline}, reworded offline");
        r.edit(hellos[offline], &text).await.context("cannot edit")?;
        self.log(format!("peer {offline} edits its hello to {text:?}"));
        let (target, emoji) = (self.rng.pick(&online, 0), self.rng.pick(EMOJI, "👍"));
        r.react(hellos[target], emoji).await.context("cannot react")?;
        self.log(format!("peer {offline} reacts {emoji} to peer {target}'s hello"));
        let secret = format!("peer {offline}: a draft nobody may ever see");
        let draft = secret.clone();
        let post = r
            .node()
            .replica()
            .try_call(move |rep| rep.post(&room_id, Draft::text(draft)))
            .await
            .context("cannot post")?;
        let post_id = post.id;
        let delete = r
            .node()
            .replica()
            .try_call(move |rep| rep.delete(&room_id, &post_id))
            .await
            .context("cannot delete")?;
        self.log(format!("peer {offline} posts {secret:?} and deletes it, still offline"));
        drop(r);
        self.close(offline).await?;
        self.log(format!("peer {offline} closes its store again"));

        // 4. The delete reaches one online peer before its post.
        let early = self.rng.pick(&online, 0);
        let seen = Arc::new(AtomicBool::new(false));
        let watch = Watch { id: post_id, seen: seen.clone() };
        let _watching =
            self.room(early).await?.subscribe(Arc::new(watch)).await.context("cannot watch")?;
        let carried = delete.delivery;
        let applied = self
            .node(early)?
            .replica()
            .try_call(move |rep| rep.apply(&room_id, vec![carried]))
            .await
            .context("cannot apply the delete")?;
        let pending = matches!(applied.first(), Some(Ok(Applied::Pending)));
        self.log(format!(
            "peer {early} receives the delete of peer {offline}'s post before the post: {}",
            if pending { "held as pending" } else { "NOT held as pending" }
        ));

        // 5. The offline peer comes back; wait for everyone to agree. Each
        // peer's time is when its timeline last changed after the dial.
        self.open(offline, false).await?;
        let back = Instant::now();
        let mut changes = Vec::with_capacity(n);
        let mut subscriptions = Vec::with_capacity(n);
        for i in 0..n {
            let micros = Arc::new(AtomicU64::new(0));
            let listener = LastChange { since: back, micros: micros.clone() };
            let room = self.room(i).await?;
            subscriptions.push(room.subscribe(Arc::new(listener)).await.context("cannot watch")?);
            changes.push(micros);
        }
        self.dial_others(offline).await?;
        self.log(format!("peer {offline} reopens its store and dials the other peers"));
        let agreement = self.agree(&all, deadline).await?.map(|a| {
            let per_peer: Vec<Duration> =
                changes.iter().map(|c| Duration::from_micros(c.load(Ordering::SeqCst))).collect();
            let took = per_peer.iter().copied().max().unwrap_or_default();
            Agreement { took, per_peer, ..a }
        });
        drop(subscriptions);
        match &agreement {
            Some(a) => {
                self.log(format!("all {n} timelines are identical ({} messages)", a.timeline.len()))
            }
            None => self.log(format!("the timelines still differ after {} s", deadline.as_secs())),
        }
        say!("");
        let mut leaked = false;
        for i in 0..n {
            let timeline = self.timeline(i).await?;
            say!("peer {i} timeline ({} messages):", timeline.len());
            for m in &timeline {
                say!("  {}", self.render(m, &timeline));
            }
            leaked |= timeline
                .iter()
                .any(|m| m.id == post_id || m.body.as_deref().is_some_and(|b| b.contains(&secret)));
        }
        say!("");
        let shown = seen.load(Ordering::SeqCst);
        say!(
            "check: the post deleted offline is in no timeline: {}",
            if leaked { "FAILED" } else { "yes" }
        );
        say!(
            "check: peer {early}, which got the delete first, never showed the post: {}",
            if shown { "FAILED" } else { "yes" }
        );
        let checks_passed = pending && !leaked && !shown;

        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let node = self.node(i)?;
            let stats = node.stats().await.context("cannot read traffic counters")?;
            let messages = self.timeline(i).await?.len();
            rows.push(Row {
                author: short(&node.author()),
                messages,
                bytes_sent: self.peers[i].bytes_sent + stats.bytes_sent,
                converged_at: agreement.as_ref().and_then(|a| a.per_peer.get(i).copied()),
            });
        }
        Ok(Outcome { converged: agreement.map(|a| a.took), checks_passed, rows })
    }
}

fn short_room(id: &RoomId) -> String {
    id.to_string().chars().take(8).collect()
}
