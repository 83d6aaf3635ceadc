//! The HTTP surface (README: HTTP surface). HTTP/1.1 and HTTP/3 servers collect a request with
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
use crate::runtime::CallCtx;
use crate::runtime::router::CALLER_HEADER;
use bytes::Bytes;
use continuum_guest::{Request as GuestRequest, Response as GuestResponse};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};

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
    let declared = declared_length(headers);
    // Refused unread only past what is worth draining (see `DRAIN_MAX`).
    if declared.is_some_and(|n| n > (limit as u64).max(DRAIN_MAX)) {
        return Err(Box::new(too_large(node, limit)));
    }
    Ok(BodyCollector::new(
        limit,
        declared.filter(|_| upload),
        upload.then(|| node.config.data_dir.join("uploads")),
    ))
}

/// The 507 for an upload that could not be written to the data directory (sent once the body
/// is drained, as a 413 is, so that the client still writing reads it).
fn cannot_spool(node: &Node, e: &std::io::Error) -> Box<Response<Bytes>> {
    node.metrics.reject("upload_not_spooled");
    Box::new(text(
        StatusCode::INSUFFICIENT_STORAGE,
        format!("the upload could not be written to the data directory: {e}\n"),
    ))
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

    /// Take a chunk; `false` when reading further is pointless (the body will be refused, and
    /// it is past what is worth draining so that the client reads why).
    pub async fn push(&mut self, chunk: &[u8]) -> bool {
        self.seen += chunk.len() as u64;
        if self.seen > self.limit as u64 || self.spool_error.is_some() {
            return self.seen <= DRAIN_MAX;
        }
        let Some(dir) = self.spool_dir.as_ref() else {
            self.buf.extend_from_slice(chunk);
            return true;
        };
        if self.spool.is_none() && self.buf.len() + chunk.len() <= SPOOL_AT {
            self.buf.extend_from_slice(chunk);
            return true;
        }
        if let Err(e) = Self::spill(&mut self.spool, &mut self.buf, dir, chunk).await {
            self.spool_error = Some(e);
            self.buf = bytes::BytesMut::new();
            return self.seen <= DRAIN_MAX;
        }
        true
    }

    /// Write `chunk` to the file, first making it (in `dir`) with what `buf` kept so far.
    async fn spill(
        spool: &mut Option<tokio::fs::File>,
        buf: &mut bytes::BytesMut,
        dir: &std::path::Path,
        chunk: &[u8],
    ) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let file = match spool {
            Some(file) => file,
            None => {
                let dir = dir.to_path_buf();
                let file = tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    tempfile::tempfile_in(&dir)
                })
                .await
                .map_err(std::io::Error::other)??;
                let mut file = tokio::fs::File::from_std(file);
                file.write_all(&std::mem::take(buf)).await?;
                spool.insert(file)
            }
        };
        file.write_all(chunk).await
    }

    /// The body, or the answer that refuses it (413 over the limit, 507 when it could not be
    /// written to its file).
    pub async fn finish(self, node: &Node) -> Result<Bytes, Box<Response<Bytes>>> {
        if self.seen > self.limit as u64 {
            return Err(Box::new(too_large(node, self.limit)));
        }
        if let Some(e) = self.spool_error {
            return Err(cannot_spool(node, &e));
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
        let body = mapped.await.map_err(|e| cannot_spool(node, &e))?;
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
    to_http(name, crate::routing::serve(node, name, greq, ctx).await)
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
