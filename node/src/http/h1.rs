//! HTTP/1.1 over TCP (hyper). Every response advertises HTTP/3 on the same port with `Alt-Svc`.

use super::{BodyCollector, DRAIN_MAX, Proto, body_limit, declared_length, route, too_large};
use crate::node::Node;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
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

async fn handle(node: &Arc<Node>, req: Request<Incoming>) -> Response<Bytes> {
    let limit = body_limit(node, req.uri().path());
    if declared_length(req.headers()).is_some_and(|n| n > DRAIN_MAX) {
        return too_large(node, limit);
    }
    let (parts, mut body) = req.into_parts();
    let mut collector = BodyCollector::new(limit);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(data) = f.data_ref()
                    && !collector.push(data)
                {
                    break;
                }
            }
            Err(e) => {
                node.metrics.reject("bad_request");
                return super::text(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {e}\n"),
                );
            }
        }
    }
    match collector.finish(node) {
        Ok(body) => route(node, Request::from_parts(parts, body), Proto::H1).await,
        Err(refusal) => *refusal,
    }
}
