//! Placement policies: where a component should run, decided by the node that hosts it from
//! what it measured (where the component's requests enter the mesh, how far away those peers
//! are) and what the gossip says (loads, labels, room). Sans IO: observations and the time in,
//! proposals out. The host proposes a move; the target may refuse it (the migration
//! handshake); nobody coordinates. Hysteresis (a clear majority, a minimum of evidence) and a
//! cool-down per component keep anything from oscillating.

use crate::placement::{Candidate, Need, place};
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How a component chooses where to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// It stays where it was put.
    #[default]
    Pinned,
    /// It moves toward the peer where most of its requests enter the mesh.
    FollowTraffic,
    /// It moves off a node whose load is above the threshold, to a peer with room.
    Balance,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Pinned => "pinned",
            Policy::FollowTraffic => "follow-traffic",
            Policy::Balance => "balance",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "pinned" => Ok(Policy::Pinned),
            "follow-traffic" => Ok(Policy::FollowTraffic),
            "balance" => Ok(Policy::Balance),
            _ => Err(format!(
                "unknown policy {s:?}: use pinned, follow-traffic or balance"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PolicyConfig {
    /// Requests older than this no longer count.
    pub window_ms: u64,
    /// The entry peer must carry at least this share of the window's requests...
    pub min_share: f64,
    /// ...and at least this many of them.
    pub min_requests: u64,
    /// After a move is proposed, the component is left alone this long.
    pub cooldown_ms: u64,
    /// `balance`: move off when this node's load is above this...
    pub load_high: f32,
    /// ...to a peer whose load is below this.
    pub load_low: f32,
    /// The cost model: bytes a migration moves per millisecond...
    pub bandwidth_bytes_per_ms: u64,
    /// ...and how far ahead the latency a move saves is counted against that cost.
    pub horizon_ms: u64,
    /// Round-trip time assumed for a peer not measured yet.
    pub default_rtt_ms: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            window_ms: 5_000,
            min_share: 0.6,
            min_requests: 20,
            cooldown_ms: 5_000,
            load_high: 0.85,
            load_low: 0.5,
            bandwidth_bytes_per_ms: 10_000,
            horizon_ms: 60_000,
            default_rtt_ms: 1.0,
        }
    }
}

/// A component this node hosts, as the policies see it.
#[derive(Clone, Debug)]
pub struct Placed<'a> {
    pub name: &'a str,
    pub policy: Policy,
    pub require: &'a BTreeMap<String, String>,
    /// Members of its federation, if it is bound to one.
    pub within: Option<&'a BTreeSet<PeerId>>,
    pub memory_bytes: u64,
    /// Its share of this node's load, if known (0: unknown).
    pub load: f32,
}

/// A peer in view, as the policies see it.
#[derive(Clone, Debug)]
pub struct PeerLoad<'a> {
    pub candidate: Candidate<'a>,
    /// Round-trip time this node measured to it.
    pub rtt_ms: Option<f64>,
}

/// A proposal to move a component, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub component: String,
    pub policy: Policy,
    /// The peer it should move to.
    pub to: String,
    pub reason: String,
    pub at_ms: u64,
}

/// Entry peers counted per component and second, at most.
pub const MAX_ENTRIES: usize = 256;

/// This node's side of the placement policies.
pub struct Placer {
    cfg: PolicyConfig,
    /// Per component, per second of the window, requests by the peer they entered at, and
    /// calls it made by the peer that answered them.
    traffic: HashMap<String, BTreeMap<u64, BTreeMap<PeerId, u64>>>,
    quiet_until: HashMap<String, u64>,
}

impl Placer {
    pub fn new(cfg: PolicyConfig) -> Placer {
        Placer {
            cfg,
            traffic: HashMap::new(),
            quiet_until: HashMap::new(),
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// A request for `component` entered the mesh at `entry` and was served here, or a call it
    /// made was answered by `entry`.
    pub fn record(&mut self, now: u64, component: &str, entry: PeerId) {
        self.record_many(now, component, entry, 1);
    }

    /// `n` requests at once (a simulator counts them by the tick). Bounded however long the
    /// component stays and whoever the requests claim entered at: seconds past the window go
    /// as a new one starts, and a second counts [`MAX_ENTRIES`] entry peers at most (a peer
    /// that forwards requests names their entry, so the names are its to choose).
    pub fn record_many(&mut self, now: u64, component: &str, entry: PeerId, n: u64) {
        // On a request path: allocate the name only for a component not counted yet.
        if !self.traffic.contains_key(component) {
            self.traffic.insert(component.to_string(), BTreeMap::new());
        }
        let buckets = self.traffic.get_mut(component).expect("inserted above");
        let second = now / 1000;
        if !buckets.contains_key(&second) {
            let oldest = now.saturating_sub(self.cfg.window_ms) / 1000;
            buckets.retain(|&s, _| s >= oldest);
        }
        let per_peer = buckets.entry(second).or_default();
        if per_peer.len() < MAX_ENTRIES || per_peer.contains_key(&entry) {
            *per_peer.entry(entry).or_default() += n;
        }
    }

    /// Requests per entry peer within the window.
    pub fn traffic(&mut self, now: u64, component: &str) -> BTreeMap<PeerId, u64> {
        let oldest = now.saturating_sub(self.cfg.window_ms) / 1000;
        let mut out = BTreeMap::new();
        if let Some(buckets) = self.traffic.get_mut(component) {
            buckets.retain(|&s, _| s >= oldest);
            for per_peer in buckets.values() {
                for (p, n) in per_peer {
                    *out.entry(*p).or_default() += n;
                }
            }
        }
        out
    }

    /// A move of `component` was proposed (or it arrived here): leave it alone for the
    /// cool-down, and start counting afresh.
    pub fn settle(&mut self, now: u64, component: &str) {
        self.quiet_until
            .insert(component.to_string(), now + self.cfg.cooldown_ms);
        self.traffic.remove(component);
    }

    /// The component is no longer here.
    pub fn forget(&mut self, component: &str) {
        self.traffic.remove(component);
        self.quiet_until.remove(component);
    }

    /// What should move where, from this node (`me`, with `my_labels` and `my_load`).
    pub fn evaluate(
        &mut self,
        now: u64,
        me: PeerId,
        my_labels: &BTreeMap<String, String>,
        my_load: f32,
        components: &[Placed],
        peers: &[PeerLoad],
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        // `balance` sheds load one component at a time, the busiest first, down to the
        // threshold: what a move takes away is the component's own load, or (unknown) all of
        // it, so one move a round.
        let mut remaining = my_load;
        let mut order: Vec<&Placed> = components.iter().collect();
        order.sort_by(|a, b| b.load.total_cmp(&a.load));
        for c in order {
            if c.policy == Policy::Pinned || self.quiet_until.get(c.name).is_some_and(|&t| now < t)
            {
                continue;
            }
            let need = Need {
                require: c.require.clone(),
                memory: c.memory_bytes,
                within: c.within,
                exclude: vec![me],
            };
            let proposal = if !c.require.iter().all(|(k, v)| my_labels.get(k) == Some(v)) {
                // Label affinity comes first: a host without the labels hands it on.
                place(peers.iter().map(|p| p.candidate.clone()), &need)
                    .ok()
                    .map(|p| {
                        (
                            p.peer,
                            format!("this node lacks a required label; {}", p.reason),
                        )
                    })
            } else {
                match c.policy {
                    Policy::Pinned => None,
                    Policy::FollowTraffic => self.follow(now, me, c, &need, peers),
                    Policy::Balance => {
                        let p = self.balance(remaining, c.load, &need, peers);
                        if p.is_some() {
                            remaining -= if c.load > 0.0 { c.load } else { f32::INFINITY };
                        }
                        p
                    }
                }
            };
            if let Some((to, reason)) = proposal {
                self.settle(now, c.name);
                out.push(Decision {
                    component: c.name.to_string(),
                    policy: c.policy,
                    to: to.to_string(),
                    reason,
                    at_ms: now,
                });
            }
        }
        out
    }

    fn follow(
        &mut self,
        now: u64,
        me: PeerId,
        c: &Placed,
        need: &Need,
        peers: &[PeerLoad],
    ) -> Option<(PeerId, String)> {
        let traffic = self.traffic(now, c.name);
        let total: u64 = traffic.values().sum();
        if total < self.cfg.min_requests {
            return None;
        }
        let (&top, &n) = traffic
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
        let share = n as f64 / total as f64;
        if top == me || share < self.cfg.min_share {
            return None;
        }
        let peer = peers.iter().find(|p| p.candidate.peer == top)?;
        // The entry peer must be able to take it, by the same rules as any placement.
        place([peer.candidate.clone()], need).ok()?;
        let rtt = peer.rtt_ms.unwrap_or(self.cfg.default_rtt_ms);
        let rate = n as f64 / self.cfg.window_ms as f64;
        let gain_ms = rate * rtt * self.cfg.horizon_ms as f64;
        let cost_ms = c.memory_bytes as f64 / self.cfg.bandwidth_bytes_per_ms.max(1) as f64;
        if gain_ms <= cost_ms {
            return None;
        }
        Some((
            top,
            format!(
                "{:.0} % of its {total} requests and calls in the last {} s entered at or were answered by {top} (rtt {rtt:.2} ms): saves ~{gain_ms:.0} ms of latency per {} s against ~{cost_ms:.0} ms to move {} KiB",
                share * 100.0,
                self.cfg.window_ms / 1000,
                self.cfg.horizon_ms / 1000,
                c.memory_bytes / 1024
            ),
        ))
    }

    /// A peer has room if it is below the low mark and would stay below the high one with the
    /// component's load added: a component too heavy for any peer stays put rather than
    /// bouncing between overloaded nodes.
    fn balance(
        &self,
        my_load: f32,
        load: f32,
        need: &Need,
        peers: &[PeerLoad],
    ) -> Option<(PeerId, String)> {
        if my_load <= self.cfg.load_high {
            return None;
        }
        let room = peers
            .iter()
            .filter(|p| {
                p.candidate.load < self.cfg.load_low && p.candidate.load + load < self.cfg.load_high
            })
            .map(|p| p.candidate.clone());
        let placed = place(room, need).ok()?;
        Some((
            placed.peer,
            format!(
                "load here {my_load:.2} > {:.2}: {}",
                self.cfg.load_high, placed.reason
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> PeerId {
        libp2p_identity::Keypair::ed25519_from_bytes([i + 1; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    fn peer<'a>(i: u8, load: f32, labels: &'a BTreeMap<String, String>) -> PeerLoad<'a> {
        PeerLoad {
            candidate: Candidate {
                peer: id(i),
                load,
                slots: 8,
                mem_free: 1 << 30,
                components: 0,
                labels,
            },
            rtt_ms: Some(0.5),
        }
    }

    #[test]
    fn traffic_counts_stay_bounded_over_time_and_entry_names() {
        let mut p = Placer::new(PolicyConfig::default());
        let window_s = p.config().window_ms / 1000;
        // A pinned component is never evaluated: a day of requests keeps only the window.
        for s in 0..86_400u64 {
            p.record(s * 1000, "pinned", id(1));
        }
        assert!(p.traffic["pinned"].len() as u64 <= window_s + 1);
        // Requests that claim ever new entry peers count the first MAX_ENTRIES in a second,
        // and those already counted go on counting.
        let now = 90_000_000;
        for i in 0..1000u16 {
            let id = libp2p_identity::Keypair::ed25519_from_bytes({
                let mut seed = [7u8; 32];
                seed[..2].copy_from_slice(&i.to_le_bytes());
                seed
            })
            .unwrap();
            p.record(now, "claimed", id.public().to_peer_id());
        }
        let first = *p.traffic(now, "claimed").keys().next().unwrap();
        p.record(now, "claimed", first);
        let t = p.traffic(now, "claimed");
        assert_eq!(t.len(), MAX_ENTRIES);
        assert_eq!(t.values().sum::<u64>(), MAX_ENTRIES as u64 + 1);
    }

    #[test]
    fn follows_the_traffic_once_with_hysteresis_and_a_cooldown() {
        let none = BTreeMap::new();
        let mut p = Placer::new(PolicyConfig::default());
        let c = Placed {
            name: "counter",
            policy: Policy::FollowTraffic,
            require: &none,
            within: None,
            memory_bytes: 1 << 20,
            load: 0.0,
        };
        let peers = [peer(1, 0.1, &none), peer(2, 0.1, &none)];
        let eval = |p: &mut Placer, now| {
            p.evaluate(now, id(0), &none, 0.1, std::slice::from_ref(&c), &peers)
        };
        // Too little evidence, then a split without a clear majority: stay.
        for _ in 0..10 {
            p.record(0, "counter", id(2));
        }
        assert!(eval(&mut p, 500).is_empty());
        for _ in 0..10 {
            p.record(600, "counter", id(0));
            p.record(600, "counter", id(1));
        }
        assert!(eval(&mut p, 1000).is_empty());
        // Most requests come in at peer 2: move there, once.
        for _ in 0..100 {
            p.record(1500, "counter", id(2));
        }
        let d = eval(&mut p, 2000);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].to, id(2).to_string());
        assert!(d[0].reason.contains("entered at"), "{}", d[0].reason);
        for _ in 0..100 {
            p.record(2500, "counter", id(1));
        }
        assert!(eval(&mut p, 3000).is_empty(), "cooling down");
        // Old requests age out of the window.
        assert!(p.traffic(20_000, "counter").is_empty());
    }

    #[test]
    fn pinned_never_moves_and_balance_leaves_an_overloaded_node() {
        let none = BTreeMap::new();
        let mut p = Placer::new(PolicyConfig::default());
        let mut c = Placed {
            name: "c",
            policy: Policy::Pinned,
            require: &none,
            within: None,
            memory_bytes: 1 << 20,
            load: 0.0,
        };
        for _ in 0..1000 {
            p.record(0, "c", id(1));
        }
        let peers = [peer(1, 0.9, &none), peer(2, 0.2, &none)];
        assert!(
            p.evaluate(100, id(0), &none, 0.99, &[c.clone()], &peers)
                .is_empty()
        );
        c.policy = Policy::Balance;
        assert!(
            p.evaluate(100, id(0), &none, 0.5, &[c.clone()], &peers)
                .is_empty()
        );
        let d = p.evaluate(100, id(0), &none, 0.95, &[c.clone()], &peers);
        assert_eq!(d[0].to, id(2).to_string(), "{d:?}");
    }

    #[test]
    fn balance_moves_the_busiest_component_only_where_it_fits() {
        let none = BTreeMap::new();
        let placed = |name, load| Placed {
            name,
            policy: Policy::Balance,
            require: &none,
            within: None,
            memory_bytes: 1 << 20,
            load,
        };
        let peers = [peer(1, 0.9, &none), peer(2, 0.1, &none)];
        let (cold, hot) = (placed("cold", 0.05), placed("hot", 0.6));
        // 1.2 here: moving the hot one (0.6) is enough, and it fits on peer 2 (0.1 + 0.6).
        let mut p = Placer::new(PolicyConfig::default());
        let d = p.evaluate(0, id(0), &none, 1.2, &[cold.clone(), hot.clone()], &peers);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].component.as_str(), d[0].to.clone()),
            ("hot", id(2).to_string())
        );
        // A component too heavy for any peer stays: moving it would only move the overload.
        let mut p = Placer::new(PolicyConfig::default());
        let heavy = placed("heavy", 0.8);
        let d = p.evaluate(0, id(0), &none, 1.2, &[heavy], &peers);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn a_host_without_the_required_labels_hands_the_component_on() {
        let none = BTreeMap::new();
        let camera: BTreeMap<String, String> = [("sensor".into(), "camera".into())].into();
        let mut p = Placer::new(PolicyConfig::default());
        let c = Placed {
            name: "c",
            policy: Policy::FollowTraffic,
            require: &camera,
            within: None,
            memory_bytes: 0,
            load: 0.0,
        };
        let peers = [peer(1, 0.1, &none), peer(2, 0.3, &camera)];
        let d = p.evaluate(0, id(0), &none, 0.1, &[c], &peers);
        assert_eq!(d[0].to, id(2).to_string(), "{d:?}");
        assert!(d[0].reason.contains("lacks a required label"));
    }
}
