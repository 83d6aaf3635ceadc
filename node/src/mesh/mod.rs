//! The mesh: a libp2p swarm (QUIC, and TCP with noise and yamux; identify, Kademlia, mDNS,
//! request-response, raw streams) driving the sans-IO `continuum-gossip` machine. The rest of the
//! node talks to it through [`Mesh`]: where is a component, who are the peers, forward this
//! request, deploy that module over there.

pub mod auth;
mod behaviour;
mod codec;
mod driver;
mod gated;
pub mod lane;
pub mod resources;
pub mod rpc;

use crate::components::ComponentInfo;
use crate::metrics::Metrics;
use anyhow::{Context, Result};
use continuum_gossip::{FederationSpec, Location, PeerId, Resources, SwarmKey};
use continuum_migrate::{MigrationId, Outcome, ToSource, ToTarget};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

pub use driver::Inbound;

/// What other nodes ask of this one: requests on request-response (the driver hands them on
/// sealed) and the call lanes they open.
pub struct Incoming {
    pub requests: mpsc::Receiver<Inbound>,
    pub lanes: libp2p_stream::IncomingStreams,
}

/// How the mesh is set up.
pub struct MeshConfig {
    pub listen: Vec<Multiaddr>,
    pub join: Vec<Multiaddr>,
    pub mdns: bool,
    pub key: Option<SwarmKey>,
    pub gossip: continuum_gossip::Config,
    /// Longest a forwarded request or remote deployment may take.
    pub request_timeout: Duration,
    /// Bytes from peers' rpc messages held at once, over all peers.
    pub peer_budget: usize,
    /// Neighbours at most: the peers a node hears (see `continuum_gossip::Scope::Neighbours`).
    pub max_neighbours: usize,
}

/// One peer, as `continuum status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    pub peer_id: String,
    pub arch: String,
    pub cores: u32,
    pub load: f32,
    pub mem_free: u64,
    pub mem_total: u64,
    pub slots: u32,
    pub labels: BTreeMap<String, String>,
    pub http: String,
    pub addrs: Vec<String>,
    pub components: Vec<String>,
    /// Milliseconds since this node last heard from the peer.
    pub last_seen_ms: u64,
    /// Round-trip time this node measured to it (libp2p ping), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

impl PeerStatus {
    /// The peer as placement sees it.
    pub fn candidate(&self) -> Option<continuum_gossip::Candidate<'_>> {
        Some(continuum_gossip::Candidate {
            peer: self.peer_id.parse().ok()?,
            load: self.load,
            slots: self.slots,
            mem_free: self.mem_free,
            components: self.components.len(),
            labels: &self.labels,
        })
    }
}

/// One federation, as `continuum federate ls` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FederationStatus {
    pub name: String,
    pub objective: String,
    pub owner: String,
    pub require: BTreeMap<String, String>,
    pub min_members: u32,
    pub lease_ms: u64,
    pub members: Vec<String>,
    pub formed: bool,
    /// Whether this node is a member.
    pub member: bool,
    /// Milliseconds until it dissolves unless renewed.
    pub expires_in_ms: u64,
}

/// What the rest of the node reads without asking the driver.
#[derive(Default, Debug)]
pub struct Snapshot {
    pub peers: Vec<PeerStatus>,
    pub federations: Vec<FederationStatus>,
    pub directory: BTreeMap<String, Location>,
    /// This node's listen addresses, with its `/p2p/PEER_ID`.
    pub listen: Vec<String>,
}

impl Snapshot {
    /// The members of federation `name` (none if it is unknown).
    pub fn members(&self, name: &str) -> std::collections::BTreeSet<PeerId> {
        self.federations
            .iter()
            .filter(|f| f.name == name)
            .flat_map(|f| f.members.iter().filter_map(|m| m.parse().ok()))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("peer {0} could not be reached: {1}")]
    Unreachable(String, String),
    /// The peer answered with a refusal (an HTTP status and its reason).
    #[error("{1}")]
    Refused(u16, String),
    #[error("the mesh is shutting down")]
    Closed,
}

pub enum FederationOp {
    Create(FederationSpec),
    Join(String),
    Leave(String),
}

/// Commands to the swarm queued at most; senders wait past this.
const COMMANDS: usize = 1024;

pub(crate) enum Command {
    /// Send a sealed request to a peer; its sealed reply (or a lost connection) comes back.
    Request {
        peer: PeerId,
        protocol: rpc::Protocol,
        envelope: rpc::Envelope,
        reply: oneshot::Sender<Result<rpc::Envelope, MeshError>>,
    },
    /// Look for component `name` beyond the neighbourhood (see `Gossip::find_name`).
    FindName {
        name: String,
        urgent: bool,
    },
    /// Close every connection to a peer (fault injection for the tests).
    Disconnect(PeerId),
    /// Close every connection (the node is stopping); answered once they are closed.
    CloseAll(oneshot::Sender<()>),
    Federate(FederationOp, oneshot::Sender<Result<(), String>>),
    Respond {
        protocol: rpc::Protocol,
        channel: libp2p::request_response::ResponseChannel<rpc::Envelope>,
        envelope: rpc::Envelope,
    },
}

fn unexpected(peer: PeerId, reply: &rpc::Reply) -> MeshError {
    MeshError::Refused(502, format!("unexpected answer from {peer}: {reply:?}"))
}

/// The node's handle on the mesh.
#[derive(Clone)]
pub struct Mesh {
    me: PeerId,
    /// This node's identity, to sign what it hands over.
    id: libp2p::identity::Keypair,
    /// Bounded: a sender waits when the swarm falls behind, rather than queueing without end.
    cmd: mpsc::Sender<Command>,
    /// What this node advertises, latest value only (a slow swarm skips what was replaced).
    components: Arc<watch::Sender<Vec<continuum_gossip::Hosted>>>,
    /// The node's own load figure, which replaces the host's load average in its adverts.
    load: Arc<watch::Sender<Option<f32>>>,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    key: Option<SwarmKey>,
    metrics: Arc<Metrics>,
    rt: tokio::runtime::Handle,
    lanes: Arc<lane::Lanes>,
    request_timeout: Duration,
    /// Whether names are looked for beyond the neighbourhood, and when each was last asked
    /// for from here (the gossip machine bounds the lookups again).
    names: bool,
    name_refresh: Duration,
    asked: Arc<std::sync::Mutex<HashMap<String, std::time::Instant>>>,
}

impl Mesh {
    /// Build the swarm (bandwidth counters go into `registry`), start the driver, and wait
    /// (briefly) for the listen addresses. Inbound forwarded requests and deployments arrive on
    /// the returned receiver.
    pub async fn start(
        key: libp2p::identity::Keypair,
        cfg: MeshConfig,
        labels: BTreeMap<String, String>,
        http: String,
        metrics: Arc<Metrics>,
    ) -> Result<(Mesh, Incoming)> {
        let mut registry = prometheus_client::registry::Registry::default();
        let me = key.public().to_peer_id();
        let identity = key.clone();
        let local = resources::sample(Resources {
            labels,
            http,
            slots: 64,
            ..Resources::default()
        });
        // The swarm, its connections and QUIC's endpoint run on a runtime of their own: they
        // poll for long stretches when a migration streams megabytes (encoding, encryption),
        // and tokio does not preempt a task, so on the node's runtime they would hold up the
        // HTTP handlers. On their own threads the kernel shares the cores fairly. Two, so that
        // QUIC's endpoint keeps moving packets while a connection decodes a large message (on
        // one, a 16 MiB transfer in a debug build took five times as long: 3.1 s, not 0.6 s).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mesh")
            .on_thread_start(crate::priority::request_path)
            .enable_all()
            .build()
            .context("starting the mesh's runtime")?;
        let (cmd, cmd_rx) = mpsc::channel(COMMANDS);
        let (components, components_rx) = watch::channel(Vec::new());
        let (load, load_rx) = watch::channel(None);
        let swarm_key = cfg.key.clone();
        let (inbound_tx, inbound_rx) = mpsc::channel(256);
        let snapshot = Arc::new(RwLock::new(Arc::new(Snapshot::default())));
        let (ready_tx, ready_rx) = oneshot::channel();
        let (built_tx, built_rx) = oneshot::channel();
        let shared = snapshot.clone();
        let m = metrics.clone();
        let request_timeout = cfg.request_timeout;
        let names = cfg.gossip.names;
        let name_refresh = Duration::from_millis(cfg.gossip.name_refresh_ms);
        rt.spawn(async move {
            let built = driver::build_swarm(key.clone(), &cfg, &mut registry, m.clone())
                .context("starting libp2p")
                .and_then(|swarm| {
                    let control = swarm.behaviour().lanes.new_control();
                    driver::Driver::new(swarm, key, cfg, local, m, shared, inbound_tx, ready_tx)
                        .map(|d| (d, control))
                });
            match built {
                Ok((driver, control)) => {
                    let _ = built_tx.send(Ok((registry, control)));
                    driver.run(cmd_rx, components_rx, load_rx).await;
                }
                Err(e) => {
                    let _ = built_tx.send(Err(e));
                }
            }
        });
        let handle = rt.handle().clone();
        // It lives as long as the process (dropping a runtime from async code is not allowed).
        std::mem::forget(rt);
        let (registry, mut control) = built_rx
            .await
            .map_err(|_| anyhow::anyhow!("the mesh did not start"))??;
        metrics.attach(registry);
        let incoming = Incoming {
            requests: inbound_rx,
            lanes: control
                .accept(lane::PROTOCOL)
                .expect("the call lane is registered once"),
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
        Ok((
            Mesh {
                me,
                id: identity,
                cmd,
                components: Arc::new(components),
                load: Arc::new(load),
                snapshot,
                key: swarm_key,
                lanes: Arc::new(lane::Lanes::new(control, metrics.clone(), handle.clone())),
                metrics,
                rt: handle,
                request_timeout,
                names,
                name_refresh,
                asked: Default::default(),
            },
            incoming,
        ))
    }

    pub fn me(&self) -> PeerId {
        self.me
    }

    /// This node's signed word that `name` is `to`'s from `epoch` on (see
    /// [`continuum_gossip::SignedHandoff`]), encoded.
    pub fn sign_handoff(&self, name: &str, epoch: u64, to: PeerId) -> Vec<u8> {
        continuum_gossip::SignedHandoff::sign(&self.id, name, epoch, to).to_bytes()
    }

    /// The mesh's own runtime: work that is mostly waiting on peers (answering them, calls to
    /// components on other nodes) runs there, next to the swarm, saving a hop between threads
    /// each way.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap().clone()
    }

    pub fn locate(&self, name: &str) -> Option<Location> {
        self.snapshot.read().unwrap().directory.get(name).cloned()
    }

    /// Another peer that hosts `name` at a newer epoch than `epoch` (this node's copy is
    /// stale then). Read in place: it runs on every request.
    pub fn newer_host(&self, name: &str, epoch: u64) -> Option<(PeerId, u64)> {
        let snap = self.snapshot.read().unwrap();
        let l = snap.directory.get(name)?;
        (l.host != self.me && l.epoch > epoch).then_some((l.host, l.epoch))
    }

    /// Seal `value` for a peer; a large one on the bulk pool.
    async fn seal<T: Serialize + Send + 'static>(&self, value: T, bulk: bool) -> rpc::Envelope {
        if !bulk {
            return rpc::seal(self.key.as_ref(), &value);
        }
        let key = self.key.clone();
        crate::bulk::run(move || rpc::seal(key.as_ref(), &value))
            .await
            .expect("sealing does not panic")
    }

    /// Open what a peer sent; a large envelope on the bulk pool. Refusals are counted.
    pub async fn open<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        env: rpc::Envelope,
    ) -> Result<T, continuum_gossip::Reject> {
        let opened = if env.len() > rpc::BULK {
            let key = self.key.clone();
            crate::bulk::run(move || rpc::open(key.as_ref(), &env))
                .await
                .unwrap_or_else(|e| Err(continuum_gossip::Reject::Malformed(e.to_string())))
        } else {
            rpc::open(self.key.as_ref(), &env)
        };
        if let Err(e) = &opened {
            self.metrics.mesh_reject(e.reason());
        }
        opened
    }

    /// Send a request to a peer and wait for its reply, on its protocol: a small forwarded
    /// request (or result, or answer) on the call lane (on request-response if the peer has
    /// none), the rest on request-response.
    async fn request(&self, peer: PeerId, request: rpc::Request) -> Result<rpc::Reply, MeshError> {
        let bulk = request.is_bulk();
        let protocol = rpc::Protocol::of(&request);
        let envelope = self.seal(request, bulk).await;
        let env = if bulk || protocol != rpc::Protocol::Forward {
            self.request_response(peer, protocol, envelope).await?
        } else {
            let unreachable = |e: String| MeshError::Unreachable(peer.to_string(), e);
            match tokio::time::timeout(self.request_timeout, self.lanes.request(peer, &envelope))
                .await
            {
                Ok(Ok(env)) => env,
                Ok(Err(lane::LaneError::Open(e))) => {
                    tracing::debug!(%peer, "no call lane ({e}); request-response instead");
                    self.request_response(peer, protocol, envelope).await?
                }
                Ok(Err(e)) => return Err(unreachable(e.to_string())),
                Err(_) => return Err(unreachable("timed out".into())),
            }
        };
        match self.open(env).await {
            Ok(rpc::Reply::Refused { status, message }) => Err(MeshError::Refused(status, message)),
            Ok(reply) => Ok(reply),
            Err(e) => Err(MeshError::Refused(
                502,
                format!("answer from {peer} refused: {e}"),
            )),
        }
    }

    async fn request_response(
        &self,
        peer: PeerId,
        protocol: rpc::Protocol,
        envelope: rpc::Envelope,
    ) -> Result<rpc::Envelope, MeshError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Request {
                peer,
                protocol,
                envelope,
                reply,
            })
            .await
            .map_err(|_| MeshError::Closed)?;
        rx.await.map_err(|_| MeshError::Closed)?
    }

    /// Send a component request (guest ABI encoding) to its host; its answer comes back.
    pub async fn forward(
        &self,
        host: PeerId,
        name: &str,
        ctx: &crate::runtime::CallCtx,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, MeshError> {
        let forward = rpc::Request::Forward {
            name: name.to_string(),
            hops: ctx.hops + 1,
            entry: Some(ctx.entry.to_string()),
            request,
            deadline: ctx
                .deadline
                .map(|d| d.saturating_duration_since(std::time::Instant::now())),
            chain: ctx.chain.clone(),
        };
        match self.request(host, forward).await? {
            rpc::Reply::Forwarded(bytes) => Ok(bytes),
            other => Err(unexpected(host, &other)),
        }
    }

    /// Send the result of call `op` on to `to`, where component `name` lives now.
    pub async fn wake(
        &self,
        to: PeerId,
        name: &str,
        op: u64,
        result: Vec<u8>,
        hops: u8,
    ) -> Result<(), MeshError> {
        let wake = rpc::Request::Wake {
            name: name.to_string(),
            op,
            result,
            hops,
        };
        match self.request(to, wake).await? {
            rpc::Reply::Synced => Ok(()),
            other => Err(unexpected(to, &other)),
        }
    }

    /// Send the answer to a migrated request back to `to`, where its client waits.
    pub async fn answer(&self, to: PeerId, key: u64, response: Vec<u8>) -> Result<(), MeshError> {
        match self
            .request(to, rpc::Request::Answer { key, response })
            .await?
        {
            rpc::Reply::Synced => Ok(()),
            other => Err(unexpected(to, &other)),
        }
    }

    /// Run a control-API request on another node; its status and body.
    pub async fn control(
        &self,
        peer: PeerId,
        method: String,
        path: String,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), MeshError> {
        match self
            .request(peer, rpc::Request::Control { method, path, body })
            .await?
        {
            rpc::Reply::Control { status, body } => Ok((status, body)),
            other => Err(unexpected(peer, &other)),
        }
    }

    /// One step of a migration: a message to the target, and its answer.
    pub async fn migrate(&self, target: PeerId, msg: ToTarget) -> Result<ToSource, MeshError> {
        match self.request(target, rpc::Request::Migrate(msg)).await? {
            rpc::Reply::Migrate(answer) => Ok(answer),
            other => Err(unexpected(target, &other)),
        }
    }

    /// Ask the source of a migration how it ended.
    pub async fn migration_status(
        &self,
        source: PeerId,
        id: MigrationId,
    ) -> Result<Outcome, MeshError> {
        match self
            .request(source, rpc::Request::MigrationStatus(id))
            .await?
        {
            rpc::Reply::MigrationStatus(outcome) => Ok(outcome),
            other => Err(unexpected(source, &other)),
        }
    }

    /// Deploy a module on another node.
    pub async fn deploy(
        &self,
        peer: PeerId,
        name: &str,
        version: &str,
        bounds: crate::components::Bounds,
        wasm: Vec<u8>,
    ) -> Result<ComponentInfo, MeshError> {
        let request = rpc::Request::Deploy {
            name: name.to_string(),
            version: version.to_string(),
            bounds,
            wasm,
        };
        match self.request(peer, request).await? {
            rpc::Reply::Deployed(json) => serde_json::from_slice(&json)
                .map_err(|e| MeshError::Refused(502, format!("bad answer from {peer}: {e}"))),
            other => Err(unexpected(peer, &other)),
        }
    }

    /// Close every connection to `peer` at once, as a cut cable would.
    pub fn disconnect(&self, peer: PeerId) {
        let _ = self.cmd.try_send(Command::Disconnect(peer));
    }

    /// Close every connection, and wait (briefly) until they are closed.
    pub async fn close_all(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::CloseAll(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Look for component `name` beyond the neighbourhood, scoped to neighbours: now if
    /// `urgent` (this node cannot find it, or its host sent a request on), else at most every
    /// `name_refresh_ms` from here, so that a name in use stays fresh.
    pub fn find_name(&self, name: &str, urgent: bool) {
        if !self.names {
            return;
        }
        if !urgent {
            let mut asked = self.asked.lock().unwrap();
            let now = std::time::Instant::now();
            match asked.get(name) {
                Some(at) if now.duration_since(*at) < self.name_refresh => return,
                _ => {
                    if asked.len() >= 4096 {
                        asked.retain(|_, at| now.duration_since(*at) < self.name_refresh);
                    }
                    asked.insert(name.to_string(), now);
                }
            }
        }
        let _ = self.cmd.try_send(Command::FindName {
            name: name.to_string(),
            urgent,
        });
    }

    /// Tell the mesh which components this node hosts now.
    pub fn set_components(&self, components: Vec<continuum_gossip::Hosted>) {
        self.components.send_replace(components);
    }

    pub fn set_load(&self, load: f32) {
        self.load.send_replace(Some(load));
    }

    pub async fn federate(&self, op: FederationOp) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Federate(op, reply))
            .await
            .map_err(|_| "the mesh is shutting down".to_string())?;
        rx.await
            .map_err(|_| "the mesh is shutting down".to_string())?
    }

    /// Answer an inbound request (on the protocol it came on).
    pub async fn respond(
        &self,
        protocol: rpc::Protocol,
        channel: libp2p::request_response::ResponseChannel<rpc::Envelope>,
        reply: rpc::Reply,
    ) {
        let envelope = self.seal_reply(reply).await;
        let _ = self
            .cmd
            .send(Command::Respond {
                protocol,
                channel,
                envelope,
            })
            .await;
    }

    /// Seal a reply to a peer (a large one on the bulk pool).
    pub async fn seal_reply(&self, reply: rpc::Reply) -> rpc::Envelope {
        let bulk = matches!(&reply, rpc::Reply::Forwarded(b) | rpc::Reply::Deployed(b) if b.len() > rpc::BULK);
        self.seal(reply, bulk).await
    }
}
