//! `continuum-sim`: a deterministic discrete-event simulator of Continuum swarms. It runs the
//! unmodified sans-IO machines of `continuum-gossip` for every virtual node, over a simulated
//! network (latency from positions, loss, partitions), in virtual time: one seed reproduces a
//! whole run, and the trace hash printed at the end proves it (as TigerBeetle's VOPR does).

pub mod churn;
pub mod flash_crowd;
pub mod migration;
pub mod net;
pub mod plot;
pub mod queue;
pub mod roaming;
pub mod world;

pub use world::World;

/// A virtual node's identity, derived from the seed so that runs with one seed share them.
pub fn identity(seed: u64, role: &str, i: usize) -> continuum_gossip::Keypair {
    let h = blake3::hash(format!("{seed}/{role}/{i}").as_bytes());
    continuum_gossip::Keypair::ed25519_from_bytes(*h.as_bytes()).expect("32 bytes make a key")
}
