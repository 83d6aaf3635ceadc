//! Placement: the policies, evaluated every second, and the moves they decide started.

use crate::context::Node;
use std::sync::Arc;
use std::time::Instant;

/// The placement policies, every second: a component whose policy is not `pinned` may be
/// proposed a move, which this node starts as a migration (the target may refuse it). Every
/// decision is logged with its reason and kept for `status`.
pub async fn run(node: Arc<Node>) {
    const KEEP: usize = 32;
    let mut timer = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        timer.tick().await;
        let all = node.components.handles();
        let (my_load, loads) = {
            let mut meter = node.load.lock().unwrap();
            meter.sample(Instant::now(), &all);
            if let Some(load) = meter.budgeted() {
                node.mesh.set_load(load);
            }
            let loads: std::collections::HashMap<String, f32> = all
                .iter()
                .map(|h| (h.name.clone(), meter.component(&h.name)))
                .collect();
            (meter.node(), loads)
        };
        // In an open swarm no peer takes a migration: nothing moves on its own.
        let moves = node.swarm_key.is_some();
        let handles: Vec<_> = all
            .into_iter()
            .filter(|h| {
                moves
                    && h.policy != continuum_gossip::Policy::Pinned
                    && !crate::migration::leaving(&node, &h.name)
            })
            .collect();
        if handles.is_empty() {
            continue;
        }
        let mesh = node.mesh.snapshot();
        let members: Vec<_> = handles
            .iter()
            .map(|h| h.federation.as_ref().map(|f| mesh.members(f)))
            .collect();
        let placed: Vec<_> = handles
            .iter()
            .zip(&members)
            .map(|(h, within)| continuum_gossip::Placed {
                name: &h.name,
                policy: h.policy,
                require: &h.require,
                within: within.as_ref(),
                memory_bytes: h
                    .stats
                    .memory_bytes
                    .load(std::sync::atomic::Ordering::Relaxed),
                load: loads.get(&h.name).copied().unwrap_or(0.0),
            })
            .collect();
        let peers: Vec<_> = mesh
            .peers
            .iter()
            .filter_map(|p| {
                Some(continuum_gossip::PeerLoad {
                    candidate: p.candidate()?,
                    rtt_ms: p.rtt_ms,
                })
            })
            .collect();
        let now = node.started.elapsed().as_millis() as u64;
        let decisions = node.placer.lock().unwrap().evaluate(
            now,
            node.mesh.me(),
            &node.config.labels,
            my_load,
            &placed,
            &peers,
        );
        for d in decisions {
            tracing::info!(component = %d.component, policy = d.policy.name(), to = %d.to, "placement: {}", d.reason);
            {
                let mut kept = node.decisions.lock().unwrap();
                if kept.len() == KEEP {
                    kept.pop_front();
                }
                kept.push_back(d.clone());
            }
            let Ok(to) = d.to.parse() else { continue };
            if let Err(e) = crate::migration::start(&node, &d.component, to, false).await {
                tracing::warn!(component = %d.component, "placement move not started: {e}");
            }
        }
    }
}
