//! Where a request for a component goes: to the local instance if it lives here, else through
//! the mesh to its host, following migrations, with every failure made an answer. One path for
//! every request, whether it came from an HTTP client, from another node or from another
//! component's call.

use crate::context::Node;
use crate::mesh::MeshError;
use crate::runtime::router::HOST_HEADER;
use crate::runtime::{CallCtx, Unavailable, error_response};
use continuum_gossip::PeerId;
use continuum_guest::{Request as GuestRequest, Response as GuestResponse, abi};
use std::sync::atomic::Ordering;

/// How many times one request may be passed on between nodes (a component that moved on,
/// news of it on its way), so a stale view can never bounce a request around forever.
pub const MAX_HOPS: u8 = 4;

/// Longest a request from a client may wait for its component, queueing included, before the
/// node gives up on it: a safety net, for an answer lost with a node. A migration in doubt
/// holds requests through every one of its asks; once a request runs, `--call-timeout` bounds
/// it.
fn patience(node: &Node) -> std::time::Duration {
    (continuum_migrate::IN_DOUBT_ASKS + 2) * node.config.migration_timeout
        + node.config.limits.call_timeout
}

/// Serve a request for component `name`: here if it lives here, else at its host (which a
/// migration may have just changed: a request held during the switch follows the component).
/// Every failure becomes an answer, the same whether the request came from a local client, from
/// another node or from another component, tagged (`x-continuum-error`) when the mesh made it.
/// The answer names the node that served it in `x-continuum-host`. `ctx` carries where the
/// request entered the mesh (the placement policies count it), its deadline and the chain of
/// components whose calls led to it.
pub async fn serve(node: &Node, name: &str, req: GuestRequest, ctx: CallCtx) -> GuestResponse {
    let here = &node.peer_id;
    let fail =
        |kind: &str, status: u16, msg: String| with_host(error_response(kind, status, msg), here);
    if ctx.chain.len() >= node.config.limits.max_call_depth {
        node.metrics.reject("call_chain_too_deep");
        return fail(
            "loop",
            508,
            format!(
                "call chain deeper than {}: {} -> {name}",
                node.config.limits.max_call_depth,
                ctx.chain.join(" -> ")
            ),
        );
    }
    let mut req = req;
    settle_after_start(node).await;
    // A live update replaces the component here while the request waits: it comes back and
    // goes to the new version.
    while let Some(handle) = node.components.get(name) {
        // A copy this node brought back from disk may have moved on while the node was down:
        // the mesh knows the newer one by its epoch.
        let epoch = handle.stats.epoch.load(Ordering::Relaxed);
        if let Some((newer, _)) = node.mesh.newer_host(name, epoch) {
            return forward(node, newer, name, req, ctx).await;
        }
        // Requests from clients pull a component toward where they enter; calls from other
        // components do not (the caller comes to its data instead), so two components never
        // chase each other.
        if handle.policy != continuum_gossip::Policy::Pinned && ctx.chain.is_empty() {
            let now = node.started.elapsed().as_millis() as u64;
            node.placer.lock().unwrap().record(now, name, ctx.entry);
        }
        let patience = match ctx.deadline {
            Some(d) => d.saturating_duration_since(std::time::Instant::now()) + GRACE,
            None => patience(node),
        };
        let answer = tokio::time::timeout(patience, handle.call(req, ctx.clone())).await;
        let Ok(answer) = answer else {
            return fail(
                "deadline",
                504,
                format!("component {name} did not answer within {patience:?}"),
            );
        };
        match answer {
            Ok(Ok(r)) => return with_host(r, here),
            Ok(Err(e)) => {
                return fail(e.outcome(), e.status(), format!("component {name}: {e}"));
            }
            Err(Unavailable::Moved { to, req: back, .. }) if to == node.mesh.me() => {
                req = *back;
            }
            Err(Unavailable::Moved { to, req, .. }) => {
                return forward(node, to, name, *req, ctx).await;
            }
            Err(Unavailable::Overloaded(_)) if ctx.chain.iter().any(|n| n == name) => {
                let why = crate::runtime::router::came_back(&ctx.chain, name, "requests waiting");
                return fail("loop", 508, why);
            }
            Err(e) => {
                let mut r = fail("overloaded", 503, e.to_string());
                r.headers.push(("retry-after".into(), b"1".to_vec()));
                return r;
            }
        }
    }
    match locate(node, name).await {
        Some(host) => forward(node, host, name, req, ctx).await,
        None => {
            node.metrics.reject("unknown_component");
            fail(
                "unknown",
                404,
                format!("no component named {name} in this mesh"),
            )
        }
    }
}

/// A caller waits this much past its callee's deadline, so that the callee's own 504 (which
/// says where it happened) reaches it first.
const GRACE: std::time::Duration = std::time::Duration::from_millis(5);

/// Right after a start, a node that has peers to join waits (up to `route_wait`) until it has
/// heard from one, so that it does not serve a copy the mesh knows to be stale.
async fn settle_after_start(node: &Node) {
    if node.config.join.is_empty() {
        return;
    }
    while node.started.elapsed() < node.config.route_wait && node.mesh.snapshot().peers.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Pass a request on to the node that hosts the component.
async fn forward(
    node: &Node,
    host: PeerId,
    name: &str,
    req: GuestRequest,
    ctx: CallCtx,
) -> GuestResponse {
    let at = host.to_string();
    if ctx.hops >= MAX_HOPS {
        node.metrics.reject("too_many_hops");
        let mut r = with_host(
            error_response(
                "unreachable",
                503,
                format!(
                    "request for {name} passed between nodes {} times; the mesh's view of it is settling, try again",
                    ctx.hops
                ),
            ),
            &node.peer_id,
        );
        r.headers.push(("retry-after".into(), b"1".to_vec()));
        return r;
    }
    node.metrics
        .forwarded
        .get_or_create(&crate::metrics::DirectionLabels { direction: "out" })
        .inc();
    let patience = match ctx.deadline {
        Some(d) => d.saturating_duration_since(std::time::Instant::now()) + GRACE,
        None => patience(node),
    };
    let sent = node
        .mesh
        .forward(host, name, &ctx, abi::encode_request(&req));
    let answer = match tokio::time::timeout(patience, sent).await {
        Err(_) => error_response(
            "deadline",
            504,
            format!("component {name} on {at} did not answer within {patience:?}"),
        ),
        Ok(Ok(bytes)) => abi::decode_response(&bytes).unwrap_or_else(|e| {
            error_response(
                "unreachable",
                502,
                format!("host {at} answered for {name} with a malformed response: {e}"),
            )
        }),
        Ok(Err(MeshError::Refused(status, message))) => error_response("refused", status, message),
        Ok(Err(e)) => error_response(
            "unreachable",
            502,
            format!("component {name} is hosted on {at}, which did not answer: {e}"),
        ),
    };
    // A host that sent the request on, or did not answer, is not where the name is now: look
    // again (scoped to neighbours; else the gossip tells). Otherwise keep the name fresh.
    let served_by = answer.headers.iter().find(|(k, _)| k == HOST_HEADER);
    let moved = served_by.is_some_and(|(_, v)| v.as_slice() != at.as_bytes());
    let lost = matches!(
        crate::runtime::router::error_kind(&answer),
        Some("unreachable" | "deadline" | "unknown")
    );
    node.mesh.find_name(name, moved || lost);
    // The host names itself; an answer that does not (a refusal, a lost peer) names the peer
    // it came from.
    if served_by.is_some() {
        answer
    } else {
        with_host(answer, &at)
    }
}

/// Where a component this node does not host is: the newest of what the gossip says and
/// where it went from here. Waits up to `route_wait` for news of it (its host's advert may be
/// on its way) when the node has peers at all.
pub async fn locate(node: &Node, name: &str) -> Option<PeerId> {
    let deadline = tokio::time::Instant::now() + node.config.route_wait;
    let mut asked = false;
    loop {
        let gossip = node.mesh.locate(name).filter(|l| l.host != node.mesh.me());
        let moved = node.components.moved_to(name);
        match (gossip, moved) {
            (Some(l), Some((_, epoch))) if l.epoch > epoch => return Some(l.host),
            (_, Some((to, _))) => return Some(to),
            (Some(l), None) => return Some(l.host),
            (None, None) => {}
        }
        let alone = node.mesh.snapshot().peers.is_empty() && node.config.join.is_empty();
        if alone || tokio::time::Instant::now() >= deadline {
            return None;
        }
        // Not in the neighbourhood: its host's record in the table.
        if !asked {
            node.mesh.find_name(name, true);
            asked = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Name the node that answered, replacing whatever the component itself put there.
fn with_host(mut resp: GuestResponse, host: &str) -> GuestResponse {
    resp.headers.retain(|(k, _)| k != HOST_HEADER);
    resp.header(HOST_HEADER, host)
}
