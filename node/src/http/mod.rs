//! The HTTP surface (ARCHITECTURE.md §5). HTTP/1.1 and HTTP/3 servers collect a request with
//! its body (bounded) and hand it to the one router here, so both protocols behave alike:
//!
//! - `/c/NAME/REST...` → component NAME; the answer carries `x-continuum-host`;
//! - `/v1/...` → the control API (bearer token);
//! - `/metrics` → Prometheus text.

mod conns;
pub(crate) mod control;
pub mod h1;
pub mod h3;

use crate::context::Node;
use crate::mesh::MeshError;
use crate::runtime::router::CALLER_HEADER;
use crate::runtime::{CallCtx, Unavailable, error_response};
use bytes::Bytes;
use continuum_gossip::PeerId;
use continuum_guest::{Request as GuestRequest, Response as GuestResponse, abi};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use std::sync::atomic::Ordering;

pub const HOST_HEADER: &str = "x-continuum-host";

/// The protocol a request came in on, for metrics.
#[derive(Clone, Copy, Debug)]
pub enum Proto {
    H1,
    H3,
}

impl Proto {
    fn label(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H3 => "h3",
        }
    }
}

/// Largest body accepted for a request to `path`: uploads of modules and snapshots go to the
/// control API, everything else to components.
pub fn body_limit(node: &Node, path: &str) -> usize {
    let limits = &node.config.limits;
    if path.starts_with("/v1/") {
        limits.max_upload.as_u64() as usize
    } else {
        limits.max_body.as_u64() as usize
    }
}

/// A body over its limit is still read (and dropped) up to this size, so that a client still
/// writing gets the 413 rather than a reset; past it the server stops reading.
pub const DRAIN_MAX: u64 = 64 << 20;

/// Longest wait for the next piece of a request body: a client that stalls mid-body gets 408
/// and loses the connection, instead of holding its buffer for ever.
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What both servers check before they read a byte of the body: the control API's token (a
/// client without it is refused at once, its body unread) and the declared length against the
/// limit. Ok: the collector for the body, which allocates at once what an upload whose token
/// checked declares (anyone else's body grows as it arrives, never on the client's word).
pub fn precheck(
    node: &Node,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Result<BodyCollector, Box<Response<Bytes>>> {
    let path = uri.path();
    let upload = path.starts_with("/v1/");
    if upload && !control::authorized(&node.token, headers) {
        return Err(Box::new(control::unauthorized(node)));
    }
    let limit = body_limit(node, path);
    match declared_length(headers) {
        // Refused unread only past what is worth draining (see `DRAIN_MAX`).
        Some(n) if n > (limit as u64).max(DRAIN_MAX) => Err(Box::new(too_large(node, limit))),
        declared => Ok(BodyCollector::new(
            limit,
            declared.filter(|_| upload),
            upload.then(|| node.config.data_dir.join("uploads")),
        )),
    }
}

/// Past this much, an upload goes to a file rather than to memory (see [`BodyCollector`]).
pub const SPOOL_AT: usize = 16 << 20;

/// Collects a request body up to its limit exactly; past it, keeps counting (and dropping)
/// what follows up to [`DRAIN_MAX`]. Both servers feed it chunk by chunk.
///
/// An upload (a module, a checkpoint of up to `--max-upload`) past [`SPOOL_AT`] is written to an
/// unnamed file in the data directory as it arrives, and handed on mapped from it: a 1 GiB
/// checkpoint being restored then sits in the page cache, which the kernel can drop and read
/// again, not in the node's own memory beside the component it becomes. The file has no name
/// (O_TMPFILE), so nothing is left behind, even by a crash.
pub struct BodyCollector {
    buf: bytes::BytesMut,
    seen: u64,
    limit: usize,
    /// Where an upload past [`SPOOL_AT`] goes (none: the body stays in memory).
    spool_dir: Option<std::path::PathBuf>,
    spool: Option<tokio::fs::File>,
    spool_error: Option<std::io::Error>,
}

impl BodyCollector {
    /// `reserve`: what to allocate at once (see [`precheck`]), at most the limit and at most
    /// [`SPOOL_AT`] where the body may go to a file.
    pub fn new(limit: usize, reserve: Option<u64>, spool_dir: Option<std::path::PathBuf>) -> Self {
        let mut reserve = reserve.map_or(0, |n| n as usize).min(limit);
        if spool_dir.is_some() {
            reserve = reserve.min(SPOOL_AT);
        }
        BodyCollector {
            buf: bytes::BytesMut::with_capacity(reserve),
            seen: 0,
            limit,
            spool_dir,
            spool: None,
            spool_error: None,
        }
    }

    /// Take a chunk; `false` when reading further is pointless (the body is over its limit and
    /// past what is worth draining, or it cannot be written to its file).
    pub async fn push(&mut self, chunk: &[u8]) -> bool {
        self.seen += chunk.len() as u64;
        if self.seen > self.limit as u64 {
            return self.seen <= DRAIN_MAX;
        }
        if self.spool.is_none() && self.buf.len() + chunk.len() <= SPOOL_AT {
            self.buf.extend_from_slice(chunk);
            return true;
        }
        let Some(dir) = &self.spool_dir else {
            self.buf.extend_from_slice(chunk);
            return true;
        };
        if let Err(e) = self.spill(dir.clone(), chunk).await {
            self.spool_error = Some(e);
            return false;
        }
        true
    }

    /// Write `chunk` to the file, after what was kept in memory so far if it is the first.
    async fn spill(&mut self, dir: std::path::PathBuf, chunk: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if self.spool.is_none() {
            let file = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)?;
                tempfile::tempfile_in(&dir)
            })
            .await
            .map_err(std::io::Error::other)??;
            let mut file = tokio::fs::File::from_std(file);
            file.write_all(&self.buf).await?;
            self.buf = bytes::BytesMut::new();
            self.spool = Some(file);
        }
        let file = self.spool.as_mut().expect("opened above");
        file.write_all(chunk).await
    }

    /// The body, or the answer that refuses it (413 over the limit, 507 when it could not be
    /// written to its file).
    pub async fn finish(self, node: &Node) -> Result<Bytes, Box<Response<Bytes>>> {
        if self.seen > self.limit as u64 {
            return Err(Box::new(too_large(node, self.limit)));
        }
        let cannot_spool = |e: std::io::Error| {
            node.metrics.reject("upload_not_spooled");
            Box::new(text(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("the upload could not be written to the data directory: {e}\n"),
            ))
        };
        if let Some(e) = self.spool_error {
            return Err(cannot_spool(e));
        }
        let Some(mut file) = self.spool else {
            return Ok(self.buf.freeze());
        };
        let mapped = async {
            use tokio::io::AsyncWriteExt;
            file.flush().await?;
            let file = file.into_std().await;
            // SAFETY: the file has no name and this process alone holds it (O_TMPFILE), so
            // nothing else can change or truncate it under the mapping.
            let map = unsafe { memmap2::Mmap::map(&file) }?;
            Ok::<_, std::io::Error>(Bytes::from_owner(map))
        };
        let body = mapped.await.map_err(cannot_spool)?;
        node.metrics.uploads_spooled.inc_by(body.len() as u64);
        Ok(body)
    }
}

/// The 413 both servers send when a body is over [`body_limit`].
pub fn too_large(node: &Node, limit: usize) -> Response<Bytes> {
    node.metrics.reject("body_too_large");
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than this node's limit of {limit} bytes\n"),
    )
}

/// The 408 both servers send when a body stalls for [`BODY_IDLE_TIMEOUT`].
pub fn body_timeout(node: &Node) -> Response<Bytes> {
    node.metrics.reject("body_timeout");
    text(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body stalled: nothing arrived for {} s\n",
            BODY_IDLE_TIMEOUT.as_secs()
        ),
    )
}

/// The Content-Length a request declares, if any.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Route one complete request.
pub async fn route(
    node: &std::sync::Arc<Node>,
    req: Request<Bytes>,
    proto: Proto,
) -> Response<Bytes> {
    let path = req.uri().path().to_string();
    let resp = if let Some(rest) = path.strip_prefix("/c/") {
        let (name, sub) = rest.split_once('/').map_or((rest, ""), |(n, s)| (n, s));
        let name = name.to_string();
        let target = match req.uri().query() {
            Some(q) => format!("/{sub}?{q}"),
            None => format!("/{sub}"),
        };
        component(node, &name, target, req).await
    } else if let Some(rest) = path.strip_prefix("/v1/") {
        control::handle(node, rest, req).await
    } else if path == "/metrics" {
        let mut r = text(StatusCode::OK, node.metrics.encode());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    } else if path == "/" {
        text(StatusCode::OK, format!("continuum node {}\n", node.peer_id))
    } else {
        text(
            StatusCode::NOT_FOUND,
            "not found: components live under /c/NAME/, the control API under /v1/\n",
        )
    };
    node.metrics
        .http_requests
        .get_or_create(&crate::metrics::HttpLabels {
            proto: proto.label(),
            code: resp.status().as_u16(),
        })
        .inc();
    resp
}

async fn component(
    node: &Node,
    name: &str,
    target: String,
    req: Request<Bytes>,
) -> Response<Bytes> {
    let (parts, body) = req.into_parts();
    let greq = GuestRequest {
        method: parts.method.to_string(),
        target,
        headers: parts
            .headers
            .iter()
            // Only the host says which component calls.
            .filter(|(k, _)| k.as_str() != CALLER_HEADER)
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
    };
    let ctx = CallCtx::client(node.mesh.me());
    to_http(name, serve(node, name, greq, ctx).await)
}

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
    // The host names itself; an answer that does not (a refusal, a lost peer) names the peer
    // it came from.
    if answer.headers.iter().any(|(k, _)| k == HOST_HEADER) {
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
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Name the node that answered, replacing whatever the component itself put there.
fn with_host(mut resp: GuestResponse, host: &str) -> GuestResponse {
    resp.headers.retain(|(k, _)| k != HOST_HEADER);
    resp.header(HOST_HEADER, host)
}

/// A component's answer as an HTTP response (connection-level headers dropped).
fn to_http(name: &str, g: GuestResponse) -> Response<Bytes> {
    let Ok(status) = StatusCode::from_u16(g.status) else {
        return text(
            StatusCode::BAD_GATEWAY,
            format!(
                "component {name} answered with invalid status {}\n",
                g.status
            ),
        );
    };
    let mut r = Response::new(Bytes::from(g.body));
    *r.status_mut() = status;
    for (k, v) in g.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v))
            && !is_hop_by_hop(&k)
        {
            r.headers_mut().append(k, v);
        }
    }
    r
}

/// Headers that belong to one connection, which the node manages itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "content-length"
            | "transfer-encoding"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
    )
}
