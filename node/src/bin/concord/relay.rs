//! `concord relay`: runs a relay from a TOML config file (flags override
//! parts of it), and `concord relay init-store` creates the relay store's
//! tables.
//!
//! On start it prints, one line each, its peer id, its author key (which a
//! room of members only must list for the relay to store it), every
//! address it listens on, and the metrics endpoint, then `relay ready`. It runs until
//! SIGINT or SIGTERM and then shuts down cleanly; a SIGKILL loses nothing
//! either (see `docs/relay.md`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use concord_node::relay::{Relay, RelayConfig, RelayStore, SledRelayStore, StoreConfig};
use concord_node::Multiaddr;

use crate::common::{CliError, CliResult, Context};

/// `concord relay [OPTIONS]` or `concord relay init-store`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RelayArgs {
    #[command(subcommand)]
    command: Option<RelayCommand>,
    #[command(flatten)]
    run: RunArgs,
}

/// The `relay` subcommands.
#[derive(Subcommand)]
enum RelayCommand {
    /// Creates the relay store's tables (DynamoDB, CQL) or directory (sled).
    InitStore {
        #[command(flatten)]
        source: ConfigArgs,
    },
}

/// Where the config comes from.
#[derive(Args)]
struct ConfigArgs {
    /// The TOML config file (see docs/relay.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The data directory; overrides the file's `data_dir`.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Flags of a running relay.
#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    source: ConfigArgs,
    /// Listen on this multiaddr instead of the file's `listen` (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Serve /metrics and /health on this address instead of the file's.
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<SocketAddr>,
    /// Keep the relay's device key in this file instead of the file's
    /// `key_file` (see docs/relay.md).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self) -> CliResult<RelayConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .context(format_args!("cannot read {}", path.display()))?;
                let mut config =
                    RelayConfig::from_toml(&text).context(format_args!("in {}", path.display()))?;
                // Relative paths are relative to the config file.
                if let Some(dir) = path.parent() {
                    if config.data_dir.is_relative() {
                        config.data_dir = dir.join(&config.data_dir);
                    }
                    if let Some(key) = config.key_file.as_mut().filter(|k| k.is_relative()) {
                        *key = dir.join(&*key);
                    }
                }
                config
            }
            None => match &self.data_dir {
                Some(dir) => RelayConfig::new(dir),
                None => return Err(CliError::new("give --config FILE or --data-dir DIR")),
            },
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }
}

/// Runs `concord relay`.
pub async fn run(args: RelayArgs) -> CliResult<ExitCode> {
    match args.command {
        Some(RelayCommand::InitStore { source }) => init_store(source.load()?).await,
        None => {
            let mut config = args.run.source.load()?;
            if !args.run.listen.is_empty() {
                config.listen = args.run.listen.iter().map(|a| a.to_string()).collect();
            }
            if args.run.metrics.is_some() {
                config.metrics = args.run.metrics;
            }
            if args.run.key_file.is_some() {
                config.key_file = args.run.key_file;
            }
            config.validate().context("relay config")?;
            serve(config).await
        }
    }
}

/// Starts the relay on the configured backend and runs it until a signal.
async fn serve(config: RelayConfig) -> CliResult<ExitCode> {
    match config.store.clone() {
        StoreConfig::Sled { .. } => {
            let dir = config.sled_store_dir();
            let store = SledRelayStore::open(&dir)
                .context(format_args!("cannot open the relay store in {}", dir.display()))?;
            run_with(config, store).await
        }
        #[cfg(feature = "dynamodb")]
        StoreConfig::Dynamodb { endpoint, region, table_prefix } => {
            run_with(config, dynamo_store(endpoint, &region, &table_prefix).await?).await
        }
        #[cfg(feature = "cql")]
        StoreConfig::Cql { nodes, keyspace, datacenter, user, .. } => {
            let store = cql_store(&nodes, &keyspace, datacenter, user).await?;
            run_with(config, store).await
        }
        #[allow(unreachable_patterns)]
        other => Err(unsupported(&other)),
    }
}

/// Connects to the DynamoDB API.
#[cfg(feature = "dynamodb")]
async fn dynamo_store(
    endpoint: Option<String>,
    region: &str,
    table_prefix: &str,
) -> CliResult<concord_node::relay::DynamoRelayStore> {
    concord_node::relay::DynamoRelayStore::connect(endpoint.as_deref(), table_prefix, region)
        .await
        .context("cannot reach the DynamoDB relay store")
}

/// Connects to the CQL cluster; the password, if any, comes from
/// `CONCORD_CQL_PASSWORD`.
#[cfg(feature = "cql")]
async fn cql_store(
    nodes: &[String],
    keyspace: &str,
    datacenter: Option<String>,
    user: Option<String>,
) -> CliResult<concord_node::relay::CqlRelayStore> {
    let mut options = concord_node::relay::CqlOptions::default();
    if let Some(dc) = datacenter {
        options = options.datacenter(dc);
    }
    if let Some(user) = user {
        let password = std::env::var("CONCORD_CQL_PASSWORD")
            .map_err(|_| CliError::new("store.user is set but CONCORD_CQL_PASSWORD is not"))?;
        options = options.credentials(user, password);
    }
    concord_node::relay::CqlRelayStore::connect(nodes, keyspace, options)
        .await
        .context("cannot reach the CQL cluster")
}

fn unsupported(store: &StoreConfig) -> CliError {
    let (name, feature) = match store {
        StoreConfig::Dynamodb { .. } => ("DynamoDB", "dynamodb"),
        StoreConfig::Cql { .. } => ("CQL", "cql"),
        _ => ("this", "?"),
    };
    CliError::new(format!(
        "the {name} relay store is not built into this concord (build it with \
         `--features {feature}`)"
    ))
}

async fn run_with<R: RelayStore>(config: RelayConfig, store: R) -> CliResult<ExitCode> {
    let relay = Relay::start(config, store).await.context("cannot start the relay")?;
    let node = relay.node();
    say!("relay {} on the {} store", node.peer_id(), relay.backend());
    // The key an admin adds to a room of members only for this relay to
    // store it.
    say!("relay author {}", node.author());
    for addr in node.addresses().await.context("cannot read the relay's addresses")? {
        say!("listening on {addr}");
    }
    if let Some(addr) = relay.metrics_addr() {
        say!("metrics on http://{addr}/metrics, health on http://{addr}/health");
    }
    // The handlers are in place before "relay ready": a supervisor (or a
    // test) that stops the relay as soon as it says so gets a clean stop,
    // not the default action of SIGTERM.
    let stop = StopSignals::watch()?;
    say!("relay ready");
    stop.wait().await?;
    say!("relay stopping");
    relay.shutdown().await.context("cannot shut the relay down cleanly")?;
    say!("relay stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere), watched from the moment this is
/// made: a signal that arrives before [`StopSignals::wait`] is polled is
/// kept, not lost.
#[cfg(unix)]
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    fn watch() -> CliResult<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?,
        })
    }

    async fn wait(mut self) -> CliResult<()> {
        tokio::select! {
            _ = self.interrupt.recv() => Ok(()),
            _ = self.terminate.recv() => Ok(()),
        }
    }
}

#[cfg(not(unix))]
struct StopSignals;

#[cfg(not(unix))]
impl StopSignals {
    fn watch() -> CliResult<Self> {
        Ok(Self)
    }

    async fn wait(self) -> CliResult<()> {
        tokio::signal::ctrl_c().await.context("cannot watch for Ctrl-C")
    }
}

/// Creates the relay store's tables.
async fn init_store(config: RelayConfig) -> CliResult<ExitCode> {
    config.validate().context("relay config")?;
    match config.store.clone() {
        StoreConfig::Sled { .. } => {
            let dir = config.sled_store_dir();
            SledRelayStore::open(&dir)
                .context(format_args!("cannot create the relay store in {}", dir.display()))?;
            say!("sled relay store ready in {}", dir.display());
        }
        #[cfg(feature = "dynamodb")]
        StoreConfig::Dynamodb { endpoint, region, table_prefix } => {
            let store = dynamo_store(endpoint, &region, &table_prefix).await?;
            store.create_tables().await.context("cannot create the tables")?;
            say!("DynamoDB tables {table_prefix}{{envelopes,buckets,blobs,rooms}} ready");
        }
        #[cfg(feature = "cql")]
        StoreConfig::Cql { nodes, keyspace, replication_factor, datacenter, user } => {
            let store = cql_store(&nodes, &keyspace, datacenter, user).await?;
            store.create_schema(replication_factor).await.context("cannot create the schema")?;
            say!("CQL keyspace {keyspace} and its tables ready");
        }
        #[allow(unreachable_patterns)]
        other => return Err(unsupported(&other)),
    }
    Ok(ExitCode::SUCCESS)
}
