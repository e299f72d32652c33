//! The relay, as its own `concord relay` process on 127.0.0.1, with devices
//! as in-process nodes on real sled stores:
//!
//! - store and forward: A writes while B is offline and goes offline; the
//!   relay is killed with SIGKILL and restarted; B, meeting only the relay,
//!   receives everything;
//! - erasure: after a delete reached the relay, the canary body is in no
//!   table of the relay store (read directly), while a live message's body
//!   is; how many raw sled files still hold it is measured and printed;
//! - a flood of invalid envelopes gets its sender disconnected and banned
//!   while honest devices keep syncing through the relay;
//! - a banned member's device receives nothing new from the relay, by
//!   gossip or by catch-up; a room of members only reaches the relay only
//!   once its key is a member, and the relay serves it to members only;
//! - the metrics and health endpoints answer.
//!
//! One file over the house's 600 lines: every scenario here starts a real
//! relay process and shares its harness (process, metrics, store reads).
// Runs `concord relay`, which needs the `cli` feature.
#![cfg(feature = "cli")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use concord_core::{
    AuthorId, Delivery, DeliveryState, Flight, RawDelivery, Role, RoomId, RoomOptions, SledStore,
    SyncMessage,
};
use concord_node::relay::{RelayStore, SledRelayStore};
use concord_node::{Multiaddr, Node, NodeEvent, Room, RoomTicket, SyncRequest};
use futures::StreamExt;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;

const CANARY: &str = "CANARY-relay-5f0c2a9e";
const KEPT: &str = "kept-by-the-relay-81d4";
const PLAIN_CANARY: &str = "CANARY-in-the-clear-0b7e";
const PLAIN_KEPT: &str = "kept-in-the-clear-c3a1";

/// A `concord relay` child process.
struct RelayProcess {
    child: Child,
    addr: Multiaddr,
    metrics: SocketAddr,
    /// The relay's author key, which a room of members only lists for the
    /// relay to store it.
    author: AuthorId,
    lines: mpsc::Receiver<String>,
}

/// A test that fails must not leave its relay running.
impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RelayProcess {
    /// Starts a sled-backed relay on `data_dir` and waits until it is ready.
    fn start(data_dir: &Path) -> Self {
        Self::start_with(&["--data-dir".as_ref(), data_dir.as_os_str()])
    }

    /// Starts a relay with `args` and waits until it is ready.
    fn start_with(args: &[&std::ffi::OsStr]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
            .arg("relay")
            .args(args)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--metrics", "127.0.0.1:0"])
            .arg("--log-json")
            .env("RUST_LOG", "concord_node=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start concord relay");
        let stdout = child.stdout.take().expect("piped stdout");
        // The relay prints a handful of lines; the reader blocks past these.
        const LINES: usize = 64;
        let (tx, lines) = mpsc::sync_channel(LINES);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("relay> {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut addr, mut metrics, mut author) = (None, None, None);
        loop {
            let line = lines.recv_timeout(Duration::from_secs(60)).expect("the relay got ready");
            if let Some(key) = line.strip_prefix("relay author ") {
                author = Some(key.parse().expect("an author id"));
            } else if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.parse().expect("a multiaddr"));
            } else if let Some(rest) = line.strip_prefix("metrics on http://") {
                let host = rest.split('/').next().expect("host:port");
                metrics = Some(host.parse().expect("a socket address"));
            } else if line == "relay ready" {
                break;
            }
        }
        Self {
            child,
            addr: addr.expect("a listen address"),
            metrics: metrics.unwrap(),
            author: author.expect("the relay's author"),
            lines,
        }
    }

    /// SIGKILL: no shutdown, no flush.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the relay");
        self.child.wait().expect("reap the relay");
    }

    /// SIGTERM, and waits for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success());
        let exit = self.child.wait().expect("reap the relay");
        assert!(exit.success(), "the relay exited with {exit}");
        // The reader thread may still hold the last lines: read until it
        // reaches the end of the exited relay's output.
        let mut said = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            said.push(line);
        }
        assert!(said.iter().any(|l| l == "relay stopped"), "no clean stop: {said:?}");
    }

    /// GET `path` from the metrics endpoint: (status line, body).
    fn get(&self, path: &str) -> (String, String) {
        let mut socket = TcpStream::connect(self.metrics).expect("connect to the metrics endpoint");
        write!(socket, "GET {path} HTTP/1.1\r\nhost: relay\r\n\r\n").unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
    }

    /// The value of a counter or gauge in the metrics text.
    fn metric(&self, name: &str) -> f64 {
        let (status, body) = self.get("/metrics");
        assert!(status.contains("200"), "{status}");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                (key == name).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
    }
}

/// A device on the system clock (the relay checks signal freshness against
/// its own clock), with quick catch-up.
fn device(dir: &Path) -> Node {
    Node::open(dir, common::config()).expect("open a device")
}

async fn bodies(room: &Room<SledStore>) -> Vec<String> {
    room.timeline().await.unwrap().into_iter().filter_map(|item| item.message.body).collect()
}

fn contains(haystack: &[u8], needle: impl AsRef<[u8]>) -> bool {
    let needle = needle.as_ref();
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `member` joins with `ticket` through the relay and goes offline once
/// the founder's `room` holds its device keys: from then on the founder
/// shares its room keys with it, so it reads what the relay forwards while
/// the founder is away (an encrypted room's history for a new reader
/// begins at its keys).
async fn join_then_leave(
    dir: &Path,
    ticket: &RoomTicket,
    relay: &RelayProcess,
    room: &Room<SledStore>,
) {
    let member = device(dir);
    let joined = member.join_ticket(ticket).await.unwrap();
    member.dial(relay.addr.clone()).await.unwrap();
    let author = member.author();
    common::until("the member to publish its device keys", || async {
        joined.governance().await.unwrap().device_keys(&author).is_some()
    })
    .await;
    common::until("the founder to hold the member's device keys", || async {
        room.governance().await.unwrap().device_keys(&author).is_some()
    })
    .await;
    member.shutdown().await.unwrap();
}

/// Every file under `dir`, read raw.
fn files_containing(dir: &Path, needle: impl AsRef<[u8]>) -> Vec<String> {
    let needle = needle.as_ref();
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if contains(&std::fs::read(&path).unwrap(), needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Reads the relay store's tables directly: every envelope of `room`, and
/// every blob they name that the store holds.
async fn store_contents(store: &SledRelayStore, room: RoomId) -> (usize, Vec<Vec<u8>>) {
    let mut envelopes = 0;
    let mut blobs = Vec::new();
    for bucket in store.buckets(room).await.unwrap() {
        let rows = store.envelopes(room, bucket, None, usize::MAX).await.unwrap();
        envelopes += rows.len();
        for row in rows {
            let envelope = concord_core::Envelope::from_bytes(&row.bytes).unwrap();
            for hash in envelope.blob_hashes() {
                if let Some(blob) = store.blob(room, *hash).await.unwrap() {
                    blobs.push(blob);
                }
            }
        }
    }
    (envelopes, blobs)
}

async fn until_reached(room: &Room<SledStore>) {
    common::until("every message of A to reach the relay", || async {
        room.timeline()
            .await
            .unwrap()
            .iter()
            .all(|i| matches!(i.delivery, Some(DeliveryState::Reached | DeliveryState::SeenBy(_))))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_an_encrypted_room_across_three_devices_and_the_relay_leaves_no_plaintext_there() {
    let relay_dir = tempfile::tempdir().unwrap();
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let relay = RelayProcess::start(relay_dir.path());
    let devices = [0, 1, 2].map(|i| device(dirs[i].path()));
    let room = devices[0].create_room("three and a relay").await.unwrap();
    assert!(room.info().await.unwrap().encrypted);
    let ticket = room.ticket().await.unwrap();
    devices[0].dial(relay.addr.clone()).await.unwrap();
    let mut rooms = vec![room];
    for d in &devices[1..] {
        rooms.push(d.join_ticket(&ticket).await.unwrap());
        d.dial(relay.addr.clone()).await.unwrap();
    }
    // Each device only meets the relay; each writes a canary.
    let canaries: Vec<String> = (0..3).map(|i| format!("CANARY-three-{i}-6d1f")).collect();
    for (r, canary) in rooms.iter().zip(&canaries) {
        r.send(canary).await.unwrap();
    }
    for (i, r) in rooms.iter().enumerate() {
        common::until(&format!("device {i} to read all three"), || async {
            let mut got = bodies(r).await;
            got.sort();
            got == canaries
        })
        .await;
        let items = r.timeline().await.unwrap();
        assert!(items.iter().all(|i| !i.message.waiting_for_key), "{items:?}");
    }
    // Each device's own message reached the relay (others' carry no state).
    for r in &rooms {
        common::until("each own message to reach the relay", || async {
            r.timeline()
                .await
                .unwrap()
                .iter()
                .filter_map(|i| i.delivery)
                .all(|d| matches!(d, DeliveryState::Reached | DeliveryState::SeenBy(_)))
        })
        .await;
    }
    for d in devices {
        d.shutdown().await.unwrap();
    }
    relay.stop();
    // The relay's store read directly, and every byte of its data
    // directory: ciphertext only (the room id shows the search reads).
    let store = SledRelayStore::open(&relay_dir.path().join("store")).unwrap();
    let (envelopes, blobs) = store_contents(&store, rooms[0].id()).await;
    assert!(envelopes >= 3 && blobs.len() >= 3, "{envelopes} envelopes, {} blobs", blobs.len());
    for canary in &canaries {
        assert!(!blobs.iter().any(|b| contains(b, canary)), "{canary} in the relay store");
    }
    drop(store);
    assert!(!files_containing(relay_dir.path(), rooms[0].id().as_bytes()).is_empty());
    for canary in &canaries {
        assert_eq!(files_containing(relay_dir.path(), canary), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_deleted_message_is_readable_on_no_disk_and_a_new_device_gets_its_tombstone() {
    let relay_dir = tempfile::tempdir().unwrap();
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let relay = RelayProcess::start(relay_dir.path());
    let (a, b) = (device(dirs[0].path()), device(dirs[1].path()));
    let room = a.create_room("shredded").await.unwrap();
    let ticket = room.ticket().await.unwrap();
    a.dial(relay.addr.clone()).await.unwrap();
    let b_room = b.join_ticket(&ticket).await.unwrap();
    b.dial(relay.addr.clone()).await.unwrap();
    room.send(KEPT).await.unwrap();
    let secret = room.send(CANARY).await.unwrap();
    common::until("B to read both", || async { bodies(&b_room).await == [KEPT, CANARY] }).await;
    room.delete(secret).await.unwrap();
    common::until("B to apply the delete", || async { bodies(&b_room).await == [KEPT] }).await;
    until_reached(&room).await;
    // The documented step: each replica shreds when idle; here on demand.
    for n in [&a, &b] {
        n.replica().try_call(|r| r.shred()).await.unwrap();
        assert!(!n.replica().try_call(|r| r.shred_pending()).await.unwrap());
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    // A device that joins later, from the relay alone, gets the kept
    // message (waiting for a key its sender, offline, would share) and the
    // deleted one only as a tombstone.
    let c = device(dirs[2].path());
    let c_room = c.join_ticket(&ticket).await.unwrap();
    c.dial(relay.addr.clone()).await.unwrap();
    let id = room.id();
    common::until("C to receive the room from the relay", || async {
        let view = c.replica().try_call(move |r| r.snapshot(&id)).await.unwrap();
        view.messages.len() == 1 && view.tombstones.iter().any(|t| t.id == secret)
    })
    .await;
    assert!(c_room.message(secret).await.unwrap().is_none());
    c.shutdown().await.unwrap();
    relay.stop();

    // Every byte of both devices', the new device's and the relay's data
    // directories: neither body readable anywhere (the room id shows the
    // search reads what is there).
    for dir in [dirs[0].path(), dirs[1].path(), dirs[2].path(), relay_dir.path()] {
        assert!(!files_containing(dir, id.as_bytes()).is_empty(), "{}", dir.display());
        assert_eq!(files_containing(dir, CANARY), Vec::<String>::new());
        assert_eq!(files_containing(dir, KEPT), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_store_and_forward_survives_sigkill_and_erases_deleted_bodies() {
    let relay_dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let relay = RelayProcess::start(relay_dir.path());
    let (status, body) = relay.get("/health");
    assert!(status.contains("200") && body == "ok\n", "{status} {body}");

    // B joined once (so A shares room keys with it) and is offline now:
    // A alone with the relay.
    let a = device(a_dir.path());
    let room = a.create_room("relayed").await.unwrap();
    let ticket = room.ticket().await.unwrap();
    a.dial(relay.addr.clone()).await.unwrap();
    join_then_leave(b_dir.path(), &ticket, &relay, &room).await;
    let first = room.send("first, while B is away").await.unwrap();
    room.send(KEPT).await.unwrap();
    let secret = room.send(CANARY).await.unwrap();
    until_reached(&room).await;
    room.edit(first, "first, edited").await.unwrap();
    room.delete(secret).await.unwrap();
    room.send("last words before A goes offline").await.unwrap();
    until_reached(&room).await;
    let want = bodies(&room).await;
    assert_eq!(want.len(), 3, "{want:?}");
    assert!(relay.metric("concord_relay_envelopes_stored_total") >= 6.0);
    assert!(relay.metric("concord_rooms_taken_up_total") >= 1.0);
    a.shutdown().await.unwrap();

    // SIGKILL, then a restart on the same data directory.
    relay.kill();
    let relay = RelayProcess::start(relay_dir.path());

    // B is back, A is not: B meets only the relay.
    let b = device(b_dir.path());
    let b_room = b.room(room.id()).await.unwrap();
    b.dial(relay.addr.clone()).await.unwrap();
    common::until("B to receive everything from the relay", || async {
        bodies(&b_room).await == want
    })
    .await;
    assert!(!contains(format!("{:?}", b_room.timeline().await.unwrap()).as_bytes(), CANARY));
    b.shutdown().await.unwrap();
    relay.stop();

    // The relay store, read directly, and every file of the relay's data
    // directory: the room is end-to-end encrypted, so neither the kept
    // body nor the deleted one is readable anywhere; the room's id is
    // there (so the search can fail).
    let store = SledRelayStore::open(&relay_dir.path().join("store")).unwrap();
    let (envelopes, blobs) = store_contents(&store, room.id()).await;
    assert!(envelopes >= 6, "the store holds {envelopes} envelopes");
    assert!(blobs.len() >= 3, "the store holds {} blobs", blobs.len());
    assert!(
        !blobs.iter().any(|b| contains(b, KEPT) || contains(b, CANARY)),
        "plaintext in the store"
    );
    drop(store);
    assert!(!files_containing(relay_dir.path(), room.id().as_bytes()).is_empty(), "no room id");
    assert_eq!(files_containing(relay_dir.path(), KEPT), Vec::<String>::new());
    assert_eq!(files_containing(relay_dir.path(), CANARY), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_relay_whose_replica_was_lost_rebuilds_it_from_its_store() {
    let relay_dir = tempfile::tempdir().unwrap();
    // The key file lives apart from the data directory, as on a volume or
    // in a secret store, so the rebuilt relay keeps its identity.
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("relay.key");
    let start = || {
        RelayProcess::start_with(&[
            "--data-dir".as_ref(),
            relay_dir.path().as_os_str(),
            "--key-file".as_ref(),
            key_file.as_os_str(),
        ])
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let relay = start();
    let written = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(written.trim().len(), 64, "the first start wrote the relay's key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only the relay's owner may read its key");
    }
    let (peer, author) = (relay_peer(&relay), relay.author);
    let a = device(a_dir.path());
    let room = a.create_room("rebuilt").await.unwrap();
    let ticket = room.ticket().await.unwrap();
    a.dial(relay.addr.clone()).await.unwrap();
    join_then_leave(b_dir.path(), &ticket, &relay, &room).await;
    for i in 0..20 {
        room.send(&format!("message {i}")).await.unwrap();
    }
    until_reached(&room).await;
    let want = bodies(&room).await;
    a.shutdown().await.unwrap();
    relay.kill();

    // The relay's replica is gone; its store and key file are not.
    std::fs::remove_dir_all(relay_dir.path().join("replica")).unwrap();
    let relay = start();
    assert_eq!((relay_peer(&relay), relay.author), (peer, author), "the same relay again");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), written);
    let b = device(b_dir.path());
    let b_room = b.room(room.id()).await.unwrap();
    b.dial(relay.addr.clone()).await.unwrap();
    common::until("B to receive the rebuilt room", || async { bodies(&b_room).await == want })
        .await;
    b.shutdown().await.unwrap();
    relay.stop();
}

/// The relay's peer id, from its address.
fn relay_peer(relay: &RelayProcess) -> libp2p::PeerId {
    match relay.addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(id)) => id,
        _ => panic!("the relay's address names no peer"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_banned_members_device_receives_nothing_new_from_the_relay() {
    let relay_dir = tempfile::tempdir().unwrap();
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let relay = RelayProcess::start(relay_dir.path());
    let [a, b, c] = [0, 1, 2].map(|i| device(dirs[i].path()));
    let room = a.create_room("moderated").await.unwrap();
    let ticket = room.ticket().await.unwrap();
    a.dial(relay.addr.clone()).await.unwrap();
    let b_room = b.join_ticket(&ticket).await.unwrap();
    let c_room = c.join_ticket(&ticket).await.unwrap();
    b.dial(relay.addr.clone()).await.unwrap();
    c.dial(relay.addr.clone()).await.unwrap();
    room.send("before the ban").await.unwrap();
    common::until("B and C to receive the first message", || async {
        bodies(&b_room).await.len() == 1 && bodies(&c_room).await.len() == 1
    })
    .await;

    // A bans C. Everyone, C included, learns of it through the relay.
    room.ban(c.author()).await.unwrap();
    common::until("B and C to see the ban", || async {
        let banned = |g: concord_core::GovState| g.is_banned(&c.author());
        banned(b_room.governance().await.unwrap()) && banned(c_room.governance().await.unwrap())
    })
    .await;
    // The relay's next gossip heartbeat (0.5 s) drops C from its mesh.
    tokio::time::sleep(Duration::from_secs(1)).await;
    room.send("after the ban").await.unwrap();
    common::until("B to receive the second message through the relay", || async {
        bodies(&b_room).await.len() == 2
    })
    .await;
    // C keeps catching up with the relay (every 300 ms, and once more
    // here) and receives nothing new, by gossip or by catch-up.
    let stats = c.sync(relay_peer(&relay), room.id()).await.unwrap();
    assert_eq!(stats.envelopes_applied, 0, "{stats:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bodies(&c_room).await, ["before the ban"]);
    for device in [a, b, c] {
        device.shutdown().await.unwrap();
    }
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_room_of_members_reaches_a_relay_only_once_the_relay_is_a_member() {
    let relay_dir = tempfile::tempdir().unwrap();
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let relay = RelayProcess::start(relay_dir.path());
    let [a, b, c] = [0, 1, 2].map(|i| device(dirs[i].path()));
    let room = a.create_room_with("private", vec![(b.author(), Role::Member)]).await.unwrap();
    let ticket = room.ticket().await.unwrap();
    a.dial(relay.addr.clone()).await.unwrap();
    // The relay takes the room up and holds its governance; B, a founding
    // member, joins through it once, so A learns B's device keys.
    a.sync(relay_peer(&relay), room.id()).await.unwrap();
    b.shutdown().await.unwrap();
    join_then_leave(dirs[1].path(), &ticket, &relay, &room).await;
    let b = device(dirs[1].path());
    room.send("members only").await.unwrap();
    // A sends the relay no envelopes: its key is not a member.
    let stats = a.sync(relay_peer(&relay), room.id()).await.unwrap();
    assert_eq!(stats.envelopes_sent, 0, "{stats:?}");
    assert_eq!(relay.metric("concord_relay_envelopes_stored_total"), 0.0);
    assert!(relay.metric("concord_rooms_taken_up_total") >= 1.0);

    // A lists the relay as a read-only member: now it stores the room.
    room.set_role(relay.author, Role::ReadOnly).await.unwrap();
    until_reached(&room).await;
    assert!(relay.metric("concord_relay_envelopes_stored_total") >= 1.0);
    a.shutdown().await.unwrap();

    // B, a member, receives the room from the relay alone; C, who holds
    // the ticket but is no member, receives its governance and nothing else.
    let b_room = b.room(room.id()).await.unwrap();
    let c_room = c.join_ticket(&ticket).await.unwrap();
    b.dial(relay.addr.clone()).await.unwrap();
    c.dial(relay.addr.clone()).await.unwrap();
    common::until("B to receive the room from the relay", || async {
        bodies(&b_room).await == ["members only"]
    })
    .await;
    common::until("C to receive the governance", || async {
        c_room.governance().await.unwrap().role(&relay.author) == Some(Role::ReadOnly)
    })
    .await;
    let stats = c.sync(relay_peer(&relay), room.id()).await.unwrap();
    assert_eq!((stats.envelopes_applied, bodies(&c_room).await.len()), (0, 0), "{stats:?}");
    for device in [b, c] {
        device.shutdown().await.unwrap();
    }
    relay.stop();
}

/// Flights of forged envelopes: `real` with one signature bit flipped.
fn forged_flight(room: RoomId, real: &Delivery, nth: usize) -> Vec<u8> {
    let mut envelope = real.envelope.as_bytes().to_vec();
    let bit = nth % (envelope.len() * 8);
    let at = envelope.len() - 1 - bit / 8;
    envelope[at] ^= 1 << (bit % 8);
    let forged = RawDelivery { envelope, blobs: real.blobs.clone() };
    SyncMessage::Flight { room, flight: Flight { deliveries: vec![forged], ..Flight::default() } }
        .to_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_flood_of_invalid_envelopes_is_cut_off_while_honest_devices_sync() {
    const FLOOD: usize = 200;
    let relay_dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let relay = RelayProcess::start(relay_dir.path());
    let a = device(a_dir.path());
    let b = device(b_dir.path());
    let room = a.create_room("flooded").await.unwrap();
    let ticket = room.ticket().await.unwrap();
    a.dial(relay.addr.clone()).await.unwrap();
    room.send("before the flood").await.unwrap();
    until_reached(&room).await;
    let b_room = b.join_ticket(&ticket).await.unwrap();
    b.dial(relay.addr.clone()).await.unwrap();
    let real = a
        .replica()
        .try_call({
            let id = room.id();
            move |r| r.deliveries(&id)
        })
        .await
        .unwrap()
        .pop()
        .unwrap();
    let genesis = ticket.genesis().as_bytes().to_vec();

    // The attacker: a plain request-response swarm speaking the sync
    // protocol, sending flights of forged envelopes as fast as it can.
    let mut hostile = common::sync_attacker();
    let relay_id = relay_peer(&relay);
    hostile.dial(relay.addr.clone()).unwrap();
    let mut answered = 0usize;
    let mut failed = 0usize;
    let mut closed = false;
    let mut sent = 0usize;
    let flood = async {
        loop {
            match hostile.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => {
                    for i in 0..FLOOD {
                        let request = SyncRequest {
                            session: i as u64,
                            room: room.id(),
                            messages: vec![forged_flight(room.id(), &real, i)],
                            genesis: Some(genesis.clone()),
                            cert: Vec::new(),
                            refused: None,
                        };
                        hostile.behaviour_mut().send_request(&relay_id, request);
                        sent += 1;
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                }) => answered += 1,
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                    failed += 1
                }
                SwarmEvent::ConnectionClosed { num_established: 0, .. } => closed = true,
                _ => {}
            }
            if sent == FLOOD && closed && answered + failed == FLOOD {
                break;
            }
        }
    };
    // Honest traffic while the flood runs.
    let honest = async {
        for i in 0..10 {
            room.send(&format!("during the flood {i}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (flooded, ()) = tokio::join!(tokio::time::timeout(Duration::from_secs(60), flood), honest);
    println!("flood of {FLOOD} forged flights: {answered} answered, {failed} failed");
    assert!(flooded.is_ok(), "the flood was not cut off: {answered} answered, {failed} failed");
    assert!(closed, "the attacker is still connected");
    assert!(answered < FLOOD, "every one of {FLOOD} forged flights was answered");
    // Banned: a new connection is refused at once.
    hostile.dial(relay.addr.clone()).unwrap();
    let redial = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match hostile.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => continue,
                SwarmEvent::ConnectionClosed { .. }
                | SwarmEvent::OutgoingConnectionError { .. } => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(redial.is_ok(), "the banned attacker could stay connected");
    assert!(relay.metric("concord_envelopes_rejected_total") >= 3.0);

    // B has everything A sent, through the relay, and nothing forged.
    let want = bodies(&room).await;
    assert_eq!(want.len(), 11);
    common::until("B to converge through the relay", || async { bodies(&b_room).await == want })
        .await;
    let mut events = b.events();
    room.send("after the flood").await.unwrap();
    common::until("B to receive a message sent after the flood", || async {
        bodies(&b_room).await.len() == 12
    })
    .await;
    while let Ok(event) = events.try_recv() {
        assert!(!matches!(event, NodeEvent::Banned(_)), "an honest device was banned: {event:?}");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    relay.stop();
}

#[test]
fn test_relay_rejects_a_wrong_config_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("data_dir = \"d\"\nlisten = [\"not a multiaddr\"]\n", "not a multiaddr"),
        ("data_dir = \"d\"\nsurprise = 1\n", "unknown field"),
        ("data_dir = \"d\"\n[store]\nbackend = \"dynamodb\"\nregion = \"\"\ntable_prefix = \"x\"\n", "region"),
        ("data_dir = \"d\"\n[store]\nbackend = \"floppy\"\n", "floppy"),
        ("data_dir = \"d\"\nmax_sync_strikes = 0\n", "max_sync_strikes"),
    ];
    for (text, says) in cases {
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_concord"))
            .args(["relay", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert!(stderr.starts_with("error: ") && stderr.contains(says), "{text:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Runs `concord relay` with `args`, which must make it fail before it
/// serves; returns its stderr. Killed and failed if it is still running
/// after 30 s.
fn relay_failure(args: &[&std::ffi::OsStr]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("relay")
        .args(args)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start concord relay");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("concord relay {args:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "concord relay {args:?} succeeded");
    assert!(stderr.starts_with("error: ") && !stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn test_a_relay_refuses_a_key_file_that_is_not_a_key_or_not_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key) = (dir.path().join("data"), dir.path().join("relay.key"));
    let args = ["--data-dir".as_ref(), data.as_os_str(), "--key-file".as_ref(), key.as_os_str()];
    std::fs::write(&key, "not a key\n").unwrap();
    assert!(relay_failure(&args).contains("not a key"));
    // A data directory that already holds another key keeps it: a key file
    // of another relay is refused, and nothing is overwritten.
    let relay = RelayProcess::start(&data);
    let author = relay.author;
    relay.stop();
    let other = "ab".repeat(32);
    std::fs::write(&key, format!("{other}\n")).unwrap();
    assert!(relay_failure(&args).contains("different device key"));
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim(), other);
    // Without its key file the relay starts as itself and writes it.
    std::fs::remove_file(&key).unwrap();
    let relay = RelayProcess::start_with(&args);
    assert_eq!(relay.author, author);
    relay.stop();
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 64);
}

/// The relay on the DynamoDB API (DynamoDB Local), through a TCP front the
/// test can cut: erasure read from the table directly, and "reached" only
/// once the store holds a message.
#[cfg(feature = "dynamodb")]
mod on_dynamodb {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use aws_sdk_dynamodb::types::AttributeValue;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::common::dynamodb;

    /// A TCP front for the server that can be switched off: off, it closes
    /// every open connection and refuses new ones.
    struct Front {
        url: String,
        up: Arc<AtomicBool>,
        open: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    }

    impl Front {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let upstream = dynamodb::endpoint().trim_start_matches("http://").to_owned();
            let up = Arc::new(AtomicBool::new(true));
            let open = Arc::new(Mutex::new(Vec::new()));
            let (up2, open2) = (up.clone(), open.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else { continue };
                    if !up2.load(Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    open2.lock().unwrap().push(task);
                }
            });
            Self { url, up, open }
        }

        fn set(&self, up: bool) {
            self.up.store(up, Ordering::SeqCst);
            if !up {
                for task in self.open.lock().unwrap().drain(..) {
                    task.abort();
                }
            }
        }
    }

    fn config_file(dir: &Path, endpoint: &str, prefix: &str) -> std::path::PathBuf {
        let path = dir.join("relay.toml");
        let text = format!(
            "data_dir = \"data\"\n\n[store]\nbackend = \"dynamodb\"\nendpoint = \"{endpoint}\"\n\
             region = \"{}\"\ntable_prefix = \"{prefix}\"\n",
            dynamodb::REGION
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Every blob item's bytes, scanned from the table directly.
    async fn blob_items(prefix: &str) -> Vec<Vec<u8>> {
        let out = dynamodb::raw_client()
            .scan()
            .table_name(format!("{prefix}blobs"))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        out.items()
            .iter()
            .filter_map(|item| match item.get("d") {
                Some(AttributeValue::B(b)) => Some(b.as_ref().to_vec()),
                _ => None,
            })
            .collect()
    }

    async fn envelope_count(prefix: &str) -> usize {
        let out = dynamodb::raw_client()
            .scan()
            .table_name(format!("{prefix}envelopes"))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        out.items().len()
    }

    async fn states(room: &Room<SledStore>) -> Vec<Option<DeliveryState>> {
        room.timeline().await.unwrap().into_iter().map(|i| i.delivery).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_relay_on_dynamodb_erases_and_acknowledges_only_what_it_stored() {
        let front = Front::start().await;
        let prefix = dynamodb::prefix("relay");
        let dir = tempfile::tempdir().unwrap();
        let config = config_file(dir.path(), &front.url, &prefix);
        let init = Command::new(env!("CARGO_BIN_EXE_concord"))
            .args(["relay", "init-store", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
        let relay = RelayProcess::start_with(&["--config".as_ref(), config.as_os_str()]);

        let a_dir = tempfile::tempdir().unwrap();
        let a = device(a_dir.path());
        // An end-to-end encrypted room (the default), and one created
        // without encryption, whose bodies the relay's table holds readable.
        let room = a.create_room("on dynamodb").await.unwrap();
        let plain = a
            .create_room_opts("in the clear", RoomOptions::default().encrypted(false))
            .await
            .unwrap();
        a.dial(relay.addr.clone()).await.unwrap();
        room.send(KEPT).await.unwrap();
        let secret = room.send(CANARY).await.unwrap();
        plain.send(PLAIN_KEPT).await.unwrap();
        let plain_secret = plain.send(PLAIN_CANARY).await.unwrap();
        until_reached(&room).await;
        until_reached(&plain).await;
        let blobs = blob_items(&prefix).await;
        assert!(
            !blobs.iter().any(|b| contains(b, CANARY) || contains(b, KEPT)),
            "the encrypted room's bodies are readable in the table"
        );
        assert!(blobs.iter().any(|b| contains(b, PLAIN_CANARY)), "the clear room's body");
        room.delete(secret).await.unwrap();
        plain.delete(plain_secret).await.unwrap();
        // The deleted messages leave the timelines; later messages reaching
        // the relay show the deletes did (the watermark covers both).
        room.send("after the delete").await.unwrap();
        plain.send("after the delete").await.unwrap();
        until_reached(&room).await;
        until_reached(&plain).await;
        let blobs = blob_items(&prefix).await;
        assert!(blobs.iter().any(|b| contains(b, PLAIN_KEPT)), "the kept body is not in the table");
        assert!(!blobs.iter().any(|b| contains(b, PLAIN_CANARY)), "the canary is still there");
        assert!(!blobs.iter().any(|b| contains(b, CANARY) || contains(b, KEPT)));
        // Both deleted bodies' blobs, the ciphertext one included.
        assert!(relay.metric("concord_relay_blobs_erased_total") >= 2.0);

        // The store goes away: a new message stays saved, and health says so.
        let stored = envelope_count(&prefix).await;
        front.set(false);
        room.send("while the store is down").await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(states(&room).await.last().unwrap(), &Some(DeliveryState::Saved));
        let (status, body) = relay.get("/health");
        assert!(status.contains("503"), "{status} {body}");
        assert!(relay.metric("concord_relay_store_errors_total") >= 1.0);

        // Back: the outbox goes out, then the device's catch-up is answered.
        front.set(true);
        until_reached(&room).await;
        assert_eq!(envelope_count(&prefix).await, stored + 1);
        let (status, _) = relay.get("/health");
        assert!(status.contains("200"), "{status}");
        a.shutdown().await.unwrap();
        relay.stop();
    }
}
