//! The child process `concord-chaos-node`: one device node (`Node` on a sled
//! store) or the relay (`Relay` on sled or DynamoDB), on its own data
//! directory, driven by the control protocol of [`super::protocol`] on
//! stdin and stdout. Its clock is the system clock plus an offset the
//! driver sets (`skew`): the clock a node is given is the only one it reads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use concord_core::{Clock, Draft, MessageId, Replica, Role, RoomOptions, SledStore};
use concord_node::relay::{Relay, RelayConfig, SledRelayStore};
use concord_node::{AuthorId, Multiaddr, Node, NodeConfig, PeerId, Room, RoomTicket};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::protocol::{attachment_bytes, Cmd, Item, Ready, Reply, Request};

/// Replies waiting for the stdout writer; a driver that stops reading
/// holds the child back rather than growing its memory.
const REPLY_QUEUE: usize = 256;

/// The system clock moved by an offset the driver sets at run time.
#[derive(Debug, Default)]
pub struct SkewClock {
    offset: AtomicI64,
}

impl SkewClock {
    /// A clock `millis` ahead of the system clock (behind if negative).
    pub fn new(millis: i64) -> Self {
        Self { offset: AtomicI64::new(millis) }
    }

    /// Sets the offset.
    pub fn set(&self, millis: i64) {
        self.offset.store(millis, Ordering::SeqCst);
    }
}

impl Clock for SkewClock {
    fn now_millis(&self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        u64::try_from(now.saturating_add(self.offset.load(Ordering::SeqCst))).unwrap_or(0)
    }
}

/// The child's command line.
#[derive(Debug, Default)]
struct Args {
    relay: bool,
    dir: PathBuf,
    key_seed: [u8; 32],
    skew_ms: i64,
    dynamodb: Option<(String, String)>,
    ack_before_flush: bool,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut out = Args::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--relay" => out.relay = true,
            "--dir" => out.dir = PathBuf::from(value()?),
            "--key-seed" => {
                let bytes = hex::decode(value()?)?;
                out.key_seed = bytes.try_into().map_err(|_| anyhow!("--key-seed: 32 bytes"))?;
            }
            "--skew-ms" => out.skew_ms = value()?.parse()?,
            "--dynamodb" => {
                let endpoint = value()?.clone();
                let prefix = it.next().ok_or_else(|| anyhow!("--dynamodb ENDPOINT PREFIX"))?;
                out.dynamodb = Some((endpoint, prefix.clone()));
            }
            "--bug" => match value()?.as_str() {
                "ack-before-flush" => out.ack_before_flush = true,
                other => bail!("unknown --bug {other}"),
            },
            other => bail!("unknown argument {other}"),
        }
    }
    if out.dir.as_os_str().is_empty() {
        bail!("--dir is required");
    }
    Ok(out)
}

/// What the child runs.
enum Peer {
    Device { node: Node, clock: Arc<SkewClock>, ack_before_flush: bool },
    Relay(Relay),
}

/// Runs the child until `shutdown` or the end of stdin.
pub async fn main(args: &[String]) -> Result<()> {
    let args = parse_args(args)?;
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let peer = if args.relay { start_relay(&args).await? } else { start_device(&args)? };
    let node_addr = match &peer {
        Peer::Device { node, .. } => node.listen(listen).await?,
        Peer::Relay(relay) => relay
            .node()
            .addresses()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("the relay listens nowhere"))?,
    };
    let (peer_id, author) = match &peer {
        Peer::Device { node, .. } => (node.peer_id(), node.author()),
        Peer::Relay(relay) => (relay.node().peer_id(), relay.node().author()),
    };
    let addr = if node_addr.to_string().contains("/p2p/") {
        node_addr.to_string()
    } else {
        format!("{node_addr}/p2p/{peer_id}")
    };
    let ready = Ready {
        event: "ready".into(),
        peer_id: peer_id.to_string(),
        author: author.to_string(),
        addr,
    };
    let mut stdout = tokio::io::stdout();
    stdout.write_all(format!("{}\n", serde_json::to_string(&ready)?).as_bytes()).await?;
    stdout.flush().await?;

    let peer = Arc::new(peer);
    let (replies, mut outbox) = mpsc::channel::<Reply>(REPLY_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(reply) = outbox.recv().await {
            let Ok(line) = serde_json::to_string(&reply) else { continue };
            if stdout.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                break;
            }
            let _ = stdout.flush().await;
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                // Answered as a failure if it has a number, else dropped.
                let req = serde_json::from_str::<Value>(&line).ok().and_then(|v| v["req"].as_u64());
                if let Some(req) = req {
                    let _ = replies.send(reply(req, Err(format!("bad request: {e}")))).await;
                }
                continue;
            }
        };
        if matches!(request.cmd, Cmd::Shutdown) {
            // A relay ends with the process: its store is durable at every
            // acknowledgement, which is what the harness checks.
            let result = match &*peer {
                Peer::Device { node, .. } => node.shutdown().await.map_err(|e| e.to_string()),
                Peer::Relay(_) => Ok(()),
            };
            let _ = replies.send(reply(request.req, result.map(|()| json!({})))).await;
            drop(replies);
            let _ = writer.await;
            return Ok(());
        }
        let peer = peer.clone();
        let replies = replies.clone();
        tokio::spawn(async move {
            let out = handle(&peer, request.cmd).await.map_err(|e| format!("{e:#}"));
            let _ = replies.send(reply(request.req, out)).await;
        });
    }
    // The driver went away: exit without a clean shutdown, as a phone would.
    Ok(())
}

fn reply(req: u64, out: std::result::Result<Value, String>) -> Reply {
    match out {
        Ok(data) => Reply { req, ok: true, data, error: None },
        Err(error) => Reply { req, ok: false, data: Value::Null, error: Some(error) },
    }
}

fn device_config() -> NodeConfig {
    NodeConfig::default()
        .mdns(false)
        .sync_interval(Duration::from_millis(500))
        .confirm_delay(Duration::from_millis(100))
        .invite_wait(Duration::from_secs(300))
}

fn start_device(args: &Args) -> Result<Peer> {
    let clock = Arc::new(SkewClock::new(args.skew_ms));
    let store = SledStore::open_with_cache(&args.dir, 4 * 1024 * 1024)
        .map_err(|e| anyhow!("the store would not open: {e}"))?;
    let replica = Replica::open_with_seed(store, clock.clone(), args.key_seed)
        .map_err(|e| anyhow!("the replica would not open: {e}"))?;
    let node = Node::start(replica, clock.clone(), device_config())?;
    Ok(Peer::Device { node, clock, ack_before_flush: args.ack_before_flush })
}

async fn start_relay(args: &Args) -> Result<Peer> {
    let key_file = args.dir.join("relay.key");
    if !key_file.exists() {
        std::fs::create_dir_all(&args.dir)?;
        std::fs::write(&key_file, hex::encode(args.key_seed))?;
    }
    let mut config = RelayConfig::new(args.dir.join("data"));
    config.key_file = Some(key_file);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    config.sync_interval_secs = 1;
    let relay = match &args.dynamodb {
        None => {
            let store = SledRelayStore::open(&config.sled_store_dir())
                .map_err(|e| anyhow!("the relay store would not open: {e}"))?;
            Relay::start(config, store).await?
        }
        Some((endpoint, prefix)) => start_dynamo(config, endpoint, prefix).await?,
    };
    Ok(Peer::Relay(relay))
}

#[cfg(feature = "dynamodb")]
async fn start_dynamo(config: RelayConfig, endpoint: &str, prefix: &str) -> Result<Relay> {
    use concord_node::relay::DynamoRelayStore;
    let store = DynamoRelayStore::connect(Some(endpoint), prefix, "us-east-1").await?;
    store.create_tables().await?;
    Ok(Relay::start(config, store).await?)
}

#[cfg(not(feature = "dynamodb"))]
async fn start_dynamo(_: RelayConfig, _: &str, _: &str) -> Result<Relay> {
    bail!("built without the dynamodb feature")
}

async fn the_room(node: &Node) -> Result<Room<SledStore>> {
    let rooms = node.rooms().await?;
    let info = rooms.first().ok_or_else(|| anyhow!("no room yet"))?;
    Ok(node.room(info.id).await?)
}

async fn members(room: &Room<SledStore>) -> Result<Vec<String>> {
    let gov = room.governance().await?;
    Ok(gov.members().keys().map(|a| a.to_string()).collect())
}

fn parse_role(role: &str) -> Result<Role> {
    Ok(match role {
        "member" => Role::Member,
        "moderator" => Role::Moderator,
        "read_only" => Role::ReadOnly,
        other => bail!("unknown role {other}"),
    })
}

async fn handle(peer: &Peer, cmd: Cmd) -> Result<Value> {
    let network = match peer {
        Peer::Device { node, .. } => node.clone_network(),
        Peer::Relay(relay) => relay.node().clone_network(),
    };
    match cmd {
        Cmd::Dial { addr } => {
            network.dial(addr.parse()?).await?;
            return Ok(json!({}));
        }
        Cmd::Block { peer, on } => {
            let peer: PeerId = peer.parse()?;
            if on {
                network.block(peer).await?;
            } else {
                network.unblock(peer).await?;
            }
            return Ok(json!({}));
        }
        _ => {}
    }
    let Peer::Device { node, clock, ack_before_flush } = peer else {
        bail!("the relay answers dial, block and shutdown only");
    };
    match cmd {
        Cmd::CreateRoom { members } => {
            let members = members
                .iter()
                .map(|m| Ok((m.parse::<AuthorId>()?, Role::Member)))
                .collect::<Result<Vec<_>>>()?;
            let options = RoomOptions::default().members_only(members).share_history(true);
            let room = node.create_room_opts("chaos", options).await?;
            Ok(json!({"room": room.id().to_string(), "ticket": room.ticket().await?.to_string()}))
        }
        Cmd::Join { ticket } => {
            let ticket: RoomTicket = ticket.parse()?;
            let room = node.join_ticket(&ticket).await?;
            Ok(json!({"room": room.id().to_string()}))
        }
        Cmd::Post { text, reply_to, attachments } => {
            let room = the_room(node).await?;
            let before = members(&room).await?;
            let draft = Draft {
                text: text.clone(),
                reply_to: reply_to.map(|r| r.parse::<MessageId>()).transpose()?,
                attachments: attachments
                    .iter()
                    .enumerate()
                    .map(|(i, len)| attachment_bytes(&text, i, *len))
                    .collect(),
            };
            if *ack_before_flush {
                // The deliberate bug: acknowledge first, write later. A
                // SIGKILL in between loses an acknowledged message.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let _ = room.send_draft(draft).await;
                });
                return Ok(json!({"id": null, "members": before}));
            }
            let id = room.send_draft(draft).await?;
            Ok(json!({"id": id.to_string(), "members": before}))
        }
        Cmd::PostDelete { text } => {
            let room = the_room(node).await?;
            let before = members(&room).await?;
            let rid = room.id();
            // Nothing goes out before both are durable, and the delete goes
            // out first: peers get the delete before (or without) the post.
            let (id, posted, gone) = node
                .replica()
                .try_call(move |r| {
                    let sent = r.post(&rid, Draft::text(text))?;
                    let gone = r.delete(&rid, &sent.id)?;
                    Ok((sent.id, sent.delivery, gone.delivery))
                })
                .await?;
            let _ = node.publish(rid, &gone).await;
            let _ = node.publish(rid, &posted).await;
            Ok(json!({"id": id.to_string(), "members": before}))
        }
        Cmd::Edit { id, text } => {
            the_room(node).await?.edit(id.parse()?, &text).await?;
            Ok(json!({}))
        }
        Cmd::Delete { id } => {
            the_room(node).await?.delete(id.parse()?).await?;
            Ok(json!({}))
        }
        Cmd::React { id, emoji } => {
            the_room(node).await?.react(id.parse()?, &emoji).await?;
            Ok(json!({}))
        }
        Cmd::Invite { author } => {
            let room = the_room(node).await?;
            let ticket = room.invite_ticket(Role::Member, Some(author.parse()?), None).await?;
            Ok(json!({"ticket": ticket.to_string()}))
        }
        Cmd::SetRole { author, role } => {
            the_room(node).await?.set_role(author.parse()?, parse_role(&role)?).await?;
            Ok(json!({}))
        }
        Cmd::Remove { author } => {
            the_room(node).await?.kick(author.parse()?).await?;
            Ok(json!({}))
        }
        Cmd::Members => {
            let gov = the_room(node).await?.governance().await?;
            let listed: Vec<String> = gov.members().keys().map(|a| a.to_string()).collect();
            // Which members have published device keys (room keys are
            // shared only to those).
            let keyed: Vec<String> = gov
                .members()
                .keys()
                .filter(|a| gov.device_keys(a).is_some())
                .map(|a| a.to_string())
                .collect();
            Ok(json!({"members": listed, "keyed": keyed}))
        }
        Cmd::Read { probe } => read(node, probe).await,
        Cmd::Skew { millis } => {
            clock.set(millis);
            Ok(json!({}))
        }
        Cmd::Dial { .. } | Cmd::Block { .. } | Cmd::Shutdown => unreachable!("handled above"),
    }
}

async fn read(node: &Node, probe: Vec<String>) -> Result<Value> {
    let room = the_room(node).await?;
    let rid = room.id();
    let mut items = Vec::new();
    for item in room.timeline().await? {
        let m = item.message;
        let mut attachments = Vec::new();
        for hash in &m.attachments {
            let hash = *hash;
            let bytes = node.replica().try_call(move |r| r.attachment(&rid, &hash)).await?;
            attachments.push(bytes.map(|b| blake3::hash(&b).to_hex().to_string()));
        }
        items.push(Item {
            id: m.id.to_string(),
            author: m.author.to_string(),
            body: m.body,
            waiting: m.waiting_for_key,
            reply_to: m.reply_to.map(|r| r.to_string()),
            edited: m.edited.is_some(),
            reactions: m
                .reactions
                .into_iter()
                .map(|r| (r.emoji, r.authors.iter().map(|a| a.to_string()).collect()))
                .collect(),
            attachments,
        });
    }
    let mut found = Vec::new();
    for id in probe {
        found.push(room.message(id.parse()?).await?.is_some());
    }
    Ok(json!({"items": items, "probe": found}))
}

/// The network half of a node, whatever its store.
trait Network: Send + Sync {
    fn dial(&self, addr: Multiaddr) -> futures::future::BoxFuture<'_, concord_node::Result<()>>;
    fn block(&self, peer: PeerId) -> futures::future::BoxFuture<'_, concord_node::Result<()>>;
    fn unblock(&self, peer: PeerId) -> futures::future::BoxFuture<'_, concord_node::Result<()>>;
}

impl<S: concord_core::Store + 'static> Network for Node<S> {
    fn dial(&self, addr: Multiaddr) -> futures::future::BoxFuture<'_, concord_node::Result<()>> {
        Box::pin(Node::dial(self, addr))
    }
    fn block(&self, peer: PeerId) -> futures::future::BoxFuture<'_, concord_node::Result<()>> {
        Box::pin(Node::block(self, peer))
    }
    fn unblock(&self, peer: PeerId) -> futures::future::BoxFuture<'_, concord_node::Result<()>> {
        Box::pin(Node::unblock(self, peer))
    }
}

trait CloneNetwork {
    fn clone_network(&self) -> Box<dyn Network>;
}

impl<S: concord_core::Store + 'static> CloneNetwork for Node<S> {
    fn clone_network(&self) -> Box<dyn Network> {
        Box::new(self.clone())
    }
}
