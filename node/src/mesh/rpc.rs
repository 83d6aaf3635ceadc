//! Direct messages between nodes (libp2p request-response, CBOR): gossip syncs, component
//! requests forwarded to their host (with what a call between components carries: deadline and
//! call chain), results and answers that follow a migrated component, deployments placed on
//! another node, and the migration handshake. Every request and
//! reply is tagged with the swarm key, so a peer without it can neither ask nor answer.

use continuum_gossip::{Reject, SwarmKey};
use continuum_migrate::{MigrationId, Outcome, ToSource, ToTarget};

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever bytes a peer sends as an envelope, a call-lane frame or a request body,
        /// they are opened or refused, never a panic (cargo-fuzz covers the libraries; this
        /// covers the node's own decoders on the stable toolchain).
        #[test]
        fn any_bytes_from_a_peer_are_opened_or_refused(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            tagged in proptest::bool::ANY,
        ) {
            let key = SwarmKey::new([5; 32]);
            let mac = tagged.then(|| key.tag(&[DOMAIN, &body]));
            let env = Envelope::from_parts(body.clone(), mac);
            let _ = open::<Request>(Some(&key), &env);
            let _ = open::<Reply>(Some(&key), &env);
            let _ = open::<Request>(None, &Envelope::from_parts(body.clone(), None));
            let mut framed = &body[..];
            let _ = futures::executor::block_on(super::super::lane::read_frame(&mut framed, 1 << 20));
        }
    }

    #[test]
    fn syncs_are_told_by_their_first_bytes() {
        assert!(is_sync(&seal(None, &Request::Sync(vec![1, 2, 3]))));
        assert!(!is_sync(&seal(None, &Request::MigrationStatus(7))));
        assert!(!is_sync(&seal(
            None,
            &Request::Wake {
                name: "Sync".into(),
                op: 1,
                result: vec![],
                hops: 0
            }
        )));
    }
}
use serde::{Deserialize, Serialize};

pub const PROTOCOL: &str = "/continuum/rpc/1";
const DOMAIN: &[u8] = b"continuum-rpc-v1";

/// What travels: a CBOR body and its swarm-key tag (none in an open swarm).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes", default, skip_serializing_if = "Option::is_none")]
    mac: Option<[u8; 32]>,
    /// What it holds of the node's budget for bytes from peers (one read from a peer).
    #[serde(skip)]
    pub(crate) charge: Option<std::sync::Arc<super::codec::Charge>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A gossip direct message (see `continuum_gossip::Gossip::handle_direct`).
    Sync(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A request for component `name`, in the guest ABI's encoding.
    Forward {
        name: String,
        /// How many nodes passed it on before this one.
        #[serde(default)]
        hops: u8,
        /// The peer where the request entered the mesh (for placement policies).
        #[serde(default)]
        entry: Option<String>,
        #[serde(with = "serde_bytes")]
        request: Vec<u8>,
        /// Time left to answer it (a call from a component; none for a client's request).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<std::time::Duration>,
        /// The components whose calls led to it, outermost first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        chain: Vec<String>,
    },
    /// The result of call `op` that component `name` made: it lives here now, or further on.
    Wake {
        name: String,
        op: u64,
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
        hops: u8,
    },
    /// The answer to a request whose client waits on this node (under `key`): its component
    /// migrated while it was in flight.
    Answer {
        key: u64,
        #[serde(with = "serde_bytes")]
        response: Vec<u8>,
    },
    /// Deploy a module here.
    Deploy {
        name: String,
        version: String,
        #[serde(default)]
        bounds: crate::components::Bounds,
        #[serde(with = "serde_bytes")]
        wasm: Vec<u8>,
    },
    /// A step of a migration to this node (this node is the target).
    Migrate(ToTarget),
    /// How a migration from this node ended (a target that got no Commit asks).
    MigrationStatus(MigrationId),
    /// A control-API request relayed from another node (path below `/v1/`, with its query).
    Control {
        method: String,
        path: String,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Synced,
    /// The component's answer, in the guest ABI's encoding.
    Forwarded(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The deployed component, as the control API describes it (JSON).
    Deployed(#[serde(with = "serde_bytes")] Vec<u8>),
    Migrate(ToSource),
    MigrationStatus(Outcome),
    /// The control API's answer to a relayed request.
    Control {
        status: u16,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Refused, and why (an HTTP status and a message).
    Refused {
        status: u16,
        message: String,
    },
}

/// Whether an envelope holds a gossip sync, which the mesh driver answers itself: told by its
/// first bytes (a one-entry CBOR map keyed "Sync", as `Request::Sync` encodes) without decoding
/// the rest. The driver hands everything else on sealed.
pub fn is_sync(env: &Envelope) -> bool {
    env.body.starts_with(&[0xA1, 0x64, b'S', b'y', b'n', b'c'])
}

/// Envelopes larger than this are sealed and opened on the bulk pool, not on an async worker;
/// requests up to it travel on the call lane.
pub const BULK: usize = 256 << 10;

/// The largest request or reply a peer may send.
pub const MAX_MESSAGE: usize = 256 << 20;

impl Envelope {
    /// The CBOR body and its tag, as the call lane frames them.
    pub fn parts(&self) -> (&[u8], Option<&[u8; 32]>) {
        (&self.body, self.mac.as_ref())
    }

    pub fn from_parts(body: Vec<u8>, mac: Option<[u8; 32]>) -> Envelope {
        Envelope {
            body,
            mac,
            charge: None,
        }
    }

    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

impl Request {
    /// Whether it may carry much data (module bytes, pages, a request body).
    pub fn is_bulk(&self) -> bool {
        match self {
            Request::Deploy { .. } => true,
            Request::Migrate(m) => !matches!(
                m,
                ToTarget::Offer(_) | ToTarget::Commit { .. } | ToTarget::Abort { .. }
            ),
            Request::Forward { request, .. } => request.len() > BULK,
            Request::Wake { result, .. } => result.len() > BULK,
            Request::Answer { response, .. } => response.len() > BULK,
            Request::Control { body, .. } => body.len() > BULK,
            _ => false,
        }
    }
}

pub fn seal<T: Serialize>(key: Option<&SwarmKey>, value: &T) -> Envelope {
    let mut body = Vec::new();
    ciborium::into_writer(value, &mut body).expect("writing to a Vec cannot fail");
    let mac = key.map(|k| k.tag(&[DOMAIN, &body]));
    Envelope::from_parts(body, mac)
}

pub fn open<T: serde::de::DeserializeOwned>(
    key: Option<&SwarmKey>,
    env: &Envelope,
) -> Result<T, Reject> {
    match (key, env.mac) {
        (Some(k), Some(mac)) if k.tag(&[DOMAIN, &env.body]) == mac => {}
        (None, None) => {}
        _ => return Err(Reject::SwarmKey),
    }
    ciborium::from_reader(env.body.as_slice()).map_err(|e| Reject::Malformed(format!("rpc: {e}")))
}
