//! The `churn` scenario: nodes join over the first seconds, then one fails and one comes back
//! every few seconds; the swarm's membership should keep up. Reports, every virtual second, the
//! mean share of live nodes each live node knows, and the dead ones it still lists. With
//! `partition_s`, the swarm is also cut in two (west and east) 20 s after the joins for that
//! long: views shrink to each half, then must fill again once the cut heals.

use crate::net::{NetConfig, Position};
use crate::world::World;
use continuum_gossip::{Config, FederationSpec, Mine, Scope};
use rand::RngExt;
use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct Churn {
    pub nodes: usize,
    pub seed: u64,
    pub seconds: u64,
    /// One node fails this often, after the joins, ms (0: none)...
    pub every_ms: u64,
    /// ...and comes back this much later (longer than the advert expiry: peers forget it).
    pub down_ms: u64,
    /// Each new node connects to this many live ones (its bootstrap and overlay peers).
    pub links: usize,
    /// Cut the swarm in two for this long, 20 s after the joins (0: never).
    pub partition_s: u64,
    /// Who hears whom: the whole swarm, or each node its neighbours (then a node's links go to
    /// random earlier nodes, not all through node 0, and a view is judged against the links).
    pub scope: Scope,
    /// Nodes carry `zone=west|east` by position; 5 s after the joins node 0 (west) proposes a
    /// federation of the west zone with a 30 s lease, and at the end it dies, so the
    /// federation must dissolve.
    pub federation: bool,
    /// Scoped to neighbours: federations recruit beyond the neighbourhood through label
    /// providers in the table (the node's way); without, an owner's neighbours alone hear it.
    pub recruit: bool,
}

/// The federation `churn` forms with `federation`.
pub const FEDERATION: &str = "west";
const LEASE_MS: u64 = 30_000;

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// `t_s,live,known_mean,known_min,stale_mean,gossip_per_node_s` per virtual second.
    pub csv: String,
    /// Virtual time from the last join until every node knew every other, ms (to 10 ms).
    pub converged_ms: Option<u64>,
    /// Times a node dropped a silent peer from its view.
    pub peer_down: u64,
    /// Messages each node received per second after the joins (publications and direct).
    pub received_per_node_s: f64,
    /// With `federation`: the lowest share of live west nodes that were members, over the
    /// seconds from 10 s after it was proposed; east nodes that were members at any time;
    /// whether every live node had forgotten it a lease after its owner died.
    pub federated_min: f64,
    pub federated_wrong: u64,
    pub dissolved: bool,
    /// Per virtual second once churn is steady (the first failed node is back): the share of
    /// live nodes whose view is right (every live peer it should hold, no dead one).
    pub right: Vec<f64>,
    pub summary: String,
    pub trace_hash: String,
}

pub fn run(c: &Churn) -> Outcome {
    let cfg = Config {
        scope: c.scope,
        recruit: c.recruit,
        ..Config::default()
    };
    let mut w = World::new(c.seed, NetConfig::default(), cfg);
    let area_km = 100.0;
    for _ in 0..c.nodes {
        let pos = Position {
            x: w.rng.random_range(0.0..area_km),
            y: w.rng.random_range(0.0..area_km),
        };
        let i = w.add_node(pos);
        if c.federation {
            let zone = if i == 0 || pos.x < area_km / 2.0 {
                "west"
            } else {
                "east"
            };
            w.nodes[i].labels.insert("zone".into(), zone.into());
        }
    }
    // Joins: node i starts at i * 20 ms and connects to node 0 and a few earlier nodes.
    let join_gap_ms = 20;
    for i in 0..c.nodes {
        w.run_until(i as u64 * join_gap_ms);
        let mut links = match c.scope {
            Scope::Swarm => vec![0],
            Scope::Neighbours => Vec::new(),
        };
        while links.len() < c.links.min(i) {
            links.push(w.rng.random_range(0..i));
        }
        w.start(i, &links);
    }
    let joined_ms = w.now_ms();
    // Time from the last join to full views, to 10 ms.
    let mut converged_ms = None;
    while w.now_ms() < joined_ms + 30_000 {
        let live: Vec<usize> = (0..w.nodes.len()).filter(|&i| w.nodes[i].alive).collect();
        if live.iter().all(|&i| w.view_accuracy(i).0 >= 1.0) {
            converged_ms = Some(w.now_ms() - joined_ms);
            break;
        }
        let next = w.now_ms() + 10;
        w.run_until(next);
    }
    let mut out = Outcome {
        csv: "t_s,live,known_mean,known_min,stale_mean,gossip_per_node_s,federated,right\n".into(),
        converged_ms,
        federated_min: 1.0,
        ..Outcome::default()
    };
    let proposed_s = joined_ms / 1000 + 5;
    let mut dead: std::collections::VecDeque<(usize, u64)> = Default::default();
    let mut next_churn = joined_ms + 10_000;
    let mut last_sent = w.counters.gossip_sent + w.counters.direct_sent;
    let received = |w: &World| w.counters.gossip_delivered + w.counters.direct_delivered;
    let received_before = received(&w);
    let cut_s = joined_ms / 1000 + 20;
    for t in (joined_ms / 1000 + 1)..=(joined_ms / 1000 + c.seconds) {
        if c.partition_s > 0 && t == cut_s {
            w.run_until(t * 1000 - 1000);
            let west: Vec<bool> = w.nodes.iter().map(|n| n.pos.x < area_km / 2.0).collect();
            w.net.partition(|i| west[i] as u32);
        }
        if c.partition_s > 0 && t == cut_s + c.partition_s {
            w.run_until(t * 1000 - 1000);
            w.net.heal();
        }
        while next_churn <= t * 1000 && c.every_ms > 0 {
            w.run_until(next_churn);
            while let Some(&(back, at)) = dead.front()
                && at <= next_churn
            {
                dead.pop_front();
                let links: Vec<usize> = (0..c.links)
                    .filter_map(|_| w.random_live(Some(back)))
                    .collect();
                w.start(back, &links);
            }
            if let Some(i) = w.random_live(Some(0)) {
                w.fail(i);
                dead.push_back((i, next_churn + c.down_ms));
            }
            next_churn += c.every_ms;
        }
        w.run_until(t * 1000);
        let live: Vec<usize> = (0..w.nodes.len()).filter(|&i| w.nodes[i].alive).collect();
        let acc: Vec<(f64, usize)> = live.iter().map(|&i| w.view_accuracy(i)).collect();
        let mean = acc.iter().map(|a| a.0).sum::<f64>() / acc.len().max(1) as f64;
        let min = acc.iter().map(|a| a.0).fold(1.0, f64::min);
        let stale = acc.iter().map(|a| a.1).sum::<usize>() as f64 / acc.len().max(1) as f64;
        // A view is right when it holds every live peer it should and no dead one.
        let right =
            acc.iter().filter(|a| a.0 >= 1.0 && a.1 == 0).count() as f64 / acc.len().max(1) as f64;
        if t * 1000 >= joined_ms + 10_000 + c.down_ms {
            out.right.push(right);
        }
        let sent = w.counters.gossip_sent + w.counters.direct_sent;
        let rate = (sent - last_sent) as f64 / live.len().max(1) as f64;
        last_sent = sent;
        if c.federation && t == proposed_s {
            let spec = FederationSpec {
                name: FEDERATION.into(),
                objective: "the west zone's roadside twins".into(),
                require: [("zone".to_string(), "west".to_string())].into(),
                min_members: 3,
                lease_ms: LEASE_MS,
            };
            w.create_federation(0, spec)
                .expect("node 0 is live and in the west");
        }
        let federated = if c.federation {
            let (share, wrong) = federated(&w);
            if t >= proposed_s + 10 {
                out.federated_min = out.federated_min.min(share);
            }
            out.federated_wrong += wrong;
            share
        } else {
            0.0
        };
        let _ = writeln!(
            out.csv,
            "{t},{},{mean:.4},{min:.4},{stale:.3},{rate:.3},{federated:.4},{right:.4}",
            live.len()
        );
    }
    if c.federation {
        // The owner dies: a lease later, nobody holds the federation any more.
        w.fail(0);
        let end = w.now_ms() + LEASE_MS + 1_000;
        w.run_until(end);
        out.dissolved = w
            .nodes
            .iter()
            .filter_map(|n| n.gossip.as_ref())
            .all(|g| g.federations().get(FEDERATION).is_none());
    }
    let k = &w.counters;
    out.peer_down = k.peer_down;
    out.received_per_node_s =
        (received(&w) - received_before) as f64 / c.nodes as f64 / c.seconds.max(1) as f64;
    out.summary = format!(
        "churn: {} nodes, seed {}, {} virtual s after the joins ({} ms of joins)\n\
         events {}, gossip published {}, delivered {}, direct {}, lost {}, refused {}\n\
         peer up {}, peer down {}; full views first reached {}",
        c.nodes,
        c.seed,
        c.seconds,
        joined_ms,
        k.events,
        k.gossip_sent,
        k.gossip_delivered,
        k.direct_sent,
        k.lost,
        k.rejected,
        k.peer_up,
        k.peer_down,
        out.converged_ms.map_or("never".to_string(), |ms| format!(
            "{ms} ms after the last join"
        )),
    );
    if !out.right.is_empty() {
        let mean = out.right.iter().sum::<f64>() / out.right.len() as f64;
        let least = out.right.iter().copied().fold(1.0, f64::min);
        let _ = write!(
            out.summary,
            "\nviews right (every live peer they should hold, no dead one), once churn is steady: {:.2} % on average, {:.2} % in the worst second",
            mean * 100.0,
            least * 100.0
        );
    }
    if c.federation {
        let _ = write!(
            out.summary,
            "\nfederation {FEDERATION}: at least {:.1} % of live west nodes members from 10 s after it was proposed, {} east members; dissolved a lease after its owner died: {}",
            out.federated_min * 100.0,
            out.federated_wrong,
            out.dissolved
        );
        let k = &w.counters;
        let _ = write!(
            out.summary,
            "\nrecruiting: {} label listings, {} lookups of providers, {} federation messages told beyond neighbours",
            k.provided, k.provider_lookups, k.told
        );
    }
    out.trace_hash = w.trace_hash();
    out
}

/// The share of live west nodes that are members of the federation, and how many live east
/// nodes (which do not match it) are.
fn federated(w: &World) -> (f64, u64) {
    let (mut west, mut members, mut wrong) = (0, 0, 0);
    for n in w.nodes.iter().filter(|n| n.alive) {
        let member = n
            .gossip
            .as_ref()
            .and_then(|g| g.federations().get(FEDERATION))
            .is_some_and(|f| f.mine == Mine::Member);
        if n.labels.get("zone").map(String::as_str) == Some("west") {
            west += 1;
            members += member as usize;
        } else if member {
            wrong += 1;
        }
    }
    (members as f64 / west.max(1) as f64, wrong)
}
