//! How a component reaches the rest of the mesh (ABI v2): the node implements [`Router`], the
//! component's thread uses it to start the calls its guest makes, to park the answers of
//! requests that moved with it, and to send results on to where it lives now.

use super::actor::{Back, ComponentHandle, ReplyTo};
use continuum_gossip::PeerId;
use continuum_guest::{CallError as GuestCallError, Request, Response};
use std::sync::Arc;
use std::time::Instant;

/// Marks an answer the mesh made (not the component): `unknown`, `deadline`, `loop`,
/// `overloaded`, `unreachable`, `trap`, ... A caller tells a component's own 404 from "no such
/// component" by it, on any node.
pub const ERROR_HEADER: &str = "x-continuum-error";

/// Set by the host on a call from another component: its name. Never taken from a client.
pub const CALLER_HEADER: &str = "x-continuum-caller";
/// The header that names the node that served a request (the host sets it, never the
/// component).
pub const HOST_HEADER: &str = "x-continuum-host";

/// What travels with a request besides itself, from node to node.
#[derive(Clone, Debug)]
pub struct CallCtx {
    /// When it must be answered by. `None` for a client's request: it gets `--call-timeout`
    /// from when it starts to run, however long it queued (behind a migration, say).
    pub deadline: Option<Instant>,
    /// The components whose calls led here, outermost first.
    pub chain: Vec<String>,
    /// The peer where the request entered the mesh.
    pub entry: PeerId,
    /// How many times nodes passed it on.
    pub hops: u8,
}

impl CallCtx {
    pub fn client(entry: PeerId) -> CallCtx {
        CallCtx {
            deadline: None,
            chain: Vec::new(),
            entry,
            hops: 0,
        }
    }
}

pub trait Router: Send + Sync {
    fn me(&self) -> PeerId;
    /// Start call `op` of component `from` to component `to`; its result must come back
    /// through `back`, once.
    fn call(&self, from: &str, to: String, req: Request, ctx: CallCtx, op: u64, back: Back);
    /// The component `to` if it runs on this node (and no newer copy runs elsewhere), for a
    /// call from `from` that may then go straight to its thread.
    fn local(&self, from: &str, to: &str) -> Option<Arc<ComponentHandle>>;
    /// Keep `reply` under `key` until `deadline` (and a while after): the request's answer
    /// will come back through [`Router::answer`] (from whichever node the component lives on
    /// by then).
    fn park(&self, key: u64, reply: ReplyTo, deadline: Instant);
    /// A request ended; `node` parked its reply under `key`.
    fn answer(&self, node: PeerId, key: u64, resp: Response);
    /// The result of operation `op` of component `name`, which lives on `to` now.
    fn forward_wake(&self, to: PeerId, name: &str, op: u64, result: Vec<u8>);
    /// A key for [`Router::park`] that no other request shares.
    fn new_key(&self) -> u64;
}

/// Why a call that came back along its own chain to a component with too many of `what` gets
/// 508 rather than a wait (it would wait for itself).
pub fn came_back(chain: &[String], name: &str, what: &str) -> String {
    format!(
        "call chain {} came back to {name}, which cannot take it now (too many {what})",
        chain.join(" -> ")
    )
}

/// A failure the node answers with, tagged with its kind.
pub fn error_response(kind: &str, status: u16, message: impl Into<String>) -> Response {
    let mut body = message.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    Response::text(status, body).header(ERROR_HEADER, kind)
}

/// The kind of a failure the mesh answered with, if the response is one.
pub fn error_kind(resp: &Response) -> Option<&str> {
    resp.header_value(ERROR_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// A response as a component sees the result of its call: the mesh's failures are values.
pub fn call_result(resp: Response) -> Result<Response, GuestCallError> {
    let Some(kind) = error_kind(&resp) else {
        return Ok(resp);
    };
    let message = resp.body_text().trim_end().to_string();
    Err(match kind {
        "unknown" => GuestCallError::NotFound(message),
        "deadline" => GuestCallError::Deadline(message),
        "loop" => GuestCallError::Loop(message),
        _ => GuestCallError::Refused(resp.status, message),
    })
}
