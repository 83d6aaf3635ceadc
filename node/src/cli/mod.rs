//! The command line (README: Command line): one file per subcommand. Client commands talk to a
//! node's HTTP surface; `node` runs one.

mod call;
mod checkpoint;
mod compile;
mod deploy;
mod federate;
mod keygen;
mod ls;
mod migrate;
mod node;
mod restore;
mod rm;
mod status;
mod update;

use crate::client::{self, Reply};
use crate::config::default_data_dir;
use crate::datadir;
use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::Method;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "continuum",
    version,
    about = "A peer-to-peer compute continuum for stateful Wasm components"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node.
    Node(node::NodeArgs),
    /// Deploy a component from a .wasm module.
    Deploy(deploy::DeployArgs),
    /// List the components the node knows of.
    Ls(ls::LsArgs),
    /// Show the node.
    Status(status::StatusArgs),
    /// Send a request to a component (HTTP/3 unless --h1).
    Call(call::CallArgs),
    /// Save a component's state (and module) to a file.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Bring a component back from a checkpoint file.
    Restore(restore::RestoreArgs),
    /// Move a running component to another node with its state, without dropping requests.
    Migrate(migrate::MigrateArgs),
    /// Replace a running component by a new version that takes over its state, live.
    Update(update::UpdateArgs),
    /// Remove a component and its saved state.
    Rm(rm::RmArgs),
    /// Make a swarm key: nodes started with the same --swarm-key form one swarm.
    Keygen(keygen::KeygenArgs),
    /// Temporary federations: create, join, leave, ls.
    Federate(federate::FederateArgs),
    /// Compile a module ahead of time for a node that does not compile (--no-compile).
    Compile(compile::CompileArgs),
}

impl Cli {
    pub fn run(self) -> ExitCode {
        let is_node = matches!(self.command, Command::Node(_));
        init_tracing(if is_node { "info" } else { "warn" });
        let priority = match &self.command {
            Command::Node(a) => a.set_priority(),
            _ => Ok(()),
        };
        let rt = if is_node {
            tokio::runtime::Builder::new_multi_thread()
                .on_thread_start(crate::priority::request_path)
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        };
        let result = priority
            .and_then(|()| rt.context("starting the async runtime"))
            .and_then(|rt| {
                rt.block_on(async {
                    match self.command {
                        Command::Node(a) => a.run().await,
                        Command::Deploy(a) => a.run().await,
                        Command::Ls(a) => a.run().await,
                        Command::Status(a) => a.run().await,
                        Command::Call(a) => a.run().await,
                        Command::Checkpoint(a) => a.run().await,
                        Command::Restore(a) => a.run().await,
                        Command::Rm(a) => a.run().await,
                        Command::Migrate(a) => a.run().await,
                        Command::Update(a) => a.run().await,
                        Command::Keygen(a) => a.run().await,
                        Command::Federate(a) => a.run().await,
                        Command::Compile(a) => a.run(),
                    }
                })
            });
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
                ExitCode::FAILURE
            }
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONTINUUM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The node to talk to.
    #[arg(long, env = "CONTINUUM_NODE", default_value = "http://127.0.0.1:7070")]
    node: String,
    /// Data directory of that node, for its admin token and certificate fingerprint.
    #[arg(long, env = "CONTINUUM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Admin token (default: read from DATA_DIR/admin.token).
    #[arg(long, env = "CONTINUUM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long)]
    json: bool,
}

impl ClientArgs {
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    fn token(&self) -> Option<String> {
        self.token.clone().or_else(|| {
            std::fs::read_to_string(datadir::token_path(&self.data_dir()))
                .ok()
                .map(|t| t.trim().to_string())
        })
    }

    async fn addr(&self) -> Result<SocketAddr> {
        client::resolve(&self.node).await
    }

    /// The node's certificate fingerprint: given, or from the node's `node.json`.
    fn pin(&self, given: Option<&str>) -> Result<[u8; 32]> {
        let hex_pin = match given {
            Some(p) => p.to_string(),
            None => datadir::read_node_json(&self.data_dir())
                .map(|i| i.cert_sha256)
                .context("HTTP/3 needs the node's certificate fingerprint: pass --data-dir of the node, --cert-sha256, or use --h1")?,
        };
        crate::tls::parse_pin(&hex_pin)
    }

    /// A control-API call; an error status becomes an error carrying the node's message.
    async fn api(&self, method: Method, target: &str, body: Bytes) -> Result<Reply> {
        let addr = self.addr().await?;
        let token = self.token();
        let reply = client::h1(addr, method, target, body, token.as_deref()).await?;
        if reply.status >= 400 {
            let msg = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| reply.text().trim().to_string());
            return Err(anyhow!("{msg} (HTTP {})", reply.status));
        }
        Ok(reply)
    }

    /// Print `value` as JSON with `--json`, else the human line.
    fn show(&self, value: &impl serde::Serialize, line: impl FnOnce() -> String) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            println!("{}", line());
        }
        Ok(())
    }

    async fn api_json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        target: &str,
        body: Bytes,
    ) -> Result<T> {
        let reply = self.api(method, target, body).await?;
        serde_json::from_slice(&reply.body).context("the node's answer is not the JSON expected")
    }
}

/// A version, label or federation name as it may travel in a query string.
fn query_value(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .collect()
}

/// `12.3 MiB` and the like.
fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}
