//! A relay's settings: [`RelayConfig`], read from a TOML file (command-line
//! flags override some of it), the [`StoreConfig`] it persists to, and the
//! checks a config passes before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;
use serde::Deserialize;

use super::RelayError;
use crate::config::NodeConfig;
use crate::ticket::RoomTicket;

/// Which relay store a relay persists to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum StoreConfig {
    /// The embedded default: a sled database in the data directory.
    Sled {
        /// Where; `<data_dir>/store` if unset.
        path: Option<PathBuf>,
    },
    /// The DynamoDB API: AWS DynamoDB, ScyllaDB Alternator, DynamoDB Local.
    /// Needs the `dynamodb` feature.
    Dynamodb {
        /// Endpoint URL; AWS's regional endpoint if unset.
        endpoint: Option<String>,
        /// Region.
        region: String,
        /// Prefix of the four table names.
        table_prefix: String,
    },
    /// CQL: ScyllaDB or Apache Cassandra. Needs the `cql` feature.
    Cql {
        /// Contact points, `host:port`.
        nodes: Vec<String>,
        /// Keyspace.
        keyspace: String,
        /// Replication factor `init-store` creates the keyspace with.
        #[serde(default = "default_replication")]
        replication_factor: u32,
        /// The relay's datacenter: requests go to its nodes at
        /// `LOCAL_QUORUM`; without one, `QUORUM` over the cluster.
        #[serde(default)]
        datacenter: Option<String>,
        /// User for password authentication; the password comes from the
        /// environment variable `CONCORD_CQL_PASSWORD`, never the file.
        #[serde(default)]
        user: Option<String>,
    },
}

fn default_replication() -> u32 {
    3
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Sled { path: None }
    }
}

/// A relay's settings, read from a TOML file; command-line flags override
/// some of them. Every field but `data_dir` has a default.
///
/// ```toml
/// data_dir = "/var/lib/concord-relay"
/// listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
/// metrics = "127.0.0.1:9464"
///
/// [store]
/// backend = "sled"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Where the relay keeps its replica (and the sled relay store).
    pub data_dir: PathBuf,
    /// A file holding the relay's device key (its seed, 64 hex digits),
    /// kept apart from `data_dir` so that a relay rebuilt on a new disk
    /// keeps its identity: its peer id, its addresses and the author key
    /// rooms list. Written on first start if absent (mode 0600), with the
    /// key `data_dir` holds or a new one; a `data_dir` holding another key
    /// is refused. Unset: the key lives in `data_dir` only.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Multiaddrs to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Address of the HTTP endpoint serving `/metrics` and `/health`; off
    /// if unset.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Take up any room a device presents (governance will restrict this).
    #[serde(default = "yes")]
    pub serve_rooms: bool,
    /// Tickets of rooms to serve from the start.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Period of catch-up with every connected device, in seconds.
    #[serde(default = "default_sync_secs")]
    pub sync_interval_secs: u64,
    /// Established connections in all.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Bad sync requests a peer may send before it is banned.
    #[serde(default = "default_strikes")]
    pub max_sync_strikes: u32,
    /// How long a misbehaving peer stays banned, in seconds.
    #[serde(default = "default_ban_secs")]
    pub ban_secs: u64,
    /// The relay store.
    #[serde(default)]
    pub store: StoreConfig,
}

fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/tcp/4001".into(), "/ip4/0.0.0.0/udp/4001/quic-v1".into()]
}
fn yes() -> bool {
    true
}
fn default_sync_secs() -> u64 {
    30
}
fn default_max_connections() -> u32 {
    1024
}
fn default_strikes() -> u32 {
    3
}
fn default_ban_secs() -> u64 {
    600
}

impl RelayConfig {
    /// A config with every default, keeping its data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            key_file: None,
            listen: default_listen(),
            metrics: None,
            serve_rooms: true,
            rooms: Vec::new(),
            sync_interval_secs: default_sync_secs(),
            max_connections: default_max_connections(),
            max_sync_strikes: default_strikes(),
            ban_secs: default_ban_secs(),
            store: StoreConfig::default(),
        }
    }

    /// Parses and checks a TOML config.
    pub fn from_toml(text: &str) -> Result<Self, RelayError> {
        let config: Self = toml::from_str(text).map_err(|e| RelayError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), RelayError> {
        let bad = |what: String| Err(RelayError::Config(what));
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir is empty".into());
        }
        if self.listen.is_empty() {
            return bad("listen names no address".into());
        }
        for addr in &self.listen {
            if addr.parse::<Multiaddr>().is_err() {
                return bad(format!("listen address {addr:?} is not a multiaddr"));
            }
        }
        for ticket in &self.rooms {
            if let Err(e) = ticket.parse::<RoomTicket>() {
                return bad(format!("room ticket {ticket:?}: {e}"));
            }
        }
        match &self.store {
            StoreConfig::Dynamodb { region, table_prefix, .. } => {
                if region.is_empty() || table_prefix.is_empty() {
                    return bad("store: region and table_prefix must be set".into());
                }
            }
            StoreConfig::Cql { nodes, keyspace, replication_factor, .. } => {
                if nodes.is_empty() || keyspace.is_empty() || *replication_factor == 0 {
                    return bad("store: nodes, keyspace and replication_factor must be set".into());
                }
            }
            StoreConfig::Sled { .. } => {}
        }
        self.node_config().validate()?;
        Ok(())
    }

    /// The node settings this config implies.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig::default()
            .mdns(false)
            .relay_server(true)
            .serve_rooms_on_request(self.serve_rooms)
            .sync_interval(Duration::from_secs(self.sync_interval_secs))
            .connection_limits(self.max_connections, 8)
            .sync_strikes(self.max_sync_strikes, Duration::from_secs(self.ban_secs))
    }

    /// Where the replica lives.
    pub fn replica_dir(&self) -> PathBuf {
        self.data_dir.join("replica")
    }

    /// Where the sled relay store lives (when it is the backend).
    pub fn sled_store_dir(&self) -> PathBuf {
        match &self.store {
            StoreConfig::Sled { path: Some(path) } => path.clone(),
            _ => self.data_dir.join("store"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_config_of_data_dir_alone_takes_every_default() {
        let config = RelayConfig::from_toml("data_dir = \"/var/lib/relay\"").unwrap();
        assert_eq!(config, RelayConfig::new("/var/lib/relay"));
        assert_eq!(config.store, StoreConfig::Sled { path: None });
        assert_eq!(config.sled_store_dir(), PathBuf::from("/var/lib/relay/store"));
        assert_eq!(config.replica_dir(), PathBuf::from("/var/lib/relay/replica"));
    }

    #[test]
    fn test_each_store_backend_parses_with_its_settings() {
        let dynamo = RelayConfig::from_toml(
            "data_dir = \"d\"\n[store]\nbackend = \"dynamodb\"\nregion = \"eu-west-1\"\n\
             table_prefix = \"relay_\"\nendpoint = \"http://127.0.0.1:8000\"",
        )
        .unwrap();
        assert_eq!(
            dynamo.store,
            StoreConfig::Dynamodb {
                endpoint: Some("http://127.0.0.1:8000".into()),
                region: "eu-west-1".into(),
                table_prefix: "relay_".into(),
            }
        );
        let cql = RelayConfig::from_toml(
            "data_dir = \"d\"\n[store]\nbackend = \"cql\"\nnodes = [\"10.0.0.1:9042\"]\n\
             keyspace = \"concord\"",
        )
        .unwrap();
        assert_eq!(
            cql.store,
            StoreConfig::Cql {
                nodes: vec!["10.0.0.1:9042".into()],
                keyspace: "concord".into(),
                replication_factor: 3,
                datacenter: None,
                user: None,
            }
        );
    }

    #[test]
    fn test_bad_settings_are_config_errors_before_anything_starts() {
        for bad in [
            "listen = []",
            "data_dir = \"\"",
            "data_dir = \"d\"\nlisten = []",
            "data_dir = \"d\"\nlisten = [\"not a multiaddr\"]",
            "data_dir = \"d\"\nrooms = [\"not a ticket\"]",
            "data_dir = \"d\"\nunknown_setting = 1",
            "data_dir = \"d\"\n[store]\nbackend = \"dynamodb\"\nregion = \"\"\ntable_prefix = \"t\"",
            "data_dir = \"d\"\n[store]\nbackend = \"cql\"\nnodes = []\nkeyspace = \"k\"",
            "data_dir = \"d\"\n[store]\nbackend = \"cql\"\nnodes = [\"n\"]\nkeyspace = \"k\"\n\
             replication_factor = 0",
            "data_dir = \"d\"\n[store]\nbackend = \"postgres\"",
        ] {
            let err = RelayConfig::from_toml(bad).unwrap_err();
            assert!(matches!(err, RelayError::Config(_)), "{bad:?}: {err:?}");
        }
    }
}
