//! The `flash-crowd` scenario: components serve steady traffic from all over a grid of edge
//! nodes, until, at one minute, a crowd in one region starts hammering a handful of them. The
//! nodes that host those components saturate; with the `balance` policy their hosts move them
//! (through the real placement code and migration handshake) to peers with room; `pinned` ones
//! stay and queue. Latency is the trip to the host plus an M/M/1 queueing delay at the host's
//! load.
//!
//! Invariants checked on every step: each component has exactly one host, epochs only grow.

use crate::migration::{Migration, Step};
use crate::net::grid;
use crate::queue::Queue;
use continuum_gossip::{Candidate, PeerId, PeerLoad, Placed, Placer, Policy, PolicyConfig};
use continuum_migrate::{Offer, ToSource, ToTarget};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct FlashCrowd {
    pub nodes: usize,
    pub seed: u64,
    pub seconds: u64,
    pub policy: Policy,
    /// Components (default: one per five nodes), each with this background rate.
    pub components: usize,
    pub background_rate: u64,
    /// From `crowd_at_s`, this many components get `crowd_rate` more requests per second,
    /// entering at nodes within `crowd_radius_km` of one spot.
    pub crowd_at_s: u64,
    pub crowd_components: usize,
    pub crowd_rate: u64,
    pub crowd_radius_km: f64,
    /// Requests per second a node serves at full load; each takes `service_ms` unloaded.
    pub capacity: f64,
    pub service_ms: f64,
    pub bound_ms: f64,
    pub state_bytes: u64,
    pub dirty_bytes_per_s: u64,
    pub radius_km: f64,
}

impl FlashCrowd {
    pub fn new(nodes: usize, seed: u64, seconds: u64, policy: Policy) -> FlashCrowd {
        FlashCrowd {
            nodes,
            seed,
            seconds,
            policy,
            components: (nodes / 2).max(1),
            background_rate: 40,
            crowd_at_s: 60,
            crowd_components: (nodes / 10).max(1),
            crowd_rate: 150,
            crowd_radius_km: 2.0,
            capacity: 300.0,
            service_ms: 1.0,
            bound_ms: 10.0,
            state_bytes: 1 << 20,
            dirty_bytes_per_s: 64 << 10,
            radius_km: 3.0,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// `t_s,requests,within_bound,max_load,migrations` per virtual second.
    pub csv: String,
    pub requests: u64,
    pub within_bound: u64,
    pub migrations: u64,
    pub peak_load: f64,
    pub summary: String,
    pub trace_hash: String,
}

enum Ev {
    Second,
    ToTarget { comp: usize, msg: ToTarget },
    ToSource { comp: usize, reply: ToSource },
}

struct Comp {
    name: String,
    host: usize,
    epoch: u64,
    /// Requests per second by entry node.
    traffic: BTreeMap<usize, u64>,
    migration: Option<Migration>,
}

pub fn run(c: &FlashCrowd) -> Outcome {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(c.seed);
    let (_, pos) = grid(c.nodes, 1.0);
    let ids: Vec<PeerId> = (0..c.nodes)
        .map(|i| crate::identity(c.seed, "edge", i).public().to_peer_id())
        .collect();
    let index: HashMap<PeerId, usize> = ids.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let delay_us = |a: usize, b: usize| ((1.0 + pos[a].distance(pos[b]) * 0.1) * 1000.0) as u64;
    let mut comps: Vec<Comp> = (0..c.components)
        .map(|k| {
            let mut traffic = BTreeMap::new();
            for _ in 0..c.background_rate {
                *traffic.entry(rng.random_range(0..c.nodes)).or_default() += 1;
            }
            Comp {
                name: format!("svc{k}"),
                host: rng.random_range(0..c.nodes),
                epoch: 1,
                traffic,
                migration: None,
            }
        })
        .collect();
    let centre = rng.random_range(0..c.nodes);
    let crowd_nodes: Vec<usize> = (0..c.nodes)
        .filter(|&i| pos[i].distance(pos[centre]) <= c.crowd_radius_km)
        .collect();
    let near: Vec<Vec<usize>> = (0..c.nodes)
        .map(|i| {
            (0..c.nodes)
                .filter(|&j| j != i && pos[j].distance(pos[i]) <= c.radius_km)
                .collect()
        })
        .collect();
    let no_labels = BTreeMap::new();
    let mut placers: HashMap<usize, Placer> = HashMap::new();
    let mut q: Queue<Ev> = Queue::default();
    let mut out = Outcome {
        csv: "t_s,requests,within_bound,max_load,migrations\n".into(),
        ..Outcome::default()
    };
    let mut trace = blake3::Hasher::new();
    let mut migrations_this_second = 0;
    q.at(1_000_000, Ev::Second);
    while let Some(ev) = q.next(c.seconds * 1_000_000) {
        let now = q.now_ms();
        trace.update(&q.now_us().to_le_bytes());
        match ev {
            Ev::Second => {
                let t = now / 1000;
                if t == c.crowd_at_s {
                    for comp in comps.iter_mut().take(c.crowd_components) {
                        for i in 0..c.crowd_rate as usize {
                            *comp
                                .traffic
                                .entry(crowd_nodes[i % crowd_nodes.len()])
                                .or_default() += 1;
                        }
                    }
                }
                // Loads from where the components are now.
                let mut load = vec![0.0f64; c.nodes];
                for comp in &comps {
                    load[comp.host] += comp.traffic.values().sum::<u64>() as f64 / c.capacity;
                }
                let (mut requests, mut within) = (0u64, 0u64);
                for comp in &comps {
                    let queueing = c.service_ms / (1.0 - load[comp.host].min(0.99));
                    for (&entry, &n) in &comp.traffic {
                        let rtt = if entry == comp.host {
                            0.0
                        } else {
                            2.0 * delay_us(entry, comp.host) as f64 / 1000.0
                        };
                        requests += n;
                        if 2.0 + rtt + queueing <= c.bound_ms {
                            within += n;
                        }
                    }
                }
                let max_load = load.iter().copied().fold(0.0, f64::max);
                out.peak_load = out.peak_load.max(max_load);
                out.requests += requests;
                out.within_bound += within;
                let _ = writeln!(
                    out.csv,
                    "{t},{requests},{within},{max_load:.3},{migrations_this_second}"
                );
                migrations_this_second = 0;
                // Each host evaluates the policy over its components.
                if c.policy != Policy::Pinned {
                    let mut by_host: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
                    for (k, comp) in comps.iter().enumerate() {
                        if comp.migration.is_none() {
                            by_host.entry(comp.host).or_default().push(k);
                        }
                    }
                    for (host, ks) in by_host {
                        let placer = placers
                            .entry(host)
                            .or_insert_with(|| Placer::new(PolicyConfig::default()));
                        for &k in &ks {
                            for (&entry, &n) in &comps[k].traffic {
                                placer.record_many(now, &comps[k].name, ids[entry], n);
                            }
                        }
                        let peers: Vec<PeerLoad> = near[host]
                            .iter()
                            .map(|&j| PeerLoad {
                                candidate: Candidate {
                                    peer: ids[j],
                                    load: load[j] as f32,
                                    slots: 64,
                                    mem_free: 1 << 30,
                                    components: 0,
                                    labels: &no_labels,
                                },
                                rtt_ms: Some(2.0 * delay_us(host, j) as f64 / 1000.0),
                            })
                            .collect();
                        let placed: Vec<Placed> = ks
                            .iter()
                            .map(|&k| Placed {
                                name: &comps[k].name,
                                policy: c.policy,
                                require: &no_labels,
                                within: None,
                                memory_bytes: c.state_bytes,
                                load: comps[k].traffic.values().sum::<u64>() as f32
                                    / c.capacity as f32,
                            })
                            .collect();
                        let decisions = placer.evaluate(
                            now,
                            ids[host],
                            &no_labels,
                            load[host] as f32,
                            &placed,
                            &peers,
                        );
                        drop((peers, placed));
                        for d in decisions {
                            let Some(k) =
                                ks.iter().copied().find(|&k| comps[k].name == d.component)
                            else {
                                continue;
                            };
                            let Some(&to) =
                                d.to.parse::<PeerId>()
                                    .ok()
                                    .and_then(|p| index.get(&p))
                                    .as_ref()
                                    .map(|v| *v)
                            else {
                                continue;
                            };
                            let offer = Offer {
                                id: k as u64,
                                name: comps[k].name.clone(),
                                version: "1".into(),
                                module_digest: [0; 32],
                                memory_bytes: c.state_bytes,
                                epoch: comps[k].epoch,
                                federation: None,
                                require: BTreeMap::new(),
                                policy: c.policy.name().into(),
                            };
                            comps[k].migration =
                                Some(Migration::new(now, offer, host, to, c.dirty_bytes_per_s));
                            trace.update(&[1, k as u8, to as u8]);
                            drive(
                                &mut comps,
                                k,
                                &mut q,
                                &delay_us,
                                &mut out,
                                &mut migrations_this_second,
                                &mut placers,
                            );
                        }
                    }
                }
                q.after(1_000_000, Ev::Second);
            }
            Ev::ToTarget { comp, msg } => {
                let Some(m) = comps[comp].migration.as_mut() else {
                    continue;
                };
                let (from, to) = (m.from, m.to);
                if let Some(reply) = m.answer(now, msg) {
                    q.after(delay_us(to, from), Ev::ToSource { comp, reply });
                }
            }
            Ev::ToSource { comp, reply } => {
                if let Some(m) = comps[comp].migration.as_mut() {
                    m.source.handle_reply(now, reply);
                }
                drive(
                    &mut comps,
                    comp,
                    &mut q,
                    &delay_us,
                    &mut out,
                    &mut migrations_this_second,
                    &mut placers,
                );
            }
        }
    }
    out.summary = format!(
        "flash-crowd: {} nodes, {} components, crowd of {} req/s on {} of them from t={} s, policy {}, seed {}, {} virtual s\n\
         requests {}, within {} ms: {:.1} %; peak node load {:.2}; migrations {}",
        c.nodes,
        c.components,
        c.crowd_rate,
        c.crowd_components,
        c.crowd_at_s,
        c.policy.name(),
        c.seed,
        c.seconds,
        out.requests,
        c.bound_ms,
        100.0 * out.within_bound as f64 / out.requests.max(1) as f64,
        out.peak_load,
        out.migrations,
    );
    out.trace_hash = trace.finalize().to_hex().to_string();
    out
}

/// Carry out what component `k`'s migration asks (state sent at 12.5 MB/s).
fn drive(
    comps: &mut [Comp],
    k: usize,
    q: &mut Queue<Ev>,
    delay_us: &dyn Fn(usize, usize) -> u64,
    out: &mut Outcome,
    this_second: &mut u64,
    placers: &mut HashMap<usize, Placer>,
) {
    let now = q.now_ms();
    let Some(m) = comps[k].migration.as_mut() else {
        return;
    };
    let (from, to) = (m.from, m.to);
    for step in m.drive(now) {
        match step {
            Step::Send { msg, bytes } => {
                q.after(
                    delay_us(from, to) + bytes * 1000 / 12_500,
                    Ev::ToTarget { comp: k, msg },
                );
            }
            Step::Switched { epoch } => {
                let comp = &mut comps[k];
                assert!(
                    epoch > comp.epoch,
                    "epoch went from {} to {epoch}",
                    comp.epoch
                );
                assert_eq!(
                    comp.host, from,
                    "a component moved from a node that did not host it"
                );
                comp.epoch = epoch;
                comp.host = to;
            }
            Step::Frozen | Step::Unfrozen => {}
            Step::Finished(result) => {
                comps[k].migration = None;
                if result.is_ok() {
                    out.migrations += 1;
                    *this_second += 1;
                    placers
                        .entry(to)
                        .or_insert_with(|| Placer::new(PolicyConfig::default()))
                        .settle(now, &comps[k].name);
                }
            }
        }
    }
}
