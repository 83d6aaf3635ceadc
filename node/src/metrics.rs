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
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// `periodic`, `shutdown`, `api`, `deploy`.
    pub trigger: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub calls: Family<CallLabels, Counter>,
    pub ticks: Family<CallLabels, Counter>,
    pub rejected: Family<ReasonLabels, Counter>,
    pub checkpoints: Family<TriggerLabels, Counter>,
    pub checkpoint_seconds: Histogram,
    pub checkpoint_bytes: Counter,
    pub components: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("continuum"),
            http_requests: Family::default(),
            calls: Family::default(),
            ticks: Family::default(),
            rejected: Family::default(),
            checkpoints: Family::default(),
            checkpoint_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            checkpoint_bytes: Counter::default(),
            components: Gauge::default(),
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
        r.register("rejected", "Inputs refused, by reason", m.rejected.clone());
        r.register(
            "checkpoints",
            "Component checkpoints taken, by trigger",
            m.checkpoints.clone(),
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
            "components",
            "Components hosted on this node",
            m.components.clone(),
        );
        m
    }
}

impl Metrics {
    /// Count one refused input.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn rejected(&self, reason: &'static str) -> u64 {
        self.rejected.get_or_create(&ReasonLabels { reason }).get()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
