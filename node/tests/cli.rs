//! The `concord` binary end to end, as a user runs it: the demo converges
//! and says so; two `concord chat` processes on 127.0.0.1 exchange
//! messages, an edit and a delete, and quit cleanly; `concord room` creates,
//! lists and hands out tickets; bad input ends in a clear error and a
//! non-zero exit, never a panic.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::str::FromStr;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use concord_node::RoomTicket;

const BIN: &str = env!("CARGO_BIN_EXE_concord");
/// How long a chat gets to show an expected line. Generous: the machine
/// may be busy building, and a message gossip misses waits for the chat's
/// next catch-up (every 5 s).
const DEADLINE: Duration = Duration::from_secs(30);
/// Lines of a chat's stdout buffered before its reader thread waits.
const LINE_BUFFER: usize = 4096;

/// A running `concord chat`: its stdin, and its stdout lines as they come.
struct Chat {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    transcript: Vec<String>,
}

impl Chat {
    fn spawn(name: &'static str, args: &[&str]) -> Chat {
        let mut child = Command::new(BIN)
            .arg("chat")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn concord chat");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = sync_channel(LINE_BUFFER);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Chat { name, child, stdin, lines, transcript: Vec::new() }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to chat");
        stdin.flush().expect("flush chat stdin");
    }

    /// The first line (from now on) that `want` accepts, or a panic with the
    /// transcript after [`DEADLINE`].
    fn wait_for(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.transcript.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "{} never showed {what} within {DEADLINE:?}; it printed:\n{}",
                    self.name,
                    self.transcript.join("\n")
                ),
            }
        }
    }

    /// Waits for the process to exit and returns whether it succeeded.
    fn wait_exit(&mut self) -> bool {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.success();
            }
            assert!(Instant::now() < until, "{} did not exit within {DEADLINE:?}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        // A failed test must not leave chats running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

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
    let local = ["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"];
    let mut a = Chat::spawn(
        "alice",
        &[&["--name", "alice", "--data-dir", dir_arg(dir_a.path())][..], &local[..]].concat(),
    );
    let ticket = a.wait_for("a ticket", |l| l.starts_with("ticket: "));
    let ticket = ticket.trim_start_matches("ticket: ").to_owned();
    RoomTicket::from_str(&ticket).expect("the printed ticket parses");
    let mut b = Chat::spawn(
        "bob",
        &[
            &["--name", "bob", "--join", &ticket, "--data-dir", dir_arg(dir_b.path())][..],
            &local[..],
        ]
        .concat(),
    );
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
    drop(b.stdin.take());
    assert!(b.wait_exit(), "bob did not exit cleanly");
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
