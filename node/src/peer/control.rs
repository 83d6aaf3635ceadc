//! `/continuum/control/1`: a control-API request relayed by another node of a closed swarm
//! (the CLI can reach a whole swarm through one node), answered as the API would.

use super::{misplaced, refused};
use crate::context::Node;
use crate::mesh::rpc::{Protocol, Reply, Request};
use continuum_gossip::PeerId;
use std::sync::Arc;

pub async fn answer(node: &Arc<Node>, from: PeerId, request: Request) -> Reply {
    let Request::Control { method, path, body } = request else {
        return misplaced(node, Protocol::Control, &request);
    };
    tracing::info!(%from, %method, %path, "control request relayed by a peer");
    let rest = path.split('?').next().unwrap_or_default().to_string();
    let req = ::http::Request::builder()
        .method(method.as_str())
        .uri(format!("/v1/{path}"))
        .body(bytes::Bytes::from(body));
    match req {
        Ok(req) => {
            let resp = crate::http::control::dispatch(node, &rest, req).await;
            Reply::Control {
                status: resp.status().as_u16(),
                body: resp.into_body().to_vec(),
            }
        }
        Err(e) => refused(400, format!("relayed control request did not parse: {e}")),
    }
}
