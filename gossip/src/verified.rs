//! Frames whose signature has been checked already. The same frame reaches a node more than
//! once (a sync relays adverts verbatim, and every node that knows a peer relays its advert),
//! and an ed25519 check costs tens of microseconds where hashing a frame of a few hundred bytes
//! costs well under one: the same bytes verify the same way, so each distinct frame is checked
//! once. Only frames that verified are remembered; a forged one is checked (and refused) each
//! time it comes. The simulator hands one cache to all its nodes: a frame that a node sends to
//! each of its neighbours is then checked once, not once per neighbour.

use libp2p_identity::PeerId;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

/// How many frames a node remembers by default: a few seconds of a busy neighbourhood's
/// adverts and heartbeats, 32 bytes each.
const DEFAULT_VERIFIED: usize = 4096;

/// A bounded map from the hash of each frame whose signature verified to its signer (decoding
/// the signer's key costs nearly what the check does); past its capacity the oldest go, so a
/// stream of distinct frames costs checks, never memory. Clones share the map.
#[derive(Clone, Debug)]
pub struct Verified(Arc<Mutex<Inner>>);

#[derive(Debug)]
struct Inner {
    seen: BTreeMap<[u8; 32], PeerId>,
    order: VecDeque<[u8; 32]>,
    cap: usize,
    checks: u64,
    hits: u64,
}

impl Verified {
    pub fn new(cap: usize) -> Verified {
        Verified(Arc::new(Mutex::new(Inner {
            seen: BTreeMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            checks: 0,
            hits: 0,
        })))
    }

    /// The signer of `frame` if it verifies: `check` (which returns that, or why not) runs only
    /// for a frame not seen to verify before.
    pub(crate) fn verify<E>(
        &self,
        frame: &[u8],
        check: impl FnOnce() -> Result<PeerId, E>,
    ) -> Result<PeerId, E> {
        let hash = *blake3::hash(frame).as_bytes();
        {
            let mut inner = self.lock();
            if let Some(&signer) = inner.seen.get(&hash) {
                inner.hits += 1;
                return Ok(signer);
            }
        }
        // Not under the lock: the simulator's nodes share it, a node's threads might.
        let signer = check();
        let mut inner = self.lock();
        inner.checks += 1;
        if let Ok(signer) = signer
            && inner.seen.insert(hash, signer).is_none()
        {
            inner.order.push_back(hash);
            if inner.order.len() > inner.cap
                && let Some(old) = inner.order.pop_front()
            {
                inner.seen.remove(&old);
            }
        }
        signer
    }

    /// Signatures checked, and frames taken as verified without a check.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.checks, inner.hits)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Verified {
    fn default() -> Verified {
        Verified::new(DEFAULT_VERIFIED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn someone() -> Result<PeerId, ()> {
        let key = libp2p_identity::Keypair::ed25519_from_bytes([7; 32]).unwrap();
        Ok(key.public().to_peer_id())
    }

    #[test]
    fn each_frame_that_verifies_is_checked_once_and_a_bad_one_every_time() {
        let v = Verified::new(2);
        let mut checks = 0;
        for _ in 0..3 {
            assert!(
                v.verify(b"good", || {
                    checks += 1;
                    someone()
                })
                .is_ok()
            );
        }
        assert_eq!(checks, 1);
        for _ in 0..3 {
            assert!(
                v.verify(b"forged", || {
                    checks += 1;
                    Err(())
                })
                .is_err()
            );
        }
        assert_eq!(checks, 4, "a frame that failed is checked again");
        assert_eq!(v.counts(), (4, 2));
    }

    #[test]
    fn past_its_capacity_the_oldest_frame_is_checked_again() {
        let v = Verified::new(2);
        for f in [&b"a"[..], b"b", b"c"] {
            v.verify(f, someone).unwrap();
        }
        let mut checked = false;
        v.verify(b"a", || {
            checked = true;
            someone()
        })
        .unwrap();
        assert!(checked, "a was evicted by c");
        let mut checked = false;
        v.verify(b"c", || {
            checked = true;
            someone()
        })
        .unwrap();
        assert!(!checked);
    }
}
