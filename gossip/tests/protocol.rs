//! The gossip protocol stepped in virtual time, quinn-proto style: a handful of `Gossip`
//! machines, a loss-free network that delivers every publication to every live node, and a
//! clock that jumps to the next timer.

use continuum_gossip::{
    Body, Config, Event, FederationEvent, FederationSpec, Gossip, Hosted, Keypair,
    MAX_DIRECT_BYTES, MAX_GOSSIP_BYTES, Message, Mine, Output, PeerId, Reject, ResourceAdvert,
    Resources, Scope, SwarmKey, SyncEntry, open, seal, seal_direct,
};
use std::collections::{BTreeMap, BTreeSet};

fn keypair(i: u8) -> Keypair {
    Keypair::ed25519_from_bytes([i + 1; 32]).unwrap()
}

fn resources(zone: &str) -> Resources {
    Resources {
        arch: "x86_64".into(),
        cores: 2,
        load: 0.1,
        mem_free: 1 << 30,
        mem_total: 2 << 30,
        slots: 10,
        labels: BTreeMap::from([("zone".to_string(), zone.to_string())]),
        http: "http://127.0.0.1:7070".into(),
        addrs: vec![],
        components: vec![],
    }
}

struct Net {
    now: u64,
    nodes: Vec<Gossip>,
    up: Vec<bool>,
    /// Every message the network carried, for replay tests.
    published: Vec<Vec<u8>>,
    rejected: Vec<Reject>,
    /// The distributed hash table, as one store everyone reaches: each key's record, kept
    /// as a store keeps it (only a record that supersedes it replaces it).
    table: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Its provider records: who provides each key.
    providers: BTreeMap<Vec<u8>, BTreeSet<PeerId>>,
    /// Federation messages told to a peer, for the tests of who hears what.
    told: Vec<(usize, usize)>,
}

impl Net {
    fn new(zones: &[&str], key: Option<SwarmKey>) -> Net {
        // Everyone connects to node 0, as with one bootstrap peer.
        let star: Vec<(usize, usize)> = (1..zones.len()).map(|i| (0, i)).collect();
        Net::with(zones, key, Config::with_ttl(3_000), &star)
    }

    fn with(zones: &[&str], key: Option<SwarmKey>, cfg: Config, links: &[(usize, usize)]) -> Net {
        let nodes: Vec<Gossip> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| {
                Gossip::new(
                    0,
                    keypair(i as u8),
                    key.clone(),
                    cfg.clone(),
                    resources(z),
                    1,
                )
            })
            .collect();
        let up = vec![true; nodes.len()];
        let mut net = Net {
            now: 0,
            nodes,
            up,
            published: Vec::new(),
            rejected: Vec::new(),
            table: BTreeMap::new(),
            providers: BTreeMap::new(),
            told: Vec::new(),
        };
        for &(i, j) in links {
            let (a, b) = (net.nodes[i].me(), net.nodes[j].me());
            net.nodes[i].handle_connected(0, b);
            net.nodes[j].handle_connected(0, a);
        }
        net
    }

    fn index(&self, peer: PeerId) -> Option<usize> {
        self.nodes.iter().position(|n| n.me() == peer)
    }

    fn deliver(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.nodes.len() {
                while let Some(out) = self.nodes[i].poll_output() {
                    any = true;
                    if !self.up[i] {
                        continue;
                    }
                    match out {
                        Output::Publish(bytes) => {
                            self.published.push(bytes.clone());
                            for j in 0..self.nodes.len() {
                                if j != i
                                    && self.up[j]
                                    && let Err(e) = self.nodes[j].handle_gossip(self.now, &bytes)
                                {
                                    self.rejected.push(e);
                                }
                            }
                        }
                        Output::Send { to, bytes } => {
                            // A peer outside the network (a test's forger) hears nothing.
                            let Some(j) = self.index(to) else {
                                continue;
                            };
                            let from = self.nodes[i].me();
                            if self.up[j]
                                && let Err(e) = self.nodes[j].handle_direct(self.now, from, &bytes)
                            {
                                self.rejected.push(e);
                            }
                        }
                        Output::Tell { to, bytes } => {
                            let Some(j) = self.index(to) else {
                                continue;
                            };
                            self.told.push((i, j));
                            let from = self.nodes[i].me();
                            if self.up[j]
                                && let Err(e) = self.nodes[j].handle_told(self.now, from, &bytes)
                            {
                                self.rejected.push(e);
                            }
                        }
                        Output::Provide { key } => {
                            let me = self.nodes[i].me();
                            self.providers.entry(key).or_default().insert(me);
                        }
                        Output::Unprovide { key } => {
                            let me = self.nodes[i].me();
                            self.providers.entry(key).or_default().remove(&me);
                        }
                        Output::FindProviders { key } => {
                            let found: Vec<PeerId> = self
                                .providers
                                .get(&key)
                                .map(|p| p.iter().copied().collect())
                                .unwrap_or_default();
                            let now = self.now;
                            self.nodes[i].handle_providers(now, &key, &found);
                        }
                        Output::File { key, record } => self.file(key, record),
                        Output::Find { key } => {
                            if let Some(record) = self.table.get(&key).cloned()
                                && let Err(e) =
                                    self.nodes[i].handle_name_record(self.now, &key, &record)
                            {
                                self.rejected.push(e);
                            }
                        }
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    /// What a store does with a record filed there.
    fn file(&mut self, key: Vec<u8>, record: Vec<u8>) {
        let new = match continuum_gossip::open_name(&key, &record, None, None) {
            Ok(r) => r,
            Err(e) => return self.rejected.push(e),
        };
        let keep = self.table.get(&key).is_some_and(|old| {
            continuum_gossip::open_name(&key, old, None, None)
                .is_ok_and(|old| !new.supersedes(&old))
        });
        if keep {
            self.rejected.push(Reject::Malformed("superseded".into()));
        } else {
            self.table.insert(key, record);
        }
    }

    fn run_until(&mut self, until: u64) {
        loop {
            self.deliver();
            let next = (0..self.nodes.len())
                .filter(|&i| self.up[i])
                .map(|i| self.nodes[i].poll_timeout())
                .min()
                .unwrap();
            if next > until {
                self.now = until;
                return;
            }
            self.now = next.max(self.now);
            for i in 0..self.nodes.len() {
                if self.up[i] && self.nodes[i].poll_timeout() <= self.now {
                    self.nodes[i].handle_timeout(self.now);
                }
            }
        }
    }

    fn peers_of(&self, i: usize) -> BTreeSet<PeerId> {
        self.nodes[i]
            .view()
            .iter()
            .filter(|p| p.advert.is_some())
            .map(|p| p.peer)
            .collect()
    }

    fn others(&self, i: usize) -> BTreeSet<PeerId> {
        (0..self.nodes.len())
            .filter(|&j| j != i && self.up[j])
            .map(|j| self.nodes[j].me())
            .collect()
    }
}

#[test]
fn every_node_sees_every_other_and_forgets_the_dead() {
    let mut net = Net::new(&["a", "a", "b", "b", "a"], None);
    net.run_until(10);
    for i in 0..5 {
        assert_eq!(
            net.peers_of(i),
            net.others(i),
            "node {i} after the first exchange"
        );
    }
    // Quiet for a long while: heartbeats keep everyone in view.
    net.run_until(60_000);
    for i in 0..5 {
        assert_eq!(net.peers_of(i), net.others(i), "node {i} after a minute");
    }
    assert!(net.rejected.is_empty(), "{:?}", net.rejected);

    // Node 3 dies: within the ttl it is gone from every view, and the events say so.
    net.up[3] = false;
    let dead = net.nodes[3].me();
    while net.nodes[0].poll_event().is_some() {}
    net.run_until(60_000 + 3_000 + 1);
    for i in [0, 1, 2, 4] {
        assert_eq!(net.peers_of(i), net.others(i), "node {i} after node 3 died");
    }
    let events: Vec<Event> = std::iter::from_fn(|| net.nodes[0].poll_event()).collect();
    assert!(events.contains(&Event::PeerDown(dead)), "{events:?}");
}

/// Scoped to neighbours, on a line 0-1-2-3-4: each node knows exactly the nodes it is
/// connected to, nothing goes to the topic, and a dead neighbour is forgotten as usual.
#[test]
fn scoped_to_neighbours_a_node_knows_its_neighbours_and_publishes_nothing() {
    let cfg = Config {
        scope: Scope::Neighbours,
        ..Config::with_ttl(3_000)
    };
    let line = [(0, 1), (1, 2), (2, 3), (3, 4)];
    let mut net = Net::with(&["a"; 5], None, cfg, &line);
    let ids: Vec<PeerId> = net.nodes.iter().map(|n| n.me()).collect();
    let adjacent = |i: usize| -> BTreeSet<PeerId> {
        line.iter()
            .filter_map(|&(a, b)| match (a == i, b == i) {
                (true, _) => Some(ids[b]),
                (_, true) => Some(ids[a]),
                _ => None,
            })
            .collect()
    };
    net.run_until(10);
    for i in 0..5 {
        assert_eq!(
            net.peers_of(i),
            adjacent(i),
            "node {i} after the first exchange"
        );
    }
    net.run_until(60_000);
    for i in 0..5 {
        assert_eq!(net.peers_of(i), adjacent(i), "node {i} after a minute");
    }
    assert!(net.published.is_empty(), "nothing goes to the topic");
    assert!(net.rejected.is_empty(), "{:?}", net.rejected);
    net.up[2] = false;
    net.run_until(60_000 + 3_001);
    assert_eq!(net.peers_of(1), BTreeSet::from([ids[0]]));
    assert_eq!(net.peers_of(3), BTreeSet::from([ids[4]]));
}

#[test]
fn a_newcomer_gets_the_full_view_in_one_exchange() {
    let mut net = Net::new(&["a", "a", "a"], None);
    net.run_until(5_000);
    let newcomer = Gossip::new(
        net.now,
        keypair(9),
        None,
        Config::with_ttl(3_000),
        resources("a"),
        1,
    );
    let me = newcomer.me();
    net.nodes.push(newcomer);
    net.up.push(true);
    let zero = net.nodes[0].me();
    net.nodes[3].handle_connected(net.now, zero);
    net.nodes[0].handle_connected(net.now, me);
    net.deliver();
    assert_eq!(net.peers_of(3), net.others(3));
}

#[test]
fn the_directory_follows_adverts() {
    let mut net = Net::new(&["a", "a", "a"], None);
    net.run_until(10);
    let mut res = resources("a");
    res.components = vec![Hosted {
        name: "counter".into(),
        epoch: 1,
        digest: [7; 32],
        handoff: None,
    }];
    net.nodes[1].set_local(net.now, res);
    net.run_until(1_000);
    let host = net.nodes[1].me();
    for i in 0..3 {
        let loc = net.nodes[i].locate("counter").expect("located");
        assert_eq!((loc.host, loc.epoch), (host, 1));
    }
    assert_eq!(net.nodes[0].locate("nobody"), None);
}

#[test]
fn federations_take_exactly_the_matching_nodes_and_expire() {
    let mut net = Net::new(&["a", "a", "b", "a", "b"], None);
    net.run_until(10);
    let spec = FederationSpec {
        name: "edge".into(),
        objective: "test".into(),
        require: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        min_members: 2,
        lease_ms: 5_000,
    };
    net.nodes[0].create_federation(net.now, spec).unwrap();
    net.run_until(1_000);
    let zone_a: BTreeSet<PeerId> = [0, 1, 3].iter().map(|&i| net.nodes[i].me()).collect();
    for i in 0..5 {
        let f = net.nodes[i]
            .federations()
            .get("edge")
            .expect("known everywhere");
        assert_eq!(
            f.members.keys().copied().collect::<BTreeSet<_>>(),
            zone_a,
            "members seen by node {i}"
        );
        assert!(f.formed());
        assert_eq!(
            f.mine,
            if [0, 1, 3].contains(&i) {
                Mine::Member
            } else {
                Mine::Out
            }
        );
    }
    // Renewals keep it alive well past its lease.
    net.run_until(20_000);
    assert_eq!(
        net.nodes[4]
            .federations()
            .get("edge")
            .unwrap()
            .members
            .len(),
        3
    );

    // Node 1 leaves: it is gone from the members and does not rejoin by itself.
    net.nodes[1].leave_federation("edge").unwrap();
    net.run_until(30_000);
    for i in 0..5 {
        let f = net.nodes[i].federations().get("edge").unwrap();
        assert!(!f.members.contains_key(&net.nodes[1].me()), "node {i}");
    }
    assert_eq!(
        net.nodes[1].federations().get("edge").unwrap().mine,
        Mine::Left
    );

    // A node outside the predicate cannot join on request.
    assert!(net.nodes[2].join_federation(net.now, "edge").is_err());

    // The owner stops renewing (it leaves): the federation dissolves everywhere by its lease.
    net.nodes[0].leave_federation("edge").unwrap();
    net.run_until(30_000 + 5_000 + 1);
    for i in 0..5 {
        assert!(
            net.nodes[i].federations().get("edge").is_none(),
            "node {i} still has it"
        );
    }
    let events: Vec<Event> = std::iter::from_fn(|| net.nodes[3].poll_event()).collect();
    assert!(
        events.contains(&Event::Federation(FederationEvent::Dissolved(
            "edge".into()
        )))
    );
}

#[test]
fn bad_messages_are_refused_by_reason() {
    let mut net = Net::new(&["a", "a"], None);
    net.run_until(10);
    let honest = net.nodes[0].me();
    let victim = &mut net.nodes[1];
    let attacker = keypair(42);
    let advert = |peer: PeerId| ResourceAdvert {
        peer: peer.to_bytes(),
        ttl_ms: 3_000,
        resources: resources("a"),
    };
    let msg = |seq, peer| Message {
        seq,
        body: Body::Advert(advert(peer)),
    };

    // Malformed CBOR.
    assert_eq!(
        victim
            .handle_gossip(10, b"\xff\x00 not cbor")
            .unwrap_err()
            .reason(),
        "malformed"
    );
    // Oversized.
    let huge = vec![0u8; continuum_gossip::MAX_GOSSIP_BYTES + 1];
    assert_eq!(
        victim.handle_gossip(10, &huge).unwrap_err().reason(),
        "oversized"
    );
    // A bad signature: one byte of the signed payload changed.
    let good = seal(&attacker, None, &msg(5, attacker.public().to_peer_id()));
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    let err = victim.handle_gossip(10, &bad).unwrap_err();
    assert!(
        matches!(err.reason(), "bad_signature" | "malformed"),
        "{err}"
    );
    // An advert that claims another peer's id.
    let impostor = seal(&attacker, None, &msg(6, honest));
    assert_eq!(
        victim.handle_gossip(10, &impostor).unwrap_err().reason(),
        "wrong_peer"
    );
    // Out of order is fine (gossip takes several paths); a message seen before is a replay,
    // and so is one older than the window of the last 64.
    let me = attacker.public().to_peer_id();
    victim
        .handle_gossip(10, &seal(&attacker, None, &msg(9, me)))
        .unwrap();
    victim.handle_gossip(10, &good).unwrap();
    assert_eq!(
        victim.handle_gossip(11, &good).unwrap_err().reason(),
        "replay"
    );
    victim
        .handle_gossip(11, &seal(&attacker, None, &msg(100, me)))
        .unwrap();
    assert_eq!(
        victim
            .handle_gossip(11, &seal(&attacker, None, &msg(20, me)))
            .unwrap_err()
            .reason(),
        "replay"
    );
    // The node is still fine and still knows its honest peer.
    assert!(victim.view().get(&honest).is_some());
    // A frame that opens also passes the shared checks the node uses on direct messages.
    assert!(open(&impostor, None, continuum_gossip::MAX_GOSSIP_BYTES).is_err());
}

#[test]
fn swarm_keys_partition_the_swarm() {
    let key_a = SwarmKey::new([1; 32]);
    let key_b = SwarmKey::new([2; 32]);
    let mut a = Gossip::new(
        0,
        keypair(1),
        Some(key_a.clone()),
        Config::default(),
        resources("a"),
        1,
    );
    let mut a2 = Gossip::new(
        0,
        keypair(2),
        Some(key_a.clone()),
        Config::default(),
        resources("a"),
        1,
    );
    let mut b = Gossip::new(
        0,
        keypair(3),
        Some(key_b),
        Config::default(),
        resources("a"),
        1,
    );
    let mut open_node = Gossip::new(0, keypair(4), None, Config::default(), resources("a"), 1);
    let first = |g: &mut Gossip| match g.poll_output() {
        Some(Output::Publish(bytes)) => bytes,
        other => panic!("{other:?}"),
    };
    let (from_a, from_b, from_open) = (first(&mut a), first(&mut b), first(&mut open_node));
    assert!(a2.handle_gossip(1, &from_a).is_ok());
    assert_eq!(
        a2.handle_gossip(1, &from_b).unwrap_err().reason(),
        "swarm_key"
    );
    assert_eq!(
        a2.handle_gossip(1, &from_open).unwrap_err().reason(),
        "swarm_key"
    );
    assert_eq!(
        open_node.handle_gossip(1, &from_a).unwrap_err().reason(),
        "swarm_key"
    );
    assert_eq!(a2.view().len(), 1);
}

/// In a closed swarm a frame says nothing to a peer without the key (it is encrypted, not
/// only tagged), and one changed byte anywhere is refused.
#[test]
fn a_closed_swarms_frames_are_unreadable_and_untouchable_without_its_key() {
    let key = SwarmKey::new([9; 32]);
    let mut g = Gossip::new(
        0,
        keypair(1),
        Some(key.clone()),
        Config::default(),
        resources("secret-zone"),
        1,
    );
    let Some(Output::Publish(frame)) = g.poll_output() else {
        panic!("no advert")
    };
    let open_frame = {
        let mut o = Gossip::new(
            0,
            keypair(1),
            None,
            Config::default(),
            resources("secret-zone"),
            1,
        );
        match o.poll_output() {
            Some(Output::Publish(f)) => f,
            other => panic!("{other:?}"),
        }
    };
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(has(&open_frame, b"secret-zone") && has(&open_frame, b"127.0.0.1:7070"));
    assert!(!has(&frame, b"secret-zone") && !has(&frame, b"127.0.0.1:7070"));
    assert!(open(&frame, Some(&key), usize::MAX).is_ok());
    for i in (0..frame.len()).step_by(7) {
        let mut bad = frame.clone();
        bad[i] ^= 0x20;
        assert_eq!(
            open(&bad, Some(&key), usize::MAX).unwrap_err(),
            Reject::SwarmKey,
            "byte {i} changed"
        );
    }
    assert_eq!(
        open(&frame, Some(&SwarmKey::new([8; 32])), usize::MAX).unwrap_err(),
        Reject::SwarmKey
    );
}

#[test]
fn a_relay_never_resurrects_a_dead_peer() {
    let mut net = Net::new(&["a", "a", "a"], None);
    net.run_until(10);
    net.up[2] = false;
    // Long after node 2 died, node 1 (re)connects to node 0 and syncs: node 2 stays dead.
    net.run_until(10_000);
    let (zero, one) = (net.nodes[0].me(), net.nodes[1].me());
    net.nodes[1].handle_connected(net.now, zero);
    net.nodes[0].handle_connected(net.now, one);
    net.deliver();
    assert_eq!(net.peers_of(0), BTreeSet::from([one]));
    assert_eq!(net.peers_of(1), BTreeSet::from([zero]));
}

/// A message as `by` signs it in an open swarm.
fn signed(by: &Keypair, seq: u64, body: Body) -> Vec<u8> {
    seal(by, None, &Message { seq, body })
}

fn in_view(net: &Net, i: usize, peer: PeerId) -> bool {
    net.nodes[i].view().iter().any(|p| p.peer == peer)
}

#[test]
fn only_a_peer_itself_keeps_itself_alive() {
    let mut net = Net::new(&["a", "a", "a"], None);
    net.run_until(10);
    let (one, two) = (net.nodes[1].me(), net.nodes[2].me());
    let frame = net
        .published
        .iter()
        .find(|b| {
            let o = open(b, None, MAX_GOSSIP_BYTES).unwrap();
            o.signer == two && matches!(o.message.body, Body::Advert(_))
        })
        .cloned()
        .expect("node 2 published its advert");
    net.up[2] = false;
    // Long after node 2 died, node 1 keeps sending node 0 node 2's last advert: as its own
    // (`mine`), and relayed as heard just now.
    let liar = keypair(1);
    let mut refused = 0;
    for i in 1..=40u64 {
        net.run_until(net.now + 250);
        let forged = signed(
            &liar,
            1_000_000 + 2 * i,
            Body::SyncRequest {
                mine: frame.clone(),
                known: vec![],
            },
        );
        if let Err(Reject::WrongPeer { .. }) = net.nodes[0].handle_direct(net.now, one, &forged) {
            refused += 1;
        }
        let replayed = signed(
            &liar,
            1_000_001 + 2 * i,
            Body::SyncReply {
                entries: vec![SyncEntry {
                    frame: frame.clone(),
                    heard_ago_ms: 0,
                }],
            },
        );
        net.nodes[0].handle_direct(net.now, one, &replayed).unwrap();
    }
    assert_eq!(refused, 40, "a `mine` signed by another peer is refused");
    // Its time to live is 3 s: 10 s later it is gone, whatever node 1 says.
    assert!(!in_view(&net, 0, two), "a dead peer kept alive by replays");
    assert!(in_view(&net, 0, one));
}

#[test]
fn a_huge_time_to_live_or_lease_is_held_to_bounds() {
    let mut net = Net::new(&["a", "a"], None);
    net.run_until(10);
    // A stranger (valid signature, no such node) claims to live for ever and announces a
    // federation whose lease never ends.
    let stranger = keypair(7);
    let who = stranger.public().to_peer_id();
    let alive = signed(
        &stranger,
        u64::MAX / 2,
        Body::Alive {
            advert_seq: 1,
            ttl_ms: u64::MAX,
            load: 0.0,
        },
    );
    net.nodes[0].handle_gossip(net.now, &alive).unwrap();
    let announce = signed(
        &stranger,
        u64::MAX / 2 + 1,
        Body::Federation(continuum_gossip::FederationMsg::Announce(FederationSpec {
            name: "forever".into(),
            objective: "never end".into(),
            require: BTreeMap::new(),
            min_members: 1,
            lease_ms: u64::MAX,
        })),
    );
    net.nodes[0].handle_gossip(net.now, &announce).unwrap();
    assert!(in_view(&net, 0, who));
    assert!(net.nodes[0].federations().get("forever").is_some());
    // Four times this node's own time to live (3 s) at most.
    net.run_until(net.now + 4 * 3_000 + 100);
    assert!(!in_view(&net, 0, who), "a claimed time to live kept a peer");
    // A day at most.
    net.run_until(net.now + continuum_gossip::MAX_LEASE_MS + 1_000);
    assert!(
        net.nodes[0].federations().get("forever").is_none(),
        "a claimed lease kept a federation"
    );
}

/// Fresh identities (valid signatures, no such nodes) by the thousand cannot grow the view or
/// the federations past their bounds: past them a newcomer is refused, with a reason to
/// count, while known peers are heard as ever; room comes back as peers expire.
#[test]
fn fresh_identities_are_refused_past_the_bounds_and_known_peers_heard_on() {
    let cfg = Config {
        max_peers: 3,
        max_federations: 1,
        max_members: 2,
        ..Config::with_ttl(3_000)
    };
    let mut g = Gossip::new(0, keypair(0), None, cfg, resources("a"), 1);
    let fresh = |i: u16| {
        let mut seed = [0xa5; 32];
        seed[..2].copy_from_slice(&i.to_le_bytes());
        Keypair::ed25519_from_bytes(seed).unwrap()
    };
    let alive = |by: &Keypair, seq: u64| {
        signed(
            by,
            seq,
            Body::Alive {
                advert_seq: 1,
                ttl_ms: 3_000,
                load: 0.0,
            },
        )
    };
    let mut refused = 0;
    for i in 0..1000 {
        match g.handle_gossip(1, &alive(&fresh(i), 1)) {
            Ok(()) => assert!(i < 3, "identity {i} got in past the bound"),
            Err(e) => {
                assert_eq!((e.reason(), &e), ("view_full", &Reject::Full("view_full")));
                refused += 1;
            }
        }
    }
    assert_eq!((g.view().len(), refused), (3, 997));
    // A known peer is heard on, and may announce a federation; a second one is refused.
    g.handle_gossip(2, &alive(&fresh(0), 2)).unwrap();
    let announce = |name: &str, seq: u64| {
        signed(
            &fresh(0),
            seq,
            Body::Federation(continuum_gossip::FederationMsg::Announce(FederationSpec {
                name: name.into(),
                objective: "bounded".into(),
                require: BTreeMap::new(),
                min_members: 1,
                lease_ms: 60_000,
            })),
        )
    };
    g.handle_gossip(3, &announce("one", 3)).unwrap();
    assert_eq!(
        g.handle_gossip(4, &announce("two", 4)),
        Err(Reject::Full("federations_full"))
    );
    // This node joined "one" itself; one more member fills it, and a third is refused, while
    // the member in it renews as ever.
    let member = |by: u16, seq: u64| {
        signed(
            &fresh(by),
            seq,
            Body::Federation(continuum_gossip::FederationMsg::Member {
                name: "one".into(),
                owner: fresh(0).public().to_peer_id().to_bytes(),
                joined: true,
            }),
        )
    };
    g.handle_gossip(5, &member(1, 2)).unwrap();
    assert_eq!(
        g.handle_gossip(5, &member(2, 2)),
        Err(Reject::Full("members_full"))
    );
    g.handle_gossip(6, &member(1, 3)).unwrap();
    assert_eq!(g.federations().get("one").unwrap().members.len(), 2);
    // Their time runs out: a newcomer finds room again.
    g.handle_timeout(10_000);
    assert_eq!(g.view().len(), 0);
    g.handle_gossip(10_001, &alive(&fresh(5000), 1)).unwrap();
    assert_eq!(g.view().len(), 1);
}

/// A move away from where a name was found is believed only with the hand-off its host signed
/// for the next epoch (or once that host claims it no more): a peer claiming a far higher
/// epoch diverts nothing from a host that still has the name, nor from one it was handed to.
#[test]
fn a_claimed_move_is_followed_only_with_the_hand_off_of_the_host_before() {
    use continuum_gossip::SignedHandoff;
    let (h1, h2, forger) = (keypair(11), keypair(12), keypair(13));
    let id = |k: &Keypair| k.public().to_peer_id();
    let mut g = Gossip::new(0, keypair(10), None, Config::default(), resources("a"), 1);
    let mut seq = 0;
    let mut claim = |g: &mut Gossip, by: &Keypair, hosted: Vec<Hosted>| {
        seq += 1;
        let advert = Message {
            seq,
            body: Body::Advert(ResourceAdvert {
                peer: id(by).to_bytes(),
                ttl_ms: 60_000,
                resources: Resources {
                    components: hosted,
                    ..resources("a")
                },
            }),
        };
        g.handle_gossip(seq, &seal(by, None, &advert)).unwrap();
    };
    let hosted = |epoch: u64, handoff: Option<SignedHandoff>| Hosted {
        name: "counter".into(),
        epoch,
        digest: [1; 32],
        handoff,
    };
    let host = |g: &mut Gossip| {
        let l = g.locate("counter").expect("located");
        (l.host, l.epoch)
    };
    claim(&mut g, &h1, vec![hosted(3, None)]);
    assert_eq!(host(&mut g), (id(&h1), 3));
    // A forger's higher epoch, with a hand-off of its own making: h1 still has it.
    let own = SignedHandoff::sign(&forger, "counter", 99, id(&forger));
    claim(&mut g, &forger, vec![hosted(99, Some(own))]);
    assert_eq!(host(&mut g), (id(&h1), 3));
    assert_eq!(
        g.unproven_moves(),
        1,
        "counted once, however often looked up"
    );
    // h1 hands it to h2 for epoch 4: believed at once, while h1's old advert still claims it.
    let signed = SignedHandoff::sign(&h1, "counter", 4, id(&h2));
    claim(&mut g, &h2, vec![hosted(4, Some(signed))]);
    assert_eq!(host(&mut g), (id(&h2), 4));
    // h1 lets go; the forger still claims 99, unproven: h2 keeps it.
    claim(&mut g, &h1, vec![]);
    assert_eq!(host(&mut g), (id(&h2), 4));
    // Once h2 claims it no more either (gone, or moved on unseen), the best claim is all
    // there is.
    claim(&mut g, &h2, vec![]);
    assert_eq!(host(&mut g), (id(&forger), 99));
}

#[test]
fn a_frame_that_comes_by_many_paths_has_its_signature_checked_once() {
    let stranger = keypair(9);
    let advert = signed(
        &stranger,
        5,
        Body::Advert(ResourceAdvert {
            peer: stranger.public().to_peer_id().to_bytes(),
            ttl_ms: 3_000,
            resources: resources("a"),
        }),
    );
    let mut g = Gossip::new(
        0,
        keypair(0),
        None,
        Config::with_ttl(3_000),
        resources("a"),
        1,
    );
    // The stranger's advert, relayed by three peers in their syncs.
    for relay in 1..=3 {
        let r = keypair(relay);
        let sync = signed(
            &r,
            10,
            Body::SyncReply {
                entries: vec![SyncEntry {
                    frame: advert.clone(),
                    heard_ago_ms: 0,
                }],
            },
        );
        g.handle_direct(10, r.public().to_peer_id(), &sync).unwrap();
    }
    assert!(g.view().get(&stranger.public().to_peer_id()).is_some());
    // Each sync checked, the advert once: (checks, taken as checked).
    assert_eq!(g.verified().counts(), (4, 2));
    // A copy with its signature changed is checked, and refused, each time it comes.
    let mut forged = advert.clone();
    *forged.last_mut().unwrap() ^= 1;
    for _ in 0..2 {
        assert_eq!(g.handle_gossip(20, &forged), Err(Reject::BadSignature));
    }
    assert_eq!(g.verified().counts(), (6, 2));
}

#[test]
fn only_what_others_may_pass_on_is_signed() {
    let advert_of = |peer: PeerId| {
        Body::Advert(ResourceAdvert {
            peer: peer.to_bytes(),
            ttl_ms: 3_000,
            resources: resources("a"),
        })
    };
    let unsigned = |seq, body| seal_direct(None, &Message { seq, body });
    let (b, c) = (
        keypair(1).public().to_peer_id(),
        keypair(2).public().to_peer_id(),
    );
    let node = |scope| {
        let cfg = Config {
            scope,
            ..Config::with_ttl(3_000)
        };
        Gossip::new(0, keypair(0), None, cfg, resources("a"), 1)
    };

    // Scoped to neighbours, nothing a node sends is signed, and its neighbour takes it as the
    // connection's peer's.
    let mut a = node(Scope::Neighbours);
    a.handle_connected(0, b);
    let Some(Output::Send { bytes, .. }) = a.poll_output() else {
        panic!("a sync request to the new neighbour");
    };
    assert_eq!(
        open(&bytes, None, MAX_DIRECT_BYTES).unwrap_err(),
        Reject::Unsigned
    );
    let mut n = node(Scope::Neighbours);
    n.handle_direct(10, b, &unsigned(5, advert_of(b))).unwrap();
    assert!(n.view().get(&b).is_some());
    // Unsigned, an advert still speaks for its sender only.
    assert_eq!(
        n.handle_direct(10, b, &unsigned(6, advert_of(c)))
            .unwrap_err()
            .reason(),
        "wrong_peer"
    );

    // In the whole swarm, an unsigned frame is refused wherever it could have been passed on:
    // on the topic, relayed in a sync, or as an asker's own advert (which its peers relay).
    let mut s = node(Scope::Swarm);
    assert_eq!(
        s.handle_gossip(10, &unsigned(5, advert_of(b))),
        Err(Reject::Unsigned)
    );
    let reply = unsigned(
        7,
        Body::SyncReply {
            entries: vec![SyncEntry {
                frame: unsigned(1, advert_of(b)),
                heard_ago_ms: 0,
            }],
        },
    );
    assert_eq!(s.handle_direct(10, b, &reply), Err(Reject::Unsigned));
    let request = unsigned(
        8,
        Body::SyncRequest {
            mine: unsigned(2, advert_of(b)),
            known: vec![],
        },
    );
    assert_eq!(s.handle_direct(10, b, &request), Err(Reject::Unsigned));
    assert!(s.view().get(&b).is_none());
    // A sync's envelope itself goes unsigned, its advert signed: taken.
    let request = unsigned(
        9,
        Body::SyncRequest {
            mine: signed(&keypair(1), 3, advert_of(b)),
            known: vec![],
        },
    );
    s.handle_direct(10, b, &request).unwrap();
    assert!(s.view().get(&b).is_some());
    let reply = std::iter::from_fn(|| s.poll_output()).find_map(|out| match out {
        Output::Send { to, bytes } => Some((to, bytes)),
        _ => None,
    });
    let (to, bytes) = reply.expect("a sync reply");
    assert_eq!(
        (to, open(&bytes, None, MAX_DIRECT_BYTES).unwrap_err()),
        (b, Reject::Unsigned)
    );
}

#[test]
fn scoped_to_neighbours_a_dropped_connection_is_suspected_and_forgotten_unless_it_comes_back() {
    let cfg = Config {
        scope: Scope::Neighbours,
        suspect_ms: 1_000,
        ..Config::with_ttl(10_000)
    };
    let mut net = Net::with(&["a"; 3], None, cfg, &[(0, 1), (0, 2)]);
    net.run_until(100);
    let (zero, one, two) = (net.nodes[0].me(), net.nodes[1].me(), net.nodes[2].me());
    assert_eq!(net.peers_of(0), BTreeSet::from([one, two]));
    // Node 1 is killed (its connection drops); node 2's connection drops and comes back.
    net.up[1] = false;
    let now = net.now;
    net.nodes[0].handle_disconnected(now, one);
    net.nodes[0].handle_disconnected(now, two);
    net.nodes[0].handle_connected(now + 500, two);
    net.nodes[2].handle_connected(now + 500, zero);
    net.run_until(now + 1_001);
    // Gone a suspicion after the drop, not a time to live (10 s) after its last message.
    assert_eq!(net.peers_of(0), BTreeSet::from([two]));
    net.run_until(now + 30_000);
    assert_eq!(net.peers_of(0), BTreeSet::from([two]));
    assert!(net.rejected.is_empty(), "{:?}", net.rejected);
}

/// Scoped to neighbours on a line 0-1-2-3, a component hosted at node 0 is found by node 3,
/// which never hears node 0's adverts, through the record node 0 filed; after node 0 hands it
/// to node 1, node 3 follows once it looks again. A record with a higher epoch that no host
/// handed over is refused by the store and, found anyway, passed over by the directory.
#[test]
fn a_name_beyond_the_neighbourhood_is_found_through_its_hosts_record_and_follows_a_move() {
    let cfg = Config {
        scope: Scope::Neighbours,
        names: true,
        ..Config::with_ttl(3_000)
    };
    let line = [(0, 1), (1, 2), (2, 3)];
    let mut net = Net::with(&["a"; 4], None, cfg, &line);
    let ids: Vec<PeerId> = net.nodes.iter().map(|n| n.me()).collect();
    let hosted = |epoch: u64, handoff| Hosted {
        name: "counter".into(),
        epoch,
        digest: [7; 32],
        handoff,
    };
    let host = |net: &mut Net, i: usize, h: Option<Hosted>| {
        let mut r = net.nodes[i].local().clone();
        r.components = h.into_iter().collect();
        let now = net.now;
        net.nodes[i].set_local(now, r);
    };
    host(&mut net, 0, Some(hosted(1, None)));
    net.run_until(100);
    assert_eq!(net.nodes[3].locate("counter"), None, "not a neighbour's");
    let now = net.now;
    net.nodes[3].find_name(now, "counter", true);
    net.run_until(200);
    assert_eq!(net.nodes[3].locate("counter").map(|l| l.host), Some(ids[0]));

    // Node 0 hands it to node 1, which files the next epoch with the hand-off.
    let handoff = continuum_gossip::SignedHandoff::sign(&keypair(0), "counter", 2, ids[1]);
    host(&mut net, 0, None);
    host(&mut net, 1, Some(hosted(2, Some(handoff))));
    net.run_until(400);
    // Looked for again at once: asked 250 ms ago at most for an urgent look, so not yet.
    let now = net.now;
    net.nodes[3].find_name(now, "counter", false);
    net.run_until(500);
    assert_eq!(
        net.nodes[3].locate("counter").map(|l| (l.host, l.epoch)),
        Some((ids[0], 1))
    );
    let now = net.now;
    net.nodes[3].find_name(now, "counter", true);
    net.run_until(600);
    assert_eq!(
        net.nodes[3].locate("counter").map(|l| (l.host, l.epoch)),
        Some((ids[1], 2))
    );

    // Node 2 claims epoch 9 with no hand-off: the store keeps node 1's record.
    let before = net.rejected.len();
    host(&mut net, 2, Some(hosted(9, None)));
    net.run_until(700);
    assert!(net.rejected[before..].contains(&Reject::Malformed("superseded".into())));
    // Found anyway (a store that took it): node 3 does not follow it away from node 1.
    let forged = continuum_gossip::seal_name(&keypair(2), None, 99, &hosted(9, None));
    let key = continuum_gossip::record_key("counter");
    let now = net.now;
    net.nodes[3].handle_name_record(now, &key, &forged).unwrap();
    assert_eq!(net.nodes[3].locate("counter").map(|l| l.host), Some(ids[1]));
    assert_eq!(net.nodes[3].unproven_moves(), 1);

    // Hostile records: filed under another name, unsigned, oversized, not a name claim.
    let other = continuum_gossip::record_key("other");
    let record = continuum_gossip::seal_name(&keypair(1), None, 5, &hosted(2, None));
    let refused = |r: Result<(), Reject>| r.unwrap_err().reason();
    assert_eq!(
        refused(net.nodes[3].handle_name_record(now, &other, &record)),
        "malformed"
    );
    let unsigned = seal_direct(
        None,
        &Message {
            seq: 6,
            body: Body::Name(hosted(3, None)),
        },
    );
    assert_eq!(
        refused(net.nodes[3].handle_name_record(now, &key, &unsigned)),
        "unsigned"
    );
    assert_eq!(
        refused(net.nodes[3].handle_name_record(now, &key, &vec![0xa0; 4096])),
        "oversized"
    );
    let alive = seal(
        &keypair(1),
        None,
        &Message {
            seq: 7,
            body: Body::Alive {
                advert_seq: 1,
                ttl_ms: 3_000,
                load: 0.0,
            },
        },
    );
    assert_eq!(
        refused(net.nodes[3].handle_name_record(now, &key, &alive)),
        "malformed"
    );
    // And a name claim is never taken as gossip.
    assert_eq!(
        refused(net.nodes[2].handle_direct(now, ids[1], &record)),
        "malformed"
    );
}

#[test]
fn a_federation_recruits_beyond_the_neighbourhood_and_costs_nothing_outside_it() {
    let cfg = Config {
        scope: Scope::Neighbours,
        recruit: true,
        recruit_min_ms: 1_000,
        ..Config::with_ttl(3_000)
    };
    // A line: the owner (zone a) - b - b - b - a. Nodes 2 and 3 are not the owner's
    // neighbours, node 4 matches nothing.
    let line = [(0, 1), (1, 2), (2, 3), (3, 4)];
    let mut net = Net::with(&["a", "b", "b", "b", "a"], None, cfg, &line);
    let ids: Vec<PeerId> = net.nodes.iter().map(|n| n.me()).collect();
    net.run_until(100);
    let providers: BTreeSet<PeerId> = (0..continuum_gossip::LABEL_SHARDS)
        .flat_map(|s| {
            let key = continuum_gossip::label_key("zone", "b", s);
            net.providers.get(&key).cloned().unwrap_or_default()
        })
        .collect();
    assert_eq!(providers, BTreeSet::from([ids[1], ids[2], ids[3]]));
    let spec = FederationSpec {
        name: "edge".into(),
        objective: "cameras".into(),
        require: BTreeMap::from([("zone".into(), "b".into())]),
        min_members: 3,
        lease_ms: 3_000,
    };
    let now = net.now;
    net.nodes[0].create_federation(now, spec).unwrap();
    net.run_until(200);
    let members = |net: &Net| -> BTreeSet<PeerId> {
        net.nodes[0]
            .federations()
            .get("edge")
            .unwrap()
            .members
            .keys()
            .copied()
            .collect()
    };
    assert_eq!(members(&net), BTreeSet::from([ids[1], ids[2], ids[3]]));
    assert!(net.nodes[0].federations().get("edge").unwrap().formed());
    for i in [2, 3] {
        let f = net.nodes[i].federations().get("edge").unwrap();
        assert_eq!((f.owner, f.mine), (ids[0], Mine::Member), "node {i}");
    }
    // Nothing reached the node outside it, and only the owner and its members were told.
    assert!(net.nodes[4].federations().get("edge").is_none());
    assert!(
        net.told.iter().all(|&(i, j)| i != 4 && j != 4),
        "{:?}",
        net.told
    );

    // Renewed straight between owner and members for many leases.
    net.run_until(20_000);
    assert_eq!(members(&net), BTreeSet::from([ids[1], ids[2], ids[3]]));
    assert!(net.nodes[3].federations().get("edge").is_some());

    // A far member that dies drops out at its lease; one that leaves, at once.
    net.up[3] = false;
    let now = net.now;
    net.nodes[2].leave_federation("edge").unwrap();
    net.run_until(now + 100);
    assert_eq!(members(&net), BTreeSet::from([ids[1], ids[3]]));
    net.run_until(now + 4_000);
    assert_eq!(members(&net), BTreeSet::from([ids[1]]));

    // Only federation messages may be told by a peer that is not a neighbour.
    let advert = net.nodes[4].local().clone();
    let told = seal_direct(
        None,
        &Message {
            seq: 1 << 40,
            body: Body::Advert(ResourceAdvert {
                peer: ids[4].to_bytes(),
                ttl_ms: 3_000,
                resources: advert,
            }),
        },
    );
    let now = net.now;
    assert_eq!(
        net.nodes[0]
            .handle_told(now, ids[4], &told)
            .unwrap_err()
            .reason(),
        "malformed"
    );
}

#[test]
fn an_owner_invites_only_nodes_listed_under_every_label_it_requires() {
    let cfg = Config {
        scope: Scope::Neighbours,
        recruit: true,
        ..Config::with_ttl(3_000)
    };
    let line = [(0, 1), (1, 2), (2, 3), (3, 4)];
    let mut net = Net::with(&["a", "b", "b", "b", "b"], None, cfg, &line);
    let ids: Vec<PeerId> = net.nodes.iter().map(|n| n.me()).collect();
    // Nodes 3 and 4 carry a camera too; zone=b alone is the broad label.
    for i in [3, 4] {
        let mut r = net.nodes[i].local().clone();
        r.labels.insert("sensor".into(), "camera".into());
        net.nodes[i].set_local(0, r);
    }
    net.run_until(100);
    let spec = FederationSpec {
        name: "cams".into(),
        objective: "cameras of zone b".into(),
        require: BTreeMap::from([
            ("sensor".into(), "camera".into()),
            ("zone".into(), "b".into()),
        ]),
        min_members: 2,
        lease_ms: 3_000,
    };
    let now = net.now;
    net.nodes[0].create_federation(now, spec).unwrap();
    net.run_until(10_000);
    let f = net.nodes[0].federations().get("cams").unwrap();
    assert_eq!(
        f.members.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([ids[3], ids[4]])
    );
    // Node 2, beyond the neighbourhood with zone=b alone, was never told anything.
    assert!(net.told.iter().all(|&(_, j)| j != 2), "{:?}", net.told);
    assert!(net.nodes[2].federations().get("cams").is_none());
}
