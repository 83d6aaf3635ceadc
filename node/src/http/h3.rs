//! HTTP/3 over QUIC (quinn + h3), on the UDP port that matches the TCP one.

use super::{BODY_IDLE_TIMEOUT, BodyCollector, Proto, precheck, route};
use crate::context::Node;
use bytes::{Buf, Bytes};
use h3::error::{ConnectionError, StreamError};
use h3::server::RequestStream;
use http::Request;
use std::sync::Arc;

/// Accept QUIC connections until the task is aborted.
pub async fn serve(endpoint: quinn::Endpoint, node: Arc<Node>) {
    while let Some(incoming) = endpoint.accept().await {
        let node = node.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => connection(conn, node).await,
                Err(e) => tracing::debug!("QUIC handshake failed: {e}"),
            }
        });
    }
}

async fn connection(conn: quinn::Connection, node: Arc<Node>) {
    let mut h3 =
        match h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await {
            Ok(h3) => h3,
            Err(e) => return connection_error(&node, &e),
        };
    loop {
        match h3.accept().await {
            Ok(Some(resolver)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    match resolver.resolve_request().await {
                        Ok((req, stream)) => request(&node, req, stream).await,
                        Err(e) => stream_error(&node, &e),
                    }
                });
            }
            Ok(None) => return,
            Err(e) => return connection_error(&node, &e),
        }
    }
}

async fn request<S>(node: &Arc<Node>, req: Request<()>, mut stream: RequestStream<S, Bytes>)
where
    S: h3::quic::BidiStream<Bytes>,
{
    let resp = match precheck(node, req.uri(), req.headers()) {
        Ok(collector) => match body(node, &mut stream, collector).await {
            Ok(Ok(body)) => {
                let (parts, ()) = req.into_parts();
                route(node, Request::from_parts(parts, body), Proto::H3).await
            }
            Ok(Err(refusal)) => refusal,
            Err(e) => return stream_error(node, &e),
        },
        Err(refusal) => {
            stream.stop_sending(h3::error::Code::H3_NO_ERROR);
            *refusal
        }
    };
    let (parts, body) = resp.into_parts();
    let send = async {
        stream
            .send_response(http::Response::from_parts(parts, ()))
            .await?;
        if !body.is_empty() {
            stream.send_data(body).await?;
        }
        stream.finish().await
    };
    if let Err(e) = send.await {
        tracing::debug!("sending an HTTP/3 response failed: {e}");
    }
}

/// The request's body (Ok(Err): the answer that refuses it).
async fn body<S>(
    node: &Node,
    stream: &mut RequestStream<S, Bytes>,
    mut collector: BodyCollector,
) -> Result<Result<Bytes, http::Response<Bytes>>, StreamError>
where
    S: h3::quic::BidiStream<Bytes>,
{
    loop {
        let Ok(data) = tokio::time::timeout(BODY_IDLE_TIMEOUT, stream.recv_data()).await else {
            stream.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED);
            return Ok(Err(super::body_timeout(node)));
        };
        let Some(mut chunk) = data? else {
            return Ok(collector.finish(node).await.map_err(|r| *r));
        };
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let more = collector.push(part).await;
            let n = part.len();
            chunk.advance(n);
            if !more {
                stream.stop_sending(h3::error::Code::H3_NO_ERROR);
                return Ok(collector.finish(node).await.map_err(|r| *r));
            }
        }
    }
}

/// Errors this node raised against a peer's protocol violation are counted as malformed input;
/// closes, resets and timeouts are the ordinary end of connections.
fn connection_error(node: &Node, e: &ConnectionError) {
    if let ConnectionError::Local { .. } = e
        && !e.is_h3_no_error()
    {
        node.metrics.reject("malformed_h3");
        tracing::info!("closed an HTTP/3 connection for a protocol error: {e}");
        return;
    }
    tracing::debug!("HTTP/3 connection ended: {e}");
}

fn stream_error(node: &Node, e: &StreamError) {
    match e {
        StreamError::StreamError { .. } | StreamError::HeaderTooBig { .. }
            if !e.is_h3_no_error() =>
        {
            node.metrics.reject("malformed_h3");
            tracing::info!("refused a malformed HTTP/3 request: {e}");
        }
        StreamError::ConnectionError { 0: c, .. } => connection_error(node, c),
        _ => tracing::debug!("HTTP/3 request stream ended: {e}"),
    }
}
