//! The membership view: every peer heard from, its latest advert, and when to forget it.
//! A peer is forgotten `ttl` after the last message that proves it alive.

use crate::advert::ResourceAdvert;
use libp2p_identity::PeerId;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Forgotten peers remembered with their last advert sequence, at most: a peer's old frame,
/// replayed by anyone once the peer is gone, must not bring it back. Past this the oldest go
/// (the memory a stream of fresh identities can take is bounded).
pub const MAX_GONE: usize = 4096;

#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub peer: PeerId,
    /// The latest full advert (`None` while only heartbeats have arrived).
    pub advert: Option<ResourceAdvert>,
    /// Sequence number of that advert.
    pub advert_seq: u64,
    /// The advert's frame as its signer sealed it, relayed verbatim in syncs.
    pub frame: Vec<u8>,
    pub last_heard_ms: u64,
    pub expires_ms: u64,
}

/// What hearing from a peer changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A peer we did not know.
    New,
    /// A newer advert from a known peer.
    Updated,
    /// Proof of life, nothing new.
    Refreshed,
    /// Proof of life from a peer whose current advert we lack: ask it for a sync.
    NeedAdvert,
}

#[derive(Clone, Debug, Default)]
pub struct View {
    peers: BTreeMap<PeerId, PeerInfo>,
    /// Peers forgotten, with the advert sequence they had, oldest first in `gone_order`.
    gone: HashMap<PeerId, u64>,
    gone_order: VecDeque<PeerId>,
}

impl View {
    pub fn get(&self, peer: &PeerId) -> Option<&PeerInfo> {
        self.peers.get(peer)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PeerInfo> {
        self.peers.values()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether `peer` is remembered as gone (see [`MAX_GONE`]).
    pub fn remembers(&self, peer: &PeerId) -> bool {
        self.gone.contains_key(peer)
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// An advert heard directly from its signer (over the gossip topic).
    pub fn advert(
        &mut self,
        now: u64,
        peer: PeerId,
        seq: u64,
        advert: ResourceAdvert,
        frame: Vec<u8>,
        ttl_ms: u64,
    ) -> Heard {
        self.relayed_advert(now, peer, seq, advert, frame, 0, ttl_ms)
            .unwrap_or(Heard::Refreshed)
    }

    /// An advert relayed by another peer in a sync, last heard `heard_ago_ms` before `now`
    /// by the relay, to live `ttl_ms` (the advert's own, clamped by the caller). `None` if it
    /// is not news or is already past its time to live. Only news extends the peer's life: an
    /// advert this node holds already, relayed again (by anyone, as recent as they like),
    /// proves nothing about the peer now, so a dead peer cannot be kept alive by replaying its
    /// last frame.
    #[allow(clippy::too_many_arguments)]
    pub fn relayed_advert(
        &mut self,
        now: u64,
        peer: PeerId,
        seq: u64,
        advert: ResourceAdvert,
        frame: Vec<u8>,
        heard_ago_ms: u64,
        ttl_ms: u64,
    ) -> Option<Heard> {
        if heard_ago_ms >= ttl_ms {
            return None;
        }
        let known = self
            .peers
            .get(&peer)
            .map(|p| p.advert_seq)
            .or_else(|| self.gone.get(&peer).copied());
        if known.is_some_and(|k| seq <= k) {
            return None;
        }
        let expires = now.saturating_add(ttl_ms - heard_ago_ms);
        Some(self.store(
            now.saturating_sub(heard_ago_ms),
            peer,
            seq,
            advert,
            frame,
            expires,
        ))
    }

    fn store(
        &mut self,
        heard: u64,
        peer: PeerId,
        seq: u64,
        advert: ResourceAdvert,
        frame: Vec<u8>,
        expires: u64,
    ) -> Heard {
        match self.peers.get_mut(&peer) {
            Some(p) => {
                p.last_heard_ms = p.last_heard_ms.max(heard);
                p.expires_ms = p.expires_ms.max(expires);
                if seq > p.advert_seq {
                    p.advert = Some(advert);
                    p.advert_seq = seq;
                    p.frame = frame;
                    Heard::Updated
                } else {
                    Heard::Refreshed
                }
            }
            None => {
                self.peers.insert(
                    peer,
                    PeerInfo {
                        peer,
                        advert: Some(advert),
                        advert_seq: seq,
                        frame,
                        last_heard_ms: heard,
                        expires_ms: expires,
                    },
                );
                Heard::New
            }
        }
    }

    /// A heartbeat: the peer is alive and says its current advert is `advert_seq`.
    pub fn alive(
        &mut self,
        now: u64,
        peer: PeerId,
        advert_seq: u64,
        ttl_ms: u64,
        load: f32,
    ) -> Heard {
        let p = self.peers.entry(peer).or_insert_with(|| PeerInfo {
            peer,
            advert: None,
            advert_seq: 0,
            frame: Vec::new(),
            last_heard_ms: now,
            expires_ms: now,
        });
        p.last_heard_ms = now;
        p.expires_ms = p.expires_ms.max(now.saturating_add(ttl_ms));
        if let Some(a) = &mut p.advert {
            a.resources.load = load;
        }
        if p.advert.is_none() || advert_seq > p.advert_seq {
            Heard::NeedAdvert
        } else {
            Heard::Refreshed
        }
    }

    /// Word straight from a known peer (any message it sent this node itself): alive now, for
    /// `ttl_ms` more.
    pub fn refresh(&mut self, now: u64, peer: PeerId, ttl_ms: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_heard_ms = p.last_heard_ms.max(now);
            p.expires_ms = p.expires_ms.max(now.saturating_add(ttl_ms));
        }
    }

    /// A peer that may be gone (its connection closed): forgotten `within_ms` from now at the
    /// latest, unless it is heard from again meanwhile.
    pub fn suspect(&mut self, now: u64, peer: PeerId, within_ms: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.expires_ms = p.expires_ms.min(now.saturating_add(within_ms));
        }
    }

    /// Forget peers not heard from in time; returns them.
    pub fn expire(&mut self, now: u64) -> Vec<PeerId> {
        let gone: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.expires_ms <= now)
            .map(|p| p.peer)
            .collect();
        for p in &gone {
            if let Some(info) = self.peers.remove(p) {
                if self.gone.insert(*p, info.advert_seq).is_none() {
                    self.gone_order.push_back(*p);
                }
                while self.gone_order.len() > MAX_GONE {
                    if let Some(old) = self.gone_order.pop_front() {
                        self.gone.remove(&old);
                    }
                }
            }
        }
        gone
    }

    pub fn next_expiry(&self) -> Option<u64> {
        self.peers.values().map(|p| p.expires_ms).min()
    }
}
