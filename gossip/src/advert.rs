//! Resource adverts: what a node offers (CPU, memory, load, architecture, labels) and which
//! components it hosts. The directory of component locations is read off the adverts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the node that owns a [`crate::Gossip`] tells it about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub arch: String,
    pub cores: u32,
    /// Run-queue length per core (1-minute load average / cores): 0 idle, 1 saturated.
    pub load: f32,
    pub mem_free: u64,
    pub mem_total: u64,
    /// How many more components the node will take.
    pub slots: u32,
    /// Operator labels, e.g. `zone=a`, `sensor=camera`.
    pub labels: BTreeMap<String, String>,
    /// The node's HTTP base URL, for people and clients.
    pub http: String,
    /// libp2p listen addresses, so peers that never met it can dial it.
    pub addrs: Vec<String>,
    /// The components hosted there.
    pub components: Vec<Hosted>,
}

impl Resources {
    /// Whether the labels satisfy every `key=value` in `require`.
    pub fn satisfies(&self, require: &BTreeMap<String, String>) -> bool {
        require.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// Whether the change from `self` to `next` is one of substance (components, labels,
    /// capacity, addresses), worth a full advert at once.
    pub fn differs_in_substance(&self, next: &Resources) -> bool {
        self.arch != next.arch
            || self.cores != next.cores
            || self.slots != next.slots
            || self.labels != next.labels
            || self.http != next.http
            || self.addrs != next.addrs
            || self.components != next.components
    }
}

/// One hosted component, as its host announces it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hosted {
    pub name: String,
    /// Location epoch: only the current host increments it, when the component arrives.
    pub epoch: u64,
    #[serde(with = "serde_bytes")]
    pub digest: [u8; 32],
    /// The hand-off that brought it here, signed by the host before (none if deployed here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<crate::SignedHandoff>,
}

/// A node's signed statement about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceAdvert {
    /// The peer id this advert speaks for; must be the signer's.
    #[serde(with = "serde_bytes")]
    pub peer: Vec<u8>,
    /// Receivers forget the peer this long after they last heard from it.
    pub ttl_ms: u64,
    pub resources: Resources,
}
