//! The chaos harness's kept schedules, replayed against real processes
//! (`concord-chaos-node` children: device nodes and a relay on sled), and
//! the harness's own tests: the same seed draws the same schedule, the
//! checker counts every kind of broken promise, and a deliberate bug is
//! caught.
//!
//! - `tests/chaos/regressions/*.json`: schedules that once failed; each
//!   must pass. Those of bugs still open are named `open-*.json` or have
//!   their own `#[ignore]`d test naming the bug.
//! - `tests/chaos/canary/ack-before-flush.json`: the shrunk schedule of the
//!   deliberate bug (posts acknowledged before they are written); it must
//!   fail with lost messages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use concord_tests::chaos::check::{check, Counts};
use concord_tests::chaos::history::{FinalRead, History, Outcome, PostRecord};
use concord_tests::chaos::protocol::Item;
use concord_tests::chaos::run::{run, RunConfig};
use concord_tests::chaos::schedule::{generate, Options, Schedule};

fn kept(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("chaos").join(path)
}

fn config(work: &Path) -> RunConfig {
    RunConfig {
        node_bin: PathBuf::from(env!("CARGO_BIN_EXE_concord-chaos-node")),
        quiet: Duration::from_secs(20),
        dynamodb: None,
        work_dir: work.to_path_buf(),
    }
}

async fn replay(path: &Path) -> Counts {
    let schedule: Schedule = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(!schedule.dynamodb, "{}: kept schedules run on the sled relay store", path.display());
    let work = tempfile::tempdir().unwrap();
    let result = run(&schedule, &config(work.path())).await.unwrap();
    eprintln!("{}: {:?}", path.display(), result.counts);
    result.counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_every_kept_regression_schedule_passes() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kept("regressions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with("open-"))
        .collect();
    files.sort();
    for file in files {
        let counts = replay(&file).await;
        assert!(counts.clean(), "{}: {}", file.display(), counts.failures());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_the_ack_before_flush_bug_is_caught() {
    let counts = replay(&kept("canary/ack-before-flush.json")).await;
    assert!(counts.lost > 0, "the deliberate bug went unnoticed: {counts:?}");
}

#[test]
fn test_the_same_seed_draws_the_same_schedule() {
    let options = Options { duration_ms: 5_000, dynamodb: true, bug: None, without: Vec::new() };
    let a = generate(7, &options);
    assert_eq!(a, generate(7, &options));
    assert_ne!(a, generate(8, &options));
    let text = serde_json::to_string(&a).unwrap();
    assert_eq!(serde_json::from_str::<Schedule>(&text).unwrap(), a);
    // Every kind of step is drawn within a few seeds.
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 0..40 {
        kinds.extend(generate(seed, &options).steps.iter().map(|s| s.action.kind()));
    }
    for kind in [
        "post",
        "edit",
        "delete",
        "post_delete",
        "react",
        "invite",
        "set_role",
        "remove",
        "kill_relay",
        "kill_device",
        "partition",
        "lossy_link",
        "clock_skew",
        "store_outage",
    ] {
        assert!(kinds.contains(kind), "no {kind} in 40 seeds");
    }
    let without = Options { without: vec!["invite".into()], ..options };
    assert!(
        (0..40).all(|s| generate(s, &without).steps.iter().all(|x| x.action.kind() != "invite"))
    );
}

fn item(id: &str, author: &str, body: &str) -> Item {
    Item {
        id: id.into(),
        author: author.into(),
        body: Some(body.into()),
        waiting: false,
        reply_to: None,
        edited: false,
        reactions: Vec::new(),
        attachments: Vec::new(),
    }
}

/// Two devices, one acknowledged post by device 0, both showing it.
fn clean_history() -> History {
    let mut h =
        History { devices: 2, authors: vec!["a0".into(), "a1".into()], ..History::default() };
    h.posts.insert(
        0,
        PostRecord {
            author: 0,
            text: "s1p0".into(),
            outcome: Some(Outcome::Acked),
            id: Some("m0".into()),
            ..PostRecord::default()
        },
    );
    let read = FinalRead {
        items: vec![item("m0", "a0", "s1p0")],
        members: vec!["a0".into(), "a1".into()],
        ..FinalRead::default()
    };
    h.finals = vec![Some(read.clone()), Some(read)];
    h.converged_after = Some(Duration::from_millis(10));
    h
}

#[test]
fn test_the_checker_counts_each_broken_promise() {
    assert!(check(&clean_history()).clean());

    let mut lost = clean_history();
    lost.finals[1].as_mut().unwrap().items.clear();
    let c = check(&lost);
    assert_eq!((c.lost, c.divergent), (1, 1), "{c:?}");

    let mut resurrected = clean_history();
    resurrected.posts.get_mut(&0).unwrap().delete = Some(Outcome::Acked);
    assert_eq!(check(&resurrected).resurrected, 2);

    let mut stale = clean_history();
    stale.posts.get_mut(&0).unwrap().edits.push(("s1p0e0".into(), Outcome::Acked));
    assert_eq!(check(&stale).stale_bodies, 2);

    let mut unknown_edit = clean_history();
    unknown_edit.posts.get_mut(&0).unwrap().edits.push(("s1p0e0".into(), Outcome::Unknown));
    assert!(check(&unknown_edit).clean(), "an edit without a reply may not have happened");

    let mut duplicate = clean_history();
    duplicate.finals[0].as_mut().unwrap().items.push(item("m0", "a0", "s1p0"));
    assert_eq!(check(&duplicate).duplicates, 1);
    // A post without a reply (its id unknown) shown under two ids.
    let mut twice = clean_history();
    let post = twice.posts.get_mut(&0).unwrap();
    (post.outcome, post.id) = (Some(Outcome::Unknown), None);
    for read in twice.finals.iter_mut().flatten() {
        read.items.push(item("m9", "a0", "s1p0"));
    }
    assert_eq!(check(&twice).duplicates, 2);

    let mut phantom = clean_history();
    phantom.finals[0].as_mut().unwrap().items.push(item("m8", "a1", "nobody wrote this"));
    assert_eq!(check(&phantom).unexpected, 1);

    let mut waiting = clean_history();
    let w = &mut waiting.finals[1].as_mut().unwrap().items[0];
    (w.body, w.waiting) = (None, true);
    let c = check(&waiting);
    assert_eq!((c.unreadable_bodies, c.lost), (1, 1), "{c:?}");

    // Device 1 removed; device 0 posts after its governance dropped it.
    let mut removed = clean_history();
    removed.removal = Some((1, Outcome::Acked));
    removed.finals[0].as_mut().unwrap().members = vec!["a0".into()];
    removed.posts.get_mut(&0).unwrap().members_before = vec!["a0".into()];
    assert_eq!(check(&removed).removed_received, 1);

    let mut never = clean_history();
    never.converged_after = None;
    never.panics = 1;
    let c = check(&never);
    assert_eq!((c.not_converged, c.panics), (1, 1));
}
