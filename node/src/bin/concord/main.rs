//! The `concord` command line: `concord demo` (the README's main job over
//! real nodes on 127.0.0.1), `concord chat` (a line-based chat between
//! devices), `concord room` (create, list, and hand out tickets for the
//! rooms of a store) and `concord relay` (the always-on store-and-forward
//! peer).
//!
//! Every failure ends as one `error: …` line on stderr and a non-zero exit
//! code; nothing a user types or passes can make it panic. Logs go to
//! stderr, filtered by `RUST_LOG` (default `warn`), so stdout carries only
//! what the command prints for its user.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Prints one line on stdout and flushes it, so that a program reading
/// the output through a pipe sees each line as it happens. A closed stdout
/// is ignored rather than turned into a panic, as `println!` would.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::common::say_line(::std::format_args!($($arg)*))
    };
}

mod chat;
mod common;
mod demo;
mod relay;
mod room;

/// How long the runtime waits at exit for tasks still running (the node's
/// background tasks end with its shutdown; this only bounds a stray one).
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(
    name = "concord",
    version,
    about = "Concord: offline-first chat rooms that converge whenever devices meet.",
    long_about = "Concord: offline-first chat rooms that converge whenever devices meet.\n\n\
        Logs go to stderr; set RUST_LOG (for example RUST_LOG=concord_node=debug) to see more \
        than warnings."
)]
struct Cli {
    /// Write logs as JSON lines (one object per event, with its fields),
    /// for log collectors.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the main job: N peers on 127.0.0.1 write while one of them is
    /// offline, then converge; prints every timeline and a summary.
    Demo(demo::DemoArgs),
    /// Chats in a room, one line per message.
    #[command(after_help = chat::CHAT_HELP)]
    // Boxed: its ticket (with an invite) makes it the largest by far.
    Chat(Box<chat::ChatArgs>),
    /// Creates rooms, lists them, and prints tickets to join them.
    #[command(subcommand)]
    Room(room::RoomCommand),
    /// Runs a relay: an always-on peer that stores rooms for offline
    /// devices (see docs/relay.md).
    Relay(relay::RelayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Chat(args) => chat::run(*args).await,
            Command::Room(command) => room::run(command).await,
            Command::Relay(args) => relay::run(args).await,
        }
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
