//! The libp2p behaviours a node runs, composed (one file per role lives in libp2p itself).

use super::gated::Gated;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{connection_limits, identify, kad, mdns, ping, request_response};

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Connections per peer, so that one peer cannot multiply its streams by dialling again.
    pub limits: connection_limits::Behaviour,
    /// What tells a peer something is held shut until it is admitted (see `gated`).
    pub identify: Gated<identify::Behaviour>,
    pub kad: Gated<kad::Behaviour<kad::store::MemoryStore>>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// The request-response protocols, one behaviour each (see `rpc::Protocol`).
    pub sync: request_response::Behaviour<super::codec::Codec>,
    pub forward: request_response::Behaviour<super::codec::Codec>,
    pub deploy: request_response::Behaviour<super::codec::Codec>,
    pub migrate: request_response::Behaviour<super::codec::Codec>,
    pub control: request_response::Behaviour<super::codec::Codec>,
    /// The call lane's streams (see `lane`).
    pub lanes: libp2p_stream::Behaviour,
    /// Round-trip times to connected peers, for the placement policies.
    pub ping: ping::Behaviour,
}

impl Behaviour {
    /// The behaviour that speaks `p`.
    pub fn rpc(
        &mut self,
        p: super::rpc::Protocol,
    ) -> &mut request_response::Behaviour<super::codec::Codec> {
        use super::rpc::Protocol;
        match p {
            Protocol::Sync => &mut self.sync,
            Protocol::Forward => &mut self.forward,
            Protocol::Deploy => &mut self.deploy,
            Protocol::Migrate => &mut self.migrate,
            Protocol::Control => &mut self.control,
        }
    }
}
