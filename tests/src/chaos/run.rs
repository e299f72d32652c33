//! Runs one schedule: starts the relay and the devices as processes, sets
//! up the room, plays the steps at their times (workload and faults), then
//! the quiet phase: every fault healed, every process up, reads polled
//! until the checker finds the room settled or the deadline passes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use super::check::{check, Counts};
use super::history::{FinalRead, History, Outcome};
use super::process::{Dirs, NoReply, NodeProcess};
use super::protocol::{Cmd, Item, Ready};
use super::proxy::{LinkMode, Proxy};
use super::schedule::{Schedule, Target};

/// How long a workload operation may take before it counts as unknown.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a network command (dial, block) may take.
pub(super) const NET_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the quiet phase reads every device.
const QUIET_POLL: Duration = Duration::from_millis(500);

/// How a schedule is run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The `concord-chaos-node` binary.
    pub node_bin: PathBuf,
    /// The longest quiet phase.
    pub quiet: Duration,
    /// DynamoDB Local's endpoint and its JVM's pid, when the relay uses it.
    pub dynamodb: Option<(String, u32)>,
    /// Where schedules keep their processes' directories.
    pub work_dir: PathBuf,
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The log and reads.
    pub history: History,
    /// The checker's counts.
    pub counts: Counts,
}

/// A timed consequence of an earlier step.
#[derive(Clone, Debug)]
pub(super) enum Later {
    Restart(Target),
    Heal(u64),
    LinkClean(usize),
    StoreResume,
}

pub(super) struct Runner<'a> {
    pub(super) schedule: &'a Schedule,
    pub(super) config: &'a RunConfig,
    pub(super) dirs: Dirs,
    pub(super) relay: Option<NodeProcess>,
    pub(super) relay_ready: Ready,
    pub(super) devices: Vec<Option<NodeProcess>>,
    pub(super) readies: Vec<Ready>,
    pub(super) proxies: Vec<Proxy>,
    pub(super) base_ticket: String,
    pub(super) invite_tickets: Vec<Option<String>>,
    pub(super) partition: Option<(u64, Vec<usize>, bool)>,
    pub(super) skews: Vec<i64>,
    pub(super) store_paused: bool,
    pub(super) later: Vec<(Instant, Later)>,
    pub(super) history: History,
}

fn socket_of(addr: &str) -> Result<SocketAddr> {
    // "/ip4/127.0.0.1/tcp/PORT/p2p/ID"
    let parts: Vec<&str> = addr.split('/').collect();
    let port = parts.get(4).ok_or_else(|| anyhow!("no port in {addr}"))?;
    Ok(format!("{}:{}", parts[2], port).parse()?)
}

fn key_seed(seed: u64, who: u64) -> String {
    hex::encode(blake3::hash(format!("concord-chaos-{seed}-{who}").as_bytes()).as_bytes())
}

pub(super) async fn call(
    p: Option<&NodeProcess>,
    cmd: Cmd,
    timeout: Duration,
) -> Result<serde_json::Value, Outcome> {
    let Some(p) = p else { return Err(Outcome::Failed) };
    match p.call(cmd, timeout).await {
        Ok(r) if r.ok => Ok(r.data),
        Ok(r) => {
            if std::env::var_os("CONCORD_CHAOS_VERBOSE").is_some() {
                eprintln!("chaos: refused: {}", r.error.unwrap_or_default());
            }
            Err(Outcome::Failed)
        }
        Err(NoReply::Timeout | NoReply::Gone) => Err(Outcome::Unknown),
    }
}

pub(super) fn outcome<T>(r: &Result<T, Outcome>) -> Outcome {
    match r {
        Ok(_) => Outcome::Acked,
        Err(o) => *o,
    }
}

/// Runs `schedule` and checks it.
pub async fn run(schedule: &Schedule, config: &RunConfig) -> Result<RunResult> {
    let root = config.work_dir.join(format!("seed-{}-{}", schedule.seed, std::process::id()));
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    let dirs = Dirs { root: root.clone() };
    let mut runner = Runner::setup(schedule, config, dirs).await?;
    let result = runner.play().await;
    let counts = match result {
        Ok(()) => {
            runner.quiet().await?;
            check(&runner.history)
        }
        Err(e) => return Err(e),
    };
    runner.stop().await;
    let history = runner.history;
    if counts.clean() && std::env::var_os("CONCORD_CHAOS_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        // Kept for diagnosis: the processes' directories and logs, and the
        // whole history the checker judged.
        std::fs::write(root.join("history.json"), serde_json::to_string_pretty(&history)?)?;
    }
    Ok(RunResult { history, counts })
}

impl<'a> Runner<'a> {
    async fn spawn(&mut self, target: Target) -> Result<NodeProcess> {
        let s = self.schedule;
        let (dir, mut args) = match target {
            Target::Relay => {
                let dir = self.dirs.relay();
                let mut args = vec!["--relay".to_string()];
                if let Some((endpoint, _)) = &self.config.dynamodb {
                    let prefix = format!("chaos_{}_{}_", s.seed, std::process::id());
                    args.extend(["--dynamodb".into(), endpoint.clone(), prefix]);
                }
                (dir, args)
            }
            Target::Device(n) => {
                let mut args = vec!["--skew-ms".to_string(), self.skews[n].to_string()];
                if let Some(bug) = &s.bug {
                    args.extend(["--bug".into(), bug.clone()]);
                }
                (self.dirs.device(n), args)
            }
        };
        let who = match target {
            Target::Relay => 1000,
            Target::Device(n) => n as u64,
        };
        args.extend(["--dir".into(), dir.display().to_string()]);
        args.extend(["--key-seed".into(), key_seed(s.seed, who)]);
        NodeProcess::spawn(&self.config.node_bin, &args, &Dirs::log(&dir)).await
    }

    async fn setup(schedule: &'a Schedule, config: &'a RunConfig, dirs: Dirs) -> Result<Self> {
        let n = schedule.devices;
        let mut me = Self {
            schedule,
            config,
            dirs,
            relay: None,
            relay_ready: Ready {
                event: String::new(),
                peer_id: String::new(),
                author: String::new(),
                addr: String::new(),
            },
            devices: (0..n).map(|_| None).collect(),
            readies: Vec::new(),
            proxies: Vec::new(),
            base_ticket: String::new(),
            invite_tickets: vec![None; n],
            partition: None,
            skews: vec![0; n],
            store_paused: false,
            later: Vec::new(),
            history: History { devices: n, ..History::default() },
        };
        let relay = me.spawn(Target::Relay).await.context("start the relay")?;
        me.relay_ready = relay.ready.clone();
        me.history.relay_author = relay.ready.author.clone();
        let relay_socket = socket_of(&relay.ready.addr)?;
        me.relay = Some(relay);
        for d in 0..n {
            me.proxies.push(Proxy::start(relay_socket, schedule.seed ^ (d as u64 + 7)).await?);
            let p =
                me.spawn(Target::Device(d)).await.with_context(|| format!("start device {d}"))?;
            me.readies.push(p.ready.clone());
            me.history.authors.push(p.ready.author.clone());
            me.devices[d] = Some(p);
        }
        let mut members: Vec<String> = me.history.authors[1..schedule.initial].to_vec();
        members.push(me.history.relay_author.clone());
        let created = call(me.devices[0].as_ref(), Cmd::CreateRoom { members }, OP_TIMEOUT)
            .await
            .map_err(|o| anyhow!("create the room: {o:?}"))?;
        me.base_ticket = created["ticket"].as_str().unwrap_or_default().to_owned();
        for d in 1..schedule.initial {
            let ticket = me.base_ticket.clone();
            call(me.devices[d].as_ref(), Cmd::Join { ticket }, OP_TIMEOUT)
                .await
                .map_err(|o| anyhow!("device {d} joins: {o:?}"))?;
        }
        for d in 0..n {
            me.connect(d).await;
        }
        // Every initial member holds the founding governance before the
        // workload starts, so that "acknowledged" means what it says.
        let want = schedule.initial;
        let deadline = Instant::now() + Duration::from_secs(20);
        for d in 0..schedule.initial {
            loop {
                let got = call(me.devices[d].as_ref(), Cmd::Members, NET_TIMEOUT).await;
                let count = got.ok().and_then(|v| v["members"].as_array().map(|a| a.len()));
                if count.is_some_and(|c| c > want) || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(me)
    }

    fn relay_dial_addr(&self, d: usize) -> String {
        format!(
            "/ip4/127.0.0.1/tcp/{}/p2p/{}",
            self.proxies[d].addr().port(),
            self.relay_ready.peer_id
        )
    }

    /// Device `d` dials the relay (through its link) and every device up.
    pub(super) async fn connect(&self, d: usize) {
        let Some(p) = self.devices[d].as_ref() else { return };
        let _ = p.call(Cmd::Dial { addr: self.relay_dial_addr(d) }, NET_TIMEOUT).await;
        for (o, other) in self.devices.iter().enumerate() {
            if o != d && other.is_some() {
                let addr = self.readies[o].addr.clone();
                let _ = p.call(Cmd::Dial { addr }, NET_TIMEOUT).await;
            }
        }
    }

    fn peer(&self, t: Target) -> Option<(&NodeProcess, String)> {
        match t {
            Target::Relay => self.relay.as_ref().map(|p| (p, self.relay_ready.peer_id.clone())),
            Target::Device(d) => {
                self.devices[d].as_ref().map(|p| (p, self.readies[d].peer_id.clone()))
            }
        }
    }

    /// The peer id of a process, up or down (it is stable across restarts).
    fn peer_id(&self, t: Target) -> String {
        match t {
            Target::Relay => self.relay_ready.peer_id.clone(),
            Target::Device(d) => self.readies[d].peer_id.clone(),
        }
    }

    /// Blocks (or unblocks) every pair across the partition, both ways.
    pub(super) async fn apply_partition(&self, side: &[usize], relay: bool, on: bool) {
        let all: Vec<Target> =
            (0..self.schedule.devices).map(Target::Device).chain([Target::Relay]).collect();
        let inside = |t: &Target| match t {
            Target::Relay => relay,
            Target::Device(d) => side.contains(d),
        };
        for a in &all {
            for b in &all {
                if inside(a) == inside(b) {
                    continue;
                }
                // The peer id of a process that is down is still known: a
                // block held by a process that is up must be lifted even
                // while the peer it names is down.
                if let Some((pa, _)) = self.peer(*a) {
                    let peer = self.peer_id(*b);
                    let _ = pa.call(Cmd::Block { peer, on }, NET_TIMEOUT).await;
                }
            }
        }
    }

    async fn play(&mut self) -> Result<()> {
        let start = Instant::now();
        for step in &self.schedule.steps {
            let at = start + Duration::from_millis(step.at_ms);
            self.run_later_until(at).await?;
            tokio::time::sleep_until(at.into()).await;
            self.step(&step.action).await?;
        }
        Ok(())
    }

    async fn run_later_until(&mut self, until: Instant) -> Result<()> {
        loop {
            self.later.sort_by_key(|(t, _)| *t);
            let Some((t, _)) = self.later.first() else { return Ok(()) };
            if *t > until {
                return Ok(());
            }
            let (t, what) = self.later.remove(0);
            tokio::time::sleep_until(t.into()).await;
            self.do_later(what).await?;
        }
    }

    async fn do_later(&mut self, what: Later) -> Result<()> {
        match what {
            Later::Restart(t) => self.restart(t).await?,
            Later::Heal(id) => {
                if let Some((pid, side, relay)) = self.partition.clone() {
                    if pid == id {
                        self.apply_partition(&side, relay, false).await;
                        self.partition = None;
                        for d in 0..self.schedule.devices {
                            self.connect(d).await;
                        }
                    }
                }
            }
            Later::LinkClean(d) => self.proxies[d].set_mode(LinkMode::default()),
            Later::StoreResume => self.store_pause(false),
        }
        Ok(())
    }

    pub(super) fn store_pause(&mut self, pause: bool) {
        let Some((_, pid)) = &self.config.dynamodb else { return };
        if self.store_paused == pause {
            return;
        }
        let signal = if pause { "-STOP" } else { "-CONT" };
        let _ = std::process::Command::new("kill").args([signal, &pid.to_string()]).status();
        self.store_paused = pause;
    }

    pub(super) async fn kill(&mut self, t: Target, down_ms: u64) {
        let p = match t {
            Target::Relay => self.relay.take(),
            Target::Device(d) => self.devices[d].take(),
        };
        if let Some(p) = p {
            p.kill().await;
            self.later.push((Instant::now() + Duration::from_millis(down_ms), Later::Restart(t)));
        }
    }

    async fn restart(&mut self, t: Target) -> Result<()> {
        let up = match t {
            Target::Relay => self.relay.is_some(),
            Target::Device(d) => self.devices[d].is_some(),
        };
        if up {
            return Ok(());
        }
        if t == Target::Relay && self.store_paused {
            // A relay writes out its outbox to its store before it is
            // ready, so it cannot start while the store is down: it
            // restarts once the store answers again.
            self.later.push((Instant::now() + Duration::from_millis(200), Later::Restart(t)));
            return Ok(());
        }
        let mut tries = 0;
        let p = loop {
            match self.spawn(t).await {
                Ok(p) => break p,
                Err(e) => {
                    self.history.reopen_failures += 1;
                    eprintln!("chaos: seed {}: {t:?} would not restart: {e:#}", self.schedule.seed);
                    tries += 1;
                    if tries == 3 {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        match t {
            Target::Relay => {
                let socket = socket_of(&p.ready.addr)?;
                self.relay_ready = p.ready.clone();
                self.relay = Some(p);
                for proxy in &self.proxies {
                    proxy.retarget(socket);
                }
                if let Some((_, side, relay)) = self.partition.clone() {
                    self.apply_partition(&side, relay, true).await;
                }
                for d in 0..self.schedule.devices {
                    self.connect(d).await;
                }
            }
            Target::Device(d) => {
                self.readies[d] = p.ready.clone();
                self.devices[d] = Some(p);
                if let Some(ticket) = self.invite_tickets[d].clone() {
                    let _ = call(self.devices[d].as_ref(), Cmd::Join { ticket }, OP_TIMEOUT).await;
                }
                if let Some((_, side, relay)) = self.partition.clone() {
                    self.apply_partition(&side, relay, true).await;
                }
                self.connect(d).await;
                for o in 0..self.schedule.devices {
                    if o != d {
                        self.connect(o).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Heals everything, restarts what is down, and polls until settled.
    async fn quiet(&mut self) -> Result<()> {
        self.store_pause(false);
        if let Some((_, side, relay)) = self.partition.take() {
            self.apply_partition(&side, relay, false).await;
        }
        for proxy in &self.proxies {
            proxy.set_mode(LinkMode::default());
        }
        self.later.clear();
        let all: Vec<Target> = [Target::Relay]
            .into_iter()
            .chain((0..self.schedule.devices).map(Target::Device))
            .collect();
        for t in all {
            self.restart(t).await?;
        }
        for d in 0..self.schedule.devices {
            if self.skews[d] != 0 {
                self.skews[d] = 0;
                let _ = call(self.devices[d].as_ref(), Cmd::Skew { millis: 0 }, NET_TIMEOUT).await;
            }
        }
        let start = Instant::now();
        let mut last_dial = Instant::now();
        for d in 0..self.schedule.devices {
            self.connect(d).await;
        }
        loop {
            self.history.finals = self.read_all().await;
            if check(&self.history).settled() {
                self.history.converged_after = Some(start.elapsed());
                break;
            }
            if start.elapsed() > self.config.quiet {
                break;
            }
            if last_dial.elapsed() > Duration::from_secs(3) {
                for d in 0..self.schedule.devices {
                    self.connect(d).await;
                }
                last_dial = Instant::now();
            }
            tokio::time::sleep(QUIET_POLL).await;
        }
        Ok(())
    }

    async fn read_all(&self) -> Vec<Option<FinalRead>> {
        let probe: Vec<String> = self
            .history
            .posts
            .values()
            .filter(|p| {
                p.delete == Some(Outcome::Acked)
                    || (p.post_delete && p.outcome == Some(Outcome::Acked))
            })
            .filter_map(|p| p.id.clone())
            .collect();
        let mut out = Vec::new();
        for d in 0..self.schedule.devices {
            let read =
                call(self.devices[d].as_ref(), Cmd::Read { probe: probe.clone() }, OP_TIMEOUT)
                    .await;
            let members = call(self.devices[d].as_ref(), Cmd::Members, OP_TIMEOUT).await;
            out.push(match (read, members) {
                (Ok(r), Ok(m)) => {
                    let items: Vec<Item> =
                        serde_json::from_value(r["items"].clone()).unwrap_or_default();
                    let found: Vec<bool> =
                        serde_json::from_value(r["probe"].clone()).unwrap_or_default();
                    let members = serde_json::from_value(m["members"].clone()).unwrap_or_default();
                    let keyed = serde_json::from_value(m["keyed"].clone()).unwrap_or_default();
                    Some(FinalRead {
                        items,
                        members,
                        keyed,
                        probe: probe.iter().cloned().zip(found).collect(),
                    })
                }
                _ => None,
            });
        }
        out
    }

    async fn stop(&mut self) {
        self.store_pause(false);
        for d in 0..self.schedule.devices {
            if let Some(p) = self.devices[d].take() {
                p.shutdown().await;
            }
        }
        if let Some(p) = self.relay.take() {
            p.kill().await;
        }
        self.history.panics = count_panics(&self.dirs.root);
    }
}

/// Panics in every process log under `root`.
fn count_panics(root: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(root) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| {
            std::fs::read_to_string(e.path()).unwrap_or_default().matches("panicked at").count()
                as u64
        })
        .sum()
}
