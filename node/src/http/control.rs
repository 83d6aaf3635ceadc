//! The control API under `/v1/`: JSON in and out, bearer token from `DATA_DIR/admin.token`.
//!
//! ```text
//! GET    /v1/status                           this node
//! GET    /v1/components                       every component
//! GET    /v1/components/NAME                  one component
//! PUT    /v1/components/NAME?version=V        deploy (body: the module)
//! DELETE /v1/components/NAME                  remove
//! POST   /v1/components/NAME/checkpoint[?module=true]   a snapshot (CBOR body)
//! POST   /v1/restore[?name=NAME]              restore (body: a snapshot)
//! POST   /v1/components/NAME/migrate          live migration (JSON: to = PEER_ID|auto, stop_and_copy); 202
//! PUT    /v1/components/NAME/update[?version=V]   live update (body: the new module)
//! GET    /v1/migrations[/ID]                  migrations from this node, their progress
//! GET    /v1/federations                      federations this node knows
//! POST   /v1/federations                      propose one (JSON: name, objective, require, min_members, lease_ms)
//! POST   /v1/federations/NAME/join|leave
//!
//! `PUT /v1/components/NAME?on=PEER_ID` deploys on another node of the mesh. In a swarm closed
//! by a key, migrate, update, checkpoint and remove of a component hosted elsewhere (and the
//! progress of a migration started that way) are relayed to its host.
//! ```

use crate::components::{ApiError, Bounds, ComponentInfo};
use crate::context::Node;
use crate::mesh::{FederationOp, MeshError};
use crate::migration;
use bytes::Bytes;
use continuum_gossip::{FederationSpec, PeerId};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The 401 for a control request without the right token (counted).
pub fn unauthorized(node: &Node) -> Response<Bytes> {
    node.metrics.reject("unauthorized");
    let mut r = error(&ApiError::BadRequest(
        "missing or wrong bearer token: send `Authorization: Bearer TOKEN` with the token in DATA_DIR/admin.token".into(),
    ));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// A request from a client; both servers checked its token before reading its body
/// (`http::precheck`).
pub async fn handle(node: &Arc<Node>, rest: &str, req: Request<Bytes>) -> Response<Bytes> {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(host) = relay_target(node, req.method(), &segments) {
        return relay(node, host, rest, req).await;
    }
    dispatch(node, rest, req).await
}

/// Where to carry out a request on a component this node does not host (or on a migration
/// it did not start): its host's node, if the swarm is closed (the swarm key then vouches for
/// both nodes; an open swarm does not take orders from strangers).
fn relay_target(node: &Node, method: &Method, segments: &[&str]) -> Option<PeerId> {
    node.swarm_key.as_ref()?;
    let name = match (method, segments) {
        (&Method::POST, ["components", name, "migrate" | "checkpoint"])
        | (&Method::PUT | &Method::POST, ["components", name, "update"])
        | (&Method::DELETE, ["components", name]) => *name,
        (&Method::GET, ["migrations", id]) => {
            let id = id.parse().ok()?;
            if node.migrations.progress(id).is_some() {
                return None;
            }
            return node.migrations.relayed(id);
        }
        _ => return None,
    };
    if node.components.get(name).is_some() {
        return None;
    }
    node.mesh
        .locate(name)
        .map(|l| l.host)
        .filter(|h| *h != node.mesh.me())
}

/// Carry out a control request on another node of the mesh; its answer comes back as is.
async fn relay(node: &Node, host: PeerId, rest: &str, req: Request<Bytes>) -> Response<Bytes> {
    let path = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let method = req.method().to_string();
    match node
        .mesh
        .control(host, method, path, req.into_body().to_vec())
        .await
    {
        Ok((status, body)) => {
            // A migration started over there is followed over there.
            if let Ok(p) = serde_json::from_slice::<crate::migration::Progress>(&body) {
                node.migrations.relay(p.id, host);
            }
            let mut r = Response::new(Bytes::from(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(MeshError::Refused(status, m)) => error(&match status {
            403 => ApiError::Conflict(m),
            _ => ApiError::Internal(m),
        }),
        Err(e) => error(&ApiError::Internal(format!(
            "the host of that component, {host}, did not answer: {e}"
        ))),
    }
}

/// Route one authorised control request (from a client, or relayed by another node).
pub async fn dispatch(node: &Arc<Node>, rest: &str, req: Request<Bytes>) -> Response<Bytes> {
    let query_all = |key: &str| -> Vec<String> {
        let q = req.uri().query().unwrap_or_default();
        q.split('&')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == key).then(|| v.to_string())
            })
            .collect()
    };
    let query = |key: &str| query_all(key).into_iter().next();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, ["status"]) => Ok(json(StatusCode::OK, &node.status())),
        (&Method::GET, ["components"]) => Ok(json(StatusCode::OK, &node.all_components())),
        (&Method::GET, ["components", name]) => node
            .all_components()
            .into_iter()
            .find(|c| c.name == *name)
            .map(|c| json(StatusCode::OK, &c))
            .ok_or_else(|| ApiError::NotFound(format!("no component named {name} on this node"))),
        (&Method::PUT | &Method::POST, ["components", name]) => {
            let version = query("version").unwrap_or_else(|| "1".into());
            let on = query("on").filter(|p| *p != node.peer_id);
            let policy = match query("policy").unwrap_or_default().parse() {
                Ok(p) => p,
                Err(e) => return error(&ApiError::BadRequest(e)),
            };
            let mut bounds = Bounds {
                federation: query("federation").filter(|f| !f.is_empty()),
                require: Default::default(),
                policy,
            };
            for kv in query_all("require") {
                match kv.split_once('=') {
                    Some((k, v)) if !k.is_empty() => {
                        bounds.require.insert(k.to_string(), v.to_string());
                    }
                    _ => {
                        return error(&ApiError::BadRequest(format!(
                            "invalid require={kv}: want KEY=VALUE"
                        )));
                    }
                }
            }
            let wasm = req.into_body().to_vec();
            if let Err(why) = node.name_free(name) {
                return error(&ApiError::Conflict(why));
            }
            match on {
                Some(peer) => deploy_on(node, &peer, name, &version, bounds, wasm).await,
                None => match node.admit(&bounds, None) {
                    Ok(()) => node.components.deploy(name, &version, wasm, bounds).await,
                    Err(why) => Err(ApiError::Conflict(format!(
                        "component {name} cannot run here: {why}"
                    ))),
                },
            }
            .map(|info| {
                node.announce_components();
                json(StatusCode::CREATED, &info)
            })
        }
        (&Method::DELETE, ["components", name]) => node.components.remove(name).await.map(|()| {
            node.announce_components();
            json(StatusCode::OK, &serde_json::json!({ "removed": name }))
        }),
        (&Method::POST, ["components", name, "checkpoint"]) => {
            let with_module = matches!(query("module").as_deref(), Some("true" | "1"));
            node.components
                .checkpoint(name, with_module)
                .await
                .map(|bytes| {
                    let mut r = Response::new(Bytes::from(bytes));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/cbor"),
                    );
                    r
                })
        }
        (&Method::POST, ["restore"]) => {
            let name = query("name");
            node.components
                .restore(name.as_deref(), req.into_body())
                .await
                .map(|info| {
                    node.announce_components();
                    json(StatusCode::OK, &info)
                })
        }
        (&Method::POST, ["components", name, "migrate"]) => {
            match serde_json::from_slice::<MigrateRequest>(req.body()) {
                Ok(m) => match migration::resolve_target(node, name, &m.to) {
                    Ok(to) => migration::start(node, name, to, m.stop_and_copy)
                        .await
                        .map(|p| json(StatusCode::ACCEPTED, &p)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(ApiError::BadRequest(format!(
                    "invalid migration request (want {{\"to\": PEER_ID|\"auto\", \"stop_and_copy\": bool}}): {e}"
                ))),
            }
        }
        (&Method::PUT | &Method::POST, ["components", name, "update"]) => {
            let version = query("version");
            node.components
                .update(name, version.as_deref(), req.into_body().to_vec())
                .await
                .map(|info| {
                    node.announce_components();
                    json(StatusCode::OK, &info)
                })
        }
        (&Method::GET, ["migrations"]) => Ok(json(StatusCode::OK, &node.migrations.list())),
        (&Method::GET, ["migrations", id]) => id
            .parse()
            .ok()
            .and_then(|id| node.migrations.progress(id))
            .map(|p| json(StatusCode::OK, &p))
            .ok_or_else(|| ApiError::NotFound(format!("no migration {id} from this node"))),
        (&Method::GET, ["federations"]) => {
            Ok(json(StatusCode::OK, &node.mesh.snapshot().federations))
        }
        (&Method::POST, ["federations"]) => {
            match serde_json::from_slice::<FederationSpec>(req.body()) {
                Ok(spec) => federate(node, FederationOp::Create(spec)).await,
                Err(e) => Err(ApiError::BadRequest(format!("invalid federation: {e}"))),
            }
        }
        (&Method::POST, ["federations", name, "join"]) => {
            federate(node, FederationOp::Join(name.to_string())).await
        }
        (&Method::POST, ["federations", name, "leave"]) => {
            federate(node, FederationOp::Leave(name.to_string())).await
        }
        _ => Err(ApiError::NotFound(format!(
            "no control endpoint {method} /v1/{rest}"
        ))),
    };
    result.unwrap_or_else(|e| error(&e))
}

/// `POST /v1/components/NAME/migrate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateRequest {
    /// A peer id, or `auto`.
    to: String,
    #[serde(default)]
    stop_and_copy: bool,
}

async fn deploy_on(
    node: &Node,
    peer: &str,
    name: &str,
    version: &str,
    bounds: Bounds,
    wasm: Vec<u8>,
) -> Result<ComponentInfo, ApiError> {
    let peer: PeerId = peer
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("invalid peer id {peer:?}: {e}")))?;
    node.mesh
        .deploy(peer, name, version, bounds, wasm)
        .await
        .map_err(|e| match e {
            MeshError::Refused(404, m) => ApiError::NotFound(m),
            MeshError::Refused(409, m) => ApiError::Conflict(m),
            MeshError::Refused(422, m) => ApiError::Unprocessable(m),
            MeshError::Refused(400, m) => ApiError::BadRequest(m),
            MeshError::Refused(403, m) => ApiError::Conflict(m),
            e => ApiError::Internal(format!("deploying on {peer}: {e}")),
        })
}

async fn federate(node: &Node, op: FederationOp) -> Result<Response<Bytes>, ApiError> {
    node.mesh
        .federate(op)
        .await
        .map(|()| json(StatusCode::OK, &node.mesh.snapshot().federations))
        .map_err(ApiError::BadRequest)
}

/// Whether the request carries `Authorization: Bearer TOKEN` (the scheme in any case, as RFC
/// 9110 has it), compared in constant time so the token cannot be guessed byte by byte from
/// timings.
pub fn authorized(token: &str, headers: &http::HeaderMap) -> bool {
    let Some((scheme, got)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
    else {
        return false;
    };
    let got = got.trim_start();
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    got.len() == token.len()
        && got
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Bytes> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(e: &ApiError) -> Response<Bytes> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, &serde_json::json!({ "error": e.to_string() }))
}
