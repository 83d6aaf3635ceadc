//! Copies of components that moved on while this node was down: dropped on proof only.

use crate::context::Node;
use std::sync::Arc;

/// A node that comes back from a crash may hold a copy of a component that moved on while it
/// was gone (it died between the switch and the target's confirmation). It drops that copy
/// only on its own word: the new host's advert must carry the hand-off this node signed when
/// the component left it. Any other claim of a newer epoch (a forged advert, or a move this
/// node cannot check because the component moved on again) leaves the copy and its snapshot
/// alone, and is counted once (and its signature checked once).
pub async fn run(node: Arc<Node>) {
    let mut timer = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut unproven = std::collections::HashSet::new();
    loop {
        timer.tick().await;
        let me = node.mesh.me();
        let local = node.components.list();
        unproven.retain(|(name, _, _): &(String, continuum_gossip::PeerId, u64)| {
            local.iter().any(|c| &c.name == name)
        });
        for c in local {
            let Some(l) = node.mesh.locate(&c.name) else {
                continue;
            };
            let claim = (c.name.clone(), l.host, l.epoch);
            if l.host == me
                || l.epoch <= c.epoch
                || unproven.contains(&claim)
                || crate::migration::leaving(&node, &c.name)
            {
                continue;
            }
            let proven = l
                .handoff
                .as_ref()
                .and_then(|h| h.verify().ok())
                .is_some_and(|h| h.proves_moved(me, &c.name, c.epoch, l.host, l.epoch));
            if !proven {
                tracing::warn!(
                    component = %c.name,
                    epoch = c.epoch,
                    "{} claims it at epoch {} without this node's hand-off: keeping this copy",
                    l.host,
                    l.epoch
                );
                node.metrics.reject("unproven_newer_copy");
                unproven.insert(claim);
                continue;
            }
            tracing::warn!(
                component = %c.name,
                epoch = c.epoch,
                "a newer copy runs on {} (epoch {}), handed over by this node: dropping this stale one",
                l.host,
                l.epoch
            );
            if node.components.remove(&c.name).await.is_ok() {
                node.metrics.reject("stale_copy");
                node.announce_components();
            }
        }
    }
}
