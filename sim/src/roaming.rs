//! The `roaming` scenario: vehicles drive across a grid of roadside edge nodes, each with a
//! component (its twin) that serves it. A vehicle's requests enter the mesh at the roadside
//! node nearest to it and must be answered within a latency bound. With `follow-traffic`, the
//! host's placement policy (the real `continuum_gossip::Placer`) moves the component toward
//! its vehicle through the real migration handshake (`continuum_migrate::Source` and
//! `Target`, messages delayed by the simulated links and by the state's transfer time); with
//! `pinned` it stays where it started.
//!
//! Membership is not simulated here: each node's peers are the nodes within a radius (the
//! churn scenario runs the gossip machines; at this scale they need scoped membership first).
//!
//! Invariants checked on every step: each component has exactly one host, epochs only grow.

use crate::migration::{Migration, Step};
use crate::net::{Position, grid};
use crate::queue::Queue;
use continuum_gossip::{Candidate, PeerId, PeerLoad, Placed, Placer, Policy, PolicyConfig};
use continuum_migrate::{Offer, ToSource, ToTarget};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct Roaming {
    /// Roadside nodes, on a square grid.
    pub nodes: usize,
    pub seed: u64,
    pub seconds: u64,
    pub policy: Policy,
    /// Grid spacing, km.
    pub spacing_km: f64,
    /// Vehicles (default: one per ten nodes).
    pub vehicles: usize,
    pub speed_m_s: f64,
    /// Requests per second per vehicle.
    pub rate: u64,
    /// A request within this round-trip time counts as served in time, ms.
    pub bound_ms: f64,
    /// The radio round trip between a vehicle and its roadside node, ms.
    pub radio_ms: f64,
    /// One-way delay between nodes: a base plus a share per km, ms.
    pub base_ms: f64,
    pub ms_per_km: f64,
    /// Bytes per ms between nodes (transfer time of state).
    pub bandwidth_bytes_per_ms: u64,
    /// Each twin's state, and how much of it changes per second.
    pub state_bytes: u64,
    pub dirty_bytes_per_s: u64,
    /// A node's peers are the nodes within this distance, km.
    pub radius_km: f64,
}

impl Roaming {
    pub fn new(nodes: usize, seed: u64, seconds: u64, policy: Policy) -> Roaming {
        Roaming {
            nodes,
            seed,
            seconds,
            policy,
            spacing_km: 1.0,
            vehicles: (nodes / 10).max(1),
            speed_m_s: 15.0,
            rate: 10,
            bound_ms: 5.0,
            radio_ms: 2.0,
            base_ms: 1.0,
            ms_per_km: 0.1,
            bandwidth_bytes_per_ms: 12_500,
            state_bytes: 1 << 20,
            dirty_bytes_per_s: 64 << 10,
            radius_km: 2.5,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// `t_s,requests,within_bound,migrations` per virtual second.
    pub csv: String,
    pub requests: u64,
    pub within_bound: u64,
    pub migrations: u64,
    pub aborted: u64,
    pub events: u64,
    pub summary: String,
    pub trace_hash: String,
}

enum Ev {
    Tick,
    Evaluate,
    ToTarget { comp: usize, msg: ToTarget },
    ToSource { comp: usize, reply: ToSource },
}

struct Twin {
    name: String,
    host: usize,
    epoch: u64,
    migration: Option<Moving>,
}

/// A twin on its way to another node.
struct Moving {
    m: Migration,
    /// Arrival times (µs) of requests held by the freeze.
    held: Vec<u64>,
    frozen: bool,
}

struct Vehicle {
    pos: Position,
    /// Unit direction.
    dir: (f64, f64),
    twin: usize,
}

struct Sim<'a> {
    c: &'a Roaming,
    q: Queue<Ev>,
    side: usize,
    pos: Vec<Position>,
    ids: Vec<PeerId>,
    index: HashMap<PeerId, usize>,
    neighbours: Vec<Vec<usize>>,
    placers: HashMap<usize, Placer>,
    twins: Vec<Twin>,
    vehicles: Vec<Vehicle>,
    out: Outcome,
    second: (u64, u64, u64),
    trace: blake3::Hasher,
    no_labels: BTreeMap<String, String>,
}

pub fn run(c: &Roaming) -> Outcome {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(c.seed);
    let (side, pos) = grid(c.nodes, c.spacing_km);
    let ids: Vec<PeerId> = (0..c.nodes)
        .map(|i| crate::identity(c.seed, "roadside", i).public().to_peer_id())
        .collect();
    let cells = (c.radius_km / c.spacing_km).ceil() as i64;
    let neighbours = (0..c.nodes)
        .map(|i| {
            let (x, y) = ((i % side) as i64, (i / side) as i64);
            let mut n = Vec::new();
            for dy in -cells..=cells {
                for dx in -cells..=cells {
                    let (nx, ny) = (x + dx, y + dy);
                    if (dx, dy) == (0, 0) || nx < 0 || ny < 0 || nx >= side as i64 {
                        continue;
                    }
                    let j = ny as usize * side + nx as usize;
                    if j < c.nodes && pos[i].distance(pos[j]) <= c.radius_km {
                        n.push(j);
                    }
                }
            }
            n
        })
        .collect();
    let width = side as f64 * c.spacing_km;
    let mut sim = Sim {
        c,
        q: Queue::default(),
        side,
        index: ids.iter().enumerate().map(|(i, p)| (*p, i)).collect(),
        ids,
        neighbours,
        placers: HashMap::new(),
        twins: Vec::new(),
        vehicles: Vec::new(),
        out: Outcome {
            csv: "t_s,requests,within_bound,migrations\n".into(),
            ..Outcome::default()
        },
        second: (0, 0, 0),
        trace: blake3::Hasher::new(),
        no_labels: BTreeMap::new(),
        pos,
    };
    for v in 0..c.vehicles {
        let p = Position {
            x: rng.random_range(0.0..width),
            y: rng.random_range(0.0..(c.nodes / side) as f64 * c.spacing_km),
        };
        let dir = match rng.random_range(0..4) {
            0 => (1.0, 0.0),
            1 => (-1.0, 0.0),
            2 => (0.0, 1.0),
            _ => (0.0, -1.0),
        };
        let host = sim.nearest(p);
        sim.twins.push(Twin {
            name: format!("twin{v}"),
            host,
            epoch: 1,
            migration: None,
        });
        sim.vehicles.push(Vehicle {
            pos: p,
            dir,
            twin: v,
        });
    }
    sim.q.at(100_000, Ev::Tick);
    sim.q.at(1_000_000, Ev::Evaluate);
    let end_us = c.seconds * 1_000_000;
    while let Some(ev) = sim.q.next(end_us) {
        sim.out.events += 1;
        sim.handle(ev);
    }
    sim.close_second();
    let o = &mut sim.out;
    let minutes = c.seconds as f64 / 60.0;
    o.summary = format!(
        "roaming: {} roadside nodes ({}x{} km grid), {} vehicles at {} m/s, policy {}, seed {}, {} virtual s\n\
         requests {}, within {} ms: {:.1} %; migrations {} ({:.2} per vehicle per virtual minute), aborted {}; events {}",
        c.nodes,
        side,
        c.nodes.div_ceil(side),
        c.vehicles,
        c.speed_m_s,
        c.policy.name(),
        c.seed,
        c.seconds,
        o.requests,
        c.bound_ms,
        100.0 * o.within_bound as f64 / o.requests.max(1) as f64,
        o.migrations,
        o.migrations as f64 / c.vehicles as f64 / minutes.max(1e-9),
        o.aborted,
        o.events,
    );
    o.trace_hash = sim.trace.finalize().to_hex().to_string();
    sim.out
}

impl Sim<'_> {
    fn nearest(&self, p: Position) -> usize {
        let x = (p.x / self.c.spacing_km)
            .round()
            .clamp(0.0, (self.side - 1) as f64) as usize;
        let rows = self.c.nodes.div_ceil(self.side);
        let y = (p.y / self.c.spacing_km)
            .round()
            .clamp(0.0, (rows - 1) as f64) as usize;
        (y * self.side + x).min(self.c.nodes - 1)
    }

    /// One-way delay between two nodes, µs.
    fn delay_us(&self, a: usize, b: usize) -> u64 {
        let ms = self.c.base_ms + self.pos[a].distance(self.pos[b]) * self.c.ms_per_km;
        (ms * 1000.0) as u64
    }

    fn rtt_ms(&self, a: usize, b: usize) -> f64 {
        if a == b {
            0.0
        } else {
            2.0 * self.delay_us(a, b) as f64 / 1000.0
        }
    }

    fn trace(&mut self, kind: u8, a: usize, b: usize) {
        self.trace.update(&self.q.now_us().to_le_bytes());
        self.trace.update(&[kind]);
        self.trace.update(&(a as u64).to_le_bytes());
        self.trace.update(&(b as u64).to_le_bytes());
    }

    fn close_second(&mut self) {
        let (r, w, m) = std::mem::take(&mut self.second);
        if r > 0 || m > 0 {
            let _ = writeln!(self.out.csv, "{},{r},{w},{m}", self.q.now_ms() / 1000);
        }
    }

    fn served(&mut self, latency_ms: f64) {
        let ok = latency_ms <= self.c.bound_ms;
        self.out.requests += 1;
        self.second.0 += 1;
        if ok {
            self.out.within_bound += 1;
            self.second.1 += 1;
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick => self.tick(),
            Ev::Evaluate => self.evaluate(),
            Ev::ToTarget { comp, msg } => self.at_target(comp, msg),
            Ev::ToSource { comp, reply } => {
                let now = self.q.now_ms();
                if let Some(mv) = self.twins[comp].migration.as_mut() {
                    mv.m.source.handle_reply(now, reply);
                }
                self.drive(comp);
            }
        }
    }

    /// Every 100 ms: vehicles move, and each sends its requests in at its nearest node.
    fn tick(&mut self) {
        let dt = 0.1;
        let width = self.side as f64 * self.c.spacing_km;
        let height = self.c.nodes.div_ceil(self.side) as f64 * self.c.spacing_km;
        let per_tick = (self.c.rate as f64 * dt).round().max(1.0) as u64;
        let now = self.q.now_ms();
        for v in 0..self.vehicles.len() {
            let veh = &mut self.vehicles[v];
            let km = self.c.speed_m_s * dt / 1000.0;
            veh.pos.x = (veh.pos.x + veh.dir.0 * km).rem_euclid(width);
            veh.pos.y = (veh.pos.y + veh.dir.1 * km).rem_euclid(height);
            let (p, t) = (veh.pos, veh.twin);
            let entry = self.nearest(p);
            let host = self.twins[t].host;
            for _ in 0..per_tick {
                if let Some(mv) = self.twins[t].migration.as_mut()
                    && mv.frozen
                {
                    mv.held.push(self.q.now_us());
                } else {
                    let ms = self.c.radio_ms + self.rtt_ms(entry, host);
                    self.served(ms);
                }
                if self.c.policy != Policy::Pinned {
                    let name = self.twins[t].name.clone();
                    let entry_id = self.ids[entry];
                    self.placers
                        .entry(host)
                        .or_insert_with(|| Placer::new(PolicyConfig::default()))
                        .record(now, &name, entry_id);
                }
            }
        }
        if self.q.now_ms().is_multiple_of(1000) {
            self.close_second();
        }
        self.q.after(100_000, Ev::Tick);
    }

    /// Every second: each host runs the placement policy over the twins it hosts.
    fn evaluate(&mut self) {
        self.q.after(1_000_000, Ev::Evaluate);
        if self.c.policy == Policy::Pinned {
            return;
        }
        let now = self.q.now_ms();
        let mut by_host: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (t, twin) in self.twins.iter().enumerate() {
            if twin.migration.is_none() {
                by_host.entry(twin.host).or_default().push(t);
            }
        }
        for (host, twins) in by_host {
            let Some(mut placer) = self.placers.remove(&host) else {
                continue;
            };
            // Its neighbours, and wherever its twins' requests come in from (a host knows
            // the peers that forward to it).
            let mut near = self.neighbours[host].clone();
            for &t in &twins {
                let entry = self.nearest(self.vehicles[t].pos);
                if entry != host && !near.contains(&entry) {
                    near.push(entry);
                }
            }
            let peers: Vec<PeerLoad> = near
                .iter()
                .map(|&j| PeerLoad {
                    candidate: Candidate {
                        peer: self.ids[j],
                        load: 0.1,
                        slots: 64,
                        mem_free: 1 << 30,
                        components: 0,
                        labels: &self.no_labels,
                    },
                    rtt_ms: Some(self.rtt_ms(host, j)),
                })
                .collect();
            let placed: Vec<Placed> = twins
                .iter()
                .map(|&t| Placed {
                    name: &self.twins[t].name,
                    policy: self.c.policy,
                    require: &self.no_labels,
                    within: None,
                    memory_bytes: self.c.state_bytes,
                    load: 0.0,
                })
                .collect();
            let decisions =
                placer.evaluate(now, self.ids[host], &self.no_labels, 0.1, &placed, &peers);
            drop((peers, placed));
            self.placers.insert(host, placer);
            for d in decisions {
                let (Ok(to), Some(t)) = (
                    d.to.parse::<PeerId>(),
                    twins
                        .iter()
                        .copied()
                        .find(|&t| self.twins[t].name == d.component),
                ) else {
                    continue;
                };
                if let Some(&to) = self.index.get(&to) {
                    self.start_migration(t, to);
                }
            }
        }
    }

    fn start_migration(&mut self, t: usize, to: usize) {
        let now = self.q.now_ms();
        let twin = &self.twins[t];
        let offer = Offer {
            id: t as u64,
            name: twin.name.clone(),
            version: "1".into(),
            module_digest: [0; 32],
            memory_bytes: self.c.state_bytes,
            epoch: twin.epoch,
            federation: None,
            require: BTreeMap::new(),
            policy: self.c.policy.name().into(),
        };
        let m = Migration::new(now, offer, twin.host, to, self.c.dirty_bytes_per_s);
        self.twins[t].migration = Some(Moving {
            m,
            held: Vec::new(),
            frozen: false,
        });
        self.trace(1, t, to);
        self.drive(t);
    }

    /// Carry out what twin `t`'s migration asks.
    fn drive(&mut self, t: usize) {
        let now = self.q.now_ms();
        let Some(mv) = self.twins[t].migration.as_mut() else {
            return;
        };
        let (from, to) = (mv.m.from, mv.m.to);
        for step in mv.m.drive(now) {
            match step {
                Step::Send { msg, bytes } => {
                    let delay = self.delay_us(from, to)
                        + bytes * 1000 / self.c.bandwidth_bytes_per_ms.max(1);
                    self.q.after(delay, Ev::ToTarget { comp: t, msg });
                }
                Step::Frozen => {
                    if let Some(mv) = self.twins[t].migration.as_mut() {
                        mv.frozen = true;
                    }
                }
                Step::Switched { epoch } => {
                    // Invariants: one host at a time, epochs only grow.
                    let twin = &mut self.twins[t];
                    assert!(
                        epoch > twin.epoch,
                        "epoch went from {} to {epoch}",
                        twin.epoch
                    );
                    assert_eq!(
                        twin.host, from,
                        "a twin moved from a node that did not host it"
                    );
                    twin.epoch = epoch;
                    twin.host = to;
                    self.release_held(t, to);
                    self.trace(2, t, to);
                }
                Step::Unfrozen => self.release_held(t, from),
                Step::Finished(result) => {
                    self.twins[t].migration = None;
                    match result {
                        Ok(_) => {
                            self.out.migrations += 1;
                            self.second.2 += 1;
                            let name = self.twins[t].name.clone();
                            self.placers
                                .entry(to)
                                .or_insert_with(|| Placer::new(PolicyConfig::default()))
                                .settle(now, &name);
                            if let Some(p) = self.placers.get_mut(&from) {
                                p.forget(&name);
                            }
                        }
                        Err(_) => self.out.aborted += 1,
                    }
                }
            }
        }
    }

    /// The freeze is over: the held requests are served (by `host`), having waited.
    fn release_held(&mut self, t: usize, host: usize) {
        let now_us = self.q.now_us();
        let Some(mv) = self.twins[t].migration.as_mut() else {
            return;
        };
        mv.frozen = false;
        let held = std::mem::take(&mut mv.held);
        let entry = self.nearest(self.vehicles[t].pos);
        for at in held {
            let ms = self.c.radio_ms + self.rtt_ms(entry, host) + (now_us - at) as f64 / 1000.0;
            self.served(ms);
        }
    }

    /// The target's side: answer each message with the real machine.
    fn at_target(&mut self, t: usize, msg: ToTarget) {
        let now = self.q.now_ms();
        let Some(mv) = self.twins[t].migration.as_mut() else {
            return;
        };
        let (from, to) = (mv.m.from, mv.m.to);
        if let Some(reply) = mv.m.answer(now, msg) {
            let link = self.delay_us(to, from);
            self.q.after(link, Ev::ToSource { comp: t, reply });
        }
    }
}
