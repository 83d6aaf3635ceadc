//! Prometheus metrics, served at `/metrics`. Every refusal of bad input is counted here by
//! reason, so an operator sees what the node turned away without reading logs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// `h1` or `h3`.
    pub proto: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub component: String,
    /// `ok`, `trap`, `deadline`, `memory_cap`, `bad_response`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// `direct` (a migration's own TCP connection) or `mesh`.
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `in` or `out`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// `periodic`, `shutdown`, `api`, `deploy`.
    pub trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationLabels {
    /// `source` or `target`.
    pub role: &'static str,
    /// `ok`, `aborted`, `failed` (after the switch).
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Registries of other subsystems (libp2p's transport counters), served alongside.
    attached: std::sync::Mutex<Vec<Registry>>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub calls: Family<CallLabels, Counter>,
    pub ticks: Family<CallLabels, Counter>,
    /// Calls components made to other components, by outcome (`ok`, `not_found`, `deadline`,
    /// `loop`, `refused`), and how long they took.
    pub outbound_calls: Family<CallLabels, Counter>,
    pub call_seconds: Histogram,
    /// Requests each component is serving, and calls it is waiting on.
    pub requests_in_flight: Family<ComponentLabels, Gauge>,
    pub calls_in_flight: Family<ComponentLabels, Gauge>,
    pub rejected: Family<ReasonLabels, Counter>,
    pub checkpoints: Family<TriggerLabels, Counter>,
    /// Checkpoints taken but not written to disk, by trigger (retried while they fail).
    pub checkpoint_failures: Family<TriggerLabels, Counter>,
    pub checkpoint_seconds: Histogram,
    pub checkpoint_bytes: Counter,
    /// Bytes of uploads that went to a file rather than to memory (see `http::BodyCollector`).
    pub uploads_spooled: Counter,
    pub components: Gauge,
    /// HTTP/1.1 connections open.
    pub http_connections: Gauge,
    /// Mesh messages refused (bad gossip, foreign swarm key, ...), by reason.
    pub mesh_rejected: Family<ReasonLabels, Counter>,
    pub gossip_bytes: Family<DirectionLabels, Counter>,
    pub gossip_messages: Family<DirectionLabels, Counter>,
    pub mesh_peers: Gauge,
    pub mesh_connected: Gauge,
    /// Bytes of peers' rpc messages held (read, not yet answered), against `--peer-budget`.
    pub peer_bytes: Gauge,
    pub forwarded: Family<DirectionLabels, Counter>,
    pub migrations: Family<MigrationLabels, Counter>,
    /// Freeze to the target's Ready, as the source measured it.
    pub migration_downtime_seconds: Histogram,
    /// How long requests held by a migration's freeze waited.
    pub migration_held_seconds: Histogram,
    /// Page bytes sent by migrations from this node.
    pub migration_bytes: Counter,
    /// Messages of pages sent by migrations from this node, by the way they went.
    pub migration_pages: Family<PathLabels, Counter>,
    pub updates: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("continuum"),
            attached: Default::default(),
            http_requests: Family::default(),
            calls: Family::default(),
            ticks: Family::default(),
            outbound_calls: Family::default(),
            call_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            requests_in_flight: Family::default(),
            calls_in_flight: Family::default(),
            rejected: Family::default(),
            checkpoints: Family::default(),
            checkpoint_failures: Family::default(),
            checkpoint_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            checkpoint_bytes: Counter::default(),
            uploads_spooled: Counter::default(),
            components: Gauge::default(),
            http_connections: Gauge::default(),
            mesh_rejected: Family::default(),
            gossip_bytes: Family::default(),
            gossip_messages: Family::default(),
            mesh_peers: Gauge::default(),
            mesh_connected: Gauge::default(),
            peer_bytes: Gauge::default(),
            forwarded: Family::default(),
            migrations: Family::default(),
            migration_downtime_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            migration_held_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            migration_bytes: Counter::default(),
            migration_pages: Family::default(),
            updates: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by protocol and status",
            m.http_requests.clone(),
        );
        r.register(
            "component_calls",
            "Requests handled by components, by outcome",
            m.calls.clone(),
        );
        r.register(
            "component_ticks",
            "Periodic ticks run by components, by outcome",
            m.ticks.clone(),
        );
        r.register(
            "component_outbound_calls",
            "Calls components made to other components, by outcome",
            m.outbound_calls.clone(),
        );
        r.register(
            "component_call_seconds",
            "Time from a component's call to its answer",
            m.call_seconds.clone(),
        );
        r.register(
            "component_requests_in_flight",
            "Requests a component is serving (started, not answered)",
            m.requests_in_flight.clone(),
        );
        r.register(
            "component_calls_in_flight",
            "Calls a component made that wait for an answer",
            m.calls_in_flight.clone(),
        );
        r.register("rejected", "Inputs refused, by reason", m.rejected.clone());
        r.register(
            "checkpoints",
            "Component checkpoints taken, by trigger",
            m.checkpoints.clone(),
        );
        r.register(
            "checkpoint_failures",
            "Component checkpoints not written to disk, by trigger",
            m.checkpoint_failures.clone(),
        );
        r.register(
            "checkpoint_seconds",
            "Time to capture one checkpoint",
            m.checkpoint_seconds.clone(),
        );
        r.register(
            "checkpoint_bytes",
            "Bytes of snapshots written",
            m.checkpoint_bytes.clone(),
        );
        r.register(
            "uploads_spooled_bytes",
            "Bytes of uploads written to a file in the data directory as they came",
            m.uploads_spooled.clone(),
        );
        r.register(
            "components",
            "Components hosted on this node",
            m.components.clone(),
        );
        r.register(
            "http_connections",
            "HTTP/1.1 connections open",
            m.http_connections.clone(),
        );
        r.register(
            "mesh_rejected",
            "Mesh messages refused, by reason",
            m.mesh_rejected.clone(),
        );
        r.register(
            "gossip_bytes",
            "Gossip payload bytes, by direction",
            m.gossip_bytes.clone(),
        );
        r.register(
            "gossip_messages",
            "Gossip messages, by direction",
            m.gossip_messages.clone(),
        );
        r.register(
            "mesh_peers",
            "Peers in this node's view",
            m.mesh_peers.clone(),
        );
        r.register(
            "mesh_connected",
            "Peers this node has a connection to (neighbours, and peers met by a lookup)",
            m.mesh_connected.clone(),
        );
        r.register(
            "peer_bytes",
            "Bytes of peers' rpc messages held (read, not yet answered)",
            m.peer_bytes.clone(),
        );
        r.register(
            "forwarded_requests",
            "Component requests forwarded between nodes, by direction",
            m.forwarded.clone(),
        );
        r.register(
            "migrations",
            "Live migrations, by role and outcome",
            m.migrations.clone(),
        );
        r.register(
            "migration_downtime_seconds",
            "Time requests were held during a migration (freeze to ready)",
            m.migration_downtime_seconds.clone(),
        );
        r.register(
            "migration_held_seconds",
            "How long requests held by a migration's freeze waited",
            m.migration_held_seconds.clone(),
        );
        r.register(
            "migration_bytes",
            "Page bytes sent by migrations from this node",
            m.migration_bytes.clone(),
        );
        r.register(
            "migration_pages",
            "Messages of pages sent by migrations from this node, by path (direct, mesh)",
            m.migration_pages.clone(),
        );
        r.register(
            "updates",
            "Live updates, by outcome (ok, rolled_back)",
            m.updates.clone(),
        );
        m
    }
}

impl Metrics {
    /// Count one refused input.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn migration(&self, role: &'static str, outcome: &'static str) {
        self.migrations
            .get_or_create(&MigrationLabels { role, outcome })
            .inc();
    }

    pub fn update(&self, outcome: &'static str) {
        self.updates.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Serve another subsystem's registry at `/metrics` too.
    ///
    /// Also how facts known only once the node is configured (its engine) get there.
    pub fn attach(&self, registry: Registry) {
        self.attached.lock().unwrap().push(registry);
    }

    pub fn mesh_reject(&self, reason: &'static str) {
        self.mesh_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn gossip_in(&self, bytes: usize) {
        self.gossip_bytes
            .get_or_create(&DirectionLabels { direction: "in" })
            .inc_by(bytes as u64);
        self.gossip_messages
            .get_or_create(&DirectionLabels { direction: "in" })
            .inc();
    }

    pub fn gossip_out(&self, bytes: usize) {
        self.gossip_bytes
            .get_or_create(&DirectionLabels { direction: "out" })
            .inc_by(bytes as u64);
        self.gossip_messages
            .get_or_create(&DirectionLabels { direction: "out" })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        encode_registry(&mut out, &self.registry).expect("writing to a String cannot fail");
        for r in self.attached.lock().unwrap().iter() {
            encode_registry(&mut out, r).expect("writing to a String cannot fail");
        }
        encode_eof(&mut out).expect("writing to a String cannot fail");
        out
    }
}

/// What this node is: its version, its architecture and what runs its Wasm
/// (`continuum_build_info`).
pub fn build_info(engine: crate::runtime::EngineKind) -> Registry {
    let mut r = Registry::with_prefix("continuum");
    r.register(
        "build",
        "What this node is: its version, its architecture and what runs its Wasm",
        prometheus_client::metrics::info::Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            ("arch", std::env::consts::ARCH),
            ("engine", engine.name()),
        ]),
    );
    r
}
