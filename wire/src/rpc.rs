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

use continuum_gossip::{Reject, SwarmKey};
use continuum_migrate::{MigrationId, Outcome, ToSource, ToTarget};
use serde::{Deserialize, Serialize};

/// The peer protocols on request-response (the call lane, `lane`, is the fast path of
/// [`Protocol::Forward`]; the key proof, `auth`, has its own stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Gossip syncs, which the mesh driver answers itself.
    Sync,
    /// Component requests forwarded to their host, and the results and answers that follow
    /// a migrated component.
    Forward,
    /// A module to run here.
    Deploy,
    /// The migration handshake and its pages, and how one ended.
    Migrate,
    /// Control-API requests relayed from another node.
    Control,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::Sync,
        Protocol::Forward,
        Protocol::Deploy,
        Protocol::Migrate,
        Protocol::Control,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Sync => "/continuum/sync/1",
            Protocol::Forward => "/continuum/forward/1",
            Protocol::Deploy => "/continuum/deploy/1",
            Protocol::Migrate => "/continuum/migrate/1",
            Protocol::Control => "/continuum/control/1",
        }
    }

    /// The largest request or reply a peer may send on it: a sync is a gossip direct message
    /// (plus its envelope); a forwarded request or answer carries a request or response body;
    /// modules (deployed or sent ahead of a migration) and relayed uploads are the large ones.
    pub fn max_message(self) -> usize {
        match self {
            Protocol::Sync => continuum_gossip::MAX_DIRECT_BYTES + (4 << 10),
            Protocol::Forward => 64 << 20,
            Protocol::Deploy | Protocol::Migrate | Protocol::Control => MAX_MESSAGE,
        }
    }

    /// Streams open at once on one connection, both ways: a migration sends one step at a
    /// time, a deployment or a relayed control request is rare; forwarded requests are many.
    pub fn max_streams(self) -> usize {
        match self {
            Protocol::Sync => 16,
            Protocol::Forward => 128,
            Protocol::Deploy => 4,
            Protocol::Migrate => 16,
            Protocol::Control => 8,
        }
    }

    /// Whether only a peer that holds the swarm key may use it: running code here (a
    /// deployment, a migration in) or controlling this node; an open swarm's peers get
    /// membership and request routing only.
    pub fn needs_closed_swarm(self) -> bool {
        matches!(
            self,
            Protocol::Deploy | Protocol::Migrate | Protocol::Control
        )
    }

    /// The protocol a request belongs on.
    pub fn of(request: &Request) -> Protocol {
        match request {
            Request::Sync(_) | Request::Tell(_) => Protocol::Sync,
            Request::Forward { .. } | Request::Wake { .. } | Request::Answer { .. } => {
                Protocol::Forward
            }
            Request::Deploy { .. } => Protocol::Deploy,
            Request::Migrate(_) | Request::MigrationStatus(_) => Protocol::Migrate,
            Request::Control { .. } => Protocol::Control,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
const DOMAIN: &[u8] = b"continuum-rpc-v1";

/// What travels: a CBOR body and its swarm-key tag (none in an open swarm).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes", default, skip_serializing_if = "Option::is_none")]
    mac: Option<[u8; 32]>,
    /// What it holds of the node's budget for bytes from peers (one read from a peer).
    /// What the reader holds for this message (its share of a budget), released when the
    /// last copy of the envelope is dropped; never on the wire.
    #[serde(skip)]
    hold: Option<Hold>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A gossip direct message (see `continuum_gossip::Gossip::handle_direct`).
    Sync(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A federation message from a peer that need not be a neighbour (see
    /// `continuum_gossip::Gossip::handle_told`): taken whether or not this node has room for
    /// another neighbour.
    Tell(#[serde(with = "serde_bytes")] Vec<u8>),
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
        bounds: Bounds,
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

/// The refusal of a request that came on another kind's protocol (the caller counts it).
pub fn misplaced(on: Protocol, request: &Request) -> Reply {
    Reply::Refused {
        status: 400,
        message: format!(
            "a request for {} does not belong on {on}",
            Protocol::of(request)
        ),
    }
}

/// Envelopes larger than this are sealed and opened on the bulk pool, not on an async worker;
/// requests up to it travel on the call lane.
pub const BULK: usize = 256 << 10;

/// The largest request or reply a peer may send.
pub const MAX_MESSAGE: usize = 256 << 20;

/// Something a reader keeps alive as long as the message it read (see [`Envelope::held`]).
#[derive(Clone)]
pub struct Hold {
    /// Never read: kept for its drop.
    _kept: std::sync::Arc<dyn Send + Sync>,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// Where a component may run, as a deployment carries it: in a federation, on nodes with
/// some labels, and whether (and why) it moves on its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    #[serde(default)]
    pub federation: Option<String>,
    #[serde(default)]
    pub require: std::collections::BTreeMap<String, String>,
    /// Whether (and why) it moves on its own.
    #[serde(default)]
    pub policy: continuum_gossip::Policy,
}

impl Envelope {
    /// Keep `what` alive as long as this envelope (or a clone of it).
    pub fn hold(&mut self, what: impl Send + Sync + 'static) {
        self.hold = Some(Hold {
            _kept: std::sync::Arc::new(what),
        });
    }

    /// What the reader keeps alive with this envelope, to keep longer (until it is answered).
    pub fn held(&self) -> Option<Hold> {
        self.hold.clone()
    }

    /// The CBOR body and its tag, as the call lane frames them.
    pub fn parts(&self) -> (&[u8], Option<&[u8; 32]>) {
        (&self.body, self.mac.as_ref())
    }

    pub fn from_parts(body: Vec<u8>, mac: Option<[u8; 32]>) -> Envelope {
        Envelope {
            body,
            mac,
            hold: None,
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
            let _ = futures::executor::block_on(crate::frame::read_frame(&mut framed, 1 << 20));
        }
    }

    #[test]
    fn every_protocol_has_its_own_name_and_a_request_of_each_kind_one_home() {
        let names: std::collections::HashSet<_> = Protocol::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Protocol::ALL.len());
        assert_eq!(Protocol::of(&Request::Sync(vec![])), Protocol::Sync);
        assert_eq!(
            Protocol::of(&Request::MigrationStatus(7)),
            Protocol::Migrate
        );
        assert!(Protocol::Sync.max_message() < Protocol::Forward.max_message());
        assert!(!Protocol::Forward.needs_closed_swarm() && Protocol::Deploy.needs_closed_swarm());
    }
}
