//! HTTP/1.1 over TCP (hyper). Every response advertises HTTP/3 on the same port with `Alt-Svc`.

use super::{Proto, body_limit, route, too_large};
use crate::node::Node;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Accept connections until the task is aborted.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let alt_svc = HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", node.h3_port))
        .expect("a valid header value");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!("accepting a TCP connection failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (node, alt_svc) = (node.clone(), alt_svc.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (node, alt_svc) = (node.clone(), alt_svc.clone());
                async move {
                    let mut resp = handle(&node, req).await;
                    resp.headers_mut().insert(header::ALT_SVC, alt_svc);
                    Ok::<_, Infallible>(resp.map(Full::new))
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("HTTP/1.1 connection ended: {e}");
            }
        });
    }
}

async fn handle(node: &Node, req: Request<Incoming>) -> Response<Bytes> {
    let limit = body_limit(node, req.uri().path());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(node, limit);
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(node, limit),
        Err(e) => {
            node.metrics.reject("bad_request");
            return super::text(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}\n"),
            );
        }
    };
    route(node, Request::from_parts(parts, body), Proto::H1).await
}
