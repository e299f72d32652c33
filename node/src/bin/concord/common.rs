//! What the commands share: the error every command returns, opening a
//! node on a data directory, where data directories live by default,
//! listening and waiting for the addresses a ticket should carry, and how
//! authors are shown.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use concord_node::core::Store;
use concord_node::{AuthorId, Multiaddr, Node, NodeConfig, NodeError, RoomId, RoomTicket};

/// A command's failure: one sentence for the user, printed as `error: …`.
#[derive(Debug)]
pub struct CliError(String);

impl CliError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Result of a command.
pub type CliResult<T> = Result<T, CliError>;

/// Says what was being done when an error happened.
pub trait Context<T> {
    /// Wraps the error as `{what}: {error}`.
    fn context(self, what: impl fmt::Display) -> CliResult<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> CliResult<T> {
        self.map_err(|e| CliError(format!("{what}: {e}")))
    }
}

/// Writes one line to stdout and flushes it; see the `say!` macro.
pub fn say_line(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{args}");
    let _ = out.flush();
}

/// How an author is shown: the first 8 hex digits of its id. Names are not
/// part of the protocol yet.
pub fn short(author: &AuthorId) -> String {
    author.to_string().chars().take(8).collect()
}

/// Where `concord chat --name NAME` keeps its store unless told otherwise:
/// `$XDG_DATA_HOME/concord/NAME`, else `~/.local/share/concord/NAME`
/// (`%APPDATA%\concord\NAME` on Windows).
pub fn default_data_dir(name: &str) -> CliResult<PathBuf> {
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control);
    if !valid {
        return Err(CliError::new(format!(
            "{name:?} cannot name a data directory (use letters, digits, '-' or '_', \
             or give --data-dir)"
        )));
    }
    let base = if cfg!(windows) {
        std::env::var_os("APPDATA").map(PathBuf::from)
    } else {
        std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
    };
    let base = base.ok_or_else(|| {
        CliError::new("no home directory to keep the store in (set HOME or give --data-dir)")
    })?;
    Ok(base.join("concord").join(name))
}

/// Creates `dir` if needed and opens a node on it. Must run inside the
/// tokio runtime.
pub fn open_node(dir: &Path, config: NodeConfig) -> CliResult<Node> {
    std::fs::create_dir_all(dir)
        .context(format_args!("cannot create the data directory {}", dir.display()))?;
    Node::open(dir, config).context(format_args!(
        "cannot open the store in {} (is another concord using it?)",
        dir.display()
    ))
}

/// Where `concord chat` listens unless told otherwise: every interface,
/// ports picked by the system, over TCP and QUIC.
pub fn default_listen() -> Vec<Multiaddr> {
    ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// Listens on every address of `addrs`.
pub async fn listen_all<S: Store + 'static>(node: &Node<S>, addrs: &[Multiaddr]) -> CliResult<()> {
    for addr in addrs {
        match node.listen(addr.clone()).await {
            Ok(_) => {}
            // The transport's own error can be empty; say something useful.
            Err(NodeError::Network(e)) if e.trim().is_empty() => {
                return Err(CliError::new(format!(
                    "cannot listen on {addr}: the system refused it (is the address one of \
                     this machine's, and the port free?)"
                )));
            }
            Err(e) => return Err(CliError::new(format!("cannot listen on {addr}: {e}"))),
        }
    }
    Ok(())
}

/// How long to wait for a listener on `0.0.0.0` to report all of its
/// interface addresses (they arrive one event each, after the first).
const ADDRESS_SETTLE: Duration = Duration::from_millis(300);
/// Polling period while addresses settle.
const ADDRESS_POLL: Duration = Duration::from_millis(50);

/// A ticket for `room` once the node's addresses stop changing (or after
/// [`ADDRESS_SETTLE`]), so that it lists every interface it listens on.
pub async fn settled_ticket(node: &Node, room: RoomId) -> CliResult<RoomTicket> {
    let mut last = node.addresses().await.context("cannot read the node's addresses")?;
    let mut waited = Duration::ZERO;
    while waited < ADDRESS_SETTLE {
        tokio::time::sleep(ADDRESS_POLL).await;
        waited += ADDRESS_POLL;
        let now = node.addresses().await.context("cannot read the node's addresses")?;
        if now == last && !now.is_empty() {
            break;
        }
        last = now;
    }
    node.ticket(room).await.context("cannot make a ticket")
}
