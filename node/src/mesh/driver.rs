//! The driver: one task that owns the libp2p swarm and the gossip machine, feeds swarm events
//! and timers into the machine, and carries out what it asks (publish, send), as quinn's
//! tokio layer drives quinn-proto.

use super::behaviour::{Behaviour, BehaviourEvent};
use super::gated::Gated;
use super::rpc::{self, Envelope, Protocol, Reply, Request};
use super::{Command, FederationOp, FederationStatus, MeshConfig, MeshError, PeerStatus, Snapshot};
use crate::metrics::Metrics;
use anyhow::Result;
use continuum_gossip::{
    Event, FederationEvent, Gossip, Output, PeerId, Reject, Resources, SwarmKey,
};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, connection_limits, identify, kad, mdns, noise, ping, tcp,
    yamux,
};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Peers a node connects to on its own once it hears of them.
const DIRECT_PEERS: usize = 8;

/// A request from another node that the node (not the driver) must open (`Mesh::open`) and
/// answer (`Mesh::respond`): the driver never decodes what it does not handle itself, so a
/// migration's rounds of pages do not hold up the swarm's event loop.
pub struct Inbound {
    pub from: PeerId,
    /// The protocol it came on: the request must be of its kind.
    pub protocol: Protocol,
    pub envelope: Envelope,
    pub channel: ResponseChannel<Envelope>,
}

/// Longest a sync may take: a small message, answered by the driver at once.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a QUIC connection may go without a packet before it is taken for lost.
const QUIC_IDLE: Duration = Duration::from_secs(5);

/// Connections to one peer at once: QUIC and TCP may both be up for a while, and two peers
/// dialling each other at once make two.
const MAX_CONNECTIONS_PER_PEER: u32 = 3;

pub fn build_swarm(
    key: libp2p::identity::Keypair,
    cfg: &MeshConfig,
    registry: &mut prometheus_client::registry::Registry,
    metrics: Arc<Metrics>,
) -> Result<Swarm<Behaviour>> {
    let me = key.public().to_peer_id();
    let mdns = cfg.mdns;
    let request_timeout = cfg.request_timeout;
    let peer_budget = cfg.peer_budget;
    let admission = cfg
        .key
        .is_some()
        .then(|| super::gated::Admission::new(metrics.clone()));
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic_config(|mut c| {
            // A peer killed without a goodbye is known gone when its connection times out: 5 s
            // of silence (libp2p's default is 10), kept from idling by a packet every 2 s. (The
            // timer starts again once at the first packet sent after the last one heard, so a
            // dead peer's connection closes 5-7 s after its last packet.)
            c.max_idle_timeout = QUIC_IDLE.as_millis() as u32;
            c.keep_alive_interval = QUIC_IDLE * 2 / 5;
            c
        })
        .with_bandwidth_metrics(registry)
        .with_behaviour(
            |key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let mut kad = kad::Behaviour::with_config(me, name_store(me), kad_config());
                kad.set_mode(Some(kad::Mode::Server));
                // One budget for what every protocol reads from peers; a size limit, a
                // timeout and a stream cap per protocol.
                let budget = super::codec::Budget::new(peer_budget, metrics.peer_bytes.clone());
                let rpc = |p: Protocol| {
                    let codec =
                        super::codec::Codec::new(budget.clone(), metrics.clone(), p.max_message());
                    let timeout = match p {
                        Protocol::Sync => SYNC_TIMEOUT.min(request_timeout),
                        _ => request_timeout,
                    };
                    request_response::Behaviour::with_codec(
                        codec,
                        [(StreamProtocol::new(p.name()), ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(timeout)
                            .with_max_concurrent_streams(p.max_streams()),
                    )
                };
                Ok(Behaviour {
                    limits: connection_limits::Behaviour::new(
                        connection_limits::ConnectionLimits::default()
                            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
                    ),
                    identify: Gated::new(
                        identify::Behaviour::new(identify::Config::new(
                            "/continuum/1".into(),
                            key.public(),
                        )),
                        admission.clone(),
                    ),
                    kad: Gated::new(kad, admission.clone()),
                    mdns: if mdns {
                        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), me)?).into()
                    } else {
                        None.into()
                    },
                    sync: rpc(Protocol::Sync),
                    forward: rpc(Protocol::Forward),
                    deploy: rpc(Protocol::Deploy),
                    migrate: rpc(Protocol::Migrate),
                    control: rpc(Protocol::Control),
                    lanes: libp2p_stream::Behaviour::new(),
                    ping: ping::Behaviour::new(
                        ping::Config::new().with_interval(Duration::from_secs(10)),
                    ),
                })
            },
        )?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

/// The table of names (see `continuum_gossip::naming`): each record checked before it is
/// stored (`store_name`), as small as a record is, and as many as a node may be asked to keep.
fn kad_config() -> kad::Config {
    let mut c = kad::Config::new(StreamProtocol::new("/continuum/kad/1"));
    c.set_record_filtering(kad::StoreInserts::FilterBoth)
        // Hosts file their names again every `name_refile_ms` (5 min): a record whose host
        // stopped is gone after three missed refilings.
        .set_record_ttl(Some(NAME_RECORD_TTL))
        .set_publication_interval(None)
        // Nodes provide their labels again every 5 minutes (the gossip machine's timer).
        .set_provider_publication_interval(None)
        .set_provider_record_ttl(Some(NAME_RECORD_TTL))
        .set_replication_interval(Some(Duration::from_secs(600)))
        .set_replication_factor(std::num::NonZeroUsize::new(8).expect("not zero"))
        .set_query_timeout(Duration::from_secs(10))
        .set_max_packet_size(64 * 1024);
    c
}

const NAME_RECORD_TTL: Duration = Duration::from_secs(15 * 60);

fn name_store(me: PeerId) -> kad::store::MemoryStore {
    kad::store::MemoryStore::with_config(
        me,
        kad::store::MemoryStoreConfig {
            max_records: 4096,
            max_value_bytes: continuum_gossip::MAX_NAME_RECORD_BYTES,
            // Label keys: one per label of this node, and others' (federations recruit under
            // them), each listing its providers closest to the key.
            max_provided_keys: 256,
            max_providers_per_key: continuum_gossip::MAX_PROVIDERS,
        },
    )
}

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1))
}

/// A peer's QUIC addresses if it has any, else the others: TCP is the fallback, and one
/// transport per pair of peers keeps connections (and idle traffic) to one each.
fn prefer_quic(addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    if addrs.iter().any(is_quic) {
        addrs.into_iter().filter(is_quic).collect()
    } else {
        addrs
    }
}

enum Pending {
    /// The reply goes back sealed: the asker opens it.
    Call(oneshot::Sender<Result<Envelope, MeshError>>),
    Sync,
}

pub struct Driver {
    swarm: Swarm<Behaviour>,
    gossip: Gossip,
    key: Option<SwarmKey>,
    cfg: MeshConfig,
    started: Instant,
    local: Resources,
    /// Set by the node when it measures its own load (a CPU budget): advertised instead of
    /// the host's load average.
    load: Option<f32>,
    listen: Vec<Multiaddr>,
    /// Requests sent and not yet answered (ids are per protocol).
    pending: HashMap<(Protocol, OutboundRequestId), (PeerId, Pending)>,
    metrics: Arc<Metrics>,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    inbound: mpsc::Sender<Inbound>,
    ready: Option<oneshot::Sender<()>>,
    /// The gossip state changed since the snapshot was taken.
    dirty: bool,
    /// Smoothed round-trip time to each peer, ms.
    rtts: HashMap<PeerId, f64>,
    /// In a closed swarm: who proved the key (see `auth`), and where proofs go out and come in.
    gate: Option<super::auth::Gate>,
    auth: libp2p_stream::Control,
    verdicts: mpsc::Receiver<(PeerId, bool)>,
    /// Claims of a move the directory passed over, as counted so far.
    unproven_seen: u64,
    /// The node is stopping: answered once no connection is left.
    closing: Option<oneshot::Sender<()>>,
    /// When to dial the `--join` peers again if the node is still alone, and the gap after
    /// that (doubling): a bootstrap peer that was down, or too busy to take us, at our start
    /// must not leave the node alone for good.
    rejoin_at: Instant,
    rejoin_every: Duration,
    /// When the table was last walked for more neighbours, and the gap before the next walk
    /// while the node has fewer than it takes (doubling; back to the first when one leaves).
    last_walk: Option<Instant>,
    walk_every: Duration,
    /// The peers that would not have this node as a neighbour lately, and when; not asked again for `REFUSED_FOR` (unless they ask), or a node with all the
    /// neighbours it takes and its peers would ask each other round and round.
    refused_by: HashMap<PeerId, Instant>,
    /// When a neighbour last made room for a newcomer (see `make_room`).
    last_eviction: Option<Instant>,
    /// Requests for peers this node has no address of (no neighbour, not in its view), held until a Kademlia lookup of the peer ends.
    awaiting_address: HashMap<PeerId, Vec<(Protocol, Envelope, Pending)>>,
}

const REFUSED_FOR: Duration = Duration::from_secs(60);
const ALONE_REFUSED_FOR: Duration = Duration::from_secs(5);

/// A full node makes room for a newcomer at most this often: each eviction costs a neighbour,
/// and syncs from fresh identities claiming to know no one are free to forge.
const EVICT_EVERY: Duration = Duration::from_secs(10);

/// The first and the longest gap between dials of the `--join` peers while a node is alone.
const REJOIN_FIRST: Duration = Duration::from_secs(1);
const REJOIN_MAX: Duration = Duration::from_secs(30);

/// The first and the longest gap between walks of the table while a node has fewer neighbours
/// than it takes.
const WALK_FIRST: Duration = Duration::from_secs(5);
const WALK_MAX: Duration = Duration::from_secs(300);

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut swarm: Swarm<Behaviour>,
        id: libp2p::identity::Keypair,
        cfg: MeshConfig,
        local: Resources,
        metrics: Arc<Metrics>,
        snapshot: Arc<RwLock<Arc<Snapshot>>>,
        inbound: mpsc::Sender<Inbound>,
        ready: oneshot::Sender<()>,
    ) -> Result<Driver> {
        for addr in &cfg.listen {
            swarm.listen_on(addr.clone())?;
        }
        for addr in &cfg.join {
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!("cannot dial {addr}: {e}");
            }
        }
        // A restarted node must not look like a replay of its former self: start its sequence
        // numbers at the wall clock (microseconds).
        let first_seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let mut auth = swarm.behaviour().lanes.new_control();
        let (verdict_tx, verdicts) = mpsc::channel(256);
        if let Some(key) = cfg.key.clone() {
            let incoming = auth
                .accept(super::auth::PROTOCOL)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let me = id.public().to_peer_id();
            tokio::spawn(super::auth::read_proofs(incoming, key, me, verdict_tx));
        }
        let gossip = Gossip::new(
            0,
            id,
            cfg.key.clone(),
            cfg.gossip.clone(),
            local.clone(),
            first_seq,
        );
        let gate = swarm
            .behaviour()
            .identify
            .admission()
            .cloned()
            .map(super::auth::Gate::new);
        Ok(Driver {
            swarm,
            gossip,
            key: cfg.key.clone(),
            cfg,
            started: Instant::now(),
            local,
            load: None,
            listen: Vec::new(),
            pending: HashMap::new(),
            metrics,
            snapshot,
            inbound,
            ready: Some(ready),
            dirty: true,
            rtts: HashMap::new(),
            gate,
            auth,
            verdicts,
            unproven_seen: 0,
            closing: None,
            rejoin_at: Instant::now() + REJOIN_FIRST,
            rejoin_every: REJOIN_FIRST,
            last_walk: None,
            walk_every: WALK_FIRST,
            refused_by: HashMap::new(),
            last_eviction: None,
            awaiting_address: HashMap::new(),
        })
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Dial the `--join` peers again if no peer is connected, each time twice as late; with
    /// peers connected but no neighbour, look for one.
    fn rejoin_if_alone(&mut self) {
        if self.swarm.connected_peers().next().is_none() && self.closing.is_none() {
            tracing::info!(every = ?self.rejoin_every, "no peer connected: dialling the join peers again");
            for addr in self.cfg.join.clone() {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!("cannot dial {addr}: {e}");
                }
            }
            self.rejoin_every = (self.rejoin_every * 2).min(REJOIN_MAX);
        } else {
            self.rejoin_every = REJOIN_FIRST;
            // Connected, but no one's neighbour: ask again (see `refused_lately`).
            if self.gossip.connected().is_empty() {
                self.more_neighbours();
            }
        }
        self.rejoin_at = Instant::now() + self.rejoin_every;
    }

    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut components: watch::Receiver<Vec<continuum_gossip::Hosted>>,
        mut load: watch::Receiver<Option<f32>>,
    ) {
        let mut resample = tokio::time::interval(Duration::from_millis(
            self.cfg.gossip.heartbeat_ms.clamp(1000, 5000),
        ));
        let mut bootstrap = tokio::time::interval(Duration::from_secs(300));
        let mut auth_check = tokio::time::interval(Duration::from_millis(500));
        loop {
            let wake = self.started + Duration::from_millis(self.gossip.poll_timeout());
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm(event),
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                Ok(()) = components.changed() => {
                    self.local.components = components.borrow_and_update().clone();
                    self.gossip.set_local(self.now(), self.local.clone());
                }
                Ok(()) = load.changed() => {
                    self.load = *load.borrow_and_update();
                    if let Some(l) = self.load {
                        self.local.load = l;
                    }
                    self.gossip.set_local(self.now(), self.local.clone());
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = self.now();
                    self.gossip.handle_timeout(now);
                    self.dirty = true;
                }
                _ = resample.tick() => {
                    self.local = super::resources::sample(self.local.clone());
                    if let Some(load) = self.load {
                        self.local.load = load;
                    }
                    let now = self.now();
                    self.gossip.set_local(now, self.local.clone());
                    self.walk_if_short();
                }
                _ = bootstrap.tick() => {
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                _ = tokio::time::sleep_until(self.rejoin_at.into()), if !self.cfg.join.is_empty() => {
                    self.rejoin_if_alone();
                }
                Some((peer, good)) = self.verdicts.recv() => self.on_proof(peer, good),
                _ = auth_check.tick(), if self.gate.is_some() => {
                    let late = self.gate.as_mut().map(|g| g.overdue(Instant::now())).unwrap_or_default();
                    for peer in late {
                        tracing::info!(%peer, "no proof of the swarm key in time: disconnected");
                        self.metrics.mesh_reject("keyless_peer");
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
            }
            self.flush();
            if self.closing.is_some() && self.swarm.connected_peers().next().is_none() {
                let _ = self.closing.take().map(|done| done.send(()));
            }
        }
    }

    /// A peer's proof of the swarm key came in (or failed to).
    fn on_proof(&mut self, peer: PeerId, good: bool) {
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        if good {
            if gate.proven(peer, self.swarm.is_connected(&peer)) {
                self.take_on(peer);
                self.walk_from_join(peer);
            }
        } else {
            gate.failed(Instant::now(), peer);
            tracing::info!(%peer, "a wrong proof of the swarm key: disconnected");
            self.metrics.mesh_reject("keyless_peer");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn reject(&self, e: &Reject) {
        self.metrics.mesh_reject(e.reason());
        tracing::debug!("refused a mesh message: {e}");
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = self.now();
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Sync(e)) => self.on_rpc(Protocol::Sync, e),
            SwarmEvent::Behaviour(BehaviourEvent::Forward(e)) => self.on_rpc(Protocol::Forward, e),
            SwarmEvent::Behaviour(BehaviourEvent::Deploy(e)) => self.on_rpc(Protocol::Deploy, e),
            SwarmEvent::Behaviour(BehaviourEvent::Migrate(e)) => self.on_rpc(Protocol::Migrate, e),
            SwarmEvent::Behaviour(BehaviourEvent::Control(e)) => self.on_rpc(Protocol::Control, e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in prefer_quic(info.listen_addrs) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                // Smoothed, as TCP does, so one slow ping does not swing a placement.
                let ms = rtt.as_secs_f64() * 1000.0;
                let e = self.rtts.entry(peer).or_insert(ms);
                *e = 0.8 * *e + 0.2 * ms;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    tracing::info!(%peer, %addr, "found by mDNS");
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(addr);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                if let Some(gate) = self.gate.as_mut() {
                    let admit = gate.connected(Instant::now(), peer_id);
                    if admit == super::auth::Admit::Refuse {
                        self.metrics.mesh_reject("peer_kept_away");
                        let _ = self.swarm.disconnect_peer_id(peer_id);
                        return;
                    }
                    // On every connection: the peer may be new on it (it restarted, and its
                    // old connection here has not timed out yet).
                    let key = self.key.clone().expect("a gate only with a key");
                    let me = self.gossip.me();
                    tokio::spawn(super::auth::send_proof(self.auth.clone(), key, me, peer_id));
                    if admit == super::auth::Admit::Wait {
                        // Exchanges begin once it proves the key (see `on_proof`).
                        return;
                    }
                }
                if num_established.get() > 1 {
                    return;
                }
                if !self.refused_lately(peer_id) {
                    self.take_on(peer_id);
                }
                self.walk_from_join(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                if let Some(gate) = self.gate.as_mut() {
                    gate.closed(peer_id);
                }
                let now = self.now();
                let neighbour = self.gossip.connected().contains(&peer_id);
                self.gossip.handle_disconnected(now, peer_id);
                if neighbour {
                    self.walk_every = WALK_FIRST;
                    self.more_neighbours();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with_p2p(self.gossip.me()).unwrap_or_else(|a| a);
                tracing::info!(addr = %full, "listening for peers");
                self.listen.push(full);
                // QUIC first: peers dial the first address they are given.
                self.listen.sort_by_key(|a| !is_quic(a));
                self.local.addrs = self.listen.iter().map(|a| a.to_string()).collect();
                self.gossip.set_local(now, self.local.clone());
                self.refresh();
                if self.listen.len() >= self.cfg.listen.len()
                    && let Some(ready) = self.ready.take()
                {
                    let _ = ready.send(());
                }
            }
            _ => {}
        }
    }

    /// What one of the request-response protocols reports.
    fn on_rpc(&mut self, protocol: Protocol, event: request_response::Event<Envelope, Envelope>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_request(protocol, peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_response(protocol, request_id, response),
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                let why = error.to_string();
                match self.pending.remove(&(protocol, request_id)) {
                    Some((_, Pending::Call(tx))) => {
                        let _ = tx.send(Err(MeshError::Unreachable(peer.to_string(), why)));
                    }
                    _ => tracing::debug!(%peer, "sync failed: {why}"),
                }
            }
            _ => {}
        }
    }

    fn on_request(
        &mut self,
        protocol: Protocol,
        from: PeerId,
        env: Envelope,
        channel: ResponseChannel<Envelope>,
    ) {
        if protocol != Protocol::Sync {
            if let Err(mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i)) =
                self.inbound.try_send(Inbound {
                    from,
                    protocol,
                    envelope: env,
                    channel,
                })
            {
                let reply = Reply::Refused {
                    status: 503,
                    message: "node is overloaded".into(),
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rpc(protocol)
                    .send_response(i.channel, rpc::seal(self.key.as_ref(), &reply));
            }
            return;
        }
        let opened = rpc::open(self.key.as_ref(), &env);
        let full = matches!(&opened, Ok(Request::Sync(_)))
            && !self.gossip.connected().contains(&from)
            && !self.take_on(from)
            && !matches!(&opened, Ok(Request::Sync(b)) if self.make_room(from, b));
        let reply = match opened {
            Ok(Request::Sync(_)) if full => {
                self.metrics.mesh_reject("neighbours_full");
                Reply::Refused {
                    status: 429,
                    message: format!(
                        "this node has the {} neighbours it takes",
                        self.cfg.max_neighbours
                    ),
                }
            }
            Ok(Request::Sync(bytes)) => self.on_gossip_direct(from, &bytes, false),
            Ok(Request::Tell(bytes)) => self.on_gossip_direct(from, &bytes, true),
            Ok(other) => {
                self.metrics.mesh_reject("wrong_protocol");
                rpc::misplaced(protocol, &other)
            }
            Err(e) => {
                self.reject(&e);
                Reply::Refused {
                    status: 403,
                    message: e.to_string(),
                }
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, rpc::seal(self.key.as_ref(), &reply));
    }

    /// A neighbour's direct gossip (a sync), or a federation message `told` by any peer.
    fn on_gossip_direct(&mut self, from: PeerId, bytes: &[u8], told: bool) -> Reply {
        self.dirty = true;
        self.metrics.gossip_in(bytes.len());
        let now = self.now();
        let result = if told {
            self.gossip.handle_told(now, from, bytes)
        } else {
            self.gossip.handle_direct(now, from, bytes)
        };
        if let Err(e) = result {
            self.reject(&e);
        }
        Reply::Synced
    }

    fn on_response(&mut self, protocol: Protocol, id: OutboundRequestId, env: Envelope) {
        let Some((peer, pending)) = self.pending.remove(&(protocol, id)) else {
            return;
        };
        match pending {
            Pending::Call(tx) => {
                let _ = tx.send(Ok(env));
            }
            // A peer that will not have this node as a neighbour is no neighbour of it either.
            Pending::Sync => {
                if let Ok(Reply::Refused { status: 429, .. }) = rpc::open(self.key.as_ref(), &env) {
                    let now = self.now();
                    tracing::debug!(%peer, "not its neighbour: it has all it takes");
                    self.gossip.handle_disconnected(now, peer);
                    if self.refused_by.len() >= 4096 {
                        self.refused_by.retain(|_, at| at.elapsed() < REFUSED_FOR);
                    }
                    if self.refused_by.len() < 4096 {
                        self.refused_by.insert(peer, Instant::now());
                    }
                    self.more_neighbours();
                }
            }
        }
    }

    /// Give the swarm the addresses a peer advertises, so it can be dialled without having
    /// met it (its latest advert may list more than the first one did).
    fn learn_addresses(&mut self, peer: PeerId) {
        let addrs: Vec<Multiaddr> = self
            .gossip
            .view()
            .get(&peer)
            .and_then(|p| p.advert.as_ref())
            .map(|a| {
                a.resources
                    .addrs
                    .iter()
                    .filter_map(|s| s.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        for addr in prefer_quic(addrs) {
            self.swarm.add_peer_address(peer, addr);
        }
    }

    fn send(&mut self, to: PeerId, protocol: Protocol, envelope: Envelope, pending: Pending) {
        if !self.swarm.is_connected(&to) {
            self.learn_addresses(to);
            // A peer out of the view (a migration's target, a name's far host) may be one this
            // node never met: find it first.
            if self.gossip.view().get(&to).is_none()
                && (self.awaiting_address.len() < 256 || self.awaiting_address.contains_key(&to))
            {
                let held = self.awaiting_address.entry(to).or_default();
                if held.len() < 64 {
                    if held.is_empty() {
                        self.swarm.behaviour_mut().kad.get_closest_peers(to);
                    }
                    held.push((protocol, envelope, pending));
                    return;
                }
            }
        }
        self.send_now(to, protocol, envelope, pending);
    }

    fn send_now(&mut self, to: PeerId, protocol: Protocol, envelope: Envelope, pending: Pending) {
        let id = self
            .swarm
            .behaviour_mut()
            .rpc(protocol)
            .send_request(&to, envelope);
        self.pending.insert((protocol, id), (to, pending));
    }

    fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Request {
                peer,
                protocol,
                envelope,
                reply,
            } => self.send(peer, protocol, envelope, Pending::Call(reply)),
            Command::FindName { name, urgent } => self.gossip.find_name(now, &name, urgent),
            Command::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::CloseAll(done) => {
                let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for peer in peers {
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
                self.closing = Some(done);
            }
            Command::Federate(op, reply) => {
                let result = match op {
                    FederationOp::Create(spec) => self.gossip.create_federation(now, spec),
                    FederationOp::Join(name) => self.gossip.join_federation(now, &name),
                    FederationOp::Leave(name) => self.gossip.leave_federation(&name),
                };
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
            Command::Respond {
                protocol,
                channel,
                envelope,
            } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rpc(protocol)
                    .send_response(channel, envelope);
            }
        }
    }

    /// Carry out what the gossip machine asked for, log what happened, refresh the snapshot.
    fn flush(&mut self) {
        let mut changed = std::mem::take(&mut self.dirty);
        while let Some(out) = self.gossip.poll_output() {
            changed = true;
            match out {
                Output::Send { to, bytes } => {
                    self.metrics.gossip_out(bytes.len());
                    let sync = rpc::seal(self.key.as_ref(), &Request::Sync(bytes));
                    self.send(to, Protocol::Sync, sync, Pending::Sync);
                }
                Output::Tell { to, bytes } => {
                    self.metrics.gossip_out(bytes.len());
                    let tell = rpc::seal(self.key.as_ref(), &Request::Tell(bytes));
                    self.send(to, Protocol::Sync, tell, Pending::Sync);
                }
                Output::Provide { key } => {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    if let Err(e) = kad.start_providing(kad::RecordKey::new(&key)) {
                        tracing::warn!("a label not provided: {e}");
                    }
                }
                Output::Unprovide { key } => {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    kad.stop_providing(&kad::RecordKey::new(&key));
                }
                Output::FindProviders { key } => {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    kad.get_providers(kad::RecordKey::new(&key));
                }
                Output::File { key, record } => {
                    let record = kad::Record::new(key, record);
                    if let Err(e) = self
                        .swarm
                        .behaviour_mut()
                        .kad
                        .put_record(record, kad::Quorum::One)
                    {
                        tracing::warn!("a name record not filed: {e}");
                    }
                }
                Output::Find { key } => {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .get_record(kad::RecordKey::new(&key));
                }
                // Only a machine scoped to the whole swarm publishes, and the node's never is:
                // the simulator alone keeps that mode, as the baseline it measures against.
                Output::Publish(_) => debug_assert!(false, "the node's gossip is scoped"),
            }
        }
        while let Some(event) = self.gossip.poll_event() {
            changed = true;
            match event {
                Event::Refused(e) => self.reject(&e),
                Event::PeerUp(peer) => {
                    tracing::info!(%peer, "peer joined the view");
                    self.learn_addresses(peer);
                    // Connect to peers met through others, up to a degree: a mesh held together
                    // by its bootstrap peer alone falls apart when that peer dies.
                    if !self.swarm.is_connected(&peer)
                        && self.swarm.connected_peers().count() < DIRECT_PEERS
                        && let Err(e) = self.swarm.dial(peer)
                    {
                        tracing::debug!(%peer, "cannot dial: {e}");
                    }
                }
                Event::PeerDown(peer) => {
                    self.rtts.remove(&peer);
                    // A peer killed without a goodbye leaves its connection open until QUIC
                    // gives up on it; what waits for its answers fails now instead.
                    let gone: Vec<_> = self
                        .pending
                        .iter()
                        .filter(|(_, (p, _))| *p == peer)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in gone {
                        if let Some((_, Pending::Call(tx))) = self.pending.remove(&id) {
                            let _ = tx.send(Err(MeshError::Unreachable(
                                peer.to_string(),
                                "it left the view (no advert within its expiry)".into(),
                            )));
                        }
                    }
                    tracing::info!(%peer, "peer left the view (no advert within its expiry)")
                }
                Event::Federation(FederationEvent::Joined(f)) => {
                    tracing::info!(federation = %f, "joined")
                }
                Event::Federation(FederationEvent::Left(f)) => {
                    tracing::info!(federation = %f, "left")
                }
                Event::Federation(FederationEvent::Dissolved(f)) => {
                    tracing::info!(federation = %f, "dissolved")
                }
            }
        }
        if changed {
            self.refresh();
        }
    }

    /// Take `peer`, just connected, on as a neighbour, only while this node has fewer than it
    /// takes. False if it was not taken on.
    fn take_on(&mut self, peer: PeerId) -> bool {
        if self.gossip.connected().len() >= self.cfg.max_neighbours {
            return false;
        }
        let now = self.now();
        self.gossip.handle_connected(now, peer);
        true
    }

    /// Whether `peer` would not have this node as a neighbour lately: within `REFUSED_FOR`, or
    /// `ALONE_REFUSED_FOR` while this node has no neighbour at all. Alone, its sync is soon a
    /// newcomer's (its suspected neighbours forgotten), which a full node takes (`make_room`);
    /// in a small swarm whose nodes are all full it would otherwise stay alone for a minute.
    fn refused_lately(&self, peer: PeerId) -> bool {
        let within = if self.gossip.connected().is_empty() {
            ALONE_REFUSED_FOR
        } else {
            REFUSED_FOR
        };
        self.refused_by
            .get(&peer)
            .is_some_and(|at| at.elapsed() < within)
    }

    /// Take on `peer`, a node with no peer at all (see `Gossip::from_newcomer`), though this
    /// node has all the neighbours it takes: the one with the highest peer id makes room (it hears
    /// 429 next time, and looks for another), once per `EVICT_EVERY` at most (a newcomer
    /// refused asks again, or another). True if it was taken on.
    fn make_room(&mut self, peer: PeerId, bytes: &[u8]) -> bool {
        if !self.gossip.from_newcomer(bytes) {
            return false;
        }
        if self
            .last_eviction
            .is_some_and(|at| at.elapsed() < EVICT_EVERY)
        {
            self.metrics.mesh_reject("eviction_limited");
            return false;
        }
        let Some(&out) = self.gossip.connected().iter().next_back() else {
            return false;
        };
        tracing::debug!(%peer, %out, "a peer with no neighbour taken on instead of another");
        self.last_eviction = Some(Instant::now());
        let now = self.now();
        self.gossip.handle_disconnected(now, out);
        self.take_on(peer)
    }

    /// A neighbour left: take on a peer connected already, or walk the table for more (its
    /// connections come back through `take_on`).
    fn more_neighbours(&mut self) {
        if self.closing.is_some() {
            return;
        }
        let others: Vec<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| !self.gossip.connected().contains(p) && !self.refused_lately(**p))
            .copied()
            .collect();
        for peer in others {
            if self.gossip.connected().len() >= self.cfg.max_neighbours {
                return;
            }
            self.take_on(peer);
        }
        self.walk_if_short();
    }

    /// A `--join` peer is connected (and proved the key, in a keyed swarm): walk the table
    /// through it for the rest of the swarm.
    fn walk_from_join(&mut self, peer: PeerId) {
        let join = libp2p::multiaddr::Protocol::P2p(peer);
        if self.cfg.join.iter().any(|a| a.iter().any(|p| p == join)) {
            self.last_walk = Some(Instant::now());
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    /// With fewer neighbours than it takes, walk the table now and then, each gap twice the
    /// last: two nodes that joined through one peer at the same moment each learnt of no one
    /// but it, and find each other only on a later walk.
    fn walk_if_short(&mut self) {
        if self.closing.is_some()
            || self.gossip.connected().len() >= self.cfg.max_neighbours
            || self
                .last_walk
                .is_some_and(|t| t.elapsed() < self.walk_every)
        {
            return;
        }
        if self.last_walk.is_some() {
            self.walk_every = (self.walk_every * 2).min(WALK_MAX);
        }
        self.last_walk = Some(Instant::now());
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
    }

    /// What Kademlia reports: records others file here (checked before they are stored), and
    /// the records this node looked for.
    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => {
                if let Err(why) = self.store_name(record) {
                    tracing::debug!(peer = %source, "a name record not stored: {why}");
                    self.metrics.mesh_reject(why);
                }
            }
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            } if step.last => {
                let (key, peers) = match result {
                    Ok(ok) => (ok.key, ok.peers),
                    Err(kad::GetClosestPeersError::Timeout { key, peers }) => (key, peers),
                };
                for p in peers {
                    for addr in prefer_quic(p.addrs) {
                        self.swarm.add_peer_address(p.peer_id, addr);
                    }
                }
                // Sent now, found or not (then they fail as any request to a lost peer does).
                if let Ok(peer) = PeerId::from_bytes(&key)
                    && let Some(held) = self.awaiting_address.remove(&peer)
                {
                    for (protocol, envelope, pending) in held {
                        self.send_now(peer, protocol, envelope, pending);
                    }
                }
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => {
                // Kademlia took it only from the provider itself; a node keeps label keys
                // alone (federations recruit under them), within the store's bounds.
                use kad::store::RecordStore;
                if !continuum_gossip::is_label_key(record.key.as_ref()) {
                    self.metrics.mesh_reject("not_a_label");
                } else if self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .add_provider(record)
                    .is_err()
                {
                    self.metrics.mesh_reject("providers_full");
                }
            }
            kad::Event::OutboundQueryProgressed {
                result:
                    kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                        key,
                        providers,
                    })),
                ..
            } => {
                let now = self.now();
                let providers: Vec<PeerId> = providers.into_iter().collect();
                self.gossip.handle_providers(now, key.as_ref(), &providers);
                self.dirty = true;
            }
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))),
                ..
            } => {
                let now = self.now();
                let r = &found.record;
                match self
                    .gossip
                    .handle_name_record(now, r.key.as_ref(), &r.value)
                {
                    Ok(()) => self.dirty = true,
                    Err(e) => self.reject(&e),
                }
            }
            _ => {}
        }
    }

    /// Store a record another node filed here, if it is a host's signed claim to the name it
    /// is filed under and does not go back on the record held (see
    /// `NameRecord::supersedes`); the counter's label if not.
    fn store_name(&mut self, record: kad::Record) -> Result<(), &'static str> {
        use kad::store::RecordStore;
        // The same records come again and again (refilings, replication): each signature is
        // checked once, in the gossip's cache of frames that verified.
        let (key, seen) = (self.key.as_ref(), Some(self.gossip.verified()));
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let held = store.get(&record.key).map(|r| r.value.clone());
        let filing = continuum_gossip::file_over(
            record.key.as_ref(),
            &record.value,
            held.as_deref(),
            key,
            seen,
        )
        .map_err(|e| e.reason())?;
        if filing == continuum_gossip::Filing::Same {
            return Ok(());
        }
        let mut record = record;
        // The expiry is this node's to set: a filer cannot make a record outlive its refilings.
        let longest = Instant::now() + NAME_RECORD_TTL;
        record.expires = Some(record.expires.map_or(longest, |e| e.min(longest)));
        store.put(record).map_err(|_| "names_full")
    }

    fn refresh(&mut self) {
        let now = self.now();
        let peers: Vec<PeerStatus> = self
            .gossip
            .view()
            .iter()
            .filter_map(|p| {
                let r = &p.advert.as_ref()?.resources;
                Some(PeerStatus {
                    peer_id: p.peer.to_string(),
                    arch: r.arch.clone(),
                    cores: r.cores,
                    load: r.load,
                    mem_free: r.mem_free,
                    mem_total: r.mem_total,
                    slots: r.slots,
                    labels: r.labels.clone(),
                    http: r.http.clone(),
                    addrs: r.addrs.clone(),
                    components: r.components.iter().map(|c| c.name.clone()).collect(),
                    last_seen_ms: now.saturating_sub(p.last_heard_ms),
                    rtt_ms: self.rtts.get(&p.peer).copied(),
                })
            })
            .collect();
        let me = self.gossip.me();
        let federations = self
            .gossip
            .federations()
            .iter()
            .map(|f| FederationStatus {
                name: f.spec.name.clone(),
                objective: f.spec.objective.clone(),
                owner: f.owner.to_string(),
                require: f.spec.require.clone(),
                min_members: f.spec.min_members,
                lease_ms: f.spec.lease_ms,
                members: f.members.keys().map(|p| p.to_string()).collect(),
                formed: f.formed(),
                member: f.members.contains_key(&me),
                expires_in_ms: f.expires_ms.saturating_sub(now),
            })
            .collect();
        self.metrics.mesh_peers.set(peers.len() as i64);
        self.metrics
            .mesh_connected
            .set(self.swarm.connected_peers().count() as i64);
        let directory = self.gossip.directory();
        for _ in self.unproven_seen..self.gossip.unproven_moves() {
            self.metrics.mesh_reject("unproven_move");
        }
        self.unproven_seen = self.gossip.unproven_moves();
        let snap = Snapshot {
            peers,
            federations,
            directory,
            listen: self.listen.iter().map(|a| a.to_string()).collect(),
        };
        *self.snapshot.write().unwrap() = Arc::new(snap);
    }
}
