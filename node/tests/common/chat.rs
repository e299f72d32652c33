//! A `concord chat` process driven by a test: lines go to its stdin, and
//! its stdout lines arrive on a channel as they come.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_concord");
/// How long a chat gets to show an expected line. Generous: the machine
/// may be busy building, and a message gossip misses waits for the chat's
/// next catch-up (every 5 s).
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Lines of a chat's stdout buffered before its reader thread waits.
const LINE_BUFFER: usize = 4096;

/// A running `concord chat`: its stdin, and its stdout lines as they come.
pub struct Chat {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every line seen so far.
    pub transcript: Vec<String>,
}

impl Chat {
    /// Runs `concord chat ARGS` under `name`.
    pub fn spawn(name: &'static str, args: &[&str]) -> Chat {
        let mut command = Command::new(BIN);
        command.arg("chat").args(args);
        Self::spawn_command(name, command)
    }

    /// Runs `command` (a chat, perhaps wrapped as in `ip netns exec`).
    pub fn spawn_command(name: &'static str, mut command: Command) -> Chat {
        let mut child = command
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

    /// Closes the chat's stdin (end of input).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Writes one line to the chat's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to chat");
        stdin.flush().expect("flush chat stdin");
    }

    /// The first line (from now on) that `want` accepts, or a panic with the
    /// transcript after [`DEADLINE`].
    pub fn wait_for(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
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
    pub fn wait_exit(&mut self) -> bool {
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
