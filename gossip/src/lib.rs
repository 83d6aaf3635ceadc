//! `continuum-gossip`: how Continuum nodes know each other, sans IO.
//!
//! Signed resource adverts and heartbeats, a membership view that ages out silent peers,
//! temporary federations with leases, and the directory of component locations read off the
//! adverts. Everything here is a plain state machine that takes the time and messages as input
//! and returns messages to send and when to wake up next: no sockets, no clock, no tokio. The
//! node drives it over libp2p; the simulator drives the very same code in virtual time.

mod advert;
mod federation;
mod gossip;
mod handoff;
mod membership;
mod naming;
mod placement;
mod policy;
mod recruit;
mod verified;
mod wire;

pub use advert::{Hosted, ResourceAdvert, Resources};
pub use federation::{
    Federation, FederationError, FederationEvent, FederationMsg, FederationSpec, Federations,
    MAX_LEASE_MS, MIN_LEASE_MS, Mine,
};
pub use gossip::{Config, Event, Gossip, Location, Output, Scope};
pub use handoff::{Handoff, MAX_HANDOFF_BYTES, SignedHandoff};
pub use membership::{Heard, PeerInfo, View};
pub use naming::{
    Filing, MAX_NAME_RECORD_BYTES, NAME_KEY_PREFIX, NameRecord, file_over, open_name, record_key,
    seal_name,
};
pub use placement::{Candidate, Need, Placement, place};
pub use policy::{Decision, PeerLoad, Placed, Placer, Policy, PolicyConfig};
pub use recruit::{LABEL_SHARDS, MAX_PROVIDERS, is_label_key, label_key};
pub use verified::Verified;
pub use wire::{
    Body, Known, MAX_DIRECT_BYTES, MAX_GOSSIP_BYTES, Message, Opened, Reject, SwarmKey, SyncEntry,
    open, seal, seal_direct,
};

pub use libp2p_identity::{Keypair, PeerId};
