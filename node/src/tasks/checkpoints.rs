//! Periodic checkpoints: what bounds the state a `kill -9` can lose.

use crate::context::Node;
use std::sync::Arc;

/// Every `--checkpoint-every`, each component is checkpointed on its own task, so one whose
/// thread is stuck holds up no other (a failed write leaves it due for the next round).
pub async fn run(node: Arc<Node>) {
    let every = node.config.checkpoint_every;
    if every.is_zero() {
        return;
    }
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    loop {
        timer.tick().await;
        for h in node.components.handles() {
            let node = node.clone();
            tokio::spawn(async move { node.components.checkpoint_periodic(&h).await });
        }
    }
}
