//! Names beyond the neighbourhood. Scoped to neighbours, a node hears the adverts of the peers
//! it is connected to only, so the directory read off them knows only the components hosted
//! nearby. For the rest, each host files a record under each name it hosts in a distributed
//! hash table (the node's Kademlia): its own signed word "I host NAME at EPOCH", the hand-off
//! that brought it there included. Any node finds it by the name, believes it only as its
//! host's signature, and weighs it in the directory like an advert's claim, so a record can
//! no more divert a name than an advert can (see [`crate::Gossip::directory`]).
//!
//! What is sans-IO here: what a host files and when, what a finder asks for and when, and
//! what a record must be to be believed or stored. The table itself is the driver's.

use crate::advert::Hosted;
use crate::verified::Verified;
use crate::wire::{Body, Message, Reject, SwarmKey, open_with, seal};
use libp2p_identity::{Keypair, PeerId};
use std::collections::BTreeMap;

/// Where a name's record is filed: this prefix, then the name.
pub const NAME_KEY_PREFIX: &str = "/continuum/name/";
/// Far more than a record takes (a name, an epoch, a digest, a hand-off, a key and a
/// signature: about 500 bytes); anything longer is refused before it is opened.
pub const MAX_NAME_RECORD_BYTES: usize = 2048;
/// Names whose records a node holds at most (what it found, not what it stores for the
/// table: the driver bounds that), and hosts per name.
pub const MAX_FOUND_NAMES: usize = 4096;
const MAX_HOSTS_PER_NAME: usize = 4;

/// The key a name's record is filed under.
pub fn record_key(name: &str) -> Vec<u8> {
    format!("{NAME_KEY_PREFIX}{name}").into_bytes()
}

/// A host's signed claim to a name, opened.
#[derive(Clone, Debug, PartialEq)]
pub struct NameRecord {
    pub host: PeerId,
    /// The host's sequence number when it signed it: a later record of the same host replaces
    /// an earlier one.
    pub seq: u64,
    pub hosted: Hosted,
}

/// Sign `hosted` as `id`'s claim (encrypted with the swarm key, if any, as gossip is).
pub fn seal_name(id: &Keypair, key: Option<&SwarmKey>, seq: u64, hosted: &Hosted) -> Vec<u8> {
    seal(
        id,
        key,
        &Message {
            seq,
            body: Body::Name(hosted.clone()),
        },
    )
}

/// Open a record found (or to be stored) under `key`: it must be signed (by its host: the
/// signer is the host), hold a name claim, and be filed under that name.
pub fn open_name(
    key: &[u8],
    bytes: &[u8],
    swarm: Option<&SwarmKey>,
    verified: Option<&Verified>,
) -> Result<NameRecord, Reject> {
    let opened = open_with(bytes, swarm, MAX_NAME_RECORD_BYTES, verified, None)?;
    let Body::Name(hosted) = opened.message.body else {
        return Err(Reject::Malformed(
            "a name record holds a name claim only".into(),
        ));
    };
    if record_key(&hosted.name) != key {
        return Err(Reject::Malformed(format!(
            "the record for {} is filed under another key",
            hosted.name
        )));
    }
    Ok(NameRecord {
        host: opened.signer,
        seq: opened.message.seq,
        hosted,
    })
}

/// What a table does with a record offered for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filing {
    /// Store it (nothing held, or what is held is superseded or cannot be opened).
    Store,
    /// It is the record held already: nothing to do.
    Same,
}

/// Whether a table that holds `held` under `key` takes `offered` there: the one rule of every
/// table of names, the node's Kademlia store and the simulator's alike. Refused if `offered`
/// does not open as its host's claim to the name filed under `key`, or does not supersede
/// what is held.
pub fn file_over(
    key: &[u8],
    offered: &[u8],
    held: Option<&[u8]>,
    swarm: Option<&SwarmKey>,
    verified: Option<&Verified>,
) -> Result<Filing, Reject> {
    let new = open_name(key, offered, swarm, verified)?;
    let Some(old) = held.and_then(|h| open_name(key, h, swarm, verified).ok()) else {
        return Ok(Filing::Store);
    };
    if new.supersedes(&old) {
        Ok(Filing::Store)
    } else if new == old {
        Ok(Filing::Same)
    } else {
        Err(Reject::Superseded(new.hosted.name))
    }
}

impl NameRecord {
    /// Whether a store should keep `self` instead of `old` (filed under the same key): the same
    /// host saying it again later, or the next epoch handed over by `old`'s host. A higher
    /// epoch alone is anyone's claim; the older record then stays until it expires (its host
    /// stopped filing it) or its host hands the name on.
    pub fn supersedes(&self, old: &NameRecord) -> bool {
        if self.host == old.host {
            return self.seq > old.seq;
        }
        self.hosted.epoch == old.hosted.epoch + 1
            && self.hosted.handoff.as_ref().is_some_and(|h| {
                h.verify().is_ok_and(|h| {
                    h.from == old.host
                        && h.to == self.host
                        && h.name == self.hosted.name
                        && h.epoch == self.hosted.epoch
                })
            })
    }
}

/// A finder's side: the records it found (weighed in the directory until they age out) and
/// when it last asked for each name.
#[derive(Default)]
pub(crate) struct Found {
    records: BTreeMap<String, BTreeMap<PeerId, (NameRecord, u64)>>,
    asked: BTreeMap<String, u64>,
}

impl Found {
    /// Take in a record found at `now`.
    pub(crate) fn insert(&mut self, now: u64, r: NameRecord) -> Result<(), Reject> {
        let name = r.hosted.name.clone();
        if !self.records.contains_key(&name) && self.records.len() >= MAX_FOUND_NAMES {
            return Err(Reject::Full("names_full"));
        }
        let hosts = self.records.entry(name).or_default();
        if let Some((old, at)) = hosts.get_mut(&r.host) {
            if r.seq >= old.seq {
                *old = r;
            }
            *at = now;
            return Ok(());
        }
        if hosts.len() >= MAX_HOSTS_PER_NAME {
            // The lowest epoch makes room: the newest claims are the ones that matter.
            let lowest = hosts
                .iter()
                .min_by_key(|(_, (o, _))| o.hosted.epoch)
                .map(|(p, (o, _))| (*p, o.hosted.epoch));
            match lowest {
                Some((p, epoch)) if epoch < r.hosted.epoch => {
                    hosts.remove(&p);
                }
                _ => return Ok(()),
            }
        }
        hosts.insert(r.host, (r, now));
        Ok(())
    }

    /// Forget what was found more than `ttl` ago.
    pub(crate) fn expire(&mut self, now: u64, ttl: u64) {
        self.records.retain(|_, hosts| {
            hosts.retain(|_, (_, at)| now.saturating_sub(*at) < ttl);
            !hosts.is_empty()
        });
        self.asked
            .retain(|_, at| now.saturating_sub(*at) < ttl.max(1));
    }

    /// Whether to ask for `name` now, having last asked at most `gap` ago; if so, noted.
    pub(crate) fn ask(&mut self, now: u64, name: &str, gap: u64) -> bool {
        match self.asked.get(name) {
            Some(&at) if now.saturating_sub(at) < gap => false,
            _ if !self.asked.contains_key(name) && self.asked.len() >= MAX_FOUND_NAMES => false,
            _ => {
                self.asked.insert(name.to_string(), now);
                true
            }
        }
    }

    /// Every claim found: (host, what it hosts).
    pub(crate) fn claims(&self) -> impl Iterator<Item = (PeerId, &Hosted)> {
        self.records
            .values()
            .flat_map(|hosts| hosts.values().map(|(r, _)| (r.host, &r.hosted)))
    }
}
