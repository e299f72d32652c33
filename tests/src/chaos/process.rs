//! One `concord-chaos-node` child process, from the driver's side: spawn it
//! on its data directory, wait for its `ready` line, send requests and wait
//! for their replies, SIGKILL it. Its stderr goes to a log file beside its
//! data directory, which the checker reads for panics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use super::protocol::{Cmd, Ready, Reply, Request};

/// How long a child may take to open its store and listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// How a request ended without a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum NoReply {
    /// No reply within the timeout.
    Timeout,
    /// The child is gone (killed, or it died).
    Gone,
}

/// A running child.
pub struct NodeProcess {
    child: Child,
    stdin: Arc<tokio::sync::Mutex<ChildStdin>>,
    waiting: Waiting,
    next: AtomicU64,
    /// What it said when ready.
    pub ready: Ready,
}

impl NodeProcess {
    /// Starts `bin` with `args`, logging stderr to `log`, and waits until it
    /// is ready. An error here is a process that would not start (or not
    /// reopen its store).
    pub async fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Self> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", std::env::var("CONCORD_CHAOS_LOG").unwrap_or_else(|_| "warn".into()))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let ready: Ready = match first {
            Ok(Ok(Some(line))) => serde_json::from_str(&line)
                .with_context(|| format!("not a ready line: {line:?}"))?,
            Ok(_) => {
                let status = child.wait().await?;
                bail!("exited before it was ready ({status}); see {}", log.display());
            }
            Err(_) => bail!("not ready within {START_TIMEOUT:?}"),
        };
        let waiting: Waiting = Arc::default();
        let routes = waiting.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(reply) = serde_json::from_str::<Reply>(&line) else { continue };
                let sender = routes.lock().expect("waiting replies").remove(&reply.req);
                if let Some(sender) = sender {
                    let _ = sender.send(reply);
                }
            }
            // Gone: every waiting request learns so when its sender drops.
            routes.lock().expect("waiting replies").clear();
        });
        Ok(Self {
            child,
            stdin: Arc::new(tokio::sync::Mutex::new(stdin)),
            waiting,
            next: AtomicU64::new(1),
            ready,
        })
    }

    /// Sends `cmd` and waits up to `timeout` for the reply.
    pub async fn call(&self, cmd: Cmd, timeout: Duration) -> std::result::Result<Reply, NoReply> {
        let pending = self.send(cmd).await?;
        match tokio::time::timeout(timeout, pending).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(NoReply::Gone),
            Err(_) => Err(NoReply::Timeout),
        }
    }

    /// Sends `cmd`; the receiver gets its reply.
    pub async fn send(&self, cmd: Cmd) -> std::result::Result<oneshot::Receiver<Reply>, NoReply> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("waiting replies").insert(id, tx);
        let line =
            serde_json::to_string(&Request { req: id, cmd }).map_err(|_| NoReply::Gone)? + "\n";
        let mut stdin = self.stdin.lock().await;
        if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
            return Err(NoReply::Gone);
        }
        Ok(rx)
    }

    /// SIGKILL, and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Asks for a clean shutdown, then kills whatever is left.
    pub async fn shutdown(self) {
        let _ = self.call(Cmd::Shutdown, Duration::from_secs(10)).await;
        self.kill().await;
    }
}

/// Where each process of a schedule keeps its data and log.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// The schedule's root directory.
    pub root: PathBuf,
}

impl Dirs {
    /// Device `n`'s data directory.
    pub fn device(&self, n: usize) -> PathBuf {
        self.root.join(format!("device-{n}"))
    }
    /// The relay's.
    pub fn relay(&self) -> PathBuf {
        self.root.join("relay")
    }
    /// The stderr log of the process whose data directory is `dir`.
    pub fn log(dir: &Path) -> PathBuf {
        dir.with_extension("log")
    }
}
