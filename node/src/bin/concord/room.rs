//! `concord room`: create a room in a store, list a store's rooms, and print
//! a ticket for one of them.
//!
//! A ticket carries the addresses the node listens on while the command
//! runs. Those are worth sharing only if the chat that serves the room will
//! listen on them too, which means fixed ports (`--listen
//! /ip4/0.0.0.0/tcp/4001` here and in `concord chat`); without `--listen`
//! the ticket carries no address and peers find the room's devices by mDNS.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use concord_node::{Multiaddr, Node, NodeConfig, RoomId, RoomOptions, RoomTicket};

use crate::common::{
    default_data_dir, listen_all, open_node, settled_ticket, CliError, CliResult, Context,
};

/// The `room` subcommands.
#[derive(Subcommand)]
pub enum RoomCommand {
    /// Creates a room and prints its id and a ticket to join it.
    Create {
        /// The room's name.
        name: String,
        /// A room of members only: others join with an invite (`/invite` in
        /// `concord chat`), not with the ticket alone.
        #[arg(long)]
        members_only: bool,
        /// A room without end-to-end encryption: relays and any peer that
        /// serves it can read it. Rooms are encrypted unless this is given.
        #[arg(long)]
        unencrypted: bool,
        /// Share the room's history with new members (an encrypted room
        /// gives a new member keys from its join onward otherwise).
        #[arg(long, conflicts_with = "unencrypted")]
        share_history: bool,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Lists the rooms in a store: id, name, creator.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Prints a ticket for a room in a store.
    Ticket {
        /// The room's id (64 hex digits, see `concord room list`); the
        /// first room of the store if left out.
        room: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        listen: ListenArgs,
    },
}

/// Which store a room command works on.
#[derive(Args)]
pub struct StoreArgs {
    /// The data directory holding the store.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Use the data directory of `concord chat --name NAME` instead.
    #[arg(long, value_name = "NAME", conflicts_with = "data_dir")]
    profile: Option<String>,
}

impl StoreArgs {
    fn dir(&self) -> CliResult<PathBuf> {
        match (&self.data_dir, &self.profile) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, Some(name)) => default_data_dir(name),
            (None, None) => Err(CliError::new(
                "which store? give --data-dir DIR, or --profile NAME for the store of \
                 `concord chat --name NAME`",
            )),
        }
    }
}

/// Addresses to put in the ticket.
#[derive(Args)]
pub struct ListenArgs {
    /// Listen on this address while the command runs and put it in the
    /// ticket (repeatable). Use fixed ports that `concord chat --listen`
    /// will also use, or the ticket's addresses die with this command.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
}

/// Runs a `room` subcommand.
pub async fn run(command: RoomCommand) -> CliResult<ExitCode> {
    // No discovery: these commands only read or write the store (and
    // listen for a moment to learn the ticket's addresses).
    let config = NodeConfig::default().mdns(false);
    let store = match &command {
        RoomCommand::Create { store, .. }
        | RoomCommand::List { store }
        | RoomCommand::Ticket { store, .. } => store,
    };
    let node = open_node(&store.dir()?, config)?;
    let result = match &command {
        RoomCommand::Create { name, listen, members_only, unencrypted, share_history, .. } => {
            let mut options =
                RoomOptions::default().encrypted(!unencrypted).share_history(*share_history);
            if *members_only {
                options = options.members_only(Vec::new());
            }
            create(&node, name, options, &listen.listen).await
        }
        RoomCommand::List { .. } => list(&node).await,
        RoomCommand::Ticket { room, listen, .. } => {
            ticket(&node, room.as_deref(), &listen.listen).await
        }
    };
    let closed = node.shutdown().await.context("cannot close the store");
    result?;
    closed?;
    Ok(ExitCode::SUCCESS)
}

async fn create(
    node: &Node,
    name: &str,
    options: RoomOptions,
    listen: &[Multiaddr],
) -> CliResult<()> {
    listen_all(node, listen).await?;
    let encrypted = options.is_encrypted();
    let room = node.create_room_opts(name, options).await.context("cannot create the room")?;
    say!("room: {}", room.id());
    if encrypted {
        say!("encryption: end to end (relays store it and cannot read it)");
    } else {
        say!("encryption: none (relays and any peer with the ticket can read it)");
    }
    print_ticket(node, room.id(), listen).await
}

async fn list(node: &Node) -> CliResult<()> {
    let rooms = node.rooms().await.context("cannot read the rooms")?;
    if rooms.is_empty() {
        eprintln!("no rooms in this store yet (concord room create NAME, or concord chat)");
    }
    for r in rooms {
        let encrypted = if r.encrypted { ", end-to-end encrypted 🔒" } else { "" };
        say!("{}  {}  (created by {}{encrypted})", r.id, r.name, crate::common::short(&r.creator));
    }
    Ok(())
}

async fn ticket(node: &Node, room: Option<&str>, listen: &[Multiaddr]) -> CliResult<()> {
    let rooms = node.rooms().await.context("cannot read the rooms")?;
    let id = match room {
        Some(text) => {
            let id: RoomId = text
                .trim()
                .parse()
                .map_err(|_| CliError::new(format!("{text:?} is not a room id (64 hex digits)")))?;
            if !rooms.iter().any(|r| r.id == id) {
                return Err(CliError::new(format!("this store holds no room {id}")));
            }
            id
        }
        None => {
            let first = rooms.first().ok_or_else(|| {
                CliError::new("this store holds no room yet (concord room create NAME)")
            })?;
            if rooms.len() > 1 {
                eprintln!(
                    "note: the store holds {} rooms; this ticket is for the first, {} ({})",
                    rooms.len(),
                    first.name,
                    first.id
                );
            }
            first.id
        }
    };
    listen_all(node, listen).await?;
    print_ticket(node, id, listen).await
}

async fn print_ticket(node: &Node, room: RoomId, listen: &[Multiaddr]) -> CliResult<()> {
    let ticket: RoomTicket = if listen.is_empty() {
        node.ticket(room).await.context("cannot make a ticket")?
    } else {
        settled_ticket(node, room).await?
    };
    say!("ticket: {ticket}");
    if ticket.addresses().is_empty() {
        eprintln!(
            "note: this ticket carries no address; devices holding the room are found by mDNS \
             on the local network (give --listen with fixed ports to add addresses)"
        );
    }
    Ok(())
}
