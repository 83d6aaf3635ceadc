//! `/continuum/deploy/1`: a module a peer asks this node to run (closed swarms only, checked
//! before it gets here), under the same admission rules as a deployment through the API.

use super::{misplaced, refused};
use crate::context::Node;
use crate::mesh::rpc::{Protocol, Reply, Request};
use continuum_gossip::PeerId;
use std::sync::Arc;

pub async fn answer(node: &Arc<Node>, from: PeerId, request: Request) -> Reply {
    let Request::Deploy {
        name,
        version,
        bounds,
        wasm,
    } = request
    else {
        return misplaced(node, Protocol::Deploy, &request);
    };
    tracing::info!(%from, component = %name, "deployment requested by a peer");
    if let Err(why) = node.name_free(&name) {
        return refused(409, why);
    }
    if let Err(why) = node.admit(&bounds, Some(&from)) {
        node.metrics.reject("deploy_refused");
        return refused(403, format!("deployment of {name} refused: {why}"));
    }
    match node.components.deploy(&name, &version, wasm, bounds).await {
        Ok(info) => {
            node.announce_components();
            Reply::Deployed(serde_json::to_vec(&info).unwrap_or_default())
        }
        Err(e) => refused(e.status(), e.to_string()),
    }
}
