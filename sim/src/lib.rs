//! `continuum-sim`: a deterministic discrete-event simulator of Continuum swarms. It runs the
//! unmodified sans-IO machines of `continuum-gossip` for every virtual node, over a simulated
//! network (latency from positions, loss, partitions), in virtual time: one seed reproduces a
//! whole run, and the trace hash printed at the end proves it (as TigerBeetle's VOPR does).

pub mod churn;
pub mod flash_crowd;
pub mod net;
pub mod plot;
pub mod queue;
pub mod roaming;
pub mod world;

pub use world::World;
