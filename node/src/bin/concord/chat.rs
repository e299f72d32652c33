//! `concord chat`: a line-based chat in one room.
//!
//! The terminal is a view of the room's timeline: the subscription's diffs
//! are printed as they happen (own messages too, which is how a sent line
//! shows up), each message under a number local to this session, which the
//! commands take. The subscription listener runs on the replica thread and
//! only hands diffs to a bounded channel; if that channel ever overflows,
//! the view is rebuilt from the timeline instead of blocking the replica.
//!
//! One file over the house's 600 lines: the chat's event loop and its slash
//! commands are one state machine over one terminal, read top to bottom.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use concord_node::core::SledStore;
use concord_node::{
    AuthorId, DeliveryState, Invite, Message, MessageId, Multiaddr, Node, NodeConfig, NodeError,
    NodeEvent, Role, Room, RoomId, RoomTicket, SignalKind, TimelineDiff, TimelineListener,
    TICKET_PREFIX,
};
use data_encoding::HEXLOWER_PERMISSIVE;
use tokio::sync::{broadcast, mpsc};

use crate::common::{
    default_data_dir, default_listen, listen_all, open_node, settled_ticket, short, CliError,
    CliResult, Context,
};

/// Catch-up period of a chat. A terminal runs on a laptop or a server, not
/// on a phone's battery, so it heals what gossip missed (a message sent in
/// the moment between connecting and learning the peer's topics) within
/// seconds rather than the phone default of 30.
const CHAT_SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Batches of timeline diffs waiting to be printed. A burst larger than
/// this (a long catch-up) makes the view rebuild from the timeline.
const DIFF_QUEUE: usize = 256;
/// Lines read from stdin and not yet handled; the reader waits when full.
const LINE_QUEUE: usize = 16;

/// Shown under `concord chat --help`.
pub const CHAT_HELP: &str = "\
Each line you type is sent as a message. Lines starting with / are commands:
  /edit N TEXT     replace the text of your message N
  /delete N        delete your message N (its text is erased everywhere it arrives)
  /react N EMOJI   react to message N        /unreact N EMOJI   take it back
  /reply N TEXT    reply to message N
  /typing          tell the room you are typing
  /peers           connected peers and what members last said about themselves
  /ticket          print a ticket for the room again
  /history         print the whole timeline again
  /members         the room's name, topic, members with their roles and the
                   fingerprints of their device keys, and bans
  /role KEY ROLE   set a member's role (admin, moderator, member, read-only)
  /kick KEY        remove a member          /ban KEY   /unban KEY
  /topic TEXT      set the topic            /rename NAME   rename the room
  /invite [KEY]    print a ticket carrying an invite as member, for one author id
                   or for whoever uses it first: joining with it makes its holder a member
  /redeem INVITE   redeem an invite you were given (an invite ticket, or hex) in this room
  /audit           who changed the room's governance, what and when
  /whoami          your author id
  /quit            leave (end of input does the same)
N is the number in front of each message; numbers are local to this session.
KEY is an author id, or the first hex digits of a member's (as shown).
Start a line with // to send a message that begins with /.

Other members are shown by the first 8 hex digits of their author id: display
names are not part of the protocol yet.";

/// Arguments of `concord chat`.
#[derive(Args)]
pub struct ChatArgs {
    /// Your name: shown for your own messages on this device, and the name
    /// of the default data directory. Others see your author id, not this
    /// name (display names are not part of the protocol yet).
    #[arg(long)]
    name: String,
    /// Join the room of this ticket (the `ticket:` line another chat
    /// prints) instead of creating a room or reusing the store's first. A
    /// ticket with an invite (`/invite`) makes you a member by itself once
    /// the room's governance arrives.
    #[arg(long, value_name = "TICKET")]
    join: Option<RoomTicket>,
    /// The data directory [default: $XDG_DATA_HOME/concord/NAME, or
    /// ~/.local/share/concord/NAME].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Listen on this address (repeatable) [default: /ip4/0.0.0.0/tcp/0 and
    /// /ip4/0.0.0.0/udp/0/quic-v1].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Do not discover peers on the local network by mDNS.
    #[arg(long)]
    no_mdns: bool,
}

/// Runs `concord chat`.
pub async fn run(args: ChatArgs) -> CliResult<ExitCode> {
    let dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir(&args.name)?,
    };
    let config = NodeConfig::default().mdns(!args.no_mdns).sync_interval(CHAT_SYNC_INTERVAL);
    let node = open_node(&dir, config)?;
    let result = session(&node, &args).await;
    let closed = node.shutdown().await.context("cannot shut down cleanly");
    result?;
    closed?;
    Ok(ExitCode::SUCCESS)
}

/// Forwards diffs from the replica thread to the chat loop, never waiting.
struct Forward {
    diffs: mpsc::Sender<Vec<TimelineDiff>>,
    lagged: Arc<AtomicBool>,
}

impl TimelineListener for Forward {
    fn on_diffs(&self, _room: &RoomId, diffs: &[TimelineDiff]) {
        if self.diffs.try_send(diffs.to_vec()).is_err() {
            self.lagged.store(true, Ordering::SeqCst);
        }
    }
}

/// What a command asks of the loop.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

async fn session(node: &Node, args: &ChatArgs) -> CliResult<()> {
    // Subscribe before anything can connect, so no event is missed.
    let mut events = node.events();
    let listen = if args.listen.is_empty() { default_listen() } else { args.listen.clone() };
    listen_all(node, &listen).await?;

    let room = match &args.join {
        Some(ticket) => {
            node.join_ticket(ticket).await.context("cannot join the room of the ticket")?
        }
        None => {
            let rooms = node.rooms().await.context("cannot read the store's rooms")?;
            match rooms.first() {
                Some(first) => node.room(first.id).await.context("cannot open the room")?,
                None => node
                    .create_room(&format!("{}'s room", args.name))
                    .await
                    .context("cannot create a room")?,
            }
        }
    };
    let info = room.info().await.context("cannot read the room")?;
    let ticket = settled_ticket(node, room.id()).await?;
    say!("ticket: {ticket}");
    if info.encrypted {
        say!("room: 🔒 {} ({}) — end-to-end encrypted", info.name, room.id());
    } else {
        say!("room: {} ({}) — not encrypted: relays and peers can read it", info.name, room.id());
    }
    say!("you: {} (author {})", args.name, short(&node.author()));
    if args.join.as_ref().is_some_and(|t| t.invite().is_some()) {
        say!("* the ticket carries an invite: you become a member once the room's governance arrives");
    }
    say!("type a message and press enter; /help lists the commands");

    let (diff_tx, mut diffs) = mpsc::channel(DIFF_QUEUE);
    let lagged = Arc::new(AtomicBool::new(false));
    let forward = Forward { diffs: diff_tx, lagged: lagged.clone() };
    let _subscription = room.subscribe(Arc::new(forward)).await.context("cannot watch the room")?;
    let mut view = View::new(room.clone(), node.author(), args.name.clone());
    view.resync().await?;

    let mut lines = stdin_lines()?;
    let ctrl_c = async {
        // Without a signal handler the chat still ends on /quit or EOF.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            biased;
            _ = &mut ctrl_c => break,
            line = lines.recv() => match line {
                None => break,
                Some(line) => {
                    if view.command(&line).await? == Flow::Quit {
                        break;
                    }
                }
            },
            Some(batch) = diffs.recv() => {
                view.diffs(batch).await?;
                if lagged.swap(false, Ordering::SeqCst) {
                    view.resync().await?;
                }
            }
            event = events.recv() => match event {
                Ok(event) => view.event(event).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    Ok(())
}

/// Reads stdin on its own thread (a blocking read cannot be cancelled, and
/// a thread left blocked in it does not hold up the exit) into a bounded
/// channel. Bytes that are not UTF-8 are replaced, not fatal.
fn stdin_lines() -> CliResult<mpsc::Receiver<String>> {
    let (tx, rx) = mpsc::channel(LINE_QUEUE);
    std::thread::Builder::new()
        .name("concord-stdin".into())
        .spawn(move || {
            let mut input = std::io::stdin().lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match input.read_until(b'\n', &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_owned();
                        if tx.blocking_send(line).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read stdin");
                        break;
                    }
                }
            }
        })
        .context("cannot start the input thread")?;
    Ok(rx)
}

/// The session's view of the room: numbers given to messages, what was
/// last printed for each, and the delivery state of own messages.
struct View {
    room: Room<SledStore>,
    me: AuthorId,
    name: String,
    numbers: HashMap<MessageId, usize>,
    ids: Vec<MessageId>,
    shown: HashMap<MessageId, Message>,
    states: HashMap<MessageId, DeliveryState>,
    online: HashMap<AuthorId, bool>,
}

impl View {
    fn new(room: Room<SledStore>, me: AuthorId, name: String) -> Self {
        Self {
            room,
            me,
            name,
            numbers: HashMap::new(),
            ids: Vec::new(),
            shown: HashMap::new(),
            states: HashMap::new(),
            online: HashMap::new(),
        }
    }

    fn number(&mut self, id: MessageId) -> usize {
        if let Some(n) = self.numbers.get(&id) {
            return *n;
        }
        self.ids.push(id);
        let n = self.ids.len();
        self.numbers.insert(id, n);
        n
    }

    fn who(&self, author: &AuthorId) -> String {
        if *author == self.me {
            format!("{} (you)", self.name)
        } else {
            short(author)
        }
    }

    fn line(&self, n: usize, m: &Message) -> String {
        let mut out = format!("[{n}] {}: ", self.who(&m.author));
        if let Some(to) = m.reply_to {
            match self.numbers.get(&to) {
                Some(k) => out.push_str(&format!("↪[{k}] ")),
                None => out.push_str("↪[?] "),
            }
        }
        match &m.body {
            Some(body) => out.push_str(body),
            None if m.waiting_for_key => out.push_str("🔑 (waiting for key)"),
            None => out.push_str("(text not arrived yet)"),
        }
        if m.edited.is_some() {
            out.push_str(" (edited)");
        }
        if !m.attachments.is_empty() {
            out.push_str(&format!("  (+{} attachments)", m.attachments.len()));
        }
        if !m.reactions.is_empty() {
            let reactions: Vec<String> =
                m.reactions.iter().map(|r| format!("{} {}", r.emoji, r.authors.len())).collect();
            out.push_str(&format!("  [{}]", reactions.join(", ")));
        }
        if let Some(state) = self.states.get(&m.id) {
            out.push_str("  ");
            out.push_str(&state_text(*state));
        }
        out
    }

    /// Prints a message that appeared or changed (or nothing, if it is
    /// shown as it is already).
    async fn show(&mut self, m: Message) -> CliResult<()> {
        let previous = self.shown.get(&m.id).cloned();
        if previous.as_ref() == Some(&m) {
            return Ok(());
        }
        if m.author == self.me && !self.states.contains_key(&m.id) {
            if let Some(state) = self.state_of(m.id).await? {
                self.states.insert(m.id, state);
            }
        }
        let n = self.number(m.id);
        let line = self.line(n, &m);
        match previous {
            None => say!("{line}"),
            Some(p) if p.edited != m.edited => say!("edited: {line}"),
            Some(_) => say!("updated: {line}"),
        }
        self.shown.insert(m.id, m);
        Ok(())
    }

    fn removed(&mut self, id: MessageId) {
        if self.shown.remove(&id).is_some() {
            let n = self.number(id);
            say!("[{n}] deleted");
        }
        self.states.remove(&id);
    }

    async fn state_of(&self, id: MessageId) -> CliResult<Option<DeliveryState>> {
        match self.room.message(id).await {
            Ok(item) => Ok(item.and_then(|i| i.delivery)),
            Err(NodeError::Closed) => Err(CliError::new("the node has stopped")),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a delivery state");
                Ok(None)
            }
        }
    }

    async fn diffs(&mut self, batch: Vec<TimelineDiff>) -> CliResult<()> {
        for diff in batch {
            match diff {
                TimelineDiff::Insert(m) | TimelineDiff::Update(m) => self.show(m).await?,
                TimelineDiff::Remove { id, .. } => self.removed(id),
                _ => {}
            }
        }
        Ok(())
    }

    /// Brings the printed view in line with the timeline: at start, after
    /// a lost diff, and for `/history` (which clears the view first).
    async fn resync(&mut self) -> CliResult<()> {
        let items = self.room.timeline().await.context("cannot read the timeline")?;
        let live: std::collections::HashSet<MessageId> =
            items.iter().map(|i| i.message.id).collect();
        let gone: Vec<MessageId> =
            self.shown.keys().filter(|id| !live.contains(id)).copied().collect();
        for id in gone {
            self.removed(id);
        }
        for item in items {
            if let Some(state) = item.delivery {
                self.states.insert(item.message.id, state);
            }
            self.show(item.message).await?;
        }
        Ok(())
    }

    /// Own messages whose delivery state may have moved are asked again.
    async fn delivered(&mut self) -> CliResult<()> {
        let waiting: Vec<MessageId> = self
            .states
            .iter()
            .filter(|(_, s)| **s == DeliveryState::Saved)
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            let Some(state) = self.state_of(id).await? else { continue };
            if self.states.insert(id, state) != Some(state) {
                let n = self.number(id);
                say!("[{n}] {}", state_text(state));
            }
        }
        Ok(())
    }

    async fn event(&mut self, event: NodeEvent) -> CliResult<()> {
        match event {
            NodeEvent::PeerConnected(peer) => say!("* connected to peer {peer}"),
            NodeEvent::PeerLost(peer) => say!("* disconnected from peer {peer}"),
            NodeEvent::Discovered(peer) => say!("* found peer {peer} on the local network"),
            NodeEvent::Banned(peer) => say!("* banned peer {peer} for misbehaving"),
            NodeEvent::Delivered { room, .. } if room == self.room.id() => {
                self.delivered().await?;
            }
            NodeEvent::Signal { room, author, kind } if room == self.room.id() => {
                if author == self.me {
                    return Ok(());
                }
                let who = short(&author);
                match kind {
                    SignalKind::Typing => say!("* {who} is typing"),
                    // Online comes every presence period: say it on a change only.
                    SignalKind::Online if self.online.insert(author, true) != Some(true) => {
                        say!("* {who} is online");
                    }
                    SignalKind::Offline => {
                        self.online.insert(author, false);
                        say!("* {who} went offline");
                    }
                    _ => {}
                }
            }
            NodeEvent::InviteRedeemed { room } if room == self.room.id() => {
                say!("* you are a member of the room (by the ticket's invite)");
            }
            NodeEvent::InviteFailed { room, error } if room == self.room.id() => {
                say!("* the ticket's invite did not make you a member: {error}");
            }
            NodeEvent::SyncFailed { peer, error, .. } => {
                tracing::debug!(%peer, %error, "catch-up failed");
            }
            _ => {}
        }
        Ok(())
    }

    /// Handles one line of input. Mistakes are reported and the chat goes
    /// on; only a stopped node ends it.
    async fn command(&mut self, line: &str) -> CliResult<Flow> {
        match self.try_command(line).await {
            Ok(flow) => Ok(flow),
            Err(Mistake::Stopped) => Err(CliError::new("the node has stopped")),
            Err(Mistake::Said(message)) => {
                eprintln!("! {message}");
                Ok(Flow::Continue)
            }
        }
    }

    async fn try_command(&mut self, line: &str) -> Result<Flow, Mistake> {
        let line = line.trim_end();
        if line.trim().is_empty() {
            return Ok(Flow::Continue);
        }
        if let Some(text) = line.strip_prefix("//") {
            self.room.send(&format!("/{text}")).await.map_err(|e| failed("send", e))?;
            return Ok(Flow::Continue);
        }
        let Some(command) = line.strip_prefix('/') else {
            self.room.send(line).await.map_err(|e| failed("send", e))?;
            return Ok(Flow::Continue);
        };
        let (verb, rest) = command.split_once(' ').unwrap_or((command, ""));
        let rest = rest.trim();
        match verb {
            "quit" | "exit" => return Ok(Flow::Quit),
            "help" => say!("{CHAT_HELP}"),
            "edit" => {
                let (id, text) = self.target(rest, "/edit N TEXT")?;
                self.room.edit(id, text).await.map_err(|e| failed("edit", e))?;
            }
            "delete" => {
                let (id, _) = self.target(rest, "/delete N")?;
                self.room.delete(id).await.map_err(|e| failed("delete", e))?;
            }
            "react" | "unreact" => {
                let (id, emoji) = self.target(rest, "/react N EMOJI")?;
                if emoji.is_empty() {
                    return Err(Mistake::Said(format!("usage: /{verb} N EMOJI")));
                }
                let done = if verb == "react" {
                    self.room.react(id, emoji).await
                } else {
                    self.room.unreact(id, emoji).await
                };
                done.map_err(|e| failed(verb, e))?;
            }
            "reply" => {
                let (id, text) = self.target(rest, "/reply N TEXT")?;
                if text.is_empty() {
                    return Err(Mistake::Said("usage: /reply N TEXT".into()));
                }
                self.room.reply(id, text).await.map_err(|e| failed("reply", e))?;
            }
            "typing" => {
                self.room.typing(true).await.map_err(|e| failed("signal typing", e))?;
                say!("* the room is told you are typing");
            }
            "peers" => self.peers().await?,
            "ticket" => {
                let ticket = self.room.ticket().await.map_err(|e| failed("make a ticket", e))?;
                say!("ticket: {ticket}");
            }
            "history" => {
                self.shown.clear();
                say!("--- history ---");
                self.resync().await.map_err(|e| Mistake::Said(e.to_string()))?;
                say!("--- {} messages ---", self.shown.len());
            }
            "whoami" => say!("you are {}", self.me),
            "members" => self.members().await?,
            "audit" => {
                let trail =
                    self.room.audit().await.map_err(|e| failed("read the audit trail", e))?;
                for e in trail {
                    say!("  {} {} {}", e.time_millis, short(&e.author), e.action.describe());
                }
            }
            "role" => {
                let (key, role) = rest.split_once(' ').unwrap_or((rest, ""));
                let role = Role::parse(role.trim()).ok_or_else(|| {
                    Mistake::Said("usage: /role KEY admin|moderator|member|read-only".into())
                })?;
                let member = self.author(key).await?;
                self.room.set_role(member, role).await.map_err(|e| failed("set the role", e))?;
            }
            "kick" | "ban" | "unban" => {
                let member = self.author(rest).await?;
                let done = match verb {
                    "kick" => self.room.kick(member).await,
                    "ban" => self.room.ban(member).await,
                    _ => self.room.unban(member).await,
                };
                done.map_err(|e| failed(verb, e))?;
            }
            "topic" => self.room.set_topic(rest).await.map_err(|e| failed("set the topic", e))?,
            "rename" => self.room.set_name(rest).await.map_err(|e| failed("rename", e))?,
            "invite" => {
                let invitee = if rest.is_empty() { None } else { Some(self.author(rest).await?) };
                let ticket = self
                    .room
                    .invite_ticket(Role::Member, invitee, None)
                    .await
                    .map_err(|e| failed("invite", e))?;
                let whom =
                    invitee.map_or_else(|| "whoever uses it first".to_owned(), |k| short(&k));
                say!("invite ticket: {ticket}");
                say!(
                    "* this ticket carries an invite as member for {whom}: \
                     `concord chat --join` with it makes its holder a member"
                );
            }
            "redeem" => {
                let invite = self.invite_arg(rest)?;
                self.room.redeem(invite).await.map_err(|e| failed("redeem the invite", e))?;
                say!("* you are a member");
            }
            _ => return Err(Mistake::Said(format!("unknown command /{verb} (try /help)"))),
        }
        Ok(Flow::Continue)
    }

    /// An invite to this room from an invite ticket or an invite's hex.
    fn invite_arg(&self, arg: &str) -> Result<Invite, Mistake> {
        let usage = || Mistake::Said("usage: /redeem INVITE (an invite ticket, or hex)".into());
        if !arg.starts_with(TICKET_PREFIX) {
            return HEXLOWER_PERMISSIVE
                .decode(arg.as_bytes())
                .ok()
                .and_then(|b| Invite::from_bytes(&b).ok())
                .ok_or_else(usage);
        }
        let ticket: RoomTicket =
            arg.parse().map_err(|e| Mistake::Said(format!("not a ticket: {e}")))?;
        if ticket.room_id() != self.room.id() {
            return Err(Mistake::Said("the ticket is for another room".into()));
        }
        ticket.invite().cloned().ok_or_else(|| Mistake::Said("the ticket carries no invite".into()))
    }

    /// Parses `N rest` into the message numbered N and the rest.
    fn target<'a>(&self, args: &'a str, usage: &str) -> Result<(MessageId, &'a str), Mistake> {
        let (n, rest) = args.split_once(' ').unwrap_or((args, ""));
        let n: usize = n
            .trim_start_matches(['[', '#'])
            .trim_end_matches(']')
            .parse()
            .map_err(|_| Mistake::Said(format!("usage: {usage}")))?;
        let id = n
            .checked_sub(1)
            .and_then(|i| self.ids.get(i))
            .filter(|id| self.shown.contains_key(id))
            .ok_or_else(|| Mistake::Said(format!("no message [{n}] in this session")))?;
        Ok((*id, rest.trim()))
    }

    async fn members(&self) -> Result<(), Mistake> {
        let gov = self.room.governance().await.map_err(|e| failed("read the governance", e))?;
        say!(
            "room {:?}, topic {:?}{}",
            gov.name(),
            gov.topic(),
            if gov.is_open() { " (open)" } else { "" }
        );
        for (author, member) in gov.members() {
            say!("  {} {}", author, member.role);
            match gov.device_keys(author) {
                Some(keys) => say!("    🔑 device keys {}", keys.fingerprint()),
                None => say!("    no device keys published yet"),
            }
        }
        for author in gov.bans().keys() {
            say!("  {author} banned");
        }
        Ok(())
    }

    /// An author id from a full id or a unique prefix of a listed member's.
    async fn author(&self, key: &str) -> Result<AuthorId, Mistake> {
        let key = key.trim();
        if let Ok(author) = key.parse::<AuthorId>() {
            return Ok(author);
        }
        let gov = self.room.governance().await.map_err(|e| failed("read the governance", e))?;
        let mut matches = gov
            .members()
            .keys()
            .chain(gov.bans().keys())
            .filter(|a| !key.is_empty() && a.to_string().starts_with(key));
        match (matches.next(), matches.next()) {
            (Some(author), None) => Ok(*author),
            (Some(_), Some(_)) => Err(Mistake::Said(format!("{key} names several members"))),
            _ => Err(Mistake::Said(format!("no member {key:?}: give the whole author id"))),
        }
    }

    async fn peers(&self) -> Result<(), Mistake> {
        let node = self.room.node();
        let peers = node.peers().await.map_err(|e| failed("list peers", e))?;
        say!("peers: {} connected", peers.len());
        for peer in peers {
            say!("  {peer}");
        }
        let presence = self.room.presence().await.map_err(|e| failed("read presence", e))?;
        for p in presence {
            let mut what = vec![if p.online { "online" } else { "offline" }];
            if p.typing {
                what.push("typing");
            }
            say!("  member {}: {}", short(&p.author), what.join(", "));
        }
        Ok(())
    }
}

/// Why a line did nothing.
enum Mistake {
    /// The node is gone; the chat must end.
    Stopped,
    /// Something to tell the user.
    Said(String),
}

fn failed(what: &str, e: NodeError) -> Mistake {
    match e {
        NodeError::Closed => Mistake::Stopped,
        e => Mistake::Said(format!("cannot {what}: {e}")),
    }
}

fn state_text(state: DeliveryState) -> String {
    match state {
        DeliveryState::Saved => "· saved".into(),
        DeliveryState::Reached => "✓ reached".into(),
        DeliveryState::SeenBy(n) => format!("✓✓ seen by {n}"),
    }
}
