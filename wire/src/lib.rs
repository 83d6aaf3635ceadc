//! What nodes say to each other directly, as bytes: the rpc envelopes (sealed with the swarm
//! key), the requests and replies they carry, one protocol per kind, and the call lane's
//! framing. A crate of its own so that the fuzzer (and anything else that must read a peer's
//! bytes) decodes them exactly as the node does, without building the node.

pub mod frame;
pub mod rpc;
