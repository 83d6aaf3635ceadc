//! Direct messages between nodes (libp2p request-response, CBOR): gossip syncs, component
//! requests forwarded to their host (with what a call between components carries: deadline and
//! call chain), results and answers that follow a migrated component, deployments placed on
//! another node, and the migration handshake. Every request and
//! reply is tagged with the swarm key, so a peer without it can neither ask nor answer.
//!
//! Each kind of request has a protocol of its own ([`Protocol`]), in the manner of rust-libp2p:
//! its own stream protocol, message size limit, timeout and streams per connection, so that
//! one kind cannot crowd out another (a flood of syncs does not hold up a migration) and a
//! message of one kind that comes on another's protocol is refused unread past its tag.

//!
//! The types and their sealing live in `continuum-wire` (the fuzzer reads them there).

pub use continuum_wire::rpc::*;
