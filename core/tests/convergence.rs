//! Convergence law: 3 to 5 replicas post, edit, delete, react and move read
//! markers while envelopes travel in random order, duplicated and partly
//! withheld, random pairs run catch-up sync sessions, and replicas other
//! than the first keep only their recent buckets for a while (fetching the
//! older history back before the end); once everything
//! has been exchanged (directly in half the cases, by catch-up sessions
//! alone in the other half), every replica renders the identical room,
//! holds exactly the blobs of live messages, and never shows a deleted
//! message again.
//!
//! Governance changes run alongside: the first replica (the room's admin)
//! sets roles (moderators, read-only members), bans and lifts bans, and sets
//! the topic; moderators delete others' messages. Governance changes travel
//! like envelopes, in random order, and envelopes citing governance a
//! replica lacks wait for it; every replica ends with the identical
//! governance too.
//!
//! Each case is a seeded simulation. `CONCORD_SEED=<n>` replays one case;
//! `CONCORD_CASES=<n>` runs more than the default 1,000.
//!
//! Just over the house's 600 lines: the simulation and the checks run on
//! its state are read together.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use concord_core::{
    Action, Clock, Delivery, Draft, GovChange, ManualClock, MemoryStore, MessageId, Replica, Role,
    RoomId,
};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DEFAULT_CASES: u64 = 1_000;

struct Sim {
    rng: ChaCha8Rng,
    clocks: Vec<Arc<ManualClock>>,
    replicas: Vec<Replica<MemoryStore>>,
    room: RoomId,
    /// Every delivery ever made, as first sent (bodies included, even of
    /// messages deleted later: a stale peer may still hold and resend them).
    wire: Vec<Delivery>,
    /// Withheld deliveries: delivered only in the final exchange.
    withheld: Vec<usize>,
    /// Every governance change made.
    gov_wire: Vec<GovChange>,
    /// Governance changes made, and moderators' deletes of others' messages.
    gov_changes: usize,
    moderated: usize,
    /// Messages each replica has posted, for picking edit and delete targets.
    own: Vec<Vec<MessageId>>,
    /// Envelopes that had to wait for their causal past.
    pending: usize,
    /// Envelopes refused for now (nobody's fault) and offered again later.
    refused_for_now: usize,
    /// Catch-up sessions run, and flights in them answered with governance
    /// only (a banned replica may not read the room).
    syncs: usize,
    withheld_flights: usize,
    /// Windows set, and history fetches that undid them.
    evictions: usize,
    history_fetches: usize,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.random_range(3..=5);
        let mut clocks = Vec::new();
        let mut replicas = Vec::new();
        for i in 0..n {
            // Skewed clocks, up to ±2 minutes apart.
            let skew = rng.random_range(0..240_000u64);
            let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS + skew));
            let mut key = [0u8; 32];
            rng.fill(&mut key);
            key[0] = i as u8;
            replicas.push(Replica::open_with_seed(MemoryStore::new(), clock.clone(), key).unwrap());
            clocks.push(clock);
        }
        // Encrypted, history shared with new readers: keys go out with the
        // content they open, and whoever lacks one (banned when it was
        // sent, or not yet known to its sender) asks for it; with history
        // shared, every reader is entitled to every key, so everyone
        // converges. What a room that does not share history withholds
        // from late readers is tested in e2ee.rs.
        let options = concord_core::RoomOptions::default().share_history(true);
        let room = replicas[0].create_room_opts("sim", &options).unwrap();
        let (first, rest) = replicas.split_at_mut(1);
        for r in rest {
            common::join(r, &mut first[0], &room);
        }
        // The joiners' published keys, which the admin holds now.
        let gov_wire = replicas[0].governance_since(&room, &[]).unwrap();
        for r in &mut replicas {
            r.take_announcements();
        }
        Sim {
            rng,
            clocks,
            replicas,
            room,
            wire: Vec::new(),
            withheld: Vec::new(),
            gov_wire,
            refused_for_now: 0,
            gov_changes: 0,
            moderated: 0,
            own: vec![Vec::new(); n],
            pending: 0,
            syncs: 0,
            withheld_flights: 0,
            evictions: 0,
            history_fetches: 0,
        }
    }

    fn visible(&self, r: usize) -> Vec<MessageId> {
        self.replicas[r].snapshot(&self.room).unwrap().messages.iter().map(|m| m.id).collect()
    }

    fn send(&mut self, delivery: Delivery) {
        let index = self.wire.len();
        self.wire.push(delivery);
        if self.rng.random_bool(0.15) {
            self.withheld.push(index);
        }
    }

    fn step(&mut self) {
        let r = self.rng.random_range(0..self.replicas.len());
        // Time moves on: up to two hours per step, so runs cross buckets.
        let dt = self.rng.random_range(0..7_200_000u64);
        self.clocks[r].advance(dt);
        let room = self.room;
        let choice = self.rng.random_range(0..100);
        let visible = self.visible(r);
        let result = match choice {
            0..=29 => {
                let mut draft = Draft::text(format!("message {}", self.rng.random::<u32>()));
                if self.rng.random_bool(0.2) {
                    draft.reply_to = visible.choose(&mut self.rng).copied();
                }
                if self.rng.random_bool(0.1) {
                    draft.attachments.push(vec![self.rng.random(); self.rng.random_range(1..64)]);
                }
                let sent = self.replicas[r].post(&room, draft);
                if let Ok(s) = &sent {
                    self.own[r].push(s.id);
                }
                sent.ok()
            }
            30..=41 => {
                let target = self.own[r].choose(&mut self.rng).copied();
                let text = format!("edited {}", self.rng.random::<u32>());
                target.and_then(|id| self.replicas[r].edit(&room, &id, &text).ok())
            }
            42..=51 => {
                // Mostly an own message; sometimes anyone's, which only a
                // moderator's replica allows.
                let target = if self.rng.random_bool(0.7) {
                    self.own[r].choose(&mut self.rng).copied()
                } else {
                    visible.choose(&mut self.rng).copied()
                };
                let deleted = target.and_then(|id| self.replicas[r].delete(&room, &id).ok());
                if let (Some(d), Some(id)) = (&deleted, target) {
                    self.moderated += usize::from(!self.own[r].contains(&id) && d.id == id);
                }
                deleted
            }
            52..=63 => {
                let emoji = ["👍", "🎉", "❤"].choose(&mut self.rng).copied().unwrap_or("👍");
                let target = visible.choose(&mut self.rng).copied();
                let on = self.rng.random_bool(0.75);
                target.and_then(|id| {
                    if on {
                        self.replicas[r].react(&room, &id, emoji).ok()
                    } else {
                        self.replicas[r].unreact(&room, &id, emoji).ok()
                    }
                })
            }
            64..=71 => {
                let target = visible.choose(&mut self.rng).copied();
                target.and_then(|id| self.replicas[r].mark_read(&room, &id).ok())
            }
            72..=79 => {
                let others: Vec<usize> = (0..self.replicas.len()).filter(|&s| s != r).collect();
                if let Some(&s) = others.choose(&mut self.rng) {
                    self.catch_up(r, s);
                }
                None
            }
            80..=82 if r != 0 => {
                self.keep_recent(r);
                None
            }
            83..=90 => {
                // Half the time the admin (replica 0) acts.
                let who = if self.rng.random_bool(0.5) { 0 } else { r };
                self.govern(who);
                None
            }
            _ => {
                self.deliver_some(r);
                None
            }
        };
        if let Some(sent) = result {
            self.send(sent.delivery);
        }
        self.collect_announcements();
    }

    /// What replicas wrote in answer to peers (room keys, key requests,
    /// published device keys) goes on the wire, as a node gossips it.
    fn collect_announcements(&mut self) {
        for r in 0..self.replicas.len() {
            self.wire_announcements(r);
        }
    }

    /// Puts what `r` announced on the wire; whether there was anything.
    fn wire_announcements(&mut self, r: usize) -> bool {
        let answers = self.replicas[r].take_announcements();
        let any = !answers.is_empty();
        for a in answers {
            match a {
                concord_core::Announcement::Delivery(_, d) => self.wire.push(*d),
                concord_core::Announcement::Governance(_, g) => self.gov_wire.push(*g),
                _ => {}
            }
        }
        any
    }

    /// A governance action by `r`, if its role allows it: the admin sets
    /// roles, bans, lifts bans and sets the topic; anyone but the admin
    /// (replica 0, who lifts the bans before the end) may step down.
    fn govern(&mut self, r: usize) {
        let room = self.room;
        let others: Vec<usize> = (0..self.replicas.len()).filter(|&s| s != r).collect();
        let Some(&other) = others.choose(&mut self.rng) else { return };
        let member = self.replicas[other].author();
        let role = [Role::ReadOnly, Role::Member, Role::Moderator][self.rng.random_range(0..3)];
        let action = match self.rng.random_range(0..10) {
            0..=4 => Action::SetRole { member, role },
            5 => Action::Ban { member },
            6 | 7 => Action::Unban { member },
            9 if r != 0 => {
                Action::SetRole { member: self.replicas[r].author(), role: Role::Member }
            }
            _ => Action::SetTopic(format!("topic {}", self.rng.random::<u16>())),
        };
        if let Ok(change) = self.replicas[r].govern(&room, action) {
            self.gov_wire.push(change);
            self.gov_changes += 1;
        }
    }

    /// Delivers a random selection of governance changes to `r`, shuffled.
    fn deliver_governance(&mut self, r: usize, all: bool) {
        let mut batch: Vec<GovChange> =
            self.gov_wire.iter().filter(|_| all || self.rng.random_bool(0.5)).cloned().collect();
        batch.shuffle(&mut self.rng);
        for outcome in self.replicas[r].apply_governance(&self.room, batch).unwrap() {
            outcome.expect("an honest governance change was refused");
        }
    }

    /// Delivers a random selection of the wire to `r`, shuffled, with duplicates.
    fn deliver_some(&mut self, r: usize) {
        if self.rng.random_bool(0.5) {
            self.deliver_governance(r, false);
        }
        let withheld: BTreeSet<usize> = self.withheld.iter().copied().collect();
        let mut batch: Vec<Delivery> = Vec::new();
        for (i, d) in self.wire.iter().enumerate() {
            if !withheld.contains(&i) && self.rng.random_bool(0.5) {
                batch.push(d.clone());
                if self.rng.random_bool(0.1) {
                    batch.push(d.clone());
                }
            }
        }
        batch.shuffle(&mut self.rng);
        // Sometimes in several calls, so pending state crosses commits.
        let parts = self.rng.random_range(1..=3);
        let chunk = batch.len().div_ceil(parts).max(1);
        for part in batch.chunks(chunk) {
            for outcome in self.replicas[r].apply(&self.room, part.to_vec()).unwrap() {
                match outcome {
                    Ok(applied) => {
                        self.pending += usize::from(applied == concord_core::Applied::Pending)
                    }
                    // Refused for now, nobody's fault: its author is not a
                    // reader here until governance this replica lacks
                    // arrives (it stays on the wire and comes again).
                    Err(e) if !e.is_senders_fault() => self.refused_for_now += 1,
                    Err(e) => panic!("an honest envelope was rejected: {e:?}"),
                }
            }
        }
        if self.rng.random_bool(0.25) {
            self.check_view_is_fresh(r);
        }
    }

    /// The incrementally maintained view of `r` equals a view rendered from
    /// scratch out of the same envelopes: no change may leave a stale view.
    fn check_view_is_fresh(&self, r: usize) {
        assert_eq!(
            common::fresh_view(&self.replicas[r], &self.room),
            self.replicas[r].snapshot(&self.room).unwrap(),
            "replica {r}'s view is stale"
        );
    }

    /// One catch-up session between `a` (initiator) and `b`, through bytes.
    fn catch_up(&mut self, a: usize, b: usize) {
        let now = self.clocks[a].now_millis();
        let (lo, hi) = self.replicas.split_at_mut(a.max(b));
        let (x, y) = if a < b { (&mut lo[a], &mut hi[0]) } else { (&mut hi[0], &mut lo[b]) };
        let run = common::sync_pair(x, y, &self.room, now);
        assert_eq!(run.rejected, 0, "catch-up rejected an honest envelope");
        self.syncs += 1;
        self.withheld_flights += run.withheld as usize;
        if self.rng.random_bool(0.25) {
            self.check_view_is_fresh(a);
            self.check_view_is_fresh(b);
        }
    }

    /// `r` keeps only its most recent buckets. It first catches up with
    /// replica 0 (which never evicts), so that nothing only `r` held is lost:
    /// evicting forgets, by design, what no peer has.
    fn keep_recent(&mut self, r: usize) {
        self.catch_up(r, 0);
        // What `r` wrote in answer to that catch-up (key requests, room
        // keys) exists only at `r` until another catch-up carries it.
        while self.wire_announcements(r) {
            self.catch_up(r, 0);
        }
        let today = concord_core::bucket_of(concord_core::Hlc::new(self.clocks[r].now_millis(), 0));
        let oldest = today.saturating_sub(self.rng.random_range(0..2));
        self.replicas[r].evict_before(&self.room, oldest).unwrap();
        self.evictions += 1;
        if self.rng.random_bool(0.25) {
            self.check_view_is_fresh(r);
        }
    }

    /// Governance settles before the end: every change reaches everyone, and
    /// the admin lifts every ban, so that every replica may read the room
    /// again (a banned replica is served nothing by catch-up, and a windowed
    /// one could not fetch its history back).
    fn settle_governance(&mut self) {
        let room = self.room;
        for r in 0..self.replicas.len() {
            self.deliver_governance(r, true);
        }
        let banned: Vec<_> =
            self.replicas[0].governance(&room).unwrap().bans().keys().copied().collect();
        for member in banned {
            let lifted = self.replicas[0].govern(&room, Action::Unban { member }).unwrap();
            self.gov_wire.push(lifted);
            self.gov_changes += 1;
        }
        for r in 0..self.replicas.len() {
            self.deliver_governance(r, true);
            let me = self.replicas[r].author();
            assert!(self.replicas[r].may_read(&room, &me).unwrap(), "replica {r} may not read");
        }
    }

    /// Windowed replicas fetch older history from replica 0 until they hold
    /// it all again; their pages show it as it arrives.
    fn fetch_all_history(&mut self) {
        let room = self.room;
        let now = self.clocks[0].now_millis();
        for r in 1..self.replicas.len() {
            let mut fetches = 0;
            while let Some((mut session, fetch)) =
                concord_core::SyncSession::fetch_history(&self.replicas[r], &room, 10, now)
            {
                fetches += 1;
                assert!(fetches < 1000, "history fetch does not end");
                let (lo, hi) = self.replicas.split_at_mut(r);
                let mut server = concord_core::SyncSession::respond(&lo[0], &room, now);
                server.set_peer(hi[0].author());
                for reply in server.handle(&mut lo[0], &fetch, now).unwrap() {
                    assert!(session.handle(&mut hi[0], &reply, now).unwrap().is_empty());
                }
                assert!(session.is_done());
                self.history_fetches += 1;
            }
        }
    }

    /// Messages and reactions waiting for a room key, over every replica.
    fn waiting_for_keys(&self) -> usize {
        self.replicas.iter().map(|r| r.waiting_for_keys(&self.room).unwrap()).sum()
    }

    /// Every pair of replicas catches up, twice over: sync alone, without the
    /// wire, must bring everyone to the same room.
    fn sync_all(&mut self) {
        let n = self.replicas.len();
        for _round in 0..2 {
            for a in 0..n {
                for b in a + 1..n {
                    if self.rng.random_bool(0.5) {
                        self.catch_up(a, b);
                    } else {
                        self.catch_up(b, a);
                    }
                }
            }
        }
    }

    /// Everyone receives everything: the original wire (stale bodies of
    /// deleted messages included) and what every replica would forward.
    fn exchange_all(&mut self) {
        for _round in 0..2 {
            for r in 0..self.replicas.len() {
                // Governance first or last: pending envelopes wait either way.
                if self.rng.random_bool(0.5) {
                    self.deliver_governance(r, true);
                }
            }
            self.collect_announcements();
            let mut everything = self.wire.clone();
            for r in &self.replicas {
                everything.extend(r.deliveries(&self.room).unwrap());
            }
            for r in 0..self.replicas.len() {
                let mut batch = everything.clone();
                batch.shuffle(&mut self.rng);
                for outcome in self.replicas[r].apply(&self.room, batch).unwrap() {
                    if let Err(e) = outcome {
                        // Governance last: refused for now, offered again.
                        assert!(!e.is_senders_fault(), "an honest envelope was rejected: {e:?}");
                    }
                }
                self.deliver_governance(r, true);
            }
        }
    }

    fn check(&self, tally: &mut Tally) {
        let first = self.replicas[0].snapshot(&self.room).unwrap();
        tally.messages += first.messages.len();
        tally.tombstones += first.tombstones.len();
        tally.edited += first.messages.iter().filter(|m| m.edited.is_some()).count();
        tally.reactions += first.messages.iter().map(|m| m.reactions.len()).sum::<usize>();
        tally.read_markers += first.read_markers.len();
        tally.buckets += first
            .messages
            .iter()
            .map(|m| concord_core::bucket_of(m.hlc))
            .collect::<BTreeSet<_>>()
            .len();
        let governance = self.replicas[0].governance(&self.room).unwrap();
        for (i, r) in self.replicas.iter().enumerate().skip(1) {
            assert_eq!(
                r.snapshot(&self.room).unwrap(),
                first,
                "replica {i} differs from replica 0"
            );
            assert_eq!(
                r.governance(&self.room).unwrap(),
                governance,
                "replica {i}'s governance differs from replica 0's"
            );
        }
        let deleted: BTreeSet<MessageId> = first.tombstones.iter().map(|t| t.id).collect();
        assert!(
            first.messages.iter().all(|m| !deleted.contains(&m.id)),
            "a deleted message is visible"
        );
        assert!(first.messages.iter().all(|m| m.body.is_some()), "a live message lacks its body");
        let cursors: Vec<_> = first.messages.iter().map(|m| m.cursor).collect();
        let mut sorted = cursors.clone();
        sorted.sort();
        assert_eq!(cursors, sorted, "timeline not in (hlc, author, id) order");
        // Exactly the blobs of live messages remain, on every replica.
        let live: BTreeSet<[u8; 32]> = first
            .messages
            .iter()
            .flat_map(|m| m.attachments.iter().map(|a| *a.as_bytes()))
            .collect();
        for r in &self.replicas {
            let mut held_attachments = BTreeSet::new();
            let mut bodies = 0;
            for d in r.deliveries(&self.room).unwrap() {
                for b in &d.blobs {
                    let h = *blake3::hash(b).as_bytes();
                    if live.contains(&h) {
                        held_attachments.insert(h);
                    } else {
                        bodies += 1;
                    }
                }
            }
            assert_eq!(held_attachments, live, "attachments held differ from live attachments");
            assert_eq!(bodies, first.messages.len(), "bodies held differ from live messages");
        }
    }
}

/// What the cases exercised, so the suite cannot pass by doing nothing.
#[derive(Default, Debug)]
struct Tally {
    messages: usize,
    tombstones: usize,
    edited: usize,
    reactions: usize,
    read_markers: usize,
    buckets: usize,
    pending: usize,
    syncs: usize,
    withheld_flights: usize,
    ended_by_sync: usize,
    evictions: usize,
    history_fetches: usize,
    gov_changes: usize,
    moderated: usize,
    /// Rounds after the end in which some replica still waited for a key.
    waited_for_keys: usize,
}

fn run_case(seed: u64, tally: &mut Tally) {
    let mut sim = Sim::new(seed);
    let steps = sim.rng.random_range(20..60);
    for _ in 0..steps {
        sim.step();
    }
    sim.settle_governance();
    sim.fetch_all_history();
    // Half the cases end with every envelope delivered directly, half with
    // catch-up sessions alone.
    let by_sync = sim.rng.random_bool(0.5);
    if by_sync {
        sim.sync_all();
        tally.ended_by_sync += 1;
    } else {
        sim.exchange_all();
    }
    // Keys asked for travel like anything else: the requests and the room
    // keys that answer them are envelopes. A few more rounds bring them.
    let mut rounds = 0;
    while sim.waiting_for_keys() > 0 {
        rounds += 1;
        assert!(
            rounds <= 6,
            "keys still missing after {rounds} rounds: {}",
            sim.waiting_for_keys()
        );
        tally.waited_for_keys += 1;
        sim.collect_announcements();
        for r in 0..sim.replicas.len() {
            sim.deliver_governance(r, true);
        }
        if by_sync {
            sim.sync_all();
        } else {
            sim.exchange_all();
        }
    }
    tally.pending += sim.pending;
    tally.syncs += sim.syncs;
    tally.withheld_flights += sim.withheld_flights;
    tally.evictions += sim.evictions;
    tally.history_fetches += sim.history_fetches;
    tally.gov_changes += sim.gov_changes;
    tally.moderated += sim.moderated;
    sim.check(tally);
}

#[test]
fn test_replicas_converge_under_random_delivery() {
    let base = common::test_seed("test_replicas_converge_under_random_delivery");
    let replay = std::env::var("CONCORD_SEED").is_ok();
    let cases = if replay {
        1
    } else {
        std::env::var("CONCORD_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(DEFAULT_CASES)
    };
    let mut tally = Tally::default();
    for i in 0..cases {
        let seed = base.wrapping_add(i);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(seed, &mut tally)));
        if let Err(panic) = result {
            eprintln!("convergence failed for seed {seed}; replay with CONCORD_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
    println!("{cases} convergence cases passed: {tally:?}");
    if !replay {
        let t = &tally;
        assert!(t.messages > 0 && t.tombstones > 0 && t.edited > 0 && t.reactions > 0, "{t:?}");
        assert!(t.read_markers > 0 && t.pending > 0 && t.buckets > cases as usize, "{t:?}");
        assert!(t.syncs > cases as usize && t.ended_by_sync > 0, "{t:?}");
        assert!(t.withheld_flights > 0, "{t:?}");
        assert!(t.evictions > 0 && t.history_fetches > 0, "{t:?}");
        assert!(t.gov_changes > cases as usize && t.moderated > 0, "{t:?}");
    }
}
