//! The whole protocol as one sans-IO state machine, in the manner of quinn-proto: the driver
//! feeds it messages and the time, and drains what it wants published, sent and scheduled.
//!
//! - Every node publishes a full signed advert when it starts, when it changes materially, and
//!   every `full_every` heartbeats; in between, a small signed `Alive` heartbeat.
//! - A peer is forgotten `ttl` after its last message.
//! - When two peers connect, each asks the other for a sync: the adverts it knows, relayed
//!   verbatim with how long ago it heard each peer. A newcomer has the full view after one
//!   round trip instead of waiting for everyone's next advert.
//! - A heartbeat from a peer whose current advert we lack triggers a sync request to it.
//! - What others may pass on (the topic, the adverts a sync relays) is signed; what goes to one
//!   peer only (a sync's envelope, and everything when scoped to neighbours) is not: the
//!   authenticated connection it comes on says who sent it.
//! - [`Scope::Neighbours`] keeps all of it to the peers a node is connected to: what would be
//!   published goes to each of them directly, and syncs relay no one else's advert. A node then
//!   knows its neighbourhood only, and what it sends and holds no longer grows with the swarm:
//!   the membership of a fleet of thousands (a roadside unit needs its neighbours, not the
//!   continent). Component names resolve within the neighbourhood, and beyond it through the
//!   records hosts file in a distributed hash table (see [`crate::naming`], `names`).

use crate::advert::{Hosted, ResourceAdvert, Resources};
use crate::federation::{
    FederationError, FederationEvent, FederationMsg, FederationSpec, Federations,
};
use crate::membership::{Heard, View};
use crate::naming::{Found, open_name, record_key, seal_name};
use crate::recruit::Recruiter;
use crate::verified::Verified;
use crate::wire::{
    Body, Known, MAX_DIRECT_BYTES, MAX_GOSSIP_BYTES, Message, Reject, SwarmKey, SyncEntry,
    open_with, seal, seal_direct,
};
use libp2p_identity::{Keypair, PeerId};
use std::collections::{BTreeMap, HashMap, VecDeque};

#[derive(Clone, Debug)]
pub struct Config {
    /// Peers are forgotten this long after their last message.
    pub ttl_ms: u64,
    /// How often a node says it is alive.
    pub heartbeat_ms: u64,
    /// Every this many heartbeats, a full advert instead.
    pub full_every: u32,
    /// Changes are published at most this often.
    pub min_gap_ms: u64,
    /// Join federations whose predicate this node satisfies without being asked.
    pub auto_join: bool,
    /// Anti-entropy with a random connected peer: first this soon after a change (a new
    /// connection or peer), then twice as late each time, up to `sync_max_ms`.
    pub sync_min_ms: u64,
    pub sync_max_ms: u64,
    /// Who hears a node: the whole swarm (the gossip topic), or its connected peers.
    pub scope: Scope,
    /// Whether federations may be formed. A node turns them off in a swarm open to anyone:
    /// there a federation's owner would be whoever says so.
    pub federations: bool,
    /// Peers in the view at most: past this a new peer is refused (known ones are always
    /// heard) until some expire, so a stream of fresh identities cannot take the memory.
    pub max_peers: usize,
    /// Federations known at most, for the same reason.
    pub max_federations: usize,
    /// Members of one federation at most (a member need not be in the view yet, so the view's
    /// bound does not hold them).
    pub max_members: usize,
    /// The longest federation lease this node grants (an owner's longer claim is cut to it),
    /// so a federation whose owner went silent dissolves within it.
    pub max_lease_ms: u64,
    /// Scoped to neighbours: how long a neighbour whose last connection closed stays in the
    /// view, for a reconnect, before it is forgotten.
    pub suspect_ms: u64,
    /// Whether names are filed and found beyond the neighbourhood (see [`crate::naming`]):
    /// the driver then carries [`Output::File`] and [`Output::Find`] out to a distributed
    /// hash table.
    pub names: bool,
    /// A host files its names again this often (the table forgets records not filed again).
    pub name_refile_ms: u64,
    /// A record found is weighed this long, then forgotten unless found again.
    pub name_ttl_ms: u64,
    /// A name in use is looked for again this often, so a finder learns of a move even if
    /// nothing tells it sooner.
    pub name_refresh_ms: u64,
    /// Scoped to neighbours: whether federations recruit beyond the neighbourhood (see
    /// [`crate::recruit`]): the node provides its labels in the distributed hash table, an
    /// owner looks up its members there and tells them directly ([`Output::Tell`]).
    pub recruit: bool,
    /// A node provides its labels again this often (the table forgets what is not).
    pub provide_every_ms: u64,
    /// An owner looks for new members every third of its federation's lease, but no more
    /// often than the first and no less than the second.
    pub recruit_min_ms: u64,
    pub recruit_max_ms: u64,
}

/// How far membership reaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every node hears every node (each message published to all). Kept as the simulator's
    /// baseline, to measure the scoped mode against; the node runs scoped only.
    #[default]
    Swarm,
    /// A node hears the peers it is connected to, and only them.
    Neighbours,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl_ms: 15_000,
            heartbeat_ms: 7_500,
            full_every: 4,
            min_gap_ms: 250,
            auto_join: true,
            sync_min_ms: 500,
            sync_max_ms: 30_000,
            scope: Scope::Swarm,
            federations: true,
            max_peers: 16_384,
            max_federations: 256,
            max_members: 4_096,
            max_lease_ms: crate::MAX_LEASE_MS,
            suspect_ms: 2_000,
            names: false,
            name_refile_ms: 300_000,
            name_ttl_ms: 60_000,
            name_refresh_ms: 10_000,
            recruit: false,
            provide_every_ms: 300_000,
            recruit_min_ms: 5_000,
            recruit_max_ms: 60_000,
        }
    }
}

impl Config {
    /// Defaults for a given time to live: a heartbeat every half of it, so one lost heartbeat
    /// does not make a live peer expire, and idle traffic stays low.
    pub fn with_ttl(ttl_ms: u64) -> Config {
        Config {
            ttl_ms,
            heartbeat_ms: (ttl_ms / 2).max(100),
            ..Config::default()
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Publish on the gossip topic.
    Publish(Vec<u8>),
    /// Send straight to one peer.
    Send { to: PeerId, bytes: Vec<u8> },
    /// File `record` under `key` in the distributed hash table (a name this node hosts).
    File { key: Vec<u8>, record: Vec<u8> },
    /// Look in the distributed hash table for the records under `key`, and hand each one
    /// found to [`Gossip::handle_name_record`].
    Find { key: Vec<u8> },
    /// A federation message for a peer that may not be a neighbour (an owner's invitation or
    /// renewal, a member's renewal to its owner): sent straight to it, taken by
    /// [`Gossip::handle_told`] whether or not it has room for another neighbour.
    Tell { to: PeerId, bytes: Vec<u8> },
    /// List this node in the distributed hash table as a provider of `key` (one of its labels).
    Provide { key: Vec<u8> },
    /// Stop listing this node under `key`.
    Unprovide { key: Vec<u8> },
    /// Look up the providers of `key` and hand them to [`Gossip::handle_providers`].
    FindProviders { key: Vec<u8> },
}

/// What happened, for logs and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    PeerUp(PeerId),
    PeerDown(PeerId),
    Federation(FederationEvent),
    /// One of several entries of a sync refused, past the first (which the call returns):
    /// so that each refusal is counted.
    Refused(Reject),
}

/// Where a component is, according to its host's advert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub name: String,
    pub host: PeerId,
    pub epoch: u64,
    pub digest: [u8; 32],
    /// The host's proof that it got the component from the one before (see [`Hosted`]).
    pub handoff: Option<crate::SignedHandoff>,
}

pub struct Gossip {
    id: Keypair,
    me: PeerId,
    key: Option<SwarmKey>,
    cfg: Config,
    seq: u64,
    local: Resources,
    /// What the last full advert said, and its frame (relayed in syncs).
    published: Resources,
    advert_seq: u64,
    my_frame: Vec<u8>,
    last_full_ms: u64,
    beats_since_full: u32,
    next_beat: u64,
    full_due: Option<u64>,
    view: View,
    /// Per peer: the highest sequence number heard, and which of the 64 below it were heard
    /// (bit i: highest - i), so messages that arrive out of order still count and replays do not.
    last_seq: HashMap<PeerId, (u64, u64)>,
    asked: HashMap<PeerId, u64>,
    connected: std::collections::BTreeSet<PeerId>,
    sync_every: u64,
    next_sync: u64,
    feds: Federations,
    out: VecDeque<Output>,
    events: VecDeque<Event>,
    /// Where each name was last found, to check a move against (see [`Gossip::directory`]).
    believed: HashMap<String, (PeerId, u64)>,
    /// Claims of a move passed over for want of the previous host's hand-off, and the last
    /// one passed over for each name (each is counted once).
    unproven_moves: u64,
    passed_over: HashMap<String, (PeerId, u64)>,
    /// Frames whose signature checked out already (the same advert comes from many peers).
    verified: Verified,
    /// Names found in the table, beyond the neighbourhood.
    found: Found,
    /// What this node filed for each name it hosts, and when it files them all again.
    filed: BTreeMap<String, Hosted>,
    next_refile: u64,
    recruiter: Recruiter,
}

impl Gossip {
    /// A node's gossip. `first_seq` must exceed any sequence number the same identity used
    /// before (the driver passes wall-clock microseconds), so a restarted node is not taken for
    /// a replay of its former self.
    pub fn new(
        now: u64,
        id: Keypair,
        key: Option<SwarmKey>,
        cfg: Config,
        local: Resources,
        first_seq: u64,
    ) -> Gossip {
        let me = id.public().to_peer_id();
        let feds = Federations::new(cfg.max_lease_ms);
        let recruiter = Recruiter::new(&me, cfg.provide_every_ms);
        let mut g = Gossip {
            id,
            me,
            key,
            seq: first_seq,
            published: local.clone(),
            local,
            advert_seq: 0,
            my_frame: Vec::new(),
            last_full_ms: now,
            beats_since_full: 0,
            next_beat: now + cfg.heartbeat_ms,
            full_due: None,
            cfg,
            view: View::default(),
            last_seq: HashMap::new(),
            asked: HashMap::new(),
            connected: Default::default(),
            sync_every: 0,
            next_sync: u64::MAX,
            feds,
            out: VecDeque::new(),
            events: VecDeque::new(),
            believed: HashMap::new(),
            unproven_moves: 0,
            passed_over: HashMap::new(),
            verified: Verified::default(),
            found: Found::default(),
            filed: BTreeMap::new(),
            next_refile: u64::MAX,
            recruiter,
        };
        g.sync_every = g.cfg.sync_min_ms;
        g.publish_advert(now);
        g.provide_labels(now, true);
        g
    }

    pub fn me(&self) -> PeerId {
        self.me
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    /// Whether `bytes`, sent straight to this node, is the sync request of a node that knows
    /// no peer at all: one that a node with all the neighbours it takes should take on anyway
    /// (making room), as HyParView takes a join, so no node is left alone.
    pub fn from_newcomer(&self, bytes: &[u8]) -> bool {
        let sender = Some(self.me);
        open_with(bytes, self.key.as_ref(), MAX_DIRECT_BYTES, None, sender).is_ok_and(
            |o| matches!(o.message.body, Body::SyncRequest { known, .. } if known.is_empty()),
        )
    }

    /// The peers this node exchanges with directly (scoped to neighbours: its neighbours).
    pub fn connected(&self) -> &std::collections::BTreeSet<PeerId> {
        &self.connected
    }

    pub fn federations(&self) -> &Federations {
        &self.feds
    }

    pub fn local(&self) -> &Resources {
        &self.local
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Check signatures against `verified`, which others may share (the simulator's nodes do).
    pub fn share_verified(&mut self, verified: Verified) {
        self.verified = verified;
    }

    /// The cache of frames whose signature checked out.
    pub fn verified(&self) -> &Verified {
        &self.verified
    }

    /// A message that others may pass on (the topic, a sync's relayed adverts): signed.
    /// Scoped to neighbours, nothing is passed on, so nothing is signed.
    fn seal(&mut self, body: Body) -> Vec<u8> {
        match self.cfg.scope {
            Scope::Swarm => {
                let message = self.next_message(body);
                seal(&self.id, self.key.as_ref(), &message)
            }
            Scope::Neighbours => self.seal_direct(body),
        }
    }

    /// A message for the one peer it is sent to, who passes it on to no one (a sync's
    /// envelope): the connection says who sent it (see [`crate::wire`]).
    fn seal_direct(&mut self, body: Body) -> Vec<u8> {
        let message = self.next_message(body);
        seal_direct(self.key.as_ref(), &message)
    }

    fn next_message(&mut self, body: Body) -> Message {
        self.seq += 1;
        Message {
            seq: self.seq,
            body,
        }
    }

    fn publish(&mut self, body: Body) {
        let bytes = self.seal(body);
        self.emit(bytes);
    }

    /// Out to the topic, or, scoped to neighbours, to each connected peer.
    fn emit(&mut self, bytes: Vec<u8>) {
        match self.cfg.scope {
            Scope::Swarm => self.out.push_back(Output::Publish(bytes)),
            Scope::Neighbours => {
                for &to in &self.connected {
                    self.out.push_back(Output::Send {
                        to,
                        bytes: bytes.clone(),
                    });
                }
            }
        }
    }

    fn publish_advert(&mut self, now: u64) {
        let advert = ResourceAdvert {
            peer: self.me.to_bytes(),
            ttl_ms: self.cfg.ttl_ms,
            resources: self.local.clone(),
        };
        let frame = self.seal(Body::Advert(advert));
        self.advert_seq = self.seq;
        self.my_frame = frame.clone();
        self.published = self.local.clone();
        self.last_full_ms = now;
        self.beats_since_full = 0;
        self.full_due = None;
        self.emit(frame);
    }

    fn schedule_advert(&mut self, at: u64) {
        let at = at.max(self.last_full_ms + self.cfg.min_gap_ms);
        self.full_due = Some(self.full_due.map_or(at, |d| d.min(at)));
    }

    /// The node's resources or components changed.
    /// Changes of substance are published at once; load travels with every heartbeat and
    /// free memory with the periodic full advert, so a busy machine's restless figures never
    /// flood the mesh.
    pub fn set_local(&mut self, now: u64, local: Resources) {
        if self.published.differs_in_substance(&local) {
            self.schedule_advert(now);
        }
        self.local = local;
        self.file_names(now, false);
        self.provide_labels(now, false);
    }

    /// Provide this node's labels that are new (all of them, `again`), drop those it lost.
    fn provide_labels(&mut self, now: u64, again: bool) {
        if !self.recruits() {
            return;
        }
        let neighbours = !self.connected.is_empty();
        let wants = self.recruiter.labels(now, &self.local, neighbours, again);
        self.out.extend(wants);
    }

    fn recruits(&self) -> bool {
        self.cfg.recruit && self.cfg.federations && self.cfg.scope == Scope::Neighbours
    }

    /// A federation message: to the neighbours, and, recruiting, told straight to those it
    /// is for that are not neighbours (an announcement to the owner's members, a member's
    /// message to the owner).
    fn federation_out(&mut self, msg: FederationMsg) {
        let far: Vec<PeerId> = if self.recruits() {
            match &msg {
                FederationMsg::Announce(spec) => self
                    .feds
                    .get(&spec.name)
                    .map(|f| f.members.keys().copied().collect())
                    .unwrap_or_default(),
                FederationMsg::Member { owner, .. } => {
                    PeerId::from_bytes(owner).into_iter().collect()
                }
            }
        } else {
            Vec::new()
        };
        let bytes = self.seal(Body::Federation(msg));
        for to in far {
            if to != self.me && !self.connected.contains(&to) {
                self.out.push_back(Output::Tell {
                    to,
                    bytes: bytes.clone(),
                });
            }
        }
        self.emit(bytes);
    }

    /// The providers of `key` found in the table: each federation this node owns that
    /// recruits under `key` invites those that are neither members nor neighbours (the
    /// neighbours heard its announcement).
    pub fn handle_providers(&mut self, _now: u64, key: &[u8], providers: &[PeerId]) {
        if !self.recruits() {
            return;
        }
        let (me, connected) = (self.me, &self.connected);
        let skip = |p: &PeerId| *p == me || connected.contains(p);
        let found = self
            .recruiter
            .found(&self.feds, key, providers, skip, self.cfg.max_members);
        for (spec, invite) in found {
            let bytes = self.seal(Body::Federation(FederationMsg::Announce(spec)));
            for to in invite {
                self.out.push_back(Output::Tell {
                    to,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    /// A federation message told straight to this node by a peer that need not be a
    /// neighbour: only federation messages come this way.
    pub fn handle_told(&mut self, now: u64, from: PeerId, bytes: &[u8]) -> Result<(), Reject> {
        let opened = self.open_from(from, bytes, MAX_GOSSIP_BYTES, None)?;
        if !matches!(opened.message.body, Body::Federation(_)) {
            return Err(Reject::Malformed(
                "only federation messages may be told by a peer that is not a neighbour".into(),
            ));
        }
        self.on_gossip(now, from, opened.message, bytes)
    }

    /// File the records of the names this node hosts that changed since it last filed them
    /// (all of them, `again`).
    fn file_names(&mut self, now: u64, again: bool) {
        if !self.cfg.names {
            return;
        }
        let hosted: BTreeMap<String, Hosted> = self
            .local
            .components
            .iter()
            .map(|h| (h.name.clone(), h.clone()))
            .collect();
        for (name, h) in &hosted {
            if again || self.filed.get(name) != Some(h) {
                self.seq += 1;
                let record = seal_name(&self.id, self.key.as_ref(), self.seq, h);
                self.out.push_back(Output::File {
                    key: record_key(name),
                    record,
                });
            }
        }
        self.filed = hosted;
        self.next_refile = if self.filed.is_empty() {
            u64::MAX
        } else if again || self.next_refile == u64::MAX {
            now + self.cfg.name_refile_ms
        } else {
            self.next_refile
        };
    }

    /// The node wants to reach component `name`: look for its record in the table, unless it
    /// did less than `name_refresh_ms` ago (or, `urgent`, for a name it cannot find or whose
    /// host sent the request on, a quarter of a second ago).
    pub fn find_name(&mut self, now: u64, name: &str, urgent: bool) {
        let gap = if urgent {
            250
        } else {
            self.cfg.name_refresh_ms
        };
        if self.cfg.names && self.found.ask(now, name, gap) {
            self.out.push_back(Output::Find {
                key: record_key(name),
            });
        }
    }

    /// A record found in the table under `key`: weighed in the directory if its host signed it.
    pub fn handle_name_record(&mut self, now: u64, key: &[u8], bytes: &[u8]) -> Result<(), Reject> {
        let r = open_name(key, bytes, self.key.as_ref(), Some(&self.verified))?;
        if r.host == self.me {
            return Ok(());
        }
        self.found.insert(now, r)
    }

    fn sync_request(&mut self) -> Vec<u8> {
        let known = self
            .view
            .iter()
            .filter(|p| p.advert.is_some())
            .map(|p| Known {
                peer: p.peer.to_bytes(),
                advert_seq: p.advert_seq,
            })
            .collect();
        let mine = self.my_frame.clone();
        self.seal_direct(Body::SyncRequest { mine, known })
    }

    /// The adverts a peer that holds `known` lacks (ours included).
    fn sync_reply(&mut self, now: u64, asker: PeerId, known: &[Known]) -> Vec<u8> {
        let held: HashMap<Vec<u8>, u64> = known
            .iter()
            .map(|k| (k.peer.clone(), k.advert_seq))
            .collect();
        let lacks = |peer: &PeerId, seq: u64| held.get(&peer.to_bytes()).is_none_or(|&s| s < seq);
        let mut entries = Vec::new();
        if lacks(&self.me, self.advert_seq) {
            entries.push(SyncEntry {
                frame: self.my_frame.clone(),
                heard_ago_ms: 0,
            });
        }
        let relay = self.cfg.scope == Scope::Swarm;
        entries.extend(
            self.view
                .iter()
                .filter(|p| relay && p.advert.is_some())
                .filter(|p| p.peer != asker && lacks(&p.peer, p.advert_seq))
                .map(|p| SyncEntry {
                    frame: p.frame.clone(),
                    heard_ago_ms: now.saturating_sub(p.last_heard_ms),
                }),
        );
        self.seal_direct(Body::SyncReply { entries })
    }

    /// A peer connected: exchange views with it, and make sure our advert reaches the topic
    /// (a node's very first advert may have gone out before it had any gossip peer).
    pub fn handle_connected(&mut self, now: u64, peer: PeerId) {
        let bytes = self.sync_request();
        self.out.push_back(Output::Send { to: peer, bytes });
        self.schedule_advert(now + 1_000);
        self.connected.insert(peer);
        self.sync_soon(now);
        if self.recruits() && self.recruiter.provided_alone() {
            self.provide_labels(now, true);
        }
    }

    /// The last connection to a peer closed. Scoped to neighbours, a peer is heard only while
    /// connected, so waiting out its time to live would tell nothing more: it is suspected,
    /// and forgotten `suspect_ms` from now unless it connects again.
    pub fn handle_disconnected(&mut self, now: u64, peer: PeerId) {
        self.connected.remove(&peer);
        if self.cfg.scope == Scope::Neighbours {
            self.view.suspect(now, peer, self.cfg.suspect_ms);
        }
    }

    /// Something changed: sync again soon, then back off.
    fn sync_soon(&mut self, now: u64) {
        self.sync_every = self.cfg.sync_min_ms;
        self.next_sync = self.next_sync.min(now + self.sync_every);
    }

    /// Whether a message is news (`Ok(true)`), the latest one again (`Ok(false)`, another
    /// path), or a replay. A sliding window, as IPsec's: gossip takes different paths, so a
    /// peer's messages can overtake one another (an announce and the join right after it), and
    /// the older must not be lost for that.
    fn check_seq(&mut self, peer: PeerId, seq: u64) -> Result<bool, Reject> {
        const WINDOW: u64 = 64;
        let (high, seen) = self.last_seq.entry(peer).or_insert((0, 0));
        if seq > *high {
            let shift = seq - *high;
            *seen = if shift >= WINDOW { 0 } else { *seen << shift } | 1;
            *high = seq;
            return Ok(true);
        }
        let age = *high - seq;
        if age == 0 && *seen & 1 != 0 {
            return Ok(false);
        }
        if age >= WINDOW || *seen & (1 << age) != 0 {
            return Err(Reject::Replay {
                peer: peer.to_string(),
                got: seq,
                known: *high,
            });
        }
        *seen |= 1 << age;
        Ok(true)
    }

    /// How long a peer's message keeps it in the view: what it claims, at most four times this
    /// node's own time to live (a peer may be configured differently, within reason; a huge
    /// claim must not keep it for ever).
    fn ttl(&self, claimed: u64) -> u64 {
        claimed.min(self.cfg.ttl_ms.saturating_mul(4))
    }

    /// Whether the view takes `peer`: always if it knows it, else while it has room.
    fn room_for(&self, peer: PeerId) -> Result<(), Reject> {
        if self.view.get(&peer).is_some() || self.view.len() < self.cfg.max_peers {
            Ok(())
        } else {
            Err(Reject::Full("view_full"))
        }
    }

    /// A message from the gossip topic.
    pub fn handle_gossip(&mut self, now: u64, bytes: &[u8]) -> Result<(), Reject> {
        let opened = open_with(
            bytes,
            self.key.as_ref(),
            MAX_GOSSIP_BYTES,
            Some(&self.verified),
            None,
        )?;
        self.on_gossip(now, opened.signer, opened.message, bytes)
    }

    /// An advert, a heartbeat or a federation message from `peer` (published, or sent
    /// directly when scoped to neighbours).
    fn on_gossip(
        &mut self,
        now: u64,
        peer: PeerId,
        message: Message,
        bytes: &[u8],
    ) -> Result<(), Reject> {
        if peer == self.me {
            return Ok(());
        }
        self.room_for(peer)?;
        if !self.check_seq(peer, message.seq)? {
            return Ok(()); // the same message again, by another path
        }
        match message.body {
            Body::Advert(advert) => {
                let ttl = self.ttl(advert.ttl_ms);
                if self
                    .view
                    .advert(now, peer, message.seq, advert, bytes.to_vec(), ttl)
                    == Heard::New
                {
                    self.peer_up(now, peer);
                }
            }
            Body::Alive {
                advert_seq,
                ttl_ms,
                load,
            } => {
                let ttl = self.ttl(ttl_ms);
                if self.view.alive(now, peer, advert_seq, ttl, load) == Heard::NeedAdvert {
                    self.ask_for_sync(now, peer);
                }
            }
            Body::Federation(_) if !self.cfg.federations => {
                return Err(Reject::OpenSwarm("federations"));
            }
            Body::Federation(FederationMsg::Announce(spec))
                if self.feds.get(&spec.name).is_none()
                    && self.feds.len() >= self.cfg.max_federations =>
            {
                return Err(Reject::Full("federations_full"));
            }
            Body::Federation(FederationMsg::Announce(spec)) => {
                let (msg, event) = self.feds.on_announce(
                    now,
                    self.me,
                    &self.local,
                    self.cfg.auto_join,
                    peer,
                    spec,
                );
                if let Some(msg) = msg {
                    self.federation_out(msg);
                }
                self.events.extend(event.map(Event::Federation));
            }
            Body::Federation(FederationMsg::Member { name, joined, .. })
                if joined
                    && self.feds.get(&name).is_some_and(|f| {
                        !f.members.contains_key(&peer) && f.members.len() >= self.cfg.max_members
                    }) =>
            {
                return Err(Reject::Full("members_full"));
            }
            Body::Federation(FederationMsg::Member {
                name,
                owner,
                joined,
            }) => {
                self.feds.on_member(now, peer, &name, &owner, joined);
            }
            Body::SyncRequest { .. } | Body::SyncReply { .. } => {
                return Err(Reject::Malformed(
                    "a sync must come as a direct message".into(),
                ));
            }
            Body::Name(_) => {
                return Err(Reject::Malformed(
                    "a name record is filed in the table, never gossiped".into(),
                ));
            }
        }
        Ok(())
    }

    fn ask_for_sync(&mut self, now: u64, peer: PeerId) {
        let last = self.asked.get(&peer).copied().unwrap_or(0);
        if last == 0 || now >= last + 2_000 {
            self.asked.insert(peer, now.max(1));
            let bytes = self.sync_request();
            self.out.push_back(Output::Send { to: peer, bytes });
        }
    }

    /// A message sent straight to this node by `from`, opened: it must be `from`'s own.
    fn open_from(
        &self,
        from: PeerId,
        bytes: &[u8],
        max: usize,
        cache: Option<&Verified>,
    ) -> Result<crate::wire::Opened, Reject> {
        let opened = open_with(bytes, self.key.as_ref(), max, cache, Some(from))?;
        if opened.signer != from {
            return Err(Reject::WrongPeer {
                claimed: from.to_string(),
                signer: opened.signer.to_string(),
            });
        }
        Ok(opened)
    }

    /// A direct message from `from` (a sync request or reply).
    pub fn handle_direct(&mut self, now: u64, from: PeerId, bytes: &[u8]) -> Result<(), Reject> {
        // Past the gossip bound a message can only be a sync, sealed for this node alone: not
        // worth remembering (a neighbour's scoped gossip, which others get too, is).
        let cache = Some(&self.verified).filter(|_| bytes.len() <= MAX_GOSSIP_BYTES);
        let opened = self.open_from(from, bytes, MAX_DIRECT_BYTES, cache)?;
        // Whatever a known peer sends this node itself proves it alive now (a sync after a
        // reconnect, say, that carries no news).
        if let Some(ttl) = self
            .view
            .get(&from)
            .and_then(|p| p.advert.as_ref())
            .map(|a| a.ttl_ms)
        {
            let ttl = self.ttl(ttl);
            self.view.refresh(now, from, ttl);
        }
        match opened.message.body {
            Body::SyncRequest { mine, known } => {
                // The asker's own advert comes straight from it: as good as hearing it now,
                // if it is the asker's.
                let result = self.relayed(
                    now,
                    SyncEntry {
                        frame: mine,
                        heard_ago_ms: 0,
                    },
                    from,
                    true,
                );
                let bytes = self.sync_reply(now, from, &known);
                self.out.push_back(Output::Send { to: from, bytes });
                result
            }
            Body::SyncReply { entries } => {
                let mut first_error = None;
                for entry in entries {
                    if let Err(e) = self.relayed(now, entry, from, false) {
                        match first_error {
                            None => first_error = Some(e),
                            Some(_) => self.events.push_back(Event::Refused(e)),
                        }
                    }
                }
                first_error.map_or(Ok(()), Err)
            }
            body if self.cfg.scope == Scope::Neighbours && bytes.len() <= MAX_GOSSIP_BYTES => {
                let message = Message {
                    seq: opened.message.seq,
                    body,
                };
                self.on_gossip(now, from, message, bytes)
            }
            _ => Err(Reject::Malformed(
                "only syncs come as direct messages".into(),
            )),
        }
    }

    /// Take in an advert relayed in a sync by `from` (or the asker's own, `own`: then it must
    /// be `from`'s). Scoped to neighbours, syncs relay no one else's advert, so an unsigned
    /// one is `from`'s; in the whole swarm every advert is signed, as it travels on.
    fn relayed(
        &mut self,
        now: u64,
        entry: SyncEntry,
        from: PeerId,
        own: bool,
    ) -> Result<(), Reject> {
        let inner = open_with(
            &entry.frame,
            self.key.as_ref(),
            MAX_GOSSIP_BYTES,
            Some(&self.verified),
            (self.cfg.scope == Scope::Neighbours).then_some(from),
        )?;
        if own && inner.signer != from {
            return Err(Reject::WrongPeer {
                claimed: from.to_string(),
                signer: inner.signer.to_string(),
            });
        }
        if inner.signer == self.me {
            return Ok(());
        }
        let Body::Advert(advert) = inner.message.body else {
            return Err(Reject::Malformed("a sync may relay adverts only".into()));
        };
        self.room_for(inner.signer)?;
        let ttl = self.ttl(advert.ttl_ms);
        let heard = self.view.relayed_advert(
            now,
            inner.signer,
            inner.message.seq,
            advert,
            entry.frame,
            entry.heard_ago_ms,
            ttl,
        );
        if heard == Some(Heard::New) {
            self.peer_up(now, inner.signer);
        }
        Ok(())
    }

    /// A peer appeared (new, or back after it was forgotten): exchange views soon, and announce
    /// the federations this node owns, so it can join them now rather than at their next
    /// renewal.
    fn peer_up(&mut self, now: u64, peer: PeerId) {
        self.events.push_back(Event::PeerUp(peer));
        self.sync_soon(now);
        self.feds.announce_soon(now);
    }

    pub fn handle_timeout(&mut self, now: u64) {
        if self.next_refile <= now {
            self.file_names(now, true);
        }
        self.found.expire(now, self.cfg.name_ttl_ms);
        for gone in self.view.expire(now) {
            self.asked.remove(&gone);
            self.events.push_back(Event::PeerDown(gone));
        }
        // Sequence windows of peers neither known nor remembered as gone (the view keeps
        // those for replays) are of no use: the map stays as bounded as the view.
        if self.last_seq.len() > self.view.len() + crate::membership::MAX_GONE {
            let view = &self.view;
            self.last_seq
                .retain(|p, _| view.get(p).is_some() || view.remembers(p));
        }
        if self.next_sync <= now {
            // A connected peer, picked by our own sequence number: deterministic, and spread.
            if let Some(&peer) = self
                .connected
                .iter()
                .nth((self.seq % self.connected.len().max(1) as u64) as usize)
            {
                let bytes = self.sync_request();
                self.out.push_back(Output::Send { to: peer, bytes });
            }
            self.sync_every = (self.sync_every * 2).min(self.cfg.sync_max_ms);
            self.next_sync = if self.connected.is_empty() {
                u64::MAX
            } else {
                now + self.sync_every
            };
        }
        if self.full_due.is_some_and(|t| t <= now) {
            self.publish_advert(now);
            self.next_beat = now + self.cfg.heartbeat_ms;
        }
        if self.next_beat <= now {
            self.beats_since_full += 1;
            if self.beats_since_full >= self.cfg.full_every {
                self.publish_advert(now);
            } else {
                let body = Body::Alive {
                    advert_seq: self.advert_seq,
                    ttl_ms: self.cfg.ttl_ms,
                    load: self.local.load,
                };
                self.publish(body);
            }
            self.next_beat = now + self.cfg.heartbeat_ms;
        }
        let (msgs, events) = self.feds.handle_timeout(now, self.me);
        for m in msgs {
            self.federation_out(m);
        }
        self.events
            .extend(events.into_iter().map(Event::Federation));
        self.recruit(now);
    }

    /// Provide the labels again and look up members, where due.
    fn recruit(&mut self, now: u64) {
        if !self.recruits() {
            return;
        }
        let (min, max) = (self.cfg.recruit_min_ms, self.cfg.recruit_max_ms);
        let wants = self.recruiter.due(now, &self.feds, min, max);
        self.out.extend(wants);
        if self.recruiter.refresh_due(now) {
            self.provide_labels(now, true);
        }
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> u64 {
        [
            Some(self.next_beat),
            self.full_due,
            self.view.next_expiry(),
            self.feds.next_timeout(),
            (self.next_sync != u64::MAX).then_some(self.next_sync),
            (self.next_refile != u64::MAX).then_some(self.next_refile),
            self.recruits()
                .then(|| self.recruiter.next_timeout())
                .flatten(),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("the heartbeat is always scheduled")
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn create_federation(
        &mut self,
        now: u64,
        spec: FederationSpec,
    ) -> Result<(), FederationError> {
        if !self.cfg.federations {
            return Err(FederationError::Invalid(
                "federations need a swarm closed by a key (`continuum keygen`, then `--swarm-key` on every node)".into(),
            ));
        }
        let (msgs, events) = self.feds.create(now, self.me, &self.local, spec)?;
        for m in msgs {
            self.federation_out(m);
        }
        self.events
            .extend(events.into_iter().map(Event::Federation));
        self.recruit(now);
        Ok(())
    }

    pub fn join_federation(&mut self, now: u64, name: &str) -> Result<(), FederationError> {
        let msg = self.feds.join(now, self.me, &self.local, name)?;
        self.federation_out(msg);
        self.events
            .push_back(Event::Federation(FederationEvent::Joined(name.to_string())));
        Ok(())
    }

    pub fn leave_federation(&mut self, name: &str) -> Result<(), FederationError> {
        let msg = self.feds.leave(self.me, name)?;
        self.federation_out(msg);
        self.events
            .push_back(Event::Federation(FederationEvent::Left(name.to_string())));
        Ok(())
    }

    /// Every component location known: from this node's own components and from every
    /// advert in the view. Where two hosts claim a name, the higher epoch wins, then the lower
    /// peer id, so every node picks the same one; but a move away from where the name was
    /// found before is believed only with the hand-off that host signed to the new one, for
    /// the very next epoch, or once that host claims the name no more (it moved on twice
    /// before this node looked, or it is gone). So a peer claiming a higher epoch cannot divert
    /// a name from a host that still has it.
    pub fn directory(&mut self) -> BTreeMap<String, Location> {
        let mine = self.local.components.iter().map(|h| (self.me, h));
        let theirs = self
            .view
            .iter()
            .filter_map(|p| p.advert.as_ref().map(|a| (p.peer, a)))
            .flat_map(|(peer, a)| a.resources.components.iter().map(move |h| (peer, h)));
        // A neighbour's advert is fresher than a record of it found in the table.
        let view = &self.view;
        let me = self.me;
        let far = self
            .found
            .claims()
            .filter(move |(host, _)| *host != me && view.get(host).is_none());
        let mut claims: BTreeMap<String, Vec<Location>> = BTreeMap::new();
        for (host, h) in mine.chain(theirs).chain(far) {
            claims
                .entry(h.name.clone())
                .or_default()
                .push(location(host, h));
        }
        let mut dir = BTreeMap::new();
        for (name, mut all) in claims {
            all.sort_by_key(|l| std::cmp::Reverse((l.epoch, std::cmp::Reverse(l.host))));
            let chosen = match self.believed.get(&name) {
                None => 0,
                Some(&(host, epoch)) => {
                    let follows = |l: &Location| {
                        l.epoch <= epoch
                            || l.host == host
                            || l.handoff.as_ref().is_some_and(|h| {
                                h.verify().is_ok_and(|h| {
                                    h.from == host
                                        && h.to == l.host
                                        && h.name == name
                                        && h.epoch == l.epoch
                                        && l.epoch == epoch + 1
                                })
                            })
                    };
                    let at = all.iter().position(follows).unwrap_or(0);
                    if let Some(l) = all[..at].first() {
                        let claim = (l.host, l.epoch);
                        if self.passed_over.insert(name.clone(), claim) != Some(claim) {
                            self.unproven_moves += 1;
                        }
                    }
                    at
                }
            };
            dir.insert(name, all.swap_remove(chosen));
        }
        self.believed = dir
            .iter()
            .map(|(n, l)| (n.clone(), (l.host, l.epoch)))
            .collect();
        self.passed_over.retain(|n, _| dir.contains_key(n));
        dir
    }

    /// Claims of a move passed over so far for want of a hand-off (see [`Self::directory`]).
    pub fn unproven_moves(&self) -> u64 {
        self.unproven_moves
    }

    /// Where component `name` is.
    pub fn locate(&mut self, name: &str) -> Option<Location> {
        self.directory().remove(name)
    }
}

fn location(host: PeerId, h: &Hosted) -> Location {
    Location {
        name: h.name.clone(),
        host,
        epoch: h.epoch,
        digest: h.digest,
        handoff: h.handoff.clone(),
    }
}
