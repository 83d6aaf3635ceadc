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
    /// libp2p listen address (repeatable); default QUIC and TCP on the --http host.
    #[arg(long = "p2p", value_name = "MULTIADDR")]
    p2p: Vec<String>,
    /// A peer to bootstrap from (repeatable), e.g. /ip4/10.0.0.1/udp/4001/quic-v1/p2p/12D3...
    #[arg(long = "join", value_name = "MULTIADDR")]
    join: Vec<String>,
    /// A label this node advertises (repeatable), e.g. zone=a.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The swarm key file (`continuum keygen`); nodes without the same key are refused.
    #[arg(long)]
    swarm_key: Option<PathBuf>,
    /// Do not discover neighbours with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Neighbours at most: the connected peers the node hears and tells (components further
    /// away are found by name through Kademlia).
    #[arg(long)]
    max_neighbours: Option<usize>,
    /// How long after its last message a silent peer leaves the view, e.g. 15s.
    #[arg(long, value_parser = humantime::parse_duration)]
    advert_expiry: Option<Duration>,
    /// The longest federation lease granted, its own or another owner's, e.g. 1h (at most 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    max_lease: Option<Duration>,
    /// How often changed components are checkpointed to disk (the most a kill -9 loses).
    #[arg(long, value_parser = humantime::parse_duration)]
    checkpoint_every: Option<Duration>,
    /// Longest one migration step waits for the other side, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    migration_timeout: Option<Duration>,
    /// Cores this node's components may use, e.g. 0.5: its load is then the share of that
    /// budget they used (what `balance` acts on), not the host's load average.
    #[arg(long, value_name = "CORES")]
    cpu_budget: Option<f32>,
    /// Bytes of peers' messages held at once, over all peers, e.g. 1GiB (past it a peer's
    /// message is refused before more is read).
    #[arg(long)]
    peer_budget: Option<ByteSize>,
    /// Largest linear memory of one component, e.g. 256MiB.
    #[arg(long)]
    memory_cap: Option<ByteSize>,
    /// Longest one request or tick may run, waits for the calls it makes included, e.g. 1s;
    /// a call gets what is left of its caller's, at most this.
    #[arg(long, value_parser = humantime::parse_duration)]
    call_timeout: Option<Duration>,
    /// Calls one component may have in flight to other components (more are refused at once).
    #[arg(long)]
    max_calls: Option<usize>,
    /// Longest chain of calls between components (a request that would go deeper gets 508).
    #[arg(long)]
    max_call_depth: Option<usize>,
    /// Requests one component may have waiting, in flight or held by a migration's freeze;
    /// more get 503 at once.
    #[arg(long)]
    queue_depth: Option<usize>,
    /// Largest request body for a component, e.g. 8MiB.
    #[arg(long)]
    max_body: Option<ByteSize>,
    /// HTTP/1.1 connections held at once (default: from the file-descriptor limit); at the cap
    /// the connection idle longest makes room.
    #[arg(long)]
    max_connections: Option<usize>,
    /// What runs the Wasm: cranelift (native code; default where the host has a backend) or
    /// pulley (Wasmtime's interpreter: any host, about 10x slower).
    #[arg(long, value_enum)]
    engine: Option<crate::runtime::EngineKind>,
    /// Never compile: run only modules precompiled for this node (`continuum compile`, into
    /// DATA_DIR/modules), refuse the others. For a small board that should not spend its CPU
    /// and memory on Cranelift.
    #[arg(long)]
    no_compile: bool,
    /// Serve requests at real-time priority (SCHED_RR, 1 to 98): the HTTP and mesh threads and
    /// each component's thread preempt any other work on the host at once, a migration's bulk
    /// work above all (it is batch work). Needs root, CAP_SYS_NICE or `ulimit -r`.
    #[arg(long, value_name = "PRIORITY", env = "CONTINUUM_REALTIME",
          value_parser = clap::value_parser!(u8).range(1..=98))]
    realtime: Option<u8>,
}

impl NodeArgs {
    /// Before the runtime starts its threads, so that they start on the request path.
    pub fn set_priority(&self) -> Result<()> {
        if let Some(p) = self.realtime {
            crate::priority::realtime(p)?;
        }
        Ok(())
    }

    pub async fn run(self) -> Result<()> {
        let mut c = NodeConfig::load(self.config.as_deref())?;
        if let Some(d) = self.data_dir {
            c.data_dir = d;
        }
        if let Some(a) = self.http {
            c.http = a;
        }
        if !self.p2p.is_empty() {
            c.p2p = self.p2p;
        }
        c.join.extend(self.join);
        c.labels.extend(self.labels);
        if let Some(k) = self.swarm_key {
            c.swarm_key = Some(k);
        }
        if self.no_mdns {
            c.mdns = false;
        }
        if let Some(n) = self.max_neighbours {
            c.max_neighbours = n;
        }
        if let Some(d) = self.advert_expiry {
            c.advert_expiry = d;
        }
        if let Some(e) = self.engine {
            c.engine = e;
        }
        if self.no_compile {
            c.compile = false;
        }
        if let Some(d) = self.max_lease {
            c.max_lease = d;
        }
        if let Some(d) = self.checkpoint_every {
            c.checkpoint_every = d;
        }
        if let Some(d) = self.migration_timeout {
            c.migration_timeout = d;
        }
        if let Some(b) = self.cpu_budget {
            c.cpu_budget = Some(b);
        }
        if let Some(b) = self.peer_budget {
            c.peer_budget = b;
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
        if let Some(n) = self.queue_depth {
            c.limits.queue_depth = n;
        }
        if let Some(n) = self.max_calls {
            c.limits.max_calls = n;
        }
        if let Some(n) = self.max_call_depth {
            c.limits.max_call_depth = n;
        }
        if self.max_connections.is_some() {
            c.max_connections = self.max_connections;
        }
        crate::node::run(c).await
    }
}

/// `key=value`, for labels and requirements.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}
