//! Federations beyond the neighbourhood. Scoped to neighbours, an owner's announcement reaches
//! its neighbours only, so a matching node two hops away would never hear of the federation;
//! flooding it to the swarm would make every federation cost every node. Instead each node
//! lists itself in the distributed hash table as a provider of each of its labels
//! (`/continuum/label/K=V/S`, refreshed every few minutes, a cost flat in the swarm's size),
//! and an owner looks up the providers of each label its federation requires and invites those
//! listed under all of them (a broad label, such as `arch`, then costs no invitations to nodes
//! that lack the others); members renew with the owner directly. `S` is one of
//! [`LABEL_SHARDS`] shards, by the provider's id: a store keeps [`MAX_PROVIDERS`] a key, so a
//! label carried by thousands is found through sixteen keys (stored on sixteen sets of nodes)
//! rather than cut at one's. A federation costs its owner a lookup now and then and a message
//! per member, its members a message each, and nothing to the nodes outside it.

use crate::advert::Resources;
use crate::federation::{FederationSpec, Federations};
use crate::gossip::Output;
use libp2p_identity::PeerId;
use std::collections::{BTreeMap, BTreeSet};

const LABEL_KEY_PREFIX: &str = "/continuum/label/";

/// Longest label key a node stores for others (a label's key and value are short words).
const MAX_LABEL_KEY_BYTES: usize = 256;

/// Providers a node keeps for one label key (Kademlia keeps those closest to the key): an
/// owner asks several nodes, so it finds more than one store's worth.
pub const MAX_PROVIDERS: usize = 256;

/// Keys one label is provided under.
pub const LABEL_SHARDS: u8 = 16;

/// The key under which nodes carrying `key=value` in shard `shard` provide themselves.
pub fn label_key(key: &str, value: &str, shard: u8) -> Vec<u8> {
    format!("{LABEL_KEY_PREFIX}{key}={value}/{shard}").into_bytes()
}

/// The shard a node provides its labels in.
fn shard_of(peer: &PeerId) -> u8 {
    peer.to_bytes().last().map_or(0, |b| b % LABEL_SHARDS)
}

/// Whether `key` is a label key, the only provider records a node keeps for others.
pub fn is_label_key(key: &[u8]) -> bool {
    key.len() <= MAX_LABEL_KEY_BYTES && key.starts_with(LABEL_KEY_PREFIX.as_bytes())
}

/// Required labels an owner looks up at most (a member must still carry them all).
pub const MAX_LOOKED_UP_LABELS: usize = 8;

/// The keys an owner looks its federation's members up under, each with the index of its
/// label. A federation that requires nothing is for the neighbourhood.
fn recruit_keys(spec: &FederationSpec) -> impl Iterator<Item = (Vec<u8>, usize)> + '_ {
    spec.require
        .iter()
        .take(MAX_LOOKED_UP_LABELS)
        .enumerate()
        .flat_map(|(i, (k, v))| (0..LABEL_SHARDS).map(move |s| (label_key(k, v, s), i)))
}

/// One round of lookups of an owned federation: which required labels each provider was
/// found under so far, and whom it invited.
#[derive(Debug, Default)]
struct Round {
    seen: BTreeMap<PeerId, u8>,
    invited: BTreeSet<PeerId>,
}

/// What a node provides, and when its owned federations look for members next.
#[derive(Debug)]
pub struct Recruiter {
    /// The shard this node provides its labels in.
    shard: u8,
    /// How often its listing is refreshed (the table forgets what is not provided again).
    /// Not sooner: each listing walks the table, opening connections to peers that are not
    /// neighbours (handshakes, identify, the key's proof).
    every_ms: u64,
    provided: BTreeSet<Vec<u8>>,
    next_provide: u64,
    /// Provided with no neighbour: the table had no one to store it, so again on connecting.
    lonely: bool,
    /// Per owned federation: its next lookup, and the gap to the one after.
    lookups: BTreeMap<String, (u64, u64)>,
    rounds: BTreeMap<String, Round>,
}

impl Recruiter {
    pub fn new(me: &PeerId, every_ms: u64) -> Recruiter {
        Recruiter {
            shard: shard_of(me),
            every_ms,
            provided: BTreeSet::new(),
            next_provide: 0,
            lonely: false,
            lookups: BTreeMap::new(),
            rounds: BTreeMap::new(),
        }
    }

    /// Provide the labels of `local` (all again if `again`), stop providing those it lost.
    pub fn labels(
        &mut self,
        now: u64,
        local: &Resources,
        neighbours: bool,
        again: bool,
    ) -> Vec<Output> {
        let shard = self.shard;
        let keys: BTreeSet<Vec<u8>> = local
            .labels
            .iter()
            .map(|(k, v)| label_key(k, v, shard))
            .collect();
        let mut want: Vec<Output> = self
            .provided
            .difference(&keys)
            .map(|key| Output::Unprovide { key: key.clone() })
            .collect();
        let provide: Vec<Output> = keys
            .iter()
            .filter(|k| again || !self.provided.contains(*k))
            .map(|key| Output::Provide { key: key.clone() })
            .collect();
        let fresh = !provide.is_empty();
        want.extend(provide);
        if again || fresh {
            self.lonely = !neighbours;
            self.next_provide = now + self.every_ms;
        }
        self.provided = keys;
        want
    }

    /// Whether the labels should be provided again now that a neighbour connected.
    pub fn provided_alone(&self) -> bool {
        self.lonely && !self.provided.is_empty()
    }

    /// Lookups due for the federations this node owns: the first at once, then `min_ms`
    /// later, twice as late each time up to a third of the lease (held to `max_ms`), since
    /// nodes that provided their labels while the swarm was young may be listed only later;
    /// forgets those it no longer owns.
    pub fn due(&mut self, now: u64, feds: &Federations, min_ms: u64, max_ms: u64) -> Vec<Output> {
        let owned: BTreeMap<&str, (Vec<Vec<u8>>, u64)> = feds
            .iter()
            .filter(|f| f.owning && !f.spec.require.is_empty())
            .map(|f| {
                let period = (f.spec.lease_ms / 3).clamp(min_ms, max_ms);
                let keys = recruit_keys(&f.spec).map(|(k, _)| k).collect();
                (f.spec.name.as_str(), (keys, period))
            })
            .collect();
        self.lookups
            .retain(|name, _| owned.contains_key(name.as_str()));
        self.rounds
            .retain(|name, _| owned.contains_key(name.as_str()));
        let mut want = Vec::new();
        for (name, (keys, period)) in owned {
            let (next, gap) = self.lookups.entry(name.to_string()).or_insert((now, 0));
            if *next <= now {
                *gap = if *gap == 0 {
                    min_ms
                } else {
                    (*gap * 2).min(period)
                };
                *next = now + *gap;
                self.rounds.insert(name.to_string(), Round::default());
                want.extend(keys.into_iter().map(|key| Output::FindProviders { key }));
            }
        }
        want
    }

    /// Providers found under `key`: for each owned federation that looks it up, the peers
    /// now found under every label it requires (those looked up), neither members nor
    /// `skip`ped (this node, its neighbours, who heard the announcement) nor invited yet this
    /// round; `max` invitations a round at most.
    pub fn found(
        &mut self,
        feds: &Federations,
        key: &[u8],
        providers: &[PeerId],
        skip: impl Fn(&PeerId) -> bool,
        max: usize,
    ) -> Vec<(FederationSpec, Vec<PeerId>)> {
        let mut out = Vec::new();
        for f in feds.iter().filter(|f| f.owning) {
            let Some(round) = self.rounds.get_mut(&f.spec.name) else {
                continue;
            };
            let Some((_, label)) = recruit_keys(&f.spec).find(|(k, _)| k == key) else {
                continue;
            };
            let all = (1u16 << f.spec.require.len().min(MAX_LOOKED_UP_LABELS)) - 1;
            let mut invite = Vec::new();
            for &p in providers {
                // Bounded: a provider is listed under the labels looked up, each at most
                // MAX_PROVIDERS a shard.
                let mask = round.seen.entry(p).or_default();
                *mask |= 1 << label;
                if u16::from(*mask) == all
                    && !f.members.contains_key(&p)
                    && !skip(&p)
                    && round.invited.len() < max
                    && round.invited.insert(p)
                {
                    invite.push(p);
                }
            }
            if !invite.is_empty() {
                out.push((f.spec.clone(), invite));
            }
        }
        out
    }

    /// Whether the labels are due to be provided again.
    pub fn refresh_due(&self, now: u64) -> bool {
        !self.provided.is_empty() && self.next_provide <= now
    }

    /// When [`Self::labels`] (again) or [`Self::due`] has work next.
    pub fn next_timeout(&self) -> Option<u64> {
        let refresh = (!self.provided.is_empty()).then_some(self.next_provide);
        refresh
            .into_iter()
            .chain(self.lookups.values().map(|&(next, _)| next))
            .min()
    }
}
