//! `continuum`: one node of the compute continuum. It hosts stateful Wasm components, serves
//! them over HTTP/3 and HTTP/1.1, and checkpoints and restores them.
//!
//! The binary's `main.rs` only parses the command line; each subcommand lives in `cli/`.

pub mod bulk;
pub mod calls;
pub mod cli;
pub mod client;
pub mod components;
pub mod config;
pub mod context;
pub mod datadir;
pub mod fault;
pub mod http;
pub mod identity;
pub mod load;
pub mod mesh;
pub mod metrics;
pub mod migration;
pub mod node;
pub mod peer;
pub mod priority;
pub mod routing;
pub mod runtime;
mod tasks;
pub mod tls;

/// The first characters of a peer id, as logs and tables show it.
pub fn short_id(peer_id: &str) -> &str {
    let skip = if peer_id.starts_with("12D3KooW") {
        8
    } else {
        0
    };
    peer_id.get(skip..skip + 6).unwrap_or(peer_id)
}
