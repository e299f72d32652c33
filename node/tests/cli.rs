//! The `concord` binary end to end, as a user runs it: the demo converges
//! and says so; two `concord chat` processes on 127.0.0.1 exchange
//! messages, an edit and a delete, and quit cleanly; an invite ticket from
//! `/invite` makes the chat that joins with it a member of a room of
//! members; `concord room` creates, lists and hands out tickets; bad input
//! ends in a clear error and a non-zero exit, never a panic.
// Runs the `concord` binary, which needs the `cli` feature.
#![cfg(feature = "cli")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::str::FromStr;

use common::chat::{Chat, BIN};
use concord_node::RoomTicket;

/// The number a chat line shows a message under: `[3] ...` gives 3.
fn number(line: &str) -> usize {
    let rest = line.split_once('[').expect("a numbered line").1;
    rest.split_once(']').expect("a numbered line").0.parse().expect("a number")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run concord")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn dir_arg(dir: &Path) -> &str {
    dir.to_str().expect("a UTF-8 temporary path")
}

/// A chat named `name` on 127.0.0.1 without mDNS, keeping its data in
/// `dir`, joining by `ticket` if given.
fn local_chat(name: &'static str, dir: &Path, ticket: Option<&str>) -> Chat {
    let mut args = vec!["--name", name, "--data-dir", dir_arg(dir)];
    args.extend(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]);
    if let Some(ticket) = ticket {
        args.extend(["--join", ticket]);
    }
    Chat::spawn(name, &args)
}

/// The ticket `chat` prints after `label`.
fn printed_ticket(chat: &mut Chat, label: &str) -> String {
    let line = chat.wait_for("a ticket", |l| l.starts_with(label));
    line.trim_start_matches(label).to_owned()
}

#[test]
fn test_demo_exits_zero_and_says_all_peers_converged() {
    let out = run(&["demo", "--seed", "42"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "demo failed: {}\n{stdout}\n{}", out.status, text(&out.stderr));
    assert!(stdout.contains("seed 42"), "{stdout}");
    assert!(stdout.contains("held as pending"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("all 4 peers converged in "), "last line: {last}\n{stdout}");
}

#[test]
fn test_two_chats_exchange_messages_an_edit_and_a_delete_then_quit() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = local_chat("alice", dir_a.path(), None);
    let ticket = printed_ticket(&mut a, "ticket: ");
    RoomTicket::from_str(&ticket).expect("the printed ticket parses");
    let mut b = local_chat("bob", dir_b.path(), Some(&ticket));
    a.wait_for("a connection", |l| l.starts_with("* connected to peer"));
    b.wait_for("a connection", |l| l.starts_with("* connected to peer"));

    a.send("hello from alice");
    let own = a.wait_for("its own message", |l| l.contains("alice (you): hello from alice"));
    let at_b = b.wait_for("alice's message", |l| l.contains("hello from alice"));
    assert!(!at_b.contains("(you)"), "bob shows alice's message as his own: {at_b}");

    b.send("hi from bob");
    b.wait_for("its own message", |l| l.contains("bob (you): hi from bob"));
    a.wait_for("bob's reply", |l| l.contains("hi from bob") && !l.contains("(you)"));

    a.send(&format!("/edit {} hello from alice, edited", number(&own)));
    b.wait_for("the edit", |l| {
        l.starts_with("edited: ") && l.contains("hello from alice, edited (edited)")
    });

    a.send(&format!("/delete {}", number(&own)));
    let deleted = format!("[{}] deleted", number(&at_b));
    b.wait_for("the delete", |l| l == deleted);

    a.send("/quit");
    assert!(a.wait_exit(), "alice did not exit cleanly");
    // End of input ends a chat as /quit does.
    b.close_stdin();
    assert!(b.wait_exit(), "bob did not exit cleanly");
}

#[test]
fn test_chat_governance_roles_topic_moderation_and_audit() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = local_chat("alice", dir_a.path(), None);
    let ticket = printed_ticket(&mut a, "ticket: ");
    let mut b = local_chat("bob", dir_b.path(), Some(&ticket));
    b.wait_for("a connection", |l| l.starts_with("* connected to peer"));
    b.send("/whoami");
    let bob = b.wait_for("its author id", |l| l.starts_with("you are "));
    let bob = bob.trim_start_matches("you are ").to_owned();

    // Alice (the creator, admin) makes Bob a moderator and sets the topic.
    a.send(&format!("/role {bob} moderator"));
    a.send("/topic launch day");
    a.send("/members");
    a.wait_for("Bob listed as moderator", |l| l == format!("  {bob} moderator"));
    // Bob's replica learns both by gossip or catch-up.
    let mut seen = false;
    for _ in 0..60 {
        b.send("/members");
        if b.wait_for("the room line", |l| l.starts_with("room ")).contains("launch day") {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(seen, "bob never saw the topic:\n{}", b.transcript.join("\n"));

    // As a moderator, Bob deletes Alice's message; it goes everywhere.
    a.send("hello from alice");
    let at_a = a.wait_for("its own message", |l| l.contains("alice (you): hello from alice"));
    let at_b = b.wait_for("alice's message", |l| l.contains("hello from alice"));
    b.send(&format!("/delete {}", number(&at_b)));
    let deleted = format!("[{}] deleted", number(&at_a));
    a.wait_for("the moderator's delete", |l| l == deleted);

    // The audit trail says who did what.
    a.send("/audit");
    a.wait_for("the role change", |l| l.contains(&format!("made {} moderator", &bob[..8])));
    a.wait_for("the topic", |l| l.contains("set the topic to \"launch day\""));
    a.send("/quit");
    b.send("/quit");
    assert!(a.wait_exit() && b.wait_exit(), "a chat did not exit cleanly");
}

#[test]
fn test_chat_invite_ticket_makes_its_holder_a_member() {
    let (dir_a, dir_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A room of members only; alice's chat opens it as the store's first.
    let out =
        run(&["room", "create", "crew", "--members-only", "--data-dir", dir_arg(dir_a.path())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut a = local_chat("alice", dir_a.path(), None);
    printed_ticket(&mut a, "ticket: ");
    a.send("/invite");
    let ticket = printed_ticket(&mut a, "invite ticket: ");
    assert!(RoomTicket::from_str(&ticket).expect("it parses").invite().is_some());
    a.wait_for("what it carries", |l| l.contains("an invite as member for whoever uses it first"));

    // Carol joins with the invite ticket alone and becomes a member by
    // herself, then posts, and alice sees it.
    let mut c = local_chat("carol", dir_c.path(), Some(&ticket));
    c.wait_for("the invite noted", |l| l.starts_with("* the ticket carries an invite"));
    c.wait_for("membership", |l| l == "* you are a member of the room (by the ticket's invite)");
    c.send("carol is in");
    c.wait_for("its own message", |l| l.contains("carol (you): carol is in"));
    a.wait_for("carol's message", |l| l.contains("carol is in") && !l.contains("(you)"));
    a.send("/quit");
    c.send("/quit");
    assert!(a.wait_exit() && c.wait_exit(), "a chat did not exit cleanly");
}

#[test]
fn test_room_create_list_and_ticket_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir_arg(dir.path());
    let out = run(&["room", "create", "general", "--data-dir", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("room: "))
        .unwrap_or_else(|| panic!("no room line: {stdout}"))
        .to_owned();
    let created = stdout.lines().find_map(|l| l.strip_prefix("ticket: ")).expect("a ticket");
    assert_eq!(RoomTicket::from_str(created).unwrap().room_id().to_string(), id);

    let out = run(&["room", "list", "--data-dir", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("{id}  general")), "{}", text(&out.stdout));

    let out = run(&["room", "ticket", &id, "--data-dir", d, "--listen", "/ip4/127.0.0.1/tcp/0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("ticket: ")).expect("a ticket");
    let ticket = RoomTicket::from_str(line).unwrap();
    assert_eq!(ticket.room_id().to_string(), id);
    assert_eq!(ticket.addresses().len(), 1, "one listener, one address: {ticket:?}");
}

#[test]
fn test_bad_input_fails_with_a_message_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir_arg(dir.path());
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let under_file = file.join("store");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["chat", "--name", "x", "--join", "concord1notaticket", "--data-dir", d], "ticket"),
        (vec!["chat", "--name", "x", "--join", "hello", "--data-dir", d], "ticket"),
        (vec!["chat", "--name", "x", "--data-dir", dir_arg(&under_file)], "data directory"),
        (vec!["chat", "--name", "../x"], "cannot name a data directory"),
        (vec!["chat", "--name", "x", "--listen", "not-an-address", "--data-dir", d], "listen"),
        (vec!["room", "ticket", "abc", "--data-dir", d], "not a room id"),
        (vec!["room", "ticket", "--data-dir", d], "no room"),
        (vec!["room", "list"], "which store"),
        (vec!["demo", "--peers", "1"], "peers"),
    ];
    for (args, says) in cases {
        let out = run(&args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: stderr does not mention {says:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}
