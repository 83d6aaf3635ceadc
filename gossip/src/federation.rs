//! Temporary federations: a node proposes one for an objective with a member predicate and a
//! lease; nodes whose labels match and whose policy agrees join; the owner renews the
//! federation and each member its membership, every third of the lease. What is not renewed
//! expires: a member that stops renewing drops out, and a federation whose owner stops renewing
//! (it left or died) dissolves everywhere when its lease runs out.

use crate::advert::Resources;
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Leases a federation may have; one announced with another is held to these (a lease that
/// never ends would be a federation no one can dissolve).
pub const MIN_LEASE_MS: u64 = 300;
pub const MAX_LEASE_MS: u64 = 24 * 3_600_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSpec {
    pub name: String,
    /// What the federation is for, in the proposer's words.
    pub objective: String,
    /// Labels a member must carry, `key=value`.
    pub require: BTreeMap<String, String>,
    /// The federation counts as formed once it has this many members.
    pub min_members: u32,
    pub lease_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FederationMsg {
    /// The owner proposes or renews the federation.
    Announce(FederationSpec),
    /// A member joins or renews (`joined`), or leaves.
    Member {
        name: String,
        #[serde(with = "serde_bytes")]
        owner: Vec<u8>,
        joined: bool,
    },
}

/// This node's relation to a federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mine {
    /// Not a member (it may join).
    Out,
    Member,
    /// Left on purpose: it does not join again unless asked.
    Left,
}

#[derive(Clone, Debug)]
pub struct Federation {
    pub spec: FederationSpec,
    pub owner: PeerId,
    /// When the federation dissolves unless the owner renews it.
    pub expires_ms: u64,
    /// Members and when each membership lapses unless renewed.
    pub members: BTreeMap<PeerId, u64>,
    pub mine: Mine,
    /// Whether this node owns it and still renews it.
    pub owning: bool,
    renew_at: u64,
}

impl Federation {
    pub fn formed(&self) -> bool {
        self.members.len() as u32 >= self.spec.min_members
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    #[error("a federation named {0} exists already")]
    Exists(String),
    #[error("no federation named {0} is known here")]
    Unknown(String),
    #[error("this node does not carry the labels federation {name} requires ({require})")]
    NotMatching { name: String, require: String },
    #[error("invalid federation: {0}")]
    Invalid(String),
}

/// Something that changed, for the node's log and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FederationEvent {
    Joined(String),
    Left(String),
    Dissolved(String),
}

#[derive(Clone, Debug)]
pub struct Federations {
    map: BTreeMap<String, Federation>,
    /// The longest lease this node grants, its own or an owner's (at most [`MAX_LEASE_MS`]).
    max_lease_ms: u64,
}

impl Default for Federations {
    fn default() -> Self {
        Federations::new(MAX_LEASE_MS)
    }
}

impl Federations {
    /// Leases held to `max_lease_ms` (clamped to [`MIN_LEASE_MS`]..=[`MAX_LEASE_MS`]).
    pub fn new(max_lease_ms: u64) -> Self {
        Federations {
            map: BTreeMap::new(),
            max_lease_ms: max_lease_ms.clamp(MIN_LEASE_MS, MAX_LEASE_MS),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Federation> {
        self.map.values()
    }

    pub fn get(&self, name: &str) -> Option<&Federation> {
        self.map.get(name)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn member_msg(name: &str, owner: &PeerId, joined: bool) -> FederationMsg {
        FederationMsg::Member {
            name: name.to_string(),
            owner: owner.to_bytes(),
            joined,
        }
    }

    /// Propose a federation owned by `me`.
    pub fn create(
        &mut self,
        now: u64,
        me: PeerId,
        mine: &Resources,
        spec: FederationSpec,
    ) -> Result<(Vec<FederationMsg>, Vec<FederationEvent>), FederationError> {
        if spec.name.is_empty() || spec.name.len() > 63 {
            return Err(FederationError::Invalid(
                "name must be 1 to 63 characters".into(),
            ));
        }
        if !(MIN_LEASE_MS..=self.max_lease_ms).contains(&spec.lease_ms) {
            return Err(FederationError::Invalid(format!(
                "lease must be {MIN_LEASE_MS} ms to {} ms on this node",
                self.max_lease_ms
            )));
        }
        if self.map.contains_key(&spec.name) {
            return Err(FederationError::Exists(spec.name));
        }
        let name = spec.name.clone();
        self.map.insert(
            name.clone(),
            Federation {
                owner: me,
                expires_ms: now + spec.lease_ms,
                renew_at: now + spec.lease_ms / 3,
                spec: spec.clone(),
                members: BTreeMap::new(),
                mine: Mine::Out,
                owning: true,
            },
        );
        let mut out = vec![FederationMsg::Announce(spec)];
        let mut events = Vec::new();
        if let Ok(msg) = self.join(now, me, mine, &name) {
            out.push(msg);
            events.push(FederationEvent::Joined(name));
        }
        Ok((out, events))
    }

    /// Join a known federation (on request, even after having left it).
    pub fn join(
        &mut self,
        now: u64,
        me: PeerId,
        mine: &Resources,
        name: &str,
    ) -> Result<FederationMsg, FederationError> {
        let f = self
            .map
            .get_mut(name)
            .ok_or_else(|| FederationError::Unknown(name.to_string()))?;
        if !mine.satisfies(&f.spec.require) {
            return Err(FederationError::NotMatching {
                name: name.to_string(),
                require: f
                    .spec
                    .require
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        f.mine = Mine::Member;
        f.members.insert(me, now + f.spec.lease_ms);
        f.renew_at = f.renew_at.min(now + f.spec.lease_ms / 3);
        Ok(Self::member_msg(name, &f.owner, true))
    }

    /// Leave a federation; an owner that leaves also stops renewing it.
    pub fn leave(&mut self, me: PeerId, name: &str) -> Result<FederationMsg, FederationError> {
        let f = self
            .map
            .get_mut(name)
            .ok_or_else(|| FederationError::Unknown(name.to_string()))?;
        f.mine = Mine::Left;
        f.owning = false;
        f.members.remove(&me);
        Ok(Self::member_msg(name, &f.owner, false))
    }

    /// An announcement from `owner`. Returns the message to send if this node joins.
    pub fn on_announce(
        &mut self,
        now: u64,
        me: PeerId,
        mine: &Resources,
        auto_join: bool,
        owner: PeerId,
        mut spec: FederationSpec,
    ) -> (Option<FederationMsg>, Option<FederationEvent>) {
        // The lease is the owner's claim: this node holds it to its own bounds.
        spec.lease_ms = spec.lease_ms.clamp(MIN_LEASE_MS, self.max_lease_ms);
        let name = spec.name.clone();
        match self.map.get_mut(&name) {
            // Two proposals of one name: the lower owner id wins everywhere.
            Some(f) if f.owner != owner && f.owner < owner => return (None, None),
            Some(f) if f.owner == owner => {
                f.expires_ms = now + spec.lease_ms;
                f.spec = spec;
            }
            _ => {
                self.map.insert(
                    name.clone(),
                    Federation {
                        owner,
                        expires_ms: now + spec.lease_ms,
                        renew_at: u64::MAX,
                        spec,
                        members: BTreeMap::new(),
                        mine: Mine::Out,
                        owning: owner == me,
                    },
                );
            }
        }
        let f = &self.map[&name];
        if f.mine == Mine::Out
            && auto_join
            && mine.satisfies(&f.spec.require)
            && let Ok(msg) = self.join(now, me, mine, &name)
        {
            return (Some(msg), Some(FederationEvent::Joined(name)));
        }
        (None, None)
    }

    /// A membership message from `peer`.
    pub fn on_member(&mut self, now: u64, peer: PeerId, name: &str, owner: &[u8], joined: bool) {
        let Some(f) = self.map.get_mut(name) else {
            return;
        };
        if owner != f.owner.to_bytes().as_slice() {
            return;
        }
        if joined {
            f.members.insert(peer, now + f.spec.lease_ms);
        } else {
            f.members.remove(&peer);
        }
    }

    /// Renew what is due and expire what lapsed.
    pub fn handle_timeout(
        &mut self,
        now: u64,
        me: PeerId,
    ) -> (Vec<FederationMsg>, Vec<FederationEvent>) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        self.map.retain(|name, f| {
            if f.expires_ms <= now && !f.owning {
                events.push(FederationEvent::Dissolved(name.clone()));
                return false;
            }
            f.members.retain(|_, until| *until > now);
            if f.renew_at <= now {
                if f.owning {
                    f.expires_ms = now + f.spec.lease_ms;
                    out.push(FederationMsg::Announce(f.spec.clone()));
                }
                if f.mine == Mine::Member {
                    f.members.insert(me, now + f.spec.lease_ms);
                    out.push(Self::member_msg(name, &f.owner, true));
                }
                f.renew_at = if f.owning || f.mine == Mine::Member {
                    now + f.spec.lease_ms / 3
                } else {
                    u64::MAX
                };
            }
            true
        });
        (out, events)
    }

    /// Announce the federations this node owns within a second (bursts of newcomers coalesce).
    pub fn announce_soon(&mut self, now: u64) {
        for f in self.map.values_mut().filter(|f| f.owning) {
            f.renew_at = f.renew_at.min(now + 1_000);
        }
    }

    /// The next time [`Self::handle_timeout`] has work.
    pub fn next_timeout(&self) -> Option<u64> {
        self.map
            .values()
            .flat_map(|f| {
                let lapse = f.members.values().min().copied();
                [Some(f.renew_at), (!f.owning).then_some(f.expires_ms), lapse]
            })
            .flatten()
            .filter(|&t| t != u64::MAX)
            .min()
    }
}
