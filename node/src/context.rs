//! What every request handler, peer protocol and background task of a node can reach: the
//! node's parts (mesh, components, calls, migrations, placement) and the answers built from
//! them (status, admission). `node.rs` wires them up and starts the servers; everything else
//! depends on this, never on the wiring.

use crate::components::Components;
use crate::config::NodeConfig;
use crate::datadir::NodeInfo;
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// What every request handler can reach.
pub struct Node {
    pub peer_id: String,
    pub mesh: Mesh,
    pub config: NodeConfig,
    pub token: String,
    pub components: Components,
    /// Calls between components: routing them, and the replies parked for migrated requests.
    pub calls: Arc<crate::calls::Calls>,
    pub migrations: crate::migration::Migrations,
    /// The placement policies' state, and their latest decisions (for `status`).
    pub placer: std::sync::Mutex<continuum_gossip::Placer>,
    pub decisions: std::sync::Mutex<std::collections::VecDeque<continuum_gossip::Decision>>,
    pub load: std::sync::Mutex<crate::load::LoadMeter>,
    pub metrics: Arc<Metrics>,
    pub info: NodeInfo,
    pub h3_port: u16,
    /// TLS for migrations' direct connections (the node's certificate), and its SHA-256.
    pub direct_tls: Arc<rustls::ServerConfig>,
    pub cert_sha256: [u8; 32],
    pub started: Instant,
    /// Fingerprint of the swarm key, if the swarm is closed.
    pub swarm_key: Option<String>,
}

/// `continuum status --json`.
#[derive(Serialize, serde::Deserialize, Debug, Clone)]
pub struct Status {
    pub peer_id: String,
    pub version: String,
    pub http: String,
    pub h3: String,
    pub p2p: Vec<String>,
    pub uptime_s: u64,
    pub components: usize,
    pub memory_bytes: u64,
    pub arch: String,
    /// What runs the node's Wasm (`cranelift` or `pulley`).
    #[serde(default)]
    pub engine: String,
    /// False on a node that runs only modules precompiled for it (`--no-compile`).
    #[serde(default = "yes")]
    pub compiles: bool,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Whether the swarm is closed by a key (its fingerprint), or open.
    pub swarm_key: Option<String>,
    pub peers: Vec<crate::mesh::PeerStatus>,
    pub federations: Vec<crate::mesh::FederationStatus>,
    /// The latest placement decisions taken here, with their reasons.
    #[serde(default)]
    pub decisions: Vec<continuum_gossip::Decision>,
}

impl Node {
    pub fn status(&self) -> Status {
        let components = self.components.list();
        let mesh = self.mesh.snapshot();
        Status {
            peer_id: self.peer_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            http: self.info.http.clone(),
            h3: self.info.h3.clone(),
            p2p: self.info.p2p.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            components: components.len(),
            memory_bytes: components.iter().map(|c| c.memory_bytes).sum(),
            arch: std::env::consts::ARCH.to_string(),
            engine: self.config.engine.name().to_string(),
            compiles: self.config.compile,
            labels: self.config.labels.clone(),
            swarm_key: self.swarm_key.clone(),
            peers: mesh.peers.clone(),
            federations: mesh.federations.clone(),
            decisions: self.decisions.lock().unwrap().iter().cloned().collect(),
        }
    }

    /// Every component the node knows of: its own, and those its peers announce.
    pub fn all_components(&self) -> Vec<crate::components::ComponentInfo> {
        let mut list = self.components.list();
        for (name, loc) in self.mesh.snapshot().directory.iter() {
            if loc.host.to_string() != self.peer_id {
                list.push(crate::components::ComponentInfo {
                    name: name.clone(),
                    host: loc.host.to_string(),
                    epoch: loc.epoch,
                    digest: continuum_migrate::digest_hex(&loc.digest),
                    version: String::new(),
                    module_bytes: 0,
                    memory_bytes: 0,
                    calls: 0,
                    failed_calls: 0,
                    ticks: 0,
                    cpu: 0.0,
                    busy_ns: 0,
                    in_flight: 0,
                    calls_out: 0,
                    calls_out_in_flight: 0,
                    federation: None,
                    require: Default::default(),
                    policy: Default::default(),
                });
            }
        }
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Whether this node may host a component bound by `b`, placed here by peer `from` (a
    /// remote deployment or a migration) or by its own operator (`None`).
    pub fn admit(
        &self,
        b: &crate::components::Bounds,
        from: Option<&continuum_gossip::PeerId>,
    ) -> Result<(), String> {
        for (k, v) in &b.require {
            if self.config.labels.get(k) != Some(v) {
                return Err(format!("this node lacks the label {k}={v}"));
            }
        }
        if let Some(f) = &b.federation {
            let mesh = self.mesh.snapshot();
            let Some(fed) = mesh.federations.iter().find(|x| &x.name == f) else {
                return Err(format!("this node knows no federation {f}"));
            };
            if !fed.member {
                return Err(format!("this node is not a member of federation {f}"));
            }
            if let Some(p) = from
                && !fed.members.contains(&p.to_string())
            {
                return Err(format!(
                    "{p} is not a member of federation {f}, so it may not place its components here"
                ));
            }
        }
        Ok(())
    }

    /// A name is one component in the whole mesh: refuse one that another node hosts.
    pub fn name_free(&self, name: &str) -> Result<(), String> {
        match self.mesh.locate(name) {
            Some(l) if l.host != self.mesh.me() => Err(format!(
                "component {name} runs on {} already; names are unique in the mesh",
                l.host
            )),
            _ => Ok(()),
        }
    }

    /// Tell the mesh which components this node hosts (after any change).
    pub fn announce_components(&self) {
        self.mesh.set_components(self.components.hosted());
    }
}

fn yes() -> bool {
    true
}
