//! A running node: opens the data directory, brings back its components, serves HTTP/1.1 and
//! HTTP/3 on one address, checkpoints periodically, and on SIGTERM or Ctrl-C takes a final
//! checkpoint of every component and exits 0.

use crate::components::Components;
use crate::config::NodeConfig;
use crate::datadir::{DataDir, NodeInfo};
use crate::mesh::{Mesh, MeshConfig};
use crate::metrics::Metrics;
use crate::runtime::{Runtime, RuntimeLimits};
use crate::{http, identity, short_id, tls};
use anyhow::{Context, Result};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tracing::Instrument;

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

/// Bind TCP and UDP on the same port. With port 0 the kernel picks the TCP port and we try to
/// take the same UDP port (retrying with a fresh TCP port if it is taken).
async fn bind(
    addr: SocketAddr,
    server: quinn::ServerConfig,
) -> Result<(TcpListener, quinn::Endpoint)> {
    for _ in 0..20 {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding TCP {addr}"))?;
        let local = tcp.local_addr()?;
        match quinn::Endpoint::server(server.clone(), local) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if addr.port() == 0 => {
                tracing::debug!("UDP port {} taken ({e}); retrying", local.port())
            }
            Err(e) => return Err(e).with_context(|| format!("binding UDP {local} for HTTP/3")),
        }
    }
    anyhow::bail!("could not find a port free on both TCP and UDP")
}

pub async fn run(config: NodeConfig) -> Result<()> {
    if let Some(b) = config.cpu_budget {
        anyhow::ensure!(
            b.is_finite() && b > 0.0,
            "cpu_budget must be a positive number of cores (e.g. 0.5), not {b}"
        );
    }
    let lease = continuum_gossip::MIN_LEASE_MS..=continuum_gossip::MAX_LEASE_MS;
    anyhow::ensure!(
        lease.contains(&(config.max_lease.as_millis().min(u64::MAX as u128) as u64)),
        "max_lease must be {} ms to 24h, not {}",
        continuum_gossip::MIN_LEASE_MS,
        humantime::format_duration(config.max_lease)
    );
    crate::bulk::init();
    let dir = DataDir::open(&config.data_dir)?;
    dir.remove_node_json();
    let key = identity::load_or_create(&dir)?;
    let peer_id = key.public().to_peer_id().to_string();
    let span = tracing::info_span!("node", peer = %short_id(&peer_id));
    run_node(config, dir, key).instrument(span).await
}

/// The listen addresses to use: the configured ones, or QUIC and TCP on the HTTP host.
fn p2p_listen(config: &NodeConfig) -> Result<Vec<libp2p::Multiaddr>> {
    if !config.p2p.is_empty() {
        return config
            .p2p
            .iter()
            .map(|a| {
                a.parse()
                    .with_context(|| format!("invalid --p2p multiaddr {a:?}"))
            })
            .collect();
    }
    let ip = match config.http.ip() {
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}"),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}"),
    };
    Ok(vec![
        format!("{ip}/udp/0/quic-v1").parse()?,
        format!("{ip}/tcp/0").parse()?,
    ])
}

fn swarm_key(config: &NodeConfig) -> Result<Option<continuum_gossip::SwarmKey>> {
    let Some(path) = &config.swarm_key else {
        tracing::warn!(
            "no --swarm-key: the swarm is open, any node that finds this one can join it and route requests through it, but none may deploy to it, migrate to it or own a federation (make a key with `continuum keygen`)"
        );
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading swarm key {}", path.display()))?;
    let key = continuum_gossip::SwarmKey::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tracing::info!(key = %key.fingerprint(), "swarm closed by key");
    Ok(Some(key))
}

async fn run_node(config: NodeConfig, dir: DataDir, key: libp2p::identity::Keypair) -> Result<()> {
    let peer_id = key.public().to_peer_id().to_string();
    let token = dir.load_or_create_token()?;
    let cert = tls::load_or_create(&dir)?;
    let metrics = Arc::new(Metrics::default());
    let runtime = Arc::new(Runtime::new(
        RuntimeLimits {
            memory_cap: config.limits.memory_cap.as_u64() as usize,
            call_timeout: config.limits.call_timeout,
            queue_depth: config.limits.queue_depth,
            max_body: config.limits.max_body.as_u64() as usize,
            max_calls: config.limits.max_calls,
            max_depth: config.limits.max_call_depth,
        },
        Some(dir.modules()),
    )?);
    let calls = crate::calls::Calls::new(peer_id.parse()?);
    let components = Components::new(
        runtime,
        dir.clone(),
        metrics.clone(),
        calls.clone(),
        peer_id.clone(),
    );
    let restored = components.load_all().await;
    if restored > 0 {
        tracing::info!(
            "brought back {restored} component(s) from {}",
            dir.root().display()
        );
    }

    let (tcp, udp) = bind(config.http, tls::server_config(&cert)?).await?;
    let addr = tcp.local_addr()?;
    let key_file = swarm_key(&config)?;
    let fingerprint = key_file.as_ref().map(|k| k.fingerprint());
    let mesh_cfg = MeshConfig {
        listen: p2p_listen(&config)?,
        join: config
            .join
            .iter()
            .map(|a| {
                a.parse()
                    .with_context(|| format!("invalid --join multiaddr {a:?}"))
            })
            .collect::<Result<_>>()?,
        mdns: config.mdns,
        gossip: continuum_gossip::Config {
            // In an open swarm nobody can prove it owns a federation.
            federations: key_file.is_some(),
            max_lease_ms: config.max_lease.as_millis() as u64,
            ..continuum_gossip::Config::with_ttl(config.advert_expiry.as_millis() as u64)
        },
        key: key_file,
        // Long enough for a remote deployment to compile its module on a small board; a dead
        // host fails faster than this, when its connection does.
        request_timeout: std::time::Duration::from_secs(60),
        peer_budget: config.peer_budget.as_u64() as usize,
    };
    let (mesh, incoming) = Mesh::start(
        key,
        mesh_cfg,
        config.labels.clone(),
        format!("http://{addr}"),
        metrics.clone(),
    )
    .await?;
    let info = NodeInfo {
        peer_id: peer_id.clone(),
        http: format!("http://{addr}"),
        h3: format!("https://{addr}"),
        p2p: mesh.snapshot().listen.clone(),
        cert_sha256: hex::encode(cert.sha256),
    };
    let node = Arc::new(Node {
        peer_id,
        mesh,
        swarm_key: fingerprint,
        token,
        components,
        calls: calls.clone(),
        migrations: Default::default(),
        placer: std::sync::Mutex::new(continuum_gossip::Placer::new(Default::default())),
        decisions: Default::default(),
        load: std::sync::Mutex::new(crate::load::LoadMeter::new(config.cpu_budget)),
        metrics,
        info: info.clone(),
        h3_port: addr.port(),
        started: Instant::now(),
        config,
    });

    calls.attach(&node);
    node.announce_components();
    let servers = [
        node.mesh
            .runtime()
            .spawn(crate::peer::serve(node.clone(), incoming).in_current_span()),
        tokio::spawn(http::h1::serve(tcp, node.clone()).in_current_span()),
        tokio::spawn(http::h3::serve(udp.clone(), node.clone()).in_current_span()),
    ]
    .into_iter()
    .chain(crate::tasks::spawn_all(&node))
    .collect::<Vec<_>>();
    dir.write_node_json(&info)?;
    tracing::info!(http = %info.http, "node ready: HTTP/1.1 on TCP and HTTP/3 on UDP {addr}");

    shutdown_signal().await?;
    tracing::info!("stopping: final checkpoint of every component");
    for s in &servers {
        s.abort();
    }
    udp.close(quinn::VarInt::from_u32(0x100), b"node stopping");
    dir.remove_node_json();
    let stopped = node.components.stop_all().await;
    // Peers hear of it now rather than when their connections time out: one that comes back
    // under the same identity then finds no stale connection in its way.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), node.mesh.close_all()).await;
    if !stopped {
        anyhow::bail!(
            "stopped, but the last checkpoint of some components was not written (see above): their state since the last written one is lost"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
