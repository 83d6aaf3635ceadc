//! What other nodes ask of this one, one module per peer protocol (`mesh::rpc::Protocol`), in
//! the manner of rust-libp2p: `forward` (component requests, and the results and answers that
//! follow a migrated component), `deploy`, `migrate` and `control`. Syncs never get here: the
//! mesh driver answers them itself.
//!
//! Before a request reaches its protocol's module it is opened (tag first, then the body) and
//! held to the protocol's rule on who may ask; the module refuses a request of a kind its
//! protocol does not carry. Each refusal is counted.

mod control;
mod deploy;
mod forward;
mod migrate;

use crate::context::Node;
use crate::mesh::Inbound;
use crate::mesh::rpc::{Envelope, Protocol, Reply, Request};
use continuum_gossip::PeerId;
use std::sync::Arc;
use tracing::Instrument;

/// Answer what other nodes ask of this one, on request-response and on the call lanes they
/// open (which carry the forward protocol's small requests).
pub async fn serve(node: Arc<Node>, incoming: crate::mesh::Incoming) {
    let n = node.clone();
    let busy = node
        .mesh
        .seal_reply(Reply::Refused {
            status: 503,
            message: "node is overloaded".into(),
        })
        .await;
    let lanes = crate::mesh::lane::accept(
        incoming.lanes,
        move |from, envelope| {
            let node = n.clone();
            async move {
                let reply = answer(&node, from, Protocol::Forward, envelope).await;
                node.mesh.seal_reply(reply).await
            }
            .in_current_span()
        },
        busy,
        node.metrics.clone(),
    );
    tokio::spawn(lanes.in_current_span());
    let mut requests = incoming.requests;
    while let Some(Inbound {
        from,
        protocol,
        envelope,
        channel,
    }) = requests.recv().await
    {
        let node = node.clone();
        tokio::spawn(
            async move {
                // What the request holds of the budget for peers' bytes, until it is answered.
                let held = envelope.held();
                let reply = answer(&node, from, protocol, envelope).await;
                node.mesh.respond(protocol, channel, reply).await;
                drop(held);
            }
            .in_current_span(),
        );
    }
}

/// Open a request that came on `protocol`, check that `from` may ask it there, and answer it.
async fn answer(node: &Arc<Node>, from: PeerId, protocol: Protocol, envelope: Envelope) -> Reply {
    let request = match node.mesh.open::<Request>(envelope).await {
        Ok(request) => request,
        Err(e) => {
            tracing::debug!(%from, "refused a request from a peer: {e}");
            return refused(403, e.to_string());
        }
    };
    if protocol.needs_closed_swarm() && node.swarm_key.is_none() {
        node.metrics.reject(match protocol {
            Protocol::Control => "remote_control",
            _ => "open_swarm_peer",
        });
        return refused(
            403,
            format!(
                "this node takes {protocol} from peers only in a swarm closed by a key (`continuum keygen`, then `--swarm-key` on every node): an open swarm's peers get membership and request routing only"
            ),
        );
    }
    match protocol {
        Protocol::Forward => forward::answer(node, from, request).await,
        Protocol::Deploy => deploy::answer(node, from, request).await,
        Protocol::Migrate => migrate::answer(node, from, request).await,
        Protocol::Control => control::answer(node, from, request).await,
        // The driver answers syncs itself.
        Protocol::Sync => Reply::Synced,
    }
}

fn refused(status: u16, message: String) -> Reply {
    Reply::Refused { status, message }
}

/// What a protocol's module answers to a request of a kind it does not carry, counted.
fn misplaced(node: &Node, on: Protocol, request: &Request) -> Reply {
    node.metrics.mesh_reject("wrong_protocol");
    crate::mesh::rpc::misplaced(on, request)
}
