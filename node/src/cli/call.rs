use super::ClientArgs;
use crate::client::{self, H3};
use crate::runtime::router::HOST_HEADER;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http::Method;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CallArgs {
    /// The component's name.
    name: String,
    /// Path below the component, with any query: `/incr`, `/k/a?x=1`.
    #[arg(default_value = "/")]
    path: String,
    /// HTTP method; default GET, or POST when there is a body.
    #[arg(long, short = 'X')]
    method: Option<String>,
    /// Request body.
    #[arg(long, short = 'd', conflicts_with = "data_file")]
    data: Option<String>,
    /// Request body from a file (`-` for stdin).
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// Use HTTP/1.1 instead of HTTP/3.
    #[arg(long)]
    h1: bool,
    /// SHA-256 of the node's certificate (default: from the node's node.json in --data-dir).
    #[arg(long)]
    cert_sha256: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

impl CallArgs {
    pub async fn run(self) -> Result<()> {
        let body: Bytes = match (&self.data, &self.data_file) {
            (Some(d), _) => d.clone().into(),
            (None, Some(p)) if p.as_os_str() == "-" => {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf.into()
            }
            (None, Some(p)) => std::fs::read(p)
                .with_context(|| format!("reading {}", p.display()))?
                .into(),
            (None, None) => Bytes::new(),
        };
        let method = match &self.method {
            Some(m) => {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).context("invalid method")?
            }
            None if !body.is_empty() => Method::POST,
            None => Method::GET,
        };
        let path = if self.path.starts_with('/') {
            self.path.clone()
        } else {
            format!("/{}", self.path)
        };
        let target = format!("/c/{}{}", self.name, path);
        let addr = self.client.addr().await?;
        let reply = if self.h1 {
            client::h1(addr, method, &target, body, None).await?
        } else {
            let mut h3 = H3::connect(addr, self.client.pin(self.cert_sha256.as_deref())?).await?;
            let reply = h3.request(method, &target, body, None).await;
            h3.close().await;
            reply?
        };
        if self.client.json {
            let v = serde_json::json!({
                "status": reply.status,
                "host": reply.header(HOST_HEADER),
                "body": reply.text(),
            });
            println!("{v}");
        } else if reply.status < 400 {
            std::io::stdout().write_all(&reply.body)?;
            if !reply.body.ends_with(b"\n") && !reply.body.is_empty() {
                println!();
            }
        }
        if reply.status >= 400 {
            bail!("HTTP {}: {}", reply.status, reply.text().trim());
        }
        Ok(())
    }
}
