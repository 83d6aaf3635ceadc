//! The `roaming` scenario: vehicles drive across a grid of roadside edge nodes, each with a
//! component (its twin) that serves it. A vehicle's requests enter the mesh at the roadside
//! node nearest to it and must be answered within a latency bound. With `follow-traffic`, the
//! host's placement policy (the real `continuum_gossip::Placer`) moves the component toward
//! its vehicle through the real migration handshake (`continuum_migrate::Source` and
//! `Target`, messages delayed by the simulated links and by the state's transfer time); with
//! `pinned` it stays where it started.
//!
//! Membership: by default each node's peers are the nodes within a radius. With `membership`,
//! every roadside node runs the real gossip machine scoped to its neighbours (the eight around
//! it, and any node that forwards it requests, as a real node connects to the peers that talk
//! to it), over the simulated network; a host then places its twins among the peers its view
//! holds, with the loads, room and labels their adverts say, and a crashed node lingers in views
//! until its heartbeats are missed. Names too are the node's: each host advertises its twins
//! and files their records in the table (a modelled Kademlia, see `World`), and a request
//! goes where its entry node's directory says (its neighbours' adverts, then the records it
//! found), a former host sending it on, an unknown name looked up in the table.
//!
//! Faults (all off by default): migration messages lost at random, roadside nodes that crash
//! and come back from their disks, and partitions that cut a square region off the rest. Both
//! sides' timers run, so lost answers, in-doubt sources and targets that take over are the
//! real machines' doing.
//!
//! Invariants checked at every step that could break them: a twin never has two hosts (a
//! source serving again while its target hosts), no twin is lost (a source dropping its copy
//! before the target hosts, or a target discarding after the source switched), epochs only
//! grow. Violations are counted and printed; the tests demand none.

use crate::migration::{Migration, STEP_TIMEOUT_MS, Step};
use crate::net::{NetConfig, Position, grid};
use crate::queue::Queue;
use crate::world::World;
use continuum_gossip::{Candidate, PeerId, PeerLoad, Placed, Placer, Policy, PolicyConfig};
use continuum_migrate::{Offer, Outcome as Ended, TargetAction, ToSource, ToTarget};
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
    pub faults: Faults,
    /// Run the gossip membership (scoped to neighbours) on every roadside node.
    pub membership: bool,
}

/// What goes wrong, and how often.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Share of migration messages (and probes) lost.
    pub loss: f64,
    /// Crashes per node per hour; a crashed node is down `down_s`, then restarts from its disk.
    pub crashes_per_node_hour: f64,
    pub down_s: u64,
    /// Mean time between partitions (0: none); each cuts a square of a quarter of the grid's
    /// width off the rest for `partition_s`.
    pub partition_every_s: u64,
    pub partition_s: u64,
}

impl Faults {
    /// The fault mix of `--faults`: 1 % loss, each node crashing twice an hour for 20 s, and
    /// a 30 s partition every two minutes on average.
    pub fn harsh() -> Faults {
        Faults {
            loss: 0.01,
            crashes_per_node_hour: 2.0,
            down_s: 20,
            partition_every_s: 120,
            partition_s: 30,
        }
    }
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
            faults: Faults::default(),
            membership: false,
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
    /// Requests that found their twin's host down or cut off, or whose held request died
    /// with a crashed source.
    pub unavailable: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub messages_lost: u64,
    /// What the membership did, with `membership`.
    pub membership: Option<String>,
    /// Takeovers by a target whose source was gone or out of reach.
    pub takeovers: u64,
    /// With membership (names on): requests that went first to a node that no longer hosts
    /// the twin (it sent them on), and how long after the twin's move the last such one came;
    /// requests whose entry node did not know where the twin was yet (it looked the name up
    /// in the table; not served in time).
    pub forwarded: u64,
    pub route_lag_max_ms: u64,
    pub unrouted: u64,
    /// Lookups of names in the table, and those that found a record.
    pub lookups: u64,
    pub lookups_found: u64,
    /// Invariant violations: two hosts at once, a twin lost, an epoch that went back.
    pub two_hosts: u64,
    pub lost: u64,
    pub epoch_regressions: u64,
    pub events: u64,
    pub summary: String,
    pub trace_hash: String,
}

enum Ev {
    Tick,
    Evaluate,
    /// Messages and timers of migration `mig` of twin `comp`.
    ToTarget {
        comp: usize,
        mig: u64,
        msg: ToTarget,
    },
    ToSource {
        comp: usize,
        mig: u64,
        reply: ToSource,
    },
    SourceTimer {
        comp: usize,
        mig: u64,
    },
    TargetTimer {
        comp: usize,
        mig: u64,
    },
    /// The target asks the source how the migration ended (probe number `n`).
    Probe {
        comp: usize,
        mig: u64,
        n: u64,
    },
    ProbeAnswer {
        comp: usize,
        mig: u64,
        n: u64,
        answer: Option<Ended>,
    },
    Crash,
    Restart {
        node: usize,
    },
    Partition,
    Heal,
}

struct Twin {
    name: String,
    host: usize,
    epoch: u64,
    migration: Option<Moving>,
    /// The hand-off its last move's source signed to its host (none if it never moved).
    handoff: Option<continuum_gossip::SignedHandoff>,
    /// When it last moved, ms.
    moved_at: u64,
}

/// A twin on its way to another node.
struct Moving {
    id: u64,
    m: Migration,
    /// Arrival times (µs) of requests held by the freeze.
    held: Vec<u64>,
    frozen: bool,
    /// The source gave the twin away (it never serves it again).
    switched: bool,
    source_done: bool,
    /// The source's process died during the migration (its machine is gone).
    source_dead: bool,
    /// The target hosts the twin (on its disk, whatever happens to it next).
    target_host: bool,
    target_dead: bool,
    probes: u64,
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
    alive: Vec<bool>,
    /// The region cut off by the current partition: x0, y0, side (km).
    cut: Option<(f64, f64, f64)>,
    faults: Xoshiro256PlusPlus,
    next_migration: u64,
    /// The roadside nodes' gossip, with `membership`.
    world: Option<World>,
    /// With membership: where an entry node sends a twin's requests, and when its directory
    /// said so (it reads it again a second on, as a node's snapshot follows its gossip).
    routes: HashMap<(usize, usize), (usize, u64)>,
}

/// How long an entry node's route to a twin stands before its directory is read again, ms.
const ROUTE_FOR_MS: u64 = 1000;

pub fn run(c: &Roaming) -> Outcome {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(c.seed);
    let (side, pos) = grid(c.nodes, c.spacing_km);
    let mut world = c.membership.then(|| {
        let net = NetConfig {
            loss: c.faults.loss,
            ..NetConfig::default()
        };
        // The node's own: scoped to neighbours, names filed and found in the table.
        let cfg = continuum_gossip::Config {
            scope: continuum_gossip::Scope::Neighbours,
            names: true,
            ..continuum_gossip::Config::default()
        };
        let mut w = World::new(c.seed, net, cfg);
        w.set_resources(continuum_gossip::Resources {
            arch: "sim".into(),
            cores: 4,
            slots: 64,
            load: 0.1,
            mem_free: 1 << 30,
            mem_total: 1 << 30,
            ..continuum_gossip::Resources::default()
        });
        for &p in &pos {
            w.add_node(p);
        }
        w
    });
    let ids: Vec<PeerId> = match &world {
        Some(w) => w.nodes.iter().map(|n| n.id).collect(),
        None => (0..c.nodes)
            .map(|i| crate::identity(c.seed, "roadside", i).public().to_peer_id())
            .collect(),
    };
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
    if let Some(w) = world.as_mut() {
        // Each roadside node starts and connects to the (up to) eight around it.
        for i in 0..c.nodes {
            w.start(i, &[]);
        }
        for i in 0..c.nodes {
            for j in around(i, side, c.nodes) {
                w.connect(i, j);
            }
        }
    }
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
        alive: vec![true; c.nodes],
        cut: None,
        faults: Xoshiro256PlusPlus::seed_from_u64(c.seed ^ 0xfa17),
        next_migration: 0,
        world,
        routes: HashMap::new(),
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
            handoff: None,
            moved_at: 0,
        });
        sim.vehicles.push(Vehicle {
            pos: p,
            dir,
            twin: v,
        });
    }
    if sim.world.is_some() {
        let hosts: std::collections::BTreeSet<usize> = sim.twins.iter().map(|t| t.host).collect();
        for h in hosts {
            sim.advertise(h);
        }
    }
    sim.q.at(100_000, Ev::Tick);
    sim.q.at(1_000_000, Ev::Evaluate);
    sim.schedule_crash();
    sim.schedule_partition();
    let end_us = c.seconds * 1_000_000;
    while let Some(ev) = sim.q.next(end_us) {
        if let Some(w) = sim.world.as_mut() {
            w.run_until(sim.q.now_ms());
        }
        sim.out.events += 1;
        sim.handle(ev);
    }
    if let Some(w) = sim.world.as_mut() {
        w.run_until(end_us / 1000);
        sim.out.events += w.counters.events;
        let k = &w.counters;
        let (checked, skipped) = w.verified.counts();
        let views: usize = w
            .nodes
            .iter()
            .filter_map(|n| n.gossip.as_ref())
            .map(|g| g.view().len())
            .sum();
        sim.out.lookups = k.lookups;
        sim.out.lookups_found = k.lookups_found;
        let o = &sim.out;
        sim.out.membership = Some(format!(
            "membership: gossip scoped to neighbours on every node; {} messages ({:.2} per node per s), {} refused; views hold {:.1} peers on average; signatures: {checked} checked, {skipped} frames seen checked already\n\
             names: {} records filed, {} stored, {} refused; {} lookups, {} found a record, {} lost; \
             requests sent on by a former host {} ({:.3} %), the last {} ms after its twin moved; not routed yet {} ({:.3} %)",
            k.direct_sent,
            k.direct_sent as f64 / c.nodes as f64 / c.seconds.max(1) as f64,
            k.rejected,
            views as f64 / c.nodes as f64,
            k.names_filed,
            k.names_stored,
            k.names_refused,
            k.lookups,
            k.lookups_found,
            k.lookups_lost,
            o.forwarded,
            100.0 * o.forwarded as f64 / o.requests.max(1) as f64,
            o.route_lag_max_ms,
            o.unrouted,
            100.0 * o.unrouted as f64 / o.requests.max(1) as f64,
        ));
        sim.trace.update(w.trace_hash().as_bytes());
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
    let f = &c.faults;
    if f.loss > 0.0 || f.crashes_per_node_hour > 0.0 || f.partition_every_s > 0 {
        let _ = write!(
            o.summary,
            "\nfaults: {:.1} % of migration messages lost ({}), {} crashes ({} s down), {} partitions ({} s); \
             {} requests unavailable ({:.2} %), {} takeovers by targets\n\
             invariants: {} times two hosts, {} twins lost, {} epoch regressions",
            f.loss * 100.0,
            o.messages_lost,
            o.crashes,
            f.down_s,
            o.partitions,
            f.partition_s,
            o.unavailable,
            100.0 * o.unavailable as f64 / o.requests.max(1) as f64,
            o.takeovers,
            o.two_hosts,
            o.lost,
            o.epoch_regressions,
        );
    }
    if let Some(m) = &o.membership {
        let _ = write!(o.summary, "\n{m}");
    }
    o.trace_hash = sim.trace.finalize().to_hex().to_string();
    sim.out
}

/// The (up to) eight grid nodes around node `i`.
fn around(i: usize, side: usize, nodes: usize) -> Vec<usize> {
    let (x, y) = ((i % side) as i64, (i / side) as i64);
    let mut out = Vec::with_capacity(8);
    for dy in -1..=1 {
        for dx in -1..=1 {
            let (nx, ny) = (x + dx, y + dy);
            let j = ny * side as i64 + nx;
            if (dx, dy) != (0, 0) && nx >= 0 && ny >= 0 && nx < side as i64 && (j as usize) < nodes
            {
                out.push(j as usize);
            }
        }
    }
    out
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
            Ev::Crash => self.crash(),
            Ev::Restart { node } => self.restart(node),
            Ev::Partition => self.partition(),
            Ev::Heal => {
                self.cut = None;
                if let Some(w) = self.world.as_mut() {
                    w.net.heal();
                }
                self.trace(7, 0, 0);
            }
            Ev::ToTarget { comp, mig, msg } => {
                if self.current(comp, mig) {
                    self.at_target(comp, msg);
                }
            }
            Ev::ToSource { comp, mig, reply } => {
                if self.source_runs(comp, mig) {
                    let now = self.q.now_ms();
                    let mv = self.twins[comp].migration.as_mut().expect("current");
                    mv.m.source.handle_reply(now, reply);
                    self.drive(comp);
                }
            }
            Ev::SourceTimer { comp, mig } => {
                if self.source_runs(comp, mig) {
                    let now = self.q.now_ms();
                    let mv = self.twins[comp].migration.as_mut().expect("current");
                    mv.m.source.handle_timeout(now);
                    self.drive(comp);
                }
            }
            Ev::TargetTimer { comp, mig } => {
                if self.target_runs(comp, mig) {
                    let now = self.q.now_ms();
                    let mv = self.twins[comp].migration.as_mut().expect("current");
                    let action = mv.m.target_timeout(now);
                    self.target_acts(comp, action);
                }
            }
            Ev::Probe { comp, mig, n } => self.probed(comp, mig, n),
            Ev::ProbeAnswer {
                comp,
                mig,
                n,
                answer,
            } => {
                if self.target_runs(comp, mig)
                    && self.twins[comp].migration.as_ref().map(|mv| mv.probes) == Some(n)
                {
                    let now = self.q.now_ms();
                    let mv = self.twins[comp].migration.as_mut().expect("current");
                    let action = mv.m.probe_answer(now, answer);
                    self.target_acts(comp, action);
                }
            }
        }
    }

    /// Whether migration `mig` is twin `comp`'s current one.
    fn current(&self, comp: usize, mig: u64) -> bool {
        self.twins[comp]
            .migration
            .as_ref()
            .is_some_and(|mv| mv.id == mig)
    }

    /// Whether the source's machine of migration `mig` still runs.
    fn source_runs(&self, comp: usize, mig: u64) -> bool {
        self.current(comp, mig) && {
            let mv = self.twins[comp].migration.as_ref().expect("current");
            !mv.source_dead && !mv.source_done
        }
    }

    fn target_runs(&self, comp: usize, mig: u64) -> bool {
        self.current(comp, mig) && {
            let mv = self.twins[comp].migration.as_ref().expect("current");
            !mv.target_dead && !mv.m.target_done()
        }
    }

    /// Whether a message from `a` can reach `b` now: both up, on the same side of any cut.
    fn reachable(&self, a: usize, b: usize) -> bool {
        let inside = |n: usize| {
            self.cut.is_some_and(|(x, y, side)| {
                let p = self.pos[n];
                p.x >= x && p.x < x + side && p.y >= y && p.y < y + side
            })
        };
        self.alive[a] && self.alive[b] && inside(a) == inside(b)
    }

    /// Send `ev` from `a` to `b`, `extra_us` after the link delay; false if it is lost.
    fn send(&mut self, a: usize, b: usize, extra_us: u64, ev: Ev) -> bool {
        let lost = !self.reachable(a, b)
            || (self.c.faults.loss > 0.0 && self.faults.random_bool(self.c.faults.loss));
        if lost {
            self.out.messages_lost += 1;
        } else {
            self.q.after(self.delay_us(a, b) + extra_us, ev);
        }
        !lost
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
            // With names, the entry node sends the request where its directory says; a node
            // that no longer hosts the twin sends it on (as `routing::forward` does).
            let via = match self.world {
                Some(_) => self.route(entry, t),
                None => Some(host),
            };
            let Some(via) = via else {
                self.out.unrouted += per_tick;
                self.out.requests += per_tick;
                self.second.0 += per_tick;
                continue;
            };
            if via != host {
                self.routes.remove(&(entry, t));
                if let Some(w) = self.world.as_mut() {
                    w.find_name(entry, &self.twins[t].name, true);
                }
            }
            if !self.reachable(entry, via) || !self.reachable(via, host) {
                self.out.unavailable += per_tick;
                self.out.requests += per_tick;
                self.second.0 += per_tick;
                continue;
            }
            if via != host {
                self.out.forwarded += per_tick;
                let lag = now.saturating_sub(self.twins[t].moved_at);
                self.out.route_lag_max_ms = self.out.route_lag_max_ms.max(lag);
            } else if via != entry
                && let Some(w) = self.world.as_mut()
            {
                // A name in use is kept fresh (the gossip asks the table every 10 s at most).
                w.find_name(entry, &self.twins[t].name, false);
            }
            let through = if via == host {
                0.0
            } else {
                self.rtt_ms(via, host)
            };
            for _ in 0..per_tick {
                if let Some(mv) = self.twins[t].migration.as_mut()
                    && mv.frozen
                {
                    mv.held.push(self.q.now_us());
                } else {
                    let ms = self.c.radio_ms + self.rtt_ms(entry, via) + through;
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

    /// Where `entry` sends twin `t`'s requests: itself if it hosts it, else where its gossip's
    /// directory says (its neighbours' adverts, then records found in the table), read again
    /// once a second; none if the directory does not know (then it asks the table at once).
    fn route(&mut self, entry: usize, t: usize) -> Option<usize> {
        if self.twins[t].host == entry {
            return Some(entry);
        }
        let now = self.q.now_ms();
        if let Some(&(via, at)) = self.routes.get(&(entry, t))
            && now.saturating_sub(at) < ROUTE_FOR_MS
        {
            return Some(via);
        }
        let w = self.world.as_mut()?;
        let name = &self.twins[t].name;
        match w.locate(entry, name).and_then(|l| self.index.get(&l.host)) {
            Some(&via) => {
                self.routes.insert((entry, t), (via, now));
                Some(via)
            }
            None => {
                self.routes.remove(&(entry, t));
                w.find_name(entry, name, true);
                None
            }
        }
    }

    /// Node `n`'s advert and name records say which twins it hosts now (with the hand-off
    /// that brought each there).
    fn advertise(&mut self, n: usize) {
        let hosted = self
            .twins
            .iter()
            .filter(|t| t.host == n)
            .map(|t| continuum_gossip::Hosted {
                name: t.name.clone(),
                epoch: t.epoch,
                digest: [0; 32],
                handoff: t.handoff.clone(),
            })
            .collect();
        if let Some(w) = self.world.as_mut() {
            w.host(n, hosted);
        }
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
            if twin.migration.is_none() && self.alive[twin.host] {
                by_host.entry(twin.host).or_default().push(t);
            }
        }
        for (host, twins) in by_host {
            let Some(mut placer) = self.placers.remove(&host) else {
                continue;
            };
            // Its neighbours, and wherever its twins' requests come in from (a host knows
            // the peers that forward to it); only those it can reach.
            let mut near = self.neighbours[host].clone();
            for &t in &twins {
                let entry = self.nearest(self.vehicles[t].pos);
                if entry != host && !near.contains(&entry) {
                    near.push(entry);
                }
            }
            near.retain(|&j| self.reachable(host, j));
            // With membership, what its gossip view holds: its neighbours, and (connecting now,
            // as a real node does when a peer forwards it requests) wherever requests come in.
            let entries: Vec<usize> = match self.world {
                Some(_) => twins
                    .iter()
                    .map(|&t| self.nearest(self.vehicles[t].pos))
                    .collect(),
                None => Vec::new(),
            };
            if let Some(w) = self.world.as_mut() {
                for entry in entries {
                    w.connect(host, entry);
                }
            }
            let peers: Vec<PeerLoad> = match self.world.as_ref() {
                Some(w) => w.nodes[host]
                    .gossip
                    .as_ref()
                    .map(|g| g.view().iter().collect::<Vec<_>>())
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| {
                        let r = &p.advert.as_ref()?.resources;
                        let &j = self.index.get(&p.peer)?;
                        Some(PeerLoad {
                            candidate: Candidate {
                                peer: p.peer,
                                load: r.load,
                                slots: r.slots,
                                mem_free: r.mem_free,
                                components: r.components.len(),
                                labels: &r.labels,
                            },
                            rtt_ms: Some(self.rtt_ms(host, j)),
                        })
                    })
                    .collect(),
                None => near
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
                    .collect(),
            };
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
        self.next_migration += 1;
        let twin = &self.twins[t];
        let offer = Offer {
            id: self.next_migration,
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
            id: self.next_migration,
            m,
            held: Vec::new(),
            frozen: false,
            switched: false,
            source_done: false,
            source_dead: false,
            target_host: false,
            target_dead: false,
            probes: 0,
        });
        self.trace(1, t, to);
        self.drive(t);
    }

    /// Carry out what twin `t`'s migration source asks, and arm its timer.
    fn drive(&mut self, t: usize) {
        let now = self.q.now_ms();
        let Some(mv) = self.twins[t].migration.as_mut() else {
            return;
        };
        let (from, to, mig) = (mv.m.from, mv.m.to, mv.id);
        for step in mv.m.drive(now) {
            match step {
                Step::Send { msg, bytes } => {
                    let transfer = bytes * 1000 / self.c.bandwidth_bytes_per_ms.max(1);
                    self.send(from, to, transfer, Ev::ToTarget { comp: t, mig, msg });
                }
                Step::Frozen => {
                    if let Some(mv) = self.twins[t].migration.as_mut() {
                        mv.frozen = true;
                    }
                }
                Step::Switched { epoch } => {
                    if let Some(mv) = self.twins[t].migration.as_mut() {
                        mv.switched = true;
                    }
                    self.rehome(t, to, epoch);
                    self.release_held(t, to);
                    self.trace(2, t, to);
                }
                Step::Unfrozen => {
                    if self.twins[t]
                        .migration
                        .as_ref()
                        .is_some_and(|mv| mv.target_host)
                    {
                        // The source serves again while its target hosts the twin.
                        self.out.two_hosts += 1;
                    }
                    self.release_held(t, from);
                }
                Step::Finished(result) => {
                    let mv = self.twins[t].migration.as_mut().expect("current");
                    mv.source_done = true;
                    match result {
                        Ok(_) if !mv.target_host => {
                            // The source drops its copy only once the target hosts.
                            self.out.lost += 1;
                        }
                        Ok(_) => {}
                        Err(_) if !mv.switched => self.out.aborted += 1,
                        Err(_) => {}
                    }
                }
            }
        }
        if let Some(deadline) = self.twins[t]
            .migration
            .as_ref()
            .filter(|mv| !mv.source_done)
            .and_then(|mv| mv.m.source.poll_timeout())
        {
            self.q.at(deadline * 1000, Ev::SourceTimer { comp: t, mig });
        }
        self.settle(t);
    }

    /// Twin `t` is `to`'s now, at `epoch` (from the source's switch or the target's takeover,
    /// whichever comes first).
    fn rehome(&mut self, t: usize, to: usize, epoch: u64) {
        let now = self.q.now_ms();
        let twin = &mut self.twins[t];
        if epoch < twin.epoch || (epoch == twin.epoch && twin.host != to) {
            self.out.epoch_regressions += 1;
            return;
        }
        if twin.host == to {
            return;
        }
        let from = twin.host;
        twin.epoch = epoch;
        twin.host = to;
        twin.moved_at = now;
        self.out.migrations += 1;
        self.second.2 += 1;
        let name = twin.name.clone();
        if self.world.is_some() {
            let source = crate::identity(self.c.seed, "node", from);
            self.twins[t].handoff = Some(continuum_gossip::SignedHandoff::sign(
                &source,
                &name,
                epoch,
                self.ids[to],
            ));
            self.advertise(from);
            self.advertise(to);
        }
        self.placers
            .entry(to)
            .or_insert_with(|| Placer::new(PolicyConfig::default()))
            .settle(now, &name);
        if let Some(p) = self.placers.get_mut(&from) {
            p.forget(&name);
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
        let mv = self.twins[t].migration.as_mut().expect("current");
        if mv.target_dead {
            return;
        }
        let (from, to, mig) = (mv.m.from, mv.m.to, mv.id);
        let reply = mv.m.answer(now, msg);
        if mv.m.target_is_host() && !mv.target_host {
            let epoch = mv.m.source.offer().epoch + 1;
            self.target_hosts(t, epoch);
        }
        if let Some(reply) = reply {
            self.send(
                to,
                from,
                0,
                Ev::ToSource {
                    comp: t,
                    mig,
                    reply,
                },
            );
        }
        self.arm_target(t);
    }

    fn arm_target(&mut self, t: usize) {
        let Some(mv) = self.twins[t].migration.as_ref() else {
            return;
        };
        if let Some(deadline) = mv.m.target_deadline().filter(|_| !mv.target_dead) {
            let mig = mv.id;
            self.q.at(deadline * 1000, Ev::TargetTimer { comp: t, mig });
        }
        self.settle(t);
    }

    /// The target's machine became the host.
    fn target_hosts(&mut self, t: usize, epoch: u64) {
        let mv = self.twins[t].migration.as_mut().expect("current");
        mv.target_host = true;
        // A source that aborted, or came back from a crash, serves its own copy.
        let (from, to) = (mv.m.from, mv.m.to);
        let source_serves = !mv.switched && !mv.frozen && (!mv.source_dead || self.alive[from]);
        if source_serves {
            self.out.two_hosts += 1;
        }
        self.rehome(t, to, epoch);
    }

    /// What the target's timer asked for.
    fn target_acts(&mut self, t: usize, action: Option<TargetAction>) {
        let mv = self.twins[t].migration.as_mut().expect("current");
        let (from, to, mig) = (mv.m.from, mv.m.to, mv.id);
        match action {
            Some(TargetAction::ProbeSource) => {
                mv.probes += 1;
                let n = mv.probes;
                // No answer within the step timeout counts as a source that is gone.
                self.q.after(
                    STEP_TIMEOUT_MS * 1000,
                    Ev::ProbeAnswer {
                        comp: t,
                        mig,
                        n,
                        answer: None,
                    },
                );
                self.send(to, from, 0, Ev::Probe { comp: t, mig, n });
            }
            Some(TargetAction::BecomeHost { epoch }) => {
                self.out.takeovers += 1;
                self.target_hosts(t, epoch);
                self.trace(3, t, to);
            }
            // The source gave the twin away and the target dropped it.
            Some(TargetAction::Discard) if mv.switched => self.out.lost += 1,
            Some(TargetAction::Discard) | None => {}
        }
        self.arm_target(t);
    }

    /// A probe reaches the source's node: it answers from its machine, or, restarted without
    /// it, from what it holds.
    fn probed(&mut self, t: usize, mig: u64, n: u64) {
        if !self.current(t, mig) {
            return;
        }
        let mv = self.twins[t].migration.as_ref().expect("current");
        let (from, to) = (mv.m.from, mv.m.to);
        if !self.alive[from] {
            return;
        }
        let answer = if !mv.source_dead {
            mv.m.source.outcome()
        } else if self.twins[t].host == from {
            Ended::Aborted
        } else {
            Ended::Committed {
                epoch: self.twins[t].epoch,
            }
        };
        let answer = Some(answer);
        self.send(
            from,
            to,
            0,
            Ev::ProbeAnswer {
                comp: t,
                mig,
                n,
                answer,
            },
        );
    }

    /// Forget twin `t`'s migration once neither side has anything left to do.
    fn settle(&mut self, t: usize) {
        if let Some(mv) = &self.twins[t].migration
            && (mv.source_done || mv.source_dead)
            && (mv.target_dead || mv.m.target_done())
        {
            if mv.frozen && !mv.source_dead {
                let from = mv.m.from;
                self.release_held(t, from);
            }
            self.twins[t].migration = None;
        }
    }

    fn schedule_crash(&mut self) {
        let rate = self.c.faults.crashes_per_node_hour * self.c.nodes as f64 / 3.6e9;
        if rate > 0.0 {
            let u: f64 = self.faults.random_range(f64::EPSILON..1.0);
            self.q.after((-u.ln() / rate) as u64, Ev::Crash);
        }
    }

    fn schedule_partition(&mut self) {
        let every = self.c.faults.partition_every_s;
        if every > 0 {
            let u: f64 = self.faults.random_range(f64::EPSILON..1.0);
            self.q
                .after((-u.ln() * every as f64 * 1e6) as u64, Ev::Partition);
        }
    }

    /// A roadside node dies (as by a power cut): its process and what it held in memory are
    /// gone, its disk stays.
    fn crash(&mut self) {
        self.schedule_crash();
        let n = self.faults.random_range(0..self.c.nodes);
        if !self.alive[n] {
            return;
        }
        self.alive[n] = false;
        if let Some(w) = self.world.as_mut() {
            w.fail(n);
        }
        self.out.crashes += 1;
        self.trace(4, n, 0);
        self.placers.remove(&n);
        for t in 0..self.twins.len() {
            let Some(mv) = self.twins[t].migration.as_mut() else {
                continue;
            };
            if mv.m.from == n && !mv.source_done {
                mv.source_dead = true;
                mv.frozen = false;
                let held = std::mem::take(&mut mv.held).len() as u64;
                self.out.unavailable += held;
                self.out.requests += held;
                self.second.0 += held;
            }
            let mv = self.twins[t].migration.as_mut().expect("current");
            if mv.m.to == n {
                mv.target_dead = true;
                mv.m.target_crashed();
            }
            self.settle(t);
        }
        self.q
            .after(self.c.faults.down_s * 1_000_000, Ev::Restart { node: n });
    }

    /// Back from its disk: it serves the twins the directory says it hosts (a copy whose
    /// epoch was passed while it was down is stale and dropped).
    fn restart(&mut self, n: usize) {
        self.alive[n] = true;
        if let Some(w) = self.world.as_mut() {
            w.start(n, &around(n, self.side, self.c.nodes));
        }
        self.trace(5, n, 0);
    }

    fn partition(&mut self) {
        self.schedule_partition();
        if self.cut.is_some() {
            return;
        }
        let side = self.side as f64 * self.c.spacing_km / 4.0;
        let width = self.side as f64 * self.c.spacing_km;
        let height = self.c.nodes.div_ceil(self.side) as f64 * self.c.spacing_km;
        let x = self.faults.random_range(0.0..(width - side).max(1e-9));
        let y = self.faults.random_range(0.0..(height - side).max(1e-9));
        self.cut = Some((x, y, side));
        if let Some(w) = self.world.as_mut() {
            let inside: Vec<bool> = (0..self.c.nodes)
                .map(|n| {
                    let p = self.pos[n];
                    p.x >= x && p.x < x + side && p.y >= y && p.y < y + side
                })
                .collect();
            w.net.partition(|n| inside[n] as u32);
        }
        self.out.partitions += 1;
        self.trace(6, 0, 0);
        self.q
            .after(self.c.faults.partition_s * 1_000_000, Ev::Heal);
    }
}
