//! HTTP/1.1 over TCP (hyper). Every response advertises HTTP/3 on the same port with `Alt-Svc`.
//! Connections are capped (`conns`), headers must arrive within [`HEADER_TIMEOUT`] (an idle
//! keep-alive connection closes after it too), and a body that stalls gets 408.

use super::conns::{Admitted, Conns};
use super::{BODY_IDLE_TIMEOUT, Proto, precheck, route};
use crate::context::Node;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Longest wait for a request's headers, from the moment the connection is ready for them: a
/// new connection, or a kept-alive one between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Accept connections until the task is aborted.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let alt_svc = HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", node.h3_port))
        .expect("a valid header value");
    let conns = Conns::new(
        node.config
            .max_connections
            .unwrap_or_else(super::conns::fd_budget),
    );
    tracing::info!(cap = conns.cap(), "HTTP/1.1 connections capped");
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
        let conn = match conns.admit() {
            Admitted::Room(c) => c,
            Admitted::Evicted(c) => {
                node.metrics.reject("http_idle_connection_closed");
                c
            }
            Admitted::Full => {
                node.metrics.reject("http_connections_full");
                continue;
            }
        };
        node.metrics.http_connections.set(conns.len() as i64);
        let _ = stream.set_nodelay(true);
        let (node, alt_svc, conns) = (node.clone(), alt_svc.clone(), conns.clone());
        tokio::spawn(async move {
            // A TLS handshake (its first byte is 22) is a migration's direct connection; HTTP
            // comes in plain text.
            let mut first = [0u8; 1];
            if let Ok(Ok(1)) = tokio::time::timeout(HEADER_TIMEOUT, stream.peek(&mut first)).await
                && first[0] == 0x16
            {
                let busy = conn.busy();
                crate::migration::accept_direct(node, stream, (conn, busy));
                return;
            }
            let conn = Arc::new(conn);
            let on_conn = conn.clone();
            let gauge = node.metrics.http_connections.clone();
            let service = service_fn(move |req| {
                let (node, alt_svc) = (node.clone(), alt_svc.clone());
                let busy = on_conn.busy();
                async move {
                    let mut resp = handle(&node, req).await;
                    drop(busy);
                    resp.headers_mut().insert(header::ALT_SVC, alt_svc);
                    Ok::<_, Infallible>(resp.map(Full::new))
                }
            });
            let ended = {
                let served = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(served);
                tokio::select! {
                    ended = served.as_mut() => ended,
                    _ = conn.close.notified() => {
                        served.as_mut().graceful_shutdown();
                        served.await
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!("HTTP/1.1 connection ended: {e}");
            }
            drop(conn); // the service's clone went with the connection
            gauge.set(conns.len() as i64);
        });
    }
}

async fn handle(node: &Arc<Node>, req: Request<Incoming>) -> Response<Bytes> {
    let mut collector = match precheck(node, req.uri(), req.headers()) {
        Ok(collector) => collector,
        Err(refusal) => return *refusal,
    };
    let (parts, mut body) = req.into_parts();
    loop {
        let Ok(frame) = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await else {
            return super::body_timeout(node);
        };
        let Some(frame) = frame else { break };
        match frame {
            Ok(f) => {
                if let Some(data) = f.data_ref()
                    && !collector.push(data).await
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
    match collector.finish(node).await {
        Ok(body) => route(node, Request::from_parts(parts, body), Proto::H1).await,
        Err(refusal) => *refusal,
    }
}
