//! Crash safety of the durable log: a child process posts, deletes and group-
//! commits on a sled store, printing an acknowledgement after each call
//! returns; the parent kills it with SIGKILL at a random moment, reopens the
//! store, and checks that every acknowledged change survived, that the store
//! opens every time, and that the view is consistent with the envelopes.
//!
//! `CONCORD_CRASH_ROUNDS=<n>` runs a longer campaign; `CONCORD_SEED` replays.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_core::{Draft, MessageId, Op, Replica, SledStore, SystemClock};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CHILD_ENV: &str = "CONCORD_CRASH_CHILD_STORE";
const DEFAULT_ROUNDS: u64 = 50;

/// The child: runs only when the parent starts this binary with `CHILD_ENV`.
#[test]
fn crash_child_entry() {
    let Ok(path) = std::env::var(CHILD_ENV) else { return };
    let seed: u64 = std::env::var("CONCORD_CRASH_CHILD_SEED").unwrap().parse().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut replica =
        Replica::open_with_seed(SledStore::open(&path).unwrap(), Arc::new(SystemClock), [5; 32])
            .unwrap();
    let room = match replica.rooms().first() {
        Some(r) => r.id,
        None => replica.create_room("crash").unwrap(),
    };
    let mut mine: Vec<MessageId> =
        replica.snapshot(&room).unwrap().messages.iter().map(|m| m.id).collect();
    let mut n = 0u64;
    loop {
        n += 1;
        match rng.random_range(0..10) {
            0 if !mine.is_empty() => {
                let id = mine.swap_remove(rng.random_range(0..mine.len()));
                replica.delete(&room, &id).unwrap();
                println!("ack delete {id}");
            }
            1 => {
                let k = rng.random_range(2..20);
                let ops = (0..k)
                    .map(|i| Op::Post { room, draft: Draft::text(format!("batch {seed} {n} {i}")) })
                    .collect();
                let ids: Vec<String> = replica
                    .commit(ops)
                    .unwrap()
                    .into_iter()
                    .map(|r| r.unwrap().id)
                    .inspect(|id| mine.push(*id))
                    .map(|id| id.to_string())
                    .collect();
                println!("ack post {}", ids.join(" "));
            }
            _ => {
                let id = replica.post(&room, Draft::text(format!("single {seed} {n}"))).unwrap().id;
                mine.push(id);
                println!("ack post {id}");
            }
        }
    }
}

#[test]
fn test_sigkill_never_loses_an_acknowledged_change() {
    let seed = common::test_seed("test_sigkill_never_loses_an_acknowledged_change");
    let rounds = std::env::var("CONCORD_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut posted: Vec<MessageId> = Vec::new();
    let mut deleted: Vec<MessageId> = Vec::new();
    let mut total_acks = 0usize;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .env("CONCORD_CRASH_CHILD_SEED", (seed ^ round).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it run for a random while (first acks included), then SIGKILL it.
        let lifetime = Duration::from_millis(rng.random_range(50..400));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let started = Instant::now();
        let mut acks = Vec::new();
        while started.elapsed() < lifetime {
            match lines.next() {
                Some(Ok(line)) => acks.push(line),
                _ => break,
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Acknowledgements already in the pipe were made before the kill.
        acks.extend(lines.map_while(Result::ok));
        for line in acks.iter().filter_map(|l| l.strip_prefix("ack ")) {
            total_acks += 1;
            let mut words = line.split(' ');
            let kind = words.next().unwrap();
            for id in words {
                let id: MessageId = id.parse().unwrap();
                match kind {
                    "post" => posted.push(id),
                    _ => deleted.push(id),
                }
            }
        }

        let replica = Replica::open_with_seed(
            SledStore::open(&path).unwrap(),
            Arc::new(SystemClock),
            [5; 32],
        )
        .unwrap_or_else(|e| panic!("round {round}: the store did not reopen: {e}"));
        let room = replica.rooms()[0].id;
        let snapshot = replica.snapshot(&room).unwrap();
        let live: std::collections::BTreeSet<MessageId> =
            snapshot.messages.iter().map(|m| m.id).collect();
        let gone: std::collections::BTreeSet<MessageId> =
            snapshot.tombstones.iter().map(|t| t.id).collect();
        for id in &posted {
            assert!(
                live.contains(id) || gone.contains(id),
                "round {round}: acknowledged post {id} was lost"
            );
        }
        for id in &deleted {
            assert!(
                gone.contains(id) && !live.contains(id),
                "round {round}: acknowledged delete of {id} was lost"
            );
        }
        assert!(
            snapshot.messages.iter().all(|m| m.body.is_some()),
            "round {round}: a body was lost"
        );
        // The view agrees with a view rendered from scratch out of the stored envelopes.
        assert_eq!(
            common::fresh_view(&replica, &room),
            snapshot,
            "round {round}: inconsistent view after a crash"
        );
    }
    println!(
        "{rounds} SIGKILL rounds, {total_acks} acknowledged calls, {} posts and {} deletes checked",
        posted.len(),
        deleted.len()
    );
    assert!(total_acks as u64 >= rounds, "the child acknowledged too little to prove anything");
}
