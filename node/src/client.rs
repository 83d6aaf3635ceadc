//! The client side, for the CLI and for tests and benchmarks: HTTP/1.1 (hyper) and HTTP/3
//! (quinn + h3, pinning the node's certificate).

use crate::tls;
use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// A response, whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Resolve the `host:port` of an `http://` URL.
pub async fn resolve(url: &str) -> Result<SocketAddr> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid node URL {url:?}"))?;
    if uri
        .scheme_str()
        .is_some_and(|s| s != "http" && s != "https")
    {
        bail!("node URL {url:?} must start with http://");
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("node URL {url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(7070);
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} resolves to no address"))
}

fn build(
    method: &Method,
    target: &str,
    token: Option<&str>,
    len: usize,
) -> Result<http::request::Builder> {
    let mut b = Request::builder().method(method.clone()).uri(target);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if len > 0 || matches!(*method, Method::POST | Method::PUT) {
        b = b.header(header::CONTENT_LENGTH, len);
    }
    Ok(b)
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn h1(
    addr: SocketAddr,
    method: Method,
    target: &str,
    body: Bytes,
    token: Option<&str>,
) -> Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr} (is the node running?)"))?;
    let _ = stream.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = build(&method, target, token, body.len())?
        .header(header::HOST, addr.to_string())
        .body(Full::new(body))?;
    let resp = send
        .send_request(req)
        .await
        .context("sending the request")?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .context("reading the response")?
        .to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// An HTTP/3 connection that can carry many requests, concurrently if cloned.
#[derive(Clone)]
pub struct H3 {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    authority: String,
}

impl H3 {
    /// Connect, accepting only the certificate whose SHA-256 is `pin`.
    pub async fn connect(addr: SocketAddr, pin: [u8; 32]) -> Result<H3> {
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()?;
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(tls::client_config(pin)?);
        let conn = endpoint
            .connect(addr, "continuum")?
            .await
            .with_context(|| format!("HTTP/3 handshake with {addr}"))?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(H3 {
            send,
            conn,
            endpoint,
            authority: addr.to_string(),
        })
    }

    pub async fn request(
        &mut self,
        method: Method,
        target: &str,
        body: Bytes,
        token: Option<&str>,
    ) -> Result<Reply> {
        let uri = format!("https://{}{target}", self.authority);
        let req = build(&method, &uri, token, body.len())?.body(())?;
        let mut stream = self
            .send
            .send_request(req)
            .await
            .context("sending the HTTP/3 request")?;
        if !body.is_empty() {
            stream.send_data(body).await?;
        }
        stream.finish().await?;
        let resp = stream
            .recv_response()
            .await
            .context("reading the HTTP/3 response")?;
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                body.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        let (parts, ()) = resp.into_parts();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.freeze(),
        })
    }

    /// Close cleanly (H3_NO_ERROR) and give the close a moment to reach the node.
    pub async fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0x100), b"");
        let _ = tokio::time::timeout(Duration::from_millis(200), self.endpoint.wait_idle()).await;
    }
}
