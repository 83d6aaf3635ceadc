//! What a node does on its own, beside serving: one background task per concern, each started
//! with the node and stopped with it.

mod checkpoints;
mod module_sweep;
mod placement;
mod stale_copies;

use crate::context::Node;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Start every background task of `node`, in the caller's span (it carries the peer id).
pub fn spawn_all(node: &Arc<Node>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(checkpoints::run(node.clone()).in_current_span()),
        tokio::spawn(stale_copies::run(node.clone()).in_current_span()),
        tokio::spawn(placement::run(node.clone()).in_current_span()),
        tokio::spawn(module_sweep::run(node.clone()).in_current_span()),
    ]
}
