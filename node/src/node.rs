//! The wiring of a running node: opens the data directory, brings back its components, starts
//! the mesh, the HTTP/1.1 and HTTP/3 servers, the peer protocols and the background tasks
//! around one shared context (`context::Node`), and on SIGTERM or Ctrl-C takes a final
//! checkpoint of every component and exits 0 (non-zero if one could not be written).

use crate::components::Components;
use crate::config::NodeConfig;
use crate::context::Node;
use crate::datadir::{DataDir, NodeInfo};
use crate::mesh::{Mesh, MeshConfig};
use crate::metrics::Metrics;
use crate::runtime::{EngineKind, Runtime, RuntimeLimits};
use crate::{http, identity, short_id, tls};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tracing::Instrument;

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

/// Labels every node carries, set by the node itself: what it is, for `--require` and
/// federation predicates to ask for (`arch=aarch64`, `engine=pulley`, `compiles=yes`).
pub fn built_in_labels(engine: EngineKind, compiles: bool) -> [(&'static str, &'static str); 3] {
    [
        ("arch", std::env::consts::ARCH),
        ("engine", engine.name()),
        ("compiles", if compiles { "yes" } else { "no" }),
    ]
}

pub async fn run(mut config: NodeConfig) -> Result<()> {
    for (k, v) in built_in_labels(config.engine, config.compile) {
        anyhow::ensure!(
            !config.labels.contains_key(k),
            "the label {k} is the node's own (arch, engine, compiles), not one to set"
        );
        config.labels.insert(k.into(), v.into());
    }
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
    let runtime = Arc::new(
        Runtime::new(
            RuntimeLimits {
                memory_cap: config.limits.memory_cap.as_u64() as usize,
                call_timeout: config.limits.call_timeout,
                queue_depth: config.limits.queue_depth,
                max_body: config.limits.max_body.as_u64() as usize,
                max_calls: config.limits.max_calls,
                max_depth: config.limits.max_call_depth,
            },
            Some(dir.modules()),
            config.engine,
        )?
        .compiling(config.compile),
    );
    metrics.attach(crate::metrics::build_info(config.engine));
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
            // A node hears its neighbours and finds the rest by name, so what it sends and
            // holds stays flat as the swarm grows.
            scope: continuum_gossip::Scope::Neighbours,
            names: true,
            // Federations recruit beyond the neighbourhood, through label providers.
            recruit: true,
            // A neighbour's connection closes only after seconds of silence (see the mesh
            // driver's QUIC_IDLE): by then a reconnect is not worth waiting long for.
            suspect_ms: 1_000,
            ..continuum_gossip::Config::with_ttl(config.advert_expiry.as_millis() as u64)
        },
        max_neighbours: config.max_neighbours.max(1),
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
        direct_tls: tls::rustls_server(&cert, crate::migration::DIRECT_ALPN)?,
        cert_sha256: cert.sha256,
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
    if let Some(p) = crate::priority::realtime_priority() {
        tracing::info!("requests served at real-time priority {p} (SCHED_RR)");
    }

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
