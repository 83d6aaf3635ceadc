use crate::config::NodeConfig;
use anyhow::Result;
use bytesize::ByteSize;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Where the node keeps its identity, token, modules and component state.
    #[arg(long, env = "CONTINUUM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address for HTTP/1.1 (TCP) and HTTP/3 (UDP). Default 127.0.0.1:7070.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// A TOML configuration file (see node/continuum.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Do not discover neighbours with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// How often changed components are checkpointed to disk (the most a kill -9 loses).
    #[arg(long, value_parser = humantime::parse_duration)]
    checkpoint_every: Option<Duration>,
    /// Largest linear memory of one component, e.g. 256MiB.
    #[arg(long)]
    memory_cap: Option<ByteSize>,
    /// Longest one request or tick may run, e.g. 1s.
    #[arg(long, value_parser = humantime::parse_duration)]
    call_timeout: Option<Duration>,
    /// Largest request body for a component, e.g. 8MiB.
    #[arg(long)]
    max_body: Option<ByteSize>,
}

impl NodeArgs {
    pub async fn run(self) -> Result<()> {
        let mut c = NodeConfig::load(self.config.as_deref())?;
        if let Some(d) = self.data_dir {
            c.data_dir = d;
        }
        if let Some(a) = self.http {
            c.http = a;
        }
        if self.no_mdns {
            c.mdns = false;
        }
        if let Some(d) = self.checkpoint_every {
            c.checkpoint_every = d;
        }
        if let Some(m) = self.memory_cap {
            c.limits.memory_cap = m;
        }
        if let Some(t) = self.call_timeout {
            c.limits.call_timeout = t;
        }
        if let Some(b) = self.max_body {
            c.limits.max_body = b;
        }
        crate::node::run(c).await
    }
}
