//! Protocols that tell a peer something (identify: this node's addresses and protocols;
//! Kademlia: other peers' addresses) held shut on each connection until the peer is admitted,
//! that is, in a closed swarm, until it proved it holds the swarm key: so a keyless peer
//! learns nothing from them in the seconds before it is cut off. Until then the wrapped
//! handler is not polled (it sends nothing and opens no stream) and the first few streams the
//! peer opens on its protocols are held unread, handed over once it is admitted: an honest
//! peer's identify request, opened the moment it connected, must not be lost, or this node's
//! addresses reach it only at the next identify round (minutes) and Kademlia cannot point
//! others at it. Streams past those few are dropped unread, each counted (`unproven_peer`). In
//! an open swarm there is no admission and the wrapper passes everything through.

use crate::metrics::Metrics;
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::handler::{
    ConnectionEvent, ConnectionHandlerEvent, FullyNegotiatedInbound, SubstreamProtocol,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// The peers admitted on this node: the driver admits them (see `auth::Gate`), the handlers
/// of their connections wait for it.
#[derive(Clone)]
pub struct Admission(Arc<Shared>);

struct Shared {
    state: Mutex<Admitted>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Admitted {
    peers: HashSet<PeerId>,
    /// Handlers of connections whose peer is not admitted yet, to wake when it is (one entry
    /// per live connection: a handler takes its own out when it is dropped).
    waiting: HashMap<ConnectionId, (PeerId, Waker)>,
}

impl Admission {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Admission(Arc::new(Shared {
            state: Mutex::new(Admitted::default()),
            metrics,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Admitted> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit `peer`, waking its connections' handlers; true if it was not admitted yet.
    pub fn admit(&self, peer: PeerId) -> bool {
        let mut s = self.state();
        let new = s.peers.insert(peer);
        s.waiting.retain(|_, (p, waker)| {
            if *p == peer {
                waker.wake_by_ref();
                false
            } else {
                true
            }
        });
        new
    }

    /// `peer` proves itself again before it is heard (it failed, or its last connection
    /// closed).
    pub fn revoke(&self, peer: &PeerId) {
        self.state().peers.remove(peer);
    }

    pub fn is_admitted(&self, peer: &PeerId) -> bool {
        self.state().peers.contains(peer)
    }

    /// Whether `peer` is admitted; if not, wake `cx` once it is.
    fn admitted_or_wake(&self, conn: ConnectionId, peer: PeerId, cx: &Context<'_>) -> bool {
        let mut s = self.state();
        if s.peers.contains(&peer) {
            return true;
        }
        s.waiting.insert(conn, (peer, cx.waker().clone()));
        false
    }

    fn forget(&self, conn: ConnectionId) {
        self.state().waiting.remove(&conn);
    }
}

/// A behaviour whose connections speak only to admitted peers.
pub struct Gated<B> {
    inner: B,
    admission: Option<Admission>,
}

impl<B> Gated<B> {
    /// `admission`: none in an open swarm, where every peer is heard.
    pub fn new(inner: B, admission: Option<Admission>) -> Self {
        Gated { inner, admission }
    }

    pub fn admission(&self) -> Option<&Admission> {
        self.admission.as_ref()
    }

    fn handler<H: ConnectionHandler>(
        &self,
        conn: ConnectionId,
        peer: PeerId,
        inner: H,
    ) -> GatedHandler<H> {
        GatedHandler {
            inner,
            conn,
            peer,
            admission: self.admission.clone(),
            open: self.admission.is_none(),
            held: Vec::new(),
        }
    }
}

impl<B> std::ops::Deref for Gated<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for Gated<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gated<B> {
    type ConnectionHandler = GatedHandler<B::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        conn: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(conn, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        conn: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_inbound_connection(conn, peer, local, remote)?;
        Ok(self.handler(conn, peer, inner))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        conn: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(conn, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        conn: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_outbound_connection(conn, peer, addr, role, port_use)?;
        Ok(self.handler(conn, peer, inner))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        conn: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, conn, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

/// The streams a peer not admitted yet may have waiting on one connection, per protocol:
/// identify and Kademlia each open one or two as it connects.
const MAX_HELD: usize = 4;

pub struct GatedHandler<H: ConnectionHandler> {
    inner: H,
    conn: ConnectionId,
    peer: PeerId,
    admission: Option<Admission>,
    /// The peer was admitted (once open, a connection stays open: a peer that fails is
    /// disconnected).
    open: bool,
    /// Streams the peer opened before it was admitted, unread (at most `MAX_HELD`).
    held: Vec<FullyNegotiatedInbound<H::InboundProtocol, H::InboundOpenInfo>>,
}

impl<H: ConnectionHandler> GatedHandler<H> {
    fn is_open(&mut self) -> bool {
        if !self.open {
            self.open = self
                .admission
                .as_ref()
                .is_none_or(|a| a.is_admitted(&self.peer));
        }
        self.open
    }
}

impl<H: ConnectionHandler> Drop for GatedHandler<H> {
    fn drop(&mut self) {
        if let Some(a) = &self.admission {
            a.forget(self.conn);
        }
    }
}

impl<H: ConnectionHandler> ConnectionHandler for GatedHandler<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        if !self.open {
            let admitted = self
                .admission
                .as_ref()
                .is_none_or(|a| a.admitted_or_wake(self.conn, self.peer, cx));
            if !admitted {
                return Poll::Pending;
            }
            self.open = true;
        }
        for stream in std::mem::take(&mut self.held) {
            self.inner
                .on_connection_event(ConnectionEvent::FullyNegotiatedInbound(stream));
        }
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        // Taken now, acted on once the handler is polled, that is once the peer is admitted.
        self.inner.on_behaviour_event(event)
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        if !self.is_open()
            && let ConnectionEvent::FullyNegotiatedInbound(stream) = event
        {
            if self.held.len() < MAX_HELD {
                self.held.push(stream);
            } else {
                if let Some(a) = &self.admission {
                    a.0.metrics.mesh_reject("unproven_peer");
                }
                tracing::debug!(peer = %self.peer, "a stream from a peer not admitted yet: dropped");
            }
            return;
        }
        self.inner.on_connection_event(event)
    }
}
