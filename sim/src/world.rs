//! The world: virtual nodes, each running the unmodified `continuum_gossip::Gossip` machine,
//! and one queue of timed events (message deliveries, timers, failures) processed in order of
//! time, then of scheduling. Nothing reads a clock and all randomness comes from one seeded
//! generator, so a seed reproduces a run exactly; every processed event feeds a trace hash that
//! proves it.

use crate::net::{Net, NetConfig, Position};
use crate::queue::Queue;
use continuum_gossip::{
    Config, Event, Filing, Gossip, Hosted, Keypair, Location, Output, PeerId, Resources, Scope,
    Verified,
};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Frames the shared signature cache remembers: about 25 s of the distinct frames 10,000 nodes
/// send (some 2,500 a second in `roaming --membership`).
const VERIFIED_FRAMES: usize = 1 << 16;

/// What can happen to a node.
#[derive(Clone, Debug)]
enum Ev {
    /// The node's gossip timer (ignored unless it is the node's current one).
    Timer { node: usize, generation: u64 },
    /// A gossip publication reaches a node.
    Gossip { to: usize, bytes: Arc<[u8]> },
    /// A direct message (a sync, or a federation message `told` to a peer that need not be a
    /// neighbour) reaches a node.
    Direct {
        to: usize,
        from: PeerId,
        bytes: Arc<[u8]>,
        told: bool,
    },
    /// A node's provider record for `key` reaches the table, its lookup done.
    Provided { key: Vec<u8>, provider: PeerId },
    /// A node's lookup of the providers of `key` is done: it gets those listed then.
    LookedProviders { node: usize, key: Vec<u8> },
    /// A record a host filed reaches the table, its lookup done.
    Filed { key: Vec<u8>, record: Vec<u8> },
    /// A node's lookup of `key` in the table is done: it gets the record held then, if any.
    Looked { node: usize, key: Vec<u8> },
}

/// How long the table holds a record not filed again (as the node's Kademlia store does).
const NAME_RECORD_TTL_MS: u64 = 15 * 60 * 1000;

pub struct SimNode {
    pub id: PeerId,
    pub pos: Position,
    pub alive: bool,
    pub gossip: Option<Gossip>,
    /// Peers it is connected to (its overlay neighbours).
    pub links: Vec<usize>,
    /// Which of its timers is current; older ones are stale.
    timer_generation: u64,
    /// When that timer is due (`u64::MAX`: none): a node that wants the same time again after
    /// a message keeps it, so the queue does not fill with stale timers.
    timer_at: u64,
    /// How many times it (re)started, for its keys' and sequence numbers' sake.
    incarnation: u64,
    /// Labels it advertises (on top of the world's resources).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The components it hosts (kept on its disk: a restarted node hosts them again).
    pub hosted: Vec<Hosted>,
}

/// Counts of what happened, for the summary.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub events: u64,
    pub gossip_sent: u64,
    pub gossip_delivered: u64,
    pub direct_sent: u64,
    pub direct_delivered: u64,
    pub lost: u64,
    pub rejected: u64,
    pub peer_up: u64,
    pub peer_down: u64,
    /// Names: records filed, stored by the table, refused by it; lookups, and those that
    /// found a record.
    pub names_filed: u64,
    pub names_stored: u64,
    pub names_refused: u64,
    pub lookups: u64,
    pub lookups_found: u64,
    /// Lookups that reached no node (every try lost or cut off).
    pub lookups_lost: u64,
    /// Federations: label provider records filed, lookups of providers, messages told.
    pub provided: u64,
    pub provider_lookups: u64,
    pub told: u64,
}

pub struct World {
    queue: Queue<Ev>,
    pub nodes: Vec<SimNode>,
    index: HashMap<PeerId, usize>,
    pub net: Net,
    pub rng: Xoshiro256PlusPlus,
    gossip_cfg: Config,
    /// What each node advertises when it starts.
    resources: Resources,
    seed: u64,
    trace: blake3::Hasher,
    pub counters: Counters,
    /// One cache of checked signatures for every node: checking a signature is a pure function
    /// of the frame, so a frame a node sends to all its neighbours is checked once, not once
    /// per neighbour, and what every node decides is the same as with a check each.
    pub verified: Verified,
    /// The distributed table of names (the node's Kademlia), modelled as one store whose
    /// every filing and lookup takes a Kademlia lookup's time (see `lookup_us`); what it takes
    /// in is decided by the table's rule the node applies (`continuum_gossip::file_over`).
    /// Not modelled: the store's nodes failing (Kademlia keeps eight copies).
    names: HashMap<Vec<u8>, (Vec<u8>, u64)>,
    /// The table's provider records (label keys), each provider until it lapses; at most
    /// `MAX_PROVIDERS` a key, the first come kept, as the node's store keeps them. A provider
    /// that stops providing stays listed until its record lapses, as in Kademlia.
    providers: BTreeMap<Vec<u8>, BTreeMap<PeerId, u64>>,
}

impl World {
    pub fn new(seed: u64, net: NetConfig, gossip_cfg: Config) -> World {
        World {
            queue: Queue::default(),
            nodes: Vec::new(),
            index: HashMap::new(),
            net: Net::new(net, 0),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            gossip_cfg,
            resources: Resources {
                arch: "sim".into(),
                cores: 4,
                slots: 8,
                ..Resources::default()
            },
            seed,
            trace: blake3::Hasher::new(),
            counters: Counters::default(),
            verified: Verified::new(VERIFIED_FRAMES),
            names: HashMap::new(),
            providers: BTreeMap::new(),
        }
    }

    /// What nodes started from now on advertise.
    pub fn set_resources(&mut self, r: Resources) {
        self.resources = r;
    }

    pub fn now_ms(&self) -> u64 {
        self.queue.now_ms()
    }

    /// The hash of every event processed so far.
    pub fn trace_hash(&self) -> String {
        self.trace.finalize().to_hex().to_string()
    }

    fn trace(&mut self, kind: u8, node: usize, payload: &[u8]) {
        self.trace.update(&self.queue.now_us().to_le_bytes());
        self.trace.update(&[kind]);
        self.trace.update(&(node as u64).to_le_bytes());
        self.trace.update(blake3::hash(payload).as_bytes());
    }

    /// Add a node at `pos` (not started yet).
    pub fn add_node(&mut self, pos: Position) -> usize {
        let i = self.nodes.len();
        let id = self.key(i).public().to_peer_id();
        self.nodes.push(SimNode {
            id,
            pos,
            alive: false,
            gossip: None,
            links: Vec::new(),
            timer_generation: 0,
            timer_at: u64::MAX,
            incarnation: 0,
            labels: Default::default(),
            hosted: Vec::new(),
        });
        self.index.insert(id, i);
        self.net.add_node();
        i
    }

    /// A node's identity (the same across its restarts, as with a kept data directory).
    fn key(&self, node: usize) -> Keypair {
        crate::identity(self.seed, "node", node)
    }

    /// Start (or restart) node `i` and connect it to `links`.
    pub fn start(&mut self, i: usize, links: &[usize]) {
        let now = self.now_ms();
        let node = &mut self.nodes[i];
        node.incarnation += 1;
        let incarnation = node.incarnation;
        let key = self.key(i);
        // A restarted node starts its sequence numbers past its former self's.
        let first_seq = incarnation << 40 | self.queue.now_us();
        let local = self.local(i);
        let mut gossip = Gossip::new(now, key, None, self.gossip_cfg.clone(), local, first_seq);
        gossip.share_verified(self.verified.clone());
        let node = &mut self.nodes[i];
        node.gossip = Some(gossip);
        node.alive = true;
        node.links.clear();
        for &j in links {
            self.connect(i, j);
        }
        self.trace(1, i, &[]);
        self.flush(i);
    }

    /// Connect two live nodes (both see the connection at once).
    pub fn connect(&mut self, a: usize, b: usize) {
        if a == b
            || !self.nodes[a].alive
            || !self.nodes[b].alive
            || self.nodes[a].links.contains(&b)
        {
            return;
        }
        let now = self.now_ms();
        self.nodes[a].links.push(b);
        self.nodes[b].links.push(a);
        let (ida, idb) = (self.nodes[a].id, self.nodes[b].id);
        if let Some(g) = self.nodes[a].gossip.as_mut() {
            g.handle_connected(now, idb);
        }
        if let Some(g) = self.nodes[b].gossip.as_mut() {
            g.handle_connected(now, ida);
        }
        self.flush(b);
        self.flush(a);
    }

    /// Kill node `i` at once (as `kill -9`): its neighbours see the connection drop.
    pub fn fail(&mut self, i: usize) {
        let links = std::mem::take(&mut self.nodes[i].links);
        let (id, now) = (self.nodes[i].id, self.now_ms());
        self.nodes[i].alive = false;
        self.nodes[i].gossip = None;
        self.nodes[i].timer_generation += 1;
        self.nodes[i].timer_at = u64::MAX;
        for j in links {
            self.nodes[j].links.retain(|&k| k != i);
            if let Some(g) = self.nodes[j].gossip.as_mut() {
                g.handle_disconnected(now, id);
                self.flush(j);
            }
        }
        self.trace(2, i, &[]);
    }

    /// Carry out what node `i`'s machine asked for, then set its next timer.
    fn flush(&mut self, i: usize) {
        let Some(g) = self.nodes[i].gossip.as_mut() else {
            return;
        };
        let mut outputs = Vec::new();
        while let Some(o) = g.poll_output() {
            outputs.push(o);
        }
        while let Some(e) = g.poll_event() {
            match e {
                Event::PeerUp(_) => self.counters.peer_up += 1,
                Event::PeerDown(_) => self.counters.peer_down += 1,
                Event::Federation(_) | Event::Refused(_) => {}
            }
        }
        let next = g.poll_timeout();
        for o in outputs {
            match o {
                Output::Publish(bytes) => self.publish(i, bytes.into()),
                Output::Send { to, bytes } => self.direct(i, to, bytes, false),
                Output::Tell { to, bytes } => self.direct(i, to, bytes, true),
                Output::Provide { key } => {
                    self.counters.provided += 1;
                    if let Some(d) = self.lookup_us(i) {
                        let provider = self.nodes[i].id;
                        self.queue.after(d, Ev::Provided { key, provider });
                    }
                }
                // Only the node's own listing goes; the table's copies lapse.
                Output::Unprovide { .. } => {}
                Output::FindProviders { key } => {
                    self.counters.provider_lookups += 1;
                    if let Some(d) = self.lookup_us(i) {
                        self.queue.after(d, Ev::LookedProviders { node: i, key });
                    }
                }
                Output::File { key, record } => {
                    self.counters.names_filed += 1;
                    if let Some(d) = self.lookup_us(i) {
                        self.queue.after(d, Ev::Filed { key, record });
                    }
                }
                Output::Find { key } => {
                    self.counters.lookups += 1;
                    if let Some(d) = self.lookup_us(i) {
                        self.queue.after(d, Ev::Looked { node: i, key });
                    }
                }
            }
        }
        let node = &mut self.nodes[i];
        if next == node.timer_at {
            return;
        }
        node.timer_generation += 1;
        node.timer_at = next;
        let generation = node.timer_generation;
        if next != u64::MAX {
            self.queue.at(
                next * 1000,
                Ev::Timer {
                    node: i,
                    generation,
                },
            );
        }
    }

    /// How long a Kademlia lookup from node `i` takes: about log2(N)/3 rounds (three peers
    /// asked at once, each answer a bit closer), each a round trip to some node; a round whose
    /// three tries are all lost or cut off ends it (none: counted).
    fn lookup_us(&mut self, i: usize) -> Option<u64> {
        let n = self.nodes.len().max(2) as f64;
        let rounds = (n.log2() / 3.0).ceil().max(1.0) as u64;
        let mut total = 0;
        for _ in 0..rounds {
            let leg = (0..3).find_map(|_| {
                // A walk visits peers the table knows: ones that started (and may have died
                // since), never one that has not started yet.
                let j = loop {
                    let j = self.rng.random_range(0..self.nodes.len());
                    if self.nodes[j].incarnation > 0 {
                        break j;
                    }
                };
                let (a, b) = ((i, self.nodes[i].pos), (j, self.nodes[j].pos));
                let there = self.net.delay_us(&mut self.rng, a, b)?;
                let back = self.net.delay_us(&mut self.rng, b, a)?;
                self.nodes[j].alive.then_some(there + back)
            });
            match leg {
                Some(d) => total += d,
                None => {
                    self.counters.lookups_lost += 1;
                    return None;
                }
            }
        }
        Some(total)
    }

    /// What node `i` advertises: the world's resources, its labels, what it hosts.
    fn local(&self, i: usize) -> Resources {
        let mut local = self.resources.clone();
        local.labels.extend(self.nodes[i].labels.clone());
        local.components = self.nodes[i].hosted.clone();
        local
    }

    /// Node `i` hosts `hosted` from now on (its advert says so, and it files the names).
    pub fn host(&mut self, i: usize, hosted: Vec<Hosted>) {
        let now = self.now_ms();
        self.nodes[i].hosted = hosted;
        let local = self.local(i);
        if let Some(g) = self.nodes[i].gossip.as_mut() {
            g.set_local(now, local);
            self.flush(i);
        }
    }

    /// Where node `i`'s directory says component `name` is (none: it does not know).
    pub fn locate(&mut self, i: usize, name: &str) -> Option<Location> {
        self.nodes[i].gossip.as_mut()?.locate(name)
    }

    /// Node `i` wants to reach `name` (see `Gossip::find_name`).
    pub fn find_name(&mut self, i: usize, name: &str, urgent: bool) {
        let now = self.now_ms();
        if let Some(g) = self.nodes[i].gossip.as_mut() {
            g.find_name(now, name, urgent);
            self.flush(i);
        }
    }

    /// A publication (the swarm-wide baseline) reaches every node it can, as gossipsub's did;
    /// modelled as one delivery to every live node, each after its own link's delay.
    fn publish(&mut self, from: usize, bytes: Arc<[u8]>) {
        self.counters.gossip_sent += 1;
        for j in 0..self.nodes.len() {
            if j != from && self.nodes[j].alive {
                let b = bytes.clone();
                self.send(from, j, |to| Ev::Gossip { to, bytes: b });
            }
        }
    }

    /// A message from node `i` straight to peer `to` (a sync, or a federation message `told`).
    fn direct(&mut self, i: usize, to: PeerId, bytes: Vec<u8>, told: bool) {
        let Some(&j) = self.index.get(&to) else {
            return;
        };
        if told {
            self.counters.told += 1;
        } else {
            self.counters.direct_sent += 1;
        }
        let from = self.nodes[i].id;
        self.send(i, j, |to| Ev::Direct {
            to,
            from,
            bytes: bytes.into(),
            told,
        });
    }

    fn send(&mut self, from: usize, to: usize, ev: impl FnOnce(usize) -> Ev) {
        let (a, b) = ((from, self.nodes[from].pos), (to, self.nodes[to].pos));
        match self.net.delay_us(&mut self.rng, a, b) {
            Some(d) => self.queue.after(d, ev(to)),
            None => self.counters.lost += 1,
        }
    }

    /// Process events until virtual time `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        while let Some(ev) = self.queue.next(until_ms * 1000) {
            self.counters.events += 1;
            let now = self.now_ms();
            match ev {
                Ev::Timer { node, generation } => {
                    if self.nodes[node].timer_generation != generation {
                        continue;
                    }
                    self.nodes[node].timer_at = u64::MAX;
                    self.trace(3, node, &[]);
                    if let Some(g) = self.nodes[node].gossip.as_mut() {
                        g.handle_timeout(now);
                    }
                    self.flush(node);
                }
                Ev::Gossip { to, bytes } => {
                    self.trace(4, to, &bytes);
                    if let Some(g) = self.nodes[to].gossip.as_mut() {
                        self.counters.gossip_delivered += 1;
                        if g.handle_gossip(now, &bytes).is_err() {
                            self.counters.rejected += 1;
                        }
                        self.flush(to);
                    }
                }
                Ev::Direct {
                    to,
                    from,
                    bytes,
                    told,
                } => {
                    self.trace(5, to, &bytes);
                    if let Some(g) = self.nodes[to].gossip.as_mut() {
                        self.counters.direct_delivered += 1;
                        let result = if told {
                            g.handle_told(now, from, &bytes)
                        } else {
                            g.handle_direct(now, from, &bytes)
                        };
                        if result.is_err() {
                            self.counters.rejected += 1;
                        }
                        self.flush(to);
                    }
                }
                Ev::Provided { key, provider } => {
                    self.trace(10, 0, &key);
                    let listed = self.providers.entry(key).or_default();
                    listed.retain(|_, until| *until > now);
                    if listed.len() < continuum_gossip::MAX_PROVIDERS
                        || listed.contains_key(&provider)
                    {
                        listed.insert(provider, now + NAME_RECORD_TTL_MS);
                    }
                }
                Ev::LookedProviders { node, key } => {
                    self.trace(11, node, &key);
                    let found: Vec<PeerId> = self
                        .providers
                        .get(&key)
                        .into_iter()
                        .flatten()
                        .filter(|(_, until)| **until > now)
                        .map(|(p, _)| *p)
                        .collect();
                    if let Some(g) = self.nodes[node].gossip.as_mut() {
                        g.handle_providers(now, &key, &found);
                        self.flush(node);
                    }
                }
                Ev::Filed { key, record } => {
                    self.trace(8, 0, &record);
                    let held = self
                        .names
                        .get(&key)
                        .filter(|(_, until)| *until > now)
                        .map(|(r, _)| r.as_slice());
                    match continuum_gossip::file_over(
                        &key,
                        &record,
                        held,
                        None,
                        Some(&self.verified),
                    ) {
                        Ok(Filing::Store) => {
                            self.counters.names_stored += 1;
                            self.names.insert(key, (record, now + NAME_RECORD_TTL_MS));
                        }
                        Ok(Filing::Same) => {}
                        Err(_) => self.counters.names_refused += 1,
                    }
                }
                Ev::Looked { node, key } => {
                    self.trace(9, node, &key);
                    let Some((record, _)) = self.names.get(&key).filter(|(_, until)| *until > now)
                    else {
                        continue;
                    };
                    if let Some(g) = self.nodes[node].gossip.as_mut() {
                        self.counters.lookups_found += 1;
                        if g.handle_name_record(now, &key, record).is_err() {
                            self.counters.rejected += 1;
                        }
                        self.flush(node);
                    }
                }
            }
        }
    }

    /// Node `i` proposes a federation (it must be live).
    pub fn create_federation(
        &mut self,
        i: usize,
        spec: continuum_gossip::FederationSpec,
    ) -> Result<(), continuum_gossip::FederationError> {
        let now = self.now_ms();
        let g = self.nodes[i].gossip.as_mut().expect("a live node");
        g.create_federation(now, spec)?;
        self.flush(i);
        Ok(())
    }

    /// A random live node other than `not`.
    pub fn random_live(&mut self, not: Option<usize>) -> Option<usize> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive && Some(i) != not)
            .collect();
        (!live.is_empty()).then(|| live[self.rng.random_range(0..live.len())])
    }

    /// How well node `i` knows what it should: the share of the other live nodes (scoped to
    /// neighbours: of its live neighbours) in its view, and how many dead ones it still lists.
    pub fn view_accuracy(&self, i: usize) -> (f64, usize) {
        let Some(g) = self.nodes[i].gossip.as_ref() else {
            return (0.0, 0);
        };
        let scoped = self.gossip_cfg.scope == Scope::Neighbours;
        let live = if scoped {
            self.nodes[i].links.len()
        } else {
            self.nodes
                .iter()
                .filter(|n| n.alive)
                .count()
                .saturating_sub(1)
        };
        let (mut known, mut stale) = (0, 0);
        for p in g.view().iter() {
            match self.index.get(&p.peer) {
                Some(&j)
                    if self.nodes[j].alive && (!scoped || self.nodes[i].links.contains(&j)) =>
                {
                    known += 1
                }
                _ => stale += 1,
            }
        }
        (
            if live == 0 {
                1.0
            } else {
                known as f64 / live as f64
            },
            stale,
        )
    }
}
