//! Stored modules nothing needs any more, deleted now and then.

use crate::context::Node;
use std::sync::Arc;

/// Now and then, the stored modules nothing needs go (those of migrations here that ended
/// without a component, above all: removals and departures sweep at once).
pub async fn run(node: Arc<Node>) {
    let mut timer = tokio::time::interval(std::time::Duration::from_secs(600));
    timer.tick().await;
    loop {
        timer.tick().await;
        let n = node.clone();
        let _ = tokio::task::spawn_blocking(move || n.components.sweep_modules()).await;
    }
}
