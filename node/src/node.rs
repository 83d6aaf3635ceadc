//! A running node: opens the data directory, brings back its components, serves HTTP/1.1 and
//! HTTP/3 on one address, checkpoints periodically, and on SIGTERM or Ctrl-C takes a final
//! checkpoint of every component and exits 0.

use crate::components::Components;
use crate::config::NodeConfig;
use crate::datadir::{DataDir, NodeInfo};
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
    pub config: NodeConfig,
    pub token: String,
    pub components: Components,
    pub metrics: Arc<Metrics>,
    pub info: NodeInfo,
    pub h3_port: u16,
    pub started: Instant,
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
    pub peers: Vec<serde_json::Value>,
    pub federations: Vec<serde_json::Value>,
}

impl Node {
    pub fn status(&self) -> Status {
        let components = self.components.list();
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
            peers: Vec::new(),
            federations: Vec::new(),
        }
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
    let dir = DataDir::open(&config.data_dir)?;
    dir.remove_node_json();
    let key = identity::load_or_create(&dir)?;
    let peer_id = key.public().to_peer_id().to_string();
    let span = tracing::info_span!("node", peer = %short_id(&peer_id));
    run_node(config, dir, peer_id).instrument(span).await
}

async fn run_node(config: NodeConfig, dir: DataDir, peer_id: String) -> Result<()> {
    let token = dir.load_or_create_token()?;
    let cert = tls::load_or_create(&dir)?;
    let metrics = Arc::new(Metrics::default());
    let runtime = Arc::new(Runtime::new(
        RuntimeLimits {
            memory_cap: config.limits.memory_cap.as_u64() as usize,
            call_timeout: config.limits.call_timeout,
            queue_depth: config.limits.queue_depth,
        },
        Some(dir.modules()),
    )?);
    let components = Components::new(runtime, dir.clone(), metrics.clone(), peer_id.clone());
    let restored = components.load_all().await;
    if restored > 0 {
        tracing::info!(
            "brought back {restored} component(s) from {}",
            dir.root().display()
        );
    }

    let (tcp, udp) = bind(config.http, tls::server_config(&cert)?).await?;
    let addr = tcp.local_addr()?;
    let info = NodeInfo {
        peer_id: peer_id.clone(),
        http: format!("http://{addr}"),
        h3: format!("https://{addr}"),
        p2p: Vec::new(),
        cert_sha256: hex::encode(cert.sha256),
    };
    if config.mdns {
        tracing::info!("mDNS discovery arrives with the mesh; this build runs a single node");
    }
    let node = Arc::new(Node {
        peer_id,
        token,
        components,
        metrics,
        info: info.clone(),
        h3_port: addr.port(),
        started: Instant::now(),
        config,
    });

    let servers = [
        tokio::spawn(http::h1::serve(tcp, node.clone()).in_current_span()),
        tokio::spawn(http::h3::serve(udp.clone(), node.clone()).in_current_span()),
        tokio::spawn(periodic_checkpoints(node.clone()).in_current_span()),
    ];
    dir.write_node_json(&info)?;
    tracing::info!(http = %info.http, "node ready: HTTP/1.1 on TCP and HTTP/3 on UDP {addr}");

    shutdown_signal().await?;
    tracing::info!("stopping: final checkpoint of every component");
    for s in &servers {
        s.abort();
    }
    udp.close(quinn::VarInt::from_u32(0x100), b"node stopping");
    dir.remove_node_json();
    node.components.stop_all().await;
    tracing::info!("stopped");
    Ok(())
}

async fn periodic_checkpoints(node: Arc<Node>) {
    let every = node.config.checkpoint_every;
    if every.is_zero() {
        return;
    }
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    loop {
        timer.tick().await;
        node.components.checkpoint_all("periodic", true).await;
    }
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
