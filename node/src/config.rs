//! Node configuration: a TOML file (`--config`) with defaults for everything, overridden by
//! command-line flags. `node/continuum.example.toml` shows every key.

use anyhow::{Context, Result};
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the identity, token, modules and snapshots live.
    pub data_dir: PathBuf,
    /// TCP (HTTP/1.1) and UDP (HTTP/3) listen address. Port 0 picks a free port.
    pub http: SocketAddr,
    /// libp2p listen addresses. Empty: QUIC and TCP on the `http` host, ports picked by the
    /// kernel (so a node on 127.0.0.1 stays on loopback).
    pub p2p: Vec<String>,
    /// Peers to bootstrap from (multiaddrs, ideally ending in `/p2p/PEER_ID`).
    pub join: Vec<String>,
    /// Labels this node advertises, e.g. `zone = "a"`.
    pub labels: BTreeMap<String, String>,
    /// File holding the swarm key (`continuum keygen`); without one the swarm is open.
    pub swarm_key: Option<PathBuf>,
    /// Discover neighbours with mDNS on the local network.
    pub mdns: bool,
    /// Peers are dropped from the view this long after their last advert or heartbeat.
    #[serde(with = "humantime_serde")]
    pub advert_expiry: Duration,
    /// Neighbours at most: the peers a node hears and tells. Past this a peer that connects is
    /// not taken on as one (its connection serves lookups and requests only); components
    /// beyond the neighbours are found by name through the distributed hash table.
    pub max_neighbours: usize,
    /// The longest federation lease this node grants, to its own federations and to other
    /// owners' (a longer claim is cut to it): a federation whose owner went silent is gone
    /// from here within it. At most 24 h.
    #[serde(with = "humantime_serde")]
    pub max_lease: Duration,
    /// How long a request for a component nobody is known to host waits for news of one
    /// before it gets 404.
    #[serde(with = "humantime_serde")]
    pub route_wait: Duration,
    /// How often components whose state changed are checkpointed to disk: the most a
    /// `kill -9` can lose.
    #[serde(with = "humantime_serde")]
    pub checkpoint_every: Duration,
    /// Longest one step of a migration may wait for the other side; a target that is ready
    /// but hears no commit for this long asks the source how it ended.
    #[serde(with = "humantime_serde")]
    pub migration_timeout: Duration,
    /// Cores this node's components may use. With a budget the node's load is the share of it
    /// its components used lately (it may share the machine with other work or other nodes);
    /// without one, the host's load average per core.
    pub cpu_budget: Option<f32>,
    /// Bytes of peers' messages (deployments, migration parts, large forwarded requests) the
    /// node holds at once, over all peers; past it a peer's message is refused before more is
    /// read. At least the largest message (256 MiB) to take every kind.
    pub peer_budget: ByteSize,
    /// HTTP/1.1 connections held at once; at the cap the one idle longest is closed for a new
    /// one. Default: three quarters of the file-descriptor limit, less 64.
    pub max_connections: Option<usize>,
    /// What runs the Wasm: `cranelift` (native code; the default where Cranelift has a
    /// backend for the host) or `pulley` (Wasmtime's interpreter: any host, about 10x slower).
    pub engine: crate::runtime::EngineKind,
    /// False on a node that should not compile (a small board): it runs only modules
    /// precompiled for it with `continuum compile`, put in DATA_DIR/modules, and refuses others.
    pub compile: bool,
    pub limits: Limits,
}

/// What one component may use; the node and its other components go on when one hits a limit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest linear memory of one component.
    pub memory_cap: ByteSize,
    /// Longest a single request or tick may take, waits for the calls it makes included; a
    /// call between components gets its caller's remaining time, at most this.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Largest request body for a component (413 above).
    pub max_body: ByteSize,
    /// Largest module or snapshot upload to the control API.
    pub max_upload: ByteSize,
    /// Requests waiting for, in flight at or held (by a freeze) at one component before the
    /// node answers 503.
    pub queue_depth: usize,
    /// Calls one component may have in flight to other components; more are refused (503).
    pub max_calls: usize,
    /// Longest chain of calls between components; a call that would go deeper gets 508.
    pub max_call_depth: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: default_data_dir(),
            http: "127.0.0.1:7070".parse().expect("valid address"),
            p2p: Vec::new(),
            join: Vec::new(),
            labels: BTreeMap::new(),
            swarm_key: None,
            mdns: true,
            advert_expiry: Duration::from_secs(15),
            max_neighbours: 8,
            max_lease: Duration::from_millis(continuum_gossip::MAX_LEASE_MS),
            route_wait: Duration::from_secs(1),
            checkpoint_every: Duration::from_secs(10),
            migration_timeout: Duration::from_secs(10),
            cpu_budget: None,
            peer_budget: ByteSize::gib(1),
            max_connections: None,
            engine: crate::runtime::EngineKind::default(),
            compile: true,
            limits: Limits::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_cap: ByteSize::mib(256),
            call_timeout: Duration::from_secs(1),
            max_body: ByteSize::mib(8),
            max_upload: ByteSize::mib(1024),
            queue_depth: 1024,
            max_calls: 256,
            max_call_depth: 16,
        }
    }
}

/// `$CONTINUUM_DATA_DIR`, else `~/.continuum`, else `./.continuum`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CONTINUUM_DATA_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".continuum"))
        .unwrap_or_else(|| PathBuf::from(".continuum"))
}

impl NodeConfig {
    /// The configuration in `path`, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<NodeConfig> {
        let Some(path) = path else {
            return Ok(NodeConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let mut config: NodeConfig =
            toml::from_str(&text).with_context(|| format!("in config {}", path.display()))?;
        if let (Ok(rest), Some(home)) =
            (config.data_dir.strip_prefix("~"), std::env::var_os("HOME"))
        {
            config.data_dir = PathBuf::from(home).join(rest);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../continuum.example.toml");
        let mut parsed: NodeConfig = toml::from_str(text).unwrap();
        parsed.data_dir = default_data_dir();
        assert_eq!(parsed, NodeConfig::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<NodeConfig>("htp = \"1.2.3.4:5\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
